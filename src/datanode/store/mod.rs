//! `BlobStore`: the only code that touches object files on a datanode's disk.
//!
//! Objects of a declared length up to `VOLUME_OBJECT` (1 MiB) are records appended to
//! volume files (`volume.rs`, indexed in memory by `index.rs`, compacted by
//! `compaction.rs`): one shared `fdatasync` per batch of concurrent writers instead of a
//! file, an inode and two or three fsyncs each; past `BUFFERED_RECORD` (64 KiB) a record
//! is written by O_DIRECT from the buffer it was received into. Larger objects, and
//! uploads of unknown length, are files of their own (`file.rs`). Every operation looks
//! in the index first, then for a file.
//!
//! Layout under the data directory:
//! - `volumes/<ordinal>.<generation>.vol`: small objects' records (and tombstones);
//!   `.compacting` files are compactions in progress, removed at start-up; `.idx` files
//!   index sealed volumes for start-up (`index_file.rs`), `.idx.tmp` ones are unfinished.
//! - `objects/ab/cd/<id>`: one file per large object, fanned out by the first four hex
//!   digits of its id (65,536 directories, created on demand), so a node can hold millions.
//! - `tmp/`: uploads in progress; emptied at start-up.
//! - `quarantine/<id>.<unix ms>`: copies that failed verification, kept for inspection
//!   (`.record`: a volume record's bytes, copied out before its tombstone).
//! - `tmp/disk-probe`: written, fsynced and removed by every disk check.
//!
//! An object file is the object's bytes followed by a 32-byte footer (magic, size,
//! CRC-32C, write time, and a CRC of the footer itself), so bytes and checksum are
//! written, fsynced and renamed as one unit and can never disagree about which write they
//! belong to.
//!
//! A write streams into `tmp/` (a large object with O_DIRECT, past the page cache), is
//! `sync_all`ed, then hard-linked into place and its directory fsynced. The link is the
//! commit point: it fails if the object exists, so two racing uploads of one id cannot
//! overwrite each other, and a crash at any moment leaves either the whole object or
//! nothing under `objects/`. Reads verify the checksum before a complete object is
//! served: a small one before its first byte, a large one while it streams, holding its
//! last chunk back until the whole checksum has matched.
//!
//! The store also watches its disk (`check_disk`): the data directory must still be the
//! one it opened (same device and inode: `rm -rf` or an unmount leaves another or none),
//! a probe file must write, fsync and go, the object tree must list and `statvfs` must
//! answer. A failed write checks at once. While the disk is not `ok`, uploads are refused
//! with a 503 and the node tells the master, which places nothing there.

mod compaction;
mod disk;
mod file;
mod index;
mod index_file;
mod verify;
mod volume;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::{Checksum, DiskState, ObjectId};

pub use disk::DiskHealth;
use file::fsync_dir;
pub use file::{load_or_create_node_id, populate_unsynced};
use verify::{check_sum, read_footer, unix_secs, VerifyingReader};
pub(crate) use verify::{encode_footer, parse_footer};
pub use volume::populate_unsynced as populate_records_unsynced;
pub use volume::StartUp;
pub(crate) use volume::{
    encode_header as encode_record_header, parse_header as parse_record_header, Header as RecordHeader,
    Kind as RecordKind,
};
use volume::{Volumes, VOLUME_BYTES, VOLUME_OBJECT};

/// Bytes moved per read/write while streaming an object.
const CHUNK: usize = 256 * 1024;
/// Objects up to this size are verified and served from one buffer; larger ones are
/// verified as they stream (`VerifyingReader`).
const SMALL_OBJECT: u64 = 1 << 20;
/// Objects from this size on are dropped from the page cache once durable.
const UNCACHED_OBJECT: u64 = 8 << 20;
/// Objects from this size on are written with O_DIRECT, past the page cache.
const DIRECT_OBJECT: u64 = 1 << 20;
/// Bytes gathered before one O_DIRECT write.
const DIRECT_CHUNK: usize = 1 << 20;
/// O_DIRECT wants buffers, file offsets and lengths aligned to the disk's logical block
/// size; 4 KiB is a multiple of every one in use.
const DIRECT_ALIGN: usize = 4096;
const FOOTER_LEN: u64 = 32;
const FOOTER_MAGIC: &[u8; 8] = b"AETHOBJ1";

#[derive(Debug)]
pub enum StoreError {
    NotFound(ObjectId),
    Exists(ObjectId),
    TooLarge {
        limit: u64,
    },
    ShortBody {
        expected: u64,
        received: u64,
    },
    NoSpace {
        needed: u64,
        available: u64,
    },
    /// The bytes that arrived do not have the checksum the sender announced.
    ChecksumMismatch {
        expected: Checksum,
        actual: Checksum,
    },
    /// The stored copy fails verification; it must not be served.
    Corrupt {
        id: ObjectId,
        reason: String,
    },
    BadRange(String),
    /// The node's disk failed its last check; nothing is written until it passes again.
    DiskUnusable {
        state: DiskState,
        reason: String,
    },
    /// The body could not be read from the client.
    Body(io::Error),
    Io(io::Error),
}

impl StoreError {
    pub fn status(&self) -> u16 {
        match self {
            StoreError::NotFound(_) => 404,
            StoreError::Exists(_) => 409,
            StoreError::TooLarge { .. } => 413,
            StoreError::BadRange(_) => 416,
            // The server's body deadlines (silence, minimum rate) end a read this way.
            StoreError::Body(e) if e.kind() == io::ErrorKind::TimedOut => 408,
            StoreError::ShortBody { .. } | StoreError::Body(_) | StoreError::ChecksumMismatch { .. } => 400,
            StoreError::NoSpace { .. } => 507,
            StoreError::DiskUnusable { .. } => 503,
            StoreError::Corrupt { .. } => 500,
            StoreError::Io(_) => 500,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(id) => write!(f, "object {id} not found on this node"),
            StoreError::Exists(id) => {
                write!(f, "object {id} already exists; objects are immutable, upload under a new id")
            }
            StoreError::TooLarge { limit } => write!(f, "object is larger than this node's limit of {limit} bytes"),
            StoreError::ShortBody { expected, received } => {
                write!(f, "body ended after {received} of {expected} bytes (Content-Length); nothing was stored")
            }
            StoreError::NoSpace { needed, available } => {
                write!(f, "not enough disk space: need {needed} bytes, {available} available; nothing was stored")
            }
            StoreError::ChecksumMismatch { expected, actual } => {
                write!(f, "body has checksum {actual}, the sender announced {expected}; nothing was stored")
            }
            StoreError::Corrupt { id, reason } => {
                write!(f, "this node's copy of {id} is corrupt ({reason}); it was quarantined, read another replica")
            }
            StoreError::BadRange(range) => write!(f, "range {range:?} is not satisfiable; use bytes=START-END"),
            StoreError::DiskUnusable { state, reason } => write!(
                f,
                "this node's disk is {} ({reason}); nothing was stored, and the master places new copies \
                 elsewhere: retry the upload",
                state.as_str()
            ),
            StoreError::Body(e) => write!(f, "could not read the request body: {e}; nothing was stored"),
            StoreError::Io(e) => write!(f, "storage error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::StorageFull {
            StoreError::NoSpace { needed: 0, available: 0 }
        } else {
            StoreError::Io(e)
        }
    }
}

/// What a stored object is: its size and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredObject {
    pub size: u64,
    pub checksum: Checksum,
}

/// An object found by `scan`, with its footer's facts or why it has none.
pub struct ScanItem {
    pub id: ObjectId,
    pub stored: Result<StoredObject, String>,
    pub age_secs: u64,
}

/// A verified object ready to be served: the bytes of the requested range.
pub struct ObjectRead {
    pub body: ObjectBody,
    pub len: u64,
    pub object: StoredObject,
}

impl ObjectRead {
    /// The requested range of a whole object already read and verified, found in
    /// `bytes` from `at` on.
    fn verified(mut bytes: Vec<u8>, at: usize, object: StoredObject, (start, end): (u64, u64)) -> ObjectRead {
        bytes.truncate(at + end as usize);
        ObjectRead { body: ObjectBody::Verified { bytes, from: at + start as usize }, len: end - start, object }
    }
}

/// The bytes of an `ObjectRead`.
pub enum ObjectBody {
    /// An object up to `SMALL_OBJECT`, read whole and verified: the range is `bytes[from..]`
    /// (handed to the connection as it is, without a copy).
    Verified { bytes: Vec<u8>, from: usize },
    /// A larger object, which verifies as it goes and fails (an `InvalidData` error)
    /// instead of yielding its last chunk when the checksum does not match.
    Streaming(Box<dyn Read + Send>),
}

impl ObjectBody {
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        match self {
            ObjectBody::Verified { bytes, from } => {
                let mut cursor = io::Cursor::new(bytes);
                cursor.set_position(from as u64);
                Box::new(cursor)
            }
            ObjectBody::Streaming(body) => body,
        }
    }
}

