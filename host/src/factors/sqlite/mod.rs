//! `spin:sqlite/sqlite@3.1.0`, backed by SQLite files (Spin's `type = "spin"`
//! databases) through [`crate::backends::sqlite_pool`], or by a libSQL server (Spin's
//! `type = "libsql"`, in [`libsql`]).
//!
//! On a file, a guest's connection is a session, not a socket: each statement borrows a
//! pooled reader when it only reads, or the file's one writer when it writes
//! or opens a transaction. A session that begins a transaction keeps the
//! writer until it commits or rolls back (or is dropped, which rolls back),
//! so a guest's `BEGIN … COMMIT` spans only its own statements, exactly as a
//! connection of its own would.

use anyhow::Context as _;
use rusqlite::types::Value as SqlValue;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::app::runtime_config::DbLocation;
use crate::backends::sqlite_pool::{self, SqliteFile, Writer};
use crate::bindings::sqlite::{self, Error, QueryResult, RowResult, Value};
use crate::telemetry::traces::{self, Span};
use libsql::{LibsqlDatabase, RemoteSession};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

mod group_commit;
mod libsql;
mod sandbox;

/// The most a query may return, in bytes of values: a guest that selects a
/// whole large table gets an error, not a host that copies gigabytes.
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// Where each database label lives, for the whole application.
pub struct Databases {
    /// The databases of the labels some component uses.
    files: BTreeMap<String, Arc<Database>>,
}

/// One database.
enum Database {
    Local(LocalDatabase),
    Remote(LibsqlDatabase),
}

/// A file: the file, the autocommit writes queued for it, and how long
/// one statement may run ([`sqlite_pool::watched`]).
struct LocalDatabase {
    file: Arc<SqliteFile>,
    autocommits: Arc<group_commit::Queue>,
    statement_limit: Duration,
}

impl Databases {
    /// Opens (or connects to) every database once now, so a bad path or an
    /// unreachable server fails at start-up. A statement on a file runs at
    /// most `statement_limit` (the request timeout).
    pub async fn open(
        locations: BTreeMap<String, DbLocation>,
        statement_limit: Duration,
    ) -> anyhow::Result<Self> {
        let mut files = BTreeMap::new();
        for (label, location) in locations {
            let database = match &location {
                DbLocation::Local(location) => {
                    let file = SqliteFile::open(location, "", Some(sandbox::GUARD))
                        .with_context(|| format!("SQLite database `{label}` ({location:?})"))?;
                    Database::Local(LocalDatabase {
                        file,
                        autocommits: Arc::default(),
                        statement_limit,
                    })
                }
                DbLocation::Libsql { url, token } => Database::Remote(
                    LibsqlDatabase::connect(url, token)
                        .await
                        .with_context(|| format!("SQLite database `{label}` (libsql, {url})"))?,
                ),
            };
            files.insert(label, Arc::new(database));
        }
        Ok(Databases { files })
    }
}

/// What one component may open.
pub struct SqliteGrants {
    pub databases: Arc<Databases>,
    pub granted: BTreeSet<String>,
}

/// The guest's connection resource.
#[derive(Clone)]
pub struct ConnectionHandle {
    label: Arc<str>,
    database: Arc<Database>,
    session: Arc<tokio::sync::Mutex<Session>>,
}

/// What a connection remembers between statements.
#[derive(Default)]
struct Session {
    /// The writer, while a transaction is open.
    transaction: Option<Writer>,
    /// For a remote database: its libSQL connection and write turn.
    remote: RemoteSession,
    last_insert_rowid: i64,
    changes: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        // A guest that ends (or traps) inside a transaction leaves nothing
        // half-done behind, and releases the writer.
        if let Some(writer) = &self.transaction
            && !writer.is_autocommit()
        {
            let _ = writer.execute_batch("ROLLBACK");
        }
    }
}

pub struct Sqlite;

impl HasData for Sqlite {
    type Data<'a> = SqliteView<'a>;
}

