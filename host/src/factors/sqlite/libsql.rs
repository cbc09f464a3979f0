//! Spin's `type = "libsql"` provider: a database on a libSQL server (`sqld`,
//! Turso) over its HTTP protocol, through the `libsql` crate Spin uses too,
//! so every process configured with the same URL — replicas of this host on
//! several machines, `spin up`, SpinKube pods — shares one database.
//!
//! A guest's connection is one libSQL connection (a server-side stream),
//! made on its first statement: `BEGIN … COMMIT` spans that stream only,
//! as with a connection of its own, and a guest that goes away inside a
//! transaction has it rolled back (the client closes its stream when
//! dropped, and the server rolls back what the stream left open). The server applies its own limits and
//! sandbox; the host adds only the result-size cap.

use anyhow::Context as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ResultRows, starts_with_one_of};
use crate::backends::sqlite_pool::BUSY_TIMEOUT;
use crate::bindings::sqlite::{Error, QueryResult, Value};

/// How long start-up waits for the server before naming it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One remote database: the client (its HTTP connection pool) shared by
/// every guest connection to it, and its write gate.
pub struct LibsqlDatabase {
    db: libsql::Database,
    /// One writing session at a time from this process, as for files: the
    /// server makes a second writer wait inside it, holding one of its
    /// workers, and enough waiting writers starve the one that holds the
    /// lock until the server's transaction timeout (5 s) breaks it. Here
    /// they wait in the host instead, and the server sees at most one
    /// writer per process.
    writer: Arc<Semaphore>,
}

/// A guest connection's state: its libSQL connection (a server-side
/// stream), made on its first statement, and the write gate while it
/// writes.
#[derive(Default)]
pub struct RemoteSession {
    conn: Option<libsql::Connection>,
    writing: Option<OwnedSemaphorePermit>,
}

impl RemoteSession {
    pub fn last_insert_rowid(&self) -> i64 {
        self.conn
            .as_ref()
            .map_or(0, libsql::Connection::last_insert_rowid)
    }

    pub fn changes(&self) -> u64 {
        self.conn.as_ref().map_or(0, libsql::Connection::changes)
    }
}

impl LibsqlDatabase {
    /// Builds the client and runs one query, so a wrong URL, a rejected
    /// token or an unreachable server stops start-up.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Self> {
        let db = libsql::Builder::new_remote(url.to_string(), token.to_string())
            .build()
            .await
            .with_context(|| format!("cannot use the libSQL URL {url}"))?;
        let conn = db.connect()?;
        tokio::time::timeout(CONNECT_TIMEOUT, conn.query("SELECT 1", ()))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {url} within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("the libSQL server at {url} refused a query"))?;
        Ok(LibsqlDatabase {
            db,
            writer: Arc::new(Semaphore::new(1)),
        })
    }

    /// Runs one statement of a guest connection, returning its columns and
    /// rows; a result beyond [`MAX_RESULT_BYTES`] is an error, as for
    /// files. A statement that may write takes the write gate first (unless
    /// the session holds it), and the session keeps it while a transaction
    /// is open.
    ///
    /// Another process's writer can still hold the server's lock: the
    /// server then answers `SQLITE_BUSY`, and outside a transaction
    /// (nothing was done) the statement is tried again, as SQLite's busy
    /// timeout does for files, for up to [`BUSY_TIMEOUT`]. Inside one the
    /// guest gets the error (only it knows whether to roll back).
    pub async fn execute(
        &self,
        session: &mut RemoteSession,
        statement: &str,
        params: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let conn = match &session.conn {
            Some(conn) => conn.clone(),
            None => {
                let conn = self.db.connect().map_err(io_error)?;
                session.conn = Some(conn.clone());
                conn
            }
        };
        if session.writing.is_none() && may_write(statement) {
            let permit =
                tokio::time::timeout(BUSY_TIMEOUT, Arc::clone(&self.writer).acquire_owned())
                    .await
                    .map_err(|_| {
                        Error::Io(format!(
                            "database is locked: no turn to write within {BUSY_TIMEOUT:?}"
                        ))
                    })?
                    .map_err(|_| Error::Io("the database is closing".into()))?;
            session.writing = Some(permit);
        }
        let params: Vec<libsql::Value> = params.into_iter().map(to_libsql).collect();
        let may_retry = conn.is_autocommit();
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        let result = loop {
            match run(&conn, statement, params.clone()).await {
                Err(Error::Io(message))
                    if may_retry
                        && message.contains("SQLITE_BUSY")
                        && Instant::now() < deadline =>
                {
                    // Jitter, so writers that collided do not collide again.
                    let jitter = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos()) as u64
                        % (pause.as_micros() as u64).max(1);
                    tokio::time::sleep(pause + Duration::from_micros(jitter)).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                result => break result,
            }
        };
        if conn.is_autocommit() {
            session.writing = None;
        }
        result
    }
}

/// Whether `statement` may change the database (or open a transaction):
/// anything but a plain query.
fn may_write(statement: &str) -> bool {
    !starts_with_one_of(statement, &["select", "values", "explain"])
        || returns_rows_of_a_change(statement)
}

fn returns_rows_of_a_change(statement: &str) -> bool {
    statement
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|word| word.eq_ignore_ascii_case("returning"))
}

async fn run(
    conn: &libsql::Connection,
    statement: &str,
    params: Vec<libsql::Value>,
) -> Result<QueryResult, Error> {
    // The client's row cursor (`query`) does not report the new row id or
    // the stream's transaction state; its `execute` does, but returns no
    // rows. So statements that cannot return rows take `execute`.
    if !may_return_rows(statement) {
        conn.execute(statement, params).await.map_err(io_error)?;
        return Ok(QueryResult {
            columns: Vec::new(),
            rows: Vec::new(),
        });
    }
    let mut rows = conn.query(statement, params).await.map_err(io_error)?;
    let count = rows.column_count();
    let columns: Vec<String> = (0..count)
        .map(|i| rows.column_name(i).unwrap_or_default().to_string())
        .collect();
    let mut out = ResultRows::default();
    while let Some(row) = rows.next().await.map_err(io_error)? {
        let values = (0..count)
            .map(|i| row.get_value(i).map(from_libsql))
            .collect::<libsql::Result<Vec<_>>>()
            .map_err(io_error)?;
        out.push(values)?;
    }
    Ok(out.finish(columns))
}

/// Whether `statement` is a query, or a change with `RETURNING`: the ones
/// whose rows the guest must get. (Such a change leaves `last-insert-rowid`
/// as it was: the client does not report it on this path.)
fn may_return_rows(statement: &str) -> bool {
    starts_with_one_of(
        statement,
        &["select", "with", "values", "pragma", "explain"],
    ) || returns_rows_of_a_change(statement)
}

fn io_error(e: libsql::Error) -> Error {
    Error::Io(e.to_string())
}

fn to_libsql(v: Value) -> libsql::Value {
    match v {
        Value::Integer(i) => libsql::Value::Integer(i),
        Value::Real(r) => libsql::Value::Real(r),
        Value::Text(t) => libsql::Value::Text(t),
        Value::Blob(b) => libsql::Value::Blob(b),
        Value::Null => libsql::Value::Null,
    }
}

fn from_libsql(v: libsql::Value) -> Value {
    match v {
        libsql::Value::Integer(i) => Value::Integer(i),
        libsql::Value::Real(r) => Value::Real(r),
        libsql::Value::Text(t) => Value::Text(t),
        libsql::Value::Blob(b) => Value::Blob(b),
        libsql::Value::Null => Value::Null,
    }
}
