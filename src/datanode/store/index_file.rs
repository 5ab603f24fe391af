//! Index files: what a sealed volume holds (each record's id, put or tombstone, offset and
//! length, in file order), kept beside it as `<ordinal>.<generation>.idx`, so start-up
//! reads 24 bytes a record instead of every byte of the volume.
//!
//! Layout: a 64-byte header (magic, the volume's ordinal, generation and salt, the
//! volume's length when indexed (`end`), the count of entries, the bytes replay skipped
//! over damaged headers, the CRC-32C of the entries, and the CRC-32C of the header), then
//! `count` entries of 24 bytes: id, offset (u32), length (u32, its top bit set for a
//! tombstone).
//!
//! An index file is only a cache of a replay: it is used only when it names the volume's
//! ordinal, generation and salt, its `end` is the volume's length now, both checksums
//! match and every entry is a record that could be in that volume (in order, aligned,
//! inside `end`). Volumes are only ever appended to, so a volume of the same length
//! holds exactly the records that were indexed; anything else (missing, stale, torn,
//! damaged) falls back to replaying the volume. The last volume is always replayed: its
//! tail can be torn.
//!
//! Written to `<name>.idx.tmp`, synced, renamed over the name, directory synced; start-up
//! removes `.idx.tmp` files and the index files of volumes it does not keep.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::file::{fsync_dir, RemoveOnDrop};
use super::volume::{possible_len, record_len, volume_name, walk_records, Kind, Volumes, RECORD_HEADER, VOLUME_HEADER};
use crate::proto::Checksum;

const INDEX_MAGIC: &[u8; 8] = b"AETHIDX1";
const INDEX_HEADER: u64 = 64;
const ENTRY: usize = 24;
const TOMBSTONE_BIT: u32 = 1 << 31;
/// Entries read or written per buffer.
const BUFFER: usize = 1 << 20;

/// One record of a volume, as replay and index files give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub id: [u8; 16],
    pub kind: Kind,
    pub offset: u64,
    pub len: u32,
}

/// Which volume an index file is for, and the volume's length it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Describes {
    pub ordinal: u32,
    pub generation: u32,
    pub salt: u64,
    pub end: u64,
}

fn encode_entry(entry: &Entry) -> [u8; ENTRY] {
    let mut bytes = [0u8; ENTRY];
    bytes[0..16].copy_from_slice(&entry.id);
    bytes[16..20].copy_from_slice(&(entry.offset as u32).to_le_bytes());
    let tombstone = if entry.kind == Kind::Tombstone { TOMBSTONE_BIT } else { 0 };
    bytes[20..24].copy_from_slice(&(entry.len | tombstone).to_le_bytes());
    bytes
}

/// An entry that can be a record of a volume `end` bytes long that follows a record
/// ending at `after`.
fn decode_entry(bytes: &[u8], after: u64, end: u64) -> Result<Entry, String> {
    let offset = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as u64;
    let word = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let (kind, len) = match word & TOMBSTONE_BIT {
        0 => (Kind::Put, word),
        _ => (Kind::Tombstone, word & !TOMBSTONE_BIT),
    };
    if !possible_len(kind, len) {
        return Err(format!("an entry's length {len} is impossible"));
    }
    if offset < after || offset % 8 != 0 || offset + record_len(len) > end {
        return Err(format!("an entry's offset {offset} is out of order or outside the volume"));
    }
    Ok(Entry { id: bytes[0..16].try_into().expect("16 bytes"), kind, offset, len })
}

fn encode_header(describes: &Describes, count: u64, skipped: u64, entries_crc: u32) -> [u8; INDEX_HEADER as usize] {
    let mut bytes = [0u8; INDEX_HEADER as usize];
    bytes[0..8].copy_from_slice(INDEX_MAGIC);
    bytes[8..12].copy_from_slice(&describes.ordinal.to_le_bytes());
    bytes[12..16].copy_from_slice(&describes.generation.to_le_bytes());
    bytes[16..24].copy_from_slice(&describes.salt.to_le_bytes());
    bytes[24..32].copy_from_slice(&describes.end.to_le_bytes());
    bytes[32..40].copy_from_slice(&count.to_le_bytes());
    bytes[40..48].copy_from_slice(&skipped.to_le_bytes());
    bytes[48..52].copy_from_slice(&entries_crc.to_le_bytes());
    let own = Checksum::of(&bytes[0..60]).0;
    bytes[60..64].copy_from_slice(&own.to_le_bytes());
    bytes
}

/// What a checked index file header says: entries to read, skipped bytes, their CRC.
struct Checked {
    count: u64,
    skipped: u64,
    entries_crc: u32,
}

