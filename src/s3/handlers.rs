//! One function per S3 operation, dispatched by one `match`. Each checks the key's
//! access to its bucket with the master, then does its work there (namespace) or on the
//! datanodes (bytes).

use std::collections::BTreeMap;
use std::io::{self, Read};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as TOKEN;
use base64::Engine;
use tiny_http::{Response, StatusCode};

use super::auth::Signer;
use super::body::{Expected, Payload, PayloadReader};
use super::error::S3Error;
use super::router::{validate_bucket_name, Operation};
use super::{xml, GatewayState};
use crate::client::{ClientError, Staged};
use crate::http::{self, Reply};
use crate::log;
use crate::proto::s3::{Access, Checksum, ChecksumAlgorithm, Entry, ListRequest};
use crate::proto::ObjectId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListVersion {
    V1,
    V2,
    /// ListObjectVersions: each key once, as version `null`.
    Versions,
}

/// The largest object one PUT may carry (S3's own limit).
const MAX_PUT_SIZE: u64 = 5 << 30;

pub struct Context<'a> {
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub signer: Signer,
}

impl Context<'_> {
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn key_id(&self) -> &str {
        &self.signer.key.id
    }
}

pub(super) fn xml_reply(status: u16, body: Vec<u8>) -> Reply {
    http::bytes_reply(status, body, "application/xml")
}

pub(super) fn empty_reply(status: u16) -> Reply {
    http::bytes_reply(status, Vec::new(), "application/xml")
}

/// The answer to a stored object or part: 200 with its ETag, quoted as S3 quotes it, and
/// the checksum kept with it.
pub(super) fn etag_reply(etag: &str, checksum: Option<&Checksum>) -> Reply {
    let mut reply = empty_reply(200);
    reply.add_header(http::header("ETag", &format!("\"{etag}\"")));
    if let Some(checksum) = checksum {
        reply.add_header(http::header(&checksum.algorithm.header(), &checksum.value));
    }
    reply
}

/// `x-amz-checksum-ALGORITHM` and `x-amz-checksum-type` of a stored checksum.
pub(super) fn checksum_headers(checksum: &Checksum) -> [tiny_http::Header; 2] {
    let kind = if checksum.composite { "COMPOSITE" } else { "FULL_OBJECT" };
    [http::header(&checksum.algorithm.header(), &checksum.value), http::header("x-amz-checksum-type", kind)]
}

/// A whole-number query parameter (`max-keys`, `part-number-marker`, ...), `default` when absent.
pub(super) fn number_param(context: &Context<'_>, name: &str, default: usize) -> Result<usize, S3Error> {
    match context.param(name) {
        Some(text) => text
            .trim()
            .parse::<usize>()
            .map_err(|_| S3Error::new("InvalidArgument", format!("{name} {text:?} is not a whole number"))),
        None => Ok(default),
    }
}

/// `encoding-type=url`: whether keys in the answer are percent-encoded.
pub(super) fn url_encoding(context: &Context<'_>) -> Result<bool, S3Error> {
    match context.param("encoding-type") {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(other) => {
            Err(S3Error::new("InvalidArgument", format!("encoding-type {other:?} is not supported; use url")))
        }
    }
}

fn no_such_bucket(bucket: &str) -> S3Error {
    S3Error::new("NoSuchBucket", format!("the bucket {bucket:?} does not exist"))
}

pub(super) fn no_such_key(key: &str) -> S3Error {
    S3Error::new("NoSuchKey", format!("the key {key:?} does not exist"))
}

