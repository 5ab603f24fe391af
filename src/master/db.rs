//! `MetaDb`: the master's metadata in SQLite, and the only code in the project with SQL.
//!
//! One writer thread owns the write connection and is fed by a channel: it takes every
//! write waiting, runs each in its own savepoint inside one transaction and commits once
//! (group commit), so many concurrent writes share one fsync and each caller is answered
//! only after the commit is durable (`synchronous=FULL`). Reads use a small pool of
//! read-only connections, which WAL lets run beside the writer.

use std::fmt;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::log;
use crate::proto::ObjectId;

/// Writes folded into one transaction at most.
const MAX_BATCH: usize = 512;

/// Schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: nodes, objects and their replicas. Timestamps are Unix milliseconds.
    "CREATE TABLE nodes (
        id             TEXT PRIMARY KEY,
        address        TEXT NOT NULL UNIQUE,
        state          TEXT NOT NULL DEFAULT 'alive',
        registered_at  INTEGER NOT NULL,
        last_seen      INTEGER NOT NULL,
        capacity_bytes INTEGER,
        free_bytes     INTEGER,
        object_count   INTEGER
    );
    CREATE TABLE objects (
        id           TEXT PRIMARY KEY,
        size         INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('pending', 'complete', 'deleted')),
        replication  INTEGER NOT NULL,
        checksum     TEXT,
        created_at   INTEGER NOT NULL,
        completed_at INTEGER,
        deleted_at   INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX objects_pending ON objects (created_at) WHERE status = 'pending';
    CREATE TABLE replicas (
        object_id  TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        state      TEXT NOT NULL CHECK (state IN ('placed', 'confirmed', 'quarantined')),
        size       INTEGER,
        checksum   TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (object_id, node_id)
    ) WITHOUT ROWID;
    CREATE INDEX replicas_by_node ON replicas (node_id, object_id);",
];

/// The master layer's error; its status is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    Invalid(String),
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Internal(String),
}

impl MetaError {
    pub fn status(&self) -> u16 {
        match self {
            MetaError::Invalid(_) => 400,
            MetaError::NotFound(_) => 404,
            MetaError::Conflict(_) => 409,
            MetaError::Unavailable(_) => 503,
            MetaError::Internal(_) => 500,
        }
    }
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Invalid(m) | MetaError::NotFound(m) | MetaError::Conflict(m) | MetaError::Unavailable(m) => {
                f.write_str(m)
            }
            MetaError::Internal(m) => write!(f, "metadata store error: {m}"),
        }
    }
}

impl std::error::Error for MetaError {}

impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> MetaError {
        MetaError::Internal(e.to_string())
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// A node as the master's tables know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub address: String,
    pub state: String,
    pub registered_at: i64,
    pub last_seen: i64,
    pub replicas: u64,
}

/// A completed object and where its replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    pub id: String,
    pub size: u64,
    pub status: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub replicas: Vec<ReplicaRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub node_id: String,
    pub address: String,
    pub state: String,
}

/// What a registration changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New,
    AddressChanged,
    Unchanged,
}

