//! `DataDirLock`: one server per data directory. Every server (master, datanode, dev)
//! holds an exclusive `flock` on `aether.lock` in its data directory for as long as it
//! runs, with its PID written in the file, so a second server on the same directory
//! refuses to start and names the first instead of corrupting its state.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "aether.lock";

/// Held for the life of a server; dropping it (or the process ending, however it ends)
/// releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or says which process holds it.
    pub fn acquire(dir: &Path) -> io::Result<DataDirLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(LOCK_FILE);
        let cannot_open = |e: io::Error| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()));
        // The lock is held on a read-only descriptor, and the PID written through another
        // one closed at once: a file left open for writing would keep the filesystem from
        // being remounted read-only, which the datanode's disk check must be able to see.
        OpenOptions::new().write(true).create(true).truncate(false).open(&path).map_err(cannot_open)?;
        let mut file = File::open(&path).map_err(cannot_open)?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e != rustix::io::Errno::WOULDBLOCK {
                return Err(io::Error::other(format!("cannot lock {}: {e}", path.display())));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("PID {pid}"),
            };
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use by {holder} (it holds {}); stop that process first, or use another data directory",
                    dir.display(),
                    path.display()
                ),
            ));
        }
        // Ours now: say who holds it, for the next one who tries.
        let mut pid = OpenOptions::new().write(true).truncate(true).open(&path)?;
        writeln!(pid, "{}", std::process::id())?;
        drop(pid);
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_names_the_first_holder() {
        let dir = std::env::temp_dir().join(format!("aether-lock-{:08x}", rand::random::<u32>()));
        let first = DataDirLock::acquire(&dir).unwrap();
        let refused = DataDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(refused.contains(&format!("is in use by PID {}", std::process::id())), "{refused}");
        drop(first);
        let again = DataDirLock::acquire(&dir).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
