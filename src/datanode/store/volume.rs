//! Volume files: small objects appended as records to a few large files, with one shared
//! `fdatasync` per batch of concurrent writers (group commit), instead of a file, an
//! inode and two or three fsyncs per object.
//!
//! Layout: `volumes/<ordinal>.<generation>.vol` (ordinal 8 digits). A volume starts with a
//! 64-byte header (magic, ordinal, generation, a random salt, its CRC), then records, each
//! aligned to 8 bytes: a 48-byte header (magic, flags put/tombstone, object id, length,
//! the object's CRC-32C, write time, and a CRC-32C of the salt and the header) and the
//! object's bytes. The header's CRC covers the object's CRC, so header and bytes are
//! checked together; the salt keeps bytes a client uploaded from ever passing for a
//! record header when start-up resynchronises past a damaged one.
//!
//! Direct records: an object of more than `BUFFERED_RECORD` bytes is received into a
//! buffer aligned for O_DIRECT behind room for its header, and the record is written
//! from there by O_DIRECT, at the next `BLOCK` boundary and in whole blocks (zeros after
//! the bytes; its length, `record_len`, says so). The zeros left before it are padding,
//! which replay steps over. Copying a 1 MiB record into the page cache cost more than
//! the rest of its write, and one file per object cost its file system metadata: 1 MiB
//! objects as direct records went from 177-240 to 252-288 MB/s at replication 3.
//! Direct records go into space `fallocate`d ahead (`ALLOCATE_BYTES`), not written ahead:
//! zeros written ahead of large records would double what the disk writes.
//!
//! Writes: a writer appends its record under the writer lock (a `pwrite` into the page
//! cache, or a direct record's O_DIRECT `pwrite`), then waits until an `fdatasync` that
//! started after its append has finished: the first waiter without a sync in flight
//! becomes the leader and syncs for everyone appended so far; the others wait for it. A
//! put is answered only after that, so a 201 still means the bytes are on disk. A volume
//! rolls over at its size limit (the old one synced first). Deletes and quarantines
//! append a tombstone the same way.
//!
//! Space written ahead: a sync that grows the file also commits its new size to the
//! file system's journal; one of bytes inside the file writes only them (a 4 KiB
//! `fdatasync` here: 0.11 ms against 0.20 ms). So the active volume's next few MiB are
//! written as zeros and synced in the background (`background_step`, asked for by the
//! writers when less than `AHEAD_LOW` is left), and records are written over them. That
//! space is only a cost saving: a record past it is appended as before, and no writer
//! ever waits for it except one whose record falls in the stretch being written. A
//! volume is cut back to its last record when it is sealed.
//!
//! Start-up reads the volumes in ordinal order into the index (a later record wins, a
//! tombstone removes): a sealed volume from its index file when that is usable
//! (`index_file.rs`), else, and always the last volume, by replaying it: a header that
//! fails its check is skipped to the next valid header; anything after the last valid
//! record, and trailing records whose bytes fail their CRC (a write torn by a crash before
//! its sync), is cut off. A sealed volume replayed gets its index file written. Zeros after
//! the last volume's last record are space written ahead and kept as such.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::file::{fsync_dir, set_direct};
use super::index::{Index, Slot, VolumeFile};
use super::index_file::{self, Describes, Entry, IndexWriter, Unusable};
use super::verify::unix_secs;
use super::{StoreError, StoredObject};
use crate::proto::{Checksum, ObjectId};

/// Objects up to this size are stored as volume records; larger ones as files of their
/// own (a record is read whole to be verified, and a large object streams).
pub(super) const VOLUME_OBJECT: u64 = 1 << 20;
/// Records of objects up to this size are copied into the page cache and written back
/// by the group's sync; larger ones are written by O_DIRECT (`put_direct`), from the
/// upload's own buffer: copying a 1 MiB record through the page cache cost more than the
/// rest of its write.
pub(super) const BUFFERED_RECORD: u64 = 64 * 1024;
/// A direct record starts at a multiple of this and fills whole blocks (zeros after its
/// bytes), as O_DIRECT asks; the bytes before it, back to the previous record's end, are
/// left as zeros.
pub(super) const BLOCK: u64 = 4096;
/// A volume rolls over once its next record would pass this size.
pub(super) const VOLUME_BYTES: u64 = 1 << 30;
/// The magic of a volume that may hold direct records. Versions before direct records
/// wrote `LEGACY_VOLUME_MAGIC`, and refuse this one: such a version, started on a newer
/// node's data, moves its volumes aside whole instead of cutting off records it cannot
/// read. A legacy volume is read as any other but takes no direct record.
const VOLUME_MAGIC: &[u8; 8] = b"AETHVOL2";
const LEGACY_VOLUME_MAGIC: &[u8; 8] = b"AETHVOL1";
pub(super) const VOLUME_HEADER: u64 = 64;
const RECORD_MAGIC: &[u8; 4] = b"AREC";
pub(super) const RECORD_HEADER: usize = 48;
const ALIGN: u64 = 8;
/// How many failed syncs' ranges are remembered for their waiters.
const FAILURES_KEPT: usize = 64;
/// How many of the last volume's final records start-up checks for a torn write: more
/// than the writers that can wait on one sync (each has one record in flight).
const TAIL_CHECKED: usize = 4096;
/// Space of the active volume written ahead at a time, and what is left when the next
/// is asked for: at 4 KiB records, a write-ahead every 1,000 or so records.
const AHEAD_BYTES: u64 = 4 << 20;
const AHEAD_LOW: u64 = 2 << 20;
/// After a write-ahead failed (a full disk, say), none is asked for this long.
const AHEAD_BACKOFF: Duration = Duration::from_secs(10);
/// Space `fallocate`d at a time for direct records, past the one being written (a write
/// into allocated space commits less to the file system's journal than one that
/// allocates).
const ALLOCATE_BYTES: u64 = 64 << 20;
/// What space is written ahead with.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Put = 1,
    Tombstone = 2,
}

/// A record's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub id: [u8; 16],
    pub len: u32,
    pub checksum: Checksum,
    pub created: u64,
}

/// Bytes a record of an object of `len` bytes takes in its volume: a direct record
/// (`BUFFERED_RECORD` on) whole blocks.
pub(super) fn record_len(len: u32) -> u64 {
    let bytes = RECORD_HEADER as u64 + len as u64;
    if is_direct(len) {
        bytes.next_multiple_of(BLOCK)
    } else {
        bytes.next_multiple_of(ALIGN)
    }
}

/// Whether a record of `len` bytes is written by O_DIRECT, at a block boundary.
pub(super) fn is_direct(len: u32) -> bool {
    u64::from(len) > BUFFERED_RECORD
}

