//! Multipart uploads: each part is an object of its own, streamed in like a PutObject;
//! completing records the ordered parts in the namespace (no byte is copied), and a GET
//! streams the parts one after another (`PartsReader`), ranges across parts included.

use std::io::{self, Read};

use super::error::S3Error;
use super::handlers::{
    empty_reply, etag_reply, no_such_key, number_param, parse_copy_range, url_encoding, xml_reply, Context, Md5Reader,
};
use super::{xml, GatewayState};
use crate::client::{Client, ClientError};
use crate::http::Reply;
use crate::proto::s3::{
    Access, CompleteParts, CreateUpload, ListPartsRequest, ListUploadsRequest, PartObject, UploadPart, UploadRef,
};
use crate::proto::ObjectId;

/// S3's part numbers.
const PART_NUMBERS: std::ops::RangeInclusive<u32> = 1..=10_000;

/// The largest part (S3's own limit).
const MAX_PART_SIZE: u64 = 5 << 30;

fn part_number(context: &Context<'_>) -> Result<u32, S3Error> {
    context
        .param("partNumber")
        .and_then(|n| n.parse().ok())
        .filter(|n| PART_NUMBERS.contains(n))
        .ok_or_else(|| S3Error::new("InvalidArgument", "partNumber must be a number from 1 to 10000"))
}

/// Errors of the master's upload calls: their message starts with S3's code.
fn upload_error(e: &ClientError) -> S3Error {
    let reason = e.reason();
    let message = reason.split_once(": ").map_or(reason.as_str(), |(_, m)| m);
    for code in ["NoSuchUpload", "InvalidPartOrder", "InvalidPart", "EntityTooSmall", "MalformedXML"] {
        if let Some(rest) = message.strip_prefix(code) {
            let code: &'static str = match code {
                "NoSuchUpload" => "NoSuchUpload",
                "InvalidPartOrder" => "InvalidPartOrder",
                "InvalidPart" => "InvalidPart",
                "EntityTooSmall" => "EntityTooSmall",
                _ => "MalformedXML",
            };
            return S3Error::new(code, rest.trim_start_matches(':').trim());
        }
    }
    S3Error::backend(e)
}

impl GatewayState {
    pub(super) fn create_multipart(&self, context: &Context<'_>, bucket: &str, key: &str) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Write)?;
        let upload = CreateUpload {
            bucket: bucket.to_string(),
            key: key.to_string(),
            content_type: context.header("content-type").map(str::to_string),
            metadata: super::handlers::metadata_of(context.headers),
            checksum_algorithm: None,
            full_object: false,
        };
        let created = self.client.create_multipart(&upload).map_err(|e| upload_error(&e))?;
        Ok(xml_reply(200, xml::initiate_multipart(bucket, key, &created.upload_id)))
    }

