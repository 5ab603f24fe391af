//! Verification of one-file objects: the checksum footer (encode, parse), the
//! `VerifyingReader` that checks a large object as it streams, and `check_sum`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{OnCorrupt, StoreError, StoredObject, CHUNK, FOOTER_LEN, FOOTER_MAGIC};
use crate::proto::{Checksum, ObjectId};

/// Reads a range of a large object in one pass over its file, checking the whole
/// object's checksum on the way, and hands out the range's last chunk (`CHUNK` bytes, or
/// the whole range if shorter) only once the checksum has matched. A reader of a corrupt
/// copy therefore gets an error short of the range's end, never a complete range.
///
/// The footer holds one checksum for the whole object, so a range can only be verified by
/// reading all of it: bytes before the range are read and hashed but not handed out, and
/// those after it are read and hashed before the held-back chunk is released. That is the
/// same one pass over the file whatever the range (a resume from byte X waits for X bytes
/// to be read before its first byte, where verifying first waited for all of them), and
/// it keeps the rule simple: no byte of the last chunk leaves before every byte of the
/// object has been checked.
pub(super) struct VerifyingReader {
    file: File,
    id: ObjectId,
    stored: StoredObject,
    /// How much of the object has been read from the file (and hashed).
    pos: u64,
    range: std::ops::Range<u64>,
    /// Where the held-back last chunk of the range starts.
    held_from: u64,
    sum: Checksum,
    /// The last chunk once verified, and how much of it has been handed out.
    tail: Option<(Vec<u8>, usize)>,
    /// For bytes read only to be hashed (outside the range); allocated when needed.
    scratch: Vec<u8>,
    on_corrupt: Option<OnCorrupt>,
    /// Set once the checksum failed: every later read fails the same way.
    corrupt: Option<String>,
}

impl VerifyingReader {
    pub(super) fn new(
        file: File,
        id: ObjectId,
        stored: StoredObject,
        range: std::ops::Range<u64>,
        on_corrupt: OnCorrupt,
    ) -> VerifyingReader {
        let held_from = range.end.saturating_sub(CHUNK as u64).max(range.start);
        VerifyingReader {
            file,
            id,
            stored,
            pos: 0,
            range,
            held_from,
            sum: Checksum::default(),
            tail: None,
            scratch: Vec::new(),
            on_corrupt: Some(on_corrupt),
            corrupt: None,
        }
    }

    /// Reads exactly `buf.len()` more bytes of the object into `buf` and hashes them.
    fn read_hashed(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact(buf)?;
        self.sum.update(buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads and hashes the object up to `target`, handing nothing out.
    fn skip_to(&mut self, target: u64) -> io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(CHUNK, 0);
        let mut result = Ok(());
        while self.pos < target && result.is_ok() {
            let n = (target - self.pos).min(CHUNK as u64) as usize;
            result = self.read_hashed(&mut scratch[..n]);
        }
        self.scratch = scratch;
        result
    }

    /// Reads the held-back chunk and the rest of the object, then checks the checksum.
    fn verify_tail(&mut self) -> io::Result<Vec<u8>> {
        let mut tail = vec![0u8; (self.range.end - self.held_from) as usize];
        self.read_hashed(&mut tail)?;
        self.skip_to(self.stored.size)?;
        if let Err(error) = check_sum(&self.id, self.stored, self.sum) {
            self.corrupt = Some(error.to_string());
            if let Some(on_corrupt) = self.on_corrupt.take() {
                on_corrupt(error);
            }
            return Err(self.corrupt_error());
        }
        Ok(tail)
    }

    fn corrupt_error(&self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self.corrupt.clone().unwrap_or_default())
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.corrupt.is_some() {
            return Err(self.corrupt_error());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos < self.range.start {
            self.skip_to(self.range.start)?;
        }
        if self.pos < self.held_from {
            // Straight into the caller's buffer: no copy on the way.
            let n = (self.held_from - self.pos).min(buf.len() as u64) as usize;
            let n = self.file.read(&mut buf[..n])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object file ended before its footer said"));
            }
            self.sum.update(&buf[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.tail.is_none() {
            self.tail = Some((self.verify_tail()?, 0));
        }
        let (tail, given) = self.tail.as_mut().expect("the tail was just verified");
        let n = (tail.len() - *given).min(buf.len());
        buf[..n].copy_from_slice(&tail[*given..*given + n]);
        *given += n;
        Ok(n)
    }
}

pub(super) fn check_sum(id: &ObjectId, stored: StoredObject, actual: Checksum) -> Result<StoredObject, StoreError> {
    if actual == stored.checksum {
        Ok(stored)
    } else {
        Err(StoreError::Corrupt {
            id: *id,
            reason: format!("bytes have checksum {actual}, written with {}", stored.checksum),
        })
    }
}

pub(super) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn encode_footer(stored: StoredObject, created_secs: u64) -> [u8; FOOTER_LEN as usize] {
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer[0..8].copy_from_slice(FOOTER_MAGIC);
    footer[8..16].copy_from_slice(&stored.size.to_le_bytes());
    footer[16..20].copy_from_slice(&stored.checksum.0.to_le_bytes());
    footer[20..28].copy_from_slice(&created_secs.to_le_bytes());
    let own = Checksum::of(&footer[0..28]).0;
    footer[28..32].copy_from_slice(&own.to_le_bytes());
    footer
}

/// Reads and checks the footer of an object file `file_len` bytes long.
pub(super) fn read_footer(file: &File, file_len: u64) -> Result<(StoredObject, u64), String> {
    if file_len < FOOTER_LEN {
        return Err(format!("file is {file_len} bytes, too short for its footer"));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut footer, file_len - FOOTER_LEN).map_err(|e| e.to_string())?;
    parse_footer(&footer, file_len)
}

/// Checks the footer bytes of an object file `file_len` bytes long: its magic, its own
/// CRC and the size it names. Gives the object's size and checksum and its write time.
pub(crate) fn parse_footer(footer: &[u8; FOOTER_LEN as usize], file_len: u64) -> Result<(StoredObject, u64), String> {
    if file_len < FOOTER_LEN {
        return Err(format!("file is {file_len} bytes, too short for its footer"));
    }
    let word = |range: std::ops::Range<usize>| footer[range].iter().rev().fold(0u64, |acc, b| (acc << 8) | *b as u64);
    if &footer[0..8] != FOOTER_MAGIC {
        return Err("footer magic is missing".to_string());
    }
    if Checksum::of(&footer[0..28]).0 != word(28..32) as u32 {
        return Err("footer checksum does not match".to_string());
    }
    let size = word(8..16);
    if size != file_len - FOOTER_LEN {
        return Err(format!("footer says {size} bytes, the file holds {}", file_len - FOOTER_LEN));
    }
    Ok((StoredObject { size, checksum: Checksum(word(16..20) as u32) }, word(20..28)))
}
