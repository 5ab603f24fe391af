//! `Locations`: a bounded cache of where objects live (replica addresses, size,
//! checksum), so that `Client::download` reads without asking the master first.
//!
//! Object ids are immutable: an entry is never wrong about the bytes (size and checksum
//! are checked on every read), only about where copies are. A read from cached
//! locations that finds no copy drops the entry, asks the master once and goes on from
//! the byte it reached. Entries leave in the order they came once `capacity` is reached
//! (a FIFO, not an LRU: no write on the read path), so memory stays bounded: about
//! 250 bytes per entry with three replicas, 25 MB when full.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::proto::{Checksum, ObjectId};

/// Entries a client keeps by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Where an object's copies are, as the master or a completed upload said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub replicas: Vec<String>,
    pub size: u64,
    pub checksum: Option<Checksum>,
}

pub struct Locations {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<ObjectId, Location>,
    /// Insertion order, for eviction; may name ids already removed.
    order: VecDeque<ObjectId>,
}

impl Locations {
    pub fn new(capacity: usize) -> Locations {
        Locations { capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn get(&self, id: &ObjectId) -> Option<Location> {
        self.lock().map.get(id).cloned()
    }

    pub fn insert(&self, id: ObjectId, location: Location) {
        if self.capacity == 0 || location.replicas.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.map.insert(id, location).is_none() {
            inner.order.push_back(id);
        }
        while inner.map.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
        // Removed ids leave stale entries in `order`; compact when they dominate.
        if inner.order.len() > 2 * self.capacity.max(16) {
            let Inner { map, order } = &mut *inner;
            order.retain(|id| map.contains_key(id));
        }
    }

    pub fn remove(&self, id: &ObjectId) {
        self.lock().map.remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every step above
        // leaves it whole), so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &str) -> Location {
        Location { replicas: vec![node.to_string()], size: 1, checksum: None }
    }

    #[test]
    fn bounded_oldest_out_first() {
        let cache = Locations::new(3);
        let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new_random()).collect();
        for id in &ids {
            cache.insert(*id, at("a"));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&ids[0]).is_none() && cache.get(&ids[1]).is_none());
        assert_eq!(cache.get(&ids[4]), Some(at("a")));
        // Replacing an entry keeps one place in the order.
        cache.insert(ids[4], at("b"));
        assert_eq!(cache.get(&ids[4]), Some(at("b")));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn removals_do_not_grow_the_order_without_bound() {
        let cache = Locations::new(4);
        for _ in 0..10_000 {
            let id = ObjectId::new_random();
            cache.insert(id, at("a"));
            cache.remove(&id);
        }
        assert!(cache.is_empty());
        assert!(cache.lock().order.len() <= 2 * 16 + 1);
    }
}
