//! The compactor thread: every few seconds has the index file of any newly sealed volume
//! written (`BlobStore::index_step`), then asks the store whether a sealed volume has
//! gathered enough garbage (deleted and quarantined records) to be rewritten, and has
//! it compacted at a bounded rate (`BlobStore::compact_step`). Also the volumes thread,
//! which syncs records for writers that went on to forward them, and writes the active
//! volume's space ahead of its records, when the writers ask (`BlobStore::volume_step`).

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::Node;
use crate::log;
use crate::proto::DiskState;

/// How often the compactor looks for a volume to compact.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// Bytes of records copied per second at most, so compaction never starves uploads
/// and reads of the disk.
const COMPACTION_RATE: u64 = 64 << 20;

/// Runs until `stopped` is dropped.
pub fn run(node: &Node, stopped: &Receiver<()>) {
    let pause = |how_long: Duration| stopped.recv_timeout(how_long) == Err(RecvTimeoutError::Timeout);
    while pause(LOOK_EVERY) {
        if node.blobs.disk_health().state != DiskState::Ok {
            continue;
        }
        loop {
            match node.blobs.index_step() {
                Ok(Some(done)) => log::info(&node.id, &done),
                Ok(None) => break,
                Err(e) => {
                    log::error(&node.id, &e.to_string());
                    node.blobs.check_disk();
                }
            }
        }
        match node.blobs.compact_step(COMPACTION_RATE, &pause) {
            Ok(Some(done)) => log::info(&node.id, &done),
            Ok(None) => {}
            Err(e) => {
                log::error(&node.id, &format!("compaction failed: {e}"));
                // Perhaps the disk's fault: the check tells the master if so.
                node.blobs.check_disk();
            }
        }
    }
}

/// Runs until `stopped` is dropped, doing what the volume writers ask as they ask it: a
/// sync of records whose writers went on to forward them, space written ahead.
pub fn volumes(node: &Node, stopped: &Receiver<()>) {
    while stopped.try_recv() == Err(TryRecvError::Empty) {
        if let Err(e) = node.blobs.volume_step(Duration::from_millis(200)) {
            // Records are appended past the written space meanwhile; asked again later.
            log::warn(&node.id, &e.to_string());
            node.blobs.check_disk();
        }
    }
}