/// Checks an index file's header against the volume it should describe and the file's
/// own length, before anything is allocated from what it declares.
fn check_header(bytes: &[u8; INDEX_HEADER as usize], expected: &Describes, file_len: u64) -> Result<Checked, String> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if &bytes[0..8] != INDEX_MAGIC || Checksum::of(&bytes[0..60]).0 != u32_at(60) || bytes[52..60] != [0; 8] {
        return Err("its header is damaged".to_string());
    }
    let found = Describes { ordinal: u32_at(8), generation: u32_at(12), salt: u64_at(16), end: u64_at(24) };
    if (found.ordinal, found.generation, found.salt) != (expected.ordinal, expected.generation, expected.salt) {
        return Err("it names another volume".to_string());
    }
    if found.end != expected.end {
        return Err(format!("it is stale: it describes {} bytes, the volume has {}", found.end, expected.end));
    }
    let (count, skipped) = (u64_at(32), u64_at(40));
    // Every record takes at least a header in the volume.
    let most = expected.end.saturating_sub(VOLUME_HEADER) / RECORD_HEADER as u64;
    let declared = count.checked_mul(ENTRY as u64).and_then(|n| n.checked_add(INDEX_HEADER));
    if count > most || declared != Some(file_len) {
        return Err(format!("it declares {count} entries but is {file_len} bytes long"));
    }
    if skipped > expected.end {
        return Err(format!("it declares {skipped} skipped bytes"));
    }
    Ok(Checked { count, skipped, entries_crc: u32_at(48) })
}

pub(super) fn index_name(ordinal: u32, generation: u32) -> String {
    volume_name(ordinal, generation, "idx")
}

/// Reads the entries of `file` (after its checked header) a buffer at a time, checking
/// each, and gives them to `each`; returns the entries' CRC.
fn read_entries(
    file: &File,
    checked: &Checked,
    end: u64,
    each: &mut dyn FnMut(Entry),
) -> io::Result<Result<u32, String>> {
    let per_buffer = (BUFFER / ENTRY) as u64;
    let mut buffer = vec![0u8; checked.count.min(per_buffer) as usize * ENTRY];
    let (mut crc, mut after, mut done) = (Checksum::default(), VOLUME_HEADER, 0u64);
    while done < checked.count {
        let n = (checked.count - done).min(per_buffer) as usize;
        let bytes = &mut buffer[..n * ENTRY];
        file.read_exact_at(bytes, INDEX_HEADER + done * ENTRY as u64)?;
        crc.update(bytes);
        for raw in bytes.chunks_exact(ENTRY) {
            let entry = match decode_entry(raw, after, end) {
                Ok(entry) => entry,
                Err(why) => return Ok(Err(why)),
            };
            after = entry.offset + record_len(entry.len);
            each(entry);
        }
        done += n as u64;
    }
    Ok(Ok(crc.0))
}

/// Why a volume's index file was not used.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unusable {
    Missing,
    /// Damaged, torn, stale or unreadable: the sentence says which.
    Refused(String),
}

/// Gives `apply` the records of the volume `expected` describes from its index file in
/// `dir`, in file order, and returns the bytes its replay skipped over damaged headers;
/// or says why the index file cannot be used (and `apply` was not called). The file is
/// read twice: checked whole first, then applied.
pub(super) fn load(
    dir: &Path,
    expected: &Describes,
    apply: &mut dyn FnMut(Entry),
) -> io::Result<Result<u64, Unusable>> {
    let path = dir.join(index_name(expected.ordinal, expected.generation));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(Unusable::Missing)),
        Err(e) => return Ok(Err(Unusable::Refused(format!("its index file cannot be opened: {e}")))),
    };
    let checked = (|| -> io::Result<Result<Checked, String>> {
        let file_len = file.metadata()?.len();
        if file_len < INDEX_HEADER {
            return Ok(Err(format!("it is {file_len} bytes long, shorter than its header")));
        }
        let mut header = [0u8; INDEX_HEADER as usize];
        file.read_exact_at(&mut header, 0)?;
        let checked = match check_header(&header, expected, file_len) {
            Ok(checked) => checked,
            Err(why) => return Ok(Err(why)),
        };
        Ok(match read_entries(&file, &checked, expected.end, &mut |_| {})? {
            Ok(crc) if crc == checked.entries_crc => Ok(checked),
            Ok(_) => Err("its entries' checksum does not match".to_string()),
            Err(why) => Err(why),
        })
    })();
    let checked = match checked {
        Ok(Ok(checked)) => checked,
        Ok(Err(why)) => return Ok(Err(Unusable::Refused(format!("its index file is unusable: {why}")))),
        Err(e) => return Ok(Err(Unusable::Refused(format!("its index file cannot be read: {e}")))),
    };
    // Checked whole above; the data directory is locked, so only the disk can change it.
    match read_entries(&file, &checked, expected.end, apply)? {
        Ok(crc) if crc == checked.entries_crc => Ok(Ok(checked.skipped)),
        _ => Err(io::Error::other(format!("{} changed while it was read", path.display()))),
    }
}

