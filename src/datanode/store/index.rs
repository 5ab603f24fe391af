//! The in-memory index of volume records: object id → (volume, offset, length), the open
//! volume files, and each volume's garbage (bytes of records nothing points at any more),
//! which tells compaction where it pays.
//!
//! An entry is a 16-byte key and a 12-byte `Slot` (28 bytes in the table, plus one
//! control byte and the table's spare capacity), so 100 million objects take about
//! 3-4 GiB: measured in docs/small-objects.md. The table is split into 256 shards by the
//! id's first byte, so that growing it never needs a second copy of the whole table at
//! once (one shard's, a 256th).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;

/// Where one object's record lives: its volume, the record's offset in that volume's
/// file (volumes stay below 4 GiB), and the object's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub volume: u32,
    pub offset: u32,
    pub len: u32,
}

/// One volume's open file (its current generation) and what it holds.
pub(super) struct VolumeFile {
    pub file: Arc<File>,
    pub generation: u32,
    /// Keys the header checksums of the volume's records (see `volume.rs`).
    pub salt: u64,
    /// Bytes of the file in use (its records end there).
    pub end: u64,
    /// Bytes of put records no index entry points at (deleted, quarantined or
    /// overwritten objects): what compacting the volume would give back.
    pub garbage: u64,
    /// Its index file was written (or loaded, or tried): a sealed volume without one
    /// gets it from `Volumes::index_sealed`.
    pub indexed: bool,
}

/// Object id → slot, in 256 shards by the id's first byte (random in a UUID v4).
pub(super) struct Objects {
    shards: Vec<HashMap<[u8; 16], Slot>>,
}

impl Default for Objects {
    fn default() -> Objects {
        Objects { shards: (0..256).map(|_| HashMap::new()).collect() }
    }
}

impl Objects {
    pub fn get(&self, id: &[u8; 16]) -> Option<&Slot> {
        self.shards[id[0] as usize].get(id)
    }

    pub fn get_mut(&mut self, id: &[u8; 16]) -> Option<&mut Slot> {
        self.shards[id[0] as usize].get_mut(id)
    }

    pub fn contains_key(&self, id: &[u8; 16]) -> bool {
        self.shards[id[0] as usize].contains_key(id)
    }

    pub fn insert(&mut self, id: [u8; 16], slot: Slot) -> Option<Slot> {
        self.shards[id[0] as usize].insert(id, slot)
    }

    pub fn remove(&mut self, id: &[u8; 16]) -> Option<Slot> {
        self.shards[id[0] as usize].remove(id)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn values(&self) -> impl Iterator<Item = &Slot> {
        self.shards.iter().flat_map(HashMap::values)
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&[u8; 16], &Slot)> {
        self.shards.iter().flat_map(HashMap::iter)
    }
}

#[derive(Default)]
pub(super) struct Index {
    pub objects: Objects,
    pub volumes: BTreeMap<u32, VolumeFile>,
}

impl Index {
    /// Points `id` at `slot`, counting a record it replaces as garbage.
    pub fn insert(&mut self, id: [u8; 16], slot: Slot) {
        if let Some(old) = self.objects.insert(id, slot) {
            self.add_garbage(old);
        }
    }

    /// Forgets `id`, whose record becomes garbage; gives the slot it had.
    pub fn remove(&mut self, id: &[u8; 16]) -> Option<Slot> {
        let old = self.objects.remove(id)?;
        self.add_garbage(old);
        Some(old)
    }

    fn add_garbage(&mut self, slot: Slot) {
        if let Some(volume) = self.volumes.get_mut(&slot.volume) {
            volume.garbage += super::volume::record_len(slot.len);
        }
    }

    /// The slot of `id` and the file that holds it, taken together so that a compaction
    /// switching the volume's file cannot pair a new offset with an old file.
    pub fn locate(&self, id: &[u8; 16]) -> Option<(Slot, Arc<File>, u64)> {
        let slot = *self.objects.get(id)?;
        let volume = self.volumes.get(&slot.volume)?;
        Some((slot, Arc::clone(&volume.file), volume.salt))
    }
}
