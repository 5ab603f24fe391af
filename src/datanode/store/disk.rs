//! The disk check: is the data directory still the one the store opened, can it write,
//! list and report its space (`DiskHealth`); a store whose disk fails refuses writes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use super::file::fsync_dir;
use super::{BlobStore, StoreError};
use crate::proto::DiskState;

/// What the last disk check found, and the space it measured.
#[derive(Debug, Clone)]
pub struct DiskHealth {
    pub state: DiskState,
    /// Why the disk is not `ok`.
    pub reason: Option<String>,
    /// When the last check finished.
    pub checked: Instant,
    pub free_bytes: u64,
    pub capacity_bytes: u64,
    /// How many times the state has changed: a watcher compares it to notice a failure
    /// and recovery that happened between two of its looks.
    pub changes: u64,
}

impl BlobStore {
    /// What the last disk check found.
    pub fn disk_health(&self) -> DiskHealth {
        self.health.lock().expect("disk health lock").clone()
    }

    /// Checks the disk now (unless another check is running, whose result stands) and
    /// returns the state before and after.
    pub fn check_disk(&self) -> (DiskState, DiskState) {
        // An idle node keeps no file open for writing (a read-only remount needs that).
        self.volumes.release_idle_writer(std::time::Duration::from_secs(1));
        let Ok(_running) = self.checking.try_lock() else {
            let state = self.disk_health().state;
            return (state, state);
        };
        let found = self.probe_disk();
        let mut health = self.health.lock().expect("disk health lock");
        let before = health.state;
        health.checked = Instant::now();
        let after = match &found {
            Ok(_) => DiskState::Ok,
            Err((state, _)) => *state,
        };
        if after != before {
            health.changes += 1;
        }
        match found {
            Ok((free, capacity)) => {
                health.state = DiskState::Ok;
                health.reason = None;
                health.free_bytes = free;
                health.capacity_bytes = capacity;
            }
            Err((state, reason)) => {
                health.state = state;
                health.reason = Some(reason);
                health.free_bytes = 0;
            }
        }
        (before, health.state)
    }

    /// The checks themselves: free and total bytes when the disk is fine.
    fn probe_disk(&self) -> Result<(u64, u64), (DiskState, String)> {
        let failed = |what: &str, e: io::Error| {
            let state =
                if e.kind() == io::ErrorKind::ReadOnlyFilesystem { DiskState::ReadOnly } else { DiskState::Failed };
            (state, format!("{what}: {e}"))
        };
        let root = self.root.display();
        match fs::metadata(&self.root) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {}
            Ok(_) => {
                return Err((
                    DiskState::Failed,
                    format!("data directory {root} was replaced since start-up (restart the node to use the new one)"),
                ))
            }
            Err(e) => return Err(failed(&format!("data directory {root} is gone"), e)),
        }
        fs::read_dir(&self.objects).map_err(|e| failed(&format!("cannot list {}", self.objects.display()), e))?;
        let space = self.disk_space().map_err(|e| failed("statvfs failed", e))?;
        let probe = self.tmp.join("disk-probe");
        let write = || -> io::Result<()> {
            let mut file = File::create(&probe)?;
            file.write_all(&[0x5a; 512])?;
            file.sync_all()?;
            fs::remove_file(&probe)?;
            fsync_dir(&self.tmp)
        };
        write().map_err(|e| failed(&format!("cannot write {}", probe.display()), e))?;
        Ok(space)
    }

    /// Refuses work that writes while the disk is not `ok`.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let health = self.disk_health();
        match health.state {
            DiskState::Ok => Ok(()),
            state => Err(StoreError::DiskUnusable { state, reason: health.reason.unwrap_or_default() }),
        }
    }
    /// Bytes an unprivileged writer may still use on the data disk, and the disk's size.
    pub fn disk_space(&self) -> io::Result<(u64, u64)> {
        let stat = rustix::fs::statvfs(&self.tmp)?;
        Ok((stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_blocks.saturating_mul(stat.f_frsize)))
    }

    pub(super) fn available_bytes(&self) -> io::Result<u64> {
        self.disk_space().map(|(available, _)| available)
    }
}
