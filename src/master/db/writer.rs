//! The group-commit writer: concurrent writes share one transaction and one fsync, each
//! in its own savepoint, and the checkpoint thread that keeps the write-ahead log short.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::Receiver;
use rusqlite::Connection;

use super::{MetaDb, MetaError, MetaResult};
use crate::log;

/// Writes folded into one transaction at most.
const MAX_BATCH: usize = 512;

/// How often the checkpoint thread folds the write-ahead log into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

type Finish = Box<dyn FnOnce(Option<&MetaError>) + Send>;
/// A write: run on the connection inside the group's transaction, or (`None`) not run
/// at all because the transaction could not start; either way it returns what answers
/// its caller once the commit's outcome is known, and, if its failure ended the whole
/// transaction (`Ended`), why.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (Finish, Option<Ended>) + Send>;

/// A write's error that SQLite could not undo by itself alone: a full disk or an I/O
/// error rolls back the whole transaction, the other writes of the group with it.
struct Ended(String);

/// The write connection and the writes waiting for the next commit.
pub(super) struct Writer {
    conn: Mutex<Connection>,
    queue: Mutex<WriteQueue>,
    /// Writes per commit, for the master's metrics (`MetaDb::commit_batches`).
    batches: prometheus::Histogram,
}

struct WriteQueue {
    waiting: Vec<(Job, Arc<Turn>)>,
    /// Whether some caller is committing a group now.
    leading: bool,
}

/// What a queued write is waiting for: its group's commit, or the lead.
struct Turn {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TurnState {
    Queued,
    Lead,
    Done,
}

impl Turn {
    fn new() -> Turn {
        Turn { state: Mutex::new(TurnState::Queued), changed: Condvar::new() }
    }

    fn set(&self, state: TurnState) {
        *self.state.lock().expect("turn lock") = state;
        self.changed.notify_one();
    }

    fn wait(&self) -> TurnState {
        let mut state = self.state.lock().expect("turn lock");
        while *state == TurnState::Queued {
            state = self.changed.wait(state).expect("turn lock");
        }
        *state
    }
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Writer {
        Writer {
            conn: Mutex::new(conn),
            queue: Mutex::new(WriteQueue { waiting: Vec::new(), leading: false }),
            batches: commit_batch_histogram(),
        }
    }

    /// Queues `jobs` together, in order, and returns once the transactions they ran in
    /// are committed (or failed): one transaction unless the queue holds more than a
    /// group.
    fn run(&self, jobs: Vec<Job>) {
        let turns: Vec<Arc<Turn>> = jobs.iter().map(|_| Arc::new(Turn::new())).collect();
        let lead = {
            let mut queue = self.queue.lock().expect("write queue lock");
            queue.waiting.extend(jobs.into_iter().zip(turns.iter().cloned()));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            self.commit_group();
        }
        // In order: a turn is given the lead only once every turn queued before it is done.
        for turn in &turns {
            if turn.wait() == TurnState::Lead {
                self.commit_group();
            }
        }
    }

    /// Commits the writes waiting (this caller's first among them), answers them, and
    /// passes the lead to the next caller waiting, if any.
    fn commit_group(&self) {
        let group: Vec<(Job, Arc<Turn>)> = {
            let mut queue = self.queue.lock().expect("write queue lock");
            let n = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..n).collect()
        };
        self.batches.observe(group.len() as f64);
        let (jobs, turns): (Vec<Job>, Vec<Arc<Turn>>) = group.into_iter().unzip();
        let finishers = {
            let conn = self.conn.lock().expect("write connection lock");
            commit_jobs(&conn, jobs)
        };
        for (finish, error) in finishers {
            finish(error.as_ref());
        }
        for turn in &turns {
            turn.set(TurnState::Done);
        }
        let mut queue = self.queue.lock().expect("write queue lock");
        match queue.waiting.first() {
            Some((_, next)) => next.set(TurnState::Lead),
            None => queue.leading = false,
        }
    }
}

impl MetaDb {
    /// Runs `f` in the writer's next transaction and returns its result once committed.
    pub(super) fn write<T, F>(&self, f: F) -> MetaResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> MetaResult<T> + Send + 'static,
    {
        self.write_each(vec![f])?.pop().expect("one outcome per write")
    }