pub struct SqliteView<'a> {
    pub grants: &'a SqliteGrants,
    pub table: &'a mut ResourceTable,
    pub trace: Option<&'a opentelemetry::Context>,
    /// The earliest deadline of the requests the instance serves
    /// ([`crate::factors::Deadlines`]).
    pub deadline: Option<Instant>,
    /// Connections the instance holds open ([`crate::factors::OpenHandles`]).
    pub open: &'a mut usize,
}

impl SqliteView<'_> {
    fn open(&mut self, label: &str) -> wasmtime::Result<Result<Resource<ConnectionHandle>, Error>> {
        // Spin's order: a label the component does not declare is denied,
        // whether or not the application defines it.
        if !self.grants.granted.contains(label) {
            return Ok(Err(Error::AccessDenied));
        }
        let Some(database) = self.grants.databases.files.get(label).map(Arc::clone) else {
            return Ok(Err(Error::NoSuchDatabase));
        };
        if *self.open >= crate::factors::MAX_OPEN_HANDLES {
            // Spin's words for it.
            return Ok(Err(Error::Io("too many connections opened".into())));
        }
        let handle = ConnectionHandle {
            label: label.into(),
            database,
            session: Arc::default(),
        };
        let handle = self.table.push(handle)?;
        *self.open += 1;
        Ok(Ok(handle))
    }

    fn handle(&self, r: &Resource<ConnectionHandle>) -> wasmtime::Result<ConnectionHandle> {
        Ok(self.table.get(r)?.clone())
    }
}

