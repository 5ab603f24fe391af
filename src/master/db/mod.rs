//! `MetaDb`: the master's metadata in SQLite, and the only code in the project with SQL.
//!
//! Writes are group-committed without a writer thread (leader/follower): a caller queues
//! its write, and the first caller to find no commit under way becomes the leader. It
//! takes every write waiting, runs each in its own savepoint inside one transaction,
//! commits once (`synchronous=FULL`, so one fsync for the group), answers every caller of
//! the group, and hands the lead to the first caller still waiting. So concurrent writes
//! share an fsync, each caller is answered only after the commit is durable, and no
//! request waits on a hand-off to another thread when the database is idle. A checkpoint
//! thread folds the write-ahead log into the database file off the commit path. Reads use
//! a small pool of read-only connections, which WAL lets run beside the writer.
//!
//! One concern per file: `writer` (the group commit and the checkpoint thread), `schema`
//! (migrations and connection settings), `error` (`MetaError`), `nodes`, `objects`
//! (uploads and objects), `replicas` (reports, inventories, deletions, repair
//! candidates), `drains` (zones, drains, moves, removal), `counts` (the cluster's
//! totals), `uploads` (the secret upload ids are signed with, and `complete`: the one
//! durable write of an upload), `states` (the states the tables keep, as enums), `namespace` (the S3
//! namespace) and `bench` (offline population). Every SQL statement of the project lives
//! in this folder.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags};

mod bench;
mod counts;
mod drains;
mod error;
mod namespace;
mod nodes;
mod objects;
mod replicas;
mod schema;
mod states;
#[cfg(test)]
mod tests;
mod uploads;
mod writer;

pub use counts::Counts;
pub use drains::Drain;
pub use error::{MetaError, MetaResult};
pub use nodes::Registered;
// For the namespace, which deletes the objects its keys pointed at.
use objects::{forget_object, object_status};
pub use objects::{Candidate, Confirmation, ReplicaRow};
use schema::{migrate, open_connection};
pub use states::{ObjectStatus, ReplicaStatus};
pub use uploads::{FinishUpload, NewUpload};
use writer::{checkpoint_loop, Writer};

/// Write-ahead log pages after which a commit checkpoints by itself (SQLite's default is
/// 1,000), finishing what the checkpoint thread has left, so that the next commit starts
/// the log over from its beginning. The thread's checkpoints run beside the commits, so
/// under a steady load they never catch up and the log never starts over by itself: it
/// grew to this limit, 16,384 pages (34 MB) before, and every commit appended to it, so
/// its sync also journalled the file's new size (0.30 ms a commit against 0.20 ms once
/// written over). With 4,096 pages (8 MiB), 4 KiB PUTs at one client, R = 1, fresh
/// cluster: 1,330 / 1,400 / 1,235 -> 1,481 / 1,418 / 1,453 /s; 16 clients unchanged.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4_096;

/// The page size of a new database (SQLite's default is 4,096). Object ids are random, so
/// each upload's rows land on leaves of their own in three B-trees, and every page a
/// commit touches is written whole to the write-ahead log and again by the checkpoint:
/// smaller pages halve those bytes, which is most of a commit's time. 4 KiB PUTs at 16
/// clients, fresh cluster each: R = 1 5,434 -> 5,698 /s, R = 3 2,567 -> 2,680 /s; the
/// database is 2 % larger, lookups at a million objects unchanged. A database made with
/// another page size keeps it (WAL mode cannot change it).
const PAGE_SIZE: i64 = 2048;

/// The master's metadata: the one write connection behind the group commit, a pool of
/// read-only connections, and the checkpoint thread.
pub struct MetaDb {
    readers: (Sender<Connection>, Receiver<Connection>),
    checkpointer: Option<(Sender<()>, JoinHandle<()>)>,
    writer: Writer,
}

/// The time now in Unix milliseconds, as every timestamp of the schema is written.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl MetaDb {
    /// Opens (creating and migrating) the database at `path` with `readers` read
    /// connections.
    pub fn open(path: &Path, readers: usize) -> MetaResult<MetaDb> {
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = open_connection(path, rw)?;
        // Takes effect only while the file is still empty.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(MetaError::Internal(format!("SQLite refused WAL mode (got {mode})")));
        }
        migrate(&mut conn)?;

        let pool = crossbeam_channel::bounded(readers.max(1));
        let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        for _ in 0..readers.max(1) {
            pool.0.send(open_connection(path, ro)?).expect("the pool has room for every reader");
        }

        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        let checkpoint_conn = open_connection(path, rw)?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let checkpointer = std::thread::Builder::new()
            .name("master-db-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_conn, &stopped))
            .map_err(|e| MetaError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(MetaDb { readers: pool, checkpointer: Some((stop, checkpointer)), writer: Writer::new(conn) })
    }

    /// Runs `f` on a read connection of the pool, waiting for one if all are in use.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> MetaResult<T>) -> MetaResult<T> {
        let conn = self.readers.1.recv().expect("the pool holds its own sender");
        let result = f(&conn);
        self.readers.0.send(conn).expect("the pool holds its own receiver");
        result
    }
}

impl Drop for MetaDb {
    fn drop(&mut self) {
        if let Some((stop, checkpointer)) = self.checkpointer.take() {
            drop(stop);
            let _ = checkpointer.join();
        }
    }
}
