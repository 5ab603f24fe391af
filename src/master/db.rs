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

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::liveness::NodeState;
use super::repair::UnderReplicated;
use crate::log;
use crate::proto::{Checksum, ObjectId, ReplicaState};

mod namespace;
mod uploads;
pub use uploads::NewUpload;

/// Writes folded into one transaction at most.
const MAX_BATCH: usize = 512;

/// How often the checkpoint thread folds the write-ahead log into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// Write-ahead log pages after which a commit checkpoints by itself (SQLite's default is
/// 1,000): only a fallback for when the checkpoint thread falls behind.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

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
    // 2: replicas may be 'missing' (not found in their node's inventory) and remember the
    // inventory scan that last saw them; deletions wait here until their node takes them.
    "CREATE TABLE replicas_v2 (
        object_id  TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        state      TEXT NOT NULL CHECK (state IN ('placed', 'confirmed', 'quarantined', 'missing')),
        size       INTEGER,
        checksum   TEXT,
        updated_at INTEGER NOT NULL,
        seen_scan  TEXT,
        PRIMARY KEY (object_id, node_id)
    ) WITHOUT ROWID;
    INSERT INTO replicas_v2 (object_id, node_id, state, size, checksum, updated_at)
        SELECT object_id, node_id, state, size, checksum, updated_at FROM replicas;
    DROP TABLE replicas;
    ALTER TABLE replicas_v2 RENAME TO replicas;
    CREATE INDEX replicas_by_node ON replicas (node_id, object_id);
    CREATE INDEX replicas_unhealthy ON replicas (object_id) WHERE state != 'confirmed';
    CREATE TABLE deletions (
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        object_id  TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (node_id, object_id)
    ) WITHOUT ROWID;",
    // 3: an upload's placement lives in its object row (node ids, comma-separated) until
    // `complete`, instead of as 'placed' replica rows: an `init` then writes one row, not
    // 1 + R rows and their index entries. Node ids cannot contain commas.
    "ALTER TABLE objects ADD COLUMN placed TEXT;
    UPDATE objects SET placed = (SELECT group_concat(node_id, ',') FROM replicas r
                                 WHERE r.object_id = objects.id AND r.state = 'placed')
        WHERE status = 'pending';
    DELETE FROM replicas WHERE state = 'placed';",
    // 4: the S3 namespace: buckets, keys, access keys and grants (`db/namespace.rs`).
    namespace::MIGRATION,
    // 5: a node's zone (rack, room, site: what its replicas are spread over) and its
    // drain ('draining': its copies are being moved away; 'drained': none is left), which
    // an operator sets and a restart of the master must not forget.
    "ALTER TABLE nodes ADD COLUMN zone TEXT;
    ALTER TABLE nodes ADD COLUMN drain TEXT CHECK (drain IN ('draining', 'drained'));",
    // 6: the secret that signs upload ids (`db/uploads.rs`).
    uploads::MIGRATION,
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
    pub zone: Option<String>,
    pub drain: Option<Drain>,
}

/// Where a node's drain stands: an operator's decision, kept in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Gets no new copies; its copies are being copied elsewhere, each dropped here only
    /// once its new copy is confirmed.
    Draining,
    /// No copy is left on it: it may be removed.
    Drained,
}

impl Drain {
    pub fn as_str(self) -> &'static str {
        match self {
            Drain::Draining => "draining",
            Drain::Drained => "drained",
        }
    }

    fn parse(text: Option<String>) -> Option<Drain> {
        match text.as_deref() {
            Some("draining") => Some(Drain::Draining),
            Some("drained") => Some(Drain::Drained),
            _ => None,
        }
    }
}

/// A copy to move off a node (drain, rebalance): the object, its size and replication,
/// and the nodes holding a counted copy of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyToMove {
    pub object: String,
    pub size: u64,
    pub replication: usize,
    pub holders: Vec<String>,
}

/// A completed object and where its replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    pub id: String,
    pub size: u64,
    pub status: String,
    pub replication: usize,
    pub checksum: Option<Checksum>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub replicas: Vec<ReplicaRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub node_id: String,
    pub address: String,
    pub state: String,
    pub node_state: String,
}

/// What the master found when it asked a node for a replica itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub node_id: String,
    pub size: u64,
    pub checksum: Checksum,
}

/// Counts for `GET /api/cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub nodes_alive: u64,
    pub nodes_suspect: u64,
    pub nodes_dead: u64,
    /// Nodes whose disk failed or turned read-only.
    pub nodes_failed: u64,
    pub objects: u64,
    /// Bytes of the complete objects, one copy each.
    pub object_bytes: u64,
    pub under_replicated: u64,
    pub pending_deletes: u64,
    pub nodes_draining: u64,
    /// Confirmed copies still on draining nodes.
    pub copies_to_move: u64,
    pub nodes_drained: u64,
}

/// What a registration changed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    New,
    AddressChanged,
    Unchanged,
    /// The address was a dead or failed node's, now removed.
    TookOver {
        previous: String,
    },
}

/// A node that may take a replica: (node id, address).
pub type Candidate = (String, String);

type Finish = Box<dyn FnOnce(Option<&MetaError>) + Send>;
/// A write: run on the connection inside the group's transaction, or (`None`) not run
/// at all because the transaction could not start; either way it returns what answers
/// its caller once the commit's outcome is known.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Finish + Send>;

pub struct MetaDb {
    readers: (Sender<Connection>, Receiver<Connection>),
    checkpointer: Option<(Sender<()>, JoinHandle<()>)>,
    writer: Writer,
}