/// A record header's own checksum: of the volume's salt, then the header's first bytes.
fn salted_sum(salt: u64, bytes: &[u8]) -> u32 {
    let mut sum = Checksum::of(&salt.to_le_bytes());
    sum.update(bytes);
    sum.0
}

pub(crate) fn encode_header(header: &Header, salt: u64) -> [u8; RECORD_HEADER] {
    let mut bytes = [0u8; RECORD_HEADER];
    bytes[0..4].copy_from_slice(RECORD_MAGIC);
    bytes[4] = header.kind as u8;
    bytes[8..24].copy_from_slice(&header.id);
    bytes[24..28].copy_from_slice(&header.len.to_le_bytes());
    bytes[28..32].copy_from_slice(&header.checksum.0.to_le_bytes());
    bytes[32..40].copy_from_slice(&header.created.to_le_bytes());
    let own = salted_sum(salt, &bytes[0..44]);
    bytes[44..48].copy_from_slice(&own.to_le_bytes());
    bytes
}

/// Checks a record header read from a volume with `salt`: magic, kind, length, own CRC.
pub(crate) fn parse_header(bytes: &[u8; RECORD_HEADER], salt: u64) -> Result<Header, String> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if &bytes[0..4] != RECORD_MAGIC {
        return Err("record magic is missing".to_string());
    }
    let own = salted_sum(salt, &bytes[0..44]);
    if own != u32_at(44) {
        return Err("record header checksum does not match".to_string());
    }
    if bytes[5..8] != [0; 3] || bytes[40..44] != [0; 4] {
        return Err("record header has unknown bits set".to_string());
    }
    let kind = match bytes[4] {
        1 => Kind::Put,
        2 => Kind::Tombstone,
        other => return Err(format!("record kind {other} is unknown")),
    };
    let len = u32_at(24);
    if !possible_len(kind, len) {
        return Err(format!("record length {len} is impossible"));
    }
    Ok(Header {
        kind,
        id: bytes[8..24].try_into().expect("16 bytes"),
        len,
        checksum: Checksum(u32_at(28)),
        created: u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")),
    })
}

/// Whether a record of `kind` can be `len` bytes long: a put at most `VOLUME_OBJECT`,
/// a tombstone none (for record headers and index file entries alike).
pub(super) fn possible_len(kind: Kind, len: u32) -> bool {
    u64::from(len) <= VOLUME_OBJECT && (kind == Kind::Put || len == 0)
}

fn encode_volume_header(ordinal: u32, generation: u32, salt: u64) -> [u8; VOLUME_HEADER as usize] {
    let mut bytes = [0u8; VOLUME_HEADER as usize];
    bytes[0..8].copy_from_slice(VOLUME_MAGIC);
    bytes[8..12].copy_from_slice(&ordinal.to_le_bytes());
    bytes[12..16].copy_from_slice(&generation.to_le_bytes());
    bytes[16..24].copy_from_slice(&salt.to_le_bytes());
    let own = Checksum::of(&bytes[0..24]).0;
    bytes[24..28].copy_from_slice(&own.to_le_bytes());
    bytes
}

/// The salt of a volume file, from its checked header, and whether it is a legacy
/// volume (`LEGACY_VOLUME_MAGIC`).
fn read_volume_header(file: &File, ordinal: u32, generation: u32) -> Result<(u64, bool), String> {
    let mut bytes = [0u8; VOLUME_HEADER as usize];
    file.read_exact_at(&mut bytes, 0).map_err(|e| format!("cannot read its header: {e}"))?;
    let legacy = &bytes[0..8] == LEGACY_VOLUME_MAGIC;
    if !(legacy || &bytes[0..8] == VOLUME_MAGIC) || Checksum::of(&bytes[0..24]).0.to_le_bytes() != bytes[24..28] {
        return Err("its header is damaged".to_string());
    }
    if bytes[8..12] != ordinal.to_le_bytes() || bytes[12..16] != generation.to_le_bytes() {
        return Err("its header names another volume".to_string());
    }
    Ok((u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")), legacy))
}

pub(super) fn volume_name(ordinal: u32, generation: u32, suffix: &str) -> String {
    format!("{ordinal:08}.{generation}.{suffix}")
}

/// The files of the volumes directory, by their names' endings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// `.vol`: a volume.
    Volume,
    /// `.compacting`: a compaction's unfinished next generation.
    Compacting,
    /// `.idx`: a sealed volume's index file (`index_file.rs`).
    Index,
    /// `.idx.tmp`: an index file not yet named.
    IndexTemp,
}

/// `(ordinal, generation, kind)` from a name in the volumes directory.
fn parse_volume_name(name: &str) -> Option<(u32, u32, FileKind)> {
    let mut parts = name.split('.');
    let ordinal = parts.next().filter(|p| p.len() == 8)?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    let kind = match (parts.next()?, parts.next()) {
        ("vol", None) => FileKind::Volume,
        ("compacting", None) => FileKind::Compacting,
        ("idx", None) => FileKind::Index,
        ("idx", Some("tmp")) => FileKind::IndexTemp,
        _ => return None,
    };
    parts.next().is_none().then_some((ordinal, generation, kind))
}

/// Creates a volume file named `name` in `dir` with its header, synced, and syncs the
/// directory so the name survives a crash.
pub(super) fn create_volume(dir: &Path, name: &str, ordinal: u32, generation: u32, salt: u64) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(dir.join(name))?;
    file.write_all_at(&encode_volume_header(ordinal, generation, salt), 0)?;
    file.sync_data()?;
    fsync_dir(dir)?;
    Ok(file)
}

/// One record found by `walk_records`.
#[derive(Clone, Copy)]
pub(super) struct Found {
    pub offset: u64,
    pub header: Header,
}

impl Found {
    /// What an index file keeps of the record.
    pub fn entry(&self) -> Entry {
        Entry { id: self.header.id, kind: self.header.kind, offset: self.offset, len: self.header.len }
    }
}

/// What `walk_records` found besides the records.
pub(super) struct Walk {
    /// Where the last valid record ends: anything after it is torn or garbage.
    pub end: u64,
    /// Byte ranges skipped over damaged headers.
    pub skipped: Vec<(u64, u64)>,
}

