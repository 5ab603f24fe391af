//! Wire types: every JSON body that crosses between clients, the master and datanodes.
//! Field names are the original AetherStore API's (`objectid`, `nodes`, `replicas`), so
//! its curl walk-through keeps working; fields added since are optional on input.

use serde::{Deserialize, Serialize};

pub mod s3;

/// `POST /api/node/register`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterNode {
    pub id: String,
    pub address: String,
    /// The datanode's `aether --version`; absent from older nodes and curl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The zone (rack, room, site) the node is in, from `--zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The answer of control-plane writes that have nothing else to say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusOk {
    pub status: String,
}

impl StatusOk {
    pub fn ok() -> StatusOk {
        StatusOk { status: "OK".to_string() }
    }
}

/// `POST /api/upload/init`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitUpload {
    pub size: u64,
    /// How many replicas to place; the master's replication factor when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<usize>,
}

/// `POST /api/upload/init_batch`: `count` placements at once, each what `init` answers
/// for an upload of `size` bytes, so a client with many small uploads asks once for many.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitUploadBatch {
    pub size: u64,
    /// How many replicas each placement has; the master's replication factor when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<usize>,
    /// How many placements, 1 to `MAX_INIT_BATCH`.
    pub count: usize,
}

/// The most placements one `init_batch` hands out.
pub const MAX_INIT_BATCH: usize = 64;

/// The answer of `POST /api/upload/init_batch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlacementBatch {
    /// Each with an id of its own, issued now: it completes only within the grace.
    pub placements: Vec<Placement>,
    /// The master's `--upload-grace` in milliseconds, so a client keeping placements
    /// for later knows how soon they must be used.
    pub upload_grace_ms: u64,
}

/// The placement for a new object: upload its bytes to every node listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placement {
    pub objectid: String,
    pub nodes: Vec<String>,
    /// In a cluster with a token, the master's `ChainSignature` of these nodes, in its
    /// header form: the upload's first datanode forwards only along a signed chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `POST /api/upload/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteUpload {
    pub objectid: String,
    /// Receipts of the datanodes that stored copies; without them the master relies on
    /// the datanodes' reports or asks them itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<Receipt>,
}

/// `POST /api/upload/complete_batch`: several uploads' `complete` in one request and one
/// durable write, for a client finishing many small uploads at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteBatch {
    /// 1 to `MAX_COMPLETE_BATCH` uploads, each with its receipts.
    pub uploads: Vec<CompleteUpload>,
}

/// The most uploads one `complete_batch` completes.
pub const MAX_COMPLETE_BATCH: usize = 64;

/// The answer of `POST /api/upload/complete_batch`: for each upload, in the order asked,
/// whether it is now complete. One that is not (its receipts make no quorum, its id is
/// not valid, its upload expired...) is left as it was: its own `complete` finishes it the
/// slow way or says why it cannot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteBatchAnswer {
    pub completed: Vec<bool>,
}

/// `GET /api/objects/{id}`: where a completed object's replicas are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectInfo {
    pub objectid: String,
    pub size: u64,
    pub status: String,
    /// Addresses of the datanodes that hold it, as in the original API.
    pub replicas: Vec<String>,
    /// The same replicas with their node ids.
    #[serde(default)]
    pub replica_nodes: Vec<ReplicaInfo>,
    #[serde(default)]
    pub checksum: Option<Checksum>,
    pub created_at: String,
    #[serde(default)]
    pub completed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub node: String,
    pub address: String,
    pub state: String,
}

/// One entry of `GET /api/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub state: String,
    pub registered_at: String,
    pub last_seen: String,
    /// Seconds since the last registration or heartbeat.
    pub last_seen_secs_ago: f64,
    pub replicas: u64,
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
    #[serde(default)]
    pub free_bytes: Option<u64>,
    #[serde(default)]
    pub object_count: Option<u64>,
    /// What the node runs, as it last said (in memory: unknown right after a master restart).
    #[serde(default)]
    pub version: Option<String>,
    /// Its zone (rack, room, site), if it named one.
    #[serde(default)]
    pub zone: Option<String>,
    /// `draining` or `drained` once an operator drained it; absent otherwise.
    #[serde(default)]
    pub drain: Option<String>,
}

