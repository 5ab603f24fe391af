//! The master's S3 namespace API (`/api/s3/...`): access keys, grants, buckets and the
//! keys in them, each a JSON call on `db::MetaDb`'s namespace. Every one is internal: the
//! gateway and `aether key` send the cluster token when one is configured.

use tiny_http::{Method, Request};

use super::MasterState;
use crate::http::{self, ApiError, Reply};
use crate::log;
use crate::proto::s3::{
    AccessKeys, BucketRef, Buckets, CompleteParts, CreateKey, CreateUpload, Entry, EntryRef, Grant, KeyRef,
    ListPartsRequest, ListRequest, ListUploadsRequest, PutNewEntry, PutNewPart, Replaced, UploadPart, UploadRef,
};
use crate::proto::StatusOk;

/// Why a master without a cluster token serves no S3 namespace.
pub const NO_TOKEN: &str = "the S3 namespace (buckets, access keys and their secrets) is served only by a master \
     with a cluster token; start the master, every datanode and `aether s3` with --cluster-token \
     (or AETHER_CLUSTER_TOKEN), and give it to `aether key` too";

/// The most keys one listing page may ask for (S3's own limit).
pub const MAX_LIST_KEYS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Endpoint {
    CreateKey,
    ListKeys,
    GetKey,
    DeleteKey,
    Grant,
    ListBuckets,
    CreateBucket,
    GetBucket,
    DeleteBucket,
    GetEntry,
    PutEntry,
    PutNewEntry,
    DeleteEntry,
    ListEntries,
    CreateUpload,
    PutPart,
    PutNewPart,
    CompleteUpload,
    AbortUpload,
    ListParts,
    ListUploads,
}

impl S3Endpoint {
    pub fn parse(method: &Method, path: &str) -> Result<S3Endpoint, ApiError> {
        let endpoint = match path {
            "/api/s3/keys" if matches!(method, Method::Get | Method::Head) => return Ok(S3Endpoint::ListKeys),
            "/api/s3/keys" => return Err(ApiError::method_not_allowed(method, path, "GET")),
            "/api/s3/keys/create" => S3Endpoint::CreateKey,
            "/api/s3/keys/get" => S3Endpoint::GetKey,
            "/api/s3/keys/delete" => S3Endpoint::DeleteKey,
            "/api/s3/grants" => S3Endpoint::Grant,
            "/api/s3/buckets/list" => S3Endpoint::ListBuckets,
            "/api/s3/buckets/create" => S3Endpoint::CreateBucket,
            "/api/s3/buckets/get" => S3Endpoint::GetBucket,
            "/api/s3/buckets/delete" => S3Endpoint::DeleteBucket,
            "/api/s3/objects/get" => S3Endpoint::GetEntry,
            "/api/s3/objects/put" => S3Endpoint::PutEntry,
            "/api/s3/objects/put_new" => S3Endpoint::PutNewEntry,
            "/api/s3/objects/delete" => S3Endpoint::DeleteEntry,
            "/api/s3/objects/list" => S3Endpoint::ListEntries,
            "/api/s3/uploads/create" => S3Endpoint::CreateUpload,
            "/api/s3/uploads/part" => S3Endpoint::PutPart,
            "/api/s3/uploads/part_new" => S3Endpoint::PutNewPart,
            "/api/s3/uploads/complete" => S3Endpoint::CompleteUpload,
            "/api/s3/uploads/abort" => S3Endpoint::AbortUpload,
            "/api/s3/uploads/parts" => S3Endpoint::ListParts,
            "/api/s3/uploads/list" => S3Endpoint::ListUploads,
            _ => return Err(ApiError::no_route(path)),
        };
        if *method == Method::Post {
            Ok(endpoint)
        } else {
            Err(ApiError::method_not_allowed(method, path, "POST"))
        }
    }
}