    /// Runs each of `writes` as a write of its own, queued together so that they share
    /// the writer's next commit, and returns each one's outcome in order; `Err` if a
    /// commit failed (writes of an earlier commit, when the queue held more than a group,
    /// may have been committed).
    ///
    /// Not one write over them all: a savepoint copies each page it changes first into
    /// SQLite's statement journal, kept in memory only while that stays under 64 KiB
    /// (`SQLITE_STMTJRNL_SPILL`) and written to a temporary file past that. One savepoint
    /// around a batch of uploads passed it and wrote every page to the file: the master
    /// spent 11-15 % more CPU per 4 KiB PUT at 16 clients.
    pub(super) fn write_each<T, F>(&self, writes: Vec<F>) -> MetaResult<Vec<MetaResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> MetaResult<T> + Send + 'static,
    {
        type Slot<T> = Arc<Mutex<Option<(MetaResult<T>, Option<MetaError>)>>>;
        let slots: Vec<Slot<T>> = writes.iter().map(|_| Arc::new(Mutex::new(None))).collect();
        let jobs = writes
            .into_iter()
            .zip(&slots)
            .map(|(f, slot)| {
                let slot = Arc::clone(slot);
                job(f, move |outcome, commit_error: Option<&MetaError>| {
                    *slot.lock().expect("answer lock") = Some((outcome, commit_error.cloned()));
                })
            })
            .collect();
        self.writer.run(jobs);
        let mut outcomes = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot.lock().expect("answer lock").take() {
                Some((_, Some(commit_error))) => return Err(commit_error),
                Some((outcome, None)) => outcomes.push(outcome),
                None => return Err(MetaError::Internal("a write was never answered".into())),
            }
        }
        Ok(outcomes)
    }

    /// Folds the whole write-ahead log into the database file and empties it, waiting
    /// for readers if need be: for a master that is stopping.
    pub fn checkpoint_all(&self) -> MetaResult<()> {
        let conn = self.writer.conn.lock().expect("write connection lock");
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            return Err(MetaError::Internal("the metadata log is still in use by a reader".into()));
        }
        Ok(())
    }

    /// The writer's histogram of writes per commit (group-commit batch sizes).
    pub fn commit_batches(&self) -> &prometheus::Histogram {
        &self.writer.batches
    }
}

fn commit_batch_histogram() -> prometheus::Histogram {
    let buckets = prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets");
    let opts = prometheus::HistogramOpts::new(
        "aether_master_db_commit_batch_size",
        "Metadata writes committed together by one group commit.",
    );
    prometheus::Histogram::with_opts(opts.buckets(buckets)).expect("valid metric")
}

/// The job of a write (`MetaDb::write_each`): `f` in a savepoint of the group's
/// transaction; `answer` gets its outcome and the commit's error, if any, once the
/// commit's is known.
fn job<T, F, A>(f: F, answer: A) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> MetaResult<T> + Send + 'static,
    A: FnOnce(MetaResult<T>, Option<&MetaError>) + Send + 'static,
{
    Box::new(move |conn| {
        let (result, ended) = match conn {
            Some(conn) => {
                let result = in_savepoint(conn, f);
                let ended = conn.is_autocommit().then(|| {
                    Ended(match result.as_ref().err() {
                        // Said once: the batch's error is a metadata store error itself.
                        Some(MetaError::Internal(cause)) => cause.clone(),
                        Some(e) => e.to_string(),
                        None => "the transaction ended".to_string(),
                    })
                });
                (result, ended)
            }
            None => (Err(MetaError::Internal("the write was not run".into())), None),
        };
        let finish: Finish = Box::new(move |commit_error| answer(result, commit_error));
        (finish, ended)
    })
}

/// Runs `f` inside a savepoint, so a failed job leaves no trace in the shared transaction.
/// If SQLite rolled back the whole transaction on `f`'s error (a full disk, an I/O
/// error), there is no savepoint left: `f`'s own error is returned, and the caller sees
/// the connection back in autocommit.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> MetaResult<T>) -> MetaResult<T> {
    run(conn, "SAVEPOINT job")?;
    let result = f(conn);
    if conn.is_autocommit() {
        return result;
    }
    if result.is_err() {
        run(conn, "ROLLBACK TO job")?;
    }
    run(conn, "RELEASE job")?;
    result
}

/// Runs one statement without parameters, prepared once per connection.
pub(super) fn run(conn: &Connection, sql: &str) -> MetaResult<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs `jobs` in one transaction and returns each job's finisher with the commit's
/// error, if any. Every job is answered: the ones a failed transaction never ran, and
/// one that panicked (its caller gets an error; its savepoint is rolled back so the
/// others still commit).
fn commit_jobs(conn: &Connection, jobs: Vec<Job>) -> Vec<(Finish, Option<MetaError>)> {
    let count = jobs.len();
    let mut jobs = jobs.into_iter();
    let mut finishers: Vec<Finish> = Vec::with_capacity(count);
    let commit = run(conn, "BEGIN IMMEDIATE").and_then(|()| {
        for job in jobs.by_ref() {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(conn)))) {
                Ok((finish, None)) => finishers.push(finish),
                // The writes after it must not run: outside a transaction each would
                // commit on its own, and its caller be told it failed with the rest.
                Ok((finish, Some(Ended(cause)))) => {
                    finishers.push(finish);
                    return Err(MetaError::Internal(format!(
                        "a write failed and SQLite rolled back the whole transaction: {cause}"
                    )));
                }
                Err(_) => {
                    log::error("master", "a metadata write panicked; it is rolled back and its caller told so");
                    run(conn, "ROLLBACK TO job")?;
                    run(conn, "RELEASE job")?;
                }
            }
        }
        run(conn, "COMMIT")
    });
    let error = commit.err();
    if let Some(e) = &error {
        log::error("master", &format!("metadata commit failed, {count} write(s) refused: {e}"));
        let _ = conn.execute_batch("ROLLBACK");
        finishers.extend(jobs.map(|job| job(None).0));
    }
    finishers.into_iter().map(|finish| (finish, error.clone())).collect()
}

