//! Versioned schema migrations for a service's own Spin SQLite database.
//!
//! Each service lists its migrations in order; [`migrate`] applies those not
//! yet recorded in `schema_migrations`, each in its own transaction, when an
//! instance first opens the database. `BEGIN IMMEDIATE` takes the write lock
//! before reading the applied versions, so two instances starting at once
//! cannot both apply the same migration, and a migration that fails leaves
//! nothing half-applied. [`transaction`] is that transaction, for the
//! services' own writes too.

use spin_sdk::sqlite::{Connection, Error, Value};

/// One schema change: statements run in order, in one transaction.
pub struct Migration {
    pub version: i64,
    pub statements: &'static [&'static str],
}

/// Brings the database up to the last of `migrations`.
///
/// The common case, a database already current, costs one read statement
/// (no write lock), so a handler that checks on every new instance (Spin
/// makes one per message) pays next to nothing.
pub async fn migrate(conn: &Connection, migrations: &[Migration]) -> Result<(), Error> {
    let latest = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if applied_version(conn).await.is_ok_and(|v| v >= latest) {
        return Ok(());
    }
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        [],
    )
    .await?
    .collect()
    .await?;
    let current = applied_version(conn).await?;
    let run = async |statement: &'static str| {
        conn.execute(statement, []).await?.collect().await.map(drop)
    };
    for migration in migrations.iter().filter(|m| m.version > current) {
        transaction(run, async || apply(conn, migration).await).await?;
    }
    Ok(())
}

/// Runs `work` in a write transaction (`BEGIN IMMEDIATE`, so its reads
/// already hold the write lock), `run` being how a statement is run:
/// committed if `work` succeeds, else rolled back. A failed rollback is not
/// reported: the work's error is the one that matters, and SQLite may
/// already have rolled back (an interrupted or `OR ROLLBACK` statement).
pub async fn transaction<T, E>(
    run: impl AsyncFn(&'static str) -> Result<(), E>,
    work: impl AsyncFnOnce() -> Result<T, E>,
) -> Result<T, E> {
    run("BEGIN IMMEDIATE").await?;
    match work().await {
        Ok(value) => match run("COMMIT").await {
            Ok(()) => Ok(value),
            Err(error) => {
                // A commit that failed may leave the transaction open.
                let _ = run("ROLLBACK").await;
                Err(error)
            }
        },
        Err(error) => {
            let _ = run("ROLLBACK").await;
            Err(error)
        }
    }
}

/// The last migration applied; an error if the table does not exist yet.
async fn applied_version(conn: &Connection) -> Result<i64, Error> {
    Ok(conn
        .execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
        )
        .await?
        .collect()
        .await?
        .first()
        .and_then(|row| row.get::<i64>(0))
        .unwrap_or(0))
}

async fn apply(conn: &Connection, migration: &Migration) -> Result<(), Error> {
    let applied = conn
        .execute(
            "SELECT 1 FROM schema_migrations WHERE version = ?",
            [Value::Integer(migration.version)],
        )
        .await?
        .collect()
        .await?;
    if !applied.is_empty() {
        return Ok(());
    }
    for statement in migration.statements {
        conn.execute(*statement, []).await?.collect().await?;
    }
    conn.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, datetime('now'))",
        [Value::Integer(migration.version)],
    )
    .await?
    .collect()
    .await?;
    Ok(())
}