/// Reads the record headers of a volume `len` bytes long in order, calling `found` for
/// each valid one (an error from it ends the walk). A damaged header is skipped up to the
/// next valid header.
pub(super) fn walk_records(
    file: &File,
    salt: u64,
    len: u64,
    found: &mut dyn FnMut(Found) -> io::Result<()>,
) -> io::Result<Walk> {
    let mut headers = Headers { file, buf: Vec::new(), at: 0 };
    let (mut pos, mut end, mut skipped) = (VOLUME_HEADER, VOLUME_HEADER, Vec::new());
    while pos + RECORD_HEADER as u64 <= len {
        let bytes = headers.at(pos, len)?;
        match parse_header(&bytes, salt) {
            Ok(header) if pos + record_len(header.len) <= len => {
                let next = pos + record_len(header.len);
                found(Found { offset: pos, header })?;
                pos = next;
                end = next;
            }
            // Zeros up to a block boundary: the space left before a direct record.
            _ if pos % BLOCK != 0 && padding(file, &bytes, pos, len)? => pos = pos.next_multiple_of(BLOCK),
            _ => match resync(file, salt, pos + ALIGN, len)? {
                Some(next) => {
                    skipped.push((pos, next));
                    pos = next;
                }
                None => break,
            },
        }
    }
    Ok(Walk { end, skipped })
}

/// What `walk_records` reads headers through: a stretch of the file at a time, large
/// while the records come close together, one block after a large record's bytes were
/// stepped over, so that a walk reads the headers of large records and not their bytes.
struct Headers<'a> {
    file: &'a File,
    buf: Vec<u8>,
    /// Where `buf` was read from.
    at: u64,
}

/// How much `Headers` reads at a time among small records.
const WALK_READ: u64 = 256 * 1024;

impl Headers<'_> {
    /// The `RECORD_HEADER` bytes at `pos`, which with them lies within the file's `len`.
    fn at(&mut self, pos: u64, len: u64) -> io::Result<[u8; RECORD_HEADER]> {
        let read_to = self.at + self.buf.len() as u64;
        if pos < self.at || pos + RECORD_HEADER as u64 > read_to {
            let near = pos >= self.at && pos < read_to + WALK_READ;
            let size = if near { WALK_READ } else { BLOCK }.min(len - pos).max(RECORD_HEADER as u64);
            self.buf.resize(size as usize, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.at = pos;
        }
        let from = (pos - self.at) as usize;
        Ok(self.buf[from..from + RECORD_HEADER].try_into().expect("a header"))
    }
}

/// Whether the bytes at `pos` (`bytes` read there) are zeros up to the next block
/// boundary: the space a direct record leaves before it.
fn padding(file: &File, bytes: &[u8; RECORD_HEADER], pos: u64, len: u64) -> io::Result<bool> {
    let gap = pos.next_multiple_of(BLOCK) - pos;
    if gap <= RECORD_HEADER as u64 {
        return Ok(bytes[..gap as usize].iter().all(|&b| b == 0));
    }
    Ok(bytes.iter().all(|&b| b == 0) && all_zeros(file, pos + RECORD_HEADER as u64, (pos + gap).min(len))?)
}

/// The offset of the next valid record header (one that fits in the file) from `from`.
fn resync(file: &File, salt: u64, from: u64, len: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from.next_multiple_of(ALIGN);
    while at + RECORD_HEADER as u64 <= len {
        let n = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        let mut i = 0;
        while i + RECORD_HEADER <= n {
            if &buf[i..i + 4] == RECORD_MAGIC {
                let bytes: &[u8; RECORD_HEADER] = buf[i..i + RECORD_HEADER].try_into().expect("a header");
                if let Ok(header) = parse_header(bytes, salt) {
                    if at + i as u64 + record_len(header.len) <= len {
                        return Ok(Some(at + i as u64));
                    }
                }
            }
            i += ALIGN as usize;
        }
        // The next window starts at the first header that did not fit in this one.
        at += (i as u64).max(ALIGN);
    }
    Ok(None)
}

/// A record's bytes as `append` gets them.
enum Body<'a> {
    /// The object's bytes, copied behind the header and written through the page cache.
    Copied(&'a [u8]),
    /// The whole direct record, header to be filled in (`put_direct`).
    Direct(&'a mut [u8]),
}

/// Where a record appended after `end` starts: a direct one at the next block boundary.
fn record_start(end: u64, direct: bool) -> u64 {
    if direct {
        end.next_multiple_of(BLOCK)
    } else {
        end
    }
}

/// The writer's state: the active volume, and the group commit's sequence numbers.
struct Writer {
    ordinal: u32,
    generation: u32,
    salt: u64,
    /// The active volume is a legacy one: a direct record starts the next volume.
    legacy: bool,
    /// The active volume opened for writing; closed when idle, so that an idle node
    /// holds no file open for writing (a remount read-only refuses while one is).
    file: Option<Arc<File>>,
    /// The same, opened for O_DIRECT writes of direct records (buffered where the file
    /// system has no O_DIRECT); closed with `file`.
    direct: Option<Arc<File>>,
    /// The active volume's space is `fallocate`d up to here (0: not known, after a roll
    /// or a restart; allocating space that is allocated already changes nothing).
    allocated: u64,
    last_write: Instant,
    end: u64,
    /// Records appended so far, and how many of them an fsync has covered.
    written: u64,
    synced: u64,
    /// A leader is syncing for the group.
    syncing: bool,
    /// Ranges `(after, through]` of records whose sync failed, with the error.
    failed: VecDeque<(u64, u64, String)>,
    /// Objects appended but not yet durable: a second put of one is refused.
    pending: HashSet<[u8; 16]>,
    /// The active volume's file is written up to here (records, then zeros written
    /// ahead): a record below it is synced without growing the file.
    ready: u64,
    ahead: Ahead,
    /// No write-ahead is asked for before this (the last one failed).
    ahead_after: Instant,
    /// A writer went on to forward its record and asked the background thread to sync.
    sync_wanted: bool,
}

/// The write-ahead of the active volume's space: no record is written into `from..to`
/// while it is wanted (a writer needing the space takes the request back) or being
/// written (a writer needing the space waits for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ahead {
    Idle,
    Wanted { from: u64, to: u64 },
    Writing { from: u64, to: u64 },
}

pub(super) struct Volumes {
    pub dir: PathBuf,
    limit: u64,
    pub index: RwLock<Index>,
    writer: Mutex<Writer>,
    synced: Condvar,
    /// Wakes `background_step` when a writer asks for a sync or for space.
    background: Condvar,
    /// Taken shared by a scan (which walks a volume's file and asks the index about each
    /// record) and exclusively by a compaction switching a volume's file, so a scan
    /// never misses an object that moved under it.
    pub switching: RwLock<()>,
    fsync_seconds: prometheus::Histogram,
}

/// What opening the volumes found.
pub(super) struct Opened {
    pub volumes: Volumes,
    pub objects: u64,
    pub bytes: u64,
    /// One sentence per repair made (torn tails cut, damaged headers skipped, leftovers
    /// removed), for the log.
    pub repairs: Vec<String>,
    pub start_up: StartUp,
}

