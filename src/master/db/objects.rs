//! Objects: an upload's placement and completion by quorum, lookups with their
//! replicas, deletion and the expiry of stale uploads.

use rusqlite::{params, Connection, OptionalExtension};

use super::replicas::{has_record, schedule_deletion};
use super::{now_ms, MetaDb, MetaError, MetaResult, ObjectStatus, ReplicaStatus};
use crate::master::liveness::NodeState;
use crate::proto::{Checksum, ObjectId};

/// A completed object and where its replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    pub id: String,
    pub size: u64,
    pub status: ObjectStatus,
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
    pub state: ReplicaStatus,
    pub node_state: NodeState,
}

impl ReplicaRow {
    /// Whether the node holds a copy with the object's bytes: one to read from, and one
    /// that counts toward its replicas if the node holds copies.
    pub fn confirmed(&self) -> bool {
        match self.state {
            ReplicaStatus::Confirmed => true,
            ReplicaStatus::Placed | ReplicaStatus::Quarantined | ReplicaStatus::Missing => false,
        }
    }
}

/// What the master found when it asked a node for a replica itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub node_id: String,
    pub size: u64,
    pub checksum: Checksum,
}

/// A node that may take a replica: (node id, address).
pub type Candidate = (String, String);

impl MetaDb {
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
        self.write(move |conn| super::uploads::complete_in(conn, &id.to_string(), quorum, found))
    }

    /// An object with its replicas, live nodes' first. Unless `any_status`, only
    /// completed objects are found.
    pub fn object(&self, id: ObjectId) -> MetaResult<ObjectRow> {
        self.object_with_status(id, false)
    }

    pub fn object_with_status(&self, id: ObjectId, any_status: bool) -> MetaResult<ObjectRow> {
        self.read(|conn| {
            let id = id.to_string();
            type Row = (i64, ObjectStatus, i64, Option<String>, i64, Option<i64>, i64);
            let row: Option<Row> = conn
                .prepare_cached(
                    "SELECT size, status, replication, checksum, created_at, completed_at, seq FROM objects
                     WHERE id = ?1",
                )?
                .query_row([&id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?))
                })
                .optional()?;
            let Some(row) = row else { return Err(MetaError::NotFound(format!("object {id} not found"))) };
            let (size, status, replication, checksum, created_at, completed_at, seq) = match (row.1, any_status) {
                (ObjectStatus::Complete, _) | (ObjectStatus::Pending, true) => row,
                (ObjectStatus::Pending, false) => {
                    return Err(MetaError::NotFound(format!(
                        "object {id} is still being uploaded; it is served once /api/upload/complete succeeds"
                    )))
                }
                (ObjectStatus::Deleted, _) => return Err(MetaError::NotFound(format!("object {id} not found"))),
            };
            let mut replicas = conn
                .prepare_cached(
                    "SELECT r.node_id, n.address, r.state, n.state FROM replicas r JOIN nodes n ON n.id = r.node_id
                     WHERE r.object_seq = ?1",
                )?
                .query_map([seq], |row| {
                    Ok(ReplicaRow {
                        node_id: row.get(0)?,
                        address: row.get(1)?,
                        state: row.get(2)?,
                        node_state: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<ReplicaRow>, _>>()?;
            // A removed node's address is no longer its own: nobody should try it.
            replicas.retain(|r| r.node_state != NodeState::Removed);
            // Readers try them in this order: confirmed copies on live nodes first. (Sorted
            // here: an ORDER BY costs SQLite a temporary b-tree on every lookup.)
            replicas.sort_by_cached_key(|r| {
                let node_rank = match r.node_state {
                    NodeState::Alive => 0,
                    NodeState::Suspect => 1,
                    NodeState::ReadOnly | NodeState::Failed | NodeState::Dead | NodeState::Removed => 2,
                };
                (!r.confirmed(), node_rank, r.node_id.clone())
            });
            if status == ObjectStatus::Pending {
                let mut node_state = conn.prepare_cached("SELECT state FROM nodes WHERE id = ?1")?;
                for (node_id, address) in placed_without_row(conn, &id)? {
                    let node_state = node_state.query_row([&node_id], |row| row.get(0))?;
                    replicas.push(ReplicaRow { node_id, address, state: ReplicaStatus::Placed, node_state });
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

    /// Deletes an object: it is gone from the API at once, and each node that holds a
    /// copy is told to remove it when it is next heard from.
    pub fn delete_object(&self, id: ObjectId) -> MetaResult<()> {
        self.write(move |conn| {
            let id = id.to_string();
            let status = object_status(conn, &id)?;
            match status {
                None | Some(ObjectStatus::Deleted) => Err(MetaError::NotFound(format!("object {id} not found"))),
                Some(ObjectStatus::Pending | ObjectStatus::Complete) => {
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
            match object_status(conn, &id)? {
                Some(ObjectStatus::Pending) => {}
                None | Some(ObjectStatus::Complete | ObjectStatus::Deleted) => {
                    return Err(MetaError::Conflict(format!("object {id} is not an upload in progress")))
                }
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
                .prepare_cached(
                    "SELECT node_id FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1)",
                )?
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
}

pub(super) fn object_status(conn: &Connection, id: &str) -> MetaResult<Option<ObjectStatus>> {
    let status = conn
        .prepare_cached("SELECT status FROM objects WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    Ok(status)
}

/// The nodes an upload was placed on (its object row's `placed`).
pub(super) fn placed_nodes(conn: &Connection, id: &str) -> MetaResult<Vec<String>> {
    let placed: Option<Option<String>> = conn
        .prepare_cached("SELECT placed FROM objects WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    let placed = placed.flatten().unwrap_or_default();
    Ok(placed.split(',').filter(|node| !node.is_empty()).map(str::to_string).collect())
}

/// Placed nodes with no replica record yet (none has confirmed a copy), with addresses.
pub(super) fn placed_without_row(conn: &Connection, id: &str) -> MetaResult<Vec<(String, String)>> {
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

/// Marks an object deleted and schedules the removal of every copy.
pub(super) fn forget_object(conn: &Connection, id: &str, now: i64) -> MetaResult<()> {
    let mut nodes: Vec<String> = conn
        .prepare_cached("SELECT node_id FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1)")?
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
    conn.prepare_cached("DELETE FROM replicas WHERE object_seq = (SELECT seq FROM objects WHERE id = ?1)")?
        .execute([id])?;
    conn.prepare_cached("UPDATE objects SET status = 'deleted', deleted_at = ?2, placed = NULL WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}