type Finish = Box<dyn FnOnce(Option<&MetaError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;

pub struct MetaDb {
    jobs: Option<Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    readers: (Sender<Connection>, Receiver<Connection>),
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

impl MetaDb {
    /// Opens (creating and migrating) the database at `path` with `readers` read
    /// connections.
    pub fn open(path: &Path, readers: usize) -> MetaResult<MetaDb> {
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = open_connection(path, rw)?;
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

        let (jobs, queue) = crossbeam_channel::bounded::<Job>(4096);
        let writer = std::thread::Builder::new()
            .name("master-db-writer".into())
            .spawn(move || write_loop(&conn, &queue))
            .map_err(|e| MetaError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(MetaDb { jobs: Some(jobs), writer: Some(writer), readers: pool })
    }

    /// Runs `f` in the writer's next transaction and returns its result once committed.
    fn write<T, F>(&self, f: F) -> MetaResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> MetaResult<T> + Send + 'static,
    {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit_error| {
                let outcome = match commit_error {
                    None => result,
                    Some(e) => Err(e.clone()),
                };
                let _ = reply.send(outcome);
            })
        });
        let jobs = self.jobs.as_ref().expect("the writer runs until drop");
        jobs.send(job).map_err(|_| MetaError::Internal("the writer thread has stopped".into()))?;
        answer.recv().map_err(|_| MetaError::Internal("the writer thread has stopped".into()))?
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> MetaResult<T>) -> MetaResult<T> {
        let conn = self.readers.1.recv().expect("the pool holds its own sender");
        let result = f(&conn);
        self.readers.0.send(conn).expect("the pool holds its own receiver");
        result
    }

    pub fn register_node(&self, id: &str, address: &str) -> MetaResult<Registered> {
        let (id, address) = (id.to_string(), address.to_string());
        self.write(move |conn| {
            let now = now_ms();
            let holder: Option<String> = conn
                .prepare_cached("SELECT id FROM nodes WHERE address = ?1")?
                .query_row([&address], |row| row.get(0))
                .optional()?;
            if let Some(holder) = holder.filter(|holder| *holder != id) {
                return Err(MetaError::Conflict(format!(
                    "address {address} is already registered by node {holder:?}; a node keeps one id, \
                     so register it as {holder:?} or give the new node its own address"
                )));
            }
            let current: Option<String> = conn
                .prepare_cached("SELECT address FROM nodes WHERE id = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            let outcome = match current {
                None => {
                    conn.prepare_cached(
                        "INSERT INTO nodes (id, address, state, registered_at, last_seen) VALUES (?1, ?2, 'alive', ?3, ?3)",
                    )?
                    .execute(params![id, address, now])?;
                    Registered::New
                }
                Some(current) => {
                    conn.prepare_cached("UPDATE nodes SET address = ?2, last_seen = ?3, state = 'alive' WHERE id = ?1")?
                        .execute(params![id, address, now])?;
                    if current == address {
                        Registered::Unchanged
                    } else {
                        Registered::AddressChanged
                    }
                }
            };
            Ok(outcome)
        })
    }

    /// Creates a pending object and its placement: `replication` distinct nodes chosen
    /// by `choose` from the live ones. Returns the chosen nodes' addresses.
    pub fn create_object<C>(&self, id: ObjectId, size: u64, replication: usize, choose: C) -> MetaResult<Vec<String>>
    where
        C: FnOnce(&[(String, String)], usize) -> MetaResult<Vec<(String, String)>> + Send + 'static,
    {
        self.write(move |conn| {
            let live: Vec<(String, String)> = conn
                .prepare_cached("SELECT id, address FROM nodes WHERE state = 'alive' ORDER BY id")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let chosen = choose(&live, replication)?;
            let now = now_ms();
            let id = id.to_string();
            conn.prepare_cached(
                "INSERT INTO objects (id, size, status, replication, created_at) VALUES (?1, ?2, 'pending', ?3, ?4)",
            )?
            .execute(params![id, size as i64, replication as i64, now])?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO replicas (object_id, node_id, state, updated_at) VALUES (?1, ?2, 'placed', ?3)",
            )?;
            for (node_id, _) in &chosen {
                insert.execute(params![id, node_id, now])?;
            }
            Ok(chosen.into_iter().map(|(_, address)| address).collect())
        })
    }

    /// Marks a pending object complete; completing a complete object again is a no-op.
    pub fn complete_object(&self, id: ObjectId) -> MetaResult<()> {
        self.write(move |conn| {
            let id = id.to_string();
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM objects WHERE id = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            match status.as_deref() {
                None | Some("deleted") => {
                    Err(MetaError::NotFound(format!("no upload with objectid {id}; call /api/upload/init first")))
                }
                Some("complete") => Ok(()),
                _ => {
                    conn.prepare_cached("UPDATE objects SET status = 'complete', completed_at = ?2 WHERE id = ?1")?
                        .execute(params![id, now_ms()])?;
                    Ok(())
                }
            }
        })
    }

    /// A completed object with its replicas; pending and deleted objects are not found.
    pub fn object(&self, id: ObjectId) -> MetaResult<ObjectRow> {
        self.read(|conn| {
            let id = id.to_string();
            let row = conn
                .prepare_cached("SELECT size, status, created_at, completed_at FROM objects WHERE id = ?1")?
                .query_row([&id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?)))
                .optional()?;
            let (size, status, created_at, completed_at) = match row {
                Some(row) if row.1 == "complete" => row,
                Some(row) if row.1 == "pending" => {
                    return Err(MetaError::NotFound(format!(
                        "object {id} is still being uploaded; it is served once /api/upload/complete succeeds"
                    )))
                }
                _ => return Err(MetaError::NotFound(format!("object {id} not found"))),
            };
            let replicas = conn
                .prepare_cached(
                    "SELECT r.node_id, n.address, r.state FROM replicas r JOIN nodes n ON n.id = r.node_id
                     WHERE r.object_id = ?1 ORDER BY n.state = 'alive' DESC, r.node_id",
                )?
                .query_map([&id], |row| {
                    Ok(ReplicaRow { node_id: row.get(0)?, address: row.get(1)?, state: row.get(2)? })
                })?
                .collect::<Result<_, _>>()?;
            Ok(ObjectRow { id, size: size as u64, status, created_at, completed_at, replicas })
        })
    }

    pub fn nodes(&self) -> MetaResult<Vec<NodeRow>> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT n.id, n.address, n.state, n.registered_at, n.last_seen,
                            (SELECT count(*) FROM replicas r WHERE r.node_id = n.id)
                     FROM nodes n ORDER BY n.id",
                )?
                .query_map([], |row| {
                    Ok(NodeRow {
                        id: row.get(0)?,
                        address: row.get(1)?,
                        state: row.get(2)?,
                        registered_at: row.get(3)?,
                        last_seen: row.get(4)?,
                        replicas: row.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }
}

impl Drop for MetaDb {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after it has committed what it has.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Runs `f` inside a savepoint, so a failed job leaves no trace in the shared transaction.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> MetaResult<T>) -> MetaResult<T> {
    conn.execute_batch("SAVEPOINT job")?;
    let result = f(conn);
    let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end)?;
    result
}

fn write_loop(conn: &Connection, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let commit = conn.execute_batch("BEGIN IMMEDIATE").map_err(MetaError::from).and_then(|()| {
            for job in batch.drain(..) {
                finishers.push(job(conn));
            }
            conn.execute_batch("COMMIT").map_err(MetaError::from)
        });
        if let Err(e) = &commit {
            let refused = finishers.len() + batch.len();
            log::error("master", &format!("metadata commit failed, {refused} write(s) refused: {e}"));
            let _ = conn.execute_batch("ROLLBACK");
            // Jobs that never ran are answered too, so no caller waits forever.
            for job in batch {
                finishers.push(job(conn));
            }
        }
        for finish in finishers {
            finish(commit.as_ref().err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> (MetaDb, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("aether-db-{name}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        (MetaDb::open(&dir.join("meta.db"), 2).unwrap(), dir)
    }

    fn first(live: &[(String, String)], n: usize) -> MetaResult<Vec<(String, String)>> {
        Ok(live.iter().take(n).cloned().collect())
    }

    #[test]
    fn object_lifecycle_and_reopen() {
        let (db, dir) = temp_db("lifecycle");
        assert_eq!(db.register_node("n1", "http://a:1").unwrap(), Registered::New);
        assert_eq!(db.register_node("n1", "http://a:1").unwrap(), Registered::Unchanged);
        assert_eq!(db.register_node("n2", "http://b:1").unwrap(), Registered::New);
        assert!(matches!(db.register_node("n3", "http://b:1"), Err(MetaError::Conflict(_))));
        let id = ObjectId::new_random();
        let placed = db.create_object(id, 10, 2, first).unwrap();
        assert_eq!(placed, vec!["http://a:1", "http://b:1"]);
        assert!(matches!(db.object(id), Err(MetaError::NotFound(_))));
        db.complete_object(id).unwrap();
        db.complete_object(id).unwrap();
        assert!(matches!(db.complete_object(ObjectId::new_random()), Err(MetaError::NotFound(_))));
        drop(db);
        let db = MetaDb::open(&dir.join("meta.db"), 1).unwrap();
        let object = db.object(id).unwrap();
        assert_eq!((object.size, object.replicas.len()), (10, 2));
        assert_eq!(db.nodes().unwrap().iter().map(|n| n.replicas).collect::<Vec<_>>(), vec![1, 1]);
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
                        db.create_object(ObjectId::new_random(), 1, 1, first).is_ok()
                    }
                })
            })
            .collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
        assert_eq!(db.nodes().unwrap()[0].replicas, 16);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
