//! Benchmark support: filling a database offline with many complete objects.
//!
//! Used only by `aether bench populate` (through `master::offline`) to fill a database with many
//! objects quickly for the scaling measurements. Offline only: run it with the master
//! stopped (a running master would not know the nodes it registers until restarted).

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::{now_ms, MetaDb, MetaError, MetaResult};
use crate::proto::{Checksum, ObjectId};

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
                "INSERT OR IGNORE INTO replicas (object_seq, node_id, state, size, checksum, updated_at)
                 VALUES (?1, ?2, 'confirmed', ?3, ?4, ?5)",
            )?;
            let mut added = 0;
            for (id, size, checksum) in &objects {
                let (id, checksum) = (id.to_string(), checksum.to_string());
                if object.execute(params![id, *size as i64, nodes.len() as i64, checksum, now])? == 1 {
                    added += 1;
                    let seq = conn.last_insert_rowid();
                    for node in &nodes {
                        replica.execute(params![seq, node, *size as i64, checksum, now])?;
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