/// The answer of `POST /api/nodes/{id}/drain` and `/undrain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainStatus {
    pub id: String,
    /// `draining`, `drained`, or absent when the drain was cancelled.
    pub drain: Option<String>,
    /// Confirmed copies still on the node.
    pub copies_left: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// `GET /health` on either server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    /// What the server runs (`crate::VERSION`).
    #[serde(default)]
    pub version: String,
}

impl Health {
    pub fn ok() -> Health {
        Health { status: "ok".to_string(), version: crate::VERSION.to_string() }
    }
}

/// A datanode's answer to a stored `PUT /objects/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    pub objectid: String,
    pub size: u64,
    pub checksum: Checksum,
    /// Every node of the chain, this one first.
    #[serde(default)]
    pub replicas: Vec<ReplicaResult>,
}

/// Every error body: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// Header carrying an object's checksum (`crc32c:` and 8 hex digits) on datanode answers,
/// and on uploads that must arrive with exactly that checksum.
pub const CHECKSUM_HEADER: &str = "X-Aether-Checksum";
/// Header of a chained upload: the addresses the receiving node forwards the bytes to.
pub const CHAIN_HEADER: &str = "X-Aether-Chain";
/// Header carrying the cluster token on internal requests.
pub const TOKEN_HEADER: &str = "X-Aether-Token";
/// Header of a chained upload carrying the master's `ChainSignature` of its placement.
pub const CHAIN_SIGNATURE_HEADER: &str = "X-Aether-Chain-Signature";

/// A CRC-32C of an object's bytes, computed while streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checksum(pub u32);

impl Checksum {
    /// The checksum of `bytes` alone.
    pub fn of(bytes: &[u8]) -> Checksum {
        let mut sum = Checksum::default();
        sum.update(bytes);
        sum
    }

    /// Goes on with `bytes`, as if they followed the bytes summed so far.
    pub fn update(&mut self, bytes: &[u8]) {
        // crc-fast picks the widest instructions the CPU has (VPCLMULQDQ folding with
        // AVX-512): twice the rate of the crc32c crate's SSE 4.2 loop from 4 KiB on, and
        // every byte of every object is summed on each node it passes and by the client.
        let mut digest = crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!self.0));
        digest.update(bytes);
        self.0 = digest.finalize() as u32;
    }

    pub fn parse(text: &str) -> Result<Checksum, String> {
        text.trim()
            .strip_prefix("crc32c:")
            .filter(|hex| hex.len() == 8)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(Checksum)
            .ok_or_else(|| format!("invalid checksum {text:?}: expected crc32c: and 8 hex digits"))
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "crc32c:{:08x}", self.0)
    }
}

impl Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Checksum, D::Error> {
        let text = String::deserialize(deserializer)?;
        Checksum::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One replica as a datanode holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaState {
    pub objectid: String,
    pub size: u64,
    pub checksum: Checksum,
}

/// The outcome of one node of a chained upload, as the first node reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaResult {
    pub node: String,
    /// 201 when stored; the node's error status, or 502 when it could not be reached.
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// The storing node's signed word that it holds the copy, for `complete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A datanode's receipt for a stored copy: an HMAC-SHA256, keyed with the cluster token,
/// over the object id, size, checksum and node id. The client hands receipts to
/// `complete`, so the master confirms copies without a round trip to each node, and
/// without taking the client's word: only a holder of the token can make one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    pub node: String,
    pub size: u64,
    pub checksum: Checksum,
    pub mac: String,
}

/// The key of an open cluster's receipts. Such receipts prove only as much as the open
/// report endpoint does: anyone could have reported the copy.
const OPEN_CLUSTER_KEY: &[u8] = b"aetherstore open cluster";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Receipt {
    fn mac(token: Option<&str>, objectid: &str, node: &str, size: u64, checksum: Checksum) -> HmacSha256 {
        use hmac::Mac;
        let key = token.map_or(OPEN_CLUSTER_KEY, str::as_bytes);
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(format!("{objectid}\n{node}\n{size}\n{checksum}").as_bytes());
        mac
    }

    pub fn sign(token: Option<&str>, objectid: &str, node: &str, size: u64, checksum: Checksum) -> Receipt {
        use hmac::Mac;
        let tag = Receipt::mac(token, objectid, node, size, checksum).finalize().into_bytes();
        let mac = tag.iter().map(|b| format!("{b:02x}")).collect();
        Receipt { node: node.to_string(), size, checksum, mac }
    }

    /// Whether this receipt was signed with `token` for `objectid`.
    pub fn verify(&self, token: Option<&str>, objectid: &str) -> bool {
        use hmac::Mac;
        let bytes: Option<Vec<u8>> = (0..self.mac.len())
            .step_by(2)
            .map(|i| self.mac.get(i..i + 2).and_then(|hex| u8::from_str_radix(hex, 16).ok()))
            .collect();
        let Some(bytes) = bytes else { return false };
        Receipt::mac(token, objectid, &self.node, self.size, self.checksum).verify_slice(&bytes).is_ok()
    }
}

