//! SQLite files as the `sqlite` and `key-value` factors use them: opened once,
//! reused by every request, and never waited on by an async worker.
//!
//! Each file has **one writer** connection and a pool of **readers**, each
//! connection leased to one statement (or one transaction) at a time.
//! Statements that only read run on readers (in WAL mode they never wait for
//! the writer); everything else queues in the host for the writer, an async
//! wait on no thread, instead of each connection sleeping in SQLite's busy
//! handler for the file lock. The 30 s busy timeout remains for other
//! processes writing the same file (replicas, `spin up`).
//!
//! A returned connection goes to whoever asks while it is free, not to the
//! longest waiter (see [`Pool`]): measured on the order saga, strict
//! hand-off settled ~25 orders/s and this ~65/s (BENCHMARKS.md).
//!
//! SQLite calls block, so writes, commits and long reads run on tokio's
//! blocking pool with their connection moved there; short reads (a lookup
//! by key, a page of rows) run on the async worker when they need no lock
//! and stay within a budget of VM instructions ([`on_this_thread`]), because
//! the two thread hand-offs would cost more than the read. Statements are
//! prepared through each connection's cache, so a service's handful of
//! queries is parsed once per connection rather than once per request.

use anyhow::Context as _;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::app::runtime_config::Location;

/// How long a statement waits for a write lock, and a lease for a
/// connection: as long as a request may run, so that a burst of writers
/// queues instead of failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reader connections per file. A statement beyond this many at once waits
/// for a reader rather than opening (and soon closing) another connection,
/// whose first statements would parse the schema again.
const MAX_READERS: usize = 16;

/// Writer connections per file: one, so writers queue in the host.
const MAX_WRITERS: usize = 1;

/// Prepared statements kept per connection (rusqlite's default is 16; a
/// service's queries plus its migrations' fit in this).
const STATEMENT_CACHE: usize = 64;

/// One database file (or in-memory database) and its connections.
pub struct SqliteFile {
    readers: Option<Arc<Pool>>,
    writers: Arc<Pool>,
}

/// Connections of one kind, and the leases on them.
///
/// A free connection goes to whoever asks while it is free ("barging"),
/// not to the longest waiter: handing it to a waiter that is not running
/// yet would leave it idle until that task is scheduled, and under load
/// that idle time, repeated at every hand-off, is what limits throughput
/// (a lock convoy). Waiters are woken one at a time as connections return.
struct Pool {
    /// Where new connections open; `None` for an in-memory database, whose
    /// one connection is made at start-up.
    path: Option<PathBuf>,
    /// Fitted to every new connection before it is used (an authorizer).
    guard: Option<Guard>,
    size: usize,
    state: Mutex<PoolState>,
    returned: Notify,
}

struct PoolState {
    idle: Vec<Pooled>,
    opened: usize,
}

/// A connection, and whether its guard saw a statement leave state on it
/// that the next lease must not find.
struct Pooled {
    conn: Connection,
    tainted: Tainted,
}

/// Set by a connection's guard when a statement leaves state behind on the
/// connection itself rather than in the database (a `TEMP` table or
/// trigger, an attached database): the lease that returns it has the
/// guard's `reset` clear it first. A flag, so a lease whose statements left
/// nothing (nearly all) pays one atomic load.
#[derive(Clone, Default)]
pub struct Tainted(Arc<AtomicBool>);

