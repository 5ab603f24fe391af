//! Replicas: what nodes report and list in their inventories, the deletions waiting for
//! them, and the objects short of copies that repair is to find.

use rusqlite::{params, Connection, OptionalExtension};

use super::nodes::require_node;
use super::objects::object_status;
use super::{now_ms, MetaDb, MetaResult, ObjectStatus};
use crate::master::repair::UnderReplicated;
use crate::proto::{Checksum, ReplicaState};

/// Complete objects with fewer healthy copies than their replication but at least one
/// readable copy (those with none cannot be repaired), the fewest healthy first; `?1` is
/// the limit. Run on every maintenance tick, so it starts from the few suspect replicas
/// and never scans every replica (`tests::periodic_queries_never_scan_every_replica`).
pub(super) const UNDER_REPLICATED: &str = "WITH suspects AS (
        SELECT object_seq FROM replicas WHERE state != 'confirmed'
        UNION
        -- From the few nodes down to their replicas: joined the other way,
        -- SQLite scans every replica of every node on each tick.
        SELECT r.object_seq FROM nodes n CROSS JOIN replicas r ON r.node_id = n.id
        WHERE n.state NOT IN ('alive', 'suspect')
    ),
    counted AS (
        SELECT o.id, o.replication, o.size,
               (SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
                WHERE r.object_seq = o.seq AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect')) AS healthy,
               EXISTS (SELECT 1 FROM replicas r JOIN nodes n ON n.id = r.node_id
                       WHERE r.object_seq = o.seq AND r.state = 'confirmed'
                         AND n.state = 'read-only') AS readable
        -- CROSS JOIN keeps this order: SQLite would otherwise count
        -- every object's replicas before joining the few suspects.
        FROM suspects s CROSS JOIN objects o ON o.seq = s.object_seq
        WHERE o.status = 'complete'
    )
    SELECT id, replication, size FROM counted
    WHERE (healthy > 0 OR readable) AND healthy < replication ORDER BY healthy LIMIT ?1";

impl MetaDb {
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
                "SELECT 1 FROM objects o JOIN replicas r ON r.object_seq = o.seq
                 WHERE o.id = ?1 AND r.node_id = ?2 AND r.state = 'confirmed' AND r.size = ?3
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
                    "UPDATE replicas SET state = 'quarantined', updated_at = ?3
                     WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1) AND node_id = ?2",
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
                            "UPDATE replicas SET seen_scan = ?3
                             WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1) AND node_id = ?2",
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

    /// Completed objects with fewer healthy replicas (confirmed, on a node that is not
    /// dead) than their replication factor but at least one, fewest first. Only objects
    /// with an unhealthy replica record are looked at, so a healthy cluster costs an
    /// index probe.
    pub fn under_replicated(&self, limit: usize) -> MetaResult<Vec<UnderReplicated>> {
        self.read(|conn| {
            let rows: Vec<(String, i64, i64)> = conn
                .prepare_cached(UNDER_REPLICATED)?
                .query_map([limit as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?;
            // Per holder: whether its copy is healthy, whether it is on a read-only disk
            // (readable, not counted), and whether it is a live node known to lack the copy (lost or quarantined) with no deletion of it pending, which
            // may take a new one.
            let mut holders = conn.prepare_cached(
                "SELECT r.node_id, r.state = 'confirmed' AND n.state IN ('alive', 'suspect'),
                        r.state = 'confirmed' AND n.state = 'read-only',
                        r.state IN ('missing', 'quarantined') AND n.state IN ('alive', 'suspect') AND NOT EXISTS
                            (SELECT 1 FROM deletions d WHERE d.node_id = r.node_id AND d.object_id = ?1)
                 FROM replicas r JOIN nodes n ON n.id = r.node_id
                 WHERE r.object_seq = (SELECT seq FROM objects WHERE id = ?1)",
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
}

pub(super) fn upsert_confirmed(
    conn: &Connection,
    id: &str,
    node: &str,
    size: u64,
    checksum: Checksum,
    now: i64,
) -> MetaResult<()> {
    conn.prepare_cached(
        "INSERT INTO replicas (object_seq, node_id, state, size, checksum, updated_at)
         VALUES ((SELECT seq FROM objects WHERE id = ?1), ?2, 'confirmed', ?3, ?4, ?5)
         ON CONFLICT (object_seq, node_id) DO UPDATE SET state = 'confirmed', size = ?3, checksum = ?4, updated_at = ?5",
    )?
    .execute(params![id, node, size as i64, checksum.to_string(), now])?;
    Ok(())
}

pub(super) fn schedule_deletion(conn: &Connection, node: &str, id: &str, now: i64) -> MetaResult<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO deletions (node_id, object_id, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![node, id, now])?;
    Ok(())
}

/// Records that `node` holds `replica`. Returns the object id when the node should
/// delete its copy instead: the object is deleted, or complete with other bytes.
/// Objects the master does not know are left alone here (inventories collect them).
fn record_replica(conn: &Connection, node: &str, replica: &ReplicaState, now: i64) -> MetaResult<Option<String>> {
    let id = &replica.objectid;
    let row: Option<(ObjectStatus, Option<String>, i64)> = conn
        .prepare_cached("SELECT status, checksum, replication FROM objects WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((status, checksum, replication)) = row else { return Ok(None) };
    let other_bytes = checksum.as_deref().is_some_and(|sum| sum != replica.checksum.to_string());
    // The node is told to delete its copy in the answer, and the deletion is queued for
    // its heartbeats too in case the answer is lost.
    match status {
        ObjectStatus::Deleted => {
            forget_replica(conn, id, node)?;
            schedule_deletion(conn, node, id, now)?;
            return Ok(Some(id.clone()));
        }
        ObjectStatus::Complete if other_bytes => {
            // The record of the copy stays, as `missing`: it is what sends repair to
            // the object if it is short of copies.
            mark_missing(conn, id, node, now)?;
            schedule_deletion(conn, node, id, now)?;
            return Ok(Some(id.clone()));
        }
        ObjectStatus::Complete => {
            if healthy_copies(conn, id)? >= replication && !has_record(conn, id, node)? {
                // A copy beyond the replication factor that the master has no record of:
                // most likely a node back from the dead after its copies were made again
                // elsewhere. Enough healthy copies remain without it, so it is removed,
                // not kept forever.
                schedule_deletion(conn, node, id, now)?;
                return Ok(Some(id.clone()));
            }
            upsert_confirmed(conn, id, node, replica.size, replica.checksum, now)?;
            // Back at full strength: records of copies that are gone or on dead nodes are
            // dropped (a dead node that returns re-reports what it still has).
            if healthy_copies(conn, id)? >= replication {
                // A move's expected copy (`placed`) stays: it is on its way.
                conn.prepare_cached(
                    "DELETE FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1)
                     AND (state NOT IN ('confirmed', 'placed')
                     OR node_id IN (SELECT id FROM nodes WHERE state NOT IN ('alive', 'suspect')))",
                )?
                .execute([id])?;
            }
        }
        ObjectStatus::Pending => upsert_confirmed(conn, id, node, replica.size, replica.checksum, now)?,
    }
    Ok(None)
}

/// Keeps the record of `node`'s copy only as a copy it lacks (`missing`).
pub(super) fn mark_missing(conn: &Connection, id: &str, node: &str, now: i64) -> MetaResult<()> {
    conn.prepare_cached(
        "UPDATE replicas SET state = 'missing', size = NULL, checksum = NULL, updated_at = ?3
         WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1) AND node_id = ?2",
    )?
    .execute(params![id, node, now])?;
    Ok(())
}

pub(super) fn forget_replica(conn: &Connection, id: &str, node: &str) -> MetaResult<()> {
    conn.prepare_cached(
        "DELETE FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1) AND node_id = ?2",
    )?
    .execute(params![id, node])?;
    Ok(())
}

/// Confirmed copies of an object on nodes that are not dead.
fn healthy_copies(conn: &Connection, id: &str) -> MetaResult<i64> {
    let healthy = conn
        .prepare_cached(
            "SELECT count(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
             WHERE r.object_seq = (SELECT seq FROM objects WHERE id = ?1) AND r.state = 'confirmed'
               AND n.state IN ('alive', 'suspect')",
        )?
        .query_row([id], |row| row.get(0))?;
    Ok(healthy)
}

/// Whether the master has any record of `node`'s copy of an object.
pub(super) fn has_record(conn: &Connection, id: &str, node: &str) -> MetaResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1) AND node_id = ?2",
        )?
        .exists(params![id, node])?)
}
