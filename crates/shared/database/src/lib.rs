//! A Bazaar service's own SQLite database, and the messages that leave it:
//! opened and migrated once per instance, transactions, the transactional
//! outbox (a state change and the messages it emits commit together, then
//! are published to Redis, or relayed by a later sweep), idempotent
//! consumption, pruning, and the saga step runner built on them. Fault
//! injection at the points where a crash is hardest to recover from lets
//! the chaos tests check each recovery.

use bazaar_api::Problem;
use spin_sdk::sqlite::{Connection, RowResult, Value};

pub use bazaar_migrations::Migration;
use bazaar_migrations::migrate;

mod faults;
mod messaging;
mod step;
pub use faults::{Fault, inject as inject_fault};
pub use messaging::{MESSAGING_TABLES, MESSAGING_TABLES_V2, OutboxMessage, PRUNE_BATCH, Pruned};
pub use step::{MESSAGE_RETENTION_SECONDS, Step, run_step};

thread_local! {
    /// Databases this instance has migrated: migrations run once per
    /// instance (an instance serves many requests), not on every `open`.
    /// Only a cache: a new instance checks the schema again.
    static MIGRATED: std::cell::RefCell<std::collections::BTreeSet<String>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// A service's own SQLite database, migrated when first opened. Failures are
/// logged with their cause and answered as 503.
pub struct Database {
    conn: Connection,
    service: &'static str,
}

impl Database {
    pub async fn open(
        label: &str,
        service: &'static str,
        migrations: &[Migration],
    ) -> Result<Database, Problem> {
        let conn = Connection::open(label)
            .await
            .map_err(|e| unavailable(service, e))?;
        if !MIGRATED.with_borrow(|done| done.contains(label)) {
            migrate(&conn, migrations)
                .await
                .map_err(|e| unavailable(service, e))?;
            MIGRATED.with_borrow_mut(|done| done.insert(label.to_string()));
        }
        Ok(Database { conn, service })
    }

    /// Runs one statement and collects its rows.
    pub async fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<RowResult>, Problem> {
        let failed = |e| unavailable(self.service, e);
        self.conn
            .execute(sql, params)
            .await
            .map_err(failed)?
            .collect()
            .await
            .map_err(failed)
    }

    /// Runs `work` in a write transaction
    /// ([`bazaar_migrations::transaction`]).
    pub async fn transaction<T, E: From<Problem>>(
        &self,
        work: impl AsyncFnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let run = async |statement: &'static str| {
            self.rows(statement, vec![])
                .await
                .map(drop)
                .map_err(E::from)
        };
        bazaar_migrations::transaction(run, work).await
    }

    /// Rows changed by the last statement.
    pub async fn changes(&self) -> u64 {
        self.conn.changes().await
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.rows("SELECT 1", vec![]).await.map(drop)
    }
}

pub(crate) fn unavailable(service: &str, e: spin_sdk::sqlite::Error) -> Problem {
    eprintln!("{service} database error: {e:?}");
    Problem::new(
        bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
        format!("the {service} database is unavailable"),
    )
}
