//! The S3 operations the gateway knows, parsed from method, path (path-style:
//! `/bucket/key`) and query string. A request for an operation S3 has but the gateway
//! does not is `NotImplemented`, never mistaken for another.

use super::error::S3Error;
use super::sigv4::decode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    ListBuckets,
    CreateBucket {
        bucket: String,
    },
    HeadBucket {
        bucket: String,
    },
    DeleteBucket {
        bucket: String,
    },
    GetBucketLocation {
        bucket: String,
    },
    ListObjects {
        bucket: String,
    },
    ListObjectsV2 {
        bucket: String,
    },
    /// Every key as its one version, `null`: the store keeps no older versions.
    ListObjectVersions {
        bucket: String,
    },
    GetBucketVersioning {
        bucket: String,
    },
    PutObject {
        bucket: String,
        key: String,
    },
    GetObject {
        bucket: String,
        key: String,
    },
    HeadObject {
        bucket: String,
        key: String,
    },
    DeleteObject {
        bucket: String,
        key: String,
    },
    DeleteObjects {
        bucket: String,
    },
    CopyObject {
        bucket: String,
        key: String,
    },
    CreateMultipartUpload {
        bucket: String,
        key: String,
    },
    UploadPart {
        bucket: String,
        key: String,
    },
    CompleteMultipartUpload {
        bucket: String,
        key: String,
    },
    AbortMultipartUpload {
        bucket: String,
        key: String,
    },
    UploadPartCopy {
        bucket: String,
        key: String,
    },
    ListParts {
        bucket: String,
        key: String,
    },
    ListMultipartUploads {
        bucket: String,
    },
}

/// Bucket subresources (`?acl`, `?uploads`, ...) the gateway does not implement yet.
const BUCKET_SUBRESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "delete",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "tagging",
    "versioning",
    "versions",
    "website",
];
const OBJECT_SUBRESOURCES: &[&str] =
    &["acl", "attributes", "legal-hold", "restore", "retention", "select", "tagging", "torrent", "uploads"];