fn one_line(statement: &str) -> String {
    statement.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs one statement of a session, and counts it (see [`crate::telemetry::metrics`]);
/// when traced, in a span named by the statement, as Spin names it.
async fn execute(
    conn: ConnectionHandle,
    trace: Option<&opentelemetry::Context>,
    request_deadline: Option<Instant>,
    statement: String,
    params: Vec<Value>,
) -> Result<QueryResult, Error> {
    let ConnectionHandle {
        label,
        database,
        session,
    } = conn;
    let label = &label;
    // Named by the statement, as Spin names it, on one line.
    let span = Span::child(trace, SpanKind::Client, || {
        (
            one_line(&statement),
            vec![
                KeyValue::new("db.system.name", "sqlite"),
                KeyValue::new("db.namespace", Arc::clone(label)),
                KeyValue::new(
                    "sqlite.backend",
                    match *database {
                        Database::Local(_) => "local",
                        Database::Remote(_) => "libsql",
                    },
                ),
            ],
        )
    });
    let started = std::time::Instant::now();
    let result = run_statement(database, &session, request_deadline, statement, params).await;
    traces::finish(span, &result);
    crate::telemetry::metrics::store_operation(
        "sqlite",
        label,
        "execute",
        result.is_ok(),
        started.elapsed(),
    );
    result
}

/// Runs one statement of a session: on its open transaction, else on a
/// reader if the statement only reads, else with other autocommit writes
/// (group commit) if it is a plain data change, else on the writer, which
/// the session keeps if the statement opened a transaction.
async fn run_statement(
    database: Arc<Database>,
    session: &tokio::sync::Mutex<Session>,
    request_deadline: Option<Instant>,
    statement: String,
    params: Vec<Value>,
) -> Result<QueryResult, Error> {
    let mut session = session.lock().await;
    let database = match &*database {
        Database::Local(local) => local,
        Database::Remote(remote) => {
            let result = remote
                .execute(&mut session.remote, &statement, params)
                .await;
            session.last_insert_rowid = session.remote.last_insert_rowid();
            session.changes = session.remote.changes();
            return result;
        }
    };
    // Interrupted at the statement limit after it was issued, or when the
    // instance's requests are past their deadline, whichever comes first.
    let limit = crate::component::deadline_after(database.statement_limit);
    let deadline = request_deadline.map_or(limit, |request| request.min(limit));
    if let Some(writer) = session.transaction.take() {
        if may_end_a_transaction(&statement) {
            return on_writer(&mut session, writer, statement, params, deadline).await;
        }
        return in_transaction(&mut session, writer, statement, params, deadline).await;
    }
    let file = &database.file;
    let reader = if looks_like_a_read(&statement) {
        file.reader().await.map_err(Error::Io)?
    } else {
        None
    };
    let (statement, params) = match reader {
        Some(reader) => {
            let params: Vec<SqlValue> = params.into_iter().map(to_sql).collect();
            // A read moved to the blocking pool runs again from the start,
            // SQLite's verdict on writing included: nothing was changed, and
            // an autocommit read may see the database as it is then.
            let (read, (statement, params)) = sqlite_pool::read(
                reader,
                (statement, params),
                Some(deadline),
                |reader, (statement, params)| read(reader, statement, params),
            )
            .await;
            match read {
                Read::Done(result) => return result,
                Read::Writes => (statement, params.into_iter().map(from_sql).collect()),
            }
        }
        None => (statement, params),
    };
    if group_commit::joins(&statement) {
        let (result, last_insert_rowid, changes) = database
            .autocommits
            .execute(file, statement, params, deadline)
            .await;
        session.last_insert_rowid = last_insert_rowid;
        session.changes = changes;
        return result;
    }
    let writer = file.writer().await.map_err(Error::Io)?;
    on_writer(&mut session, writer, statement, params, deadline).await
}

/// What became of a statement tried on a reader.
enum Read {
    Done(Result<QueryResult, Error>),
    /// SQLite says the statement writes: it goes to the writer.
    Writes,
}

/// Runs `statement` on `reader` if SQLite says it only reads.
fn read(reader: &rusqlite::Connection, statement: &str, params: &[SqlValue]) -> Read {
    match reads_only(reader, statement) {
        Ok(true) => Read::Done(query(reader, statement, params)),
        Ok(false) => Read::Writes,
        Err(e) => Read::Done(Err(e)),
    }
}

/// Whether `statement` is worth trying on a reader: it starts the way a
/// query does. (A reader still checks with SQLite and hands anything that
/// writes to the writer; this spares writes, `BEGIN` and `SAVEPOINT` the
/// trip to a reader.)
fn looks_like_a_read(statement: &str) -> bool {
    starts_with_one_of(
        statement,
        &["select", "with", "values", "explain", "pragma"],
    )
}

/// Whether the statement's first word is one of `keywords` (lower case).
fn starts_with_one_of(statement: &str, keywords: &[&str]) -> bool {
    let word = statement.split_whitespace().next().unwrap_or("");
    keywords.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// Whether a reader may run `statement`, as SQLite judges it. (`BEGIN` and
/// `SAVEPOINT` count as read-only to SQLite; [`looks_like_a_read`] never
/// sends them here.)
fn reads_only(conn: &rusqlite::Connection, statement: &str) -> Result<bool, Error> {
    let stmt = conn.prepare_cached(statement).map_err(io_error)?;
    Ok(stmt.readonly())
}

/// Whether `statement` may end the session's transaction, and so write and
/// sync the database file: `COMMIT`, `END`, `ROLLBACK`, `RELEASE`.
fn may_end_a_transaction(statement: &str) -> bool {
    starts_with_one_of(statement, &["commit", "end", "rollback", "release"])
}

/// Runs a statement inside the session's open transaction. The writer is
/// the session's, so the statement waits for no lock, and SQLite writes
/// changes to the file only when the transaction ends (which [`on_writer`]
/// runs on a blocking thread): this is CPU work like the guest's own, done
/// on this thread to spare two thread hand-offs. A read that runs long
/// moves to the blocking pool as reads outside transactions do
/// ([`sqlite_pool::read_keeping`]); a write cannot (interrupting it would
/// roll the transaction back), so a long one keeps this worker until it
/// ends or reaches the statement limit.
async fn in_transaction(
    session: &mut Session,
    writer: Writer,
    statement: String,
    params: Vec<Value>,
    deadline: Instant,
) -> Result<QueryResult, Error> {
    let (result, writer) = match reads_only(&writer, &statement) {
        Ok(true) => {
            let params: Vec<SqlValue> = params.into_iter().map(to_sql).collect();
            let (result, _, writer) = sqlite_pool::read_keeping(
                writer,
                (statement, params),
                deadline,
                |conn, (statement, params)| query(conn, statement, params),
            )
            .await;
            (result, writer)
        }
        Ok(false) => {
            let result =
                sqlite_pool::watched(&writer, deadline, |conn| run(conn, &statement, params));
            (result, writer)
        }
        Err(e) => (Err(e), writer),
    };
    session.last_insert_rowid = writer.last_insert_rowid();
    session.changes = writer.changes();
    // A statement can end the transaction anyway (an error that rolls it
    // back): then the writer goes back to the pool.
    session.transaction = (!writer.is_autocommit()).then_some(writer);
    result
}

async fn on_writer(
    session: &mut Session,
    writer: Writer,
    statement: String,
    params: Vec<Value>,
    deadline: Instant,
) -> Result<QueryResult, Error> {
    // The writer is released on the blocking thread the moment a statement
    // leaves no transaction open, so the next writer in line is woken then,
    // not once this guest's task is next polled.
    let ((result, last_insert_rowid, changes), transaction) = sqlite_pool::on_blocking_thread_with(
        writer,
        |conn| !conn.is_autocommit(),
        move |conn| {
            let result = sqlite_pool::watched(conn, deadline, |conn| run(conn, &statement, params));
            (result, conn.last_insert_rowid(), conn.changes())
        },
    )
    .await;
    session.last_insert_rowid = last_insert_rowid;
    session.changes = changes;
    session.transaction = transaction;
    result
}

/// Runs one statement to completion, returning its columns and rows.
fn run(
    conn: &rusqlite::Connection,
    statement: &str,
    params: Vec<Value>,
) -> Result<QueryResult, Error> {
    let params: Vec<SqlValue> = params.into_iter().map(to_sql).collect();
    query(conn, statement, &params)
}

/// [`run`] with parameters already in rusqlite's type.
fn query(
    conn: &rusqlite::Connection,
    statement: &str,
    params: &[SqlValue],
) -> Result<QueryResult, Error> {
    let mut stmt = conn.prepare_cached(statement).map_err(io_error)?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(io_error)?;
    let mut out = ResultRows::default();
    while let Some(row) = rows.next().map_err(io_error)? {
        let values = (0..columns.len())
            .map(|i| row.get::<_, SqlValue>(i).map(from_sql))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(io_error)?;
        out.push(values)?;
    }
    Ok(out.finish(columns))
}

/// The rows of a result as they are read, refused once they pass
/// [`MAX_RESULT_BYTES`]: both backends read rows one at a time, so the cap
/// holds before the whole result is in memory.
#[derive(Default)]
struct ResultRows {
    rows: Vec<RowResult>,
    bytes: usize,
}

impl ResultRows {
    fn push(&mut self, values: Vec<Value>) -> Result<(), Error> {
        self.bytes += values.iter().map(value_size).sum::<usize>();
        if self.bytes > MAX_RESULT_BYTES {
            return Err(Error::Io(format!(
                "the query result is larger than {MAX_RESULT_BYTES} bytes: select fewer rows or columns"
            )));
        }
        self.rows.push(RowResult { values });
        Ok(())
    }

    fn finish(self, columns: Vec<String>) -> QueryResult {
        QueryResult {
            columns,
            rows: self.rows,
        }
    }
}

fn io_error(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => Error::DatabaseFull,
        // Only the statement limit interrupts a statement a guest sees fail
        // (an inline read past its budget runs again instead).
        Some(rusqlite::ErrorCode::OperationInterrupted) => Error::Io(
            "the statement was interrupted: it ran past its request's deadline (the request timeout)".into(),
        ),
        _ => Error::Io(e.to_string()),
    }
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::Text(t) => t.len(),
        Value::Blob(b) => b.len(),
        _ => 8,
    }
}

