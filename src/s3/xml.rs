//! The XML bodies the gateway answers with: errors, bucket lists, object listings,
//! locations. Text is escaped by quick-xml; keys are percent-encoded when the client
//! asked for `encoding-type=url`.

use quick_xml::escape::escape;

use super::error::S3Error;
use crate::proto::s3::{Bucket, Checksum, ChecksumAlgorithm, Entry, PartsPage, UploadsPage};

const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// An XML document under construction.
struct Xml(String);

impl Xml {
    fn root(name: &str) -> Xml {
        Xml(format!("{HEADER}<{name} xmlns=\"{NAMESPACE}\">"))
    }
    fn open(&mut self, name: &str) {
        self.0.push_str(&format!("<{name}>"));
    }
    fn close(&mut self, name: &str) {
        self.0.push_str(&format!("</{name}>"));
    }
    fn text(&mut self, name: &str, value: &str) {
        self.0.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    }
    fn end(mut self, name: &str) -> Vec<u8> {
        self.close(name);
        self.0.into_bytes()
    }
}

/// Times as S3 lists them: `2009-10-12T17:50:30.000Z`.
pub fn iso8601(unix_ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn error(e: &S3Error, resource: &str, request_id: &str) -> Vec<u8> {
    let mut xml = Xml(format!("{HEADER}<Error>"));
    xml.text("Code", e.code);
    xml.text("Message", &e.message);
    xml.text("Resource", resource);
    xml.text("RequestId", request_id);
    xml.end("Error")
}

pub fn list_buckets(owner_id: &str, owner_name: &str, buckets: &[Bucket]) -> Vec<u8> {
    let mut xml = Xml::root("ListAllMyBucketsResult");
    xml.open("Owner");
    xml.text("ID", owner_id);
    xml.text("DisplayName", owner_name);
    xml.close("Owner");
    xml.open("Buckets");
    for bucket in buckets {
        xml.open("Bucket");
        xml.text("Name", &bucket.name);
        xml.text("CreationDate", &iso8601(bucket.created_ms));
        xml.close("Bucket");
    }
    xml.close("Buckets");
    xml.end("ListAllMyBucketsResult")
}

pub fn initiate_multipart(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut xml = Xml::root("InitiateMultipartUploadResult");
    xml.text("Bucket", bucket);
    xml.text("Key", key);
    xml.text("UploadId", upload_id);
    xml.end("InitiateMultipartUploadResult")
}

pub fn complete_multipart(bucket: &str, key: &str, etag: &str, sum: Option<&Checksum>) -> Vec<u8> {
    let mut xml = Xml::root("CompleteMultipartUploadResult");
    xml.text("Location", &format!("/{bucket}/{key}"));
    xml.text("Bucket", bucket);
    xml.text("Key", key);
    xml.text("ETag", &format!("\"{etag}\""));
    checksum(&mut xml, sum);
    if let Some(sum) = sum {
        xml.text("ChecksumType", if sum.composite { "COMPOSITE" } else { "FULL_OBJECT" });
    }
    xml.end("CompleteMultipartUploadResult")
}

/// The parts of a CompleteMultipartUpload body, in its order: (part number, ETag) pairs,
/// and the checksums (`ChecksumCRC32`, ...) given with some of them.
pub fn parse_complete(body: &[u8]) -> Result<CompleteBody, S3Error> {
    use quick_xml::events::Event;
    let malformed =
        |why: String| S3Error::new("MalformedXML", format!("the CompleteMultipartUpload body is not valid: {why}"));
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    let mut checksums = Vec::new();
    let (mut number, mut etag): (Option<u32>, Option<String>) = (None, None);
    let mut sum: Option<(ChecksumAlgorithm, String)> = None;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|e| malformed(e.to_string()))? {
            Event::Start(e) => path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned()),
            Event::End(_) => {
                if path.len() == 2 && path[1] == "Part" {
                    match (number.take(), etag.take()) {
                        (Some(n), Some(e)) => {
                            if let Some((algorithm, value)) = sum.take() {
                                checksums.push((n, Checksum { algorithm, value, composite: false }));
                            }
                            parts.push((n, e))
                        }
                        _ => return Err(malformed("a Part needs a PartNumber and an ETag".into())),
                    }
                }
                path.pop();
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| malformed(e.to_string()))?.into_owned();
                let at: Vec<&str> = path.iter().map(String::as_str).collect();
                match at[..] {
                    ["CompleteMultipartUpload", "Part", "PartNumber"] => {
                        number = Some(text.trim().parse().map_err(|_| malformed(format!("PartNumber {text:?}")))?)
                    }
                    ["CompleteMultipartUpload", "Part", "ETag"] => {
                        etag = Some(text.trim().trim_matches('"').to_string())
                    }
                    ["CompleteMultipartUpload", "Part", name] => {
                        if let Some(algorithm) = name.strip_prefix("Checksum").and_then(ChecksumAlgorithm::parse) {
                            super::checksum::check_value(algorithm, &text)?;
                            sum = Some((algorithm, text.trim().to_string()));
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if parts.len() > 10_000 {
        return Err(malformed("more than 10,000 parts".into()));
    }
    Ok((parts, checksums))
}

/// A CompleteMultipartUpload body: (part number, ETag) pairs, and the checksums given.
pub type CompleteBody = (Vec<(u32, String)>, Vec<(u32, Checksum)>);

/// `ChecksumCRC32` (and the like) of a part or object.
fn checksum(xml: &mut Xml, checksum: Option<&Checksum>) {
    if let Some(c) = checksum {
        xml.text(&format!("Checksum{}", c.algorithm.name()), &c.value);
    }
}

/// Who started an upload: this gateway keeps no per-upload owner, so the asking key.
fn people(xml: &mut Xml, owner: &str) {
    for role in ["Initiator", "Owner"] {
        xml.open(role);
        xml.text("ID", owner);
        xml.text("DisplayName", owner);
        xml.close(role);
    }
}

/// What ListParts answers, besides the page itself.
pub struct PartsListing<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
    pub marker: u32,
    pub max_parts: usize,
    pub owner: &'a str,
}

pub fn list_parts(listing: &PartsListing<'_>, page: &PartsPage) -> Vec<u8> {
    let mut xml = Xml::root("ListPartsResult");
    xml.text("Bucket", listing.bucket);
    xml.text("Key", listing.key);
    xml.text("UploadId", listing.upload_id);
    people(&mut xml, listing.owner);
    xml.text("StorageClass", "STANDARD");
    xml.text("PartNumberMarker", &listing.marker.to_string());
    let next = page.parts.last().map_or(listing.marker, |p| p.number);
    xml.text("NextPartNumberMarker", &next.to_string());
    xml.text("MaxParts", &listing.max_parts.to_string());
    xml.text("IsTruncated", if page.truncated { "true" } else { "false" });
    if let Some(algorithm) = page.checksum_algorithm {
        xml.text("ChecksumAlgorithm", algorithm.name());
        xml.text("ChecksumType", if page.full_object { "FULL_OBJECT" } else { "COMPOSITE" });
    }
    for part in &page.parts {
        xml.open("Part");
        xml.text("PartNumber", &part.number.to_string());
        xml.text("LastModified", &iso8601(part.modified_ms));
        xml.text("ETag", &format!("\"{}\"", part.etag));
        xml.text("Size", &part.size.to_string());
        checksum(&mut xml, part.checksum.as_ref());
        xml.close("Part");
    }
    xml.end("ListPartsResult")
}

/// What ListMultipartUploads answers, besides the page itself.
pub struct UploadsListing<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub delimiter: &'a str,
    pub key_marker: &'a str,
    pub upload_id_marker: &'a str,
    pub max_uploads: usize,
    pub url_encoded: bool,
    pub owner: &'a str,
}

pub fn list_uploads(listing: &UploadsListing<'_>, page: &UploadsPage) -> Vec<u8> {
    let encode = |text: &str| if listing.url_encoded { super::sigv4::uri_encode(text, true) } else { text.to_string() };
    let mut xml = Xml::root("ListMultipartUploadsResult");
    xml.text("Bucket", listing.bucket);
    xml.text("KeyMarker", &encode(listing.key_marker));
    xml.text("UploadIdMarker", listing.upload_id_marker);
    if page.truncated {
        xml.text("NextKeyMarker", &encode(page.next_key_marker.as_deref().unwrap_or_default()));
        xml.text("NextUploadIdMarker", page.next_upload_id_marker.as_deref().unwrap_or_default());
    }
    xml.text("Prefix", &encode(listing.prefix));
    if !listing.delimiter.is_empty() {
        xml.text("Delimiter", &encode(listing.delimiter));
    }
    xml.text("MaxUploads", &listing.max_uploads.to_string());
    if listing.url_encoded {
        xml.text("EncodingType", "url");
    }
    xml.text("IsTruncated", if page.truncated { "true" } else { "false" });
    for upload in &page.uploads {
        xml.open("Upload");
        xml.text("Key", &encode(&upload.key));
        xml.text("UploadId", &upload.upload_id);
        people(&mut xml, listing.owner);
        xml.text("StorageClass", "STANDARD");
        xml.text("Initiated", &iso8601(upload.initiated_ms));
        if let Some(algorithm) = upload.checksum_algorithm {
            xml.text("ChecksumAlgorithm", algorithm.name());
        }
        xml.close("Upload");
    }
    for prefix in &page.common_prefixes {
        xml.open("CommonPrefixes");
        xml.text("Prefix", &encode(prefix));
        xml.close("CommonPrefixes");
    }
    xml.end("ListMultipartUploadsResult")
}

pub fn copy_part_result(etag: &str, modified_ms: i64, sum: Option<&Checksum>) -> Vec<u8> {
    let mut xml = Xml::root("CopyPartResult");
    xml.text("LastModified", &iso8601(modified_ms));
    xml.text("ETag", &format!("\"{etag}\""));
    checksum(&mut xml, sum);
    xml.end("CopyPartResult")
}

pub fn copy_result(etag: &str, modified_ms: i64) -> Vec<u8> {
    let mut xml = Xml::root("CopyObjectResult");
    xml.text("LastModified", &iso8601(modified_ms));
    xml.text("ETag", &format!("\"{etag}\""));
    xml.end("CopyObjectResult")
}

/// GetBucketVersioning of a bucket that never had versioning: no `Status`.
pub fn versioning() -> Vec<u8> {
    format!("{HEADER}<VersioningConfiguration xmlns=\"{NAMESPACE}\"/>").into_bytes()
}

pub fn location(region: &str) -> Vec<u8> {
    // us-east-1 is the one region S3 answers as an empty constraint.
    let region = if region == "us-east-1" { "" } else { region };
    format!("{HEADER}<LocationConstraint xmlns=\"{NAMESPACE}\">{}</LocationConstraint>", escape(region)).into_bytes()
}

/// What a listing answers, for both versions of ListObjects.
pub struct Listing<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub delimiter: &'a str,
    pub max_keys: usize,
    pub entries: &'a [Entry],
    pub common_prefixes: &'a [String],
    pub truncated: bool,
    /// `encoding-type=url`: keys and prefixes percent-encoded.
    pub url_encoded: bool,
}