impl GatewayState {
    pub(super) fn dispatch(
        &self,
        operation: Operation,
        mut context: Context<'_>,
        request: &mut tiny_http::Request,
    ) -> Result<Reply, S3Error> {
        let context = &mut context;
        match operation {
            Operation::ListBuckets => self.list_buckets(context),
            Operation::CreateBucket { bucket } => self.create_bucket(context, &bucket),
            Operation::HeadBucket { bucket } => {
                self.require(context, &bucket, Access::Read)?;
                Ok(empty_reply(200))
            }
            Operation::DeleteBucket { bucket } => self.delete_bucket(context, &bucket),
            Operation::GetBucketLocation { bucket } => {
                self.require(context, &bucket, Access::Read)?;
                Ok(xml_reply(200, xml::location(&self.config.region)))
            }
            Operation::ListObjects { bucket } => self.list_objects(context, &bucket, ListVersion::V1),
            Operation::ListObjectsV2 { bucket } => self.list_objects(context, &bucket, ListVersion::V2),
            Operation::ListObjectVersions { bucket } => self.list_objects(context, &bucket, ListVersion::Versions),
            Operation::GetBucketVersioning { bucket } => {
                self.require(context, &bucket, Access::Read)?;
                Ok(xml_reply(200, xml::versioning()))
            }
            Operation::PutObject { bucket, key } => self.put_object(context, &bucket, &key, request),
            Operation::GetObject { bucket, key } => self.get_object(context, &bucket, &key, true),
            Operation::HeadObject { bucket, key } => self.get_object(context, &bucket, &key, false),
            Operation::DeleteObject { bucket, key } => self.delete_object(context, &bucket, &key),
            Operation::DeleteObjects { bucket } => self.delete_objects(context, &bucket, request),
            Operation::CopyObject { bucket, key } => self.copy_object(context, &bucket, &key),
            Operation::CreateMultipartUpload { bucket, key } => self.create_multipart(context, &bucket, &key),
            Operation::UploadPart { bucket, key } => self.upload_part(context, &bucket, &key, request),
            Operation::CompleteMultipartUpload { bucket, key } => {
                self.complete_multipart(context, &bucket, &key, request)
            }
            Operation::AbortMultipartUpload { bucket, key } => self.abort_multipart(context, &bucket, &key),
            Operation::UploadPartCopy { bucket, key } => self.upload_part_copy(context, &bucket, &key),
            Operation::ListParts { bucket, key } => self.list_parts(context, &bucket, &key),
            Operation::ListMultipartUploads { bucket } => self.list_uploads(context, &bucket),
        }
    }

    /// Checks that the request's key may do `needed` in `bucket`.
    pub(super) fn require(&self, context: &Context<'_>, bucket: &str, needed: Access) -> Result<(), S3Error> {
        let found = self.client.bucket(bucket, context.key_id()).map_err(|e| match e.status() {
            Some(404) => no_such_bucket(bucket),
            _ => S3Error::backend(&e),
        })?;
        match found.access {
            Some(access) if access >= needed => Ok(()),
            _ => Err(S3Error::new(
                "AccessDenied",
                format!(
                    "access key {} may not {} bucket {bucket:?}; grant it with `aether key grant`",
                    context.key_id(),
                    needed.as_str()
                ),
            )),
        }
    }

    fn list_buckets(&self, context: &Context<'_>) -> Result<Reply, S3Error> {
        let buckets = self.client.buckets_of(context.key_id()).map_err(|e| S3Error::backend(&e))?;
        Ok(xml_reply(200, xml::list_buckets(context.key_id(), &context.signer.key.name, &buckets)))
    }

    fn create_bucket(&self, context: &Context<'_>, bucket: &str) -> Result<Reply, S3Error> {
        validate_bucket_name(bucket)?;
        match self.client.create_bucket(bucket, context.key_id()) {
            Ok(_) => {}
            Err(ClientError::Api { status: 409, message, .. }) => {
                return Err(if message.contains("yours") {
                    S3Error::new("BucketAlreadyOwnedByYou", format!("you already own the bucket {bucket:?}"))
                } else {
                    S3Error::new("BucketAlreadyExists", format!("the bucket name {bucket:?} is taken; choose another"))
                })
            }
            Err(e) => return Err(S3Error::backend(&e)),
        }
        let mut reply = empty_reply(200);
        reply.add_header(http::header("Location", &format!("/{bucket}")));
        Ok(reply)
    }

    fn delete_bucket(&self, context: &Context<'_>, bucket: &str) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Owner)?;
        match self.client.delete_bucket(bucket) {
            Ok(()) => Ok(empty_reply(204)),
            Err(ClientError::Api { status: 409, .. }) => Err(S3Error::new(
                "BucketNotEmpty",
                format!("the bucket {bucket:?} is not empty; delete its keys first"),
            )),
            Err(e) if e.status() == Some(404) => Err(no_such_bucket(bucket)),
            Err(e) => Err(S3Error::backend(&e)),
        }
    }