/// Writes an index file entry by entry, then names it in one step (`finish`); dropped
/// unfinished, it removes its temporary file.
pub(super) struct IndexWriter {
    out: BufWriter<File>,
    dir: std::path::PathBuf,
    temp: RemoveOnDrop,
    ordinal: u32,
    generation: u32,
    count: u64,
    crc: Checksum,
}

impl IndexWriter {
    pub fn create(dir: &Path, ordinal: u32, generation: u32) -> io::Result<IndexWriter> {
        let temp = dir.join(format!("{}.tmp", index_name(ordinal, generation)));
        let _ = fs::remove_file(&temp);
        let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        let mut out = BufWriter::with_capacity(BUFFER, file);
        out.write_all(&[0u8; INDEX_HEADER as usize])?;
        let temp = RemoveOnDrop(Some(temp));
        Ok(IndexWriter { out, dir: dir.to_path_buf(), temp, ordinal, generation, count: 0, crc: Checksum::default() })
    }

    pub fn add(&mut self, entry: &Entry) -> io::Result<()> {
        let bytes = encode_entry(entry);
        self.crc.update(&bytes);
        self.count += 1;
        self.out.write_all(&bytes)
    }

    /// Writes the header for a volume of `salt` and `end` bytes, whose replay skipped
    /// `skipped` bytes, syncs the file, renames it into place and syncs the directory;
    /// returns how many entries it holds.
    pub fn finish(mut self, salt: u64, end: u64, skipped: u64) -> io::Result<u64> {
        self.out.flush()?;
        let describes = Describes { ordinal: self.ordinal, generation: self.generation, salt, end };
        let file = self.out.get_ref();
        file.write_all_at(&encode_header(&describes, self.count, skipped, self.crc.0), 0)?;
        file.sync_all()?;
        let temp = self.temp.0.take().expect("an unfinished index file");
        let named = self.dir.join(index_name(self.ordinal, self.generation));
        if let Err(e) = fs::rename(&temp, named) {
            self.temp.0 = Some(temp);
            return Err(e);
        }
        fsync_dir(&self.dir)?;
        Ok(self.count)
    }
}

