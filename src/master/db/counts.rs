//! The cluster's totals for `GET /api/cluster` and the status page, from one snapshot.

use super::{Drain, MetaDb, MetaResult};
use crate::master::liveness::NodeState;

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

impl MetaDb {
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
                  WHERE r.object_seq = o.seq AND r.state = 'confirmed' AND n.state IN ('alive', 'suspect'))",
                [],
                |r| r.get(0),
            )?;
            let deletes: i64 = conn.query_row("SELECT count(*) FROM deletions", [], |r| r.get(0))?;
            let nodes = |state: NodeState| -> MetaResult<u64> {
                let n: i64 = conn.query_row("SELECT count(*) FROM nodes WHERE state = ?1", [state], |r| r.get(0))?;
                Ok(n as u64)
            };
            let drains = |drain: Drain| -> MetaResult<u64> {
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
                nodes_draining: drains(Drain::Draining)?,
                copies_to_move: to_move as u64,
                nodes_drained: drains(Drain::Drained)?,
                nodes_alive: nodes(NodeState::Alive)?,
                nodes_suspect: nodes(NodeState::Suspect)?,
                nodes_dead: nodes(NodeState::Dead)?,
                nodes_failed: nodes(NodeState::Failed)? + nodes(NodeState::ReadOnly)?,
                objects: objects as u64,
                object_bytes: object_bytes as u64,
                under_replicated: under as u64,
                pending_deletes: deletes as u64,
            })
        })
    }
}
