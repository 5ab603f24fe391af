//! `BufferPool`: large buffers kept for the next use instead of allocated and zeroed
//! each time (a fresh 1 MiB buffer per upload was several per cent of all CPU in 1 MiB
//! PUTs), with a bound on how many are kept, so memory stays bounded however many
//! uploads ran at once.

use std::sync::Mutex;

pub struct BufferPool {
    /// The length of the buffers kept.
    len: usize,
    /// Buffers kept at most.
    kept: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub const fn new(len: usize, kept: usize) -> BufferPool {
        BufferPool { len, kept, free: Mutex::new(Vec::new()) }
    }

    /// A buffer of `len` bytes. A kept one still holds the bytes of its last use: a
    /// user must only pass on bytes it wrote into it itself.
    fn take(&self) -> Vec<u8> {
        let kept = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| vec![0u8; self.len])
    }

    /// `take`, given back when the `Lent` is dropped (on any path out of its user).
    pub fn lend(&self) -> Lent<'_> {
        Lent { pool: self, buf: self.take() }
    }

    /// A buffer of `len` bytes: `lend` when `len` is the pool's length, else a new
    /// buffer, which `put` drops when the `Lent` is dropped.
    pub fn lend_of(&self, len: usize) -> Lent<'_> {
        if len == self.len {
            self.lend()
        } else {
            Lent { pool: self, buf: vec![0u8; len] }
        }
    }

    /// Gives a buffer back; one of another length, or one past the bound, is dropped.
    fn put(&self, buf: Vec<u8>) {
        if buf.len() != self.len {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.kept {
            free.push(buf);
        }
    }
}

/// A buffer lent by a `BufferPool` (`lend`): goes back to it when dropped.
pub struct Lent<'a> {
    pool: &'a BufferPool,
    buf: Vec<u8>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_up_to_the_bound() {
        let pool = BufferPool::new(16, 2);
        let taken: Vec<Vec<u8>> = (0..3).map(|_| pool.take()).collect();
        let addresses: Vec<*const u8> = taken.iter().map(|b| b.as_ptr()).collect();
        for buf in taken {
            pool.put(buf);
        }
        pool.put(vec![0u8; 8]);
        assert_eq!(pool.free.lock().unwrap().len(), 2, "one past the bound and one of another length dropped");
        let again = pool.take();
        assert_eq!(again.len(), 16);
        assert!(addresses.contains(&again.as_ptr()), "a kept buffer is handed out again");
    }
}