    fn list_objects(&self, context: &Context<'_>, bucket: &str, version: ListVersion) -> Result<Reply, S3Error> {
        let v2 = version == ListVersion::V2;
        self.require(context, bucket, Access::Read)?;
        let max_keys = number_param(context, "max-keys", 1000)?.min(1000);
        let url_encoded = url_encoding(context)?;
        let prefix = context.param("prefix").unwrap_or_default();
        let delimiter = context.param("delimiter").unwrap_or_default();
        let token = context.param("continuation-token");
        let start_after = context.param("start-after");
        let marker = match version {
            ListVersion::Versions => context.param("key-marker").unwrap_or_default(),
            _ => context.param("marker").unwrap_or_default(),
        };
        let after = if v2 {
            match token {
                Some(token) => {
                    TOKEN.decode(token).ok().and_then(|bytes| String::from_utf8(bytes).ok()).ok_or_else(|| {
                        S3Error::new("InvalidArgument", "the continuation token is not one this gateway gave")
                    })?
                }
                None => start_after.unwrap_or_default().to_string(),
            }
        } else {
            marker.to_string()
        };
        let request = ListRequest {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            delimiter: delimiter.to_string(),
            after,
            max_keys,
        };
        let page = self.client.list_entries(&request).map_err(|e| S3Error::backend(&e))?;
        let listing = xml::Listing {
            bucket,
            prefix,
            delimiter,
            max_keys,
            entries: &page.entries,
            common_prefixes: &page.common_prefixes,
            truncated: page.truncated,
            url_encoded,
        };
        let body = match version {
            ListVersion::V2 => {
                let next = page.last.as_ref().map(|last| TOKEN.encode(last));
                listing.v2(token, next.as_deref(), start_after)
            }
            ListVersion::V1 => listing.v1(marker, page.last.as_deref()),
            ListVersion::Versions => listing.versions(marker, page.last.as_deref(), context.key_id()),
        };
        Ok(xml_reply(200, body))
    }

    fn put_object(
        &self,
        context: &mut Context<'_>,
        bucket: &str,
        key: &str,
        request: &mut tiny_http::Request,
    ) -> Result<Reply, S3Error> {
        if key.len() > 1024 {
            return Err(S3Error::new("KeyTooLongError", "an object key may be at most 1024 bytes long"));
        }
        self.require(context, bucket, Access::Write)?;
        let metadata = metadata_of(context.headers);
        let content_type = context.header("content-type").map(str::to_string);
        let (if_none_match, if_match) = write_conditions(context)?;
        // S3 keeps a CRC64NVME with every object whose client sent no checksum.
        let (staged, etag, checksum) = self.stage_object(context, request, Some(ChecksumAlgorithm::Crc64nvme))?;
        let id = staged.id;
        let entry = Entry {
            bucket: bucket.to_string(),
            key: key.to_string(),
            objectid: id.to_string(),
            size: staged.len,
            etag: etag.clone(),
            content_type,
            metadata,
            modified_ms: 0,
            if_none_match,
            if_match,
            parts: Vec::new(),
            checksum,
        };
        // One durable master write: the upload's completion and the key together.
        let put = self.client.commit(staged, |receipts| self.client.put_new_entry(&entry, receipts));
        if let Err(e) = put {
            return Err(match e.status() {
                Some(status @ (400 | 404 | 409)) => {
                    // Refused: nothing was completed, and the copies go now rather than
                    // after the upload grace. (An unknown outcome deletes nothing.)
                    let _ = self.client.delete_object(&id);
                    match status {
                        404 if entry.if_match.is_some() && !e.reason().contains("bucket") => no_such_key(key),
                        404 if e.reason().contains("bucket") => no_such_bucket(bucket),
                        409 if e.reason().contains("precondition") => precondition_failed(&e.reason()),
                        _ => S3Error::backend(&e),
                    }
                }
                _ => S3Error::backend(&e),
            });
        }
        log::debug("s3", &format!("{bucket}/{key} is object {id} ({} bytes)", entry.size));
        Ok(etag_reply(&etag, entry.checksum.as_ref()))
    }

