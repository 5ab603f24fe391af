//! Node liveness: the heartbeat state machine and the master's in-memory view of each
//! node (last contact, free space). Kept in memory because heartbeats are frequent and
//! losing them on a restart is harmless; only state changes are written to the database.
//!
//! A node is `alive` while it is heard from, `suspect` after half of `dead_after` in
//! silence (no new replicas are placed on it, its copies still count), and `dead` after
//! `dead_after` (its copies are re-created elsewhere).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Alive,
    Suspect,
    Dead,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> NodeState {
        match text {
            "alive" => NodeState::Alive,
            "suspect" => NodeState::Suspect,
            _ => NodeState::Dead,
        }
    }
}

/// The state of a node that has been silent for `silent`.
pub fn state_after(silent: Duration, dead_after: Duration) -> NodeState {
    if silent >= dead_after {
        NodeState::Dead
    } else if silent >= dead_after / 2 {
        NodeState::Suspect
    } else {
        NodeState::Alive
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub state: NodeState,
    pub last_seen: Instant,
    pub capacity_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub object_count: Option<u64>,
}

/// Space a node keeps free beyond an object's size before it counts as full for it.
const FULL_MARGIN: u64 = 64 << 20;

pub struct Membership {
    dead_after: Duration,
    members: Mutex<HashMap<String, Member>>,
}

impl Membership {
    /// Starts from the states the database remembers. Every node gets a fresh
    /// `dead_after` of grace: a restarted master has not heard from anyone yet, and
    /// that is not the nodes' fault.
    pub fn new(known: impl IntoIterator<Item = (String, NodeState)>, dead_after: Duration, now: Instant) -> Membership {
        let members = known
            .into_iter()
            .map(|(id, state)| {
                let member =
                    Member { state, last_seen: now, capacity_bytes: None, free_bytes: None, object_count: None };
                (id, member)
            })
            .collect();
        Membership { dead_after, members: Mutex::new(members) }
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// A node registered: it is alive. Returns its state before, if it had one.
    pub fn registered(&self, id: &str, now: Instant) -> Option<NodeState> {
        let mut members = self.members.lock().expect("membership lock");
        let before = members.get(id).map(|m| m.state);
        let member = members.entry(id.to_string()).or_insert(Member {
            state: NodeState::Alive,
            last_seen: now,
            capacity_bytes: None,
            free_bytes: None,
            object_count: None,
        });
        member.state = NodeState::Alive;
        member.last_seen = now;
        before
    }

    /// A heartbeat arrived. Returns the state before it, or `None` for a node that never
    /// registered (it must register first).
    pub fn heartbeat(&self, id: &str, capacity: u64, free: u64, objects: u64, now: Instant) -> Option<NodeState> {
        let mut members = self.members.lock().expect("membership lock");
        let member = members.get_mut(id)?;
        let before = member.state;
        member.state = NodeState::Alive;
        member.last_seen = now;
        member.capacity_bytes = Some(capacity);
        member.free_bytes = Some(free);
        member.object_count = Some(objects);
        Some(before)
    }

    /// Moves silent nodes along the state machine; returns the changes.
    pub fn tick(&self, now: Instant) -> Vec<(String, NodeState, Duration)> {
        let mut members = self.members.lock().expect("membership lock");
        let mut changes = Vec::new();
        for (id, member) in members.iter_mut() {
            let silent = now.saturating_duration_since(member.last_seen);
            let state = state_after(silent, self.dead_after);
            // Silence only ever makes a node worse; hearing from it makes it alive.
            if state_rank(state) > state_rank(member.state) {
                member.state = state;
                changes.push((id.clone(), state, silent));
            }
        }
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    pub fn get(&self, id: &str) -> Option<Member> {
        self.members.lock().expect("membership lock").get(id).copied()
    }

    /// Nodes a new replica of `size` bytes may go to: alive, and not full as far as
    /// their last heartbeat said.
    pub fn placeable(&self, size: u64) -> Vec<String> {
        self.with_room(NodeState::Alive, size)
    }

    /// Suspect nodes with room: used only when too few alive nodes are left, since a
    /// node that missed a heartbeat or two under load is usually fine.
    pub fn fallback(&self, size: u64) -> Vec<String> {
        self.with_room(NodeState::Suspect, size)
    }

    fn with_room(&self, state: NodeState, size: u64) -> Vec<String> {
        let members = self.members.lock().expect("membership lock");
        let mut ids: Vec<String> = members
            .iter()
            .filter(|(_, m)| {
                m.state == state && m.free_bytes.is_none_or(|free| free >= size.saturating_add(FULL_MARGIN))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

fn state_rank(state: NodeState) -> u8 {
    match state {
        NodeState::Alive => 0,
        NodeState::Suspect => 1,
        NodeState::Dead => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_secs(10);

    #[test]
    fn silence_makes_a_node_suspect_then_dead() {
        let table = [
            (0, NodeState::Alive),
            (4_999, NodeState::Alive),
            (5_000, NodeState::Suspect),
            (9_999, NodeState::Suspect),
            (10_000, NodeState::Dead),
            (99_000, NodeState::Dead),
        ];
        for (ms, want) in table {
            assert_eq!(state_after(Duration::from_millis(ms), DEAD), want, "{ms} ms");
        }
    }

    #[test]
    fn tick_reports_each_change_once_and_a_heartbeat_revives() {
        let start = Instant::now();
        let members = Membership::new([("a".to_string(), NodeState::Alive)], DEAD, start);
        assert!(members.tick(start + Duration::from_secs(1)).is_empty());
        let changes = members.tick(start + Duration::from_secs(6));
        assert_eq!(changes.iter().map(|c| (c.0.as_str(), c.1)).collect::<Vec<_>>(), vec![("a", NodeState::Suspect)]);
        assert_eq!((members.placeable(0), members.fallback(0)), (vec![], vec!["a".to_string()]));
        assert!(members.tick(start + Duration::from_secs(7)).is_empty());
        assert_eq!(members.tick(start + Duration::from_secs(11))[0].1, NodeState::Dead);
        assert_eq!(members.placeable(0), Vec::<String>::new());
        let back = members.heartbeat("a", 100 << 30, 50 << 30, 3, start + Duration::from_secs(12));
        assert_eq!(back, Some(NodeState::Dead));
        assert_eq!(members.placeable(0), vec!["a".to_string()]);
        assert_eq!(members.heartbeat("stranger", 0, 0, 0, start), None);
    }

    #[test]
    fn a_restarted_master_gives_every_node_grace_and_full_nodes_get_nothing() {
        let start = Instant::now();
        let members =
            Membership::new([("a".to_string(), NodeState::Alive), ("b".to_string(), NodeState::Dead)], DEAD, start);
        assert!(members.tick(start + Duration::from_secs(4)).is_empty());
        assert_eq!(members.placeable(0), vec!["a".to_string()]);
        members.heartbeat("a", 1 << 30, 100 << 20, 0, start);
        assert_eq!(members.placeable(1 << 20), vec!["a".to_string()]);
        assert!(members.placeable(50 << 20).is_empty(), "a node with too little space is full");
    }
}
