//! `spin:sqlite/sqlite@3.1.0`, backed by SQLite files (Spin's `type = "spin"`
//! databases).
//!
//! Every guest `open` gets its own connection, so a guest's `BEGIN … COMMIT`
//! spans only its own statements; concurrent connections share the file
//! through WAL mode and a busy timeout instead of failing with `SQLITE_BUSY`.

use anyhow::Context as _;
use rusqlite::types::Value as SqlValue;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::bindings::sqlite::{self, Error, QueryResult, RowResult, Value};
use crate::runtime_config::Location;

/// How long a statement waits for another connection's write lock: as long
/// as a request may run, so that a burst of writers queues instead of
/// failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a database file in WAL mode, creating its folder if needed.
pub fn open_file(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open SQLite file {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("cannot enable WAL on {}", path.display()))?;
    Ok(conn)
}

/// Where each database label lives, for the whole application.
pub struct Databases {
    /// Every label the application defines, opened or not.
    defined: BTreeSet<String>,
    /// Locations of the labels some component uses.
    locations: BTreeMap<String, Location>,
    /// Keeps each in-memory database alive while guests come and go.
    _memory_anchors: Mutex<Vec<rusqlite::Connection>>,
}

impl Databases {
    /// Opens every database once now, so a bad path fails at start-up.
    pub fn open(
        defined: BTreeSet<String>,
        locations: BTreeMap<String, Location>,
    ) -> anyhow::Result<Self> {
        let mut anchors = Vec::new();
        for (label, location) in &locations {
            let conn = connect(label, location)
                .with_context(|| format!("SQLite database `{label}` ({location:?})"))?;
            if *location == Location::Memory {
                anchors.push(conn);
            }
        }
        Ok(Databases {
            defined,
            locations,
            _memory_anchors: Mutex::new(anchors),
        })
    }
}

fn connect(label: &str, location: &Location) -> anyhow::Result<rusqlite::Connection> {
    match location {
        Location::File(path) => open_file(path),
        Location::Memory => {
            let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_URI;
            let uri = format!("file:bazaar-{label}?mode=memory&cache=shared");
            let conn = rusqlite::Connection::open_with_flags(uri, flags)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            Ok(conn)
        }
    }
}

/// What one component may open.
pub struct SqliteGrants {
    pub databases: Arc<Databases>,
    pub granted: BTreeSet<String>,
}

/// The guest's connection resource.
pub struct ConnectionHandle {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

pub struct Sqlite;

impl HasData for Sqlite {
    type Data<'a> = SqliteView<'a>;
}

pub struct SqliteView<'a> {
    pub grants: &'a SqliteGrants,
    pub table: &'a mut ResourceTable,
}

impl SqliteView<'_> {
    fn open(&mut self, label: &str) -> wasmtime::Result<Result<Resource<ConnectionHandle>, Error>> {
        if !self.grants.databases.defined.contains(label) {
            return Ok(Err(Error::NoSuchDatabase));
        }
        let location = match self.grants.databases.locations.get(label) {
            Some(location) if self.grants.granted.contains(label) => location,
            _ => return Ok(Err(Error::AccessDenied)),
        };
        let conn = match connect(label, location) {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(Error::Io(format!("{e:#}")))),
        };
        let handle = ConnectionHandle {
            conn: Arc::new(Mutex::new(conn)),
        };
        Ok(Ok(self.table.push(handle)?))
    }

    fn conn(
        &self,
        r: &Resource<ConnectionHandle>,
    ) -> wasmtime::Result<Arc<Mutex<rusqlite::Connection>>> {
        Ok(Arc::clone(&self.table.get(r)?.conn))
    }
}

/// Runs one statement to completion, returning its columns and rows.
fn run(
    conn: &rusqlite::Connection,
    statement: &str,
    params: Vec<Value>,
) -> Result<QueryResult, Error> {
    let mut stmt = conn.prepare(statement).map_err(io_error)?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let params: Vec<SqlValue> = params.into_iter().map(to_sql).collect();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(io_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(io_error)? {
        let values = (0..columns.len())
            .map(|i| row.get::<_, SqlValue>(i).map(from_sql))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(io_error)?;
        out.push(RowResult { values });
    }
    Ok(QueryResult { columns, rows: out })
}

fn io_error(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => Error::DatabaseFull,
        _ => Error::Io(e.to_string()),
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

fn locked(conn: &Mutex<rusqlite::Connection>) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking SQLite work off the async runtime.
async fn blocking<R: Send + 'static>(
    conn: Arc<Mutex<rusqlite::Connection>>,
    f: impl FnOnce(&rusqlite::Connection) -> R + Send + 'static,
) -> wasmtime::Result<R> {
    Ok(tokio::task::spawn_blocking(move || f(&locked(&conn))).await?)
}

impl sqlite::Host for SqliteView<'_> {}

impl sqlite::HostConnection for SqliteView<'_> {
    fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<ConnectionHandle>, Error>> {
        SqliteView::open(self, &database)
    }

    fn execute(
        &mut self,
        conn: Resource<ConnectionHandle>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        let conn = self.conn(&conn)?;
        Ok(run(&locked(&conn), &statement, parameters))
    }

    fn last_insert_rowid(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<i64> {
        let conn = self.conn(&conn)?;
        Ok(locked(&conn).last_insert_rowid())
    }

    fn changes(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<u64> {
        let conn = self.conn(&conn)?;
        Ok(locked(&conn).changes())
    }

    fn drop(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
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
        let conn = accessor.with(|mut access| access.get().conn(&conn))?;
        let result = blocking(conn, move |c| run(c, &statement, parameters)).await?;
        let QueryResult { columns, rows } = match result {
            Ok(result) => result,
            Err(e) => return Ok(Err(e)),
        };
        accessor.with(|mut access| {
            let rows = StreamReader::new(&mut access, rows)?;
            let done = FutureReader::new(&mut access, async { Ok::<_, wasmtime::Error>(Ok(())) })?;
            Ok(Ok((columns, rows, done)))
        })
    }

    async fn last_insert_rowid_async(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
    ) -> wasmtime::Result<i64> {
        let conn = accessor.with(|mut access| access.get().conn(&conn))?;
        Ok(locked(&conn).last_insert_rowid())
    }

    async fn changes_async(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
    ) -> wasmtime::Result<u64> {
        let conn = accessor.with(|mut access| access.get().conn(&conn))?;
        Ok(locked(&conn).changes())
    }
}
