//! AWS Signature Version 4 as S3 checks it, as pure functions: the canonical request
//! (path and query decoded, then encoded again the one canonical way, so any client's
//! encoding signs the same), the string to sign, the signing key, and the signatures of
//! `aws-chunked` chunks. Credentials come from the `Authorization` header or, for a
//! presigned URL, from the query string.

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use super::error::S3Error;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The hash of an empty payload, which every chunk signature includes.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Characters SigV4 leaves alone: letters, digits and `-_.~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// The same, and `/` (for paths).
const UNRESERVED_PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// `UriEncode` of the SigV4 specification.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    utf8_percent_encode(text, if keep_slash { UNRESERVED_PATH } else { UNRESERVED }).to_string()
}

/// Percent-decodes `text` (and `+` too, when `plus_is_space`, as forms write it).
pub fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// A query string as (name, value) pairs, decoded.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((name, value)) => (decode(name), decode(value)),
            None => (decode(part), String::new()),
        })
        .collect()
}

/// Who signed a request and how: from `Authorization` or from a presigned URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// The request time, `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// Seconds a presigned URL stays valid; `None` for header auth.
    pub expires: Option<u64>,
}

impl Credentials {
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }

    /// Reads `Authorization: AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,
    /// SignedHeaders=host;x-amz-date, Signature=...` and the `x-amz-date` header.
    pub fn from_header(authorization: &str, amz_date: Option<&str>) -> Result<Credentials, S3Error> {
        let malformed =
            |why: &str| S3Error::new("AuthorizationHeaderMalformed", format!("the Authorization header {why}"));
        let rest = authorization.strip_prefix(ALGORITHM).ok_or_else(|| {
            malformed(&format!("does not start with {ALGORITHM}; only Signature Version 4 is supported"))
        })?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            match part.trim().split_once('=') {
                Some(("Credential", v)) => credential = Some(v.trim()),
                Some(("SignedHeaders", v)) => signed = Some(v.trim()),
                Some(("Signature", v)) => signature = Some(v.trim()),
                _ => {}
            }
        }
        let credential = credential.ok_or_else(|| malformed("has no Credential"))?;
        let signed = signed.ok_or_else(|| malformed("has no SignedHeaders"))?;
        let signature = signature.ok_or_else(|| malformed("has no Signature"))?;
        let amz_date = amz_date.ok_or_else(|| S3Error::new("AccessDenied", "the request has no x-amz-date header"))?;
        Credentials::build(credential, signed, signature, amz_date, None)
    }

    /// Reads the `X-Amz-*` parameters of a presigned URL.
    pub fn from_query(query: &[(String, String)]) -> Result<Option<Credentials>, S3Error> {
        let get = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let Some(algorithm) = get("X-Amz-Algorithm") else { return Ok(None) };
        if algorithm != ALGORITHM {
            return Err(S3Error::new("AuthorizationQueryParametersError", "only AWS4-HMAC-SHA256 is supported"));
        }
        let missing = |name: &str| {
            S3Error::new("AuthorizationQueryParametersError", format!("the presigned URL has no {name} parameter"))
        };
        let expires: u64 = get("X-Amz-Expires")
            .ok_or_else(|| missing("X-Amz-Expires"))?
            .parse()
            .map_err(|_| S3Error::new("AuthorizationQueryParametersError", "X-Amz-Expires is not a number"))?;
        if expires > 7 * 24 * 3600 {
            return Err(S3Error::new("AuthorizationQueryParametersError", "X-Amz-Expires must be at most 604800"));
        }
        Credentials::build(
            get("X-Amz-Credential").ok_or_else(|| missing("X-Amz-Credential"))?,
            get("X-Amz-SignedHeaders").ok_or_else(|| missing("X-Amz-SignedHeaders"))?,
            get("X-Amz-Signature").ok_or_else(|| missing("X-Amz-Signature"))?,
            get("X-Amz-Date").ok_or_else(|| missing("X-Amz-Date"))?,
            Some(expires),
        )
        .map(Some)
    }

    fn build(
        credential: &str,
        signed: &str,
        signature: &str,
        amz_date: &str,
        expires: Option<u64>,
    ) -> Result<Credentials, S3Error> {
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key, date, region, service, "aws4_request"] = parts[..] else {
            return Err(S3Error::new(
                "AuthorizationHeaderMalformed",
                format!("the credential {credential:?} is not KEY/DATE/REGION/SERVICE/aws4_request"),
            ));
        };
        Ok(Credentials {
            access_key: access_key.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers: signed.split(';').map(|h| h.to_ascii_lowercase()).collect(),
            signature: signature.to_ascii_lowercase(),
            amz_date: amz_date.to_string(),
            expires,
        })
    }
}

/// The parts of a request that its signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub raw_path: &'a str,
    /// The query string as sent, without `?`.
    pub raw_query: &'a str,
    /// All headers, names in any case.
    pub headers: &'a [(String, String)],
    /// `x-amz-content-sha256`, or `UNSIGNED-PAYLOAD` for a presigned URL.
    pub payload_hash: &'a str,
}