impl Tainted {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// What a file's connections are fitted with before their first statement
/// (the `sqlite` factor's sandbox, for guests' databases; nothing for the
/// host's own tables), and how one is put back in order between leases.
#[derive(Clone, Copy)]
pub struct Guard {
    /// Fits a new connection; sets the [`Tainted`] it is given when a
    /// statement leaves state on the connection.
    pub install: fn(&Connection, Tainted) -> rusqlite::Result<()>,
    /// Clears that state from a returned connection; if it cannot, the
    /// connection is closed rather than leased again.
    pub reset: fn(&Connection) -> anyhow::Result<()>,
}

impl Guard {
    fn fit(guard: Option<Guard>, conn: Connection) -> rusqlite::Result<Pooled> {
        let tainted = Tainted::default();
        if let Some(guard) = guard {
            (guard.install)(&conn, tainted.clone())?;
        }
        Ok(Pooled { conn, tainted })
    }
}

/// A connection leased from its pool, back to it when dropped.
pub struct Lease {
    conn: Option<Pooled>,
    pool: Arc<Pool>,
}

/// A reader connection.
pub type Reader = Lease;

/// A writer connection, held by one session until dropped.
pub type Writer = Lease;

impl std::ops::Deref for Lease {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self
            .conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
            .conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pooled) = self.conn.take() {
            // A lease dropped inside a transaction (its task was cancelled
            // while a statement ran elsewhere) must not hand the next user a
            // connection in the middle of it.
            if !pooled.conn.is_autocommit() {
                let _ = pooled.conn.execute_batch("ROLLBACK");
            }
            if pooled.tainted.take()
                && let Some(guard) = self.pool.guard
                && let Err(error) = (guard.reset)(&pooled.conn)
            {
                if self.pool.path.is_some() {
                    tracing::warn!(
                        "closing a SQLite connection whose state could not be reset: {error:#}"
                    );
                    drop(pooled);
                    self.pool.state().opened -= 1;
                    self.pool.returned.notify_one();
                    return;
                }
                // An in-memory database has only this connection: closing
                // it would lose the data.
                tracing::error!(
                    "the state of an in-memory SQLite connection could not be reset: {error:#}"
                );
            }
            self.pool.state().idle.push(pooled);
            self.pool.returned.notify_one();
        }
    }
}

impl Pool {
    fn new(
        path: Option<PathBuf>,
        guard: Option<Guard>,
        size: usize,
        idle: Vec<Pooled>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            path,
            guard,
            size,
            state: Mutex::new(PoolState {
                opened: idle.len(),
                idle,
            }),
            returned: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection, once one is free: an idle one, else a new one while
    /// the pool is below its size.
    async fn lease(self: &Arc<Self>) -> Result<Lease, String> {
        tokio::time::timeout(BUSY_TIMEOUT, self.next_free())
            .await
            .map_err(|_| format!("database is locked: no connection within {BUSY_TIMEOUT:?}"))?
            .map(|conn| Lease {
                conn: Some(conn),
                pool: Arc::clone(self),
            })
    }

    async fn next_free(&self) -> Result<Pooled, String> {
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a return in between still wakes us.
            returned.as_mut().enable();
            let open_new = {
                let mut state = self.state();
                if let Some(conn) = state.idle.pop() {
                    return Ok(conn);
                }
                let room = state.opened < self.size && self.path.is_some();
                if room {
                    state.opened += 1;
                }
                room
            };
            if let (true, Some(path)) = (open_new, &self.path) {
                // Opening reads the file: not on an async worker. The slot
                // taken above is given back unless a connection fills it,
                // even if this task is dropped while it opens.
                struct Slot<'a>(Option<&'a Pool>);
                impl Drop for Slot<'_> {
                    fn drop(&mut self) {
                        if let Some(pool) = self.0 {
                            pool.state().opened -= 1;
                        }
                    }
                }
                let mut slot = Slot(Some(self));
                let (path, guard) = (path.clone(), self.guard);
                let conn = on_blocking_thread(move || {
                    Guard::fit(guard, Connection::open(path).and_then(configure)?)
                })
                .await
                .map_err(|e| e.to_string())?;
                slot.0 = None;
                return Ok(conn);
            }
            returned.await;
        }
    }
}