/// The write connection and the writes waiting for the next commit.
struct Writer {
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
    /// Queues `job` and returns once the transaction it ran in is committed (or failed).
    fn run(&self, job: Job) {
        let turn = Arc::new(Turn::new());
        let lead = {
            let mut queue = self.queue.lock().expect("write queue lock");
            queue.waiting.push((job, Arc::clone(&turn)));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead || turn.wait() == TurnState::Lead {
            self.commit_group();
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

        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        let checkpoint_conn = open_connection(path, rw)?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let checkpointer = std::thread::Builder::new()
            .name("master-db-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_conn, &stopped))
            .map_err(|e| MetaError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
        let writer = Writer {
            conn: Mutex::new(conn),
            queue: Mutex::new(WriteQueue { waiting: Vec::new(), leading: false }),
            batches: commit_batch_histogram(),
        };
        Ok(MetaDb { readers: pool, checkpointer: Some((stop, checkpointer)), writer })
    }

    /// Runs `f` in the writer's next transaction and returns its result once committed.
    fn write<T, F>(&self, f: F) -> MetaResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> MetaResult<T> + Send + 'static,
    {
        let answer: Arc<Mutex<Option<MetaResult<T>>>> = Arc::new(Mutex::new(None));
        let reply = Arc::clone(&answer);
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => in_savepoint(conn, f),
                None => Err(MetaError::Internal("the write was not run".into())),
            };
            Box::new(move |commit_error| {
                let outcome = match commit_error {
                    None => result,
                    Some(e) => Err(e.clone()),
                };
                *reply.lock().expect("answer lock") = Some(outcome);
            })
        });
        self.writer.run(job);
        let outcome = answer.lock().expect("answer lock").take();
        outcome.unwrap_or_else(|| Err(MetaError::Internal("a write was never answered".into())))
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
            let holder: Option<(String, String)> = conn
                .prepare_cached("SELECT id, state FROM nodes WHERE address = ?1")?
                .query_row([&address], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let mut replaced = None;
            if let Some((holder, state)) = holder.filter(|(holder, _)| *holder != id) {
                if !NodeState::parse(&state).may_be_replaced() {
                    return Err(MetaError::Conflict(format!(
                        "address {address} is already registered by node {holder:?}, which is {state}; a node \
                         keeps one id, so register it as {holder:?}, or give the new node its own address, or \
                         wait: once {holder:?} is declared dead its address may be taken over"
                    )));
                }
                // A new node where a dead or failed one was (e.g. restarted on an empty
                // disk): the old one is removed for good and its copies are lost, so
                // repair re-creates them. Its row stays, under a placeholder address (an
                // address is unique), so its history and replica rows keep their node.
                conn.prepare_cached(
                    "UPDATE nodes SET state = 'removed', address = 'removed:' || id || ':' || address WHERE id = ?1",
                )?
                .execute([&holder])?;
                replaced = Some(holder);
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
                    match replaced {
                        Some(previous) => Registered::TookOver { previous },
                        None => Registered::New,
                    }
                }
                Some(current) => {
                    conn.prepare_cached("UPDATE nodes SET address = ?2, last_seen = ?3, state = 'alive' WHERE id = ?1")?
                        .execute(params![id, address, now])?;
                    match replaced {
                        Some(previous) => Registered::TookOver { previous },
                        None if current == address => Registered::Unchanged,
                        None => Registered::AddressChanged,
                    }
                }
            };
            Ok(outcome)
        })
    }

    /// Creates a pending object placed on `placed` (node id, address), whose addresses it
    /// returns: an upload as versions before one-commit uploads recorded it at `init`.
    #[cfg(test)]
    pub fn create_object(
        &self,
        id: ObjectId,
        size: u64,
        replication: usize,
        placed: Vec<Candidate>,
    ) -> MetaResult<Vec<String>> {
        self.write(move |conn| {
            let nodes: Vec<&str> = placed.iter().map(|(node, _)| node.as_str()).collect();
            conn.prepare_cached(
                "INSERT INTO objects (id, size, status, replication, created_at, placed)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5)",
            )?
            .execute(params![
                id.to_string(),
                size as i64,
                replication as i64,
                now_ms(),
                nodes.join(",")
            ])?;
            Ok(placed.into_iter().map(|(_, address)| address).collect())
        })
    }

    /// A legacy pending row's `complete` (`uploads.rs` holds the logic).
    #[cfg(test)]
    pub fn complete_object(&self, id: ObjectId, quorum: usize, found: Vec<Confirmation>) -> MetaResult<()> {
        self.write(move |conn| uploads::complete_in(conn, &id.to_string(), quorum, found))
    }

    /// An object with its replicas, live nodes' first. Unless `any_status`, only
    /// completed objects are found.
    pub fn object(&self, id: ObjectId) -> MetaResult<ObjectRow> {
        self.object_with_status(id, false)
    }

    pub fn object_with_status(&self, id: ObjectId, any_status: bool) -> MetaResult<ObjectRow> {
        self.read(|conn| {
            let id = id.to_string();
            type Row = (i64, String, i64, Option<String>, i64, Option<i64>);
            let row: Option<Row> = conn
                .prepare_cached(
                    "SELECT size, status, replication, checksum, created_at, completed_at FROM objects WHERE id = ?1",
                )?
                .query_row([&id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
                })
                .optional()?;
            let (size, status, replication, checksum, created_at, completed_at) = match row {
                Some(row) if row.1 == "complete" || (any_status && row.1 == "pending") => row,
                Some(row) if row.1 == "pending" => {
                    return Err(MetaError::NotFound(format!(
                        "object {id} is still being uploaded; it is served once /api/upload/complete succeeds"
                    )))
                }
                _ => return Err(MetaError::NotFound(format!("object {id} not found"))),
            };
            let mut replicas = conn
                .prepare_cached(
                    "SELECT r.node_id, n.address, r.state, n.state FROM replicas r JOIN nodes n ON n.id = r.node_id
                     WHERE r.object_id = ?1",
                )?
                .query_map([&id], |row| {
                    Ok(ReplicaRow {
                        node_id: row.get(0)?,
                        address: row.get(1)?,
                        state: row.get(2)?,
                        node_state: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<ReplicaRow>, _>>()?;
            // A removed node's address is no longer its own: nobody should try it.
            replicas.retain(|r| r.node_state != "removed");
            // Readers try them in this order: confirmed copies on live nodes first. (Sorted
            // here: an ORDER BY costs SQLite a temporary b-tree on every lookup.)
            replicas.sort_by_cached_key(|r| {
                let node_rank = match r.node_state.as_str() {
                    "alive" => 0,
                    "suspect" => 1,
                    _ => 2,
                };
                (r.state != "confirmed", node_rank, r.node_id.clone())
            });
            if status == "pending" {
                let mut node_state = conn.prepare_cached("SELECT state FROM nodes WHERE id = ?1")?;
                for (node_id, address) in placed_without_row(conn, &id)? {
                    let node_state = node_state.query_row([&node_id], |row| row.get(0))?;
                    replicas.push(ReplicaRow { node_id, address, state: "placed".into(), node_state });
                }
            }
            let checksum = checksum.and_then(|c| Checksum::parse(&c).ok());
            Ok(ObjectRow {
                id,
                size: size as u64,
                status,
                replication: replication as usize,
                checksum,
                created_at,
                completed_at,
                replicas,
            })
        })
    }

    pub fn nodes(&self) -> MetaResult<Vec<NodeRow>> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT n.id, n.address, n.state, n.registered_at, n.last_seen,
                            (SELECT count(*) FROM replicas r WHERE r.node_id = n.id AND r.state = 'confirmed'),
                            n.zone, n.drain
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
                        zone: row.get(6)?,
                        drain: Drain::parse(row.get(7)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Records the zone a node said it is in.
    pub fn set_zone(&self, node: &str, zone: Option<String>) -> MetaResult<()> {
        let node = node.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE nodes SET zone = ?2 WHERE id = ?1")?.execute(params![node, zone])?;
            Ok(())
        })
    }

    /// Starts, ends or cancels (`None`) a node's drain.
    pub fn set_drain(&self, node: &str, drain: Option<Drain>) -> MetaResult<()> {
        let node = node.to_string();
        self.write(move |conn| {
            require_node(conn, &node)?;
            conn.prepare_cached("UPDATE nodes SET drain = ?2 WHERE id = ?1")?
                .execute(params![node, drain.map(Drain::as_str)])?;
            Ok(())
        })
    }

    /// The most replicas any complete object with a copy on `node` asks for (0: none).
    pub fn max_replication_on(&self, node: &str) -> MetaResult<usize> {
        self.read(|conn| {
            let most: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(o.replication) FROM replicas r JOIN objects o ON o.id = r.object_id
                     WHERE r.node_id = ?1 AND r.state = 'confirmed' AND o.status = 'complete'",
                )?
                .query_row([node], |row| row.get(0))?;
            Ok(most.unwrap_or(0) as usize)
        })
    }

    /// Up to `limit` complete objects with a confirmed copy on `node`, each with every
    /// node holding a counted copy (confirmed, alive or suspect), `node` among them.
    pub fn copies_on(&self, node: &str, limit: usize) -> MetaResult<Vec<CopyToMove>> {
        self.read(|conn| {
            let rows: Vec<(String, i64, i64)> = conn
                .prepare_cached(
                    "SELECT o.id, o.replication, o.size FROM replicas r JOIN objects o ON o.id = r.object_id
                     WHERE r.node_id = ?1 AND r.state = 'confirmed' AND o.status = 'complete' LIMIT ?2",
                )?
                .query_map(params![node, limit as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut holders = conn.prepare_cached(
                "SELECT r.node_id FROM replicas r JOIN nodes n ON n.id = r.node_id
                 WHERE r.object_id = ?1 AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect')",
            )?;
            let mut copies = Vec::with_capacity(rows.len());
            for (object, replication, size) in rows {
                let holders: Vec<String> = holders.query_map([&object], |row| row.get(0))?.collect::<Result<_, _>>()?;
                copies.push(CopyToMove { object, size: size as u64, replication: replication as usize, holders });
            }
            Ok(copies)
        })
    }

    /// Records that a move will copy `objects` to `node` (as `placed` replica rows), so
    /// that the new copy, which makes one more than the replication factor until the
    /// old one is released, is counted when reported rather than taken for a surplus
    /// copy and deleted.
    pub fn expect_copies(&self, node: &str, objects: Vec<String>) -> MetaResult<()> {
        let node = node.to_string();
        self.write(move |conn| {
            let now = now_ms();
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO replicas (object_id, node_id, state, updated_at) VALUES (?1, ?2, 'placed', ?3)",
            )?;
            for object in &objects {
                if object_status(conn, object)?.as_deref() == Some("complete") {
                    insert.execute(params![object, node, now])?;
                }
            }
            Ok(())
        })
    }

    /// Drops every move's expected copy: at start-up, when no move is under way (a copy
    /// one made after all is then a surplus copy, and deleted). The partial index of
    /// non-confirmed rows keeps this from reading every replica.
    pub fn forget_all_expected(&self) -> MetaResult<usize> {
        self.write(|conn| Ok(conn.execute("DELETE FROM replicas WHERE state != 'confirmed' AND state = 'placed'", [])?))
    }

    /// Drops the expectations of copies a move did not make.
    pub fn forget_expected(&self, node: &str, objects: Vec<String>) -> MetaResult<()> {
        let node = node.to_string();
        self.write(move |conn| {
            let mut remove =
                conn.prepare_cached("DELETE FROM replicas WHERE object_id = ?1 AND node_id = ?2 AND state = 'placed'")?;
            for object in &objects {
                remove.execute(params![object, node])?;
            }
            Ok(())
        })
    }

    /// Up to `limit` complete objects with ids after `after`, in id order, each with the
    /// nodes holding a counted copy: a page of the rebalancer's walk over every object.
    pub fn objects_after(&self, after: &str, limit: usize) -> MetaResult<Vec<(String, Vec<String>)>> {
        self.read(|conn| {
            let ids: Vec<String> = conn
                .prepare_cached("SELECT id FROM objects WHERE id > ?1 AND status = 'complete' ORDER BY id LIMIT ?2")?
                .query_map(params![after, limit as i64], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut holders = conn.prepare_cached(
                "SELECT r.node_id FROM replicas r JOIN nodes n ON n.id = r.node_id
                 WHERE r.object_id = ?1 AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect')",
            )?;
            let mut page = Vec::with_capacity(ids.len());
            for id in ids {
                let nodes: Vec<String> = holders.query_map([&id], |row| row.get(0))?.collect::<Result<_, _>>()?;
                page.push((id, nodes));
            }
            Ok(page)
        })
    }

    /// Drops `node`'s copy of an object once it is not needed: only when the object has
    /// its full count of counted copies without it. The node is told to delete the file.
    /// Returns whether the copy was dropped.
    pub fn release_copy(&self, object: &str, node: &str) -> MetaResult<bool> {
        let (object, node) = (object.to_string(), node.to_string());
        self.write(move |conn| {
            let replication: Option<i64> = conn
                .prepare_cached("SELECT replication FROM objects WHERE id = ?1 AND status = 'complete'")?
                .query_row([&object], |row| row.get(0))
                .optional()?;
            let Some(replication) = replication else { return Ok(false) };
            let others: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
                     WHERE r.object_id = ?1 AND r.node_id != ?2 AND r.state = 'confirmed'
                       AND n.state IN ('alive', 'suspect')",
                )?
                .query_row(params![object, node], |row| row.get(0))?;
            if others < replication || !has_record(conn, &object, &node)? {
                return Ok(false);
            }
            forget_replica(conn, &object, &node)?;
            schedule_deletion(conn, &node, &object, now_ms())?;
            Ok(true)
        })
    }

    /// Forgets a node: its row, its replica records and the deletions waiting for it.
    /// Refused unless it is drained, or dead (or removed) with every object it held back
    /// at full strength without it.
    pub fn remove_node(&self, node: &str) -> MetaResult<()> {
        let node = node.to_string();
        self.write(move |conn| {
            let row: Option<(String, Option<String>)> = conn
                .prepare_cached("SELECT state, drain FROM nodes WHERE id = ?1")?
                .query_row([&node], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((state, drain)) = row else {
                return Err(MetaError::NotFound(format!("node {node:?} is not registered")));
            };
            let drain = Drain::parse(drain);
            let gone = matches!(NodeState::parse(&state), NodeState::Dead | NodeState::Removed);
            if drain != Some(Drain::Drained) && !gone {
                return Err(MetaError::Conflict(format!(
                    "node {node} is {state}{}: only a drained node, or a dead one whose copies were made again \
                     elsewhere, may be removed; run `aether node drain {node}` first and wait until it is drained",
                    drain.map_or(String::new(), |d| format!(" and {}", d.as_str()))
                )));
            }
            let short: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM replicas r JOIN objects o ON o.id = r.object_id
                     WHERE r.node_id = ?1 AND o.status = 'complete' AND o.replication >
                       (SELECT count(*) FROM replicas c JOIN nodes n ON n.id = c.node_id
                        WHERE c.object_id = o.id AND c.node_id != ?1 AND c.state = 'confirmed'
                          AND n.state IN ('alive', 'suspect'))",
                )?
                .query_row([&node], |row| row.get(0))?;
            if short > 0 {
                return Err(MetaError::Conflict(format!(
                    "node {node} cannot be removed yet: {short} object(s) it holds a copy of are short of their \
                     replicas without it; wait for repair (see `aether cluster`), or bring the node back"
                )));
            }
            conn.prepare_cached("DELETE FROM replicas WHERE node_id = ?1")?.execute([&node])?;
            conn.prepare_cached("DELETE FROM deletions WHERE node_id = ?1")?.execute([&node])?;
            conn.prepare_cached("DELETE FROM nodes WHERE id = ?1")?.execute([&node])?;
            Ok(())
        })
    }

    /// Records a node's change of liveness.
    pub fn set_node_state(&self, node: &str, state: NodeState) -> MetaResult<()> {
        let (node, state) = (node.to_string(), state.as_str());
        self.write(move |conn| {
            conn.prepare_cached("UPDATE nodes SET state = ?2, last_seen = ?3 WHERE id = ?1")?.execute(params![
                node,
                state,
                now_ms()
            ])?;
            Ok(())
        })
    }

    /// Replicas a node stored or found corrupt. Returns objects the node should delete:
    /// copies of deleted objects, and copies whose bytes are not the object's.
    pub fn report_replicas(
        &self,
        node: &str,
        stored: Vec<ReplicaState>,
        corrupt: Vec<String>,
    ) -> MetaResult<Vec<String>> {
        // Most reports are of uploads whose `complete` already confirmed the copy with
        // its receipt: checking that takes a read, not a turn in the next commit. (Such
        // a copy's row also proves the node is registered.)
        let reported = stored.len();
        let stored = self.read(|conn| {
            let mut known = conn.prepare_cached(
                "SELECT 1 FROM replicas r JOIN objects o ON o.id = r.object_id
                 WHERE r.object_id = ?1 AND r.node_id = ?2 AND r.state = 'confirmed' AND r.size = ?3
                   AND r.checksum = ?4 AND o.status = 'complete' AND o.checksum = ?4",
            )?;
            // A copy of an object with no row (an upload not completed yet) is left
            // alone by `record_replica` anyway: its `complete` records it.
            let mut exists = conn.prepare_cached("SELECT 1 FROM objects WHERE id = ?1")?;
            let mut news = Vec::with_capacity(stored.len());
            for replica in stored {
                let params = params![replica.objectid, node, replica.size as i64, replica.checksum.to_string()];
                if !known.exists(params)? && exists.exists([&replica.objectid])? {
                    news.push(replica);
                }
            }
            Ok(news)
        })?;
        if reported > 0 && stored.is_empty() && corrupt.is_empty() {
            return Ok(Vec::new());
        }
        let node = node.to_string();
        self.write(move |conn| {
            require_node(conn, &node)?;
            let now = now_ms();
            let mut delete = Vec::new();
            for replica in &stored {
                if let Some(id) = record_replica(conn, &node, replica, now)? {
                    delete.push(id);
                }
            }
            for id in &corrupt {
                conn.prepare_cached(
                    "UPDATE replicas SET state = 'quarantined', updated_at = ?3 WHERE object_id = ?1 AND node_id = ?2",
                )?
                .execute(params![id, node, now])?;
            }
            Ok(delete)
        })
    }

    /// One batch of a node's inventory: each listed replica is recorded as by a report
    /// and marked as seen by `scan`. Files of objects this master never heard of are to
    /// be deleted, but only once older than `grace_secs`: a grace period costs little
    /// and forgives an operator who points a node at the wrong master for a moment.
    pub fn inventory(
        &self,
        node: &str,
        scan: &str,
        entries: Vec<crate::proto::InventoryEntry>,
        grace_secs: u64,
    ) -> MetaResult<Vec<String>> {
        let (node, scan) = (node.to_string(), scan.to_string());
        self.write(move |conn| {
            require_node(conn, &node)?;
            let now = now_ms();
            let mut delete = Vec::new();
            for entry in entries {
                let known = object_status(conn, &entry.objectid)?;
                if known.is_none() {
                    // A whole second more than the grace: the node counts whole seconds,
                    // and `finish_upload` refuses uploads older than the grace, so a
                    // copy is never deleted under an upload that completes.
                    if entry.age_secs > grace_secs {
                        delete.push(entry.objectid);
                    }
                    continue;
                }
                let replica = ReplicaState { objectid: entry.objectid, size: entry.size, checksum: entry.checksum };
                match record_replica(conn, &node, &replica, now)? {
                    Some(id) => delete.push(id),
                    None => {
                        conn.prepare_cached(
                            "UPDATE replicas SET seen_scan = ?3 WHERE object_id = ?1 AND node_id = ?2",
                        )?
                        .execute(params![replica.objectid, node, scan])?;
                    }
                }
            }
            Ok(delete)
        })
    }

    /// Ends an inventory scan: confirmed replicas of `node` it did not list, and that
    /// were not written after the scan began, are missing.
    pub fn finish_inventory(&self, node: &str, scan: &str, started_ms: i64) -> MetaResult<usize> {
        let (node, scan) = (node.to_string(), scan.to_string());
        self.write(move |conn| {
            let missing = conn
                .prepare_cached(
                    "UPDATE replicas SET state = 'missing', updated_at = ?4
                     WHERE node_id = ?1 AND state = 'confirmed' AND seen_scan IS NOT ?2 AND updated_at < ?3",
                )?
                .execute(params![node, scan, started_ms, now_ms()])?;
            Ok(missing)
        })
    }

    /// Deletions waiting for `node`, handed out once (an object that survives them is
    /// deleted again when the node's next inventory lists it).
    pub fn take_deletions(&self, node: &str, limit: usize) -> MetaResult<Vec<String>> {
        // Every heartbeat asks; a read keeps the usual answer, none, off the writer.
        let waiting = self.read(|conn| {
            let found: Option<i64> = conn
                .prepare_cached("SELECT 1 FROM deletions WHERE node_id = ?1 LIMIT 1")?
                .query_row([node], |row| row.get(0))
                .optional()?;
            Ok(found.is_some())
        })?;
        if !waiting {
            return Ok(Vec::new());
        }
        let node = node.to_string();
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached("SELECT object_id FROM deletions WHERE node_id = ?1 LIMIT ?2")?
                .query_map(params![node, limit as i64], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut remove = conn.prepare_cached("DELETE FROM deletions WHERE node_id = ?1 AND object_id = ?2")?;
            for id in &ids {
                remove.execute(params![node, id])?;
            }
            Ok(ids)
        })
    }

    /// Deletes an object: it is gone from the API at once, and each node that holds a
    /// copy is told to remove it when it is next heard from.
    pub fn delete_object(&self, id: ObjectId) -> MetaResult<()> {
        self.write(move |conn| {
            let id = id.to_string();
            let status = object_status(conn, &id)?;
            match status.as_deref() {
                None | Some("deleted") => Err(MetaError::NotFound(format!("object {id} not found"))),
                _ => {
                    forget_object(conn, &id, now_ms())?;
                    Ok(())
                }
            }
        })
    }

    /// Deletes uploads still pending after `older_than_ms`; returns how many.
    pub fn expire_pending(&self, older_than_ms: i64) -> MetaResult<usize> {
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached("SELECT id FROM objects WHERE status = 'pending' AND created_at < ?1 LIMIT 1000")?
                .query_map([older_than_ms], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let now = now_ms();
            for id in &ids {
                forget_object(conn, id, now)?;
            }
            Ok(ids.len())
        })
    }

    /// More nodes for a pending upload: drops the unconfirmed placements on `failed`
    /// nodes and places `count` more replicas on nodes chosen by `choose` among those
    /// without one. Returns the new nodes' addresses.
    pub fn replace_nodes<C>(
        &self,
        id: ObjectId,
        failed: Vec<String>,
        count: usize,
        choose: C,
    ) -> MetaResult<Vec<String>>
    where
        C: FnOnce(&[Candidate], usize) -> MetaResult<Vec<Candidate>> + Send + 'static,
    {
        self.write(move |conn| {
            let id = id.to_string();
            let status = object_status(conn, &id)?;
            if status.as_deref() != Some("pending") {
                return Err(MetaError::Conflict(format!("object {id} is not an upload in progress")));
            }
            let failed_ids: Vec<String> = failed
                .iter()
                .filter_map(|address| {
                    conn.query_row("SELECT id FROM nodes WHERE address = ?1", [address], |row| row.get(0)).ok()
                })
                .collect();
            // Placements on failed nodes are dropped unless the node did store a copy.
            let mut placed = placed_nodes(conn, &id)?;
            placed.retain(|node| !failed_ids.contains(node));
            let mut holders: Vec<String> = conn
                .prepare_cached("SELECT node_id FROM replicas WHERE object_id = ?1")?
                .query_map([&id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            holders.extend(placed.iter().cloned());
            let candidates: Vec<(String, String)> = conn
                .prepare_cached("SELECT id, address FROM nodes WHERE state IN ('alive', 'suspect') ORDER BY id")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<Vec<(String, String)>, _>>()?
                .into_iter()
                .filter(|(node, _)| !holders.contains(node) && !failed_ids.contains(node))
                .collect();
            let chosen = choose(&candidates, count)?;
            placed.extend(chosen.iter().map(|(node, _)| node.clone()));
            conn.prepare_cached("UPDATE objects SET placed = ?2 WHERE id = ?1")?
                .execute(params![id, placed.join(",")])?;
            Ok(chosen.into_iter().map(|(_, address)| address).collect())
        })
    }

    /// Completed objects with fewer healthy replicas (confirmed, on a node that is not
    /// dead) than their replication factor but at least one, fewest first. Only objects
    /// with an unhealthy replica record are looked at, so a healthy cluster costs an
    /// index probe.
    pub fn under_replicated(&self, limit: usize) -> MetaResult<Vec<UnderReplicated>> {
        self.read(|conn| {
            let rows: Vec<(String, i64, i64)> = conn
                .prepare_cached(
                    "WITH suspects AS (
                         SELECT object_id FROM replicas WHERE state != 'confirmed'
                         UNION
                         SELECT r.object_id FROM replicas r JOIN nodes n ON n.id = r.node_id WHERE n.state NOT IN ('alive', 'suspect')
                     ),
                     counted AS (
                         SELECT o.id, o.replication, o.size,
                                (SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
                                 WHERE r.object_id = o.id AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect')) AS healthy,
                                EXISTS (SELECT 1 FROM replicas r JOIN nodes n ON n.id = r.node_id
                                        WHERE r.object_id = o.id AND r.state = 'confirmed'
                                          AND n.state = 'read-only') AS readable
                         -- CROSS JOIN keeps this order: SQLite would otherwise count
                         -- every object's replicas before joining the few suspects.
                         FROM suspects s CROSS JOIN objects o ON o.id = s.object_id
                         WHERE o.status = 'complete'
                     )
                     SELECT id, replication, size FROM counted
                     WHERE (healthy > 0 OR readable) AND healthy < replication ORDER BY healthy LIMIT ?1",
                )?
                .query_map([limit as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?;
            // Per holder: whether its copy is healthy, whether it is on a read-only disk
            // (readable, not counted), and whether it is a live node known to lack the copy (lost or quarantined) with no deletion of it pending, which
            // may take a new one.
            let mut holders = conn.prepare_cached(
                "SELECT r.node_id, r.state = 'confirmed' AND n.state IN ('alive', 'suspect'),
                        r.state = 'confirmed' AND n.state = 'read-only',
                        r.state IN ('missing', 'quarantined') AND n.state IN ('alive', 'suspect') AND NOT EXISTS
                            (SELECT 1 FROM deletions d WHERE d.node_id = r.node_id AND d.object_id = r.object_id)
                 FROM replicas r JOIN nodes n ON n.id = r.node_id WHERE r.object_id = ?1",
            )?;
            let mut objects = Vec::with_capacity(rows.len());
            for (id, replication, size) in rows {
                let nodes: Vec<(String, bool, bool, bool)> = holders
                    .query_map([&id], |row| Ok((row.get(0)?, row.get(1)?, row.get(3)?, row.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                objects.push(UnderReplicated {
                    object: id,
                    replication: replication as usize,
                    size: size as u64,
                    healthy: nodes.iter().filter(|(_, ok, ..)| *ok).map(|(n, ..)| n.clone()).collect(),
                    lacking: nodes.iter().filter(|(_, _, lacks, _)| *lacks).map(|(n, ..)| n.clone()).collect(),
                    read_only: nodes.iter().filter(|(.., read_only)| *read_only).map(|(n, ..)| n.clone()).collect(),
                    holders: nodes.into_iter().map(|(n, ..)| n).collect(),
                })
            }
            Ok(objects)
        })
    }

    /// Node id → address, for turning plans into requests.
    pub fn addresses(&self) -> MetaResult<std::collections::HashMap<String, String>> {
        self.read(|conn| {
            let map = conn
                .prepare_cached("SELECT id, address FROM nodes")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(map)
        })
    }

    /// The writer's histogram of writes per commit (group-commit batch sizes).
    pub fn commit_batches(&self) -> &prometheus::Histogram {
        &self.writer.batches
    }

    pub fn counts(&self) -> MetaResult<Counts> {
        self.read(|conn| {
            // One snapshot for all the counts, so node states and replica counts agree.
            let _snapshot = conn.unchecked_transaction()?;
            let (objects, object_bytes): (i64, i64) = conn.query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE status = 'complete'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let under: i64 = conn.query_row(
                "SELECT count(*) FROM objects o WHERE o.status = 'complete' AND o.replication >
                 (SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
                  WHERE r.object_id = o.id AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect'))",
                [],
                |r| r.get(0),
            )?;
            let deletes: i64 = conn.query_row("SELECT count(*) FROM deletions", [], |r| r.get(0))?;
            let nodes = |state: &str| -> MetaResult<u64> {
                let n: i64 = conn.query_row("SELECT count(*) FROM nodes WHERE state = ?1", [state], |r| r.get(0))?;
                Ok(n as u64)
            };
            let drains = |drain: &str| -> MetaResult<u64> {
                let n: i64 = conn.query_row("SELECT count(*) FROM nodes WHERE drain = ?1", [drain], |r| r.get(0))?;
                Ok(n as u64)
            };
            let to_move: i64 = conn.query_row(
                "SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
                 WHERE n.drain = 'draining' AND r.state = 'confirmed'",
                [],
                |r| r.get(0),
            )?;
            Ok(Counts {
                nodes_draining: drains("draining")?,
                copies_to_move: to_move as u64,
                nodes_drained: drains("drained")?,
                nodes_alive: nodes("alive")?,
                nodes_suspect: nodes("suspect")?,
                nodes_dead: nodes("dead")?,
                nodes_failed: nodes("failed")? + nodes("read-only")?,
                objects: objects as u64,
                object_bytes: object_bytes as u64,
                under_replicated: under as u64,
                pending_deletes: deletes as u64,
            })
        })
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

fn object_status(conn: &Connection, id: &str) -> MetaResult<Option<String>> {
    let status = conn
        .prepare_cached("SELECT status FROM objects WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    Ok(status)
}

fn require_node(conn: &Connection, node: &str) -> MetaResult<()> {
    let known: Option<i64> =
        conn.prepare_cached("SELECT 1 FROM nodes WHERE id = ?1")?.query_row([node], |row| row.get(0)).optional()?;
    match known {
        Some(_) => Ok(()),
        None => Err(MetaError::NotFound(format!("node {node:?} is not registered; register it first"))),
    }
}

fn upsert_confirmed(
    conn: &Connection,
    id: &str,
    node: &str,
    size: u64,
    checksum: Checksum,
    now: i64,
) -> MetaResult<()> {
    conn.prepare_cached(
        "INSERT INTO replicas (object_id, node_id, state, size, checksum, updated_at) VALUES (?1, ?2, 'confirmed', ?3, ?4, ?5)
         ON CONFLICT (object_id, node_id) DO UPDATE SET state = 'confirmed', size = ?3, checksum = ?4, updated_at = ?5",
    )?
    .execute(params![id, node, size as i64, checksum.to_string(), now])?;
    Ok(())
}

/// The nodes an upload was placed on (its object row's `placed`).
fn placed_nodes(conn: &Connection, id: &str) -> MetaResult<Vec<String>> {
    let placed: Option<Option<String>> = conn
        .prepare_cached("SELECT placed FROM objects WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    let placed = placed.flatten().unwrap_or_default();
    Ok(placed.split(',').filter(|node| !node.is_empty()).map(str::to_string).collect())
}

/// Placed nodes with no replica record yet (none has confirmed a copy), with addresses.
fn placed_without_row(conn: &Connection, id: &str) -> MetaResult<Vec<(String, String)>> {
    let mut address = conn.prepare_cached("SELECT address FROM nodes WHERE id = ?1")?;
    let mut found = Vec::new();
    for node in placed_nodes(conn, id)? {
        if !has_record(conn, id, &node)? {
            let address: String = address.query_row([&node], |row| row.get(0))?;
            found.push((node, address));
        }
    }
    Ok(found)
}

fn schedule_deletion(conn: &Connection, node: &str, id: &str, now: i64) -> MetaResult<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO deletions (node_id, object_id, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![node, id, now])?;
    Ok(())
}

/// Marks an object deleted and schedules the removal of every copy.
fn forget_object(conn: &Connection, id: &str, now: i64) -> MetaResult<()> {
    let mut nodes: Vec<String> = conn
        .prepare_cached("SELECT node_id FROM replicas WHERE object_id = ?1")?
        .query_map([id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    // An upload's placed nodes may hold a copy no one has reported yet.
    for node in placed_nodes(conn, id)? {
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    for node in &nodes {
        schedule_deletion(conn, node, id, now)?;
    }
    conn.prepare_cached("DELETE FROM replicas WHERE object_id = ?1")?.execute([id])?;
    conn.prepare_cached("UPDATE objects SET status = 'deleted', deleted_at = ?2, placed = NULL WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}

/// Records that `node` holds `replica`. Returns the object id when the node should
/// delete its copy instead: the object is deleted, or complete with other bytes.
/// Objects the master does not know are left alone here (inventories collect them).
fn record_replica(conn: &Connection, node: &str, replica: &ReplicaState, now: i64) -> MetaResult<Option<String>> {
    let id = &replica.objectid;
    let row: Option<(String, Option<String>, i64)> = conn
        .prepare_cached("SELECT status, checksum, replication FROM objects WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((status, checksum, replication)) = row else { return Ok(None) };
    let other_bytes = checksum.as_deref().is_some_and(|sum| sum != replica.checksum.to_string());
    if status == "deleted" || (status == "complete" && other_bytes) {
        // Said in the answer, and queued for the node's heartbeats in case the answer
        // is lost. A record of a complete object's copy stays, as `missing`: it is what
        // sends repair to the object if it is short of copies.
        if status == "deleted" {
            forget_replica(conn, id, node)?;
        } else {
            mark_missing(conn, id, node, now)?;
        }
        schedule_deletion(conn, node, id, now)?;
        return Ok(Some(id.clone()));
    }
    if status == "complete" && healthy_copies(conn, id)? >= replication && !has_record(conn, id, node)? {
        // A copy beyond the replication factor that the master has no record of: most
        // likely a node back from the dead after its copies were made again elsewhere.
        // Enough healthy copies remain without it, so it is removed, not kept forever.
        schedule_deletion(conn, node, id, now)?;
        return Ok(Some(id.clone()));
    }
    upsert_confirmed(conn, id, node, replica.size, replica.checksum, now)?;
    if status == "complete" {
        // Back at full strength: records of copies that are gone or on dead nodes are
        // dropped (a dead node that returns re-reports what it still has).
        if healthy_copies(conn, id)? >= replication {
            // A move's expected copy (`placed`) stays: it is on its way.
            conn.prepare_cached(
                "DELETE FROM replicas WHERE object_id = ?1 AND (state NOT IN ('confirmed', 'placed')
                 OR node_id IN (SELECT id FROM nodes WHERE state NOT IN ('alive', 'suspect')))",
            )?
            .execute([id])?;
        }
    }
    Ok(None)
}

/// Keeps the record of `node`'s copy only as a copy it lacks (`missing`).
fn mark_missing(conn: &Connection, id: &str, node: &str, now: i64) -> MetaResult<()> {
    conn.prepare_cached(
        "UPDATE replicas SET state = 'missing', size = NULL, checksum = NULL, updated_at = ?3
         WHERE object_id = ?1 AND node_id = ?2",
    )?
    .execute(params![id, node, now])?;
    Ok(())
}

fn forget_replica(conn: &Connection, id: &str, node: &str) -> MetaResult<()> {
    conn.prepare_cached("DELETE FROM replicas WHERE object_id = ?1 AND node_id = ?2")?.execute(params![id, node])?;
    Ok(())
}

/// Confirmed copies of an object on nodes that are not dead.
fn healthy_copies(conn: &Connection, id: &str) -> MetaResult<i64> {
    let healthy = conn
        .prepare_cached(
            "SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
             WHERE r.object_id = ?1 AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect')",
        )?
        .query_row([id], |row| row.get(0))?;
    Ok(healthy)
}

/// Whether the master has any record of `node`'s copy of an object.
fn has_record(conn: &Connection, id: &str, node: &str) -> MetaResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM replicas WHERE object_id = ?1 AND node_id = ?2")?
        .exists(params![id, node])?)
}

impl Drop for MetaDb {
    fn drop(&mut self) {
        if let Some((stop, checkpointer)) = self.checkpointer.take() {
            drop(stop);
            let _ = checkpointer.join();
        }
    }
}

/// Runs `f` inside a savepoint, so a failed job leaves no trace in the shared transaction.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> MetaResult<T>) -> MetaResult<T> {
    run(conn, "SAVEPOINT job")?;
    let result = f(conn);
    if result.is_err() {
        run(conn, "ROLLBACK TO job")?;
    }
    run(conn, "RELEASE job")?;
    result
}

/// Runs one statement without parameters, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> MetaResult<()> {
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
                Ok(finish) => finishers.push(finish),
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
        finishers.extend(jobs.map(|job| job(None)));
    }
    finishers.into_iter().map(|finish| (finish, error.clone())).collect()
}

/// Folds the write-ahead log into the database file every `CHECKPOINT_INTERVAL`, without
/// blocking writers or readers (PASSIVE), so commits rarely have to do it themselves.
fn checkpoint_loop(conn: &Connection, stopped: &Receiver<()>) {
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

// Benchmark support
//
// Used only by `aether bench populate` (through `master::offline`) to fill a database with many
// objects quickly for the scaling measurements. Offline only: run it with the master
// stopped (a running master would not know the nodes it registers until restarted).

impl MetaDb {
    /// Records `objects` (id, size, checksum) as complete objects, each with a confirmed
    /// replica on every node of `nodes` (which must be registered), in one job of the
    /// writer thread and so in one transaction. Ids already present are left alone.
    /// Raises the writer connection's page cache to 512 MiB for the rest of its life,
    /// which only an offline tool can afford. Returns how many objects were added.
    pub fn bench_insert_complete(
        &self,
        objects: Vec<(ObjectId, u64, Checksum)>,
        nodes: Vec<String>,
    ) -> MetaResult<usize> {
        self.write(move |conn| {
            // Big batches of random keys touch most pages of every tree: with the default
            // 2 MB cache they are spilled to the WAL and written again within one batch.
            conn.pragma_update(None, "cache_size", -512 * 1024)?;
            let now = now_ms();
            let mut object = conn.prepare_cached(
                "INSERT OR IGNORE INTO objects (id, size, status, replication, checksum, created_at, completed_at)
                 VALUES (?1, ?2, 'complete', ?3, ?4, ?5, ?5)",
            )?;
            let mut replica = conn.prepare_cached(
                "INSERT OR IGNORE INTO replicas (object_id, node_id, state, size, checksum, updated_at)
                 VALUES (?1, ?2, 'confirmed', ?3, ?4, ?5)",
            )?;
            let mut added = 0;
            for (id, size, checksum) in &objects {
                let (id, checksum) = (id.to_string(), checksum.to_string());
                if object.execute(params![id, *size as i64, nodes.len() as i64, checksum, now])? == 1 {
                    added += 1;
                    for node in &nodes {
                        replica.execute(params![id, node, *size as i64, checksum, now])?;
                    }
                }
            }
            Ok(added)
        })
    }

    /// Folds the write-ahead log into the database file and empties it, as a master
    /// that had been running all along would have done bit by bit. Opens its own
    /// connection: call it only with no `MetaDb` open on `path` and the master stopped.
    pub fn bench_checkpoint(path: &Path) -> MetaResult<()> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            return Err(MetaError::Internal(format!("{} is in use; stop the master first", path.display())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::InventoryEntry;

    /// A database with nodes n1, n2, n3 registered at http://nK:1.
    fn temp_db_with_three_nodes(name: &str) -> (MetaDb, std::path::PathBuf) {
        let (db, dir) = temp_db(name);
        for n in ["n1", "n2", "n3"] {
            db.register_node(n, &format!("http://{n}:1")).unwrap();
        }
        (db, dir)
    }

    fn temp_db(name: &str) -> (MetaDb, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("aether-db-{name}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        (MetaDb::open(&dir.join("meta.db"), 2).unwrap(), dir)
    }

    /// The first `n` nodes that are not dead, by id: a placement for tests.
    fn first(db: &MetaDb, n: usize) -> Vec<Candidate> {
        db.nodes().unwrap().into_iter().filter(|n| n.state != "dead").take(n).map(|n| (n.id, n.address)).collect()
    }

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

    #[test]
    fn version_2_placements_move_into_their_object_rows() {
        let dir = std::env::temp_dir().join(format!("aether-db-v2-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.db");
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..2] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO nodes (id, address, registered_at, last_seen) VALUES ('n1', 'http://a:1', 0, 0),
                                                                              ('n2', 'http://b:1', 0, 0);
                 INSERT INTO objects (id, size, status, replication, created_at)
                     VALUES ('0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03', 3, 'pending', 2, 0);
                 INSERT INTO replicas (object_id, node_id, state, updated_at)
                     VALUES ('0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03', 'n1', 'placed', 0),
                            ('0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03', 'n2', 'confirmed', 0);",
            )
            .unwrap();
        }
        let db = MetaDb::open(&path, 1).unwrap();
        let id = ObjectId::parse("0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03").unwrap();
        let object = db.object_with_status(id, true).unwrap();
        let states: Vec<(&str, &str)> =
            object.replicas.iter().map(|r| (r.node_id.as_str(), r.state.as_str())).collect();
        assert_eq!(states, vec![("n2", "confirmed"), ("n1", "placed")]);
        let rows: i64 = db.read(|c| Ok(c.query_row("SELECT count(*) FROM replicas", [], |r| r.get(0))?)).unwrap();
        assert_eq!(rows, 1);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn object_lifecycle_and_reopen() {
        let (db, dir) = temp_db("lifecycle");
        assert_eq!(db.register_node("n1", "http://a:1").unwrap(), Registered::New);
        assert_eq!(db.register_node("n1", "http://a:1").unwrap(), Registered::Unchanged);
        assert_eq!(db.register_node("n2", "http://b:1").unwrap(), Registered::New);
        assert!(matches!(db.register_node("n3", "http://b:1"), Err(MetaError::Conflict(_))));
        let id = ObjectId::new_random();
        let placed = db.create_object(id, 10, 2, first(&db, 2)).unwrap();
        assert_eq!(placed, vec!["http://a:1", "http://b:1"]);
        assert!(matches!(db.object(id), Err(MetaError::NotFound(_))));
        assert!(matches!(db.complete_object(id, 2, vec![]), Err(MetaError::Unavailable(_))));
        let sum = Checksum(7);
        let found = |node: &str| Confirmation { node_id: node.into(), size: 10, checksum: sum };
        db.complete_object(id, 2, vec![found("n1"), found("n2")]).unwrap();
        db.complete_object(id, 2, vec![]).unwrap();
        assert!(matches!(db.complete_object(ObjectId::new_random(), 1, vec![]), Err(MetaError::NotFound(_))));
        drop(db);
        let db = MetaDb::open(&dir.join("meta.db"), 1).unwrap();
        let object = db.object(id).unwrap();
        assert_eq!((object.size, object.replicas.len(), object.checksum), (10, 2, Some(sum)));
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

    fn replica(id: ObjectId, sum: u32) -> ReplicaState {
        ReplicaState { objectid: id.to_string(), size: 3, checksum: Checksum(sum) }
    }

    #[test]
    fn a_copy_with_other_bytes_leaves_its_object_to_repair() {
        let (db, dir) = temp_db_with_three_nodes("disagree");
        let id = ObjectId::new_random();
        db.create_object(id, 3, 3, first(&db, 3)).unwrap();
        let found = |node: &str, sum| Confirmation { node_id: node.into(), size: 3, checksum: Checksum(sum) };
        // Two of three agree (write quorum 2); n3 stored other bytes.
        db.complete_object(id, 2, vec![found("n1", 5), found("n2", 5), found("n3", 6)]).unwrap();
        assert_eq!(db.take_deletions("n3", 10).unwrap(), vec![id.to_string()]);
        let under = db.under_replicated(10).unwrap();
        assert_eq!(under.len(), 1, "two good copies of three: repair must find the object");
        assert_eq!(under[0].healthy, vec!["n1".to_string(), "n2".to_string()]);
        // n3 reports its wrong copy again: told to delete it, and the object stays on the list.
        assert_eq!(db.report_replicas("n3", vec![replica(id, 6)], vec![]).unwrap(), vec![id.to_string()]);
        assert_eq!(db.under_replicated(10).unwrap().len(), 1);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_or_dead_nodes_address_may_be_taken_over_and_its_copies_are_lost() {
        let (db, dir) = temp_db_with_three_nodes("takeover");
        let id = ObjectId::new_random();
        db.create_object(id, 3, 2, first(&db, 2)).unwrap();
        let found = |node: &str| Confirmation { node_id: node.into(), size: 3, checksum: Checksum(5) };
        db.complete_object(id, 2, vec![found("n1"), found("n2")]).unwrap();
        assert!(db.under_replicated(10).unwrap().is_empty());
        // A failed disk: its copies no longer count.
        db.set_node_state("n1", NodeState::Failed).unwrap();
        assert_eq!(db.under_replicated(10).unwrap()[0].healthy, vec!["n2".to_string()]);
        assert_eq!(db.counts().unwrap().nodes_failed, 1);
        // An alive node's address stays its own ...
        let refused = db.register_node("n9", "http://n2:1").unwrap_err();
        assert_eq!(refused.status(), 409, "{refused}");
        // ... a failed one's is taken over; the old node is removed and out of lookups.
        let outcome = db.register_node("n9", "http://n1:1").unwrap();
        assert_eq!(outcome, Registered::TookOver { previous: "n1".into() });
        let states: Vec<(String, String)> = db.nodes().unwrap().into_iter().map(|n| (n.id, n.state)).collect();
        assert!(states.contains(&("n1".into(), "removed".into())) && states.contains(&("n9".into(), "alive".into())));
        let holders: Vec<String> = db.object(id).unwrap().replicas.into_iter().map(|r| r.node_id).collect();
        assert_eq!(holders, vec!["n2".to_string()]);
        assert_eq!(db.under_replicated(10).unwrap().len(), 1);
        // Its last copy on a read-only disk: not counted, but still a source for repair.
        db.set_node_state("n2", NodeState::ReadOnly).unwrap();
        let short = db.under_replicated(10).unwrap();
        assert_eq!((short[0].healthy.len(), short[0].read_only.clone()), (0, vec!["n2".to_string()]));
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_copy_beyond_the_replication_factor_that_returns_is_removed() {
        let (db, dir) = temp_db_with_three_nodes("surplus");
        let id = ObjectId::new_random();
        db.create_object(id, 3, 2, first(&db, 2)).unwrap();
        let found = |node: &str| Confirmation { node_id: node.into(), size: 3, checksum: Checksum(5) };
        db.complete_object(id, 2, vec![found("n1"), found("n2")]).unwrap();
        // n3 turns up with a copy no one asked for: two healthy copies remain without it.
        assert_eq!(db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap(), vec![id.to_string()]);
        assert_eq!(db.take_deletions("n3", 10).unwrap(), vec![id.to_string()]);
        assert_eq!(db.object(id).unwrap().replicas.len(), 2);
        // With n1 dead, the same copy is what brings the object back to strength: kept.
        db.set_node_state("n1", NodeState::Dead).unwrap();
        assert!(db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap().is_empty());
        let holders: Vec<String> = db.object(id).unwrap().replicas.into_iter().map(|r| r.node_id).collect();
        assert_eq!(holders, vec!["n2".to_string(), "n3".to_string()]);
        // A node with a record of its copy is never told to drop it for being one too many.
        db.set_node_state("n1", NodeState::Alive).unwrap();
        assert!(db.report_replicas("n2", vec![replica(id, 5)], vec![]).unwrap().is_empty());
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reports_repairs_inventories_and_deletes() {
        let (db, dir) = temp_db_with_three_nodes("repair");
        let id = ObjectId::new_random();
        db.create_object(id, 3, 2, first(&db, 2)).unwrap();
        for node in ["n1", "n2"] {
            assert!(db.report_replicas(node, vec![replica(id, 5)], vec![]).unwrap().is_empty());
        }
        // A third copy with other bytes loses to the two that agree, and is deleted.
        db.report_replicas("n3", vec![replica(id, 6)], vec![]).unwrap();
        db.complete_object(id, 2, vec![]).unwrap();
        assert_eq!(db.take_deletions("n3", 10).unwrap(), vec![id.to_string()]);
        assert!(db.under_replicated(10).unwrap().is_empty());

        // n1 dies: the object is under-replicated, with n2 as its only source.
        db.set_node_state("n1", NodeState::Dead).unwrap();
        let under = db.under_replicated(10).unwrap();
        assert_eq!((under[0].healthy.clone(), under[0].holders.len()), (vec!["n2".to_string()], 2));
        // The repair lands on n3; the record of n1's copy goes.
        db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap();
        assert!(db.under_replicated(10).unwrap().is_empty());
        assert_eq!(db.object(id).unwrap().replicas.len(), 2);

        // n2 finds its copy corrupt: quarantined, under-replicated again.
        db.report_replicas("n2", vec![], vec![id.to_string()]).unwrap();
        assert_eq!(db.under_replicated(10).unwrap()[0].healthy, vec!["n3".to_string()]);

        // An inventory from n3 that no longer lists the object marks it missing; one
        // that lists an unknown old file asks for its deletion.
        let stray = ObjectId::new_random().to_string();
        let entry = |objectid: &str, age_secs| InventoryEntry {
            objectid: objectid.into(),
            size: 1,
            checksum: Checksum(1),
            age_secs,
        };
        let start = now_ms() + 1;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let delete = db
            .inventory("n3", "scan-1", vec![entry(&stray, 100), entry(&ObjectId::new_random().to_string(), 1)], 50)
            .unwrap();
        assert_eq!(delete, vec![stray]);
        assert_eq!(db.finish_inventory("n3", "scan-1", start).unwrap(), 1);
        assert!(db.under_replicated(10).unwrap().is_empty(), "no healthy copy left: nothing to repair from");

        // Deleting: gone at once, and every holder is told.
        db.delete_object(id).unwrap();
        assert!(matches!(db.object(id), Err(MetaError::NotFound(_))));
        assert!(matches!(db.delete_object(id), Err(MetaError::NotFound(_))));
        assert_eq!(db.take_deletions("n2", 10).unwrap(), vec![id.to_string()]);
        // A node that reports the deleted object later is told again.
        assert_eq!(db.report_replicas("n1", vec![replica(id, 5)], vec![]).unwrap(), vec![id.to_string()]);
        assert!(matches!(db.report_replicas("ghost", vec![], vec![]), Err(MetaError::NotFound(_))));
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_drained_copy_is_dropped_only_once_the_object_is_whole_without_it_and_drains_survive_a_reopen() {
        let (db, dir) = temp_db_with_three_nodes("drain");
        let id = ObjectId::new_random();
        db.create_object(id, 3, 2, first(&db, 2)).unwrap();
        db.complete_object(id, 2, vec![confirmation("n1", 5), confirmation("n2", 5)]).unwrap();
        db.set_drain("n1", Some(Drain::Draining)).unwrap();
        assert_eq!(db.max_replication_on("n1").unwrap(), 2);
        let copies = db.copies_on("n1", 10).unwrap();
        assert_eq!((copies.len(), copies[0].holders.len()), (1, 2));
        // Not before the new copy is confirmed: n1's copy is one of the two.
        assert!(!db.release_copy(&id.to_string(), "n1").unwrap());
        assert!(matches!(db.remove_node("n1"), Err(MetaError::Conflict(_))));
        // Without the expectation, a third copy would be taken for a surplus one.
        db.expect_copies("n3", vec![id.to_string()]).unwrap();
        assert_eq!(db.forget_all_expected().unwrap(), 1, "a restart forgets moves under way");
        db.expect_copies("n3", vec![id.to_string()]).unwrap();
        assert!(db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap().is_empty());
        assert!(db.release_copy(&id.to_string(), "n1").unwrap());
        assert_eq!(db.take_deletions("n1", 10).unwrap(), vec![id.to_string()]);
        assert!(db.copies_on("n1", 10).unwrap().is_empty());
        // A report of the copy before the node deleted it does not bring it back.
        assert_eq!(db.report_replicas("n1", vec![replica(id, 5)], vec![]).unwrap(), vec![id.to_string()]);
        assert_eq!(db.counts().unwrap().copies_to_move, 0);
        db.set_drain("n1", Some(Drain::Drained)).unwrap();
        drop(db);
        let db = MetaDb::open(&dir.join("meta.db"), 2).unwrap();
        let n1 = db.nodes().unwrap().into_iter().find(|n| n.id == "n1").unwrap();
        assert_eq!(n1.drain, Some(Drain::Drained));
        db.remove_node("n1").unwrap();
        assert!(db.nodes().unwrap().iter().all(|n| n.id != "n1"));
        // A live node that was not drained is not removed.
        assert!(matches!(db.remove_node("n2"), Err(MetaError::Conflict(_))));
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn confirmation(node: &str, sum: u32) -> Confirmation {
        Confirmation { node_id: node.into(), size: 3, checksum: Checksum(sum) }
    }

    #[test]
    fn stale_uploads_expire() {
        let (db, dir) = temp_db("expire");
        db.register_node("n1", "http://n1:1").unwrap();
        let id = ObjectId::new_random();
        db.create_object(id, 1, 1, first(&db, 1)).unwrap();
        assert_eq!(db.expire_pending(now_ms() - 60_000).unwrap(), 0);
        assert_eq!(db.expire_pending(now_ms() + 1).unwrap(), 1);
        assert!(matches!(db.complete_object(id, 1, vec![]), Err(MetaError::NotFound(_))));
        assert_eq!(db.take_deletions("n1", 10).unwrap(), vec![id.to_string()]);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