/// Told, once, that a copy being streamed turned out corrupt after `read_verified` had
/// already answered (the `StoreError::Corrupt` saying why); it is called on the thread
/// reading the body, before the body's read returns the error.
pub type OnCorrupt = Box<dyn FnOnce(StoreError) + Send>;

/// Where `BlobStore::put` hands the pieces of a body it is storing (the forwarding half
/// of a chained upload).
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]);

pub struct BlobStore {
    root: PathBuf,
    /// Device and inode of the data directory when the store opened it.
    identity: (u64, u64),
    health: Mutex<DiskHealth>,
    /// Held by the one disk check running at a time.
    checking: Mutex<()>,
    objects: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    /// Space kept free on the disk: an upload that would eat into it is refused up front.
    reserve_bytes: u64,
    /// Declared sizes from which uploads are written with O_DIRECT (`DIRECT_OBJECT`;
    /// tests lower it to exercise the direct path with small bodies).
    direct_from: u64,
    count: AtomicU64,
    /// How long each object's `sync_all` took, for the node's metrics.
    fsync_seconds: prometheus::Histogram,
    /// Bytes of the objects held (their sizes, without footers).
    bytes: AtomicU64,
    /// Upload buffers kept for reuse.
    buffers: crate::buffers::BufferPool,
    /// Small objects, as records in volume files.
    volumes: Volumes,
    /// Declared sizes up to which uploads become volume records (`VOLUME_OBJECT`; tests
    /// turn it off to exercise the file path with small bodies).
    records_up_to: Option<u64>,
    /// What opening the volumes repaired, for the node's log.
    repairs: Vec<String>,
    /// How opening the volumes read them, for the node's log.
    start_up: StartUp,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `root` and removes uploads that a crash
    /// left unfinished. Returns the store and how many leftovers it removed.
    pub fn open(root: &Path, reserve_bytes: u64) -> io::Result<(BlobStore, usize)> {
        // Tests shrink volumes to see them roll over and compact.
        let volume_bytes = std::env::var("AETHER_TEST_VOLUME_BYTES").ok().and_then(|v| v.parse().ok());
        BlobStore::open_with(root, reserve_bytes, volume_bytes.unwrap_or(VOLUME_BYTES))
    }

