//! Who sent a request: SigV4 checked against the access key's secret, fetched from the
//! master and cached briefly (a deleted key stops working within the cache time).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::body::Payload;
use super::error::S3Error;
use super::sigv4::{self, Credentials, SignedRequest};
use super::GatewayState;
use crate::proto::s3::AccessKey;

/// The clock difference S3 tolerates between a client and itself.
const MAX_SKEW_SECS: u64 = 15 * 60;
/// Access keys remembered at most; beyond this the cache starts over.
const MAX_CACHED_KEYS: usize = 10_000;

pub struct KeyCache {
    ttl: Duration,
    keys: Mutex<HashMap<String, (AccessKey, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache { ttl, keys: Mutex::new(HashMap::new()) }
    }

    fn get(&self, id: &str) -> Option<AccessKey> {
        let keys = self.keys.lock().expect("key cache lock");
        keys.get(id).filter(|(_, at)| at.elapsed() < self.ttl).map(|(key, _)| key.clone())
    }

    fn put(&self, key: AccessKey) {
        let mut keys = self.keys.lock().expect("key cache lock");
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(key.id.clone(), (key, Instant::now()));
    }
}

/// An authenticated request: its key, and how its body is to be read.
pub struct Signer {
    pub key: AccessKey,
    pub payload: Payload,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

impl GatewayState {
    fn access_key(&self, id: &str) -> Result<AccessKey, S3Error> {
        if let Some(key) = self.keys.get(id) {
            return Ok(key);
        }
        match self.client.access_key(id) {
            Ok(key) => {
                self.keys.put(key.clone());
                Ok(key)
            }
            Err(e) if e.status() == Some(404) => Err(S3Error::new(
                "InvalidAccessKeyId",
                format!("the access key {id:?} does not exist; create one with `aether key create NAME`"),
            )),
            Err(e) => Err(S3Error::backend(&e)),
        }
    }

    pub(super) fn authenticate(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &[(String, String)],
        query: &[(String, String)],
    ) -> Result<Signer, S3Error> {
        let (credentials, presigned) =
            match header(headers, "authorization") {
                Some(authorization) => (Credentials::from_header(authorization, header(headers, "x-amz-date"))?, false),
                None => match Credentials::from_query(query)? {
                    Some(credentials) => (credentials, true),
                    None => return Err(S3Error::new(
                        "AccessDenied",
                        "anonymous requests are not allowed; sign requests with an access key (aether key create NAME)",
                    )),
                },
            };
        let time = sigv4::parse_amz_date(&credentials.amz_date).ok_or_else(|| {
            S3Error::new("AccessDenied", format!("the request time {:?} is not YYYYMMDDTHHMMSSZ", credentials.amz_date))
        })?;
        let now = now_secs();
        if time > now + MAX_SKEW_SECS || (!presigned && now > time + MAX_SKEW_SECS) {
            return Err(S3Error::new(
                "RequestTimeTooSkewed",
                "the difference between the request time and the server's time is more than 15 minutes",
            ));
        }
        if let Some(expires) = credentials.expires {
            if now > time + expires {
                return Err(S3Error::new("AccessDenied", "the presigned URL has expired"));
            }
        }
        if !credentials.amz_date.starts_with(&credentials.date) {
            return Err(S3Error::new("AuthorizationHeaderMalformed", "the credential date is not the request's date"));
        }
        let key = self.access_key(&credentials.access_key)?;
        let secret = key.secret.clone().unwrap_or_default();
        let payload_hash = match header(headers, "x-amz-content-sha256") {
            Some(hash) => hash.to_string(),
            None if presigned => "UNSIGNED-PAYLOAD".to_string(),
            None => {
                return Err(S3Error::new(
                    "InvalidRequest",
                    "a request signed in its header must send x-amz-content-sha256",
                ))
            }
        };
        let signed = SignedRequest { method, raw_path, raw_query, headers, payload_hash: &payload_hash };
        let canonical = sigv4::canonical_request(&signed, &credentials.signed_headers, presigned);
        let signing_key = sigv4::signing_key(&secret, &credentials);
        let expected = sigv4::signature(&signing_key, &credentials, &canonical);
        if !sigv4::same(&expected, &credentials.signature) {
            return Err(S3Error::new(
                "SignatureDoesNotMatch",
                "the request signature we calculated does not match the signature you provided; check your key and signing method",
            ));
        }
        let payload = match payload_hash.as_str() {
            "UNSIGNED-PAYLOAD" => Payload::Unsigned,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Payload::StreamingSigned { key: signing_key, credentials },
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Payload::StreamingUnsignedTrailer,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
                Payload::StreamingSignedTrailer { key: signing_key, credentials }
            }
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD" | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER" => {
                return Err(S3Error::not_implemented(&format!("x-amz-content-sha256: {payload_hash}")))
            }
            hash if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Payload::Signed(hash.to_ascii_lowercase())
            }
            other => {
                return Err(S3Error::new(
                    "InvalidArgument",
                    format!("x-amz-content-sha256 {other:?} is not a SHA-256 or a known mode"),
                ))
            }
        };
        Ok(Signer { key, payload })
    }
}