/// The master's signature on a placement, in a cluster with a token: an HMAC-SHA256, keyed
/// with a key derived from the token, over the object id, an expiry time and the placed
/// nodes' addresses. A datanode forwards a chained upload only to addresses that a valid,
/// unexpired signature for that object names, so no client can make it connect to (and
/// send the token to) an address of its choosing. Every hop passes the header on as it
/// came, so any order or part of the placed nodes may form the chain.
///
/// In the header it reads `EXPIRES MAC NODE,NODE,..`: unix seconds, 64 hex digits, and
/// the addresses as the placement lists them (addresses hold no spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSignature {
    pub expires: u64,
    pub nodes: Vec<String>,
    mac: Vec<u8>,
}

impl ChainSignature {
    fn mac(token: &str, objectid: &str, expires: u64, nodes: &[String]) -> HmacSha256 {
        use hmac::Mac;
        // A key of its own, so that no chain signature can pass for a receipt or the
        // token itself, whatever the bytes signed.
        let mut derive = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
        derive.update(b"aetherstore chain signature key v1");
        let key = derive.finalize().into_bytes();
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(format!("{objectid}\n{expires}\n{}", nodes.join(",")).as_bytes());
        mac
    }

    pub fn sign(token: &str, objectid: &str, nodes: &[String], expires: u64) -> ChainSignature {
        use hmac::Mac;
        let mac = ChainSignature::mac(token, objectid, expires, nodes).finalize().into_bytes().to_vec();
        ChainSignature { expires, nodes: nodes.to_vec(), mac }
    }

    /// Checks that the master signed this for `objectid` with `token` and that it has not
    /// expired at `now` (unix seconds); the error says which.
    pub fn verify(&self, token: &str, objectid: &str, now: u64) -> Result<(), String> {
        use hmac::Mac;
        if ChainSignature::mac(token, objectid, self.expires, &self.nodes).verify_slice(&self.mac).is_err() {
            return Err(format!(
                "the {CHAIN_SIGNATURE_HEADER} header is not the master's signature of this object's placement"
            ));
        }
        if now > self.expires {
            return Err(format!(
                "the placement signature expired {} s ago; ask the master for a new placement",
                now - self.expires
            ));
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<ChainSignature, String> {
        let bad = || {
            let shown: String = text.chars().take(80).collect();
            format!(
                "invalid {CHAIN_SIGNATURE_HEADER} {shown:?}: expected EXPIRES MAC NODE,NODE,.. as the master gave it"
            )
        };
        let mut parts = text.split_whitespace();
        let (Some(expires), Some(mac), Some(nodes), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let expires = expires.parse().map_err(|_| bad())?;
        let mac = (mac.len() == 64).then(|| from_hex(mac)).flatten().ok_or_else(bad)?;
        let nodes = nodes.split(',').map(normalize_address).collect::<Result<_, _>>().map_err(|_| bad())?;
        Ok(ChainSignature { expires, nodes, mac })
    }

    /// Whether `address` is one of the signed nodes.
    pub fn names(&self, address: &str) -> bool {
        self.nodes.iter().any(|node| node == address)
    }
}

impl std::fmt::Display for ChainSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mac: String = self.mac.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "{} {mac} {}", self.expires, self.nodes.join(","))
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|hex| u8::from_str_radix(hex, 16).ok())).collect()
}

/// `POST /api/node/heartbeat`: a datanode says it is alive and how full it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub id: String,
    pub address: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub object_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The state of the node's data disk; absent (from an older datanode) means `ok`.
    #[serde(default, skip_serializing_if = "DiskState::is_ok")]
    pub disk: DiskState,
    /// Why the disk is not `ok`, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_error: Option<String>,
    /// The node's zone (rack, room, site), from `--zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// What a datanode's own checks found its data disk to be.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DiskState {
    /// Writes, fsyncs and listings work, and the data directory is the one it started with.
    #[default]
    Ok,
    /// Writes fail with "read-only file system"; reads may still work.
    ReadOnly,
    /// The data directory is gone, replaced, or failing.
    Failed,
}

