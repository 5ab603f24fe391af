//! Multipart uploads: each part is an object of its own, streamed in like a PutObject;
//! completing records the ordered parts in the namespace (no byte is copied), and a GET
//! streams the parts one after another (`PartsReader`), ranges across parts included.

use std::io::{self, Read};

use super::checksum::{self, Hasher};
use super::error::S3Error;
use super::handlers::{
    empty_reply, etag_reply, no_such_key, number_param, parse_copy_range, precondition_failed, url_encoding,
    write_conditions, xml_reply, Context, Md5Reader,
};
use super::{xml, GatewayState};
use crate::client::{Client, ClientError};
use crate::http::{self, Reply};
use crate::proto::s3::{
    Access, Checksum, ChecksumAlgorithm, CompleteParts, CreateUpload, ListPartsRequest, ListUploadsRequest, PartInfo,
    PartObject, UploadPart, UploadRef,
};
use crate::proto::ObjectId;

/// S3's part numbers.
const PART_NUMBERS: std::ops::RangeInclusive<u32> = 1..=10_000;

/// `x-amz-checksum-algorithm` and `x-amz-checksum-type` of CreateMultipartUpload: the
/// algorithm every part carries, and whether the object's checksum is of its whole body
/// (CRCs only; CRC64NVME only so) or of its parts' checksums.
fn upload_checksum_kind(context: &Context<'_>) -> Result<(Option<ChecksumAlgorithm>, bool), S3Error> {
    let invalid = |why: String| S3Error::new("InvalidRequest", why);
    let algorithm = match context.header("x-amz-checksum-algorithm") {
        Some(name) => Some(ChecksumAlgorithm::parse(name).ok_or_else(|| {
            invalid(format!("unknown checksum algorithm {name:?}; use CRC32, CRC32C, CRC64NVME, SHA1 or SHA256"))
        })?),
        None => None,
    };
    let kind = context.header("x-amz-checksum-type").map(|t| t.trim().to_ascii_uppercase());
    match (algorithm, kind.as_deref()) {
        (None, None) => Ok((None, false)),
        (None, Some(_)) => Err(invalid("x-amz-checksum-type needs x-amz-checksum-algorithm".into())),
        (Some(ChecksumAlgorithm::Crc64nvme), None | Some("FULL_OBJECT")) => Ok((algorithm, true)),
        (Some(a), Some("FULL_OBJECT")) if a.allows_full_object() => Ok((algorithm, true)),
        (Some(a), None | Some("COMPOSITE")) if a != ChecksumAlgorithm::Crc64nvme => Ok((algorithm, false)),
        (Some(a), kind) => {
            Err(invalid(format!("the checksum type {} is not available for {}", kind.unwrap_or("COMPOSITE"), a.name())))
        }
    }
}

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
    for code in ["NoSuchUpload", "InvalidPartOrder", "InvalidPart", "EntityTooSmall", "MalformedXML", "BadDigest"] {
        if let Some(rest) = message.strip_prefix(code) {
            let code: &'static str = match code {
                "NoSuchUpload" => "NoSuchUpload",
                "InvalidPartOrder" => "InvalidPartOrder",
                "InvalidPart" => "InvalidPart",
                "EntityTooSmall" => "EntityTooSmall",
                "BadDigest" => "BadDigest",
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
        let (checksum_algorithm, full_object) = upload_checksum_kind(context)?;
        let upload = CreateUpload {
            bucket: bucket.to_string(),
            key: key.to_string(),
            content_type: context.header("content-type").map(str::to_string),
            metadata: super::handlers::metadata_of(context.headers),
            checksum_algorithm,
            full_object,
        };
        let created = self.client.create_multipart(&upload).map_err(|e| upload_error(&e))?;
        let mut reply = xml_reply(200, xml::initiate_multipart(bucket, key, &created.upload_id));
        if let Some(algorithm) = checksum_algorithm {
            reply.add_header(http::header("x-amz-checksum-algorithm", algorithm.name()));
            reply
                .add_header(http::header("x-amz-checksum-type", if full_object { "FULL_OBJECT" } else { "COMPOSITE" }));
        }
        Ok(reply)
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
        // The upload must exist before any byte moves; its algorithm is every part's.
        let (algorithm, _) = self.upload_checksum(bucket, key, &upload_id)?;
        if let Some(algorithm) = algorithm {
            let sent = self.expected_checksums(context, None)?;
            if let Some((other, _)) = sent.checksum.as_ref().or(sent.trailer.as_ref()).filter(|(a, _)| *a != algorithm)
            {
                return Err(S3Error::new(
                    "InvalidRequest",
                    format!(
                        "checksum type mismatch: the upload's is {}, this part's {}",
                        algorithm.name(),
                        other.name()
                    ),
                ));
            }
        }
        let (staged, etag, checksum) = self.stage_object(context, request, algorithm)?;
        let id = staged.id;
        let part = UploadPart {
            upload_id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            number,
            objectid: id.to_string(),
            size: staged.len,
            etag: etag.clone(),
            checksum,
        };
        // One durable master write: the upload's completion and the part together.
        if let Err(e) = self.client.commit(staged, |receipts| self.client.put_new_part(&part, receipts)) {
            // A refusal completed nothing; an unknown outcome deletes nothing.
            if matches!(e.status(), Some(400 | 404 | 409)) {
                let _ = self.client.delete_object(&id);
            }
            return Err(upload_error(&e));
        }
        Ok(etag_reply(&etag, part.checksum.as_ref()))
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
        // The upload must exist before any byte moves; a part of an upload with a checksum
        // algorithm gets that checksum of the bytes copied.
        let (algorithm, _) = self.upload_checksum(bucket, key, &upload_id)?;
        let bytes = self.open_entry(&source, range, &source_key)?;
        let mut reader = Md5Reader { inner: bytes, md5: md5::Digest::new(), sum: algorithm.map(Hasher::new) };
        let uploaded = {
            let mut once = Some(&mut reader);
            let mut open = || once.take().ok_or_else(|| io::Error::other("the source cannot be read twice"));
            self.client.upload(length, None, &mut open).map_err(|e| S3Error::backend(&e))?
        };
        let etag = super::sigv4::hex(&md5::Digest::finalize(reader.md5.clone()));
        let part = UploadPart {
            upload_id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            number,
            objectid: uploaded.id.to_string(),
            size: uploaded.size,
            etag: etag.clone(),
            checksum: reader.sum.as_ref().map(Hasher::checksum),
        };
        if let Err(e) = self.client.put_part(&part) {
            let _ = self.client.delete_object(&uploaded.id);
            return Err(upload_error(&e));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(xml_reply(200, xml::copy_part_result(&etag, now.as_millis() as i64, part.checksum.as_ref())))
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
        let (if_none_match, if_match) = write_conditions(context)?;
        let body = self.read_xml_body(context, request, true)?;
        let (parts, sent_checksums) = xml::parse_complete(&body)?;
        let (algorithm, full_object) = self.upload_checksum(bucket, key, &upload_id)?;
        let mut part_checksums = Vec::new();
        let mut checksum = None;
        if algorithm.is_some() || !sent_checksums.is_empty() {
            let stored = self.all_parts(bucket, key, &upload_id)?;
            let mut listed = Vec::new();
            for (number, _) in &parts {
                // A part not uploaded is the master's InvalidPart.
                let Some(part) = stored.iter().find(|p| p.number == *number) else { continue };
                let sent = sent_checksums.iter().find(|(n, _)| n == number).map(|(_, c)| c);
                if let Some(sent) = sent {
                    if part
                        .checksum
                        .as_ref()
                        .is_none_or(|kept| kept.algorithm == sent.algorithm && kept.value != sent.value)
                    {
                        return Err(S3Error::new(
                            "InvalidPart",
                            format!("part {number}'s {} is not the one it was uploaded with", sent.algorithm.name()),
                        ));
                    }
                }
                if let Some(algorithm) = algorithm {
                    let kept = part.checksum.clone().filter(|c| c.algorithm == algorithm).ok_or_else(|| {
                        S3Error::new("InvalidPart", format!("part {number} has no {} checksum", algorithm.name()))
                    })?;
                    part_checksums.push((*number, kept.clone()));
                    listed.push((kept, part.size));
                }
            }
            if let Some(algorithm) = algorithm.filter(|_| listed.len() == parts.len()) {
                checksum = Some(if full_object {
                    checksum::full_object(algorithm, &listed)?
                } else {
                    let sums: Vec<Checksum> = listed.into_iter().map(|(c, _)| c).collect();
                    checksum::composite(algorithm, &sums)?
                });
            }
        }
        // A whole-object checksum the client sent with the request must be the one computed.
        for (name, value) in context.headers {
            let Some(sent) = ChecksumAlgorithm::from_header(name) else { continue };
            let matches = checksum
                .as_ref()
                .is_some_and(|c| c.algorithm == sent && c.value.split('-').next() == value.trim().split('-').next());
            if !matches {
                return Err(S3Error::new(
                    "BadDigest",
                    format!(
                        "the {} you specified ({value}) did not match the object's, {}",
                        sent.name(),
                        checksum.as_ref().map_or("none".to_string(), |c| format!("{} {}", c.algorithm.name(), c.value))
                    ),
                ));
            }
        }
        let request = CompleteParts {
            upload_id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            parts,
            part_checksums,
            checksum,
            if_none_match,
            if_match,
        };
        let entry = self.client.complete_multipart(&request).map_err(|e| match e.status() {
            // The upload stays: the client may complete it again once it knows the key.
            Some(409) => precondition_failed(&e.reason()),
            Some(404) if request.if_match.is_some() && !e.reason().contains("NoSuchUpload") => no_such_key(key),
            _ => upload_error(&e),
        })?;
        Ok(xml_reply(200, xml::complete_multipart(bucket, key, &entry.etag, entry.checksum.as_ref())))
    }

    /// The checksum algorithm of an upload, and whether it is of the whole object; an
    /// upload that does not exist (for this bucket and key) is NoSuchUpload.
    fn upload_checksum(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(Option<ChecksumAlgorithm>, bool), S3Error> {
        let probe = ListPartsRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            after: 0,
            max_parts: 0,
        };
        let page = self.client.list_parts(&probe).map_err(|e| upload_error(&e))?;
        Ok((page.checksum_algorithm, page.full_object))
    }

    /// Every part of an upload (10,000 at most), page by page.
    fn all_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, S3Error> {
        let mut parts: Vec<PartInfo> = Vec::new();
        loop {
            let request = ListPartsRequest {
                bucket: bucket.to_string(),
                key: key.to_string(),
                upload_id: upload_id.to_string(),
                after: parts.last().map_or(0, |p| p.number),
                max_parts: 1000,
            };
            let page = self.client.list_parts(&request).map_err(|e| upload_error(&e))?;
            parts.extend(page.parts);
            if !page.truncated {
                return Ok(parts);
            }
        }
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
