//! Uploads: the secret that signs upload ids, and `complete`, which records an object
//! and its replicas in one write: the only durable write of an upload (`init` writes
//! nothing; see `master/uploads.rs`). Rows of uploads pending from before (migration 3)
//! complete through the same code.

use rusqlite::{params, Connection, OptionalExtension};

use super::objects::{forget_object, object_status, placed_nodes, placed_without_row};
use super::replicas::{forget_replica, mark_missing, schedule_deletion, upsert_confirmed};
use super::{now_ms, Confirmation, MetaDb, MetaError, MetaResult, ObjectStatus, ReplicaStatus};
use crate::proto::{Checksum, ObjectId};

/// The schema migration of uploads, one step of `PRAGMA user_version`: a random secret,
/// made once, that keys the MAC of upload ids.
pub const MIGRATION: &str = "
    CREATE TABLE secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO secrets (name, value) VALUES ('upload_ids', randomblob(32));";

/// One upload of `MetaDb::finish_uploads`: what `finish_upload` takes for it.
#[derive(Debug, Clone)]
pub struct FinishUpload {
    pub id: ObjectId,
    pub upload: Option<NewUpload>,
    pub found: Vec<Confirmation>,
}

/// An upload whose id this master issued (checked by the caller): it has no row until
/// its `complete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    pub replication: usize,
    /// When its id was issued (Unix milliseconds).
    pub issued_ms: i64,
    /// The node ids it was placed on, when the master still remembers them.
    pub placed: Vec<String>,
}

impl MetaDb {
    /// The secret upload ids are signed with.
    pub fn upload_secret(&self) -> MetaResult<Vec<u8>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM secrets WHERE name = 'upload_ids'")?
                .query_row([], |row| row.get(0))?)
        })
    }

    /// Whether `id` has a row: complete, deleted, or pending from an older version.
    pub fn has_row(&self, id: ObjectId) -> MetaResult<bool> {
        self.read(|conn| Ok(object_status(conn, &id.to_string())?.is_some()))
    }

    /// Completes an upload once at least `quorum` replicas are confirmed with the same
    /// size and checksum, in one write: the object row and its replica rows. `found` are
    /// the replicas its datanodes vouched for (receipts, or the master's own `HEAD`).
    /// Replicas that disagree with the majority are dropped and deleted from their nodes;
    /// placed replicas never confirmed become `missing`, for repair to fill. Completing a
    /// complete object again is a no-op.
    ///
    /// An upload without a row (`upload`: its id is this master's) is completed only
    /// within `grace_ms` of its id's issue. Inventories delete copies of unknown objects
    /// only once older than the grace (by a whole second more than it, as datanodes
    /// count whole seconds): so whichever of the two writes comes first, a copy is never
    /// deleted under an upload that completed. The age is taken inside the write, which
    /// is what orders it with the inventory's.
    pub fn finish_upload(
        &self,
        id: ObjectId,
        upload: Option<NewUpload>,
        grace_ms: i64,
        quorum: usize,
        found: Vec<Confirmation>,
    ) -> MetaResult<()> {
        self.write(move |conn| finish_in(conn, &id.to_string(), upload, grace_ms, quorum, found))
    }

    /// `finish_upload` for several uploads, each a write of its own (one refused leaves
    /// the others as they are), queued together so that they share one commit. The
    /// outcome of each, in order; a failed commit refuses them all.
    pub fn finish_uploads(
        &self,
        uploads: Vec<FinishUpload>,
        grace_ms: i64,
        quorum: usize,
    ) -> MetaResult<Vec<MetaResult<()>>> {
        let writes = uploads
            .into_iter()
            .map(|FinishUpload { id, upload, found }| {
                move |conn: &Connection| finish_in(conn, &id.to_string(), upload, grace_ms, quorum, found)
            })
            .collect();
        self.write_each(writes)
    }

    /// Deletes an upload in flight (no row, its id this master's and within `grace_ms`):
    /// a row marks it deleted, so that it can no longer complete and copies reported
    /// later are deleted; its placed nodes are told to delete theirs. An object with a
    /// row is deleted as ever.
    pub fn delete_upload(&self, id: ObjectId, upload: NewUpload, grace_ms: i64) -> MetaResult<()> {
        self.write(move |conn| {
            let id = id.to_string();
            let now = now_ms();
            match object_status(conn, &id)? {
                Some(ObjectStatus::Deleted) => Err(MetaError::NotFound(format!("object {id} not found"))),
                Some(_) => forget_object(conn, &id, now),
                None if now - upload.issued_ms >= grace_ms => {
                    Err(MetaError::NotFound(format!("object {id} not found")))
                }
                None => {
                    conn.prepare_cached(
                        "INSERT INTO objects (id, size, status, replication, created_at, deleted_at)
                         VALUES (?1, 0, 'deleted', ?2, ?3, ?4)",
                    )?
                    .execute(params![id, upload.replication as i64, upload.issued_ms, now])?;
                    for node in &upload.placed {
                        schedule_deletion(conn, node, &id, now)?;
                    }
                    Ok(())
                }
            }
        })
    }
}