impl DiskState {
    pub fn is_ok(&self) -> bool {
        *self == DiskState::Ok
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Ok => "ok",
            DiskState::ReadOnly => "read-only",
            DiskState::Failed => "failed",
        }
    }
}

/// `POST /api/replicas/report`: replicas a datanode has just stored, or found corrupt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaReport {
    pub node: String,
    #[serde(default)]
    pub stored: Vec<ReplicaState>,
    /// Object ids whose local copy failed verification and was quarantined.
    #[serde(default)]
    pub corrupt: Vec<String>,
}

/// `POST /api/node/inventory`: one batch of a datanode's full list of objects. A scan is
/// a series of batches with one `scan` id, the last with `done: true`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    pub node: String,
    pub scan: String,
    pub done: bool,
    pub replicas: Vec<InventoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InventoryEntry {
    pub objectid: String,
    pub size: u64,
    pub checksum: Checksum,
    /// Seconds since the file was written, so the master can spare fresh uploads.
    pub age_secs: u64,
}

/// The master's answer to heartbeats, reports and inventories: objects the node should
/// delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct NodeCommands {
    #[serde(default)]
    pub delete: Vec<String>,
}

/// `POST /internal/replicate` on a datanode: copy these objects to `target`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicateRequest {
    pub target: String,
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicateResult {
    pub objectid: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The target's receipt for the copy it stored, so the master can count it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// The answer of `POST /internal/replicate`: one result per object, in the order asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicateResults {
    pub results: Vec<ReplicateResult>,
}

/// `POST /internal/delete` on a datanode: remove these objects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeleteRequest {
    pub objects: Vec<String>,
}

/// `POST /api/upload/replace`: more nodes for an upload whose chain lost some.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplaceNodes {
    pub objectid: String,
    /// Addresses that failed; they are dropped from the placement.
    #[serde(default)]
    pub failed: Vec<String>,
    /// Nodes of the placement the client still tries: the answer's signature names them
    /// too, so that one chain can take them and the new nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    pub count: usize,
}

/// `GET /api/cluster`: a summary for operators and benchmarks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    pub nodes_alive: u64,
    pub nodes_suspect: u64,
    pub nodes_dead: u64,
    /// Nodes that heartbeat but whose disk failed or turned read-only: nothing is placed
    /// there and their copies are re-created elsewhere.
    #[serde(default)]
    pub nodes_failed: u64,
    pub objects: u64,
    pub under_replicated: u64,
    pub repairs_in_flight: u64,
    pub pending_deletes: u64,
    /// Nodes being drained, and the confirmed copies still on them.
    #[serde(default)]
    pub nodes_draining: u64,
    #[serde(default)]
    pub copies_to_move: u64,
    /// Drained nodes, waiting for `aether node remove`.
    #[serde(default)]
    pub nodes_drained: u64,
    /// What the master runs.
    #[serde(default)]
    pub version: String,
}

/// An object id: a UUID, always written in its canonical lower-case hyphenated form, so
/// that one object has exactly one name on every node and on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(uuid::Uuid);

impl ObjectId {
    pub fn new_random() -> ObjectId {
        ObjectId(uuid::Uuid::new_v4())
    }