/// The canonical request of the SigV4 specification. S3 paths are encoded once (not
/// twice as other services do) and not normalized.
pub fn canonical_request(request: &SignedRequest<'_>, signed_headers: &[String], presigned: bool) -> String {
    let path = uri_encode(&decode(request.raw_path), true);
    let mut query: Vec<(String, String)> = parse_query(request.raw_query)
        .into_iter()
        .filter(|(name, _)| !(presigned && name == "X-Amz-Signature"))
        .map(|(name, value)| (uri_encode(&name, false), uri_encode(&value, false)))
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{}\n{path}\n{}\n{headers}\n{}\n{}",
        request.method,
        query.join("&"),
        signed_headers.join(";"),
        request.payload_hash
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The key that signs for one day, region and service.
pub fn signing_key(secret: &str, credentials: &Credentials) -> Vec<u8> {
    let day = hmac(format!("AWS4{secret}").as_bytes(), credentials.date.as_bytes());
    let region = hmac(&day, credentials.region.as_bytes());
    let service = hmac(&region, credentials.service.as_bytes());
    hmac(&service, b"aws4_request")
}

/// The signature of a request whose canonical request is `canonical`.
pub fn signature(key: &[u8], credentials: &Credentials, canonical: &str) -> String {
    let to_sign =
        format!("{ALGORITHM}\n{}\n{}\n{}", credentials.amz_date, credentials.scope(), sha256_hex(canonical.as_bytes()));
    hex(&hmac(key, to_sign.as_bytes()))
}

/// The signature of one `aws-chunked` chunk, chained to the one before it (the request's
/// own signature for the first chunk).
pub fn chunk_signature(key: &[u8], credentials: &Credentials, previous: &str, chunk_sha256: &str) -> String {
    let to_sign = format!(
        "{ALGORITHM}-PAYLOAD\n{}\n{}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256}",
        credentials.amz_date,
        credentials.scope()
    );
    hex(&hmac(key, to_sign.as_bytes()))
}

/// The signature of the trailer of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER` body
/// (`x-amz-trailer-signature`), chained to the final, empty chunk's. `trailers` are the
/// trailing headers but the signature, each canonical as `name:value\n`, by name.
pub fn trailer_signature(
    key: &[u8],
    credentials: &Credentials,
    previous: &str,
    trailers: &[(String, String)],
) -> String {
    let mut sorted: Vec<&(String, String)> = trailers.iter().collect();
    sorted.sort();
    let canonical: String = sorted.iter().map(|(name, value)| format!("{name}:{}\n", value.trim())).collect();
    let to_sign = format!(
        "{ALGORITHM}-TRAILER\n{}\n{}\n{previous}\n{}",
        credentials.amz_date,
        credentials.scope(),
        sha256_hex(canonical.as_bytes())
    );
    hex(&hmac(key, to_sign.as_bytes()))
}

/// Compares two signatures in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the Unix epoch of an `x-amz-date` (`20130524T000000Z`).
pub fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    let time = humantime::parse_rfc3339(&rfc3339).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// The GET example of the S3 SigV4 documentation.
    #[test]
    fn the_documented_get_object_example_verifies() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
                    SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
                    Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
        let credentials = Credentials::from_header(auth, Some("20130524T000000Z")).unwrap();
        let headers = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let request = SignedRequest {
            method: "GET",
            raw_path: "/test.txt",
            raw_query: "",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let canonical = canonical_request(&request, &credentials.signed_headers, false);
        let key = signing_key(SECRET, &credentials);
        assert_eq!(signature(&key, &credentials, &canonical), credentials.signature);
    }

    /// The chunked upload example of the S3 documentation: 64 KiB and 1 KiB of `a`.
    #[test]
    fn the_documented_chunk_signatures_chain() {
        let credentials = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            date: "20130524".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            signed_headers: vec![],
            signature: String::new(),
            amz_date: "20130524T000000Z".into(),
            expires: None,
        };
        let key = signing_key(SECRET, &credentials);
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        let first = chunk_signature(&key, &credentials, seed, &sha256_hex(&[b'a'; 65536]));
        assert_eq!(first, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648");
        let second = chunk_signature(&key, &credentials, &first, &sha256_hex(&[b'a'; 1024]));
        assert_eq!(second, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497");
        let last = chunk_signature(&key, &credentials, &second, EMPTY_SHA256);
        assert_eq!(last, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9");
    }

    #[test]
    fn query_and_path_are_canonical_whatever_the_client_encoded() {
        let headers = headers(&[("host", "h")]);
        let request = SignedRequest {
            method: "GET",
            raw_path: "/b/a%20b/c~d",
            raw_query: "prefix=x%2Fy&list-type=2&delimiter=/&empty",
            headers: &headers,
            payload_hash: "UNSIGNED-PAYLOAD",
        };
        let canonical = canonical_request(&request, &["host".to_string()], false);
        assert_eq!(
            canonical,
            "GET\n/b/a%20b/c~d\ndelimiter=%2F&empty=&list-type=2&prefix=x%2Fy\nhost:h\n\nhost\nUNSIGNED-PAYLOAD"
        );
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1369353600));
        assert_eq!(parse_amz_date("2013-05-24"), None);
    }
}