/// `MetaDb::finish_upload` inside a write: also the first half of an S3 PUT's one write
/// (`MetaDb::put_new_entry`).
pub(super) fn finish_in(
    conn: &Connection,
    id: &str,
    upload: Option<NewUpload>,
    grace_ms: i64,
    quorum: usize,
    found: Vec<Confirmation>,
) -> MetaResult<()> {
    if object_status(conn, id)?.is_none() {
        let Some(upload) = upload else {
            return Err(MetaError::NotFound(format!("no upload with objectid {id}; call /api/upload/init first")));
        };
        if now_ms() - upload.issued_ms >= grace_ms {
            return Err(MetaError::NotFound(format!(
                "upload {id} expired: it was not completed within the upload grace period of {} s, and \
                 its copies are collected; start a new upload",
                grace_ms / 1000
            )));
        }
        if let Some((size, checksum)) = unanimous(&found, upload.replication) {
            // The common case, every copy vouched for with the same bytes: the rows
            // `complete_in` would come to, written directly (5 statements at R=3, not 13).
            let now = now_ms();
            conn.prepare_cached(
                "INSERT INTO objects (id, size, status, replication, checksum, created_at, completed_at)
                 VALUES (?1, ?2, 'complete', ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                size as i64,
                upload.replication as i64,
                checksum.to_string(),
                upload.issued_ms,
                now
            ])?;
            // The new row's `seq` names it in its replicas' rows (no lookup by id).
            let seq = conn.last_insert_rowid();
            let mut replica = conn.prepare_cached(
                "INSERT INTO replicas (object_seq, node_id, state, size, checksum, updated_at)
                 VALUES (?1, ?2, 'confirmed', ?3, ?4, ?5)",
            )?;
            for confirmation in &found {
                replica.execute(params![seq, confirmation.node_id, size as i64, checksum.to_string(), now])?;
            }
            return Ok(());
        }
        conn.prepare_cached(
            "INSERT INTO objects (id, size, status, replication, created_at, placed)
             VALUES (?1, 0, 'pending', ?2, ?3, ?4)",
        )?
        .execute(params![id, upload.replication as i64, upload.issued_ms, upload.placed.join(",")])?;
    }
    complete_in(conn, id, quorum, found)
}

/// The size and checksum of `found` when it is exactly `replication` copies on as many
/// nodes, all with the same bytes: nothing for `complete_in` to weigh, drop or mark.
fn unanimous(found: &[Confirmation], replication: usize) -> Option<(u64, Checksum)> {
    let first = found.first()?;
    let same = found.iter().all(|f| f.size == first.size && f.checksum == first.checksum);
    let distinct = found.iter().enumerate().all(|(i, f)| found[..i].iter().all(|e| e.node_id != f.node_id));
    (found.len() == replication && same && distinct).then_some((first.size, first.checksum))
}