impl SqliteFile {
    /// Opens a first connection now (creating the folder and turning on
    /// WAL), so a bad path fails at start-up; `init` runs on it first (a
    /// schema), then `guard` fits it and every later connection.
    pub fn open(
        location: &Location,
        init: &str,
        guard: Option<Guard>,
    ) -> anyhow::Result<Arc<SqliteFile>> {
        let first = match location {
            Location::File(path) => open_file(path)?,
            Location::Memory => configure(Connection::open_in_memory()?)?,
        };
        if !init.is_empty() {
            first.execute_batch(init)?;
        }
        let first = Guard::fit(guard, first)?;
        let file = match location {
            Location::File(path) => SqliteFile {
                readers: Some(Pool::new(
                    Some(path.clone()),
                    guard,
                    MAX_READERS,
                    Vec::new(),
                )),
                writers: Pool::new(Some(path.clone()), guard, MAX_WRITERS, vec![first]),
            },
            // A private in-memory database is one connection: it reads and
            // writes.
            Location::Memory => SqliteFile {
                readers: None,
                writers: Pool::new(None, guard, 1, vec![first]),
            },
        };
        Ok(Arc::new(file))
    }

    /// A reader connection, once one is free; `None` for an in-memory
    /// database, which only has its writer.
    pub async fn reader(&self) -> Result<Option<Reader>, String> {
        match &self.readers {
            Some(readers) => readers.lease().await.map(Some),
            None => Ok(None),
        }
    }

    /// A writer connection, once one is free.
    pub async fn writer(&self) -> Result<Writer, String> {
        self.writers.lease().await
    }
}

/// How many SQLite VM instructions a read may run on an async worker (see
/// [`on_this_thread`]): a few hundred microseconds, enough for a lookup by
/// key (~20) or a page of rows (~250 for 20 products).
const INLINE_BUDGET: std::ffi::c_int = 10_000;

thread_local! {
    /// Set by the handlers [`on_this_thread`] installs, on the thread that
    /// runs the statement.
    static WOULD_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a read `f` on the calling (async) thread, provided it neither waits
/// nor runs long: SQLite's busy handler refuses a lock at once instead of
/// sleeping (a WAL reader rarely needs one: recovery, another process
/// restarting the WAL), and a progress handler interrupts the statement
/// after [`INLINE_BUDGET`] instructions. `None` if either happened: `f`
/// changed nothing and must run again where it may wait
/// ([`on_blocking_thread`]). Short reads so spare the two thread hand-offs
/// of the blocking pool, which cost more than the read.
fn on_this_thread<R>(conn: &Connection, f: impl FnOnce(&Connection) -> R) -> Option<R> {
    fn refuse(_: i32) -> bool {
        WOULD_BLOCK.set(true);
        false
    }
    /// Puts the connection back as a blocking thread expects it, even if
    /// `f` panics.
    struct Restore<'a>(&'a Connection);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.progress_handler(0, None::<fn() -> bool>);
            let _ = self.0.busy_timeout(BUSY_TIMEOUT);
        }
    }
    WOULD_BLOCK.set(false);
    let _ = conn.busy_handler(Some(refuse));
    conn.progress_handler(
        INLINE_BUDGET,
        Some(|| {
            WOULD_BLOCK.set(true);
            true
        }),
    );
    let restore = Restore(conn);
    let result = f(conn);
    drop(restore);
    (!WOULD_BLOCK.replace(false)).then_some(result)
}

/// Runs a read `f` on `reader`: on this thread if [`on_this_thread`]
/// allows, else again from the start on the blocking pool with the lease
/// moved there (and, given a `deadline`, [`watched`]). `input` goes along and
/// comes back, for a caller that needs it afterwards (a statement SQLite
/// says writes goes on to the writer).
pub async fn read<T: Send + 'static, R: Send + 'static>(
    reader: Reader,
    input: T,
    deadline: Option<Instant>,
    f: impl Fn(&Connection, &T) -> R + Send + 'static,
) -> (R, T) {
    let (result, input, _) = read_on(reader, input, deadline, false, f).await;
    (result, input)
}

/// [`read`] on a connection the caller keeps: a session's writer, for a
/// read inside its transaction. (An interrupted read rolls nothing back.)
pub async fn read_keeping<T: Send + 'static, R: Send + 'static>(
    lease: Lease,
    input: T,
    deadline: Instant,
    f: impl Fn(&Connection, &T) -> R + Send + 'static,
) -> (R, T, Lease) {
    let (result, input, lease) = read_on(lease, input, Some(deadline), true, f).await;
    (result, input, lease.expect("a kept lease comes back"))
}