    /// Streams the request body into a new object through the datanode chain, checked
    /// as it goes (`PayloadReader`) and whole before anything is completed; returns the
    /// staged upload, for the caller to complete with what names it (`Client::commit`),
    /// the body's MD5 and the checksum kept with it (the client's, or `compute` over
    /// the body).
    pub(super) fn stage_object(
        &self,
        context: &mut Context<'_>,
        request: &mut tiny_http::Request,
        compute: Option<ChecksumAlgorithm>,
    ) -> Result<(Staged, String, Option<Checksum>), S3Error> {
        let chunked = context.signer.payload.is_chunked();
        let length_header = if chunked { "x-amz-decoded-content-length" } else { "content-length" };
        let length: u64 = context
            .header(length_header)
            .ok_or_else(|| S3Error::new("MissingContentLength", format!("a PUT must send {length_header}")))?
            .parse()
            .map_err(|_| S3Error::new("InvalidArgument", format!("{length_header} is not a number")))?;
        if length > MAX_PUT_SIZE {
            return Err(S3Error::new("EntityTooLarge", format!("one PUT may carry at most {MAX_PUT_SIZE} bytes")));
        }
        let expected = self.expected_checksums(context, compute)?;
        let payload = std::mem::replace(&mut context.signer.payload, Payload::Unsigned);
        let mut body = PayloadReader::new(request.as_reader(), payload, expected, length);
        let staged = {
            let mut once = Some(&mut body);
            let mut open = || -> io::Result<&mut PayloadReader<'_>> {
                once.take().ok_or_else(|| io::Error::other("the request body cannot be sent twice"))
            };
            self.client.stage(length, None, &mut open)
        };
        let staged = match staged {
            // Every byte went out, so every check ran; `finish` only reads the framing
            // of an empty body. A body that fails it is never completed.
            Ok(staged) => {
                if let Err(e) = body.finish() {
                    let _ = self.client.delete_object(&staged.id);
                    return Err(e);
                }
                staged
            }
            // A body that failed a check says why; else the cluster failed, and the rest
            // of the body is not worth reading.
            Err(e) => return Err(body.failure.take().unwrap_or_else(|| S3Error::backend(&e))),
        };
        Ok((staged, body.etag(), body.checksum()))
    }

    /// What the body must match: a checksum header (one at most, well formed), a
    /// trailing checksum, Content-MD5; `compute` is the checksum to keep when the client
    /// sent none (`x-amz-checksum-algorithm` names another).
    pub(super) fn expected_checksums(
        &self,
        context: &Context<'_>,
        compute: Option<ChecksumAlgorithm>,
    ) -> Result<Expected, S3Error> {
        let mut expected =
            Expected { content_md5: context.header("content-md5").map(str::to_string), compute, ..Expected::default() };
        for (name, value) in context.headers {
            if let Some(algorithm) = ChecksumAlgorithm::from_header(name) {
                if expected.checksum.is_some() {
                    return Err(S3Error::new(
                        "InvalidRequest",
                        "expecting a single x-amz-checksum- header; multiple checksum types are not allowed",
                    ));
                }
                super::checksum::check_value(algorithm, value)?;
                expected.checksum = Some((algorithm, value.trim().to_string()));
            }
        }
        if let Some(trailer) = context.header("x-amz-trailer") {
            let name = trailer.trim().to_ascii_lowercase();
            let algorithm = ChecksumAlgorithm::from_header(&name)
                .ok_or_else(|| S3Error::not_implemented(&format!("the trailing header {name}")))?;
            expected.trailer = Some((algorithm, name));
        }
        let named = context.header("x-amz-sdk-checksum-algorithm").or(context.header("x-amz-checksum-algorithm"));
        if let Some(name) = named {
            let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
                S3Error::new(
                    "InvalidRequest",
                    format!("unknown checksum algorithm {name:?}; use CRC32, CRC32C, CRC64NVME, SHA1 or SHA256"),
                )
            })?;
            let sent = expected.checksum.as_ref().or(expected.trailer.as_ref()).map(|(a, _)| *a);
            match sent {
                Some(sent) if sent != algorithm => {
                    return Err(S3Error::new(
                        "InvalidRequest",
                        format!("the checksum sent is {}, not the {} the request names", sent.name(), algorithm.name()),
                    ))
                }
                Some(_) => {}
                None => expected.compute = Some(algorithm),
            }
        }
        Ok(expected)
    }

    fn get_object(&self, context: &Context<'_>, bucket: &str, key: &str, with_body: bool) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Read)?;
        let entry = self.client.entry(bucket, key).map_err(|e| match e.status() {
            Some(404) => no_such_key(key),
            _ => S3Error::backend(&e),
        })?;
        check_conditions(context, &entry, Conditions::Read)?;
        let part = part_range(context, &entry)?;
        let range = match (context.header("range"), part) {
            (Some(_), Some(_)) => {
                return Err(S3Error::new("InvalidRequest", "Range and partNumber cannot both be given"));
            }
            (Some(text), None) => parse_range(text, entry.size)?,
            (None, Some(part)) => part.range,
            (None, None) => None,
        };
        let mut headers = vec![
            http::header("ETag", &format!("\"{}\"", entry.etag)),
            http::header("Last-Modified", &httpdate::fmt_http_date(system_time(entry.modified_ms))),
            http::header("Accept-Ranges", "bytes"),
        ];
        if let Some(part) = part.filter(|part| part.count > 0) {
            headers.push(http::header("x-amz-mp-parts-count", &part.count.to_string()));
        }
        let content_type = entry.content_type.as_deref().unwrap_or("binary/octet-stream");
        if context.param("response-content-type").is_none() {
            headers.push(http::header("Content-Type", content_type));
        }
        // `response-*` parameters set the answer's headers, as S3 lets a signed GET do.
        for (param, header) in RESPONSE_OVERRIDES {
            if let Some(value) = context.param(param) {
                headers.push(http::header(header, value));
            }
        }
        for (name, value) in &entry.metadata {
            headers.push(http::header(&format!("x-amz-meta-{name}"), value));
        }
        // The checksum is of the whole object: a range is answered without it, as by S3.
        let checksum_mode = context.header("x-amz-checksum-mode").is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"));
        if let Some(checksum) = entry.checksum.as_ref().filter(|_| checksum_mode && range.is_none()) {
            headers.extend(checksum_headers(checksum));
        }
        let (status, length) = match range {
            Some((start, end)) => {
                headers.push(http::header("Content-Range", &format!("bytes {start}-{end}/{}", entry.size)));
                (206, end + 1 - start)
            }
            None => (200, entry.size),
        };
        let reader: Box<dyn Read + Send> =
            if with_body { self.open_entry(&entry, range, key)? } else { Box::new(io::empty()) };
        // Content-Length always (a HEAD must say the size; clients check it), never chunked.
        Ok(Response::new(StatusCode(status), headers, reader, Some(length as usize), None)
            .with_chunked_threshold(usize::MAX))
    }

    fn delete_object(&self, context: &Context<'_>, bucket: &str, key: &str) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Write)?;
        self.client.delete_entry(bucket, key).map_err(|e| match e.status() {
            Some(404) => no_such_bucket(bucket),
            _ => S3Error::backend(&e),
        })?;
        Ok(empty_reply(204))
    }
}

