//! `BlobStore`: the only code that touches object files on a datanode's disk.
//!
//! Layout under the data directory:
//! - `objects/ab/cd/<id>`: one file per object, fanned out by the first four hex digits
//!   of its id (65,536 directories, created on demand), so a node can hold millions.
//! - `tmp/`: uploads in progress; emptied at start-up.
//!
//! A write streams into `tmp/`, is `sync_all`ed, then hard-linked into place and its
//! directory fsynced. The link is the commit point: it fails if the object exists, so two
//! racing uploads of one id cannot overwrite each other, and a crash at any moment leaves
//! either the whole object or nothing under `objects/`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::proto::ObjectId;

/// Bytes moved per read/write while streaming an object.
const CHUNK: usize = 256 * 1024;

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
            StoreError::ShortBody { .. } | StoreError::Body(_) => 400,
            StoreError::NoSpace { .. } => 507,
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
            StoreError::TooLarge { limit } => {
                write!(f, "object is larger than this node's limit of {limit} bytes")
            }
            StoreError::ShortBody { expected, received } => {
                write!(f, "body ended after {received} of {expected} bytes (Content-Length); nothing was stored")
            }
            StoreError::NoSpace { needed, available } => {
                write!(f, "not enough disk space: need {needed} bytes, {available} available; nothing was stored")
            }
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

pub struct BlobStore {
    objects: PathBuf,
    tmp: PathBuf,
    /// Space kept free on the disk: an upload that would eat into it is refused up front.
    reserve_bytes: u64,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `root` and removes uploads that a crash
    /// left unfinished. Returns the store and how many leftovers it removed.
    pub fn open(root: &Path, reserve_bytes: u64) -> io::Result<(BlobStore, usize)> {
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        for dir in [root, &objects, &tmp] {
            fs::create_dir_all(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut removed = 0;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            fs::remove_file(entry.path())?;
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&tmp)?;
        }
        Ok((BlobStore { objects, tmp, reserve_bytes }, removed))
    }

    fn object_path(&self, id: &ObjectId) -> PathBuf {
        let name = id.to_string();
        self.objects.join(&name[0..2]).join(&name[2..4]).join(name)
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.object_path(id).exists()
    }

    /// Streams `body` into a new object. `declared_len` is the request's Content-Length
    /// when it has one; the object is stored only if exactly that many bytes arrive.
    /// Returns the stored size once the bytes and their directory entry are on disk.
    pub fn put(
        &self,
        id: &ObjectId,
        body: &mut dyn Read,
        declared_len: Option<u64>,
        max_size: u64,
    ) -> Result<u64, StoreError> {
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
        let received = copy_limited(body, &temp.file, max_size, declared_len)?;
        temp.file.sync_all()?;

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
        Ok(received)
    }

    /// Opens an object for reading, with its size.
    pub fn open_object(&self, id: &ObjectId) -> Result<(File, u64), StoreError> {
        match File::open(self.object_path(id)) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok((file, len))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*id)),
            Err(e) => Err(e.into()),
        }
    }

    pub fn object_size(&self, id: &ObjectId) -> Result<u64, StoreError> {
        match fs::metadata(self.object_path(id)) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes an unprivileged writer may still use on the data disk.
    pub fn available_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.tmp)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
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

/// Copies `body` into `out`, refusing more than `max_size` bytes and, when the length was
/// declared, anything but exactly that many.
fn copy_limited(
    body: &mut dyn Read,
    mut out: &File,
    max_size: u64,
    declared_len: Option<u64>,
) -> Result<u64, StoreError> {
    let mut buf = vec![0u8; CHUNK];
    let mut received: u64 = 0;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(match declared_len {
                    Some(expected) => StoreError::ShortBody { expected, received },
                    None => StoreError::Body(e),
                })
            }
        };
        received += n as u64;
        if received > max_size {
            return Err(StoreError::TooLarge { limit: max_size });
        }
        out.write_all(&buf[..n])?;
    }
    match declared_len {
        Some(expected) if expected != received => Err(StoreError::ShortBody { expected, received }),
        _ => Ok(received),
    }
}

/// A file in `tmp/` that is removed when dropped: on every failure path, and after a
/// successful write once the object has been linked into place.
struct TempFile {
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
fn ensure_dir(dir: &Path) -> io::Result<()> {
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

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aether-store-{name}-{}", rand::random::<u32>()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn put_then_read_back_and_refuse_overwrite() {
        let root = temp_root("put");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        let id = ObjectId::new_random();
        let data = vec![7u8; 600_000];
        assert_eq!(store.put(&id, &mut &data[..], Some(600_000), u64::MAX).unwrap(), 600_000);
        let (mut file, len) = store.open_object(&id).unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!((len, back), (600_000, data));
        assert!(matches!(store.put(&id, &mut &b"x"[..], Some(1), u64::MAX), Err(StoreError::Exists(_))));
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn short_and_oversized_bodies_leave_nothing() {
        let root = temp_root("bad");
        let (store, _) = BlobStore::open(&root, 0).unwrap();
        let id = ObjectId::new_random();
        let short = store.put(&id, &mut &b"abc"[..], Some(10), u64::MAX);
        assert!(matches!(short, Err(StoreError::ShortBody { expected: 10, received: 3 })));
        let big = store.put(&id, &mut &[0u8; 100][..], None, 50);
        assert!(matches!(big, Err(StoreError::TooLarge { limit: 50 })));
        assert!(!store.contains(&id));
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
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
}
