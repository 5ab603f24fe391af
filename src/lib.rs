//! AetherStore: a distributed, S3-style object store. Datanodes keep immutable objects
//! durably on local disk; a master keeps metadata (nodes, objects, replicas) in SQLite.
//! See ARCHITECTURE.md for the map of this crate.

#![forbid(unsafe_code)]

pub mod buffers;
pub mod client;
pub mod datanode;
pub mod http;
pub mod locations;
pub mod lock;
pub mod log;
pub mod master;
pub mod metrics;
pub mod node_client;
pub mod proto;
pub mod s3;

/// What this binary is: the package version and the git commit it was built from, e.g.
/// `0.1.0 (27a3cbf1e2)`; `unknown` for a build outside a git checkout.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AETHER_GIT_COMMIT"), ")");

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

    /// Starts an `HttpServer` (the one both servers use) on a free loopback port, for the
    /// life of the process, whose handler runs the servers' parsers on each request: the
    /// object id in the path, the `Range` and `X-Aether-Chain` headers, a JSON body.
    /// Gives its address.
    pub fn start_http_server() -> std::io::Result<std::net::SocketAddr> {
        use crate::http::{self, HttpServer};
        use crate::proto::{InitUpload, ObjectId, StatusOk, CHAIN_HEADER};
        let limits = http::HttpLimits::default();
        let metrics = crate::metrics::Metrics::new("fuzz");
        let server = HttpServer::start(
            "127.0.0.1:0",
            4,
            &limits,
            "fuzz",
            &metrics,
            |_| false,
            |request| {
                if let Some(id) = http::path_of(request).strip_prefix("/objects/") {
                    let _ = ObjectId::parse(id);
                }
                let _ = parse_range(http::header_value(request, "Range"));
                let _ = parse_chain(http::header_value(request, CHAIN_HEADER));
                match http::read_json::<InitUpload>(request, "an upload") {
                    Ok(_) => http::json_reply(200, &StatusOk::ok()).into(),
                    Err(e) => e.into(),
                }
            },
        )?;
        let addr = server.local_addr();
        std::mem::forget(server);
        Ok(addr)
    }

    /// The footer the store writes for an object of `size` bytes with `checksum`.
    pub fn encode_footer(size: u64, checksum: u32, created_secs: u64) -> [u8; 32] {
        store::encode_footer(StoredObject { size, checksum: crate::proto::Checksum(checksum) }, created_secs)
    }

    /// A volume record's 48-byte header, checked with its volume's salt: (kind: 1 put,
    /// 2 tombstone; id; length; the object's CRC-32C; write time).
    pub fn parse_record_header(header: &[u8; 48], salt: u64) -> Result<(u8, [u8; 16], u32, u32, u64), String> {
        store::parse_record_header(header, salt).map(|h| (h.kind as u8, h.id, h.len, h.checksum.0, h.created))
    }

    /// The record header the store writes (`kind` 1 is a put, anything else a tombstone).
    pub fn encode_record_header(kind: u8, id: [u8; 16], len: u32, checksum: u32, created: u64, salt: u64) -> [u8; 48] {
        let kind = if kind == 1 { store::RecordKind::Put } else { store::RecordKind::Tombstone };
        let header = store::RecordHeader { kind, id, len, checksum: crate::proto::Checksum(checksum), created };
        store::encode_record_header(&header, salt)
    }
}