/// A lease not kept is dropped where `f` ran, so its connection is free
/// again the moment `f` is done, not when the awaiting task is next polled.
async fn read_on<T: Send + 'static, R: Send + 'static>(
    lease: Lease,
    input: T,
    deadline: Option<Instant>,
    keep: bool,
    f: impl Fn(&Connection, &T) -> R + Send + 'static,
) -> (R, T, Option<Lease>) {
    if let Some(result) = on_this_thread(&lease, |conn| f(conn, &input)) {
        return (result, input, keep.then_some(lease));
    }
    let ((result, input), lease) = on_blocking_thread_with(
        lease,
        move |_| keep,
        move |conn| {
            let result = match deadline {
                Some(deadline) => watched(conn, deadline, |conn| f(conn, &input)),
                None => f(conn, &input),
            };
            (result, input)
        },
    )
    .await;
    (result, input, lease)
}

/// Runs `f` on the blocking pool with `lease`'s connection, and gives the
/// lease back if `keep` says so once `f` is done (else it is dropped there,
/// so its connection is free the moment `f` ends). If the awaiting task
/// goes away first (its request's deadline passed), the statement `f` is
/// running is interrupted: nobody will read its result, and it holds the
/// connection.
pub async fn on_blocking_thread_with<R: Send + 'static>(
    lease: Lease,
    keep: impl FnOnce(&Connection) -> bool + Send + 'static,
    f: impl FnOnce(&Connection) -> R + Send + 'static,
) -> (R, Option<Lease>) {
    let running = Arc::new(Mutex::new(true));
    let cancel = InterruptOnDrop {
        handle: Some(lease.get_interrupt_handle()),
        running: Arc::clone(&running),
    };
    let result = on_blocking_thread(move || {
        let result = f(&lease);
        // Marked before the lease can go to anyone else, so an interrupt
        // never reaches the next holder's statement.
        *running.lock().unwrap_or_else(|p| p.into_inner()) = false;
        let kept = keep(&lease).then_some(lease);
        (result, kept)
    })
    .await;
    cancel.disarm();
    result
}

/// Interrupts a connection's statement when dropped armed, if it is still
/// running.
struct InterruptOnDrop {
    handle: Option<rusqlite::InterruptHandle>,
    running: Arc<Mutex<bool>>,
}

impl InterruptOnDrop {
    fn disarm(mut self) {
        self.handle = None;
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Held while interrupting: the statement cannot end and hand
            // the connection on in between.
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if *running {
                handle.interrupt();
            }
        }
    }
}

/// How many SQLite VM instructions run between two looks at the clock by
/// [`watched`]: microseconds of work.
const WATCH_EVERY: std::ffi::c_int = 1_000;

/// Runs `f` with SQLite interrupting its statement at `deadline` (the
/// request timeout after the guest issued it, however long it queued): a
/// guest's statement past its request's deadline serves no one, and must
/// not keep a thread, or the file's one writer, forever (`WITH RECURSIVE`
/// never ends by itself). An interrupted write inside a transaction rolls
/// the transaction back.
pub fn watched<R>(conn: &Connection, deadline: Instant, f: impl FnOnce(&Connection) -> R) -> R {
    struct Unwatch<'a>(&'a Connection);
    impl Drop for Unwatch<'_> {
        fn drop(&mut self) {
            self.0.progress_handler(0, None::<fn() -> bool>);
        }
    }
    conn.progress_handler(WATCH_EVERY, Some(move || Instant::now() > deadline));
    let _unwatch = Unwatch(conn);
    f(conn)
}

/// Runs `f` on tokio's blocking pool. A lease moved into `f` is dropped
/// there, so its connection is free again the moment `f` is done, not when
/// the awaiting task is next polled.
pub async fn on_blocking_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f)
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
