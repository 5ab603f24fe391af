//! AetherStore: a distributed, S3-style object store. Datanodes keep immutable objects
//! durably on local disk; a master keeps metadata (nodes, objects, replicas) in SQLite.
//! See ARCHITECTURE.md for the map of this crate.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod datanode;
pub mod dev;
pub mod http;
pub mod log;
pub mod master;
pub mod proto;

/// The parsers of untrusted input, reachable from the fuzz targets in `fuzz/` (see
/// docs/fuzzing.md). Not an API: each function is a thin door to the real parser.
#[doc(hidden)]
pub mod fuzz_api {
    use crate::datanode::store::{self, StoredObject};

    /// The datanode's `Range` header parser; an error is its HTTP status.
    pub fn parse_range(header: Option<&str>) -> Result<Option<(u64, Option<u64>)>, u16> {
        crate::datanode::parse_range(header).map_err(|e| e.status)
    }

    /// The datanode's `X-Aether-Chain` header parser; an error is its message.
    pub fn parse_chain(header: Option<&str>) -> Result<Vec<String>, String> {
        crate::datanode::parse_chain(header).map_err(|e| e.message)
    }

    /// The on-disk footer of an object file `file_len` bytes long: (size, checksum, write time).
    pub fn parse_footer(footer: &[u8; 32], file_len: u64) -> Result<(u64, u32, u64), String> {
        store::parse_footer(footer, file_len).map(|(object, created)| (object.size, object.checksum.0, created))
    }

    /// The footer the store writes for an object of `size` bytes with `checksum`.
    pub fn encode_footer(size: u64, checksum: u32, created_secs: u64) -> [u8; 32] {
        store::encode_footer(StoredObject { size, checksum: crate::proto::Checksum(checksum) }, created_secs)
    }
}
