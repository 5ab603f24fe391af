//! The master's recent events for the status page: a bounded ring in memory (the last
//! `CAPACITY`), fed where the master logs the event, so the page and the log say the
//! same thing. Lost on restart, like heartbeats: the log keeps the history.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::log;

/// Events kept; older ones fall off.
pub const CAPACITY: usize = 100;

/// What happened, which decides the log level and the page's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    NodeRegistered,
    NodeMoved,
    NodeSuspect,
    NodeDead,
    NodeBack,
    NodeTookOver,
    DiskFailed,
    SilenceHeld,
    RepairFinished,
    RepairFailed,
    CopiesLost,
    CopyCorrupt,
    NodeDraining,
    DrainCancelled,
    NodeDrained,
    NodeRemoved,
    Rebalance,
    ZoneSpread,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeRegistered => "node registered",
            EventKind::NodeMoved => "node moved",
            EventKind::NodeSuspect => "node suspect",
            EventKind::NodeDead => "node died",
            EventKind::NodeBack => "node back",
            EventKind::NodeTookOver => "address taken over",
            EventKind::DiskFailed => "disk failed",
            EventKind::SilenceHeld => "mass silence held",
            EventKind::RepairFinished => "repair finished",
            EventKind::RepairFailed => "repair failed",
            EventKind::CopiesLost => "copies lost",
            EventKind::CopyCorrupt => "corrupt copy",
            EventKind::NodeDraining => "node draining",
            EventKind::DrainCancelled => "drain cancelled",
            EventKind::NodeDrained => "node drained",
            EventKind::NodeRemoved => "node removed",
            EventKind::Rebalance => "rebalance",
            EventKind::ZoneSpread => "zone spreading",
        }
    }

    /// `info`, `good`, `warn` or `bad`: how the page colours it.
    pub fn tone(self) -> &'static str {
        match self {
            // What an operator asked for, or the cluster tidying itself.
            EventKind::NodeDraining
            | EventKind::DrainCancelled
            | EventKind::NodeRemoved
            | EventKind::Rebalance
            | EventKind::ZoneSpread => "info",
            EventKind::NodeDrained => "good",
            EventKind::NodeRegistered | EventKind::NodeMoved | EventKind::NodeBack | EventKind::RepairFinished => {
                "good"
            }
            EventKind::NodeSuspect | EventKind::RepairFailed | EventKind::NodeTookOver | EventKind::SilenceHeld => {
                "warn"
            }
            EventKind::NodeDead | EventKind::DiskFailed | EventKind::CopiesLost | EventKind::CopyCorrupt => "bad",
        }
    }

    fn level(self) -> log::Level {
        match self.tone() {
            "info" | "good" => log::Level::Info,
            _ => log::Level::Warn,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub kind: EventKind,
    pub message: String,
}

pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Events {
        Events { ring: Mutex::new(VecDeque::with_capacity(CAPACITY)) }
    }
}

impl Events {
    /// Logs `message` as the master and keeps it for the page.
    pub fn record(&self, kind: EventKind, message: String) {
        log::log(kind.level(), "master", &message);
        self.push(Event { at_ms: super::db::now_ms(), kind, message });
    }

    fn push(&self, event: Event) {
        let mut ring = self.ring.lock().expect("events lock");
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The events kept, newest first.
    pub fn recent(&self) -> Vec<Event> {
        self.ring.lock().expect("events lock").iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_and_moves_are_logged_at_info_and_not_coloured_as_trouble() {
        for kind in [
            EventKind::NodeDraining,
            EventKind::DrainCancelled,
            EventKind::NodeDrained,
            EventKind::NodeRemoved,
            EventKind::Rebalance,
            EventKind::ZoneSpread,
        ] {
            assert!(matches!(kind.tone(), "info" | "good"), "{kind:?}");
            assert_eq!(kind.level(), log::Level::Info, "{kind:?}");
        }
        assert_eq!(EventKind::NodeDead.level(), log::Level::Warn);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_stays_bounded() {
        let events = Events::default();
        for i in 0..CAPACITY + 5 {
            events.push(Event { at_ms: i as i64, kind: EventKind::NodeBack, message: format!("event {i}") });
        }
        let recent = events.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].message, format!("event {}", CAPACITY + 4));
        assert_eq!(recent[CAPACITY - 1].message, "event 5");
    }
}
