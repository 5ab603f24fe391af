//! `Prefetched`: placements a `Client` took from the master ahead of its small uploads
//! (`POST /api/upload/init_batch`), so that a stream of small uploads costs the master
//! one `init` exchange per batch instead of one per upload, as SeaweedFS's
//! `assign?count=N` does.
//!
//! A placement kept here is exactly what `init` would have answered: its id proves
//! itself to the master and has its own issue time, so the upload grace still bounds it;
//! one never used is an upload never completed (nothing on disk, nothing in SQL). A node
//! it names may have died since it was taken: the upload then replaces it as any chain
//! break. To keep that rare, and to leave most of the grace to the upload, a placement
//! is kept only for a few seconds, and an upload that finds a node failed drops every
//! kept placement naming it.
//!
//! Per replication factor, one queue, bounded, refilled by one caller at a time when it
//! runs low (callers finding it empty wait for that refill rather than all asking), in
//! batches that double from one as they are used up and fall back to one when
//! placements go stale: a client with a single upload asks for one placement, a busy one
//! for many.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::proto::{Placement, PlacementBatch};

/// Uploads up to this size take prefetched placements (the datanode's small objects,
/// which live in volumes); larger ones ask `init` each, their transfer dwarfs it. A batch
/// is placed for this size, so each node chosen has room for any upload that takes it.
pub const SMALL_UPLOAD: u64 = 64 * 1024;
/// The most placements kept per replication factor, and the largest batch asked for.
const MAX_QUEUED: usize = 32;
/// A refill starts when fewer than this are left, so that busy callers rarely find the
/// queue empty.
const LOW_WATER: usize = 8;
/// The longest a placement is kept: a node may die in the meantime.
const MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Queue {
    /// Oldest first, each with when it was taken.
    entries: VecDeque<(Instant, Placement)>,
    /// How many to ask for at the next refill.
    next_batch: usize,
    /// Whether a caller is asking the master for this queue now.
    refilling: bool,
    /// How long an entry may be kept, from the master's upload grace.
    keep_for: Duration,
}

impl Queue {
    /// Drops entries taken longer than `keep_for` ago; a client that lets placements go
    /// stale asks for one at a time again.
    fn drop_stale(&mut self, now: Instant) {
        let before = self.entries.len();
        let keep_for = self.keep_for;
        self.entries.retain(|(taken, _)| now.saturating_duration_since(*taken) < keep_for);
        if self.entries.len() < before {
            self.next_batch = 1;
        }
    }

    /// How many a refill asks for: the next batch, within the bound (one more when its
    /// caller needs one itself).
    fn refill_count(&self, for_caller: bool) -> usize {
        let room = MAX_QUEUED.saturating_sub(self.entries.len()) + usize::from(for_caller);
        self.next_batch.clamp(1, room.max(1))
    }
}

/// Placements taken ahead, shared by a `Client` and its clones.
pub struct Prefetched {
    queues: Mutex<HashMap<Option<usize>, Queue>>,
    refilled: Condvar,
    /// The master answered `init_batch` with 404 or 405: it predates it, so every upload
    /// asks `init`.
    unsupported: AtomicBool,
}

/// What `take` hands a caller: a placement, and maybe the duty to refill.
pub struct Taken<'a> {
    pub placement: Option<Placement>,
    pub refill: Option<Refill<'a>>,
}

/// The duty to ask the master for `count` placements and `fill` the queue with them;
/// dropped unfilled (the call failed), it lets another caller try.
pub struct Refill<'a> {
    prefetched: &'a Prefetched,
    replication: Option<usize>,
    pub count: usize,
}

impl Prefetched {
    pub fn new() -> Prefetched {
        Prefetched { queues: Mutex::new(HashMap::new()), refilled: Condvar::new(), unsupported: AtomicBool::new(false) }
    }

    pub fn supported(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed)
    }

    pub fn mark_unsupported(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Option<usize>, Queue>> {
        self.queues.lock().expect("prefetch lock")
    }

    /// A placement for an upload of `replication` copies, and the duty to refill when
    /// the queue runs low and no one else is refilling it. Without a placement the caller
    /// must refill (and keeps the first of the batch); while another caller refills an
    /// empty queue, this waits for it.
    pub fn take(&self, replication: Option<usize>) -> Taken<'_> {
        let mut queues = self.lock();
        loop {
            let queue = queues.entry(replication).or_insert_with(|| Queue { next_batch: 1, ..Queue::default() });
            queue.drop_stale(Instant::now());
            let placement = queue.entries.pop_front().map(|(_, placement)| placement);
            let low = queue.entries.len() < LOW_WATER;
            if queue.refilling && placement.is_none() {
                // Bounded: the refilling caller's call is, and its `Refill` wakes us
                // when it ends, however it ends.
                queues = self.refilled.wait(queues).expect("prefetch lock");
                continue;
            }
            let refill = (low && !queue.refilling).then(|| {
                queue.refilling = true;
                Refill { prefetched: self, replication, count: queue.refill_count(placement.is_none()) }
            });
            return Taken { placement, refill };
        }
    }
}

impl Prefetched {
    /// Drops every kept placement that names one of `nodes`: an upload found them
    /// failed and told the master, whose next placements avoid them; the ones kept from
    /// before would each break a chain on them again.
    pub fn forget_nodes(&self, nodes: &[String]) {
        if nodes.is_empty() {
            return;
        }
        for queue in self.lock().values_mut() {
            queue.entries.retain(|(_, placement)| !placement.nodes.iter().any(|node| nodes.contains(node)));
        }
    }
}

impl Default for Prefetched {
    fn default() -> Prefetched {
        Prefetched::new()
    }
}

