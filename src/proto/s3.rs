//! Wire types of the master's S3 namespace API (`/api/s3/...`): buckets, keys in them,
//! access keys and grants. The S3 gateway is their only user besides `aether key`; all of
//! them are internal (the cluster token is required when one is configured).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a grant lets an access key do in a bucket; owner includes write, write includes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Owner,
}

impl Access {
    pub fn parse(text: &str) -> Result<Access, String> {
        match text {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "owner" => Ok(Access::Owner),
            other => Err(format!("unknown access {other:?}; use read, write or owner")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Owner => "owner",
        }
    }
}

/// An access key. `secret` is only sent on creation and to the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessKeys {
    pub keys: Vec<AccessKey>,
}

/// `POST /api/s3/keys/create`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateKey {
    pub name: String,
}

/// A request naming one access key (`keys/get`, `keys/delete`, `buckets/list`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRef {
    pub id: String,
}

/// `POST /api/s3/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub bucket: String,
    pub access: Access,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bucket {
    pub name: String,
    pub owner: String,
    pub created_ms: i64,
    /// What the asking key may do in it (`buckets/get` with a key), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Buckets {
    pub buckets: Vec<Bucket>,
}

/// A bucket, and the access key asking about it or creating it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketRef {
    pub bucket: String,
    #[serde(default)]
    pub key: String,
}

/// A key in a bucket (`objects/get`, `objects/delete`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryRef {
    pub bucket: String,
    pub key: String,
}

/// What a key in a bucket points at: an immutable, complete object and what S3 says of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub bucket: String,
    pub key: String,
    pub objectid: String,
    pub size: u64,
    /// Without quotes: the hex MD5 of the body for a single PUT.
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `x-amz-meta-*` headers, names lowercase without the prefix.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Set by the master when it records the entry.
    #[serde(default)]
    pub modified_ms: i64,
    /// On `objects/put`: write only if the key holds no object yet (`If-None-Match: *`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_none_match: bool,
    /// On `objects/put`: write only if the key's ETag is this one (`If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
    /// A multipart object: its parts in order (`objectid` is the first's). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartObject>,
}

/// One part of a multipart object: an object of its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartObject {
    pub objectid: String,
    pub size: u64,
}

/// `POST /api/s3/uploads/create`: a multipart upload of `key`, with what its object will say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateUpload {
    pub bucket: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRef {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// `POST /api/s3/uploads/part`: part `number` of an upload is this complete object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadPart {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub number: u32,
    pub objectid: String,
    pub size: u64,
    pub etag: String,
}

/// `POST /api/s3/uploads/complete`: the parts, by number and ETag, in the client's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteParts {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub parts: Vec<(u32, String)>,
}

/// The answer to `objects/put` and `objects/delete`: the object the key pointed at before,
/// now scheduled for deletion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replaced {
    pub replaced: Option<String>,
}

/// `POST /api/s3/objects/list`: one page of keys in key order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ListRequest {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub delimiter: String,
    /// Only keys (and common prefixes) after this one.
    #[serde(default)]
    pub after: String,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ListPage {
    pub entries: Vec<Entry>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix of the page: where the next page starts after.
    pub last: Option<String>,
}
