//! Node liveness: the heartbeat state machine and the master's in-memory view of each
//! node (last contact, free space). Kept in memory because heartbeats are frequent and
//! losing them on a restart is harmless; only state changes are written to the database.
//!
//! A node is `alive` while it is heard from, `suspect` after half of `dead_after` in
//! silence (no new replicas are placed on it, its copies still count), and `dead` after
//! `dead_after` (its copies are re-created elsewhere). A node that is heard from but
//! reports its disk `failed` or `read-only` gets nothing placed and its copies do not
//! count, like a dead one; a heartbeat with a good disk makes it `alive` again. A node
//! whose address a new node took over is `removed`, for good.
//!
//! Silence of more than half of the nodes at once is more likely the master's own
//! trouble (or its network's) than a mass death: such nodes are held `suspect` for one
//! more `dead_after` before they are declared dead, and a maintenance loop that itself
//! did not run for a while gives every node fresh grace (`Membership::grace`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::DiskState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Alive,
    Suspect,
    /// Heard from, but its disk refuses writes.
    ReadOnly,
    /// Heard from, but its disk is gone or failing.
    Failed,
    Dead,
    /// Its address was taken over by another node.
    Removed,
}

impl NodeState {
    pub const ALL: [NodeState; 6] = [
        NodeState::Alive,
        NodeState::Suspect,
        NodeState::ReadOnly,
        NodeState::Failed,
        NodeState::Dead,
        NodeState::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::ReadOnly => "read-only",
            NodeState::Failed => "failed",
            NodeState::Dead => "dead",
            NodeState::Removed => "removed",
        }
    }

    /// The state a heartbeat with this disk state puts a node in.
    pub fn heard_from(disk: DiskState) -> NodeState {
        match disk {
            DiskState::Ok => NodeState::Alive,
            DiskState::ReadOnly => NodeState::ReadOnly,
            DiskState::Failed => NodeState::Failed,
        }
    }

    /// Whether copies on a node in this state count toward their object's replicas
    /// (the SQL in `db/` says the same: `n.state IN ('alive', 'suspect')`).
    pub fn holds_copies(self) -> bool {
        match self {
            NodeState::Alive | NodeState::Suspect => true,
            NodeState::ReadOnly | NodeState::Failed | NodeState::Dead | NodeState::Removed => false,
        }
    }

    /// Whether its address may be taken over by a node with another id.
    pub fn may_be_replaced(self) -> bool {
        match self {
            NodeState::Failed | NodeState::ReadOnly | NodeState::Dead | NodeState::Removed => true,
            NodeState::Alive | NodeState::Suspect => false,
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
    /// Draining or drained: it gets no new copies, though its copies still count.
    pub draining: bool,
}

/// Space a node keeps free beyond an object's size before it counts as full for it.
const FULL_MARGIN: u64 = 64 << 20;

/// What one maintenance tick changed, and which nodes it held back from death.
#[derive(Debug, Default)]
pub struct Tick {
    pub changes: Vec<(String, NodeState, Duration)>,
    /// Nodes silent past `dead_after` but held `suspect`, because so many are silent at
    /// once; empty when nothing is held.
    pub held: Vec<String>,
}

pub struct Membership {
    dead_after: Duration,
    members: Mutex<HashMap<String, Member>>,
    /// Since when a mass silence holds deaths back.
    held_since: Mutex<Option<Instant>>,
    /// Each node's zone, from the database at start-up, then from its heartbeats.
    zones: Mutex<HashMap<String, String>>,
}

impl Membership {
    /// Starts from the states the database remembers. Every node gets a fresh
    /// `dead_after` of grace: a restarted master has not heard from anyone yet, and
    /// that is not the nodes' fault.
    pub fn new(known: impl IntoIterator<Item = (String, NodeState)>, dead_after: Duration, now: Instant) -> Membership {
        let members = known
            .into_iter()
            .map(|(id, state)| {
                let member = Member {
                    state,
                    last_seen: now,
                    capacity_bytes: None,
                    free_bytes: None,
                    object_count: None,
                    draining: false,
                };
                (id, member)
            })
            .collect();
        Membership {
            dead_after,
            members: Mutex::new(members),
            held_since: Mutex::new(None),
            zones: Mutex::new(HashMap::new()),
        }
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// A node's drain started (`true`) or was cancelled.
    pub fn set_draining(&self, id: &str, draining: bool) {
        if let Some(member) = self.members.lock().expect("membership lock").get_mut(id) {
            member.draining = draining;
        }
    }

    /// A node's zone, as it last said (`""` when it named none).
    pub fn set_zone(&self, id: &str, zone: &str) -> bool {
        let mut zones = self.zones.lock().expect("zones lock");
        let before = zones.insert(id.to_string(), zone.to_string());
        before.as_deref() != Some(zone)
    }

    /// Every node's zone, by id; nodes that named none are left out.
    pub fn zones(&self) -> HashMap<String, String> {
        let zones = self.zones.lock().expect("zones lock");
        zones.iter().filter(|(_, z)| !z.is_empty()).map(|(id, z)| (id.clone(), z.clone())).collect()
    }

    /// A node was removed by an operator: it is forgotten.
    pub fn forget(&self, id: &str) {
        self.members.lock().expect("membership lock").remove(id);
        self.zones.lock().expect("zones lock").remove(id);
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
            draining: false,
        });
        member.state = NodeState::Alive;
        member.last_seen = now;
        before
    }

    /// A heartbeat arrived, saying what state the node's disk is in. Returns the state
    /// before it, or `None` for a node that never registered or was removed (it must
    /// register first).
    pub fn heartbeat(&self, id: &str, report: &Reported, now: Instant) -> Option<NodeState> {
        let mut members = self.members.lock().expect("membership lock");
        let member = members.get_mut(id).filter(|m| m.state != NodeState::Removed)?;
        let before = member.state;
        member.state = NodeState::heard_from(report.disk);
        member.last_seen = now;
        member.capacity_bytes = Some(report.capacity_bytes);
        member.free_bytes = Some(report.free_bytes);
        member.object_count = Some(report.object_count);
        Some(before)
    }

    /// A node's address was taken over by another: it is gone for good.
    pub fn removed(&self, id: &str) {
        if let Some(member) = self.members.lock().expect("membership lock").get_mut(id) {
            member.state = NodeState::Removed;
        }
    }

    /// Gives every node a fresh `dead_after` of grace: for when the master itself was
    /// not running (stalled, paused), which is not the nodes' fault.
    pub fn grace(&self, now: Instant) {
        for member in self.members.lock().expect("membership lock").values_mut() {
            member.last_seen = member.last_seen.max(now);
        }
    }

    /// Moves silent nodes along the state machine; returns the changes. When more than
    /// half of the nodes still counted are silent at once (two at least), none is
    /// declared dead for one more `dead_after`.
    pub fn tick(&self, now: Instant) -> Tick {
        let mut members = self.members.lock().expect("membership lock");
        let counted = members.values().filter(|m| !matches!(m.state, NodeState::Dead | NodeState::Removed));
        let (mut counted_n, mut silent_n) = (0, 0);
        for member in counted {
            counted_n += 1;
            if state_after(now.saturating_duration_since(member.last_seen), self.dead_after) != NodeState::Alive {
                silent_n += 1;
            }
        }
        let would_die = members.values().any(|m| {
            m.state != NodeState::Dead
                && m.state != NodeState::Removed
                && state_after(now.saturating_duration_since(m.last_seen), self.dead_after) == NodeState::Dead
        });
        let mut held_since = self.held_since.lock().expect("membership hold lock");
        // The hold starts with the first death it holds back and lasts one `dead_after`.
        let hold = if silent_n >= 2 && silent_n * 2 > counted_n {
            match *held_since {
                Some(since) => now.saturating_duration_since(since) < self.dead_after,
                None if would_die => {
                    *held_since = Some(now);
                    true
                }
                None => false,
            }
        } else {
            *held_since = None;
            false
        };
        let mut tick = Tick::default();
        for (id, member) in members.iter_mut() {
            let silent = now.saturating_duration_since(member.last_seen);
            let mut state = state_after(silent, self.dead_after);
            if state == NodeState::Dead && hold && member.state != NodeState::Dead {
                tick.held.push(id.clone());
                state = NodeState::Suspect;
            }
            // Silence only ever makes a node worse; hearing from it makes it alive.
            if state_rank(state) > state_rank(member.state) {
                member.state = state;
                tick.changes.push((id.clone(), state, silent));
            }
        }
        tick.changes.sort_by(|a, b| a.0.cmp(&b.0));
        tick.held.sort();
        tick
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
                m.state == state
                    && !m.draining
                    && m.free_bytes.is_none_or(|free| free >= size.saturating_add(FULL_MARGIN))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// What a heartbeat says about a node.
#[derive(Debug, Clone, Copy)]
pub struct Reported {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub object_count: u64,
    pub disk: DiskState,
}

/// How bad a state is; silence only moves a node to a worse one (a failed disk is worse
/// than a missed heartbeat, better than death).
fn state_rank(state: NodeState) -> u8 {
    match state {
        NodeState::Alive => 0,
        NodeState::Suspect => 1,
        NodeState::ReadOnly | NodeState::Failed => 2,
        NodeState::Dead => 3,
        NodeState::Removed => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_secs(10);

    fn report(disk: DiskState, free: u64) -> Reported {
        Reported { capacity_bytes: 100 << 30, free_bytes: free, object_count: 3, disk }
    }

    fn states(tick: &Tick) -> Vec<(&str, NodeState)> {
        tick.changes.iter().map(|c| (c.0.as_str(), c.1)).collect()
    }

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
    fn only_alive_and_suspect_nodes_hold_copies() {
        for state in NodeState::ALL {
            assert_eq!(state.holds_copies(), matches!(state, NodeState::Alive | NodeState::Suspect), "{state:?}");
            assert_eq!(state.may_be_replaced(), !state.holds_copies(), "{state:?}");
        }
    }

    #[test]
    fn tick_reports_each_change_once_and_a_heartbeat_revives() {
        let start = Instant::now();
        let members = Membership::new([("a".to_string(), NodeState::Alive)], DEAD, start);
        assert!(members.tick(start + Duration::from_secs(1)).changes.is_empty());
        let tick = members.tick(start + Duration::from_secs(6));
        assert_eq!(states(&tick), vec![("a", NodeState::Suspect)]);
        assert_eq!((members.placeable(0), members.fallback(0)), (vec![], vec!["a".to_string()]));
        assert!(members.tick(start + Duration::from_secs(7)).changes.is_empty());
        assert_eq!(members.tick(start + Duration::from_secs(11)).changes[0].1, NodeState::Dead);
        assert_eq!(members.placeable(0), Vec::<String>::new());
        let back = members.heartbeat("a", &report(DiskState::Ok, 50 << 30), start + Duration::from_secs(12));
        assert_eq!(back, Some(NodeState::Dead));
        assert_eq!(members.placeable(0), vec!["a".to_string()]);
        assert_eq!(members.heartbeat("stranger", &report(DiskState::Ok, 0), start), None);
    }

    #[test]
    fn a_failed_disk_gets_nothing_until_it_is_back_and_a_removed_node_stays_removed() {
        let start = Instant::now();
        let members = Membership::new([("a".to_string(), NodeState::Alive)], DEAD, start);
        for (disk, want) in [(DiskState::Failed, NodeState::Failed), (DiskState::ReadOnly, NodeState::ReadOnly)] {
            members.heartbeat("a", &report(disk, 50 << 30), start);
            assert_eq!(members.get("a").unwrap().state, want);
            assert!(members.placeable(0).is_empty() && members.fallback(0).is_empty());
            // Missing a heartbeat or two does not make a failed node look better.
            assert!(members.tick(start + Duration::from_secs(6)).changes.is_empty());
        }
        assert_eq!(members.tick(start + Duration::from_secs(10)).changes[0].1, NodeState::Dead);
        members.heartbeat("a", &report(DiskState::Ok, 50 << 30), start + Duration::from_secs(11));
        assert_eq!(members.placeable(0), vec!["a".to_string()]);
        members.removed("a");
        assert_eq!(members.heartbeat("a", &report(DiskState::Ok, 50 << 30), start), None);
        assert!(members.tick(start + Duration::from_secs(60)).changes.is_empty());
    }

    #[test]
    fn a_mass_silence_is_held_back_one_more_dead_after_and_a_stalled_master_gives_grace() {
        let start = Instant::now();
        let ids = ["a", "b", "c", "d"];
        let members = Membership::new(ids.iter().map(|id| (id.to_string(), NodeState::Alive)), DEAD, start);
        let hear = |ids: &[&str], at: u64| {
            for id in ids {
                members.heartbeat(id, &report(DiskState::Ok, 50 << 30), start + Duration::from_secs(at));
            }
        };
        // One node of four dies: declared dead on time.
        hear(&["b", "c", "d"], 8);
        assert_eq!(states(&members.tick(start + Duration::from_secs(10))), vec![("a", NodeState::Dead)]);
        // All three others fall silent at once: held suspect for another `dead_after` ...
        let tick = members.tick(start + Duration::from_secs(18));
        assert_eq!(tick.held, vec!["b", "c", "d"]);
        assert!(tick.changes.iter().all(|c| c.1 == NodeState::Suspect), "{tick:?}");
        assert!(members.tick(start + Duration::from_secs(27)).changes.is_empty());
        // ... then declared dead if they stay silent.
        let tick = members.tick(start + Duration::from_secs(28));
        assert!(tick.held.is_empty());
        assert_eq!(tick.changes.len(), 3);
        assert!(tick.changes.iter().all(|c| c.1 == NodeState::Dead), "{tick:?}");

        // A master that was not running gives every node fresh grace.
        let members = Membership::new(ids.iter().map(|id| (id.to_string(), NodeState::Alive)), DEAD, start);
        members.grace(start + Duration::from_secs(30));
        assert!(members.tick(start + Duration::from_secs(31)).changes.is_empty());
    }

    #[test]
    fn a_restarted_master_gives_every_node_grace_and_full_nodes_get_nothing() {
        let start = Instant::now();
        let members =
            Membership::new([("a".to_string(), NodeState::Alive), ("b".to_string(), NodeState::Dead)], DEAD, start);
        assert!(members.tick(start + Duration::from_secs(4)).changes.is_empty());
        assert_eq!(members.placeable(0), vec!["a".to_string()]);
        members.heartbeat("a", &Reported { capacity_bytes: 1 << 30, ..report(DiskState::Ok, 100 << 20) }, start);
        assert_eq!(members.placeable(1 << 20), vec!["a".to_string()]);
        assert!(members.placeable(50 << 20).is_empty(), "a node with too little space is full");
    }
}
