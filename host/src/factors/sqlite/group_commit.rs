//! Group commit for autocommit writes: `INSERT`, `UPDATE`, `DELETE` and
//! `REPLACE` statements that no transaction holds, from any session of one
//! database, queue; whichever of their sessions gets the writer runs all
//! that are queued in one transaction, each in a savepoint of its own, and
//! commits (and syncs) once.
//!
//! Each statement keeps autocommit's meaning: it applies entirely or not at
//! all (a failing one is rolled back to its savepoint and reports its own
//! error, the others commit), and its caller hears back only once its
//! change is durable. What it saves is a commit (a write and an `fsync` of
//! the WAL) per statement. The outbox marks of the order saga are such
//! writes: one after every message handled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use super::{io_error, run, starts_with_one_of};
use crate::bindings::sqlite::{Error, QueryResult, Value};
use crate::sqlite_pool::{SqliteFile, Writer, on_blocking_thread};

/// What a statement did: its result, then the connection's last insert
/// rowid and the rows it changed.
pub type Outcome = (Result<QueryResult, Error>, i64, u64);

/// One database's queue of autocommit writes.
#[derive(Default)]
pub struct Queue {
    jobs: Mutex<Vec<Job>>,
    next_id: AtomicU64,
}

struct Job {
    id: u64,
    statement: String,
    params: Vec<Value>,
    done: oneshot::Sender<Outcome>,
}

/// Whether `statement` can join a group commit: a plain data change, which
/// SQLite runs the same inside a transaction as on its own.
pub fn joins(statement: &str) -> bool {
    starts_with_one_of(statement, &["insert", "update", "delete", "replace"])
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `statement` as an autocommit write, together with whatever
    /// other such writes are waiting when the writer comes free.
    pub async fn execute(
        self: &Arc<Self>,
        file: &SqliteFile,
        statement: String,
        params: Vec<Value>,
    ) -> Outcome {
        let (done, mut outcome) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Job {
            id,
            statement,
            params,
            done,
        });
        loop {
            tokio::select! {
                biased;
                result = &mut outcome => return result.unwrap_or_else(|_| lost()),
                writer = file.writer() => match writer {
                    Ok(writer) => {
                        let jobs = { std::mem::take(&mut *self.lock()) };
                        if jobs.is_empty() {
                            // Another session took ours and is running it.
                            drop(writer);
                            return outcome.await.unwrap_or_else(|_| lost());
                        }
                        on_blocking_thread(move || commit_together(&writer, jobs)).await;
                    }
                    Err(e) => {
                        // Still queued: it never runs. Else it is running.
                        let withdrawn = {
                            let mut jobs = self.lock();
                            let at = jobs.iter().position(|j| j.id == id);
                            at.map(|at| jobs.remove(at)).is_some()
                        };
                        if withdrawn {
                            return (Err(Error::Io(e)), 0, 0);
                        }
                        return outcome.await.unwrap_or_else(|_| lost());
                    }
                },
            }
        }
    }
}

fn lost() -> Outcome {
    (
        Err(Error::Io(
            "the write was lost with the task running it".into(),
        )),
        0,
        0,
    )
}

/// Runs `jobs` on the writer in one transaction, then tells each its
/// outcome: after the commit, or the commit's failure.
fn commit_together(writer: &Writer, jobs: Vec<Job>) {
    if let [_] = jobs.as_slice() {
        let job = jobs.into_iter().next().expect("one job");
        let result = run(writer, &job.statement, job.params);
        let _ = job
            .done
            .send((result, writer.last_insert_rowid(), writer.changes()));
        return;
    }
    if let Err(e) = writer.execute_batch("BEGIN IMMEDIATE") {
        let error = io_error(e);
        for job in jobs {
            let _ = job.done.send((Err(error.clone()), 0, 0));
        }
        return;
    }
    let mut finished = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result = writer
            .execute_batch("SAVEPOINT autocommit")
            .map_err(io_error)
            .and_then(|()| run(writer, &job.statement, job.params));
        let outcome = (result, writer.last_insert_rowid(), writer.changes());
        let undo = if outcome.0.is_err() {
            "ROLLBACK TO autocommit; RELEASE autocommit"
        } else {
            "RELEASE autocommit"
        };
        // Outside a savepoint (it failed to open) there is nothing to undo.
        let _ = writer.execute_batch(undo);
        finished.push((job.done, outcome));
    }
    match writer.execute_batch("COMMIT") {
        Ok(()) => {
            tracing::debug!(
                writes = finished.len(),
                "autocommit writes committed together"
            );
            for (done, outcome) in finished {
                let _ = done.send(outcome);
            }
        }
        Err(e) => {
            if !writer.is_autocommit() {
                let _ = writer.execute_batch("ROLLBACK");
            }
            let error = io_error(e);
            for (done, _) in finished {
                let _ = done.send((Err(error.clone()), 0, 0));
            }
        }
    }
}