    /// The id with these 16 bytes (the master's upload ids build their own).
    pub fn from_bytes(bytes: [u8; 16]) -> ObjectId {
        ObjectId(uuid::Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Accepts any UUID spelling; anything else (including every path trick) is rejected.
    pub fn parse(text: &str) -> Result<ObjectId, String> {
        uuid::Uuid::try_parse(text).map(ObjectId).map_err(|_| {
            let shown: String = text.chars().take(80).collect();
            format!("invalid object id {shown:?}: expected a UUID such as 0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03")
        })
    }

    /// The id's 16 bytes, as the datanode's volume records and index keep it.
    pub fn to_bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Node ids name datanodes in logs, URLs and the master's tables: short and plain.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid node id {id:?}: use 1 to 64 letters, digits, '.', '_' or '-', e.g. \"datanode-1\""))
    }
}

/// Node addresses are base URLs such as `http://10.0.0.5:42101`; a trailing slash is
/// dropped so that one node has one spelling.
pub fn normalize_address(address: &str) -> Result<String, String> {
    let trimmed = address.trim().trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('/') && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_string())
        }
        _ => Err(format!("invalid node address {address:?}: expected a base URL such as \"http://10.0.0.5:42101\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_canonical_and_strict() {
        let id = ObjectId::parse("0B7A3C1E-5D2F-4C8E-9A61-2F4D8E9B1C03").unwrap();
        assert_eq!(id.to_string(), "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03");
        for bad in ["", "..", "../../etc/passwd", "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c0", "x/y", "%2e%2e"] {
            assert!(ObjectId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn checksums_round_trip() {
        let mut sum = Checksum::default();
        sum.update(b"123456789");
        assert_eq!(sum.to_string(), "crc32c:e3069283");
        assert_eq!(Checksum::parse("crc32c:e3069283"), Ok(sum));
        assert!(Checksum::parse("md5:e3069283").is_err());
        assert!(Checksum::parse("crc32c:e30692").is_err());
    }

    /// Every stored object, record header and index file carries these sums: whatever
    /// computes them must give the standard CRC-32C (RFC 3720's vectors), the same in one
    /// piece as in any pieces, small (a scalar loop) or large (the SIMD one).
    #[test]
    fn checksums_are_crc32c_however_the_bytes_come() {
        assert_eq!(Checksum::of(b""), Checksum(0));
        assert_eq!(Checksum::of(&[0u8; 32]), Checksum(0x8a91_36aa));
        assert_eq!(Checksum::of(&[0xffu8; 32]), Checksum(0x62a8_ab43));
        assert_eq!(Checksum::of(&(0..32).collect::<Vec<u8>>()), Checksum(0x46dd_794e));
        assert_eq!(Checksum::of(&(0..32).rev().collect::<Vec<u8>>()), Checksum(0x113f_db5c));
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let whole = Checksum::of(&bytes);
        for piece in [1, 7, 48, 4095, 4096, 65_537, 1 << 20] {
            let mut sum = Checksum::default();
            for chunk in bytes.chunks(piece) {
                sum.update(chunk);
            }
            assert_eq!(sum, whole, "in pieces of {piece}");
        }
    }

    #[test]
    fn receipts_verify_only_with_their_key_and_object() {
        let receipt = Receipt::sign(Some("token"), "obj", "datanode-1", 5, Checksum(9));
        assert!(receipt.verify(Some("token"), "obj"));
        assert!(!receipt.verify(Some("other"), "obj"));
        assert!(!receipt.verify(None, "obj"));
        assert!(!receipt.verify(Some("token"), "another-obj"));
        let forged = Receipt { size: 6, ..receipt.clone() };
        assert!(!forged.verify(Some("token"), "obj"));
        let garbled = Receipt { mac: "zz".into(), ..receipt };
        assert!(!garbled.verify(Some("token"), "obj"));
        assert!(Receipt::sign(None, "obj", "n", 1, Checksum(1)).verify(None, "obj"));
    }

    #[test]
    fn chain_signatures_verify_only_unchanged_and_in_time() {
        let nodes = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let signed = ChainSignature::sign("token", "obj", &nodes, 1000);
        let header = signed.to_string();
        let parsed = ChainSignature::parse(&header).unwrap();
        assert_eq!(parsed, signed);
        assert!(parsed.verify("token", "obj", 1000).is_ok());
        assert!(parsed.names("http://b:2") && !parsed.names("http://c:3"));
        assert!(parsed.verify("token", "obj", 1001).unwrap_err().contains("expired"));
        assert!(parsed.verify("other", "obj", 10).is_err());
        assert!(parsed.verify("token", "another-obj", 10).is_err());
        let tampered = header.replace("http://b:2", "http://evil:2");
        assert!(ChainSignature::parse(&tampered).unwrap().verify("token", "obj", 10).is_err());
        let later = header.replacen("1000", "9999", 1);
        assert!(ChainSignature::parse(&later).unwrap().verify("token", "obj", 10).is_err());
        for bad in ["", "1000", "x abc http://a:1", "1000 zz http://a:1", &format!("{header} extra")] {
            assert!(ChainSignature::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn node_ids_and_addresses() {
        assert!(validate_node_id("datanode-1").is_ok());
        for bad in ["", "a/b", "../x", "has space", &"x".repeat(65)] {
            assert!(validate_node_id(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(normalize_address("http://localhost:42101/").unwrap(), "http://localhost:42101");
        for bad in ["localhost:42101", "http://", "ftp://x", "http://a/b", "http://a b"] {
            assert!(normalize_address(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