/// One part of an object asked for with `?partNumber=N` on GET or HEAD.
#[derive(Debug, Clone, Copy)]
struct PartRead {
    /// The object's parts (for `x-amz-mp-parts-count`); 0 for an object stored in one piece.
    count: usize,
    /// The part's first and last byte; None for an empty object.
    range: Option<(u64, u64)>,
}

/// `?partNumber=N`: which bytes it names. An object stored in one piece has one part, the
/// whole object.
fn part_range(context: &Context<'_>, entry: &Entry) -> Result<Option<PartRead>, S3Error> {
    let Some(text) = context.param("partNumber") else { return Ok(None) };
    let number = text.trim().parse::<usize>().ok().filter(|n| (1..=10_000).contains(n)).ok_or_else(|| {
        S3Error::new("InvalidArgument", format!("partNumber {text:?} must be a number from 1 to 10000"))
    })?;
    let sizes: Vec<u64> =
        if entry.parts.is_empty() { vec![entry.size] } else { entry.parts.iter().map(|p| p.size).collect() };
    if number > sizes.len() {
        return Err(S3Error::new(
            "InvalidPartNumber",
            format!("the object has {} part(s); part {number} is not satisfiable", sizes.len()),
        ));
    }
    let start: u64 = sizes[..number - 1].iter().sum();
    let size = sizes[number - 1];
    let range = (size > 0).then(|| (start, start + size - 1));
    let count = if entry.parts.is_empty() { 0 } else { sizes.len() };
    Ok(Some(PartRead { count, range }))
}

/// The query parameters of a GET that set a header of its answer.
const RESPONSE_OVERRIDES: &[(&str, &str)] = &[
    ("response-content-type", "Content-Type"),
    ("response-content-language", "Content-Language"),
    ("response-expires", "Expires"),
    ("response-cache-control", "Cache-Control"),
    ("response-content-disposition", "Content-Disposition"),
    ("response-content-encoding", "Content-Encoding"),
];

/// A conditional write's headers (PutObject, CompleteMultipartUpload): `If-None-Match: *`
/// (create only) and `If-Match: ETAG` (compare and swap).
pub(super) fn write_conditions(context: &Context<'_>) -> Result<(bool, Option<String>), S3Error> {
    let if_none_match = match context.header("if-none-match").map(str::trim) {
        None => false,
        Some("*") => true,
        Some(other) => {
            return Err(S3Error::not_implemented(&format!("If-None-Match: {other} on a write (only * is)")));
        }
    };
    let if_match = context.header("if-match").map(|etag| etag.trim().trim_matches('"').to_string());
    Ok((if_none_match, if_match))
}

pub(super) fn precondition_failed(why: &str) -> S3Error {
    S3Error::new("PreconditionFailed", format!("at least one of the preconditions did not hold: {why}"))
}

fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(|e| e.trim().trim_start_matches("W/").trim_matches('"')).any(|e| e == "*" || e == etag)
}

