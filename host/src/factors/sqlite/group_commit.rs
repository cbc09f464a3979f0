//! Group commit for autocommit writes: `INSERT`, `UPDATE`, `DELETE` and
//! `REPLACE` statements that no transaction holds, from any session of one
//! database, queue; whichever of their sessions gets the writer runs all
//! that are queued in one transaction, each in a savepoint of its own, and
//! commits (and syncs) once.
//!
//! Each statement keeps autocommit's meaning: it applies entirely or not at
//! all (a failing one is rolled back to its savepoint and reports its own
//! error, the others commit), and its caller hears back only once its
//! change is durable. A statement that rolls back the whole transaction
//! (`INSERT OR ROLLBACK`, a trigger's `RAISE(ROLLBACK)`) fails alone, as it
//! would on its own: the ones before it in the group run again in a new
//! one. What it saves is a commit (a write and an `fsync` of
//! the WAL) per statement. The outbox marks of the order saga are such
//! writes: one after every message handled.

use rusqlite::types::Value as SqlValue;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

use super::{io_error, query, starts_with_one_of, to_sql};
use crate::backends::sqlite_pool::{self, SqliteFile, Writer, on_blocking_thread};
use crate::bindings::sqlite::{Error, QueryResult, Value};

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
    params: Vec<SqlValue>,
    /// When it is interrupted if still running ([`sqlite_pool::watched`]).
    deadline: Instant,
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
    /// other such writes are waiting when the writer comes free; it is
    /// interrupted at `deadline` ([`sqlite_pool::watched`]).
    pub async fn execute(
        self: &Arc<Self>,
        file: &SqliteFile,
        statement: String,
        params: Vec<Value>,
        deadline: Instant,
    ) -> Outcome {
        let (done, mut outcome) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Job {
            id,
            statement,
            params: params.into_iter().map(to_sql).collect(),
            deadline,
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
                        on_blocking_thread(move || commit_together(&writer, jobs))
                            .await;
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
fn commit_together(writer: &Writer, mut jobs: Vec<Job>) {
    // A job whose caller went away (its request's deadline passed while it
    // queued) is not run: nobody would hear how it went, and it could hold
    // the writer for the callers still waiting.
    jobs.retain(|job| !job.done.is_closed());
    let run = |job: &Job| {
        sqlite_pool::watched(writer, job.deadline, |conn| {
            query(conn, &job.statement, &job.params)
        })
    };
    if jobs.is_empty() {
        return;
    }
    if let [job] = jobs.as_slice() {
        let result = run(job);
        let outcome = (result, writer.last_insert_rowid(), writer.changes());
        let job = jobs.into_iter().next().expect("one job");
        let _ = job.done.send(outcome);
        return;
    }
    let mut waiting: VecDeque<Job> = jobs.into();
    'group: loop {
        if let Err(e) = writer.execute_batch("BEGIN IMMEDIATE") {
            let error = io_error(e);
            for job in waiting {
                let _ = job.done.send((Err(error.clone()), 0, 0));
            }
            return;
        }
        let mut finished: Vec<(Job, Outcome)> = Vec::with_capacity(waiting.len());
        while let Some(job) = waiting.pop_front() {
            let result = writer
                .execute_batch("SAVEPOINT autocommit")
                .map_err(io_error)
                .and_then(|()| run(&job));
            let outcome = (result, writer.last_insert_rowid(), writer.changes());
            if writer.is_autocommit() {
                // The statement rolled the whole group back: its failure is
                // its own, and the ones before it run again.
                let _ = job.done.send(outcome);
                for (job, _) in finished.into_iter().rev() {
                    waiting.push_front(job);
                }
                if waiting.is_empty() {
                    return;
                }
                continue 'group;
            }
            let undo = if outcome.0.is_err() {
                "ROLLBACK TO autocommit; RELEASE autocommit"
            } else {
                "RELEASE autocommit"
            };
            // Outside a savepoint (it failed to open) there is nothing to undo.
            let _ = writer.execute_batch(undo);
            finished.push((job, outcome));
        }
        match writer.execute_batch("COMMIT") {
            Ok(()) => {
                tracing::debug!(
                    writes = finished.len(),
                    "autocommit writes committed together"
                );
                for (job, outcome) in finished {
                    let _ = job.done.send(outcome);
                }
            }
            Err(e) => {
                if !writer.is_autocommit() {
                    let _ = writer.execute_batch("ROLLBACK");
                }
                let error = io_error(e);
                for (job, _) in finished {
                    let _ = job.done.send((Err(error.clone()), 0, 0));
                }
            }
        }
        return;
    }
}
