//! Compaction: a sealed volume whose garbage (deleted, quarantined records) passes half its
//! size is rewritten with only its live records, at a bounded rate, and switched in.
//!
//! Crash-safe at every step, because the old generation stays whole until the new one is
//! complete and named:
//! 1. `copying`: live records (and tombstones that may still hide an older volume's
//!    record) are copied into `<ordinal>.<generation+1>.compacting`; start-up removes
//!    such a file, and the old generation is still the volume.
//! 2. `copied`: the new file is synced; still only a `.compacting` file.
//! 3. `renamed`: renamed to `.vol` and the directory synced: from here start-up takes the
//!    newer generation of the ordinal and removes the older. The new file holds every
//!    record the old one had live when it was copied; objects deleted since have their
//!    tombstones in later volumes, which replay after it.
//! 4. `switched`: the index points the moved objects at their new offsets and the volume
//!    at the new file, in one step under the index lock; readers holding the old file
//!    finish on it.
//! 5. `removed`: the old file and its index file are removed and the directory synced.
//! 6. The new generation's index file is written (`index_file.rs`); until it is,
//!    start-up replays the volume (and writes it then).
//!
//! The new generation keeps the volume's ordinal (its place in the replay order), so a
//! tombstone or a newer put in a later volume still wins over what it holds.
//!
//! For the crash tests, `AETHER_TEST_COMPACTION_CRASH=<phase>` makes the process SIGKILL
//! itself when compaction reaches that phase.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::file::{fsync_dir, RemoveOnDrop};
use super::index::{Slot, VolumeFile};
use super::index_file::index_name;
use super::volume::{create_volume, record_len, volume_name, walk_records, Found, Kind, Volumes, VOLUME_HEADER};

/// A sealed volume is compacted once this fraction of its records' bytes is garbage.
const GARBAGE_FRACTION: f64 = 0.5;

/// What one compaction did, for the log.
pub struct Compacted {
    pub ordinal: u32,
    pub kept: u64,
    pub freed: u64,
}

impl Volumes {
    /// The sealed volume with the largest garbage fraction, if it passes the threshold.
    pub fn compaction_candidate(&self) -> Option<u32> {
        let active = self.active();
        let index = self.index.read().expect("index lock");
        index
            .volumes
            .iter()
            .filter(|(&ordinal, _)| ordinal != active)
            .map(|(&ordinal, v)| (ordinal, v.garbage as f64 / (v.end - VOLUME_HEADER).max(1) as f64))
            .filter(|&(_, fraction)| fraction >= GARBAGE_FRACTION)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(ordinal, _)| ordinal)
    }

    /// Compacts volume `ordinal` (sealed), copying at most `bytes_per_sec`; `pause` waits
    /// and says false when the node is stopping, which abandons the compaction (its
    /// partial file is removed).
    pub fn compact(
        &self,
        ordinal: u32,
        bytes_per_sec: u64,
        pause: &dyn Fn(Duration) -> bool,
    ) -> io::Result<Option<Compacted>> {
        let (old, generation, salt, end) = {
            let index = self.index.read().expect("index lock");
            let Some(v) = index.volumes.get(&ordinal) else { return Ok(None) };
            (Arc::clone(&v.file), v.generation, v.salt, v.end)
        };
        if ordinal == self.active() {
            return Ok(None);
        }
        let next = generation + 1;
        let partial = self.dir.join(volume_name(ordinal, next, "compacting"));
        let _ = fs::remove_file(&partial);
        let new = create_volume(&self.dir, &volume_name(ordinal, next, "compacting"), ordinal, next, salt)?;
        let mut removing = RemoveOnDrop(Some(partial.clone()));
        let started = Instant::now();
        let (mut new_end, mut copied) = (VOLUME_HEADER, 0u64);
        let mut moved = Vec::new();
        let mut put_here = HashSet::new();
        let walked = walk_records(&old, salt, end, &mut |Found { offset, header }| {
            let keep = match header.kind {
                Kind::Put => {
                    put_here.insert(header.id);
                    let slot = Slot { volume: ordinal, offset: offset as u32, len: header.len };
                    self.index.read().expect("index lock").objects.get(&header.id) == Some(&slot)
                }
                // A tombstone for a put earlier in this volume goes with it; any other may
                // still hide a record of an earlier volume.
                Kind::Tombstone => !put_here.contains(&header.id),
            };
            if !keep {
                return Ok(());
            }
            let len = record_len(header.len);
            let mut raw = vec![0u8; len as usize];
            old.read_exact_at(&mut raw, offset)?;
            new.write_all_at(&raw, new_end)?;
            if header.kind == Kind::Put {
                moved.push((header.id, offset as u32, new_end as u32, header.len));
            }
            new_end += len;
            copied += len;
            if copied == len {
                crash_point("copying");
            }
            let due = Duration::from_secs_f64(copied as f64 / bytes_per_sec.max(1) as f64);
            match due.checked_sub(started.elapsed()) {
                Some(lead) if !pause(lead) => Err(io::Error::new(io::ErrorKind::Interrupted, "the node is stopping")),
                _ => Ok(()),
            }
        });
        match walked {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e),
        }
        new.sync_data()?;
        crash_point("copied");
        let name = volume_name(ordinal, next, "vol");
        fs::rename(&partial, self.dir.join(&name))?;
        fsync_dir(&self.dir)?;
        removing.0 = None;
        crash_point("renamed");

        // Readers get a read-only handle, like every volume's.
        let reader = Arc::new(fs::File::open(self.dir.join(&name))?);
        drop(new);
        let mut garbage = 0;
        {
            let _no_scan = self.switching.write().expect("switching lock");
            let mut index = self.index.write().expect("index lock");
            for (id, from, to, len) in moved {
                match index.objects.get_mut(&id) {
                    Some(slot) if *slot == Slot { volume: ordinal, offset: from, len } => slot.offset = to,
                    // Deleted while it was copied: its tombstone is in a later volume.
                    _ => garbage += record_len(len),
                }
            }
            let volume =
                VolumeFile { file: Arc::clone(&reader), generation: next, salt, end: new_end, garbage, indexed: true };
            index.volumes.insert(ordinal, volume);
        }
        crash_point("switched");
        fs::remove_file(self.dir.join(volume_name(ordinal, generation, "vol")))?;
        match fs::remove_file(self.dir.join(index_name(ordinal, generation))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fsync_dir(&self.dir)?;
        crash_point("removed");
        self.write_index_file(ordinal).map_err(|e| {
            let why = format!("compacted volume {ordinal}, but cannot write its index file (it will be replayed at the next start): {e}");
            io::Error::new(e.kind(), why)
        })?;
        Ok(Some(Compacted { ordinal, kept: new_end - VOLUME_HEADER, freed: end.saturating_sub(new_end) }))
    }
}

/// The crash tests' hook: SIGKILL this process when compaction reaches `phase`.
fn crash_point(phase: &str) {
    if std::env::var("AETHER_TEST_COMPACTION_CRASH").is_ok_and(|wanted| wanted == phase) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::Kill);
    }
}