/// Which request's conditions `check_conditions` weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conditions {
    /// GET and HEAD: `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`;
    /// an unchanged object is 304.
    Read,
    /// A copy's source: the same four behind `x-amz-copy-source-`; every failure is 412.
    CopySource,
}

/// Conditions on `entry`, as S3 (RFC 7232) weighs them: If-Match before
/// If-Unmodified-Since, If-None-Match before If-Modified-Since.
fn check_conditions(context: &Context<'_>, entry: &Entry, kind: Conditions) -> Result<(), S3Error> {
    let prefix = match kind {
        Conditions::Read => "",
        Conditions::CopySource => "x-amz-copy-source-",
    };
    let name = |condition: &str| format!("{prefix}{condition}");
    let modified = entry.modified_ms / 1000;
    let date = |condition: &str| {
        context
            .header(&name(condition))
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
    };
    if let Some(wanted) = context.header(&name("if-match")) {
        if !etag_matches(wanted, &entry.etag) {
            return Err(precondition_failed(&name("if-match")));
        }
    } else if date("if-unmodified-since").is_some_and(|since| modified > since) {
        return Err(precondition_failed(&name("if-unmodified-since")));
    }
    let unchanged = |condition: &str| match kind {
        Conditions::Read => S3Error::new("NotModified", "the object has not changed"),
        Conditions::CopySource => precondition_failed(&name(condition)),
    };
    if let Some(unwanted) = context.header(&name("if-none-match")) {
        if etag_matches(unwanted, &entry.etag) {
            return Err(unchanged("if-none-match"));
        }
    } else if date("if-modified-since").is_some_and(|since| modified <= since) {
        return Err(unchanged("if-modified-since"));
    }
    Ok(())
}

/// `x-amz-meta-*` headers, names lowercase without the prefix.
pub(super) fn metadata_of(headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if let Some(meta) = lower.strip_prefix("x-amz-meta-") {
            metadata.insert(meta.to_string(), value.clone());
        }
    }
    metadata
}

/// Passes bytes through and computes their MD5, and a checksum if asked.
pub(super) struct Md5Reader<R> {
    pub inner: R,
    pub md5: md5::Md5,
    pub sum: Option<super::checksum::Hasher>,
}