/// Completes the pending row of `id` (see `MetaDb::finish_upload`).
pub(super) fn complete_in(conn: &Connection, id: &str, quorum: usize, found: Vec<Confirmation>) -> MetaResult<()> {
    let row: Option<(ObjectStatus, i64, Option<String>)> = conn
        .prepare_cached("SELECT status, replication, checksum FROM objects WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let replication = match row {
        None => return Err(MetaError::NotFound(format!("no upload with objectid {id}; call /api/upload/init first"))),
        Some((ObjectStatus::Deleted, ..)) => {
            return Err(MetaError::NotFound(format!("upload {id} was deleted or expired; start a new one")))
        }
        Some((ObjectStatus::Complete, _, checksum)) => {
            // Completing again is a no-op, unless the copies vouched for now hold other
            // bytes than the object: then they are not this object's.
            let agrees = |c: &Confirmation| checksum.as_deref() == Some(c.checksum.to_string().as_str());
            if !found.is_empty() && !found.iter().any(agrees) {
                return Err(MetaError::Conflict(format!(
                    "object {id} is complete with other bytes than the copies this complete names; start a new upload"
                )));
            }
            return Ok(());
        }
        Some((ObjectStatus::Pending, replication, _)) => replication as usize,
    };
    let now = now_ms();
    for confirmation in &found {
        upsert_confirmed(conn, id, &confirmation.node_id, confirmation.size, confirmation.checksum, now)?;
    }
    type Row = (String, String, ReplicaStatus, Option<i64>, Option<String>);
    let rows: Vec<Row> = conn
        .prepare_cached(
            "SELECT r.node_id, n.address, r.state, r.size, r.checksum FROM replicas r
                 JOIN nodes n ON n.id = r.node_id WHERE r.object_seq = (SELECT seq FROM objects WHERE id = ?1)
                 ORDER BY r.node_id",
        )?
        .query_map([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))?
        .collect::<Result<_, _>>()?;
    let mut rows = rows;
    for (node, address) in placed_without_row(conn, id)? {
        rows.push((node, address, ReplicaStatus::Placed, None, None));
    }
    // The largest group of confirmed replicas that agree is the object.
    let mut groups: Vec<((i64, String), Vec<&str>)> = Vec::new();
    for (node, _, state, size, checksum) in &rows {
        if let (ReplicaStatus::Confirmed, Some(size), Some(checksum)) = (state, size, checksum) {
            let key = (*size, checksum.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, nodes)) => nodes.push(node),
                None => groups.push((key, vec![node])),
            }
        }
    }
    groups.sort_by_key(|(_, nodes)| std::cmp::Reverse(nodes.len()));
    let need = quorum.min(replication).max(1);
    let Some(((size, checksum), agreeing)) = groups.first().filter(|(_, nodes)| nodes.len() >= need) else {
        let confirmed = groups.first().map_or(0, |(_, nodes)| nodes.len());
        let missing: Vec<String> = rows
            .iter()
            .filter(|(node, ..)| !groups.first().is_some_and(|(_, nodes)| nodes.contains(&node.as_str())))
            .map(|(node, address, state, ..)| format!("{node} ({address}, {})", state.as_str()))
            .collect();
        return Err(MetaError::Unavailable(format!(
            "only {confirmed} of the {need} required replicas of {id} are confirmed by their datanodes; \
                 not confirmed: {}; upload the object to the missing nodes and complete again",
            if missing.is_empty() { "none placed".to_string() } else { missing.join(", ") }
        )));
    };
    // A copy confirmed by its datanode counts wherever it landed (the original
    // walk-through PUTs to nodes of its own choosing, not to the placed ones); copies
    // beyond the replication factor are removed, placed nodes' kept first.
    let placed = placed_nodes(conn, id)?;
    let mut keep: Vec<&str> = agreeing.clone();
    keep.sort_by_key(|node| !placed.iter().any(|p| p == node));
    let surplus = keep.split_off(keep.len().min(replication));
    for node in &surplus {
        forget_replica(conn, id, node)?;
        schedule_deletion(conn, node, id, now)?;
    }
    let short = keep.len() < replication;
    for (node, _, state, ..) in &rows {
        if keep.contains(&node.as_str()) || surplus.contains(&node.as_str()) {
            continue;
        }
        match state {
            ReplicaStatus::Confirmed => {
                // A copy with other bytes than the object: not a replica of it.
                // While the object is short of its count, the row stays as a
                // `missing` marker, since repair looks only at objects with such a row.
                if short {
                    mark_missing(conn, id, node, now)?;
                } else {
                    forget_replica(conn, id, node)?;
                }
                schedule_deletion(conn, node, id, now)?;
            }
            ReplicaStatus::Placed if short => {
                // Placed but never confirmed: a copy for repair to make, unless the
                // object has its full count elsewhere.
                conn.prepare_cached(
                    "INSERT INTO replicas (object_seq, node_id, state, updated_at)
                     VALUES ((SELECT seq FROM objects WHERE id = ?1), ?2, 'missing', ?3)",
                )?
                .execute(params![id, node, now])?;
            }
            ReplicaStatus::Placed | ReplicaStatus::Quarantined | ReplicaStatus::Missing => {}
        }
    }
    conn.prepare_cached(
        "UPDATE objects SET status = 'complete', completed_at = ?2, size = ?3, checksum = ?4, placed = NULL
             WHERE id = ?1",
    )?
    .execute(params![id, now, size, checksum])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Checksum, InventoryEntry};

    fn temp_db(name: &str) -> MetaDb {
        let dir = std::env::temp_dir().join(format!("aether-uploads-{name}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = MetaDb::open(&dir.join("meta.db"), 2).unwrap();
        for n in ["n1", "n2", "n3"] {
            db.register_node(n, &format!("http://{n}:1")).unwrap();
        }
        db
    }

    fn found(node: &str, sum: u32) -> Confirmation {
        Confirmation { node_id: node.into(), size: 3, checksum: Checksum(sum) }
    }

    fn upload(replication: usize, age_ms: i64, placed: &[&str]) -> NewUpload {
        NewUpload { replication, issued_ms: now_ms() - age_ms, placed: placed.iter().map(|n| n.to_string()).collect() }
    }

    /// The rows of an object that tell its state (not its timestamps): the object's
    /// size, status, replication, checksum and placement, and each replica's.
    fn rows(db: &MetaDb, id: ObjectId) -> (Vec<String>, Vec<String>) {
        db.read(|conn| {
            let object = conn.query_row(
                "SELECT size, status, replication, checksum, placed, created_at FROM objects WHERE id = ?1",
                [id.to_string()],
                |r| {
                    Ok(format!(
                        "{:?}",
                        (
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, i64>(5)?,
                        )
                    ))
                },
            )?;
            let mut replicas = conn
                .prepare("SELECT node_id, state, size, checksum FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1) ORDER BY node_id")?;
            let replicas = replicas
                .query_map([id.to_string()], |r| {
                    Ok(format!(
                        "{:?}",
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?)
                    ))
                })?
                .collect::<Result<_, _>>()?;
            Ok((vec![object], replicas))
        })
        .unwrap()
    }

    #[test]
    fn a_unanimous_complete_writes_the_rows_the_general_path_comes_to() {
        let db = temp_db("unanimous");
        let issued = upload(3, 0, &["n1", "n2", "n3"]);
        let copies = || vec![found("n3", 7), found("n1", 7), found("n2", 7)];
        let direct = ObjectId::new_random();
        db.finish_upload(direct, Some(issued.clone()), 60_000, usize::MAX, copies()).unwrap();
        let general = ObjectId::new_random();
        let upload = issued.clone();
        db.write(move |conn| {
            conn.execute(
                "INSERT INTO objects (id, size, status, replication, created_at, placed) VALUES (?1, 0, 'pending', ?2, ?3, ?4)",
                params![general.to_string(), upload.replication as i64, upload.issued_ms, upload.placed.join(",")],
            )?;
            complete_in(conn, &general.to_string(), usize::MAX, copies())
        })
        .unwrap();
        assert_eq!(rows(&db, direct), rows(&db, general));
        assert_eq!(rows(&db, direct).1.len(), 3);

        // Not unanimous (other bytes, too few, a node twice): the general path decides.
        assert_eq!(unanimous(&[found("n1", 7), found("n2", 8), found("n3", 7)], 3), None);
        assert_eq!(unanimous(&[found("n1", 7), found("n2", 7)], 3), None);
        assert_eq!(unanimous(&[found("n1", 7), found("n1", 7), found("n2", 7)], 3), None);
        assert_eq!(unanimous(&[found("n1", 7), found("n2", 7), found("n3", 7), found("n4", 7)], 3), None);
        assert_eq!(unanimous(&copies(), 3), Some((3, Checksum(7))));
    }

    #[test]
    fn an_upload_without_a_row_completes_in_one_write_within_its_grace() {
        let db = temp_db("one-write");
        let writes = || db.commit_batches().get_sample_sum();
        let id = ObjectId::new_random();
        let before = writes();
        db.finish_upload(
            id,
            Some(upload(2, 0, &["n1", "n2"])),
            60_000,
            usize::MAX,
            vec![found("n1", 5), found("n2", 5)],
        )
        .unwrap();
        assert_eq!(writes() - before, 1.0, "one durable write for the whole upload");
        let object = db.object(id).unwrap();
        assert_eq!((object.status.as_str(), object.size, object.replication), ("complete", 3, 2));
        assert_eq!(object.replicas.iter().filter(|r| r.confirmed()).count(), 2);
        // Again: a no-op; with copies of other bytes: a conflict (a colliding id).
        db.finish_upload(id, Some(upload(2, 0, &[])), 60_000, usize::MAX, vec![found("n1", 5)]).unwrap();
        db.finish_upload(id, None, 60_000, usize::MAX, vec![]).unwrap();
        let other = db.finish_upload(id, None, 60_000, usize::MAX, vec![found("n3", 6)]);
        assert!(matches!(other, Err(MetaError::Conflict(_))), "{other:?}");

        // Short of copies: refused, and nothing is left behind.
        let short = ObjectId::new_random();
        let refused =
            db.finish_upload(short, Some(upload(2, 0, &["n1", "n2"])), 60_000, usize::MAX, vec![found("n1", 5)]);
        assert!(matches!(refused, Err(MetaError::Unavailable(_))), "{refused:?}");
        assert!(matches!(db.object_with_status(short, true), Err(MetaError::NotFound(_))));
        // With a write quorum, the placed node never confirmed becomes a copy to repair.
        db.finish_upload(short, Some(upload(2, 0, &["n1", "n2"])), 60_000, 1, vec![found("n1", 5)]).unwrap();
        let object = db.object(short).unwrap();
        assert!(
            object.replicas.iter().any(|r| r.node_id == "n2" && r.state == ReplicaStatus::Missing),
            "{:?}",
            object.replicas
        );

        // Past its grace, or never issued: refused.
        let late =
            db.finish_upload(ObjectId::new_random(), Some(upload(1, 61_000, &[])), 60_000, 1, vec![found("n1", 5)]);
        assert!(matches!(&late, Err(MetaError::NotFound(e)) if e.contains("expired")), "{late:?}");
        let unknown = db.finish_upload(ObjectId::new_random(), None, 60_000, 1, vec![found("n1", 5)]);
        assert!(matches!(&unknown, Err(MetaError::NotFound(e)) if e.contains("init")), "{unknown:?}");
    }

    #[test]
    fn a_batch_of_uploads_shares_one_commit_and_a_refused_one_leaves_the_others() {
        let db = temp_db("batch");
        let (commits, writes) = (|| db.commit_batches().get_sample_count(), || db.commit_batches().get_sample_sum());
        let (first, late, last) = (ObjectId::new_random(), ObjectId::new_random(), ObjectId::new_random());
        let finishing =
            |id, age_ms| FinishUpload { id, upload: Some(upload(1, age_ms, &["n1"])), found: vec![found("n1", 5)] };
        let before = (commits(), writes());
        let outcomes = db
            .finish_uploads(vec![finishing(first, 0), finishing(late, 61_000), finishing(last, 0)], 60_000, 1)
            .unwrap();
        assert_eq!((commits() - before.0, writes() - before.1), (1, 3.0), "three writes, one commit");
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(matches!(&outcomes[1], Err(MetaError::NotFound(e)) if e.contains("expired")), "{outcomes:?}");
        for id in [first, last] {
            assert_eq!(db.object(id).unwrap().status.as_str(), "complete");
        }
        assert!(matches!(db.object_with_status(late, true), Err(MetaError::NotFound(_))));
    }

    #[test]
    fn a_deleted_upload_in_flight_never_completes_and_its_copies_go() {
        let db = temp_db("delete");
        let id = ObjectId::new_random();
        db.delete_upload(id, upload(2, 0, &["n1", "n2"]), 60_000).unwrap();
        let late = db.finish_upload(id, Some(upload(2, 0, &["n1", "n2"])), 60_000, 1, vec![found("n1", 5)]);
        assert!(matches!(late, Err(MetaError::NotFound(_))), "{late:?}");
        assert_eq!(db.take_deletions("n1", 10).unwrap(), vec![id.to_string()]);
        assert_eq!(db.take_deletions("n2", 10).unwrap(), vec![id.to_string()]);
        let expired = db.delete_upload(ObjectId::new_random(), upload(2, 61_000, &["n1"]), 60_000);
        assert!(matches!(expired, Err(MetaError::NotFound(_))));
    }

    #[test]
    fn inventories_collect_unknown_copies_only_past_the_grace() {
        let db = temp_db("grace");
        let entry = |objectid: &str, age_secs| InventoryEntry {
            objectid: objectid.to_string(),
            size: 3,
            checksum: Checksum(5),
            age_secs,
        };
        let (young, old) = (ObjectId::new_random().to_string(), ObjectId::new_random().to_string());
        // The node counts whole seconds: an age of exactly the grace may be less.
        let delete = db.inventory("n1", "scan", vec![entry(&young, 60), entry(&old, 61)], 60).unwrap();
        assert_eq!(delete, vec![old]);
    }
}
