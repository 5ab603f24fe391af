//! Nodes: registration (and taking over a dead node's address), liveness states, and
//! the list and addresses the master serves.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now_ms, Drain, MetaDb, MetaError, MetaResult};
use crate::master::liveness::NodeState;

/// A node as the master's tables know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub address: String,
    pub state: NodeState,
    pub registered_at: i64,
    pub last_seen: i64,
    pub replicas: u64,
    pub zone: Option<String>,
    pub drain: Option<Drain>,
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

impl MetaDb {
    pub fn register_node(&self, id: &str, address: &str) -> MetaResult<Registered> {
        let (id, address) = (id.to_string(), address.to_string());
        self.write(move |conn| {
            let now = now_ms();
            let holder: Option<(String, NodeState)> = conn
                .prepare_cached("SELECT id, state FROM nodes WHERE address = ?1")?
                .query_row([&address], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let mut replaced = None;
            if let Some((holder, state)) = holder.filter(|(holder, _)| *holder != id) {
                if !state.may_be_replaced() {
                    return Err(MetaError::Conflict(format!(
                        "address {address} is already registered by node {holder:?}, which is {}; a node \
                         keeps one id, so register it as {holder:?}, or give the new node its own address, or \
                         wait: once {holder:?} is declared dead its address may be taken over",
                        state.as_str()
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
                        drain: row.get(7)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Records a node's change of liveness.
    pub fn set_node_state(&self, node: &str, state: NodeState) -> MetaResult<()> {
        let node = node.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE nodes SET state = ?2, last_seen = ?3 WHERE id = ?1")?.execute(params![
                node,
                state,
                now_ms()
            ])?;
            Ok(())
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
}

pub(super) fn require_node(conn: &Connection, node: &str) -> MetaResult<()> {
    let known: Option<i64> =
        conn.prepare_cached("SELECT 1 FROM nodes WHERE id = ?1")?.query_row([node], |row| row.get(0)).optional()?;
    match known {
        Some(_) => Ok(()),
        None => Err(MetaError::NotFound(format!("node {node:?} is not registered; register it first"))),
    }
}
