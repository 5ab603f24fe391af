//! `Client` calls of the master's S3 namespace API, for the gateway and `aether key`.

use std::io::Read;

use super::{Client, ClientError};
use crate::proto::s3::{
    Access, AccessKey, AccessKeys, Bucket, BucketRef, Buckets, CompleteParts, CreateKey, CreateUpload, Entry, EntryRef,
    Grant, KeyRef, ListPage, ListPartsRequest, ListRequest, ListUploadsRequest, PartsPage, PutNewEntry, PutNewPart,
    Replaced, UploadPart, UploadRef, UploadsPage,
};
use crate::proto::{ObjectId, Receipt, StatusOk};

impl Client {
    pub fn create_access_key(&self, name: &str) -> Result<AccessKey, ClientError> {
        self.post("/api/s3/keys/create", &CreateKey { name: name.to_string() })
    }

    pub fn access_keys(&self) -> Result<Vec<AccessKey>, ClientError> {
        let keys: AccessKeys = self.get_json("/api/s3/keys")?;
        Ok(keys.keys)
    }

    /// An access key with its secret.
    pub fn access_key(&self, id: &str) -> Result<AccessKey, ClientError> {
        self.post("/api/s3/keys/get", &KeyRef { id: id.to_string() })
    }

    pub fn delete_access_key(&self, id: &str) -> Result<(), ClientError> {
        let _: StatusOk = self.post("/api/s3/keys/delete", &KeyRef { id: id.to_string() })?;
        Ok(())
    }

    pub fn grant(&self, key: &str, bucket: &str, access: Access) -> Result<(), ClientError> {
        let body = Grant { key: key.to_string(), bucket: bucket.to_string(), access };
        let _: StatusOk = self.post("/api/s3/grants", &body)?;
        Ok(())
    }

    /// The buckets `key` owns or has a grant on.
    pub fn buckets_of(&self, key: &str) -> Result<Vec<Bucket>, ClientError> {
        let buckets: Buckets = self.post("/api/s3/buckets/list", &KeyRef { id: key.to_string() })?;
        Ok(buckets.buckets)
    }

    pub fn create_bucket(&self, bucket: &str, owner: &str) -> Result<Bucket, ClientError> {
        self.post("/api/s3/buckets/create", &BucketRef { bucket: bucket.to_string(), key: owner.to_string() })
    }

    /// A bucket, with what `key` may do in it.
    pub fn bucket(&self, bucket: &str, key: &str) -> Result<Bucket, ClientError> {
        self.post("/api/s3/buckets/get", &BucketRef { bucket: bucket.to_string(), key: key.to_string() })
    }

    pub fn delete_bucket(&self, bucket: &str) -> Result<(), ClientError> {
        let _: StatusOk =
            self.post("/api/s3/buckets/delete", &BucketRef { bucket: bucket.to_string(), key: String::new() })?;
        Ok(())
    }

    pub fn entry(&self, bucket: &str, key: &str) -> Result<Entry, ClientError> {
        self.post("/api/s3/objects/get", &EntryRef { bucket: bucket.to_string(), key: key.to_string() })
    }

    /// Points a key at a complete object; returns the object it pointed at before.
    pub fn put_entry(&self, entry: &Entry) -> Result<Option<String>, ClientError> {
        let replaced: Replaced = self.post("/api/s3/objects/put", entry)?;
        Ok(replaced.replaced)
    }

    /// An S3 PUT's one master write: completes the staged upload `entry.objectid` from
    /// its copies' `receipts` and points the key at it (idempotent: see
    /// `MetaDb::put_new_entry`).
    pub fn put_new_entry(&self, entry: &Entry, receipts: Vec<Receipt>) -> Result<Option<String>, ClientError> {
        let body = PutNewEntry { entry: entry.clone(), receipts };
        let replaced: Replaced = self.post("/api/s3/objects/put_new", &body)?;
        Ok(replaced.replaced)
    }

    pub fn delete_entry(&self, bucket: &str, key: &str) -> Result<Option<String>, ClientError> {
        let replaced: Replaced =
            self.post("/api/s3/objects/delete", &EntryRef { bucket: bucket.to_string(), key: key.to_string() })?;
        Ok(replaced.replaced)
    }

    pub fn list_entries(&self, request: &ListRequest) -> Result<ListPage, ClientError> {
        self.post("/api/s3/objects/list", request)
    }

    pub fn create_multipart(&self, upload: &CreateUpload) -> Result<UploadRef, ClientError> {
        self.post("/api/s3/uploads/create", upload)
    }

    pub fn put_part(&self, part: &UploadPart) -> Result<(), ClientError> {
        let _: StatusOk = self.post("/api/s3/uploads/part", part)?;
        Ok(())
    }

    /// An S3 UploadPart's one master write: completes the staged upload `part.objectid`
    /// from its copies' `receipts` and records it as the part (idempotent).
    pub fn put_new_part(&self, part: &UploadPart, receipts: Vec<Receipt>) -> Result<(), ClientError> {
        let body = PutNewPart { part: part.clone(), receipts };
        let _: StatusOk = self.post("/api/s3/uploads/part_new", &body)?;
        Ok(())
    }

    /// Completes a multipart upload; returns the key's new entry.
    pub fn complete_multipart(&self, parts: &CompleteParts) -> Result<Entry, ClientError> {
        self.post("/api/s3/uploads/complete", parts)
    }

    pub fn abort_multipart(&self, upload: &UploadRef) -> Result<(), ClientError> {
        let _: StatusOk = self.post("/api/s3/uploads/abort", upload)?;
        Ok(())
    }

    pub fn list_parts(&self, request: &ListPartsRequest) -> Result<PartsPage, ClientError> {
        self.post("/api/s3/uploads/parts", request)
    }

    pub fn list_uploads(&self, request: &ListUploadsRequest) -> Result<UploadsPage, ClientError> {
        self.post("/api/s3/uploads/list", request)
    }
}

impl Client {
    /// Opens an object's bytes (or the bytes `first..=last` of it) on the first replica
    /// that answers, for a caller that streams them on. The datanode verifies its copy.
    pub fn open_object(
        &self,
        id: &ObjectId,
        range: Option<(u64, u64)>,
    ) -> Result<Box<dyn Read + Send + Sync>, ClientError> {
        let info = self.object(id)?;
        let mut failures = Vec::new();
        let (first, last, expected) = match range {
            Some((first, last)) => (first, Some(last), (last + 1).saturating_sub(first)),
            None => (0, None, info.size),
        };
        for node in &info.replicas {
            match self.nodes.get_object(node.trim_end_matches('/'), id, first, last, expected) {
                Ok((answer, _)) if range.is_none() || answer.status() == 206 => return Ok(answer.into_reader()),
                Ok((answer, _)) => failures.push(format!("{node}: answered {} to a range", answer.status())),
                Err(e) => failures.push(format!("{node}: {}", e.reason())),
            }
        }
        if failures.is_empty() {
            failures.push("no confirmed replica".to_string());
        }
        Err(ClientError::NoReplica { message: format!("no replica of {id} answered ({})", failures.join("; ")) })
    }
}