impl MasterState {
    pub(super) fn dispatch_s3(&self, endpoint: S3Endpoint, request: &mut Request) -> Result<Reply, ApiError> {
        // The namespace holds every access key's secret: it is never open to anyone who can
        // reach the port. The cluster token was checked already, as for every internal call.
        if self.config.cluster_token.is_none() {
            match &self.config.namespace_token {
                Some(token) => http::check_token(request, Some(token))?,
                None => return Err(ApiError::new(403, NO_TOKEN)),
            }
        }
        let ok = || Ok(http::json_reply(200, &StatusOk::ok()));
        match endpoint {
            S3Endpoint::CreateKey => {
                let body: CreateKey = http::read_json(request, r#"{"name": "backup"}"#)?;
                let key = self.db.create_access_key(&body.name)?;
                log::info("master", &format!("access key {} ({}) created", key.id, key.name));
                Ok(http::json_reply(200, &key))
            }
            S3Endpoint::ListKeys => Ok(http::json_reply(200, &AccessKeys { keys: self.db.access_keys()? })),
            S3Endpoint::GetKey => {
                let body: KeyRef = http::read_json(request, r#"{"id": "AK..."}"#)?;
                Ok(http::json_reply(200, &self.db.access_key(&body.id)?))
            }
            S3Endpoint::DeleteKey => {
                let body: KeyRef = http::read_json(request, r#"{"id": "AK..."}"#)?;
                self.db.delete_access_key(&body.id)?;
                log::info("master", &format!("access key {} deleted", body.id));
                ok()
            }
            S3Endpoint::Grant => {
                let body: Grant =
                    http::read_json(request, r#"{"key": "AK...", "bucket": "name", "access": "read|write|owner"}"#)?;
                self.db.grant(&body.key, &body.bucket, body.access)?;
                log::info(
                    "master",
                    &format!("access key {} may now {} bucket {}", body.key, body.access.as_str(), body.bucket),
                );
                ok()
            }
            S3Endpoint::ListBuckets => {
                let body: KeyRef = http::read_json(request, r#"{"id": "AK..."}"#)?;
                Ok(http::json_reply(200, &Buckets { buckets: self.db.buckets_of(&body.id)? }))
            }
            S3Endpoint::CreateBucket => {
                let body: BucketRef = http::read_json(request, r#"{"bucket": "name", "key": "AK..."}"#)?;
                let bucket = self.db.create_bucket(&body.bucket, &body.key)?;
                log::info("master", &format!("bucket {} created by {}", bucket.name, bucket.owner));
                Ok(http::json_reply(200, &bucket))
            }
            S3Endpoint::GetBucket => {
                let body: BucketRef = http::read_json(request, r#"{"bucket": "name", "key": "AK..."}"#)?;
                Ok(http::json_reply(200, &self.db.bucket(&body.bucket, &body.key)?))
            }
            S3Endpoint::DeleteBucket => {
                let body: BucketRef = http::read_json(request, r#"{"bucket": "name"}"#)?;
                self.db.delete_bucket(&body.bucket)?;
                log::info("master", &format!("bucket {} deleted", body.bucket));
                ok()
            }
            S3Endpoint::GetEntry => {
                let body: EntryRef = http::read_json(request, r#"{"bucket": "name", "key": "a/b"}"#)?;
                Ok(http::json_reply(200, &self.db.entry(&body.bucket, &body.key)?))
            }
            S3Endpoint::PutEntry => {
                let body: Entry = http::read_json(request, "an S3 entry")?;
                let replaced = self.db.put_entry(body)?;
                Ok(http::json_reply(200, &Replaced { replaced }))
            }
            S3Endpoint::PutNewEntry => {
                let body: PutNewEntry = http::read_json(request, r#"{"entry": {...}, "receipts": [...]}"#)?;
                let replaced = self.put_new_entry(body)?;
                Ok(http::json_reply(200, &Replaced { replaced }))
            }
            S3Endpoint::DeleteEntry => {
                let body: EntryRef = http::read_json(request, r#"{"bucket": "name", "key": "a/b"}"#)?;
                let replaced = self.db.delete_entry(&body.bucket, &body.key)?;
                Ok(http::json_reply(200, &Replaced { replaced }))
            }
            S3Endpoint::ListEntries => {
                let mut body: ListRequest =
                    http::read_json(request, r#"{"bucket": "name", "prefix": "", "max_keys": 1000}"#)?;
                body.max_keys = body.max_keys.min(MAX_LIST_KEYS);
                Ok(http::json_reply(200, &self.db.list_entries(&body)?))
            }
            S3Endpoint::CreateUpload => {
                let body: CreateUpload = http::read_json(request, r#"{"bucket": "name", "key": "a/b"}"#)?;
                let upload_id = self.db.create_upload(body.clone())?;
                Ok(http::json_reply(200, &UploadRef { bucket: body.bucket, key: body.key, upload_id }))
            }
            S3Endpoint::PutPart => {
                let body: UploadPart = http::read_json(request, "a part")?;
                self.db.put_part(body)?;
                ok()
            }
            S3Endpoint::PutNewPart => {
                let body: PutNewPart = http::read_json(request, r#"{"part": {...}, "receipts": [...]}"#)?;
                self.put_new_part(body)?;
                ok()
            }
            S3Endpoint::CompleteUpload => {
                let body: CompleteParts = http::read_json_limited(request, 4 << 20, "the parts")?;
                Ok(http::json_reply(200, &self.db.complete_upload(body)?))
            }
            S3Endpoint::AbortUpload => {
                let body: UploadRef = http::read_json(request, r#"{"bucket", "key", "upload_id"}"#)?;
                self.db.abort_upload(&body.upload_id, &body.bucket, &body.key)?;
                ok()
            }
            S3Endpoint::ListParts => {
                let mut body: ListPartsRequest =
                    http::read_json(request, r#"{"bucket", "key", "upload_id", "after": 0, "max_parts": 1000}"#)?;
                body.max_parts = body.max_parts.min(MAX_LIST_KEYS);
                Ok(http::json_reply(200, &self.db.list_parts(&body)?))
            }
            S3Endpoint::ListUploads => {
                let mut body: ListUploadsRequest =
                    http::read_json(request, r#"{"bucket": "name", "prefix": "", "max_uploads": 1000}"#)?;
                body.max_uploads = body.max_uploads.min(MAX_LIST_KEYS);
                Ok(http::json_reply(200, &self.db.list_uploads(&body)?))
            }
        }
    }
}
