//! `S3Error`: an S3 error code and a sentence. Its HTTP status is decided in one place
//! (`status`), from the code, as S3 answers it.

use std::fmt;

use crate::client::ClientError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub code: &'static str,
    pub message: String,
}

impl S3Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> S3Error {
        S3Error { code, message: message.into() }
    }

    pub fn status(&self) -> u16 {
        match self.code {
            "AccessDenied"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "RequestTimeTooSkewed"
            | "AuthorizationQueryParametersError" => 403,
            "NotModified" => 304,
            "NoSuchBucket" | "NoSuchKey" | "NoSuchUpload" => 404,
            "MethodNotAllowed" => 405,
            "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" | "BucketNotEmpty" => 409,
            "MissingContentLength" => 411,
            "PreconditionFailed" => 412,
            "InvalidRange" | "InvalidPartNumber" => 416,
            "InternalError" => 500,
            "NotImplemented" => 501,
            "ServiceUnavailable" => 503,
            // InvalidArgument, InvalidBucketName, BadDigest, XAmzContentSHA256Mismatch,
            // AuthorizationHeaderMalformed, IncompleteBody, InvalidRequest, ...
            _ => 400,
        }
    }

    pub fn not_implemented(what: &str) -> S3Error {
        S3Error::new("NotImplemented", format!("{what} is not implemented by this AetherStore gateway yet"))
    }

    pub fn internal(message: impl Into<String>) -> S3Error {
        S3Error::new("InternalError", message)
    }

    /// A failure of the master or the datanodes behind the gateway.
    pub fn backend(e: &ClientError) -> S3Error {
        match e.status() {
            Some(503) | None => {
                S3Error::new("ServiceUnavailable", format!("the cluster could not serve this: {}", e.reason()))
            }
            _ => S3Error::internal(format!("the cluster failed: {}", e.reason())),
        }
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for S3Error {}