fn to_sql(v: Value) -> SqlValue {
    match v {
        Value::Integer(i) => SqlValue::Integer(i),
        Value::Real(r) => SqlValue::Real(r),
        Value::Text(t) => SqlValue::Text(t),
        Value::Blob(b) => SqlValue::Blob(b),
        Value::Null => SqlValue::Null,
    }
}

fn from_sql(v: SqlValue) -> Value {
    match v {
        SqlValue::Integer(i) => Value::Integer(i),
        SqlValue::Real(r) => Value::Real(r),
        SqlValue::Text(t) => Value::Text(t),
        SqlValue::Blob(b) => Value::Blob(b),
        SqlValue::Null => Value::Null,
    }
}

impl sqlite::Host for SqliteView<'_> {}

fn busy() -> Error {
    Error::Io("the connection is still running another statement: await it first".into())
}

/// Runs `f`, which blocks, on this thread with tokio's other tasks moved
/// off it (on a runtime that can move them).
fn block_in_place<R>(f: impl FnOnce() -> R) -> R {
    let movable = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if movable {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

impl sqlite::HostConnection for SqliteView<'_> {
    fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<ConnectionHandle>, Error>> {
        SqliteView::open(self, &database)
    }

    /// The synchronous variant (SDKs before WASI 0.3) waits for the
    /// statement, as its caller expects. A statement that finishes at once
    /// (a short read runs on this thread, see [`sqlite_pool::read`]) just
    /// returns; one that must wait (for a lease, the writer, the blocking
    /// pool) waits with tokio told that this worker blocks, so its other
    /// tasks move to another thread. A statement of the same connection
    /// still running (the guest's own `execute-async`) could only finish
    /// once this call returns: that is an error, not a wait.
    fn execute(
        &mut self,
        conn: Resource<ConnectionHandle>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        let conn = self.handle(&conn)?;
        if conn.session.try_lock().is_err() {
            return Ok(Err(busy()));
        }
        let (trace, deadline) = (self.trace, self.deadline);
        let mut statement = std::pin::pin!(execute(conn, trace, deadline, statement, parameters));
        // Handing this worker's tasks to another thread costs more than a
        // short read: only a statement that waits pays for it.
        let mut first = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(result) = statement.as_mut().poll(&mut first) {
            return Ok(result);
        }
        Ok(block_in_place(|| futures::executor::block_on(statement)))
    }

    fn last_insert_rowid(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<i64> {
        let conn = self.handle(&conn)?;
        let session = conn
            .session
            .try_lock()
            .map_err(|_| wasmtime::Error::msg(busy()))?;
        Ok(session.last_insert_rowid)
    }

    fn changes(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<u64> {
        let conn = self.handle(&conn)?;
        let session = conn
            .session
            .try_lock()
            .map_err(|_| wasmtime::Error::msg(busy()))?;
        Ok(session.changes)
    }

    fn drop(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        *self.open = self.open.saturating_sub(1);
        Ok(())
    }
}

impl<T> sqlite::HostConnectionWithStore<T> for Sqlite {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        database: String,
    ) -> wasmtime::Result<Result<Resource<ConnectionHandle>, Error>> {
        accessor.with(|mut access| access.get().open(&database))
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<
        Result<
            (
                Vec<String>,
                StreamReader<RowResult>,
                FutureReader<Result<(), Error>>,
            ),
            Error,
        >,
    > {
        let (conn, trace, deadline) = accessor.with(|mut access| {
            let view = access.get();
            Ok::<_, wasmtime::Error>((view.handle(&conn)?, view.trace.cloned(), view.deadline))
        })?;
        // As in Spin, a statement's failure (a syntax error, a constraint,
        // a deadline) arrives through the result future, after no rows;
        // only the connection itself fails the call.
        let (QueryResult { columns, rows }, outcome) =
            match execute(conn, trace.as_ref(), deadline, statement, parameters).await {
                Ok(result) => (result, Ok(())),
                Err(e) => (
                    QueryResult {
                        columns: Vec::new(),
                        rows: Vec::new(),
                    },
                    Err(e),
                ),
            };
        accessor.with(|mut access| {
            let rows = StreamReader::new(&mut access, rows)?;
            let done = FutureReader::new(&mut access, async { Ok::<_, wasmtime::Error>(outcome) })?;
            Ok(Ok((columns, rows, done)))
        })
    }

    async fn last_insert_rowid_async(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
    ) -> wasmtime::Result<i64> {
        let conn = accessor.with(|mut access| access.get().handle(&conn))?;
        Ok(conn.session.lock().await.last_insert_rowid)
    }

    async fn changes_async(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
    ) -> wasmtime::Result<u64> {
        let conn = accessor.with(|mut access| access.get().handle(&conn))?;
        Ok(conn.session.lock().await.changes)
    }
}