impl Listing<'_> {
    fn encode(&self, text: &str) -> String {
        if self.url_encoded {
            super::sigv4::uri_encode(text, true)
        } else {
            text.to_string()
        }
    }

    fn head(&self, xml: &mut Xml) {
        xml.text("Name", self.bucket);
        xml.text("Prefix", &self.encode(self.prefix));
        if !self.delimiter.is_empty() {
            xml.text("Delimiter", &self.encode(self.delimiter));
        }
        xml.text("MaxKeys", &self.max_keys.to_string());
        if self.url_encoded {
            xml.text("EncodingType", "url");
        }
        xml.text("IsTruncated", if self.truncated { "true" } else { "false" });
    }

    fn body(&self, xml: &mut Xml) {
        for entry in self.entries {
            xml.open("Contents");
            xml.text("Key", &self.encode(&entry.key));
            xml.text("LastModified", &iso8601(entry.modified_ms));
            xml.text("ETag", &format!("\"{}\"", entry.etag));
            xml.text("Size", &entry.size.to_string());
            xml.text("StorageClass", "STANDARD");
            xml.close("Contents");
        }
        for prefix in self.common_prefixes {
            xml.open("CommonPrefixes");
            xml.text("Prefix", &self.encode(prefix));
            xml.close("CommonPrefixes");
        }
    }

    /// ListObjects (v1): `marker` as asked, `next_marker` when truncated.
    pub fn v1(&self, marker: &str, next_marker: Option<&str>) -> Vec<u8> {
        let mut xml = Xml::root("ListBucketResult");
        self.head(&mut xml);
        xml.text("Marker", &self.encode(marker));
        if let Some(next) = next_marker.filter(|_| self.truncated) {
            xml.text("NextMarker", &self.encode(next));
        }
        self.body(&mut xml);
        xml.end("ListBucketResult")
    }

    /// ListObjectVersions: every key is its only version, `null`, and the latest.
    pub fn versions(&self, key_marker: &str, next_marker: Option<&str>, owner: &str) -> Vec<u8> {
        let mut xml = Xml::root("ListVersionsResult");
        self.head(&mut xml);
        xml.text("KeyMarker", &self.encode(key_marker));
        xml.text("VersionIdMarker", "");
        if let Some(next) = next_marker.filter(|_| self.truncated) {
            xml.text("NextKeyMarker", &self.encode(next));
            xml.text("NextVersionIdMarker", "null");
        }
        for entry in self.entries {
            xml.open("Version");
            xml.text("Key", &self.encode(&entry.key));
            xml.text("VersionId", "null");
            xml.text("IsLatest", "true");
            xml.text("LastModified", &iso8601(entry.modified_ms));
            xml.text("ETag", &format!("\"{}\"", entry.etag));
            xml.text("Size", &entry.size.to_string());
            xml.text("StorageClass", "STANDARD");
            xml.open("Owner");
            xml.text("ID", owner);
            xml.close("Owner");
            xml.close("Version");
        }
        for prefix in self.common_prefixes {
            xml.open("CommonPrefixes");
            xml.text("Prefix", &self.encode(prefix));
            xml.close("CommonPrefixes");
        }
        xml.end("ListVersionsResult")
    }

    /// ListObjectsV2: tokens are opaque to the client.
    pub fn v2(&self, token: Option<&str>, next_token: Option<&str>, start_after: Option<&str>) -> Vec<u8> {
        let mut xml = Xml::root("ListBucketResult");
        self.head(&mut xml);
        xml.text("KeyCount", &(self.entries.len() + self.common_prefixes.len()).to_string());
        if let Some(token) = token {
            xml.text("ContinuationToken", token);
        }
        if let Some(next) = next_token.filter(|_| self.truncated) {
            xml.text("NextContinuationToken", next);
        }
        if let Some(start_after) = start_after {
            xml.text("StartAfter", &self.encode(start_after));
        }
        self.body(&mut xml);
        xml.end("ListBucketResult")
    }
}

