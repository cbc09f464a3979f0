//! Versioned schema migrations for a service's own Spin SQLite database.
//!
//! Each service lists its migrations in order; [`migrate`] applies those not
//! yet recorded in `schema_migrations`, each in its own transaction, when an
//! instance first opens the database. `BEGIN IMMEDIATE` takes the write lock
//! before reading the applied versions, so two instances starting at once
//! cannot both apply the same migration, and a migration that fails leaves
//! nothing half-applied.

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
    for migration in migrations.iter().filter(|m| m.version > current) {
        conn.execute("BEGIN IMMEDIATE", []).await?.collect().await?;
        let outcome = apply(conn, migration).await;
        let end = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        conn.execute(end, []).await?.collect().await?;
        outcome?;
    }
    Ok(())
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
