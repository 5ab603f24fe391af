//! Offline work on a stopped master's database, for tools: the one way in from outside
//! the master, so no tool reaches `db` (and its SQL) itself. `aether bench populate`
//! fills a database with many objects for the scaling measurements, and `populate_bucket`
//! gives them keys in an S3 bucket for the listing measurements.

use std::path::Path;

use super::db::MetaDb;
use crate::proto::s3::{AccessKey, Entry};
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

/// Gives the first `count` objects `populate` made (`object(i)` as there) a key each,
/// `key(i)`, in a new `bucket` owned by a new access key, which it returns with its
/// secret. The keys are written as the gateway's PUTs write them (`put_entry`), from many
/// threads at once so that the group commit batches them. Run it with the master stopped,
/// after `populate` on the same directory.
pub fn populate_bucket(
    data_dir: &Path,
    bucket: &str,
    count: u64,
    object: impl Fn(u64) -> (ObjectId, u64, Checksum) + Sync,
    key: impl Fn(u64) -> String + Sync,
) -> Result<AccessKey, String> {
    const THREADS: u64 = 32;
    let path = data_dir.join("meta.db");
    let db = MetaDb::open(&path, 1).map_err(|e| e.to_string())?;
    let owner = db.create_access_key("bench").map_err(|e| e.to_string())?;
    db.create_bucket(bucket, &owner.id).map_err(|e| e.to_string())?;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|first| {
                let (db, object, key) = (&db, &object, &key);
                scope.spawn(move || -> Result<(), String> {
                    for i in (first..count).step_by(THREADS as usize) {
                        let (id, size, _) = object(i);
                        let entry = Entry {
                            bucket: bucket.to_string(),
                            key: key(i),
                            objectid: id.to_string(),
                            size,
                            etag: format!("{:032x}", i),
                            content_type: None,
                            metadata: Default::default(),
                            modified_ms: 0,
                            if_none_match: false,
                            if_match: None,
                            parts: Vec::new(),
                            checksum: None,
                        };
                        db.put_entry(entry).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().map_err(|_| "a populating thread panicked".to_string())?)
    })?;
    drop(db);
    MetaDb::bench_checkpoint(&path).map_err(|e| e.to_string())?;
    Ok(owner)
}