impl Refill<'_> {
    /// Keeps the batch's placements, the first of them for the caller when `for_caller`
    /// (returned), for a fraction of the master's upload grace (the id's issue second is
    /// rounded down, so a second of it may be gone already).
    pub fn fill(self, batch: PlacementBatch, for_caller: bool) -> Option<Placement> {
        let now = Instant::now();
        let mut placements = batch.placements.into_iter();
        let mine = if for_caller { placements.next() } else { None };
        let keep_for = MAX_AGE.min(Duration::from_millis(batch.upload_grace_ms.saturating_sub(1000) / 4));
        let mut queues = self.prefetched.lock();
        if let Some(queue) = queues.get_mut(&self.replication) {
            queue.keep_for = keep_for;
            if !keep_for.is_zero() {
                let room = MAX_QUEUED.saturating_sub(queue.entries.len());
                queue.entries.extend(placements.take(room).map(|placement| (now, placement)));
                queue.next_batch = (self.count * 2).min(MAX_QUEUED);
            }
        }
        drop(queues);
        mine
    }
}

impl Drop for Refill<'_> {
    fn drop(&mut self) {
        if let Some(queue) = self.prefetched.lock().get_mut(&self.replication) {
            queue.refilling = false;
        }
        self.prefetched.refilled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, grace_ms: u64) -> PlacementBatch {
        let placements = (0..n)
            .map(|i| Placement { objectid: format!("id-{i}"), nodes: vec!["http://a:1".into()], signature: None })
            .collect();
        PlacementBatch { placements, upload_grace_ms: grace_ms }
    }

    #[test]
    fn batches_double_and_refill_below_low_water_within_the_bound() {
        let prefetched = Prefetched::new();
        let mut asked = Vec::new();
        let mut served = 0;
        for _ in 0..200 {
            let Taken { placement, refill } = prefetched.take(Some(2));
            let mut placement = placement;
            if let Some(refill) = refill {
                asked.push(refill.count);
                let count = refill.count;
                let mine = refill.fill(batch(count, 3_600_000), placement.is_none());
                placement = placement.or(mine);
            }
            assert!(placement.is_some());
            served += 1;
            let queued = prefetched.lock()[&Some(2)].entries.len();
            assert!(queued <= MAX_QUEUED, "{queued} queued");
        }
        assert_eq!(&asked[..4], &[1, 2, 4, 8], "{asked:?}");
        assert!(asked.iter().all(|&n| n <= MAX_QUEUED + 1));
        // Once warm, a refill comes every MAX_QUEUED - LOW_WATER + 1 uploads or so.
        assert!(asked.len() <= 5 + served / (MAX_QUEUED - LOW_WATER), "{} refills: {asked:?}", asked.len());
        // Another replication factor has a queue of its own.
        assert_eq!(prefetched.take(None).refill.map(|r| r.count), Some(1));
    }

    #[test]
    fn stale_placements_are_dropped_and_a_short_grace_keeps_none() {
        let prefetched = Prefetched::new();
        let refill = prefetched.take(None).refill.unwrap();
        assert!(refill.fill(batch(1, 3_600_000), true).is_some());
        let refill = prefetched.take(None).refill.unwrap();
        assert_eq!(refill.count, 2);
        refill.fill(batch(2, 3_600_000), true);
        {
            let mut queues = prefetched.lock();
            let queue = queues.get_mut(&None).unwrap();
            assert_eq!(queue.entries.len(), 1);
            queue.drop_stale(Instant::now() + MAX_AGE);
            assert_eq!((queue.entries.len(), queue.next_batch), (0, 1));
        }
        // A grace of a second or two leaves no time to keep placements.
        let refill = prefetched.take(None).refill.unwrap();
        refill.fill(batch(3, 1_000), true);
        assert_eq!(prefetched.lock()[&None].entries.len(), 0);
    }

    #[test]
    fn placements_naming_a_failed_node_are_forgotten_in_every_queue() {
        let prefetched = Prefetched::new();
        let nodes = |i: usize| vec![format!("http://n{}:1", i % 3), format!("http://n{}:1", (i + 1) % 3)];
        for replication in [None, Some(2)] {
            let placements =
                (0..6).map(|i| Placement { objectid: format!("id-{i}"), nodes: nodes(i), signature: None }).collect();
            let refill = prefetched.take(replication).refill.unwrap();
            refill.fill(PlacementBatch { placements, upload_grace_ms: 3_600_000 }, false);
        }
        prefetched.forget_nodes(&[]);
        assert_eq!(prefetched.lock()[&None].entries.len(), 6);
        prefetched.forget_nodes(&["http://n2:1".to_string()]);
        for queue in prefetched.lock().values() {
            // Only the placements on n0 and n1 are left: ids 0 and 3.
            let left: Vec<_> = queue.entries.iter().map(|(_, p)| p.objectid.as_str()).collect();
            assert_eq!(left, ["id-0", "id-3"]);
        }
    }

    #[test]
    fn callers_wait_for_the_one_refill_of_an_empty_queue() {
        let prefetched = Prefetched::new();
        let refill = prefetched.take(Some(1)).refill.unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| prefetched.take(Some(1)).placement);
            // The waiter cannot get past an empty queue being refilled.
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished());
            refill.fill(batch(2, 3_600_000), true);
            assert_eq!(waiter.join().unwrap().map(|p| p.objectid), Some("id-1".to_string()));
        });
        // A refill that failed lets the next caller try.
        let refill = prefetched.take(Some(1)).refill.unwrap();
        drop(refill);
        assert!(prefetched.take(Some(1)).refill.is_some());
    }
}
