//! Drains, zones and moves: an operator's drain of a node, the copies a move makes and
//! releases, and the removal of a node for good.

use rusqlite::{params, OptionalExtension};

use super::nodes::require_node;
use super::objects::object_status;
use super::replicas::{forget_replica, has_record, schedule_deletion};
use super::{now_ms, MetaDb, MetaError, MetaResult, ObjectStatus};
use crate::master::liveness::NodeState;

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

impl MetaDb {
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
            conn.prepare_cached("UPDATE nodes SET drain = ?2 WHERE id = ?1")?.execute(params![node, drain])?;
            Ok(())
        })
    }

    /// The most replicas any complete object with a copy on `node` asks for (0: none).
    pub fn max_replication_on(&self, node: &str) -> MetaResult<usize> {
        self.read(|conn| {
            let most: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(o.replication) FROM replicas r JOIN objects o ON o.seq = r.object_seq
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
                    "SELECT o.id, o.replication, o.size FROM replicas r JOIN objects o ON o.seq = r.object_seq
                     WHERE r.node_id = ?1 AND r.state = 'confirmed' AND o.status = 'complete' LIMIT ?2",
                )?
                .query_map(params![node, limit as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut holders = conn.prepare_cached(
                "SELECT r.node_id FROM replicas r JOIN nodes n ON n.id = r.node_id
                 WHERE r.object_seq = (SELECT seq FROM objects WHERE id = ?1) AND r.state = 'confirmed'
                   AND n.state IN ('alive', 'suspect')",
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
                "INSERT OR IGNORE INTO replicas (object_seq, node_id, state, updated_at)
                 VALUES ((SELECT seq FROM objects WHERE id = ?1), ?2, 'placed', ?3)",
            )?;
            for object in &objects {
                if object_status(conn, object)? == Some(ObjectStatus::Complete) {
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
            let mut remove = conn.prepare_cached(
                "DELETE FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1)
                     AND node_id = ?2 AND state = 'placed'",
            )?;
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
                 WHERE r.object_seq = (SELECT seq FROM objects WHERE id = ?1) AND r.state = 'confirmed'
                   AND n.state IN ('alive', 'suspect')",
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
                     WHERE r.object_seq = (SELECT seq FROM objects WHERE id = ?1) AND r.node_id != ?2
                       AND r.state = 'confirmed'
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
            let row: Option<(NodeState, Option<Drain>)> = conn
                .prepare_cached("SELECT state, drain FROM nodes WHERE id = ?1")?
                .query_row([&node], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((state, drain)) = row else {
                return Err(MetaError::NotFound(format!("node {node:?} is not registered")));
            };
            let gone = match state {
                NodeState::Dead | NodeState::Removed => true,
                NodeState::Alive | NodeState::Suspect | NodeState::ReadOnly | NodeState::Failed => false,
            };
            if drain != Some(Drain::Drained) && !gone {
                return Err(MetaError::Conflict(format!(
                    "node {node} is {}{}: only a drained node, or a dead one whose copies were made again \
                     elsewhere, may be removed; run `aether node drain {node}` first and wait until it is drained",
                    state.as_str(),
                    drain.map_or(String::new(), |d| format!(" and {}", d.as_str()))
                )));
            }
            let short: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM replicas r JOIN objects o ON o.seq = r.object_seq
                     WHERE r.node_id = ?1 AND o.status = 'complete' AND o.replication >
                       (SELECT count(*) FROM replicas c JOIN nodes n ON n.id = c.node_id
                        WHERE c.object_seq = o.seq AND c.node_id != ?1 AND c.state = 'confirmed'
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
}
