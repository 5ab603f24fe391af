//! Multipart uploads: each part is an object of its own, streamed in like a PutObject;
//! completing records the ordered parts in the namespace (no byte is copied), and a GET
//! streams the parts one after another (`PartsReader`), ranges across parts included.

use std::io::{self, Read};

use super::error::S3Error;
use super::handlers::{empty_reply, etag_reply, no_such_key, xml_reply, Context};
use super::{xml, GatewayState};
use crate::client::{Client, ClientError};
use crate::http::Reply;
use crate::proto::s3::{Access, CompleteParts, CreateUpload, PartObject, UploadPart, UploadRef};
use crate::proto::ObjectId;

/// S3's part numbers.
const PART_NUMBERS: std::ops::RangeInclusive<u32> = 1..=10_000;

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
        };
        let created = self.client.create_multipart(&upload).map_err(|e| upload_error(&e))?;
        Ok(xml_reply(200, xml::initiate_multipart(bucket, key, &created.upload_id)))
    }

    pub(super) fn upload_part(
        &self,
        context: &mut Context<'_>,
        bucket: &str,
        key: &str,
        request: &mut tiny_http::Request,
    ) -> Result<Reply, S3Error> {
        let number: u32 = context
            .param("partNumber")
            .and_then(|n| n.parse().ok())
            .filter(|n| PART_NUMBERS.contains(n))
            .ok_or_else(|| S3Error::new("InvalidArgument", "partNumber must be a number from 1 to 10000"))?;
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
        };
        if let Err(e) = self.client.put_part(&part) {
            let _ = self.client.delete_object(&uploaded.id);
            return Err(upload_error(&e));
        }
        Ok(etag_reply(&etag))
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
        let request = CompleteParts { upload_id, bucket: bucket.to_string(), key: key.to_string(), parts };
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