impl<R: Read> Read for Md5Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use md5::Digest;
        let n = self.inner.read(buf)?;
        self.md5.update(&buf[..n]);
        if let Some(sum) = &mut self.sum {
            sum.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl GatewayState {
    /// CopyObject: the source's bytes stream from a replica back into a new object (objects
    /// are never shared between keys, so deleting one key never touches another's bytes).
    fn copy_object(&self, context: &Context<'_>, bucket: &str, key: &str) -> Result<Reply, S3Error> {
        let (source_bucket, source_key, source) = self.copy_source(context, bucket)?;
        let replace = match context.header("x-amz-metadata-directive").unwrap_or("COPY") {
            "COPY" => false,
            "REPLACE" => true,
            other => {
                return Err(S3Error::new(
                    "InvalidArgument",
                    format!("x-amz-metadata-directive {other:?}: use COPY or REPLACE"),
                ))
            }
        };
        if !replace && source_bucket == bucket && source_key == key {
            return Err(S3Error::new(
                "InvalidRequest",
                "this copy request is illegal because it copies an object to itself without changing its metadata",
            ));
        }
        let (content_type, metadata) = if replace {
            (context.header("content-type").map(str::to_string), metadata_of(context.headers))
        } else {
            (source.content_type.clone(), source.metadata.clone())
        };
        let bytes = self.open_entry(&source, None, &source_key)?;
        // The copy keeps a checksum of the source's algorithm (S3's CRC64NVME if it had none),
        // of the whole body.
        let algorithm = source.checksum.as_ref().map_or(ChecksumAlgorithm::Crc64nvme, |c| c.algorithm);
        let mut reader =
            Md5Reader { inner: bytes, md5: md5::Digest::new(), sum: Some(super::checksum::Hasher::new(algorithm)) };
        let staged = {
            let mut once = Some(&mut reader);
            let mut open = || once.take().ok_or_else(|| io::Error::other("the source cannot be read twice"));
            self.client.stage(source.size, None, &mut open).map_err(|e| S3Error::backend(&e))?
        };
        let id = staged.id;
        let etag = super::sigv4::hex(&md5::Digest::finalize(reader.md5.clone()));
        // A multipart source's ETag is not an MD5 of its bytes; a copy's is.
        if source.parts.is_empty() && etag != source.etag {
            let _ = self.client.delete_object(&id);
            return Err(S3Error::internal(format!("the copy's MD5 {etag} is not the source's ETag {}", source.etag)));
        }
        let entry = Entry {
            bucket: bucket.to_string(),
            key: key.to_string(),
            objectid: id.to_string(),
            size: source.size,
            etag: etag.clone(),
            content_type,
            metadata,
            modified_ms: 0,
            if_none_match: false,
            if_match: None,
            parts: Vec::new(),
            checksum: reader.sum.as_ref().map(super::checksum::Hasher::checksum),
        };
        // One durable master write, as for PutObject.
        if let Err(e) = self.client.commit(staged, |receipts| self.client.put_new_entry(&entry, receipts)) {
            if matches!(e.status(), Some(400 | 404 | 409)) {
                let _ = self.client.delete_object(&id);
            }
            return Err(S3Error::backend(&e));
        }
        let written = self.client.entry(bucket, key).map(|e| e.modified_ms).unwrap_or_default();
        Ok(xml_reply(200, xml::copy_result(&etag, written)))
    }
}

impl GatewayState {
    /// The source of a copy (`x-amz-copy-source: [/]BUCKET/KEY[?versionId=null]`), which
    /// the request's key must be able to read and which must meet the
    /// `x-amz-copy-source-if-*` conditions; `bucket`, the destination, must be writable.
    pub(super) fn copy_source(&self, context: &Context<'_>, bucket: &str) -> Result<(String, String, Entry), S3Error> {
        let raw = context.header("x-amz-copy-source").unwrap_or_default();
        let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
        for (name, value) in super::sigv4::parse_query(query) {
            match name.as_str() {
                // Keys have one version, `null`.
                "versionId" if value == "null" => {}
                "versionId" => {
                    return Err(S3Error::new("InvalidArgument", format!("invalid version id {value:?} specified")))
                }
                _ => {}
            }
        }
        let source = super::sigv4::decode(path);
        let (source_bucket, source_key) = source
            .trim_start_matches('/')
            .split_once('/')
            .map(|(b, k)| (b.to_string(), k.to_string()))
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| S3Error::new("InvalidArgument", format!("x-amz-copy-source {raw:?} is not BUCKET/KEY")))?;
        self.require(context, &source_bucket, Access::Read)?;
        self.require(context, bucket, Access::Write)?;
        let entry = self.client.entry(&source_bucket, &source_key).map_err(|e| match e.status() {
            Some(404) => no_such_key(&source_key),
            _ => S3Error::backend(&e),
        })?;
        check_conditions(context, &entry, Conditions::CopySource)?;
        Ok((source_bucket, source_key, entry))
    }

    /// The bytes `first..=last` of a key's object (all of them without a range), single
    /// or multipart, as a stream from its replicas.
    pub(super) fn open_entry(
        &self,
        entry: &Entry,
        range: Option<(u64, u64)>,
        key: &str,
    ) -> Result<Box<dyn Read + Send>, S3Error> {
        let length = range.map_or(entry.size, |(first, last)| last + 1 - first);
        if length == 0 {
            return Ok(Box::new(io::empty()));
        }
        if !entry.parts.is_empty() {
            let (first, last) = range.unwrap_or((0, entry.size - 1));
            let reader = super::multipart::PartsReader::new(self.client.clone(), &entry.parts, first, last, key);
            return Ok(Box::new(reader.start()?));
        }
        let id = ObjectId::parse(&entry.objectid).map_err(S3Error::internal)?;
        let reader = self.client.open_object(&id, range).map_err(|e| match e.status() {
            Some(404) => no_such_key(key),
            _ => S3Error::backend(&e),
        })?;
        Ok(reader)
    }
}

/// `x-amz-copy-source-range: bytes=FIRST-LAST` against a source of `size` bytes: both ends
/// given, within the source, in order (S3 answers anything else 400 InvalidArgument).
pub(super) fn parse_copy_range(text: &str, size: u64) -> Result<(u64, u64), S3Error> {
    let invalid = || {
        S3Error::new(
            "InvalidArgument",
            format!("the range {text:?} is not valid for a source object of size {size}; use bytes=FIRST-LAST"),
        )
    };
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
    let (first, last) = spec.split_once('-').ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    let last: u64 = last.trim().parse().map_err(|_| invalid())?;
    if first > last || last >= size {
        return Err(invalid());
    }
    Ok((first, last))
}

/// The largest XML request body accepted (DeleteObjects: 1,000 keys of 1 KiB and their
/// markup; CompleteMultipartUpload: 10,000 parts).
const MAX_XML_BODY: u64 = 4 << 20;

