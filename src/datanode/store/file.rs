//! One-file objects: the durable write (temporary file, O_DIRECT for large objects,
//! `sync_all`, hard link, directory fsync), the walk over `objects/`, the node-id file and
//! `populate_unsynced` for scaling tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::verify::read_footer;
use super::verify::{encode_footer, unix_secs};
use super::{BlobStore, StoreError, StoredObject, CHUNK, DIRECT_ALIGN, DIRECT_CHUNK, FOOTER_LEN, UNCACHED_OBJECT};
use crate::buffers::{BufferPool, Lent};
use crate::proto::{Checksum, ObjectId};

pub(super) fn sorted_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries)
}

/// Returns the node id kept in `root/node-id`, writing `wanted` (or a fresh random id)
/// there durably on first start. A node keeps its id for life, so a different `wanted`
/// than the one on disk is refused rather than silently renaming the node.
pub fn load_or_create_node_id(root: &Path, wanted: Option<&str>) -> io::Result<String> {
    let path = root.join("node-id");
    match fs::read_to_string(&path) {
        Ok(stored) => {
            let stored = stored.trim().to_string();
            match wanted {
                Some(wanted) if wanted != stored => Err(io::Error::other(format!(
                    "{} says this node is {stored:?}, not {wanted:?}; drop --node-id or use another data directory",
                    path.display()
                ))),
                _ => Ok(stored),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = match wanted {
                Some(id) => id.to_string(),
                None => format!("datanode-{:08x}", rand::random::<u32>()),
            };
            fs::create_dir_all(root)?;
            let temp = root.join("node-id.tmp");
            let mut file = File::create(&temp)?;
            file.write_all(format!("{id}\n").as_bytes())?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            fsync_dir(root)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Copies `body` into `writer`, refusing more than `max_size` bytes and, when the length
/// was declared, anything but exactly that many; computes the checksum on the way.
pub(super) fn copy_limited(
    body: &mut dyn Read,
    writer: &mut ChunkWriter,
    max_size: u64,
    declared_len: Option<u64>,
    forward: &mut dyn FnMut(&[u8]),
) -> Result<StoredObject, StoreError> {
    let mut received: u64 = 0;
    let mut checksum = Checksum::default();
    loop {
        let n = match body.read(writer.spare()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(match declared_len {
                    Some(expected) if e.kind() != io::ErrorKind::TimedOut => {
                        StoreError::ShortBody { expected, received }
                    }
                    _ => StoreError::Body(e),
                })
            }
        };
        received += n as u64;
        if received > max_size {
            return Err(StoreError::TooLarge { limit: max_size });
        }
        let bytes = &writer.spare()[..n];
        checksum.update(bytes);
        forward(bytes);
        writer.advance(n)?;
    }
    match declared_len {
        Some(expected) if expected != received => Err(StoreError::ShortBody { expected, received }),
        _ => Ok(StoredObject { size: received, checksum }),
    }
}

/// Turns on O_DIRECT for `file`; false where the filesystem does not support it, and the
/// file stays buffered.
pub(super) fn set_direct(file: &File) -> bool {
    rustix::fs::fcntl_getfl(file)
        .and_then(|flags| rustix::fs::fcntl_setfl(file, flags | rustix::fs::OFlags::DIRECT))
        .is_ok()
}

/// Gathers an upload into whole chunks and writes each at its offset of the temporary
/// file, through the page cache or, with `direct`, by O_DIRECT, whose writes must start,
/// end and sit in memory at `DIRECT_ALIGN` boundaries. The last chunk and the footer are
/// written together; with O_DIRECT padded with zeros to the alignment, and the file cut
/// back to its true length.
pub(super) struct ChunkWriter<'a> {
    file: &'a File,
    /// A chunk, room for the footer and padding, and slack to align `start`; a full-size
    /// one goes back to the store's pool when the writer is dropped.
    buf: Lent<'a>,
    /// Where the chunk begins in `buf` (aligned in memory for O_DIRECT).
    start: usize,
    /// Bytes per write.
    chunk: usize,
    /// Bytes of the current chunk received so far.
    filled: usize,
    /// Bytes written to the file before the current chunk.
    written: u64,
    direct: bool,
}

impl<'a> ChunkWriter<'a> {
    fn new(file: &'a File, pool: &'a BufferPool, declared_len: Option<u64>, direct: bool) -> ChunkWriter<'a> {
        let (chunk, slack) = if direct {
            // Just big enough for a smaller object: the buffer's pages are touched once.
            let want = declared_len.map_or(DIRECT_CHUNK, |len| {
                usize::try_from(len).unwrap_or(DIRECT_CHUNK).min(DIRECT_CHUNK).next_multiple_of(DIRECT_ALIGN)
            });
            (want.max(DIRECT_ALIGN), DIRECT_ALIGN)
        } else {
            // A small upload needs a small buffer: zeroing 256 KiB costs more than its bytes.
            let want = declared_len
                .map_or(CHUNK, |len| usize::try_from(len).unwrap_or(CHUNK).saturating_add(1).clamp(4096, CHUNK));
            (want, 0)
        };
        let len = chunk + FOOTER_LEN as usize + 2 * slack;
        let buf = pool.lend_of(len);
        let start = if direct { (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN } else { 0 };
        ChunkWriter { file, buf, start, chunk, filled: 0, written: 0, direct }
    }

    /// Where the next bytes of the body go; never empty, and at most `CHUNK` long so the
    /// pieces handed on to the chain stay small.
    fn spare(&mut self) -> &mut [u8] {
        let from = self.start + self.filled;
        let to = self.start + self.chunk.min(self.filled + CHUNK);
        &mut self.buf[from..to]
    }

    /// Takes `n` bytes just read into `spare`, writing the chunk once it is full.
    fn advance(&mut self, n: usize) -> io::Result<()> {
        self.filled += n;
        if self.filled == self.chunk {
            self.file.write_all_at(&self.buf[self.start..self.start + self.chunk], self.written)?;
            self.written += self.chunk as u64;
            self.filled = 0;
        }
        Ok(())
    }

    /// Writes what is left of the body and then `footer`.
    fn finish(&mut self, footer: &[u8]) -> io::Result<()> {
        let end = self.start + self.filled;
        self.buf[end..end + footer.len()].copy_from_slice(footer);
        let len = self.filled + footer.len();
        if self.direct {
            let padded = len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            self.buf[self.start + len..self.start + padded].fill(0);
            self.file.write_all_at(&self.buf[self.start..self.start + padded], self.written)?;
            self.file.set_len(self.written + len as u64)
        } else {
            self.file.write_all_at(&self.buf[self.start..self.start + len], self.written)
        }
    }
}

/// The buffer of an O_DIRECT upload of a full chunk or more.
const POOLED_BUFFER: usize = DIRECT_CHUNK + FOOTER_LEN as usize + 2 * DIRECT_ALIGN;
/// Buffers kept for reuse: the store's memory stays bounded however many uploads ran at
/// once.
const POOLED_KEPT: usize = 8;

/// The pool of full-size upload buffers (`BlobStore::buffers`): zeroing a fresh 1 MiB
/// buffer for every large upload was 4 % of all CPU samples of 1 MiB PUTs at R = 3.
/// Nothing of a reused buffer's old bytes reaches a file, because a writer writes only
/// bytes it received into the buffer, its footer and zeros.
pub(super) fn upload_buffers() -> BufferPool {
    BufferPool::new(POOLED_BUFFER, POOLED_KEPT)
}

/// A file in `tmp/` that is removed when dropped: on every failure path, and after a
/// successful write once the object has been linked into place.
pub(super) struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(tmp: &Path, id: &ObjectId) -> io::Result<TempFile> {
        let path = tmp.join(format!("{id}.{:016x}", rand::random::<u64>()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Creates `dir` and any missing parents, fsyncing each parent whose listing changed so
/// the new directory survives a crash.
pub(super) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().expect("fan-out directories have parents");
    ensure_dir(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a file a step left unfinished (a `.compacting` volume, an index file's
/// temporary name) unless the step took the path back out.
pub(super) struct RemoveOnDrop(pub Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

// Benchmark support: fills a data directory of a stopped node quickly, for tests and
// scaling runs that need hundreds of thousands of objects on one node.

/// Writes `count` objects of `size` pattern bytes under `root` (a node's data directory)
/// with random ids and valid footers, without fsyncs (it is not for real data: one
/// `sync` at the end would make them durable). Returns how many it wrote.
pub fn populate_unsynced(root: &Path, count: u64, size: usize) -> io::Result<u64> {
    let objects = root.join("objects");
    let body: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    let mut sum = Checksum::default();
    sum.update(&body);
    let stored = StoredObject { size: size as u64, checksum: sum };
    let footer = encode_footer(stored, unix_secs());
    let mut made = std::collections::HashSet::new();
    for _ in 0..count {
        // Ids share their second fan-out level, so 256 directories hold them all: making
        // 65,536 directories would take longer than writing the objects.
        let mut bytes = *uuid::Uuid::new_v4().as_bytes();
        bytes[1] = 0;
        let id = ObjectId::parse(&uuid::Uuid::from_bytes(bytes).to_string()).expect("a UUID is an object id");
        let name = id.to_string();
        let dir = objects.join(&name[0..2]).join(&name[2..4]);
        if made.insert(dir.clone()) {
            fs::create_dir_all(&dir)?;
        }
        let mut file = File::create(dir.join(&name))?;
        file.write_all(&body)?;
        file.write_all(&footer)?;
    }
    Ok(count)
}

impl BlobStore {
    pub(super) fn put_checked(
        &self,
        id: &ObjectId,
        body: &mut dyn Read,
        declared_len: Option<u64>,
        max_size: u64,
        expected: Option<Checksum>,
        forward: &mut dyn FnMut(&[u8]),
    ) -> Result<StoredObject, StoreError> {
        if self.contains(id) {
            return Err(StoreError::Exists(*id));
        }
        if let Some(len) = declared_len {
            if len > max_size {
                return Err(StoreError::TooLarge { limit: max_size });
            }
            let available = self.available_bytes()?;
            if len.saturating_add(self.reserve_bytes) > available {
                return Err(StoreError::NoSpace { needed: len, available });
            }
        }

        let temp = TempFile::create(&self.tmp, id)?;
        // A large object skips the page cache: copying it there costs more CPU than
        // anything else a PUT does, and its pages would only be dropped again below.
        let direct = declared_len.is_some_and(|len| len >= self.direct_from) && set_direct(&temp.file);
        let mut writer = ChunkWriter::new(&temp.file, &self.buffers, declared_len, direct);
        let stored = copy_limited(body, &mut writer, max_size, declared_len, forward)?;
        if let Some(expected) = expected.filter(|e| *e != stored.checksum) {
            return Err(StoreError::ChecksumMismatch { expected, actual: stored.checksum });
        }
        // An empty chunk tells `forward` the body arrived whole and verified.
        forward(&[]);
        writer.finish(&encode_footer(stored, unix_secs()))?;
        drop(writer);
        let syncing = std::time::Instant::now();
        temp.file.sync_all()?;
        self.fsync_seconds.observe(syncing.elapsed().as_secs_f64());
        if stored.size >= UNCACHED_OBJECT && !direct {
            // The bytes are on disk: a large object's cache pages go back for the next
            // upload to reuse, instead of the cache growing into memory that is slow to
            // touch for the first time (the bench measured R=3 64 MiB PUTs 35 % faster).
            let _ = rustix::fs::fadvise(&temp.file, 0, 0, rustix::fs::Advice::DontNeed);
        }

        let target = self.object_path(id);
        let dir = target.parent().expect("object paths have a parent");
        ensure_dir(dir)?;
        match fs::hard_link(&temp.path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StoreError::Exists(*id)),
            Err(e) => return Err(e.into()),
        }
        fsync_dir(dir)?;
        drop(temp);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(stored.size, Ordering::Relaxed);
        Ok(stored)
    }

    /// Opens an object and reads its footer, without reading its bytes.
    pub(super) fn open_object(&self, id: &ObjectId) -> Result<(File, StoredObject, u64), StoreError> {
        let file = match File::open(self.object_path(id)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(*id)),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        let (stored, created) =
            read_footer(&file, meta.len()).map_err(|reason| StoreError::Corrupt { id: *id, reason })?;
        Ok((file, stored, created))
    }

    /// Calls `f` for every object file: its id and path. Files whose names are not
    /// object ids are skipped.
    pub(super) fn walk(&self, f: &mut dyn FnMut(ObjectId, PathBuf)) -> io::Result<()> {
        for level1 in sorted_dir(&self.objects)? {
            for level2 in sorted_dir(&level1)? {
                for file in sorted_dir(&level2)? {
                    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if let Ok(id) = ObjectId::parse(name) {
                        f(id, file);
                    }
                }
            }
        }
        Ok(())
    }
}
