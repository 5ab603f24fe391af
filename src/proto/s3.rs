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
    /// The checksum the client sent (verified) or asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
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
    /// `x-amz-checksum-algorithm`: every part must carry a checksum of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<ChecksumAlgorithm>,
    /// `x-amz-checksum-type: FULL_OBJECT`: the completed object's checksum is of its whole body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_object: bool,
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
    /// The part's checksum, verified against its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
}

/// `POST /api/s3/uploads/complete`: the parts, by number and ETag, in the client's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteParts {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub parts: Vec<(u32, String)>,
    /// The checksums the client listed for its parts (by part number), to compare with
    /// the stored ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_checksums: Vec<(u32, Checksum)>,
    /// A full-object checksum (CRCs) the client computed over the whole body, stored as given
    /// once the parts' CRCs combine to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// Complete only if the key holds no object yet (`If-None-Match: *`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_none_match: bool,
    /// Complete only if the key's ETag is this one (`If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
}

/// `POST /api/s3/objects/put_new`: an S3 PUT's one durable master write, completing the
/// upload `entry.objectid` from its datanodes' receipts and pointing the key at it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutNewEntry {
    pub entry: Entry,
    #[serde(default)]
    pub receipts: Vec<crate::proto::Receipt>,
}

/// `POST /api/s3/uploads/part_new`: an S3 UploadPart's one durable master write,
/// completing the upload `part.objectid` from its datanodes' receipts and recording it as
/// the part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutNewPart {
    pub part: UploadPart,
    #[serde(default)]
    pub receipts: Vec<crate::proto::Receipt>,
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

/// The checksum algorithms S3 clients send (`x-amz-checksum-*`, `x-amz-checksum-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 5] = [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Crc64nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ];

    /// As S3 names it: `CRC32`, `CRC64NVME`, `SHA256`, ...
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc64nvme => "CRC64NVME",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }

    pub fn parse(name: &str) -> Option<ChecksumAlgorithm> {
        ChecksumAlgorithm::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }

    /// `x-amz-checksum-crc32`, ...
    pub fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name().to_ascii_lowercase())
    }

    /// The algorithm of a checksum header (any case), if it is one.
    pub fn from_header(name: &str) -> Option<ChecksumAlgorithm> {
        let lower = name.to_ascii_lowercase();
        ChecksumAlgorithm::parse(lower.strip_prefix("x-amz-checksum-")?)
    }

    /// CRCs combine, so a whole multipart object's CRC can be given (`FULL_OBJECT`);
    /// SHAs only as a checksum of the parts' checksums (`COMPOSITE`).
    pub fn allows_full_object(self) -> bool {
        matches!(self, ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c | ChecksumAlgorithm::Crc64nvme)
    }
}

/// A checksum kept with an object or a part: its algorithm and base64 value; a multipart
/// object's is `COMPOSITE` (the checksum of its parts' checksums, value ending `-N`) or
/// `FULL_OBJECT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub composite: bool,
}

/// `POST /api/s3/uploads/parts`: a page of an upload's parts after part `after`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListPartsRequest {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    #[serde(default)]
    pub after: u32,
    pub max_parts: usize,
}

/// One uploaded part, as ListParts shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    pub modified_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PartsPage {
    pub parts: Vec<PartInfo>,
    pub truncated: bool,
    /// The algorithm the upload was created with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<ChecksumAlgorithm>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_object: bool,
}

/// `POST /api/s3/uploads/list`: a page of a bucket's uploads in progress, by key and then
/// by start time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ListUploadsRequest {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub delimiter: String,
    /// Only uploads of keys after this one (or, with `upload_id_marker`, of this key after that upload).
    #[serde(default)]
    pub key_marker: String,
    #[serde(default)]
    pub upload_id_marker: String,
    pub max_uploads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<ChecksumAlgorithm>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct UploadsPage {
    pub uploads: Vec<UploadInfo>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// Where the next page starts after: a key (or common prefix) and an upload id.
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}
