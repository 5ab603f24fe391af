//! Wire types: every JSON body that crosses between clients, the master and datanodes.
//! Field names are the original AetherStore API's (`objectid`, `nodes`, `replicas`), so
//! its curl walk-through keeps working; fields added since are optional on input.

use serde::{Deserialize, Serialize};

/// `POST /api/node/register`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterNode {
    pub id: String,
    pub address: String,
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

/// The placement for a new object: upload its bytes to every node listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placement {
    pub objectid: String,
    pub nodes: Vec<String>,
}

/// `POST /api/upload/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteUpload {
    pub objectid: String,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub state: String,
    pub registered_at: String,
    pub last_seen: String,
    pub replicas: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// `GET /health` on either server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub status: String,
}

/// A datanode's answer to a stored `PUT /objects/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    pub objectid: String,
    pub size: u64,
}

/// Every error body: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// An object id: a UUID, always written in its canonical lower-case hyphenated form, so
/// that one object has exactly one name on every node and on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(uuid::Uuid);

impl ObjectId {
    pub fn new_random() -> ObjectId {
        ObjectId(uuid::Uuid::new_v4())
    }

    /// Accepts any UUID spelling; anything else (including every path trick) is rejected.
    pub fn parse(text: &str) -> Result<ObjectId, String> {
        uuid::Uuid::try_parse(text).map(ObjectId).map_err(|_| {
            let shown: String = text.chars().take(80).collect();
            format!("invalid object id {shown:?}: expected a UUID such as 0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03")
        })
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
