//! Offline work on a stopped master's database, for tools: the one way in from outside
//! the master, so no tool reaches `db` (and its SQL) itself. `aether bench populate`
//! fills a database with many objects for the scaling measurements.

use std::path::Path;

use super::db::MetaDb;
use crate::proto::{Checksum, ObjectId};

/// Records `count` complete objects in the database of the master whose data directory
/// is `data_dir` (created if need be), each with a confirmed copy on every node of
/// `nodes`, which are registered at loopback addresses that refuse at once (nothing may
/// contact them: lookups only read the database). `object(i)` gives the id, size and
/// checksum of the i-th object; ids already present are left alone. Works in batches of
/// `batch` objects, one transaction each, and folds the write-ahead log in at the end as a
/// running master would have. Run it with the master stopped. Returns how many objects
/// were added.
pub fn populate(
    data_dir: &Path,
    nodes: &[String],
    count: u64,
    batch: u64,
    object: impl Fn(u64) -> (ObjectId, u64, Checksum),
) -> Result<u64, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let path = data_dir.join("meta.db");
    let db = MetaDb::open(&path, 1).map_err(|e| e.to_string())?;
    for (i, node) in nodes.iter().enumerate() {
        // Port 1 + i of loopback refuses at once should anything try.
        db.register_node(node, &format!("http://127.0.0.1:{}", 1 + i)).map_err(|e| e.to_string())?;
    }
    let mut added = 0;
    let mut next = 0;
    while next < count {
        let end = (next + batch.max(1)).min(count);
        let mut objects: Vec<(ObjectId, u64, Checksum)> = (next..end).map(&object).collect();
        // In key order, each page of the trees is visited once per batch.
        objects.sort_unstable_by_key(|(id, ..)| *id);
        added += db.bench_insert_complete(objects, nodes.to_vec()).map_err(|e| e.to_string())? as u64;
        next = end;
    }
    drop(db);
    // Batches this large leave a write-ahead log as big as the database; a running
    // master would have checkpointed it long ago.
    MetaDb::bench_checkpoint(&path).map_err(|e| e.to_string())?;
    Ok(added)
}