    /// ListParts: a page of an upload's parts, `max-parts` (at most 1000) after
    /// `part-number-marker`.
    pub(super) fn list_parts(&self, context: &Context<'_>, bucket: &str, key: &str) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Read)?;
        let max_parts = number_param(context, "max-parts", 1000)?.min(1000);
        let marker = number_param(context, "part-number-marker", 0)?.min(u32::MAX as usize) as u32;
        let upload_id = context.param("uploadId").unwrap_or_default().to_string();
        let request = ListPartsRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            after: marker,
            max_parts,
        };
        let page = self.client.list_parts(&request).map_err(|e| upload_error(&e))?;
        let listing =
            xml::PartsListing { bucket, key, upload_id: &upload_id, marker, max_parts, owner: &context.signer.key.id };
        Ok(xml_reply(200, xml::list_parts(&listing, &page)))
    }

    /// ListMultipartUploads: a page of the bucket's uploads in progress, by key, then by
    /// start time; `delimiter` rolls keys into common prefixes as ListObjects does.
    pub(super) fn list_uploads(&self, context: &Context<'_>, bucket: &str) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Read)?;
        let max_uploads = number_param(context, "max-uploads", 1000)?.min(1000);
        let url_encoded = url_encoding(context)?;
        let key_marker = context.param("key-marker").unwrap_or_default();
        // S3 ignores the upload-id marker without a key marker.
        let upload_id_marker =
            if key_marker.is_empty() { "" } else { context.param("upload-id-marker").unwrap_or_default() };
        let request = ListUploadsRequest {
            bucket: bucket.to_string(),
            prefix: context.param("prefix").unwrap_or_default().to_string(),
            delimiter: context.param("delimiter").unwrap_or_default().to_string(),
            key_marker: key_marker.to_string(),
            upload_id_marker: upload_id_marker.to_string(),
            max_uploads,
        };
        let page = self.client.list_uploads(&request).map_err(|e| upload_error(&e))?;
        let listing = xml::UploadsListing {
            bucket,
            prefix: &request.prefix,
            delimiter: &request.delimiter,
            key_marker,
            upload_id_marker,
            max_uploads,
            url_encoded,
            owner: &context.signer.key.id,
        };
        Ok(xml_reply(200, xml::list_uploads(&listing, &page)))
    }

    pub(super) fn upload_part(
        &self,
        context: &mut Context<'_>,
        bucket: &str,
        key: &str,
        request: &mut tiny_http::Request,
    ) -> Result<Reply, S3Error> {
        let number = part_number(context)?;
        let upload_id = context.param("uploadId").unwrap_or_default().to_string();
        self.require(context, bucket, Access::Write)?;
        let (uploaded, etag) = self.receive_object(context, request)?;
        let part = UploadPart {
            upload_id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            number,
            objectid: uploaded.id.to_string(),
            size: uploaded.size,
            etag: etag.clone(),
            checksum: None,
        };
        if let Err(e) = self.client.put_part(&part) {
            let _ = self.client.delete_object(&uploaded.id);
            return Err(upload_error(&e));
        }
        Ok(etag_reply(&etag))
    }

    /// UploadPartCopy: a part made of (a range of) another key's bytes, streamed from its
    /// replicas through the gateway into a new object, as CopyObject does.
    pub(super) fn upload_part_copy(&self, context: &Context<'_>, bucket: &str, key: &str) -> Result<Reply, S3Error> {
        let number = part_number(context)?;
        let upload_id = context.param("uploadId").unwrap_or_default().to_string();
        let (_, source_key, source) = self.copy_source(context, bucket)?;
        let range = match context.header("x-amz-copy-source-range") {
            Some(text) => Some(parse_copy_range(text, source.size)?),
            None => None,
        };
        let length = range.map_or(source.size, |(first, last)| last + 1 - first);
        if length > MAX_PART_SIZE {
            return Err(S3Error::new("InvalidRequest", format!("a part may be at most {MAX_PART_SIZE} bytes")));
        }
        // The upload must exist before any byte moves.
        let probe = ListPartsRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            after: 0,
            max_parts: 0,
        };
        self.client.list_parts(&probe).map_err(|e| upload_error(&e))?;
        let bytes = self.open_entry(&source, range, &source_key)?;
        let mut reader = Md5Reader { inner: bytes, md5: md5::Digest::new() };
        let uploaded = {
            let mut once = Some(&mut reader);
            let mut open = || once.take().ok_or_else(|| io::Error::other("the source cannot be read twice"));
            self.client.upload(length, None, &mut open).map_err(|e| S3Error::backend(&e))?
        };
        let etag = super::sigv4::hex(&md5::Digest::finalize(reader.md5));
        let part = UploadPart {
            upload_id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            number,
            objectid: uploaded.id.to_string(),
            size: uploaded.size,
            etag: etag.clone(),
            checksum: None,
        };
        if let Err(e) = self.client.put_part(&part) {
            let _ = self.client.delete_object(&uploaded.id);
            return Err(upload_error(&e));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(xml_reply(200, xml::copy_part_result(&etag, now.as_millis() as i64, None)))
    }

    pub(super) fn complete_multipart(
        &self,
        context: &mut Context<'_>,
        bucket: &str,
        key: &str,
        request: &mut tiny_http::Request,
    ) -> Result<Reply, S3Error> {
        let upload_id = context.param("uploadId").unwrap_or_default().to_string();
        self.require(context, bucket, Access::Write)?;
        let body = self.read_xml_body(context, request)?;
        let parts = xml::parse_complete(&body)?;
        let request = CompleteParts {
            upload_id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            parts,
            part_checksums: Vec::new(),
            checksum: None,
        };
        let entry = self.client.complete_multipart(&request).map_err(|e| upload_error(&e))?;
        Ok(xml_reply(200, xml::complete_multipart(bucket, key, &entry.etag)))
    }

    pub(super) fn abort_multipart(&self, context: &Context<'_>, bucket: &str, key: &str) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Write)?;
        let upload = UploadRef {
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: context.param("uploadId").unwrap_or_default().to_string(),
        };
        self.client.abort_multipart(&upload).map_err(|e| upload_error(&e))?;
        Ok(empty_reply(204))
    }
}

/// The bytes `first..=last` of an object made of `parts`, read part after part, each
/// part opened (with the range it contributes) only when the one before is done.
pub struct PartsReader {
    client: Client,
    /// (part, first byte wanted in it, last byte wanted in it), in order.
    pieces: std::vec::IntoIter<(PartObject, u64, u64)>,
    current: Option<Box<dyn Read + Send + Sync>>,
    key: String,
}

impl PartsReader {
    pub fn new(client: Client, parts: &[PartObject], first: u64, last: u64, key: &str) -> PartsReader {
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for part in parts {
            let (start, end) = (offset, offset + part.size);
            offset = end;
            if part.size == 0 || end <= first || start > last {
                continue;
            }
            pieces.push((part.clone(), first.max(start) - start, last.min(end - 1) - start));
        }
        PartsReader { client, pieces: pieces.into_iter(), current: None, key: key.to_string() }
    }

    /// Opens the first piece now, so a missing part is an error before any byte is sent.
    pub fn start(mut self) -> Result<PartsReader, S3Error> {
        self.current = self.open_next()?;
        Ok(self)
    }

    fn open_next(&mut self) -> Result<Option<Box<dyn Read + Send + Sync>>, S3Error> {
        let Some((part, first, last)) = self.pieces.next() else { return Ok(None) };
        let id = ObjectId::parse(&part.objectid).map_err(S3Error::internal)?;
        let range = if first == 0 && last + 1 == part.size { None } else { Some((first, last)) };
        self.client.open_object(&id, range).map(Some).map_err(|e| match e.status() {
            Some(404) => no_such_key(&self.key),
            _ => S3Error::backend(&e),
        })
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(current) = &mut self.current else { return Ok(0) };
            let n = current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.current = self.open_next().map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
}