impl Operation {
    /// `raw_path` is still percent-encoded; `query` is decoded; `headers` lets a copy
    /// (`x-amz-copy-source`) be told from a plain PUT.
    pub fn parse(
        method: &str,
        raw_path: &str,
        query: &[(String, String)],
        is_copy: bool,
    ) -> Result<Operation, S3Error> {
        let has = |name: &str| query.iter().any(|(n, _)| n == name);
        let path = raw_path.strip_prefix('/').unwrap_or(raw_path);
        let (raw_bucket, raw_key) = path.split_once('/').unwrap_or((path, ""));
        let bucket = decode(raw_bucket);
        let key = decode(raw_key);
        if bucket.is_empty() {
            return match method {
                "GET" | "HEAD" => Ok(Operation::ListBuckets),
                _ => Err(method_not_allowed(method, "the service")),
            };
        }
        if key.is_empty() {
            match method {
                "POST" if has("delete") => return Ok(Operation::DeleteObjects { bucket }),
                "GET" if has("versions") => return Ok(Operation::ListObjectVersions { bucket }),
                "GET" if has("versioning") => return Ok(Operation::GetBucketVersioning { bucket }),
                "GET" if has("uploads") => return Ok(Operation::ListMultipartUploads { bucket }),
                _ => {}
            }
            if let Some(sub) = BUCKET_SUBRESOURCES.iter().find(|s| has(s)) {
                return Err(S3Error::not_implemented(&format!("{method} ?{sub}")));
            }
            return match method {
                "GET" if has("location") => Ok(Operation::GetBucketLocation { bucket }),
                "GET" if query.iter().any(|(n, v)| n == "list-type" && v == "2") => {
                    Ok(Operation::ListObjectsV2 { bucket })
                }
                "GET" => Ok(Operation::ListObjects { bucket }),
                "PUT" => Ok(Operation::CreateBucket { bucket }),
                "HEAD" => Ok(Operation::HeadBucket { bucket }),
                "DELETE" => Ok(Operation::DeleteBucket { bucket }),
                _ => Err(S3Error::not_implemented(&format!("{method} on a bucket"))),
            };
        }
        match method {
            "POST" if has("uploads") => return Ok(Operation::CreateMultipartUpload { bucket, key }),
            "PUT" if has("uploadId") && has("partNumber") && is_copy => {
                return Ok(Operation::UploadPartCopy { bucket, key })
            }
            "PUT" if has("uploadId") && has("partNumber") => return Ok(Operation::UploadPart { bucket, key }),
            "POST" if has("uploadId") => return Ok(Operation::CompleteMultipartUpload { bucket, key }),
            "DELETE" if has("uploadId") => return Ok(Operation::AbortMultipartUpload { bucket, key }),
            "GET" if has("uploadId") && !has("partNumber") => return Ok(Operation::ListParts { bucket, key }),
            // GET and HEAD with partNumber alone read one part of an object (GetObject).
            "GET" | "HEAD" if has("partNumber") && !has("uploadId") => {}
            _ if has("uploadId") || has("partNumber") => {
                return Err(S3Error::not_implemented(&format!("{method} with uploadId or partNumber")))
            }
            _ => {}
        }
        if let Some(sub) = OBJECT_SUBRESOURCES.iter().find(|s| has(s)) {
            return Err(S3Error::not_implemented(&format!("{method} ?{sub}")));
        }
        match method {
            "PUT" if is_copy => Ok(Operation::CopyObject { bucket, key }),
            "PUT" => Ok(Operation::PutObject { bucket, key }),
            "GET" => Ok(Operation::GetObject { bucket, key }),
            "HEAD" => Ok(Operation::HeadObject { bucket, key }),
            "DELETE" => Ok(Operation::DeleteObject { bucket, key }),
            _ => Err(S3Error::not_implemented(&format!("{method} on an object"))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Operation::ListBuckets => "ListBuckets",
            Operation::CreateBucket { .. } => "CreateBucket",
            Operation::HeadBucket { .. } => "HeadBucket",
            Operation::DeleteBucket { .. } => "DeleteBucket",
            Operation::GetBucketLocation { .. } => "GetBucketLocation",
            Operation::ListObjects { .. } => "ListObjects",
            Operation::ListObjectsV2 { .. } => "ListObjectsV2",
            Operation::ListObjectVersions { .. } => "ListObjectVersions",
            Operation::GetBucketVersioning { .. } => "GetBucketVersioning",
            Operation::PutObject { .. } => "PutObject",
            Operation::GetObject { .. } => "GetObject",
            Operation::HeadObject { .. } => "HeadObject",
            Operation::DeleteObject { .. } => "DeleteObject",
            Operation::DeleteObjects { .. } => "DeleteObjects",
            Operation::CopyObject { .. } => "CopyObject",
            Operation::CreateMultipartUpload { .. } => "CreateMultipartUpload",
            Operation::UploadPart { .. } => "UploadPart",
            Operation::CompleteMultipartUpload { .. } => "CompleteMultipartUpload",
            Operation::AbortMultipartUpload { .. } => "AbortMultipartUpload",
            Operation::UploadPartCopy { .. } => "UploadPartCopy",
            Operation::ListParts { .. } => "ListParts",
            Operation::ListMultipartUploads { .. } => "ListMultipartUploads",
        }
    }
}

/// The bucket a virtual-hosted-style `Host` names (`photos.s3.example.com:9000` with root
/// domain `s3.example.com`), if any.
pub fn bucket_from_host(host: &str, root_domain: Option<&str>) -> Option<String> {
    let root = root_domain?.trim_matches('.');
    let name =
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    let bucket = name.to_ascii_lowercase().strip_suffix(&format!(".{}", root.to_ascii_lowercase()))?.to_string();
    (!bucket.is_empty()).then_some(bucket)
}

fn method_not_allowed(method: &str, what: &str) -> S3Error {
    S3Error::new("MethodNotAllowed", format!("{method} is not allowed on {what}"))
}

/// S3's bucket-name rules: 3 to 63 lowercase letters, digits, `.` and `-`, starting and
/// ending with a letter or digit, no `..`, not shaped like an IP address.
pub fn validate_bucket_name(name: &str) -> Result<(), S3Error> {
    let invalid = |why: &str| S3Error::new("InvalidBucketName", format!("bucket name {name:?} {why}"));
    if !(3..=63).contains(&name.len()) {
        return Err(invalid("must be 3 to 63 characters long"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return Err(invalid("may contain only lowercase letters, digits, '.' and '-'"));
    }
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge(name.as_bytes()[0]) || !edge(name.as_bytes()[name.len() - 1]) {
        return Err(invalid("must start and end with a letter or digit"));
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err(invalid("may not contain '..', '.-' or '-.'"));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(invalid("may not look like an IP address"));
    }
    if name.starts_with("xn--") || name.ends_with("-s3alias") {
        return Err(invalid("uses a prefix or suffix S3 reserves"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::sigv4::parse_query;

    #[test]
    fn operations_parse() {
        let b = || "b".to_string();
        let object = |k: &str| (b(), k.to_string());
        let table: &[(&str, &str, &str, Result<Operation, &str>)] = &[
            ("GET", "/", "", Ok(Operation::ListBuckets)),
            ("PUT", "/", "", Err("MethodNotAllowed")),
            ("PUT", "/b", "", Ok(Operation::CreateBucket { bucket: b() })),
            ("PUT", "/b/", "", Ok(Operation::CreateBucket { bucket: b() })),
            ("HEAD", "/b", "", Ok(Operation::HeadBucket { bucket: b() })),
            ("DELETE", "/b", "", Ok(Operation::DeleteBucket { bucket: b() })),
            ("GET", "/b", "location", Ok(Operation::GetBucketLocation { bucket: b() })),
            ("GET", "/b", "list-type=2&prefix=a", Ok(Operation::ListObjectsV2 { bucket: b() })),
            ("GET", "/b", "prefix=a&encoding-type=url", Ok(Operation::ListObjects { bucket: b() })),
            ("GET", "/b", "versioning", Ok(Operation::GetBucketVersioning { bucket: b() })),
            ("GET", "/b", "versions&prefix=a", Ok(Operation::ListObjectVersions { bucket: b() })),
            ("PUT", "/b", "versioning", Err("NotImplemented")),
            ("POST", "/b", "delete", Ok(Operation::DeleteObjects { bucket: b() })),
            ("GET", "/b", "delete", Err("NotImplemented")),
            ("PUT", "/b/a/c%20d", "", Ok(Operation::PutObject { bucket: object("a/c d").0, key: object("a/c d").1 })),
            ("GET", "/b/k", "", Ok(Operation::GetObject { bucket: b(), key: "k".into() })),
            ("HEAD", "/b/k", "", Ok(Operation::HeadObject { bucket: b(), key: "k".into() })),
            ("DELETE", "/b/k", "", Ok(Operation::DeleteObject { bucket: b(), key: "k".into() })),
            ("PUT", "/b/k", "partNumber=1&uploadId=x", Ok(Operation::UploadPart { bucket: b(), key: "k".into() })),
            ("POST", "/b/k", "uploads", Ok(Operation::CreateMultipartUpload { bucket: b(), key: "k".into() })),
            ("POST", "/b/k", "uploadId=x", Ok(Operation::CompleteMultipartUpload { bucket: b(), key: "k".into() })),
            ("DELETE", "/b/k", "uploadId=x", Ok(Operation::AbortMultipartUpload { bucket: b(), key: "k".into() })),
            ("GET", "/b/k", "uploadId=x", Ok(Operation::ListParts { bucket: b(), key: "k".into() })),
            ("GET", "/b", "uploads&prefix=a", Ok(Operation::ListMultipartUploads { bucket: b() })),
            ("GET", "/b/k", "uploadId=x&partNumber=1", Err("NotImplemented")),
            ("GET", "/b/k", "partNumber=2", Ok(Operation::GetObject { bucket: b(), key: "k".into() })),
            ("HEAD", "/b/k", "partNumber=1", Ok(Operation::HeadObject { bucket: b(), key: "k".into() })),
            ("DELETE", "/b/k", "partNumber=1", Err("NotImplemented")),
            ("GET", "/b/k", "tagging", Err("NotImplemented")),
        ];
        for (method, path, query, want) in table {
            let got = Operation::parse(method, path, &parse_query(query), false).map_err(|e| e.code);
            assert_eq!(&got, want, "{method} {path}?{query}");
        }
        let copy = Operation::CopyObject { bucket: b(), key: "k".into() };
        assert_eq!(Operation::parse("PUT", "/b/k", &[], true), Ok(copy));
        let part_copy = Operation::UploadPartCopy { bucket: b(), key: "k".into() };
        assert_eq!(Operation::parse("PUT", "/b/k", &parse_query("partNumber=2&uploadId=x"), true), Ok(part_copy));
    }

    #[test]
    fn virtual_hosts_name_their_bucket() {
        let root = Some("s3.example.com");
        assert_eq!(bucket_from_host("photos.s3.example.com:9000", root), Some("photos".into()));
        assert_eq!(bucket_from_host("my.dotted.bucket.S3.example.com", root), Some("my.dotted.bucket".into()));
        assert_eq!(bucket_from_host("s3.example.com:9000", root), None);
        assert_eq!(bucket_from_host("127.0.0.1:9000", root), None);
        assert_eq!(bucket_from_host("photos.s3.example.com", None), None);
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "my-bucket.v2", "a1b", &"a".repeat(63)] {
            assert_eq!(validate_bucket_name(good), Ok(()), "{good}");
        }
        for bad in ["ab", "ABC", "-abc", "abc-", "a..b", "192.168.1.1", "a_b", &"a".repeat(64), "xn--abc"] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }
}