/// How start-up read the volumes, for the node's log.
#[derive(Debug, Default)]
pub struct StartUp {
    /// Sealed volumes loaded from their index files.
    pub from_index: usize,
    /// Volumes read whole: the last one, and sealed ones without a usable index file.
    pub replayed: usize,
    /// Of those, sealed volumes that had no index file (written before index files
    /// existed, or sealed just before a stop).
    pub without_index: usize,
    /// One sentence per sealed volume whose index file was there but unusable (damaged,
    /// torn, stale) or could not be rewritten.
    pub fallbacks: Vec<String>,
    pub seconds: f64,
}

/// Puts one record of volume `ordinal`, read in order, into the index: a later record
/// wins, a tombstone removes.
fn apply(index: &mut Index, ordinal: u32, entry: Entry) {
    match entry.kind {
        Kind::Put => index.insert(entry.id, Slot { volume: ordinal, offset: entry.offset as u32, len: entry.len }),
        Kind::Tombstone => {
            index.remove(&entry.id);
        }
    }
}

impl Volumes {
    /// Opens the volumes under `dir` (creating it), loads sealed volumes from their
    /// index files and replays the others into the index, and repairs what a crash
    /// left: unfinished compactions and older generations are removed, torn tails are
    /// cut off.
    pub fn open(dir: &Path, limit: u64, fsync_seconds: prometheus::Histogram) -> io::Result<Opened> {
        let started = Instant::now();
        fs::create_dir_all(dir)?;
        let mut repairs = Vec::new();
        let mut start_up = StartUp::default();
        let mut newest: std::collections::BTreeMap<u32, u32> = Default::default();
        let (mut names, mut index_files) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            match parse_volume_name(&name) {
                Some((ordinal, generation, FileKind::Volume)) => {
                    let kept = newest.entry(ordinal).or_insert(generation);
                    *kept = (*kept).max(generation);
                    names.push((ordinal, generation, name));
                }
                Some((_, _, FileKind::Compacting)) => names.push((u32::MAX, 0, name)),
                Some((ordinal, generation, FileKind::Index)) => index_files.push((ordinal, generation, name)),
                Some((_, _, FileKind::IndexTemp)) => fs::remove_file(dir.join(name))?,
                None => {}
            }
        }
        let mut removed = false;
        for (ordinal, generation, name) in &names {
            if newest.get(ordinal) != Some(generation) {
                fs::remove_file(dir.join(name))?;
                repairs.push(format!("removed {name}, left by a compaction a crash interrupted"));
                removed = true;
            }
        }
        if removed {
            fsync_dir(dir)?;
        }

        let mut index = Index::default();
        let last = newest.keys().next_back().copied();
        // The last volume, and how far its file is written, when zeros were written
        // ahead of its records.
        let mut written_ahead = None;
        let mut legacy = HashSet::new();
        for (&ordinal, &generation) in &newest {
            let name = volume_name(ordinal, generation, "vol");
            let path = dir.join(&name);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            let salt = match read_volume_header(&file, ordinal, generation) {
                Ok((salt, old)) => {
                    if old {
                        legacy.insert(ordinal);
                    }
                    salt
                }
                Err(why) if len <= VOLUME_HEADER && Some(ordinal) == last => {
                    // A volume created just before a crash: it never held a record.
                    fs::remove_file(&path)?;
                    fsync_dir(dir)?;
                    repairs.push(format!("removed {name}: {why}, and it holds no records"));
                    continue;
                }
                Err(why) => {
                    let aside = path.with_extension("damaged");
                    fs::rename(&path, &aside)?;
                    fsync_dir(dir)?;
                    repairs.push(format!("moved {name} aside to {}: {why}", aside.display()));
                    continue;
                }
            };
            let reader = Arc::new(File::open(&path)?);
            let volume =
                VolumeFile { file: Arc::clone(&reader), generation, salt, end: len, garbage: 0, indexed: false };
            index.volumes.insert(ordinal, volume);
            let sealed = Some(ordinal) != last;
            if sealed {
                let describes = Describes { ordinal, generation, salt, end: len };
                match index_file::load(dir, &describes, &mut |entry| apply(&mut index, ordinal, entry))? {
                    Ok(skipped) => {
                        let volume = index.volumes.get_mut(&ordinal).expect("inserted above");
                        (volume.garbage, volume.indexed) = (skipped, true);
                        start_up.from_index += 1;
                        continue;
                    }
                    Err(Unusable::Missing) => start_up.without_index += 1,
                    Err(Unusable::Refused(why)) => start_up.fallbacks.push(format!("replaying {name}: {why}")),
                }
            }
            start_up.replayed += 1;
            // A sealed volume's index file is written as it is replayed.
            let mut out = match sealed.then(|| IndexWriter::create(dir, ordinal, generation)).transpose() {
                Ok(out) => out,
                Err(e) => {
                    start_up.fallbacks.push(format!("cannot write the index file of {name}: {e}"));
                    None
                }
            };
            // Records go into the index as they are read; only the last few are kept,
            // to be taken back out if the volume's tail turns out torn.
            let mut tail = VecDeque::new();
            let walk = walk_records(&file, salt, len, &mut |found| {
                apply(&mut index, ordinal, found.entry());
                if let Some(writer) = &mut out {
                    if let Err(e) = writer.add(&found.entry()) {
                        start_up.fallbacks.push(format!("cannot write the index file of {name}: {e}"));
                        out = None;
                    }
                }
                tail.push_back(found);
                if tail.len() > TAIL_CHECKED {
                    tail.pop_front();
                }
                Ok(())
            })?;
            let mut end = walk.end;
            // A crash before a sync may leave the last records' bytes unwritten while
            // their headers made it: those records were never acknowledged. Only the
            // last volume can be torn (a volume is synced before the next one starts);
            // a bad record elsewhere is bitrot, for the scrubber to quarantine and report.
            while let Some(found) = tail.back().filter(|f| f.header.kind == Kind::Put && Some(ordinal) == last) {
                if read_record(&file, found.offset, found.header.len, salt).is_ok() {
                    break;
                }
                end = found.offset;
                let slot = Slot { volume: ordinal, offset: found.offset as u32, len: found.header.len };
                if index.objects.get(&found.header.id) == Some(&slot) {
                    index.objects.remove(&found.header.id);
                }
                tail.pop_back();
            }
            // Zeros after the last record of a volume that stays active are space written
            // ahead; anything else there is cut off.
            let zeros = all_zeros(&file, end, len)?;
            if Some(ordinal) == last && end < limit && zeros {
                written_ahead = Some((ordinal, len));
            } else if end < len {
                file.set_len(end)?;
                file.sync_all()?;
                if !zeros {
                    repairs.push(format!("cut {} torn byte(s) off the end of {name}", len - end));
                }
            }
            let volume = index.volumes.get_mut(&ordinal).expect("inserted above");
            volume.end = end;
            for (from, to) in &walk.skipped {
                volume.garbage += to - from;
                repairs.push(format!("skipped {} damaged byte(s) at {from} of {name}", to - from));
            }
            if let Some(writer) = out {
                let skipped = walk.skipped.iter().map(|(from, to)| to - from).sum();
                match writer.finish(salt, end, skipped) {
                    Ok(_) => volume.indexed = true,
                    Err(e) => start_up.fallbacks.push(format!("cannot write the index file of {name}: {e}")),
                }
            }
        }
        // Index files of generations that are gone (compacted, moved aside, removed).
        let mut removed = false;
        for (ordinal, generation, name) in index_files {
            if index.volumes.get(&ordinal).is_none_or(|v| v.generation != generation) {
                fs::remove_file(dir.join(name))?;
                removed = true;
            }
        }
        if removed {
            fsync_dir(dir)?;
        }