/// Folds the write-ahead log into the database file every `CHECKPOINT_INTERVAL`, without
/// blocking writers or readers (PASSIVE), so that a commit's own checkpoint (past
/// `WAL_AUTOCHECKPOINT_PAGES`) finds little left to copy.
pub(super) fn checkpoint_loop(conn: &Connection, stopped: &Receiver<()>) {
    let mut failing = false;
    while stopped.recv_timeout(CHECKPOINT_INTERVAL) == Err(crossbeam_channel::RecvTimeoutError::Timeout) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0)) {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                log::warn("master", &format!("cannot checkpoint the metadata log (commits will): {e}"));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{first, temp_db};
    use super::*;
    use crate::master::db::Registered;
    use crate::proto::ObjectId;

    #[test]
    fn concurrent_writes_are_each_answered_and_a_panic_spoils_only_its_own() {
        let (db, dir) = temp_db("group");
        let db = Arc::new(db);
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let db = Arc::clone(&db);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let (id, address) = (format!("n{t}-{i}"), format!("http://h{t}:{i}"));
                        assert_eq!(db.register_node(&id, &address).unwrap(), Registered::New);
                        // A write that fails leaves no trace, whatever shares its commit.
                        let refused = db.write(move |conn| -> MetaResult<()> {
                            run(
                                conn,
                                "INSERT INTO nodes (id, address, registered_at, last_seen) VALUES ('x', 'y', 0, 0)",
                            )?;
                            Err(MetaError::Conflict("refused".into()))
                        });
                        assert!(matches!(refused, Err(MetaError::Conflict(_))));
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let panicked = db.write(|_conn| -> MetaResult<()> { panic!("a bug in a write") });
        assert!(matches!(panicked, Err(MetaError::Internal(_))), "{panicked:?}");
        assert_eq!(db.register_node("after", "http://after:1").unwrap(), Registered::New);
        let nodes = db.nodes().unwrap();
        assert_eq!(nodes.len(), 8 * 50 + 1);
        assert!(!nodes.iter().any(|n| n.id == "x"));
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What a full disk does: SQLite rolls back the whole transaction on a write's
    /// error. The writes batched with it are all refused and none of them stays, the
    /// ones after it included (they used to run outside any transaction, commit one by
    /// one, and still be answered with the batch's error), and the error says why.
    #[test]
    fn a_write_whose_error_ends_the_transaction_fails_its_whole_batch_and_leaves_nothing() {
        let (db, dir) = temp_db("ended");
        let insert = |id: &'static str| {
            move |conn: &Connection| {
                run(
                    conn,
                    &format!("INSERT INTO nodes (id, address, registered_at, last_seen) VALUES ('{id}', 'a', 0, 0)"),
                )
            }
        };
        let answers: Vec<Arc<Mutex<Option<MetaResult<()>>>>> = (0..3).map(|_| Arc::default()).collect();
        let answer_into = |slot: &Arc<Mutex<Option<MetaResult<()>>>>| {
            let slot = Arc::clone(slot);
            move |outcome: MetaResult<()>, commit_error: Option<&MetaError>| {
                *slot.lock().unwrap() = Some(commit_error.map_or(outcome, |e| Err(e.clone())));
            }
        };
        let jobs = vec![
            job(insert("before"), answer_into(&answers[0])),
            job(
                |conn: &Connection| {
                    // What SQLite does itself on SQLITE_FULL or an I/O error.
                    conn.execute_batch("ROLLBACK")?;
                    Err(MetaError::Internal("database or disk is full".into()))
                },
                answer_into(&answers[1]),
            ),
            job(insert("after"), answer_into(&answers[2])),
        ];
        let finishers = commit_jobs(&db.writer.conn.lock().unwrap(), jobs);
        assert_eq!(finishers.len(), 3, "every write is answered");
        for (finish, error) in finishers {
            finish(error.as_ref());
        }
        for answer in &answers {
            let error = answer.lock().unwrap().take().unwrap().unwrap_err().to_string();
            assert!(error.contains("rolled back the whole transaction: database or disk is full"), "{error}");
        }
        let ids: Vec<String> = db.nodes().unwrap().into_iter().map(|n| n.id).collect();
        assert!(ids.is_empty(), "{ids:?}");
        // The writer goes on.
        assert_eq!(db.register_node("later", "http://later:1").unwrap(), Registered::New);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_does_not_spoil_its_batch() {
        let (db, dir) = temp_db("batch");
        let db = std::sync::Arc::new(db);
        db.register_node("n1", "http://a:1").unwrap();
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let db = std::sync::Arc::clone(&db);
                std::thread::spawn(move || {
                    if i % 2 == 0 {
                        db.register_node(&format!("x{i}"), "http://a:1").is_err()
                    } else {
                        db.create_object(ObjectId::new_random(), 1, 1, first(&db, 1)).is_ok()
                    }
                })
            })
            .collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
        let pending: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM objects WHERE placed = 'n1'", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(pending, 16);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
