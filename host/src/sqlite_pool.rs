//! SQLite files as the `sqlite` and `key-value` factors use them: opened once,
//! reused by every request, and never waited on by an async worker.
//!
//! Each file has **one writer connection**, leased through an async mutex, and
//! a small pool of reader connections. In WAL mode readers never wait for the
//! writer, and writers queue on the mutex (in order, without spinning) instead
//! of each connection sleeping in SQLite's busy handler for the file lock.
//! The busy timeout remains for what this process cannot queue: another
//! process (a second replica, `spin up`) writing the same file.
//!
//! SQLite calls block, so every statement runs on tokio's blocking pool with
//! its connection moved there and back; statements are prepared through each
//! connection's cache, so a service's handful of queries is parsed once per
//! connection rather than once per request.

use anyhow::Context as _;
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

use crate::app::runtime_config::Location;

/// How long a statement waits for another process's write lock, and a lease
/// for this process's writer: as long as a request may run, so that a burst
/// of writers queues instead of failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle readers kept per file: beyond this, a returned reader is closed.
const MAX_IDLE_READERS: usize = 8;

/// Prepared statements kept per connection (rusqlite's default is 16; a
/// service's queries plus its migrations' fit in this).
const STATEMENT_CACHE: usize = 64;

/// One database file (or in-memory database) and its connections.
pub struct SqliteFile {
    location: Location,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    idle_readers: Mutex<Vec<Connection>>,
}

/// The writer connection, held exclusively until dropped.
pub type Writer = OwnedMutexGuard<Connection>;

/// A reader connection, back to the pool when dropped.
pub struct Reader {
    conn: Option<Connection>,
    file: Arc<SqliteFile>,
}

impl std::ops::Deref for Reader {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.file.idle_readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

impl SqliteFile {
    /// Opens the writer now (creating the folder and turning on WAL), so a
    /// bad path fails at start-up; `init` runs on it first (a schema).
    pub fn open(location: &Location, init: &str) -> anyhow::Result<Arc<SqliteFile>> {
        let writer = match location {
            Location::File(path) => open_file(path)?,
            Location::Memory => configure(Connection::open_in_memory()?)?,
        };
        if !init.is_empty() {
            writer.execute_batch(init)?;
        }
        Ok(Arc::new(SqliteFile {
            location: location.clone(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            idle_readers: Mutex::new(Vec::new()),
        }))
    }

    /// A reader connection: an idle one, else a new one. `None` for an
    /// in-memory database, which has only its writer.
    pub fn reader(self: &Arc<Self>) -> rusqlite::Result<Option<Reader>> {
        let Location::File(path) = &self.location else {
            return Ok(None);
        };
        let idle = self
            .idle_readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => configure(Connection::open(path)?)?,
        };
        Ok(Some(Reader {
            conn: Some(conn),
            file: Arc::clone(self),
        }))
    }

    /// The writer, once this process's other writers are done with it.
    pub async fn writer(&self) -> Result<Writer, String> {
        tokio::time::timeout(BUSY_TIMEOUT, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| format!("database is locked: no write lease within {BUSY_TIMEOUT:?}"))
    }
}

/// Runs `f` with `lease` on the blocking pool and hands the lease back.
pub async fn blocking<L: Send + 'static, R: Send + 'static>(
    lease: L,
    f: impl FnOnce(&L) -> R + Send + 'static,
) -> (L, R) {
    tokio::task::spawn_blocking(move || {
        let result = f(&lease);
        (lease, result)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Opens a database file in WAL mode, creating its folder if needed.
pub fn open_file(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open SQLite file {}", path.display()))?;
    let conn = configure(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("cannot enable WAL on {}", path.display()))?;
    Ok(conn)
}

fn configure(conn: Connection) -> rusqlite::Result<Connection> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}