        let (objects, bytes) = (index.objects.len() as u64, index.objects.values().map(|s| s.len as u64).sum());
        let active = match index.volumes.iter_mut().next_back() {
            Some((&ordinal, volume)) if volume.end < limit => {
                // Written to again (even one sealed before, when the volume after it was
                // removed above): its index file is stale until it is sealed again.
                volume.indexed = false;
                let ready = written_ahead.filter(|&(o, _)| o == ordinal).map_or(volume.end, |(_, len)| len);
                (ordinal, volume.generation, volume.salt, volume.end, ready)
            }
            previous => {
                let ordinal = previous.map_or(1, |(ordinal, _)| ordinal + 1);
                let salt = rand::random::<u64>();
                let name = volume_name(ordinal, 0, "vol");
                drop(create_volume(dir, &name, ordinal, 0, salt)?);
                let file = Arc::new(File::open(dir.join(&name))?);
                let volume = VolumeFile { file, generation: 0, salt, end: VOLUME_HEADER, garbage: 0, indexed: false };
                index.volumes.insert(ordinal, volume);
                (ordinal, 0, salt, VOLUME_HEADER, VOLUME_HEADER)
            }
        };
        let writer = Writer {
            ordinal: active.0,
            generation: active.1,
            salt: active.2,
            legacy: legacy.contains(&active.0),
            file: None,
            direct: None,
            allocated: 0,
            last_write: Instant::now(),
            end: active.3,
            written: 0,
            synced: 0,
            syncing: false,
            failed: VecDeque::new(),
            pending: HashSet::new(),
            ready: active.4,
            ahead: Ahead::Idle,
            ahead_after: Instant::now(),
            sync_wanted: false,
        };
        let volumes = Volumes {
            dir: dir.to_path_buf(),
            // Record offsets are 32-bit. A direct record larger than a test's small limit
            // goes into a volume of its own (`append`).
            limit: limit.clamp(
                VOLUME_HEADER + record_len(BUFFERED_RECORD as u32),
                u32::MAX as u64 - BLOCK - record_len(VOLUME_OBJECT as u32),
            ),
            index: RwLock::new(index),
            writer: Mutex::new(writer),
            synced: Condvar::new(),
            background: Condvar::new(),
            switching: RwLock::new(()),
            fsync_seconds,
        };
        start_up.seconds = started.elapsed().as_secs_f64();
        Ok(Opened { volumes, objects, bytes, repairs, start_up })
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index.read().expect("index lock").objects.contains_key(&id.to_bytes())
    }

    /// The ordinal of the volume being appended to: the only one compaction leaves alone.
    pub fn active(&self) -> u32 {
        self.lock_writer().ordinal
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().expect("volume writer lock")
    }

    /// Appends an object's record and returns once it is durable and indexed. With
    /// `meanwhile` (forwarding the object to the next node of its chain), that runs once
    /// the record is written, while the background thread syncs it.
    pub fn put(
        &self,
        id: &ObjectId,
        data: &[u8],
        checksum: Checksum,
        meanwhile: Option<&mut dyn FnMut()>,
    ) -> Result<(), StoreError> {
        let header =
            Header { kind: Kind::Put, id: id.to_bytes(), len: data.len() as u32, checksum, created: unix_secs() };
        self.append(&header, Body::Copied(data), meanwhile, &mut |index, slot| index.insert(header.id, slot))
    }

    /// `put` of a direct record (`is_direct`): `record` is the whole record, `record_len`
    /// bytes aligned in memory for O_DIRECT, with the object's `len` bytes after room for
    /// the header (written here) and zeros after them.
    pub fn put_direct(
        &self,
        id: &ObjectId,
        record: &mut [u8],
        len: u32,
        checksum: Checksum,
        meanwhile: Option<&mut dyn FnMut()>,
    ) -> Result<(), StoreError> {
        debug_assert!(is_direct(len) && record.len() as u64 == record_len(len));
        debug_assert_eq!(record.as_ptr() as u64 % BLOCK, 0);
        let header = Header { kind: Kind::Put, id: id.to_bytes(), len, checksum, created: unix_secs() };
        self.append(&header, Body::Direct(record), meanwhile, &mut |index, slot| index.insert(header.id, slot))
    }

    /// Appends a tombstone for `id` and drops it from the index once that is durable;
    /// returns whether this call removed it.
    pub fn delete(&self, id: &ObjectId) -> io::Result<bool> {
        let key = id.to_bytes();
        if !self.index.read().expect("index lock").objects.contains_key(&key) {
            return Ok(false);
        }
        let header = Header { kind: Kind::Tombstone, id: key, len: 0, checksum: Checksum(0), created: unix_secs() };
        let mut removed = false;
        // Whatever slot the object has now: a compaction may have moved its record while
        // the tombstone was synced (no new put of the id can come in between: a put is
        // refused while the index holds it).
        let appended =
            self.append(&header, Body::Copied(&[]), None, &mut |index, _| removed = index.remove(&key).is_some());
        match appended {
            Ok(()) => Ok(removed),
            Err(StoreError::Io(e)) => Err(e),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Writes a record, runs `meanwhile` (outside the writer lock, with a sync asked of
    /// the background thread), waits for the group's sync, then calls `durable` with the
    /// index and the record's slot, under the writer lock (so a put is never neither
    /// pending nor indexed).
    fn append(
        &self,
        header: &Header,
        body: Body<'_>,
        meanwhile: Option<&mut dyn FnMut()>,
        durable: &mut dyn FnMut(&mut Index, Slot),
    ) -> Result<(), StoreError> {
        let len = record_len(header.len);
        let direct = matches!(body, Body::Direct(_));
        let mut writer = self.clear_ahead(self.lock_writer(), len, direct);
        if header.kind == Kind::Put
            && (writer.pending.contains(&header.id)
                || self.index.read().expect("index lock").objects.contains_key(&header.id))
        {
            return Err(StoreError::Exists(ObjectId::from_bytes(header.id)));
        }
        let full = writer.end > VOLUME_HEADER && record_start(writer.end, direct) + len > self.limit;
        if full || (direct && writer.legacy) {
            self.roll(&mut writer)?;
        }
        let start = record_start(writer.end, direct);
        match body {
            Body::Copied(data) => {
                let mut record = Vec::with_capacity(len as usize);
                record.extend_from_slice(&encode_header(header, writer.salt));
                record.extend_from_slice(data);
                record.resize(len as usize, 0);
                self.write_handle(&mut writer)?.write_all_at(&record, start)?;
            }
            Body::Direct(record) => {
                record[..RECORD_HEADER].copy_from_slice(&encode_header(header, writer.salt));
                let file = self.direct_handle(&mut writer)?;
                if start + len > writer.allocated {
                    let to = (start + len + ALLOCATE_BYTES).min(self.limit.max(start + len));
                    let _ = rustix::fs::fallocate(&*file, rustix::fs::FallocateFlags::KEEP_SIZE, start, to - start);
                    writer.allocated = to;
                }
                file.write_all_at(record, start)?;
            }
        }
        writer.last_write = Instant::now();
        let slot = Slot { volume: writer.ordinal, offset: start as u32, len: header.len };
        writer.end = start + len;
        writer.ready = writer.ready.max(writer.end);
        writer.written += 1;
        if !direct {
            // Space written ahead pays for small records only: for a large one it would
            // double what the disk writes.
            self.ask_ahead(&mut writer);
        }
        let sequence = writer.written;
        if header.kind == Kind::Put {
            writer.pending.insert(header.id);
        }
        if let Some(meanwhile) = meanwhile {
            if !writer.syncing {
                writer.sync_wanted = true;
                self.background.notify_one();
            }
            drop(writer);
            meanwhile();
            writer = self.lock_writer();
        }
        let (mut writer, synced) = self.wait_synced(writer, sequence);
        if synced.is_ok() {
            durable(&mut self.index.write().expect("index lock"), slot);
        }
        writer.pending.remove(&header.id);
        synced.map_err(StoreError::from)
    }

    /// The active volume opened for writing (kept open until idle).
    fn write_handle(&self, writer: &mut Writer) -> io::Result<Arc<File>> {
        if let Some(file) = &writer.file {
            return Ok(Arc::clone(file));
        }
        let path = self.dir.join(volume_name(writer.ordinal, writer.generation, "vol"));
        let file = Arc::new(OpenOptions::new().write(true).open(path)?);
        writer.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// The active volume opened for O_DIRECT writes (kept open until idle).
    fn direct_handle(&self, writer: &mut Writer) -> io::Result<Arc<File>> {
        if let Some(file) = &writer.direct {
            return Ok(Arc::clone(file));
        }
        // The group's syncs go through the buffered handle: it must be open too.
        self.write_handle(writer)?;
        let path = self.dir.join(volume_name(writer.ordinal, writer.generation, "vol"));
        let file = OpenOptions::new().write(true).open(path)?;
        // Without O_DIRECT (tmpfs, say) the same aligned writes go through the page cache.
        set_direct(&file);
        let file = Arc::new(file);
        writer.direct = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Returns once no write-ahead holds space a record of `len` bytes needs: one only
    /// asked for is taken back, one being written is waited for (a few MiB written and
    /// synced). A record that starts the next volume needs the rest of this one.
    fn clear_ahead<'a>(&'a self, mut writer: MutexGuard<'a, Writer>, len: u64, direct: bool) -> MutexGuard<'a, Writer> {
        loop {
            let end = record_start(writer.end, direct) + len;
            let needs = if end > self.limit || (direct && writer.legacy) { u64::MAX } else { end };
            match writer.ahead {
                Ahead::Wanted { from, .. } if from < needs => writer.ahead = Ahead::Idle,
                Ahead::Writing { from, .. } if from < needs => {
                    writer = self.synced.wait(writer).expect("volume writer lock");
                    continue;
                }
                _ => {}
            }
            return writer;
        }
    }

    /// Asks `background_step` for the next stretch of the volume when little written space
    /// is left.
    fn ask_ahead(&self, writer: &mut Writer) {
        if writer.ahead != Ahead::Idle || writer.ready >= writer.end + AHEAD_LOW {
            return;
        }
        let (from, to) = (writer.ready, (writer.ready + AHEAD_BYTES).min(self.limit));
        if to > from && Instant::now() >= writer.ahead_after {
            writer.ahead = Ahead::Wanted { from, to };
            self.background.notify_one();
        }
    }

    /// Does what the writers asked of the background thread, waiting up to `wait` for
    /// them to ask: a sync of records whose writers went on to forward them (`put` with
    /// `meanwhile`), and space written ahead of the active volume's records (zeros,
    /// synced; `ask_ahead`). Returns the bytes written ahead. After a failure to write
    /// ahead, none is asked for during `AHEAD_BACKOFF`.
    pub fn background_step(&self, wait: Duration) -> io::Result<u64> {
        let mut writer = self.lock_writer();
        if !writer.sync_wanted && !matches!(writer.ahead, Ahead::Wanted { .. }) {
            writer = self.background.wait_timeout(writer, wait).expect("volume writer lock").0;
        }
        if std::mem::take(&mut writer.sync_wanted) && !writer.syncing && writer.synced < writer.written {
            writer = self.lead_sync(writer);
        }
        let Ahead::Wanted { from, to } = writer.ahead else { return Ok(0) };
        let file = match self.write_handle(&mut writer) {
            Ok(file) => file,
            Err(e) => {
                writer.ahead = Ahead::Idle;
                writer.ahead_after = Instant::now() + AHEAD_BACKOFF;
                return Err(e);
            }
        };
        writer.ahead = Ahead::Writing { from, to };
        drop(writer);
        let mut result = Ok(());
        let mut at = from;
        while at < to && result.is_ok() {
            let n = (to - at).min(ZEROS.len() as u64);
            result = file.write_all_at(&ZEROS[..n as usize], at);
            at += n;
        }
        let result = result.and_then(|()| file.sync_data());
        let mut writer = self.lock_writer();
        writer.ahead = Ahead::Idle;
        match &result {
            // Written space the writers went past is theirs already.
            Ok(()) => writer.ready = writer.ready.max(to),
            Err(_) => writer.ahead_after = Instant::now() + AHEAD_BACKOFF,
        }
        drop(writer);
        self.synced.notify_all();
        result.map(|()| to - from).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot write {} bytes ahead in the active volume: {e}", to - from))
        })
    }

    /// Waits until record `sequence` is covered by a sync, leading one if none runs.
    fn wait_synced<'a>(
        &'a self,
        mut writer: MutexGuard<'a, Writer>,
        sequence: u64,
    ) -> (MutexGuard<'a, Writer>, io::Result<()>) {
        loop {
            if let Some((_, _, error)) =
                writer.failed.iter().find(|(after, through, _)| (after + 1..=*through).contains(&sequence))
            {
                let error = io::Error::other(format!("syncing the volume failed: {error}"));
                return (writer, Err(error));
            }
            if writer.synced >= sequence {
                return (writer, Ok(()));
            }
            if writer.syncing {
                writer = self.synced.wait(writer).expect("volume writer lock");
                continue;
            }
            writer = self.lead_sync(writer);
        }
    }

    /// Syncs every record written so far, for all their writers (who wait for it).
    fn lead_sync<'a>(&'a self, mut writer: MutexGuard<'a, Writer>) -> MutexGuard<'a, Writer> {
        writer.syncing = true;
        let file = Arc::clone(writer.file.as_ref().expect("a volume with unsynced records is open"));
        let (after, through) = (writer.synced, writer.written);
        drop(writer);
        let started = Instant::now();
        let result = file.sync_data();
        self.fsync_seconds.observe(started.elapsed().as_secs_f64());
        let mut writer = self.lock_writer();
        writer.syncing = false;
        self.settle(&mut writer, after, through, result);
        writer
    }

    /// Records a sync's outcome for records `(after, through]` and wakes the waiters.
    fn settle(&self, writer: &mut Writer, after: u64, through: u64, result: io::Result<()>) {
        if let Err(e) = result {
            writer.failed.push_back((after, through, e.to_string()));
            if writer.failed.len() > FAILURES_KEPT {
                writer.failed.pop_front();
            }
        }
        writer.synced = writer.synced.max(through);
        self.synced.notify_all();
    }

    /// Seals the active volume (synced) and starts the next one. The sealed volume's
    /// index file is written later, off the writers' path (`index_sealed`).
    fn roll(&self, writer: &mut Writer) -> io::Result<()> {
        let result = writer.file.as_ref().map_or(Ok(()), |file| file.sync_data());
        let (after, through) = (writer.synced, writer.written);
        self.settle(writer, after, through, result);
        if writer.ready > writer.end {
            // Space written ahead and not used: a sealed volume ends at its last record.
            let file = self.write_handle(writer)?;
            file.set_len(writer.end)?;
            file.sync_all()?;
            writer.ready = writer.end;
        }
        let ordinal = writer.ordinal + 1;
        let salt = rand::random::<u64>();
        let name = volume_name(ordinal, 0, "vol");
        let file = Arc::new(create_volume(&self.dir, &name, ordinal, 0, salt)?);
        let reader = Arc::new(File::open(self.dir.join(&name))?);
        let mut index = self.index.write().expect("index lock");
        if let Some(sealed) = index.volumes.get_mut(&writer.ordinal) {
            sealed.end = writer.end;
        }
        let volume = VolumeFile { file: reader, generation: 0, salt, end: VOLUME_HEADER, garbage: 0, indexed: false };
        index.volumes.insert(ordinal, volume);
        (writer.ordinal, writer.generation, writer.salt, writer.legacy) = (ordinal, 0, salt, false);
        (writer.file, writer.direct, writer.end, writer.ready) = (Some(file), None, VOLUME_HEADER, VOLUME_HEADER);
        writer.allocated = 0;
        Ok(())
    }

    /// Closes the active volume's write handle when nothing was appended for `idle` and
    /// every record is synced.
    pub fn release_idle_writer(&self, idle: std::time::Duration) {
        let mut writer = self.lock_writer();
        if !writer.syncing && writer.synced == writer.written && writer.last_write.elapsed() >= idle {
            (writer.file, writer.direct) = (None, None);
        }
    }

    /// The record of `id`, checked: its header and the record as read (the object's
    /// bytes are `[RECORD_HEADER..]`).
    pub fn read(&self, id: &ObjectId) -> Result<Option<(Header, Vec<u8>)>, StoreError> {
        let Some((slot, file, salt)) = self.index.read().expect("index lock").locate(&id.to_bytes()) else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt { id: *id, reason };
        let (header, data) = read_record(&file, slot.offset as u64, slot.len, salt).map_err(corrupt)?;
        if header.id != id.to_bytes() || header.kind != Kind::Put || header.len != slot.len {
            return Err(corrupt("its volume record belongs to another object".to_string()));
        }
        Ok(Some((header, data)))
    }

    /// Size and checksum from the record's header, without reading its bytes.
    pub fn stat(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError> {
        let Some((slot, file, salt)) = self.index.read().expect("index lock").locate(&id.to_bytes()) else {
            return Ok(None);
        };
        let mut bytes = [0u8; RECORD_HEADER];
        file.read_exact_at(&mut bytes, slot.offset as u64)?;
        let header = parse_header(&bytes, salt)
            .ok()
            .filter(|h| h.id == id.to_bytes() && h.kind == Kind::Put && h.len == slot.len)
            .ok_or_else(|| StoreError::Corrupt {
                id: *id,
                reason: "its volume record header is damaged".to_string(),
            })?;
        Ok(Some(StoredObject { size: header.len as u64, checksum: header.checksum }))
    }

    /// Keeps a copy of a corrupt record's bytes in `quarantine` for inspection, then
    /// deletes it (a tombstone). Returns whether this call removed it.
    pub fn quarantine(&self, id: &ObjectId, quarantine: &Path) -> io::Result<bool> {
        let Some((slot, file, _)) = self.index.read().expect("index lock").locate(&id.to_bytes()) else {
            return Ok(false);
        };
        let mut raw = vec![0u8; record_len(slot.len) as usize];
        let n = file.read_at(&mut raw, slot.offset as u64).unwrap_or(0);
        raw.truncate(n);
        let target = quarantine.join(format!("{id}.{}.record", unix_secs() * 1000));
        fs::write(&target, &raw)?;
        self.delete(id)
    }

    /// Calls `f` for every indexed record: its id, size and checksum (from its header),
    /// and write time. Volumes are read in order, record by record; no lock is held
    /// while `f` runs, except that no compaction switches a volume meanwhile.
    pub fn scan(&self, f: &mut dyn FnMut(ObjectId, StoredObject, u64)) -> io::Result<()> {
        let _no_switch = self.switching.read().expect("switching lock");
        let volumes: Vec<(u32, Arc<File>, u64)> = {
            let index = self.index.read().expect("index lock");
            index.volumes.iter().map(|(&ordinal, v)| (ordinal, Arc::clone(&v.file), v.salt)).collect()
        };
        for (ordinal, file, salt) in volumes {
            let len = file.metadata()?.len();
            walk_records(&file, salt, len, &mut |found| {
                let header = found.header;
                let slot = Slot { volume: ordinal, offset: found.offset as u32, len: header.len };
                let live = header.kind == Kind::Put
                    && self.index.read().expect("index lock").objects.get(&header.id) == Some(&slot);
                if live {
                    let stored = StoredObject { size: header.len as u64, checksum: header.checksum };
                    f(ObjectId::from_bytes(header.id), stored, header.created);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Whether `file` holds only zero bytes from `from` to `to`.
fn all_zeros(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; (to.saturating_sub(from)).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Reads and checks the record at `offset`: its header, then its bytes against the
/// header's CRC. Returns the header and the record as read: the object's bytes are
/// `[RECORD_HEADER..]` (not moved down: that was a copy of the whole object).
pub(super) fn read_record(file: &File, offset: u64, len: u32, salt: u64) -> Result<(Header, Vec<u8>), String> {
    let mut bytes = vec![0u8; RECORD_HEADER + len as usize];
    file.read_exact_at(&mut bytes, offset).map_err(|e| format!("cannot read its volume record: {e}"))?;
    let header = parse_header(bytes[..RECORD_HEADER].try_into().expect("a header"), salt)?;
    if header.len != len {
        return Err(format!("its record says {} bytes, the index {len}", header.len));
    }
    let sum = Checksum::of(&bytes[RECORD_HEADER..]);
    if sum != header.checksum {
        return Err(format!("bytes have checksum {sum}, written with {}", header.checksum));
    }
    Ok((header, bytes))
}

// Benchmark support: fills the volumes of a stopped node quickly, for tests and scaling
// runs that need hundreds of thousands of small objects on one node.

/// Writes `count` records of `size` pattern bytes (at most `VOLUME_OBJECT`) with random
/// ids into new volumes under `root/volumes` (a stopped node's data directory), after any
/// it has, without syncs: not for real data. Returns how many it wrote.
pub fn populate_unsynced(root: &Path, count: u64, size: usize) -> io::Result<u64> {
    use std::io::Write;
    if size as u64 > VOLUME_OBJECT {
        return Err(io::Error::other(format!("volume records hold at most {VOLUME_OBJECT} bytes")));
    }
    let dir = root.join("volumes");
    fs::create_dir_all(&dir)?;
    let mut ordinal = 0;
    for entry in fs::read_dir(&dir)? {
        if let Some((found, _, _)) = parse_volume_name(&entry?.file_name().to_string_lossy()) {
            ordinal = ordinal.max(found);
        }
    }
    let body: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    let mut checksum = Checksum::default();
    checksum.update(&body);
    let len = record_len(size as u32);
    let padding = vec![0u8; (len as usize) - RECORD_HEADER - size];
    let (mut out, mut salt, mut end) = (None::<io::BufWriter<File>>, 0, VOLUME_BYTES);
    for _ in 0..count {
        if end + len > VOLUME_BYTES {
            if let Some(mut full) = out.take() {
                full.flush()?;
            }
            ordinal += 1;
            salt = rand::random::<u64>();
            let file = File::create_new(dir.join(volume_name(ordinal, 0, "vol")))?;
            let mut writer = io::BufWriter::with_capacity(1 << 20, file);
            writer.write_all(&encode_volume_header(ordinal, 0, salt))?;
            out = Some(writer);
            end = VOLUME_HEADER;
        }
        let id = *uuid::Uuid::new_v4().as_bytes();
        let header = Header { kind: Kind::Put, id, len: size as u32, checksum, created: unix_secs() };
        let writer = out.as_mut().expect("a volume is open");
        writer.write_all(&encode_header(&header, salt))?;
        writer.write_all(&body)?;
        writer.write_all(&padding)?;
        end += len;
    }
    if let Some(mut last) = out {
        last.flush()?;
    }
    Ok(count)
}

/// Turns a volume file's header into a legacy one, as versions before direct records
/// wrote it.
#[cfg(test)]
pub(super) fn make_legacy(path: &Path) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut bytes = [0u8; VOLUME_HEADER as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes[0..8].copy_from_slice(LEGACY_VOLUME_MAGIC);
    let own = Checksum::of(&bytes[0..24]).0;
    bytes[24..28].copy_from_slice(&own.to_le_bytes());
    file.write_all_at(&bytes, 0).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_header_reads_back_and_any_flipped_bit_or_other_salt_is_refused() {
        let header = Header { kind: Kind::Put, id: [7; 16], len: 4096, checksum: Checksum(0xdead_beef), created: 99 };
        let bytes = encode_header(&header, 42);
        assert_eq!(parse_header(&bytes, 42), Ok(header));
        assert!(parse_header(&bytes, 43).is_err(), "another volume's salt");
        for bit in 0..RECORD_HEADER * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_header(&flipped, 42).is_err(), "bit {bit}");
        }
        // Impossible lengths are refused even with a valid checksum.
        for (kind, len) in [(Kind::Put, VOLUME_OBJECT as u32 + 1), (Kind::Tombstone, 1)] {
            let bad = encode_header(&Header { kind, len, ..header }, 42);
            assert!(parse_header(&bad, 42).is_err(), "{kind:?} of {len} bytes");
        }
        // Arbitrary bytes never panic.
        for seed in 0..10_000u64 {
            let mut noise = [0u8; RECORD_HEADER];
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for byte in &mut noise {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            noise[0..4].copy_from_slice(RECORD_MAGIC);
            let _ = parse_header(&noise, seed);
        }
    }

    #[test]
    fn the_fuzz_seeds_are_valid_headers() {
        for (name, kind) in [("put-4k", Kind::Put), ("tombstone", Kind::Tombstone)] {
            let path = format!("{}/fuzz/seeds/record_header/{name}", env!("CARGO_MANIFEST_DIR"));
            let seed = std::fs::read(path).unwrap();
            let salt = u64::from_le_bytes(seed[0..8].try_into().unwrap());
            let header = parse_header(seed[8..56].try_into().unwrap(), salt).unwrap();
            assert_eq!(header.kind, kind, "{name}");
        }
    }

    #[test]
    fn volume_names_parse_strictly() {
        assert_eq!(parse_volume_name("00000001.0.vol"), Some((1, 0, FileKind::Volume)));
        assert_eq!(parse_volume_name("00000012.3.compacting"), Some((12, 3, FileKind::Compacting)));
        assert_eq!(parse_volume_name("00000012.3.idx"), Some((12, 3, FileKind::Index)));
        assert_eq!(parse_volume_name("00000012.3.idx.tmp"), Some((12, 3, FileKind::IndexTemp)));
        for bad in [
            "1.0.vol",
            "00000001.vol",
            "00000001.0.vol.x",
            "00000001.x.vol",
            "0000000a.0.vol",
            "junk",
            "00000001.0.vol.tmp",
            "00000001.0.idx.tmp.x",
            "00000001.0.damaged",
        ] {
            assert_eq!(parse_volume_name(bad), None, "{bad}");
        }
    }
}