impl GatewayState {
    /// Reads a small XML request body, checked like any payload. `whole_object`: the
    /// `x-amz-checksum-*` headers are the object's (CompleteMultipartUpload), not the body's.
    pub(super) fn read_xml_body(
        &self,
        context: &mut Context<'_>,
        request: &mut tiny_http::Request,
        whole_object: bool,
    ) -> Result<Vec<u8>, S3Error> {
        let chunked = context.signer.payload.is_chunked();
        let length_header = if chunked { "x-amz-decoded-content-length" } else { "content-length" };
        let length: u64 = context
            .header(length_header)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| S3Error::new("MissingContentLength", format!("this request must send {length_header}")))?;
        if length > MAX_XML_BODY {
            return Err(S3Error::new("MalformedXML", format!("the XML body is larger than {MAX_XML_BODY} bytes")));
        }
        let mut expected = self.expected_checksums(context, None)?;
        if whole_object {
            expected.checksum = None;
        }
        let payload = std::mem::replace(&mut context.signer.payload, Payload::Unsigned);
        let mut reader = PayloadReader::new(request.as_reader(), payload, expected, length);
        let mut body = Vec::new();
        if reader.read_to_end(&mut body).is_err() {
            return Err(reader.failure.take().unwrap_or_else(|| S3Error::internal("the body could not be read")));
        }
        Ok(body)
    }

    fn delete_objects(
        &self,
        context: &mut Context<'_>,
        bucket: &str,
        request: &mut tiny_http::Request,
    ) -> Result<Reply, S3Error> {
        self.require(context, bucket, Access::Write)?;
        let body = self.read_xml_body(context, request, false)?;
        let (keys, quiet) = xml::parse_delete(&body)?;
        let outcomes: Vec<xml::DeleteOutcome> = keys
            .into_iter()
            .map(|key| match self.client.delete_entry(bucket, &key) {
                Ok(_) => xml::DeleteOutcome::Deleted(key),
                Err(e) => xml::DeleteOutcome::Failed(key, S3Error::backend(&e)),
            })
            .collect();
        Ok(xml_reply(200, xml::delete_result(&outcomes, quiet)))
    }
}

fn system_time(unix_ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64)
}

/// `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` against an object of `size` bytes: the
/// first and last byte, `None` for the whole object, 416 for a range beyond it.
fn parse_range(text: &str, size: u64) -> Result<Option<(u64, u64)>, S3Error> {
    let invalid = || S3Error::new("InvalidRange", format!("the range {text:?} is not satisfiable for {size} bytes"));
    let Some(spec) = text.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        // S3 ignores multiple ranges and sends the whole object.
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| invalid());
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => {
            let n = number(last)?;
            if n == 0 || size == 0 {
                return Err(invalid());
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, true) => (number(first)?, size.saturating_sub(1)),
        (false, false) => (number(first)?, number(last)?.min(size.saturating_sub(1))),
        (true, true) => return Ok(None),
    };
    if start >= size || start > end {
        return Err(invalid());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_s3() {
        let code = |r: Result<Option<(u64, u64)>, S3Error>| r.map_err(|e| e.code);
        assert_eq!(code(parse_range("bytes=0-9", 100)), Ok(Some((0, 9))));
        assert_eq!(code(parse_range("bytes=90-", 100)), Ok(Some((90, 99))));
        assert_eq!(code(parse_range("bytes=-10", 100)), Ok(Some((90, 99))));
        assert_eq!(code(parse_range("bytes=-1000", 100)), Ok(Some((0, 99))));
        assert_eq!(code(parse_range("bytes=50-1000", 100)), Ok(Some((50, 99))));
        assert_eq!(code(parse_range("bytes=100-", 100)), Err("InvalidRange"));
        assert_eq!(code(parse_range("bytes=5-2", 100)), Err("InvalidRange"));
        assert_eq!(code(parse_range("bytes=0-0,5-6", 100)), Ok(None));
        assert_eq!(code(parse_range("items=0-1", 100)), Ok(None));
    }

    #[test]
    fn copy_ranges_need_both_ends_within_the_source() {
        let code = |r: Result<(u64, u64), S3Error>| r.map_err(|e| e.code);
        assert_eq!(code(parse_copy_range("bytes=0-9", 100)), Ok((0, 9)));
        assert_eq!(code(parse_copy_range("bytes=99-99", 100)), Ok((99, 99)));
        for bad in ["bytes=0-100", "bytes=5-2", "bytes=-10", "bytes=10-", "items=0-1", "bytes=a-b", "bytes=0-0"] {
            let size = if bad == "bytes=0-0" { 0 } else { 100 };
            assert_eq!(code(parse_copy_range(bad, size)), Err("InvalidArgument"), "{bad}");
        }
    }
}