    /// `open` with volumes that roll over at `volume_bytes`.
    fn open_with(root: &Path, reserve_bytes: u64, volume_bytes: u64) -> io::Result<(BlobStore, usize)> {
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        let quarantine = root.join("quarantine");
        for dir in [root, &objects, &tmp, &quarantine] {
            fs::create_dir_all(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut removed = 0;
        for entry in fs::read_dir(&tmp)? {
            fs::remove_file(entry?.path())?;
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&tmp)?;
        }
        let fsync_seconds = crate::metrics::seconds_histogram(
            "aether_datanode_fsync_duration_seconds",
            "Time to fsync a new object's file, or a batch of small objects' volume records.",
        );
        let opened = Volumes::open(&root.join("volumes"), volume_bytes, fsync_seconds.clone())?;
        let meta = fs::metadata(root)?;
        let health = DiskHealth {
            state: DiskState::Ok,
            reason: None,
            checked: Instant::now(),
            free_bytes: 0,
            capacity_bytes: 0,
            changes: 0,
        };
        let store = BlobStore {
            root: root.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            health: Mutex::new(health),
            checking: Mutex::new(()),
            objects,
            tmp,
            quarantine,
            reserve_bytes,
            direct_from: DIRECT_OBJECT,
            count: AtomicU64::new(0),
            fsync_seconds,
            bytes: AtomicU64::new(0),
            buffers: file::upload_buffers(),
            volumes: opened.volumes,
            records_up_to: Some(VOLUME_OBJECT),
            repairs: opened.repairs,
            start_up: opened.start_up,
        };
        let (mut count, mut bytes) = (0, 0);
        store.walk(&mut |_, path| {
            count += 1;
            bytes += fs::metadata(path).map_or(0, |m| m.len());
        })?;
        store.count.store(count + opened.objects, Ordering::Relaxed);
        store.bytes.store(bytes + opened.bytes, Ordering::Relaxed);
        store.check_disk();
        Ok((store, removed))
    }

    fn object_path(&self, id: &ObjectId) -> PathBuf {
        let name = id.to_string();
        self.objects.join(&name[0..2]).join(&name[2..4]).join(name)
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.volumes.contains(id) || self.object_path(id).exists()
    }

    /// What opening the store repaired in its volumes (torn tails cut, leftovers of an
    /// interrupted compaction removed), one sentence each.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// How opening the store read its volumes: from index files or replayed, and why.
    pub fn start_up(&self) -> &StartUp {
        &self.start_up
    }

    /// The histogram of object fsync times.
    pub fn fsync_seconds(&self) -> &prometheus::Histogram {
        &self.fsync_seconds
    }

    /// How many objects the node holds.
    pub fn object_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// About how many bytes the node's objects take (file sizes when the store opened,
    /// object sizes since).
    pub fn stored_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn forget_object(&self, len: u64) {
        let _ = self.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(1)));
        let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(len)));
    }

    fn forget_bytes(&self, path: &Path) {
        let len = fs::metadata(path).map_or(0, |m| m.len());
        let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(len)));
    }

    /// Streams `body` into a new object. `declared_len` is the request's Content-Length
    /// when it has one; the object is stored only if exactly that many bytes arrive, and
    /// only with `expected` as checksum when that is given. Each piece of the body is
    /// handed to `forward` as it arrives (a chained upload passes it on while this node
    /// writes it), and an empty piece once the whole body has arrived intact, before it is
    /// made durable (a volume record: once it is written, and its sync waits for what
    /// `forward` does then). Returns once the bytes and their directory entry are on disk.
    pub fn put(
        &self,
        id: &ObjectId,
        body: &mut dyn Read,
        declared_len: Option<u64>,
        max_size: u64,
        expected: Option<Checksum>,
        forward: Option<Sink<'_>>,
    ) -> Result<StoredObject, StoreError> {
        self.check_writable()?;
        let forwards = forward.is_some();
        let mut nowhere = |_: &[u8]| {};
        let forward: &mut dyn FnMut(&[u8]) = match forward {
            Some(forward) => forward,
            None => &mut nowhere,
        };
        let stored = match declared_len {
            Some(len) if self.records_up_to.is_some_and(|up_to| len <= up_to.min(max_size)) => {
                self.put_record(id, body, len, expected, forward, forwards)
            }
            _ => self.put_checked(id, body, declared_len, max_size, expected, forward),
        };
        if let Err(StoreError::Io(e)) = &stored {
            // A failed write may be the disk's fault: the check says whether it is, and
            // the next heartbeat tells the master.
            let (_, now) = self.check_disk();
            if now != DiskState::Ok {
                let reason = self.disk_health().reason.unwrap_or_default();
                return Err(StoreError::DiskUnusable { state: now, reason: format!("{reason}; the write said: {e}") });
            }
        }
        stored
    }

    /// A small object: its body read whole (it is at most `VOLUME_OBJECT` bytes), checked,
    /// then appended to a volume, durable when this returns. A direct record's body is
    /// received into a pooled buffer aligned for O_DIRECT, behind room for its header.
    fn put_record(
        &self,
        id: &ObjectId,
        body: &mut dyn Read,
        len: u64,
        expected: Option<Checksum>,
        forward: &mut dyn FnMut(&[u8]),
        forwards: bool,
    ) -> Result<StoredObject, StoreError> {
        if self.contains(id) {
            return Err(StoreError::Exists(*id));
        }
        let available = self.available_bytes()?;
        if len.saturating_add(self.reserve_bytes) > available {
            return Err(StoreError::NoSpace { needed: len, available });
        }
        let checksum = if volume::is_direct(len as u32) {
            // Received where it is written from: aligned for O_DIRECT, behind room for
            // the header.
            let mut pooled = self.buffers.lend();
            let at = (DIRECT_ALIGN - pooled.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
            let record = &mut pooled[at..at + volume::record_len(len as u32) as usize];
            let (head, rest) = record.split_at_mut(volume::RECORD_HEADER);
            let (data, padding) = rest.split_at_mut(len as usize);
            let checksum = receive(body, data, expected, forward)?;
            // A pooled buffer holds an earlier upload's bytes: none of them reaches the disk.
            head.fill(0);
            padding.fill(0);
            let mut end = || forward(&[]);
            self.volumes.put_direct(
                id,
                record,
                len as u32,
                checksum,
                forwards.then_some(&mut end as &mut dyn FnMut()),
            )?;
            checksum
        } else {
            let mut data = vec![0u8; len as usize];
            let checksum = receive(body, &mut data, expected, forward)?;
            // The end of the body goes to the forwarding half once the record is written:
            // a small upload is forwarded from this thread while the record is synced.
            let mut end = || forward(&[]);
            self.volumes.put(id, &data, checksum, forwards.then_some(&mut end as &mut dyn FnMut()))?;
            checksum
        };
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(StoredObject { size: len, checksum })
    }

    /// Size and checksum from the footer or record header, for `HEAD`.
    pub fn stat(&self, id: &ObjectId) -> Result<StoredObject, StoreError> {
        if let Some(stored) = self.volumes.stat(id)? {
            return Ok(stored);
        }
        self.open_object(id).map(|(_, stored, _)| stored)
    }

    /// Reads the whole object and checks it against its footer.
    pub fn verify(&self, id: &ObjectId) -> Result<StoredObject, StoreError> {
        if let Some((header, _)) = self.volumes.read(id)? {
            return Ok(StoredObject { size: header.len as u64, checksum: header.checksum });
        }
        let (file, stored, _) = self.open_object(id)?;
        let mut sum = Checksum::default();
        let mut reader = io::BufReader::with_capacity(CHUNK, file).take(stored.size);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
        }
        check_sum(id, stored, sum)
    }

    /// Opens `range` (`start..end`, or the whole object) of an object for reading, never
    /// letting a corrupt copy be read whole. A small object is read into memory and
    /// checked before this returns. A larger one is read once, as it is sent, by a
    /// `VerifyingReader` that withholds the range's last chunk until the whole object's
    /// checksum has matched; on a mismatch its read fails, and `on_corrupt` is called.
    /// Corruption found before this returns is its `Err(Corrupt)` instead, and
    /// `on_corrupt` is dropped uncalled.
    pub fn read_verified(
        &self,
        id: &ObjectId,
        range: Option<(u64, Option<u64>)>,
        on_corrupt: OnCorrupt,
    ) -> Result<ObjectRead, StoreError> {
        if let Some((header, bytes)) = self.volumes.read(id)? {
            let stored = StoredObject { size: header.len as u64, checksum: header.checksum };
            return Ok(ObjectRead::verified(bytes, volume::RECORD_HEADER, stored, byte_range(range, stored.size)?));
        }
        let (mut file, stored, _) = self.open_object(id)?;
        let (start, end) = byte_range(range, stored.size)?;
        if stored.size <= SMALL_OBJECT {
            // `read_to_end` fills the spare capacity without zeroing it first (a memset
            // was a tenth of a 1 MiB GET's datanode time).
            let mut bytes = Vec::with_capacity(stored.size as usize);
            (&mut file).take(stored.size).read_to_end(&mut bytes)?;
            if bytes.len() as u64 != stored.size {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object file ended before its footer").into());
            }
            let mut sum = Checksum::default();
            sum.update(&bytes);
            check_sum(id, stored, sum)?;
            return Ok(ObjectRead::verified(bytes, 0, stored, (start, end)));
        }
        let body = VerifyingReader::new(file, *id, stored, start..end, on_corrupt);
        Ok(ObjectRead { body: ObjectBody::Streaming(Box::new(body)), len: end - start, object: stored })
    }

    /// Moves a corrupt copy out of the way, so it is never served or reported again.
    /// Returns whether this call moved it (`false`: it was gone already, e.g. moved by
    /// another reader that found the same corruption at the same time).
    pub fn quarantine(&self, id: &ObjectId) -> io::Result<bool> {
        if self.volumes.contains(id) {
            let len = self.volumes.stat(id).ok().flatten().map_or(0, |s| s.size);
            let moved = self.volumes.quarantine(id, &self.quarantine)?;
            if moved {
                self.forget_object(len);
            }
            return Ok(moved);
        }
        let source = self.object_path(id);
        let target = self.quarantine.join(format!("{id}.{}", unix_secs() * 1000));
        self.forget_bytes(&source);
        match fs::rename(&source, &target) {
            Ok(()) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                fsync_dir(source.parent().expect("object paths have a parent"))?;
                fsync_dir(&self.quarantine)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn delete(&self, id: &ObjectId) -> io::Result<bool> {
        if self.volumes.contains(id) {
            let len = self.volumes.stat(id).ok().flatten().map_or(0, |s| s.size);
            let deleted = self.volumes.delete(id)?;
            if deleted {
                self.forget_object(len);
            }
            return Ok(deleted);
        }
        let path = self.object_path(id);
        self.forget_bytes(&path);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                fsync_dir(path.parent().expect("object paths have a parent"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Calls `f` for every object with the facts of its footer (not verified against its
    /// bytes: that is `verify`'s job).
    pub fn scan(&self, f: &mut dyn FnMut(ScanItem)) -> io::Result<()> {
        let now = unix_secs();
        self.walk(&mut |id, path| {
            let item = match File::open(&path) {
                Ok(file) => {
                    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                    match read_footer(&file, len) {
                        Ok((stored, created)) => {
                            ScanItem { id, stored: Ok(stored), age_secs: now.saturating_sub(created) }
                        }
                        Err(reason) => ScanItem { id, stored: Err(reason), age_secs: 0 },
                    }
                }
                // Deleted between listing and opening.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => ScanItem { id, stored: Err(e.to_string()), age_secs: 0 },
            };
            f(item);
        })?;
        self.volumes.scan(&mut |id, stored, created| {
            f(ScanItem { id, stored: Ok(stored), age_secs: now.saturating_sub(created) })
        })
    }

    /// Writes the index file of one sealed volume that has none yet; `None` when every
    /// sealed volume has one. Returns what it did, for the log.
    pub fn index_step(&self) -> io::Result<Option<String>> {
        self.volumes.index_sealed()
    }

    /// Does what the volume writers asked of the background (a sync while they forward,
    /// space written ahead), waiting up to `wait` for them to ask; returns the bytes
    /// written ahead.
    pub fn volume_step(&self, wait: Duration) -> io::Result<u64> {
        self.volumes.background_step(wait)
    }

    /// Declared sizes up to which uploads become records written through the page cache,
    /// which the chain forwards once written (`chain.rs`). A larger record streams on as
    /// it arrives, like an object file: forwarding it only once whole was slower.
    pub fn inline_up_to(&self) -> Option<u64> {
        self.records_up_to.map(|up_to| up_to.min(volume::BUFFERED_RECORD))
    }

    /// Compacts the sealed volume with the most garbage if one passes the threshold,
    /// copying at most `bytes_per_sec`; `pause` waits and says false when the node is
    /// stopping. Returns what it did, for the log.
    pub fn compact_step(&self, bytes_per_sec: u64, pause: &dyn Fn(Duration) -> bool) -> io::Result<Option<String>> {
        let Some(ordinal) = self.volumes.compaction_candidate() else { return Ok(None) };
        Ok(self.volumes.compact(ordinal, bytes_per_sec, pause)?.map(|done| {
            format!(
                "compacted volume {}: kept {} byte(s) of records, freed {} byte(s)",
                done.ordinal, done.kept, done.freed
            )
        }))
    }
}

/// `start..end` of an object of `size` bytes for a requested range (`start`, inclusive
/// `end` or the rest), or why it cannot be served.
/// Reads exactly `data.len()` bytes of `body` into `data`, handing each piece to
/// `forward` as it arrives, and refuses a body that is short, longer, or does not match
/// `expected`. Returns its checksum.
fn receive(
    body: &mut dyn Read,
    data: &mut [u8],
    expected: Option<Checksum>,
    forward: &mut dyn FnMut(&[u8]),
) -> Result<Checksum, StoreError> {
    let len = data.len() as u64;
    let mut received = 0;
    while received < data.len() {
        match body.read(&mut data[received..]) {
            Ok(0) => return Err(StoreError::ShortBody { expected: len, received: received as u64 }),
            Ok(n) => {
                forward(&data[received..received + n]);
                received += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(StoreError::Body(e)),
            Err(_) => return Err(StoreError::ShortBody { expected: len, received: received as u64 }),
        }
    }
    // A body longer than its declared length is refused like the file path does.
    let mut extra = [0u8; 1];
    if matches!(body.read(&mut extra), Ok(n) if n > 0) {
        return Err(StoreError::ShortBody { expected: len, received: len + 1 });
    }
    let checksum = Checksum::of(data);
    if let Some(expected) = expected.filter(|e| *e != checksum) {
        return Err(StoreError::ChecksumMismatch { expected, actual: checksum });
    }
    Ok(checksum)
}

fn byte_range(range: Option<(u64, Option<u64>)>, size: u64) -> Result<(u64, u64), StoreError> {
    match range {
        None => Ok((0, size)),
        Some((start, end)) => {
            let end = end.map_or(size, |e| e.saturating_add(1).min(size));
            if start >= size || start >= end {
                return Err(StoreError::BadRange(format!("bytes={start}- of {size} bytes")));
            }
            Ok((start, end))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aether-store-{name}-{}", rand::random::<u32>()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn put(
        store: &BlobStore,
        id: &ObjectId,
        data: &[u8],
        declared: Option<u64>,
        max: u64,
    ) -> Result<StoredObject, StoreError> {
        store.put(id, &mut &data[..], declared, max, None, None)
    }

    fn read_all(store: &BlobStore, id: &ObjectId, range: Option<(u64, Option<u64>)>) -> Result<Vec<u8>, StoreError> {
        let read = store.read_verified(id, range, Box::new(|_| {}))?;
        let mut out = Vec::new();
        read.body.into_reader().read_to_end(&mut out)?;
        assert_eq!(out.len() as u64, read.len);
        Ok(out)
    }

    #[test]
    fn put_then_read_back_and_refuse_overwrite() {
        let root = temp_root("put");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        for size in [0usize, 600_000, 3 << 20] {
            let id = ObjectId::new_random();
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut forwarded = 0;
            let stored =
                store.put(&id, &mut &data[..], Some(size as u64), u64::MAX, None, Some(&mut |c| forwarded += c.len()));
            let mut sum = Checksum::default();
            sum.update(&data);
            assert_eq!(stored.unwrap(), StoredObject { size: size as u64, checksum: sum });
            assert_eq!(forwarded, size);
            assert!(read_all(&store, &id, None).unwrap() == data);
            if size > 10 {
                assert_eq!(read_all(&store, &id, Some((5, Some(9)))).unwrap(), &data[5..10]);
                assert!(read_all(&store, &id, Some((size as u64 - 3, None))).unwrap() == data[size - 3..]);
                assert!(matches!(read_all(&store, &id, Some((size as u64, None))), Err(StoreError::BadRange(_))));
            }
            assert!(matches!(put(&store, &id, b"x", Some(1), u64::MAX), Err(StoreError::Exists(_))));
        }
        assert_eq!(store.object_count(), 3);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        let (reopened, _) = BlobStore::open(&root, 0).unwrap();
        assert_eq!(reopened.object_count(), 3);
        fs::remove_dir_all(root).unwrap();
    }

    /// A body that arrives in pieces of `piece` bytes, like a slow network.
    struct Trickle<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.piece).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn direct_and_buffered_writes_read_back_identical() {
        let root = temp_root("direct");
        let (mut store, _) = BlobStore::open(&root, 0).unwrap();
        store.records_up_to = None;
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            DIRECT_ALIGN - FOOTER_LEN as usize,
            DIRECT_ALIGN - FOOTER_LEN as usize + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            DIRECT_CHUNK - 1,
            DIRECT_CHUNK,
            DIRECT_CHUNK + 1,
            (3 << 20) + 12345,
        ];
        for direct_from in [0, u64::MAX] {
            store.direct_from = direct_from;
            for (i, size) in sizes.into_iter().enumerate() {
                let data: Vec<u8> = (0..size).map(|j| (j * 31 % 253) as u8 ^ i as u8).collect();
                let mut sum = Checksum::default();
                sum.update(&data);
                // Whole reads, and odd pieces that never line up with the alignment.
                for piece in [usize::MAX, 1000 + i] {
                    let id = ObjectId::new_random();
                    let mut forwarded = Vec::new();
                    let mut body = Trickle { data: &data, piece };
                    let stored = store
                        .put(
                            &id,
                            &mut body,
                            Some(size as u64),
                            u64::MAX,
                            Some(sum),
                            Some(&mut |c| forwarded.extend_from_slice(c)),
                        )
                        .unwrap();
                    assert_eq!(stored, StoredObject { size: size as u64, checksum: sum }, "size {size}");
                    assert!(forwarded == data, "size {size}: forwarded bytes differ");
                    assert_eq!(fs::metadata(store.object_path(&id)).unwrap().len(), size as u64 + FOOTER_LEN);
                    assert_eq!(store.verify(&id).unwrap(), stored);
                    assert!(read_all(&store, &id, None).unwrap() == data, "size {size}: bytes differ");
                }
            }
        }
        // A body cut short or too long on the direct path leaves nothing behind.
        store.direct_from = 0;
        let id = ObjectId::new_random();
        let data = vec![7u8; DIRECT_CHUNK + 5];
        let short = put(&store, &id, &data, Some(data.len() as u64 + 1), u64::MAX);
        assert!(matches!(short, Err(StoreError::ShortBody { .. })));
        let long = put(&store, &id, &data, Some(data.len() as u64 - 1), u64::MAX);
        assert!(matches!(long, Err(StoreError::ShortBody { .. })));
        assert!(!store.contains(&id));
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn short_oversized_and_mismatched_bodies_leave_nothing() {
        let root = temp_root("bad");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        let id = ObjectId::new_random();
        let short = put(&store, &id, b"abc", Some(10), u64::MAX);
        assert!(matches!(short, Err(StoreError::ShortBody { expected: 10, received: 3 })));
        let big = put(&store, &id, &[0u8; 100], None, 50);
        assert!(matches!(big, Err(StoreError::TooLarge { limit: 50 })));
        let wrong = store.put(&id, &mut &b"abc"[..], Some(3), u64::MAX, Some(Checksum(1)), None);
        assert!(matches!(wrong, Err(StoreError::ChecksumMismatch { .. })));
        assert!(!store.contains(&id));
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        // The same at a direct record's size: nothing indexed, and the node writes on.
        let body = pattern(3, 300_000);
        let short = put(&store, &id, &body[..299_999], Some(300_000), u64::MAX);
        assert!(matches!(short, Err(StoreError::ShortBody { expected: 300_000, received: 299_999 })));
        let long = put(&store, &id, &[&body[..], b"x"].concat(), Some(300_000), u64::MAX);
        assert!(matches!(long, Err(StoreError::ShortBody { expected: 300_000, received: 300_001 })));
        let wrong = store.put(&id, &mut &body[..], Some(300_000), u64::MAX, Some(Checksum(1)), None);
        assert!(matches!(wrong, Err(StoreError::ChecksumMismatch { .. })));
        assert!(!store.contains(&id));
        put(&store, &id, &body, Some(300_000), u64::MAX).unwrap();
        assert!(read_all(&store, &id, None).unwrap() == body);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_flipped_bit_is_never_served_and_can_be_quarantined() {
        let root = temp_root("rot");
        let (mut store, _) = BlobStore::open(&root, 0).unwrap();
        store.records_up_to = None;
        for size in [1000usize, 2 << 20] {
            let id = ObjectId::new_random();
            put(&store, &id, &vec![1u8; size], None, u64::MAX).unwrap();
            let path = store.object_path(&id);
            let mut bytes = fs::read(&path).unwrap();
            bytes[size / 2] ^= 0x10;
            fs::write(&path, bytes).unwrap();
            // Found before the answer (small objects) or while streaming (large ones).
            let corrupt = |read: Result<Vec<u8>, StoreError>| match read {
                Err(StoreError::Corrupt { .. }) => size as u64 <= SMALL_OBJECT,
                Err(StoreError::Io(e)) => size as u64 > SMALL_OBJECT && e.kind() == io::ErrorKind::InvalidData,
                _ => false,
            };
            assert!(corrupt(read_all(&store, &id, None)));
            assert!(corrupt(read_all(&store, &id, Some((0, Some(10))))));
            assert!(matches!(store.verify(&id), Err(StoreError::Corrupt { .. })));
            assert_eq!(store.stat(&id).unwrap().size, size as u64, "the footer is intact");
            assert!(store.quarantine(&id).unwrap());
            assert!(matches!(store.stat(&id), Err(StoreError::NotFound(_))));
            assert!(!store.quarantine(&id).unwrap(), "moved once");
        }
        // A torn footer is corrupt too.
        let id = ObjectId::new_random();
        put(&store, &id, b"hello", None, u64::MAX).unwrap();
        let file = OpenOptions::new().write(true).open(store.object_path(&id)).unwrap();
        file.set_len(20).unwrap();
        assert!(matches!(store.stat(&id), Err(StoreError::Corrupt { .. })));
        let mut seen = Vec::new();
        store.scan(&mut |item| seen.push(item.stored.is_err())).unwrap();
        assert_eq!(seen, vec![true]);
        assert_eq!(fs::read_dir(root.join("quarantine")).unwrap().count(), 2);
        fs::remove_dir_all(root).unwrap();
    }

    /// Reads `range` of a large object in 64 KiB reads until it ends or fails; returns
    /// the bytes handed out, the error if any, and how often `on_corrupt` was called
    /// (after one more read past a failure, which must fail again without a new call).
    fn stream(
        store: &BlobStore,
        id: &ObjectId,
        range: Option<(u64, Option<u64>)>,
    ) -> (Vec<u8>, Option<io::Error>, usize) {
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&calls);
        let on_corrupt: OnCorrupt = Box::new(move |error| {
            assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let read = store.read_verified(id, range, on_corrupt).unwrap();
        let mut body = read.body.into_reader();
        let (mut out, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
        let error = loop {
            match body.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert!(body.read(&mut buf).is_err(), "a failed body stays failed");
                    break Some(e);
                }
            }
        };
        assert!(out.len() as u64 <= read.len);
        (out, error, calls.load(Ordering::Relaxed) as usize)
    }

    #[test]
    fn a_large_corrupt_copy_streams_short_of_its_last_chunk() {
        let root = temp_root("stream");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        let size = (3 << 20) + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        let ranges = [
            None,
            Some((0, None)),
            Some((100, None)),
            Some((5, Some(2 * CHUNK as u64))),
            Some((2_000_000, Some(2_000_009))),
        ];
        let chunk = CHUNK;
        for flip in [None, Some(10), Some(size / 2), Some(size - 2 * chunk - 7), Some(size - 10)] {
            let id = ObjectId::new_random();
            put(&store, &id, &data, None, u64::MAX).unwrap();
            let mut on_disk = data.clone();
            if let Some(at) = flip {
                on_disk[at] ^= 0x40;
                let file = OpenOptions::new().write(true).open(store.object_path(&id)).unwrap();
                file.write_all_at(&on_disk[at..at + 1], at as u64).unwrap();
            }
            for range in ranges {
                let (start, end) = match range {
                    None => (0, size),
                    Some((start, end)) => (start as usize, end.map_or(size, |e| e as usize + 1)),
                };
                let (out, error, calls) = stream(&store, &id, range);
                let what = format!("flip {flip:?}, range {range:?}");
                match flip {
                    None => {
                        assert!(error.is_none(), "{what}: {error:?}");
                        assert!(out == data[start..end], "{what}");
                        assert_eq!(calls, 0, "{what}");
                    }
                    Some(_) => {
                        let error = error.unwrap_or_else(|| panic!("{what}: a corrupt copy was read whole"));
                        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{what}");
                        assert!(error.to_string().contains("corrupt"), "{what}: {error}");
                        let held = (end - start).min(chunk);
                        assert!(out.len() <= end - start - held, "{what}: {} bytes of the last chunk", out.len());
                        assert!(out == on_disk[start..start + out.len()], "{what}");
                        assert_eq!(calls, 1, "{what}");
                    }
                }
            }
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn footer_of_a_short_file_is_refused() {
        // The length check once lived only in `read_footer`, so the parser itself
        // subtracted past zero for a file shorter than a footer (the `footer` fuzz target).
        let footer = encode_footer(StoredObject { size: 0, checksum: Checksum(7) }, 1);
        for file_len in 0..FOOTER_LEN {
            assert!(parse_footer(&footer, file_len).is_err(), "{file_len} bytes");
        }
        assert_eq!(parse_footer(&footer, FOOTER_LEN).unwrap().0.size, 0);
    }

    #[test]
    fn open_removes_leftover_uploads() {
        let root = temp_root("leftover");
        let (_store, _) = BlobStore::open(&root, 0).unwrap();
        fs::write(root.join("tmp").join("half-written"), b"partial").unwrap();
        let (_store, removed) = BlobStore::open(&root, 0).unwrap();
        assert_eq!(removed, 1);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_removed_or_replaced_data_directory_fails_the_disk_check_until_it_is_back() {
        let root = temp_root("disk");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        let id = ObjectId::parse("0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03").unwrap();
        put(&store, &id, b"kept", None, 1 << 20).unwrap();
        assert_eq!(store.check_disk(), (DiskState::Ok, DiskState::Ok));
        assert!(store.disk_health().capacity_bytes > 0);

        // Moved away (as `rm -rf` or an unmount leaves it): failed, and writes are refused.
        let away = root.with_extension("away");
        fs::rename(&root, &away).unwrap();
        assert_eq!(store.check_disk(), (DiskState::Ok, DiskState::Failed));
        let other = ObjectId::parse("1b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03").unwrap();
        let refused = put(&store, &other, b"x", None, 1 << 20).unwrap_err();
        assert_eq!(refused.status(), 503, "{refused}");
        assert!(refused.to_string().contains("is gone"), "{refused}");

        // Another directory at the same path is not the disk this node holds copies on.
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::create_dir_all(root.join("objects")).unwrap();
        assert_eq!(store.check_disk().1, DiskState::Failed);
        assert!(store.disk_health().reason.unwrap().contains("replaced"));
        fs::remove_dir_all(&root).unwrap();

        // The same directory back: fine again, with its objects.
        fs::rename(&away, &root).unwrap();
        assert_eq!(store.check_disk(), (DiskState::Failed, DiskState::Ok));
        assert_eq!(read_all(&store, &id, None).unwrap(), b"kept");

        // A write that fails checks the disk at once.
        fs::remove_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("tmp"), b"not a directory").unwrap();
        let failed = put(&store, &other, b"x", None, 1 << 20).unwrap_err();
        assert_eq!(failed.status(), 503, "{failed}");
        assert_eq!(store.disk_health().state, DiskState::Failed);
        fs::remove_dir_all(root).unwrap();
    }

    fn pattern(i: usize, size: usize) -> Vec<u8> {
        (0..size).map(|j| (j * 31 + i * 7) as u8).collect()
    }

    fn volume_files(root: &Path) -> Vec<PathBuf> {
        files_ending(root, ".vol")
    }

    fn files_ending(root: &Path, suffix: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        files.sort();
        files
    }

    /// Everything the in-memory index holds: each object's slot, and each volume's
    /// generation, end and garbage.
    type Snapshot = (Vec<([u8; 16], (u32, u32, u32))>, Vec<(u32, u32, u64, u64)>);

    fn snapshot(store: &BlobStore) -> Snapshot {
        let index = store.volumes.index.read().unwrap();
        let mut objects: Vec<_> = index.objects.iter().map(|(id, s)| (*id, (s.volume, s.offset, s.len))).collect();
        objects.sort();
        let volumes = index.volumes.iter().map(|(&o, v)| (o, v.generation, v.end, v.garbage)).collect();
        (objects, volumes)
    }

    /// Opens the store at `root` and says how it read its volumes.
    fn reopen(root: &Path, limit: u64) -> (BlobStore, usize, usize, Vec<String>) {
        let (store, _) = BlobStore::open_with(root, 0, limit).unwrap();
        let start_up = store.start_up();
        let (from_index, replayed, fallbacks) = (start_up.from_index, start_up.replayed, start_up.fallbacks.clone());
        (store, from_index, replayed, fallbacks)
    }

    #[test]
    fn sealed_volumes_load_from_their_index_files_into_the_same_index_as_a_replay() {
        let root = temp_root("idx-same");
        let limit = 64 * 1024;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let ids: Vec<(ObjectId, Vec<u8>)> = (0..150).map(|i| (ObjectId::new_random(), pattern(i, 1500))).collect();
        for (id, data) in &ids {
            put(&store, id, data, Some(1500), u64::MAX).unwrap();
        }
        // Deletes across volumes, and ids put again after their delete: superseded
        // records and tombstones both count as a replay counts them.
        for (i, (id, data)) in ids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            assert!(store.delete(id).unwrap());
            if i % 2 == 0 {
                put(&store, id, data, Some(1500), u64::MAX).unwrap();
            }
        }
        let gone: Vec<usize> = (0..150).filter(|i| i % 3 == 0 && i % 2 != 0).collect();
        let before = snapshot(&store);
        let n_volumes = volume_files(&root).len();
        assert!(n_volumes >= 5, "{n_volumes}");
        drop(store);
        // A damaged header in a sealed volume: replay skips it and counts it as garbage.
        let second = &volume_files(&root)[1];
        let mut bytes = fs::read(second).unwrap();
        bytes[64 + record_len_of(1500) + 3] ^= 0xff;
        fs::write(second, &bytes).unwrap();

        // The first start replays every volume and writes the sealed ones' index files.
        let (store, from_index, replayed, fallbacks) = reopen(&root, limit);
        assert_eq!((from_index, replayed), (0, n_volumes), "{fallbacks:?}");
        assert_eq!(store.start_up().without_index, n_volumes - 1);
        assert_eq!(files_ending(&root, ".idx").len(), n_volumes - 1);
        let replayed_snapshot = snapshot(&store);
        assert!(replayed_snapshot != before, "the damaged record is gone");
        drop(store);

        let (store, from_index, replayed, fallbacks) = reopen(&root, limit);
        assert_eq!((from_index, replayed, fallbacks), (n_volumes - 1, 1, vec![]));
        assert!(snapshot(&store) == replayed_snapshot, "objects, ends and garbage as a replay gives them");
        for (i, (id, data)) in ids.iter().enumerate() {
            if gone.contains(&i) {
                assert!(!store.contains(id), "object {i} came back");
            } else if store.contains(id) {
                assert!(read_all(&store, id, None).unwrap() == *data, "object {i}");
            }
        }
        assert_eq!(store.object_count() as usize, ids.len() - gone.len() - 1, "all but the damaged one");

        // Volumes sealed since start-up get theirs from `index_step`.
        for i in 0..100 {
            put(&store, &ObjectId::new_random(), &pattern(1000 + i, 1500), Some(1500), u64::MAX).unwrap();
        }
        let mut written = 0;
        while let Some(done) = store.index_step().unwrap() {
            assert!(done.starts_with("wrote the index file of"), "{done}");
            written += 1;
        }
        assert!(written >= 2, "{written}");
        let n_volumes = volume_files(&root).len();
        drop(store);
        let (store, from_index, replayed, _) = reopen(&root, limit);
        assert_eq!((from_index, replayed), (n_volumes - 1, 1));
        let from_index_files = snapshot(&store);
        drop(store);
        for index_file in files_ending(&root, ".idx") {
            fs::remove_file(index_file).unwrap();
        }
        let (store, from_index, ..) = reopen(&root, limit);
        assert_eq!(from_index, 0);
        assert!(snapshot(&store) == from_index_files, "index files and a replay give the same index");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_index_file_damaged_torn_stale_or_of_another_volume_falls_back_to_replay() {
        let root = temp_root("idx-bad");
        let limit = 64 * 1024;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let ids: Vec<(ObjectId, Vec<u8>)> = (0..120).map(|i| (ObjectId::new_random(), pattern(i, 2000))).collect();
        for (id, data) in &ids {
            put(&store, id, data, Some(2000), u64::MAX).unwrap();
        }
        for (id, _) in ids.iter().step_by(7) {
            assert!(store.delete(id).unwrap());
        }
        drop(store);
        let (store, ..) = reopen(&root, limit);
        let good = snapshot(&store);
        drop(store);
        let n_sealed = volume_files(&root).len() - 1;
        let check = |store: &BlobStore| {
            assert!(snapshot(store) == good, "the same index as a replay gives");
            for (i, (id, data)) in ids.iter().enumerate() {
                if i % 7 == 0 {
                    assert!(!store.contains(id), "object {i} came back");
                } else {
                    assert!(read_all(store, id, None).unwrap() == *data, "object {i}");
                }
            }
        };
        let index_file = |n: usize| files_ending(&root, ".idx")[n].clone();
        let damages: [(&str, &dyn Fn()); 5] = [
            ("checksum does not match", &|| {
                let mut bytes = fs::read(index_file(0)).unwrap();
                bytes[64 + 24 * 5 + 3] ^= 0x01;
                fs::write(index_file(0), bytes).unwrap();
            }),
            ("header is damaged", &|| {
                let mut bytes = fs::read(index_file(1)).unwrap();
                bytes[33] ^= 0x80;
                fs::write(index_file(1), bytes).unwrap();
            }),
            ("declares", &|| {
                let bytes = fs::read(index_file(1)).unwrap();
                fs::write(index_file(1), &bytes[..bytes.len() - 10]).unwrap();
            }),
            ("stale", &|| {
                let volume = &volume_files(&root)[2];
                let mut bytes = fs::read(volume).unwrap();
                bytes.extend_from_slice(&[0; 96]);
                fs::write(volume, bytes).unwrap();
            }),
            ("another volume", &|| {
                fs::copy(index_file(0), index_file(2)).unwrap();
            }),
        ];
        for (why, damage) in damages {
            damage();
            let (store, from_index, replayed, fallbacks) = reopen(&root, limit);
            assert_eq!((from_index, replayed), (n_sealed - 1, 2), "{why}: {fallbacks:?}");
            assert!(fallbacks.len() == 1 && fallbacks[0].contains(why), "{why}: {fallbacks:?}");
            check(&store);
            drop(store);
            // Rewritten by the replay.
            let (store, from_index, _, fallbacks) = reopen(&root, limit);
            assert_eq!(from_index, n_sealed, "{why}: {fallbacks:?}");
            check(&store);
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_sealed_volume_written_to_again_has_a_stale_index_file() {
        // Nothing appends to a sealed volume, but one case reopens one: the next volume
        // was created just before a crash and never got its header, so start-up removes
        // it and the sealed volume before it is the last one again. Its index file must
        // then be refused by its length, not trusted.
        let root = temp_root("idx-reopened");
        let limit = 64 * 1024;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let mut kept = Vec::new();
        while volume_files(&root).len() < 3 {
            let (id, data) = (ObjectId::new_random(), pattern(kept.len(), 1500));
            put(&store, &id, &data, Some(1500), u64::MAX).unwrap();
            kept.push((id, data));
        }
        kept.pop();
        drop(store);
        let (store, from_index, ..) = reopen(&root, limit);
        assert_eq!(from_index, 0);
        drop(store);
        let (second, third) = (volume_files(&root)[1].clone(), volume_files(&root)[2].clone());
        assert!(files_ending(&root, ".idx").len() == 2);
        fs::write(&third, b"").unwrap();
        let sealed_len = fs::metadata(&second).unwrap().len();

        let (store, ..) = reopen(&root, limit);
        assert!(store.repairs().iter().any(|r| r.contains("holds no records")), "{:?}", store.repairs());
        let (id, data) = (ObjectId::new_random(), pattern(999, 100));
        put(&store, &id, &data, Some(100), u64::MAX).unwrap();
        kept.push((id, data));
        assert!(fs::metadata(&second).unwrap().len() > sealed_len, "appended to the volume sealed before");
        // Sealed again, its old index file still there.
        while volume_files(&root).len() < 3 {
            let (id, data) = (ObjectId::new_random(), pattern(kept.len(), 1500));
            put(&store, &id, &data, Some(1500), u64::MAX).unwrap();
            kept.push((id, data));
        }
        drop(store);
        let (store, from_index, replayed, fallbacks) = reopen(&root, limit);
        assert_eq!((from_index, replayed), (1, 2), "{fallbacks:?}");
        assert!(fallbacks.len() == 1 && fallbacks[0].contains("stale"), "{fallbacks:?}");
        for (id, data) in &kept {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn small_objects_are_volume_records_that_survive_a_restart() {
        let root = temp_root("records");
        let (store, _) = BlobStore::open_with(&root, 0, 64 * 1024).unwrap();
        let sizes = [0usize, 1, 7, 8, 4096, 5000, VOLUME_OBJECT as usize];
        let mut ids = Vec::new();
        for round in 0..4 {
            for (i, size) in sizes.into_iter().enumerate() {
                let id = ObjectId::new_random();
                let data = pattern(round * 10 + i, size);
                let stored = put(&store, &id, &data, Some(size as u64), u64::MAX).unwrap();
                assert_eq!(store.stat(&id).unwrap(), stored);
                assert_eq!(store.verify(&id).unwrap(), stored);
                assert!(matches!(put(&store, &id, b"x", Some(1), u64::MAX), Err(StoreError::Exists(_))));
                ids.push((id, data));
            }
        }
        assert!(fs::read_dir(root.join("objects")).unwrap().next().is_none(), "no object files");
        assert!(volume_files(&root).len() > 2, "volumes rolled over: {:?}", volume_files(&root));
        let (id, data) = &ids[4];
        assert_eq!(read_all(&store, id, Some((10, Some(19)))).unwrap(), &data[10..20]);
        assert_eq!(read_all(&store, id, Some((4000, None))).unwrap(), &data[4000..]);
        assert!(matches!(read_all(&store, id, Some((4096, None))), Err(StoreError::BadRange(_))));
        let (gone, _) = &ids[3];
        assert!(store.delete(gone).unwrap());
        assert!(!store.delete(gone).unwrap());
        assert!(matches!(store.stat(gone), Err(StoreError::NotFound(_))));
        assert_eq!(store.object_count(), ids.len() as u64 - 1);
        drop(store);

        let (store, _) = BlobStore::open_with(&root, 0, 64 * 1024).unwrap();
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        assert_eq!(store.object_count(), ids.len() as u64 - 1);
        for (i, (id, data)) in ids.iter().enumerate() {
            if i == 3 {
                assert!(!store.contains(id), "deleted stays deleted");
            } else {
                assert!(read_all(&store, id, None).unwrap() == *data, "object {i}");
            }
        }
        let mut scanned = 0;
        store.scan(&mut |item| scanned += item.stored.map_or(0, |_| 1)).unwrap();
        assert_eq!(scanned, ids.len() - 1);
        fs::remove_dir_all(root).unwrap();
    }

    /// Every object of `ids` reads back whole, but those at `deleted`, which stay gone.
    #[track_caller]
    fn kept_and_deleted(store: &BlobStore, ids: &[(ObjectId, Vec<u8>)], deleted: &[usize]) {
        for (i, (id, data)) in ids.iter().enumerate() {
            if deleted.contains(&i) {
                assert!(!store.contains(id), "object {i} came back");
            } else {
                assert!(read_all(store, id, None).unwrap() == *data, "object {i}");
            }
        }
    }

    /// The slot the index holds for `id`: (volume, offset).
    fn slot_of(store: &BlobStore, id: &ObjectId) -> (u32, u64) {
        let index = store.volumes.index.read().unwrap();
        let slot = index.objects.get(&id.to_bytes()).expect("indexed");
        (slot.volume, slot.offset as u64)
    }

    #[test]
    fn large_records_are_written_direct_on_block_boundaries_between_small_ones() {
        let root = temp_root("direct");
        let limit = 4 << 20;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let sizes = [3000usize, 100_000, 5, 1 << 20, 70_000, 4096, 65_536, 65_537, 0, 1_000_000];
        let mut ids = Vec::new();
        for round in 0..3 {
            for (i, size) in sizes.into_iter().enumerate() {
                let (id, data) = (ObjectId::new_random(), pattern(round * 20 + i, size));
                let stored = put(&store, &id, &data, Some(size as u64), u64::MAX).unwrap();
                assert_eq!(store.verify(&id).unwrap(), stored);
                if volume::is_direct(size as u32) {
                    assert_eq!(slot_of(&store, &id).1 % volume::BLOCK, 0, "a {size}-byte record on a block boundary");
                }
                ids.push((id, data));
            }
        }
        // And from writers at once, large and small mixed.
        let more: Vec<(ObjectId, Vec<u8>)> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..6)
                .map(|t| {
                    let store = &store;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..6 {
                            let size = if (t + i) % 2 == 0 { 200_000 + t * 1000 + i } else { 1000 + i };
                            let (id, data) = (ObjectId::new_random(), pattern(100 + t * 10 + i, size));
                            put(store, &id, &data, Some(size as u64), u64::MAX).unwrap();
                            mine.push((id, data));
                        }
                        mine
                    })
                })
                .collect();
            writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        ids.extend(more);
        assert!(fs::read_dir(root.join("objects")).unwrap().next().is_none(), "no object files");
        assert!(volume_files(&root).len() >= 3, "volumes rolled over: {:?}", volume_files(&root));
        let (id, data) = &ids[1];
        assert_eq!(read_all(&store, id, Some((1000, Some(90_000)))).unwrap(), &data[1000..90_001]);
        assert_eq!(read_all(&store, id, Some((99_999, None))).unwrap(), &data[99_999..]);
        while store.index_step().unwrap().is_some() {}
        let before = snapshot(&store).0;
        drop(store);

        // Sealed volumes from their index files, the last one replayed: the same index,
        // and the zeros before each direct record are not taken for damage.
        let (store, from_index, replayed, fallbacks) = reopen(&root, limit);
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        assert!(fallbacks.is_empty(), "{fallbacks:?}");
        assert!(from_index > 0 && replayed == 1, "{from_index} from index files, {replayed} replayed");
        assert!(snapshot(&store).0 == before, "the same objects at the same places");
        let from_index_files = snapshot(&store);
        for (i, (id, data)) in ids.iter().enumerate() {
            assert!(read_all(&store, id, None).unwrap() == *data, "object {i}");
        }
        drop(store);
        // Replayed whole, without index files: the same again.
        for file in files_ending(&root, ".idx") {
            fs::remove_file(file).unwrap();
        }
        let (store, _, _, _) = reopen(&root, limit);
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        assert!(snapshot(&store) == from_index_files, "a replay gives the index the index files gave");

        // A direct record torn by a crash: its header block reached the disk, a later
        // block did not. It is cut off; what came before stays; writing goes on.
        let small = ObjectId::new_random();
        put(&store, &small, &pattern(7, 2000), Some(2000), u64::MAX).unwrap();
        let torn = ObjectId::new_random();
        put(&store, &torn, &pattern(8, 300_000), Some(300_000), u64::MAX).unwrap();
        let (volume_ordinal, offset) = slot_of(&store, &torn);
        let small_end = slot_of(&store, &small).1 + volume::record_len(2000);
        assert!(small_end < offset, "zeros before the direct record");
        drop(store);
        let volume = volume_files(&root).pop().unwrap();
        assert!(volume.to_string_lossy().contains(&format!("{volume_ordinal:08}.")), "{volume:?}");
        let file = OpenOptions::new().write(true).open(&volume).unwrap();
        file.write_all_at(&[0u8; 4096], offset + 8 * 4096).unwrap();
        drop(file);
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        assert!(!store.contains(&torn));
        assert_eq!(store.repairs().len(), 1, "{:?}", store.repairs());
        assert_eq!(fs::metadata(&volume).unwrap().len(), offset, "cut where the torn record began");
        assert_eq!(read_all(&store, &small, None).unwrap(), pattern(7, 2000));
        let after = ObjectId::new_random();
        put(&store, &after, &pattern(9, 500_000), Some(500_000), u64::MAX).unwrap();
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        assert_eq!(read_all(&store, &after, None).unwrap(), pattern(9, 500_000));
        for (i, (id, data)) in ids.iter().enumerate() {
            assert!(read_all(&store, id, None).unwrap() == *data, "object {i}");
        }

        // Deleted large records are compacted away like small ones.
        let deleted: Vec<usize> = (0..ids.len()).filter(|i| i % 3 != 0).collect();
        for &i in &deleted {
            assert!(store.delete(&ids[i].0).unwrap());
        }
        let never = |_: Duration| true;
        let mut compactions = 0;
        while store.compact_step(u64::MAX, &never).unwrap().is_some() {
            compactions += 1;
            assert!(compactions < 100);
        }
        assert!(compactions >= 1, "{compactions}");
        assert!(volume_files(&root).iter().any(|p| p.to_string_lossy().ends_with(".1.vol")));
        let check = |store: &BlobStore| kept_and_deleted(store, &ids, &deleted);
        check(&store);
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        check(&store);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_legacy_volume_reads_as_before_and_takes_no_direct_record() {
        let root = temp_root("legacy");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        let small: Vec<(ObjectId, Vec<u8>)> = (0..3).map(|i| (ObjectId::new_random(), pattern(i, 3000))).collect();
        for (id, data) in &small {
            put(&store, id, data, Some(3000), u64::MAX).unwrap();
        }
        drop(store);
        // As a version before direct records left it: its header says so.
        let legacy = volume_files(&root).pop().unwrap();
        volume::make_legacy(&legacy);
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        let more = (ObjectId::new_random(), pattern(5, 3000));
        put(&store, &more.0, &more.1, Some(3000), u64::MAX).unwrap();
        assert_eq!(volume_files(&root), std::slice::from_ref(&legacy), "small records still go to it");
        let large = (ObjectId::new_random(), pattern(6, 500_000));
        put(&store, &large.0, &large.1, Some(500_000), u64::MAX).unwrap();
        assert_eq!(slot_of(&store, &large.0).0, 2, "a direct record starts the next volume");
        drop(store);
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        for (id, data) in small.iter().chain([&more, &large]) {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_writing_goes_on() {
        let root = temp_root("torn");
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        let ids: Vec<(ObjectId, Vec<u8>)> = (0..20).map(|i| (ObjectId::new_random(), pattern(i, 3000))).collect();
        for (id, data) in &ids {
            put(&store, id, data, Some(data.len() as u64), u64::MAX).unwrap();
        }
        drop(store);
        let volume = volume_files(&root).pop().unwrap();
        let clean = fs::metadata(&volume).unwrap().len();
        // A record whose header made it to disk but not all of its bytes, then garbage.
        let mut torn = fs::read(&volume).unwrap();
        let last = torn[torn.len() - record_len_of(3000)..].to_vec();
        torn.extend_from_slice(&last[..100]);
        torn.extend_from_slice(&[0xab; 333]);
        fs::write(&volume, &torn).unwrap();
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&volume).unwrap().len(), clean, "cut back to the last whole record");
        assert_eq!(store.repairs().len(), 1, "{:?}", store.repairs());
        // A last record whose header reached the disk but whose bytes did not (zeros).
        let torn_id = ObjectId::new_random();
        put(&store, &torn_id, &pattern(77, 3000), Some(3000), u64::MAX).unwrap();
        drop(store);
        let mut zeros = fs::read(&volume).unwrap();
        let len = zeros.len();
        zeros[len - record_len_of(3000) + 48..].fill(0);
        fs::write(&volume, &zeros).unwrap();
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&volume).unwrap().len(), clean, "a record with bytes that fail is cut too");
        assert!(!store.contains(&torn_id));
        for (id, data) in &ids {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        let new = ObjectId::new_random();
        put(&store, &new, b"after", Some(5), u64::MAX).unwrap();
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        assert_eq!(read_all(&store, &new, None).unwrap(), b"after");
        assert_eq!(store.object_count(), 21);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn space_written_ahead_is_written_over_kept_at_a_restart_and_cut_when_sealed() {
        let root = temp_root("ahead");
        let limit = 512 * 1024;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let mut ids: Vec<(ObjectId, Vec<u8>)> = Vec::new();
        fn put_some(store: &BlobStore, ids: &mut Vec<(ObjectId, Vec<u8>)>, n: usize) {
            for _ in 0..n {
                let (id, data) = (ObjectId::new_random(), pattern(ids.len(), 3000));
                put(store, &id, &data, Some(3000), u64::MAX).unwrap();
                ids.push((id, data));
            }
        }
        put_some(&store, &mut ids, 10);
        let volume = volume_files(&root).pop().unwrap();
        let records_end = fs::metadata(&volume).unwrap().len();
        // The writers asked for space (the write-ahead thread's work, done here): the rest
        // of this small volume.
        assert_eq!(store.volume_step(Duration::ZERO).unwrap(), limit - records_end);
        assert_eq!(store.volume_step(Duration::ZERO).unwrap(), 0, "asked once");
        assert_eq!(fs::metadata(&volume).unwrap().len(), limit);
        put_some(&store, &mut ids, 20);
        assert_eq!(fs::metadata(&volume).unwrap().len(), limit, "records written over the zeros");
        drop(store);

        // At a restart the zeros after the last record are kept as written space.
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        assert_eq!(fs::metadata(&volume).unwrap().len(), limit);
        for (id, data) in &ids {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        let mut scanned = 0;
        store.scan(&mut |item| scanned += item.stored.map_or(0, |_| 1)).unwrap();
        assert_eq!(scanned, ids.len());
        // Rolling over cuts the sealed volume back to its last record, so its index
        // file describes it and the next start loads it from there.
        put_some(&store, &mut ids, 200);
        assert!(store.volume_step(Duration::ZERO).unwrap() > 0);
        let sealed_ends: Vec<u64> = snapshot(&store).1.iter().map(|v| v.2).collect();
        while store.index_step().unwrap().is_some() {}
        drop(store);
        let files = volume_files(&root);
        assert!(files.len() >= 2, "{files:?}");
        for (file, end) in files.iter().zip(&sealed_ends).take(files.len() - 1) {
            assert_eq!(fs::metadata(file).unwrap().len(), *end, "{}", file.display());
        }
        let active = files.last().unwrap();
        assert_eq!(fs::metadata(active).unwrap().len(), limit, "the active volume keeps its written space");
        let (store, from_index, replayed, fallbacks) = reopen(&root, limit);
        assert_eq!((from_index, replayed, fallbacks), (files.len() - 1, 1, vec![]));
        assert!(store.repairs().is_empty(), "{:?}", store.repairs());
        drop(store);

        // A record torn by a crash in the written space (its header and part of its
        // bytes reached the disk): cut off, with the zeros after it.
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let active_end = snapshot(&store).1.last().unwrap().2;
        let torn = ObjectId::new_random();
        put(&store, &torn, &pattern(999, 3000), Some(3000), u64::MAX).unwrap();
        drop(store);
        let mut bytes = fs::read(active).unwrap();
        bytes[active_end as usize + 1000..active_end as usize + record_len_of(3000)].fill(0);
        fs::write(active, &bytes).unwrap();
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        assert_eq!(store.repairs().len(), 1, "{:?}", store.repairs());
        assert!(store.repairs()[0].contains("torn byte(s)"), "{:?}", store.repairs());
        assert_eq!(fs::metadata(active).unwrap().len(), active_end);
        assert!(!store.contains(&torn));
        for (id, data) in &ids {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        put_some(&store, &mut ids, 5);
        assert_eq!(store.object_count() as usize, ids.len());
        fs::remove_dir_all(root).unwrap();
    }

    fn record_len_of(size: u32) -> usize {
        volume::record_len(size) as usize
    }

    #[test]
    fn a_flipped_byte_spoils_one_record_not_its_neighbours() {
        let root = temp_root("recrot");
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        let ids: Vec<(ObjectId, Vec<u8>)> = (0..5).map(|i| (ObjectId::new_random(), pattern(i, 4096))).collect();
        for (id, data) in &ids {
            put(&store, id, data, Some(4096), u64::MAX).unwrap();
        }
        let volume = volume_files(&root).pop().unwrap();
        let mut bytes = fs::read(&volume).unwrap();
        let second = 64 + record_len_of(4096) + 48 + 1000;
        bytes[second] ^= 0x04;
        fs::write(&volume, &bytes).unwrap();
        let (bad, _) = &ids[1];
        assert!(matches!(read_all(&store, bad, None), Err(StoreError::Corrupt { .. })));
        assert!(matches!(store.verify(bad), Err(StoreError::Corrupt { .. })));
        for (i, (id, data)) in ids.iter().enumerate().filter(|(i, _)| *i != 1) {
            assert!(read_all(&store, id, None).unwrap() == *data, "neighbour {i}");
        }
        assert!(store.quarantine(bad).unwrap());
        assert!(!store.quarantine(bad).unwrap(), "moved once");
        assert!(matches!(store.stat(bad), Err(StoreError::NotFound(_))));
        assert_eq!(fs::read_dir(root.join("quarantine")).unwrap().count(), 1);
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        assert!(!store.contains(bad), "a quarantined record stays out after a restart");
        assert_eq!(store.object_count(), 4);
        // A damaged header in the middle is skipped; the records after it still count.
        drop(store);
        let mut bytes = fs::read(&volume).unwrap();
        bytes[64 + 2 * record_len_of(4096) + 10] ^= 0xff;
        fs::write(&volume, &bytes).unwrap();
        let (store, _) = BlobStore::open_with(&root, 0, 1 << 20).unwrap();
        assert!(!store.contains(&ids[2].0));
        for (id, data) in [&ids[0], &ids[3], &ids[4]] {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        assert_eq!(fs::metadata(&volume).unwrap().len() as usize, bytes.len(), "nothing cut from the middle");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_writers_share_syncs_and_all_land() {
        let root = temp_root("group");
        let (store, _) = BlobStore::open_with(&root, 0, 256 * 1024).unwrap();
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..40)
                        .map(|i| {
                            let id = ObjectId::new_random();
                            let data = pattern(t * 100 + i, 100 + i * 50);
                            put(&store, &id, &data, Some(data.len() as u64), u64::MAX).unwrap();
                            (id, data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<(ObjectId, Vec<u8>)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let syncs = store.fsync_seconds().get_sample_count();
        assert!(syncs > 0 && syncs < all.len() as u64, "{syncs} syncs for {} puts", all.len());
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, 256 * 1024).unwrap();
        assert_eq!(store.object_count(), all.len() as u64);
        for (id, data) in &all {
            assert!(read_all(&store, id, None).unwrap() == *data);
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn compaction_keeps_live_records_and_tombstones_that_still_matter() {
        let root = temp_root("compact");
        let limit = 64 * 1024;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let ids: Vec<(ObjectId, Vec<u8>)> = (0..90).map(|i| (ObjectId::new_random(), pattern(i, 2000))).collect();
        for (id, data) in &ids {
            put(&store, id, data, Some(2000), u64::MAX).unwrap();
        }
        // Most of the first volumes deleted; their tombstones land in later volumes.
        let deleted: Vec<usize> = (0..90).filter(|i| i % 4 != 0).collect();
        for &i in &deleted {
            assert!(store.delete(&ids[i].0).unwrap());
        }
        let never = |_: Duration| true;
        let mut compactions = 0;
        while let Some(done) = store.compact_step(u64::MAX, &never).unwrap() {
            assert!(done.contains("compacted"), "{done}");
            compactions += 1;
            assert!(compactions < 100);
        }
        assert!(compactions >= 2, "{compactions}");
        let check = |store: &BlobStore| kept_and_deleted(store, &ids, &deleted);
        check(&store);
        assert!(volume_files(&root).iter().any(|p| p.to_string_lossy().ends_with(".1.vol")));
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        assert_eq!(store.object_count(), 23);
        check(&store);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn compaction_runs_beside_deletes_and_reads() {
        let root = temp_root("compact-busy");
        let limit = 64 * 1024;
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        let store = std::sync::Arc::new(store);
        let ids: Vec<(ObjectId, Vec<u8>)> = (0..200).map(|i| (ObjectId::new_random(), pattern(i, 1500))).collect();
        for (id, data) in &ids {
            put(&store, id, data, Some(1500), u64::MAX).unwrap();
        }
        let deleted: Vec<usize> = (0..200).filter(|i| i % 3 != 0).collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deleter = {
            let (store, ids, deleted) = (std::sync::Arc::clone(&store), ids.clone(), deleted.clone());
            std::thread::spawn(move || {
                for i in deleted {
                    assert!(store.delete(&ids[i].0).unwrap());
                }
            })
        };
        let reader = {
            let (store, ids, done) = (std::sync::Arc::clone(&store), ids.clone(), std::sync::Arc::clone(&done));
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) {
                    for (i, (id, data)) in ids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
                        assert!(read_all(&store, id, None).unwrap() == *data, "object {i} while compacting");
                        reads += 1;
                    }
                }
                reads
            })
        };
        let go_on = |_: Duration| true;
        let mut compactions = 0;
        while !deleter.is_finished() || store.volumes.compaction_candidate().is_some() {
            if store.compact_step(u64::MAX, &go_on).unwrap().is_some() {
                compactions += 1;
            }
        }
        deleter.join().unwrap();
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert!(compactions >= 2, "{compactions}");
        let check = |store: &BlobStore| kept_and_deleted(store, &ids, &deleted);
        check(&store);
        drop(store);
        let (store, _) = BlobStore::open_with(&root, 0, limit).unwrap();
        check(&store);
        assert_eq!(store.object_count(), 67);
        fs::remove_dir_all(root).unwrap();
    }
}