/// What DeleteObjects did with one key: deleted, or the error it met.
pub enum DeleteOutcome {
    Deleted(String),
    Failed(String, S3Error),
}

pub fn delete_result(outcomes: &[DeleteOutcome], quiet: bool) -> Vec<u8> {
    let mut xml = Xml::root("DeleteResult");
    for outcome in outcomes {
        match outcome {
            DeleteOutcome::Deleted(key) if !quiet => {
                xml.open("Deleted");
                xml.text("Key", key);
                xml.close("Deleted");
            }
            DeleteOutcome::Deleted(_) => {}
            DeleteOutcome::Failed(key, e) => {
                xml.open("Error");
                xml.text("Key", key);
                xml.text("Code", e.code);
                xml.text("Message", &e.message);
                xml.close("Error");
            }
        }
    }
    xml.end("DeleteResult")
}

/// The keys of a DeleteObjects request body, and whether it asked for quiet mode.
pub fn parse_delete(body: &[u8]) -> Result<(Vec<String>, bool), S3Error> {
    use quick_xml::events::Event;
    let malformed = |why: String| S3Error::new("MalformedXML", format!("the Delete request body is not valid: {why}"));
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<String> = Vec::new();
    let (mut keys, mut quiet) = (Vec::new(), false);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|e| malformed(e.to_string()))? {
            Event::Start(e) => path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned()),
            Event::End(_) => {
                path.pop();
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| malformed(e.to_string()))?.into_owned();
                let at: Vec<&str> = path.iter().map(String::as_str).collect();
                match at[..] {
                    ["Delete", "Object", "Key"] => keys.push(text),
                    ["Delete", "Quiet"] => quiet = text.trim() == "true",
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if keys.len() > 1000 {
        return Err(S3Error::new("MalformedXML", "a Delete request may name at most 1000 keys"));
    }
    Ok((keys, quiet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_requests_parse_and_answer() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
            <Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>
            <Object><Key>a &amp; b</Key></Object><Object><Key>c/d</Key><VersionId>null</VersionId></Object></Delete>"#;
        assert_eq!(parse_delete(body).unwrap(), (vec!["a & b".to_string(), "c/d".to_string()], true));
        assert!(parse_delete(b"<Delete><Object><Key>x</Object></Delete>").is_err());
        let answer = delete_result(
            &[
                DeleteOutcome::Deleted("a<b".into()),
                DeleteOutcome::Failed("c".into(), S3Error::new("AccessDenied", "no")),
            ],
            false,
        );
        let text = String::from_utf8(answer).unwrap();
        assert!(text.contains("<Deleted><Key>a&lt;b</Key></Deleted>"), "{text}");
        assert!(text.contains("<Error><Key>c</Key><Code>AccessDenied</Code>"), "{text}");
    }
}