impl Volumes {
    /// Writes the index file of one sealed volume that has none yet (sealed since
    /// start-up, or compacted), reading its record headers; says which, or `None` when
    /// every sealed volume has one. A failure is not tried again: the volume is replayed
    /// at the next start instead.
    pub fn index_sealed(&self) -> io::Result<Option<String>> {
        let active = self.active();
        let ordinal = {
            let mut index = self.index.write().expect("index lock");
            let Some((&ordinal, volume)) = index.volumes.iter_mut().find(|(&o, v)| o != active && !v.indexed) else {
                return Ok(None);
            };
            volume.indexed = true;
            ordinal
        };
        self.write_index_file(ordinal).map(Some).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write the index file of volume {ordinal} (it will be replayed at the next start): {e}"),
            )
        })
    }

    /// Writes the index file of sealed volume `ordinal` from its record headers.
    pub(super) fn write_index_file(&self, ordinal: u32) -> io::Result<String> {
        // No compaction switches the volume's file meanwhile.
        let _no_switch = self.switching.read().expect("switching lock");
        let (file, generation, salt, end) = {
            let index = self.index.read().expect("index lock");
            let Some(v) = index.volumes.get(&ordinal) else { return Ok(format!("volume {ordinal} is gone")) };
            (std::sync::Arc::clone(&v.file), v.generation, v.salt, v.end)
        };
        let mut out = IndexWriter::create(&self.dir, ordinal, generation)?;
        let walk = walk_records(&file, salt, end, &mut |found| out.add(&found.entry()))?;
        if walk.end != end {
            return Err(io::Error::other(format!("its records end at {}, before its end {end}", walk.end)));
        }
        let records = out.finish(salt, end, walk.skipped.iter().map(|(from, to)| to - from).sum())?;
        Ok(format!("wrote the index file of {} ({records} record(s))", volume_name(ordinal, generation, "vol")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datanode::store::volume::VOLUME_OBJECT;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("aether-idx-{name}-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries() -> Vec<Entry> {
        let mut offset = VOLUME_HEADER;
        (0..50u8)
            .map(|i| {
                let (kind, len) = if i % 5 == 4 { (Kind::Tombstone, 0) } else { (Kind::Put, i as u32 * 100) };
                let entry = Entry { id: [i; 16], kind, offset, len };
                offset += record_len(len);
                entry
            })
            .collect()
    }

    fn write(dir: &Path, entries: &[Entry], describes: &Describes) {
        let mut writer = IndexWriter::create(dir, describes.ordinal, describes.generation).unwrap();
        for entry in entries {
            writer.add(entry).unwrap();
        }
        writer.finish(describes.salt, describes.end, 96).unwrap();
    }

    fn load_all(dir: &Path, describes: &Describes) -> Result<(Vec<Entry>, u64), String> {
        let mut got = Vec::new();
        match load(dir, describes, &mut |entry| got.push(entry)).unwrap() {
            Ok(skipped) => Ok((got, skipped)),
            Err(Unusable::Missing) => Err("missing".to_string()),
            Err(Unusable::Refused(why)) => {
                assert!(got.is_empty(), "nothing applied from a refused file");
                Err(why)
            }
        }
    }

    #[test]
    fn an_index_file_reads_back_and_any_damage_staleness_or_truncation_is_refused() {
        let dir = temp_dir("roundtrip");
        let written = entries();
        let last = written.last().unwrap();
        let describes = Describes { ordinal: 3, generation: 1, salt: 77, end: last.offset + record_len(last.len) };
        write(&dir, &written, &describes);
        assert_eq!(load_all(&dir, &describes), Ok((written.clone(), 96)));
        assert!(fs::read_dir(&dir).unwrap().count() == 1, "no temporary file left");
        let path = dir.join(index_name(3, 1));
        let good = fs::read(&path).unwrap();
        assert_eq!(good.len(), 64 + 24 * written.len());

        // Another volume's length, salt or generation.
        for other in [
            Describes { end: describes.end + 8, ..describes },
            Describes { salt: 78, ..describes },
            Describes { ordinal: 4, ..describes },
        ] {
            if other.ordinal != describes.ordinal {
                fs::copy(&path, dir.join(index_name(other.ordinal, other.generation))).unwrap();
            }
            let refused = load_all(&dir, &other).unwrap_err();
            assert!(refused.contains("stale") || refused.contains("another volume"), "{refused}");
        }
        // Every flipped byte, every truncation, any byte added.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert!(load_all(&dir, &describes).is_err(), "byte {at} flipped");
        }
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            assert!(load_all(&dir, &describes).is_err(), "cut to {len}");
        }
        fs::write(&path, [&good[..], &[0u8; 24]].concat()).unwrap();
        assert!(load_all(&dir, &describes).unwrap_err().contains("declares"));
        fs::remove_file(&path).unwrap();
        assert_eq!(load_all(&dir, &describes), Err("missing".to_string()));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn declared_counts_and_entries_are_checked_before_they_are_trusted() {
        let dir = temp_dir("declared");
        let describes = Describes { ordinal: 1, generation: 0, salt: 5, end: VOLUME_HEADER + 10 * 48 };
        // A huge count with a valid header checksum allocates nothing and is refused.
        let header = encode_header(&describes, u64::MAX / 8, 0, 0);
        fs::write(dir.join(index_name(1, 0)), header).unwrap();
        assert!(load_all(&dir, &describes).unwrap_err().contains("declares"));
        // More entries than the volume has room for, each claimed in the file.
        let many: Vec<u8> = (0..11).flat_map(|_| [0u8; ENTRY]).collect();
        fs::write(dir.join(index_name(1, 0)), [&encode_header(&describes, 11, 0, 0)[..], &many].concat()).unwrap();
        assert!(load_all(&dir, &describes).unwrap_err().contains("declares"));
        // Entries out of order, overlapping, past the end, or impossible, even with valid
        // checksums.
        let at = |offset: u64, len: u32, kind: Kind| Entry { id: [1; 16], kind, offset, len };
        for bad in [
            vec![at(VOLUME_HEADER + 48, 0, Kind::Put), at(VOLUME_HEADER, 0, Kind::Put)],
            vec![at(VOLUME_HEADER, 8, Kind::Put), at(VOLUME_HEADER + 48, 0, Kind::Put)],
            vec![at(VOLUME_HEADER + 4, 0, Kind::Put)],
            vec![at(describes.end - 40, 0, Kind::Put)],
            vec![at(VOLUME_HEADER, 1, Kind::Tombstone)],
            vec![at(VOLUME_HEADER, VOLUME_OBJECT as u32 + 1, Kind::Put)],
        ] {
            write(&dir, &bad, &describes);
            assert!(load_all(&dir, &describes).is_err(), "{bad:?}");
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
