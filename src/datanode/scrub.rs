//! The scrubber: re-reads every stored object at a bounded rate and checks it against
//! the checksum it was written with, so silent corruption is found before a reader
//! needs that copy. A bad copy is quarantined and reported like one found by a read.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::store::StoreError;
use super::Node;
use crate::log;
use crate::proto::ObjectId;

/// Runs scrub passes until `stopped` is dropped: the first after `pause` (at most a
/// minute, so a fresh node checks its disk soon), then one every `pause`.
pub fn run(node: &Node, bytes_per_sec: u64, pause: Duration, stopped: &Receiver<()>) {
    if !wait(stopped, pause.min(Duration::from_secs(60))) {
        return;
    }
    loop {
        let Some(summary) = pass(node, bytes_per_sec, stopped) else { return };
        log::info(&node.id, &summary);
        if !wait(stopped, pause) {
            return;
        }
    }
}

/// Waits `how_long`; false when the node is stopping.
fn wait(stopped: &Receiver<()>, how_long: Duration) -> bool {
    stopped.recv_timeout(how_long) == Err(RecvTimeoutError::Timeout)
}

/// One pass over all objects; `None` when interrupted by shutdown.
fn pass(node: &Node, bytes_per_sec: u64, stopped: &Receiver<()>) -> Option<String> {
    let started = Instant::now();
    if let Some(reason) = node.blobs.disk_health().reason {
        return Some(format!("scrub pass skipped: the data disk is not usable ({reason})"));
    }
    let mut ids: Vec<ObjectId> = Vec::new();
    if let Err(e) = node.blobs.scan(&mut |item| ids.push(item.id)) {
        // Perhaps the disk's fault: the check tells the master if so.
        node.blobs.check_disk();
        return Some(format!("scrub pass failed to list objects: {e}"));
    }
    let (mut bytes, mut corrupt) = (0u64, 0u64);
    let metrics = &node.metrics;
    metrics.scrub_pass_objects.set(ids.len() as i64);
    metrics.scrub_pass_checked.set(0);
    for id in &ids {
        metrics.scrub_pass_checked.inc();
        match node.blobs.verify(id) {
            Ok(stored) => {
                bytes += stored.size;
                metrics.scrub_objects.inc();
                metrics.scrub_bytes.inc_by(stored.size);
            }
            Err(StoreError::Corrupt { reason, .. }) => {
                corrupt += 1;
                metrics.scrub_corruptions.inc();
                node.quarantine(id, &reason);
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => log::error(&node.id, &format!("scrub cannot verify {id}: {e}")),
        }
        // Sleep off any lead over the allowed rate, staying responsive to shutdown.
        let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
        if let Some(lead) = due.checked_sub(started.elapsed()) {
            if !wait(stopped, lead) {
                return None;
            }
        } else if stopped.try_recv() != Err(crossbeam_channel::TryRecvError::Empty) {
            return None;
        }
    }
    metrics.scrub_passes.inc();
    Some(format!(
        "scrub pass verified {} object(s), {bytes} bytes, in {:.1}s: {corrupt} corrupt",
        ids.len(),
        started.elapsed().as_secs_f64()
    ))
}
