//! `PayloadReader`: an S3 request body as the bytes to store. It removes `aws-chunked`
//! framing, verifies what the client vouched for (the payload's SHA-256, each chunk's
//! and the trailer's signature, a CRC32/CRC32C/CRC64NVME/SHA1/SHA256 checksum in a header
//! or a trailer, Content-MD5) and computes the MD5 ETag and the checksum kept with the
//! object, all while streaming through the caller's buffer.
//!
//! Whatever is wrong is often only known at the end, so the last bytes of the body are
//! handed on only after every check passed: a datanode receives its announced length
//! (and so stores the object) only for a body that verified. A failure is an `io::Error`
//! to whoever reads, and kept as an `S3Error` (`failure`) for the reply.

use std::collections::HashMap;
use std::io::{self, Read};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use md5::Md5;
use sha2::{Digest, Sha256};

use super::checksum::Hasher;
use super::error::S3Error;
use super::sigv4::{self, Credentials};
use crate::proto::s3::{Checksum, ChecksumAlgorithm};

/// The longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;
/// The most trailing headers accepted.
const MAX_TRAILERS: usize = 16;

/// How the body is sent, from `x-amz-content-sha256`.
pub enum Payload {
    /// The hex SHA-256 of the whole body, which the signature covers.
    Signed(String),
    Unsigned,
    /// `aws-chunked`, each chunk signed, chained from the request's signature.
    StreamingSigned {
        key: Vec<u8>,
        credentials: Credentials,
    },
    /// `aws-chunked` without signatures, checksum in a trailer.
    StreamingUnsignedTrailer,
    /// `aws-chunked`, each chunk signed, then a trailer signed too (`x-amz-trailer-signature`,
    /// chained from the final chunk's signature).
    StreamingSignedTrailer {
        key: Vec<u8>,
        credentials: Credentials,
    },
}

impl Payload {
    pub fn is_chunked(&self) -> bool {
        !matches!(self, Payload::Signed(_) | Payload::Unsigned)
    }

    /// The signing key and credentials of a body whose chunks are signed.
    fn chunk_signer(&self) -> Option<(&[u8], &Credentials)> {
        match self {
            Payload::StreamingSigned { key, credentials } | Payload::StreamingSignedTrailer { key, credentials } => {
                Some((key, credentials))
            }
            _ => None,
        }
    }
}

/// What the body must match besides its payload mode.
#[derive(Default)]
pub struct Expected {
    /// A checksum header and its base64 value.
    pub checksum: Option<(ChecksumAlgorithm, String)>,
    /// The trailer (from `x-amz-trailer`) that will carry a checksum.
    pub trailer: Option<(ChecksumAlgorithm, String)>,
    /// `Content-MD5`, base64.
    pub content_md5: Option<String>,
    /// A checksum to compute (and keep) though the client sent none.
    pub compute: Option<ChecksumAlgorithm>,
}

impl Expected {
    /// The checksum kept with the body: the one the client sent, else the one asked for.
    fn kept(&self) -> Option<ChecksumAlgorithm> {
        self.checksum.as_ref().map(|(a, _)| *a).or(self.trailer.as_ref().map(|(a, _)| *a)).or(self.compute)
    }
}

pub struct PayloadReader<'a> {
    inner: &'a mut dyn Read,
    payload: Payload,
    expected: Expected,
    /// Body bytes (after framing) not yet handed on.
    remaining: u64,
    md5: Md5,
    sha256: Sha256,
    /// The checksums the body is checked against or kept with.
    sums: Vec<Hasher>,
    chunk: Chunk,
    finished: bool,
    pub failure: Option<S3Error>,
}

/// Where an `aws-chunked` body is.
#[derive(Default)]
struct Chunk {
    /// Inside a chunk's data (its header read, its closing CRLF not).
    open: bool,
    left: u64,
    signature: String,
    hash: Option<Sha256>,
    /// The signature of the previous chunk (the request's, for the first).
    previous: String,
}

impl<'a> PayloadReader<'a> {
    /// A reader of `length` body bytes (the decoded length for `aws-chunked`).
    pub fn new(inner: &'a mut dyn Read, payload: Payload, expected: Expected, length: u64) -> PayloadReader<'a> {
        let mut sums: Vec<Hasher> = Vec::new();
        // Only the checksums compared or kept are computed.
        let sent = [expected.checksum.as_ref().map(|(a, _)| *a), expected.trailer.as_ref().map(|(a, _)| *a)];
        let compute = if sent.iter().all(Option::is_none) { expected.compute } else { None };
        let wanted = [sent[0], sent[1], compute];
        for algorithm in wanted.into_iter().flatten() {
            if !sums.iter().any(|h| h.algorithm() == algorithm) {
                sums.push(Hasher::new(algorithm));
            }
        }
        let previous = payload.chunk_signer().map(|(_, credentials)| credentials.signature.clone()).unwrap_or_default();
        PayloadReader {
            inner,
            payload,
            expected,
            remaining: length,
            md5: Md5::new(),
            sha256: Sha256::new(),
            sums,
            chunk: Chunk { previous, ..Chunk::default() },
            finished: false,
            failure: None,
        }
    }

    /// The checksum kept with the body (the client's, verified, or the one asked for),
    /// once every byte was read.
    pub fn checksum(&self) -> Option<Checksum> {
        let kept = self.expected.kept()?;
        self.sums.iter().find(|h| h.algorithm() == kept).map(Hasher::checksum)
    }

    /// The MD5 of the body, hex: its ETag.
    pub fn etag(&self) -> String {
        sigv4::hex(&self.md5.clone().finalize())
    }

    /// Reads to the end and checks everything: for a body nothing read to its end (an
    /// empty one, or one whose upload stopped early).
    pub fn finish(&mut self) -> Result<(), S3Error> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let mut sink = [0u8; 64 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(self.failure.clone().unwrap_or_else(|| S3Error::internal("the body failed"))),
            }
        }
    }

    fn fail(&mut self, e: S3Error) -> io::Error {
        let error = io::Error::other(e.to_string());
        self.failure = Some(e);
        error
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, S3Error> {
        loop {
            match self.inner.read(buf) {
                Ok(0) if !buf.is_empty() => {
                    return Err(S3Error::new("IncompleteBody", "the request body ended before its announced length"))
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(S3Error::new("IncompleteBody", format!("the request body could not be read: {e}")))
                }
            }
        }
    }

    fn read_line(&mut self) -> Result<Option<String>, S3Error> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.inner.read(&mut byte) {
                Ok(0) if line.is_empty() => return Ok(None),
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(S3Error::new("IncompleteBody", format!("the request body could not be read: {e}")))
                }
            }
            if line.len() > MAX_LINE {
                return Err(S3Error::new("InvalidRequest", "an aws-chunked line is too long"));
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map(Some).map_err(|_| S3Error::new("InvalidRequest", "an aws-chunked line is not text"))
    }

    /// Closes the open chunk: its CRLF, then its signature.
    fn end_chunk(&mut self) -> Result<(), S3Error> {
        if !self.chunk.open {
            return Ok(());
        }
        let line = self.read_line()?;
        if line.as_deref() != Some("") {
            return Err(S3Error::new("InvalidRequest", "an aws-chunked chunk is longer than its header says"));
        }
        self.chunk.open = false;
        self.check_chunk_signature()
    }

    fn check_chunk_signature(&mut self) -> Result<(), S3Error> {
        let Some((key, credentials)) = self.payload.chunk_signer() else { return Ok(()) };
        let hash = sigv4::hex(&self.chunk.hash.take().unwrap_or_default().finalize());
        let expected = sigv4::chunk_signature(key, credentials, &self.chunk.previous, &hash);
        if !sigv4::same(&expected, &self.chunk.signature) {
            return Err(S3Error::new(
                "SignatureDoesNotMatch",
                "a chunk signature does not match; check the secret key and the signing method",
            ));
        }
        self.chunk.previous = expected;
        Ok(())
    }

    /// A signed trailer's `x-amz-trailer-signature`, chained from the final chunk's.
    fn check_trailer_signature(&self, trailers: &[(String, String)], signature: Option<&str>) -> Result<(), S3Error> {
        let Payload::StreamingSignedTrailer { key, credentials } = &self.payload else { return Ok(()) };
        let signature = signature.ok_or_else(|| {
            S3Error::new("SignatureDoesNotMatch", "a signed aws-chunked trailer has no x-amz-trailer-signature")
        })?;
        let expected = sigv4::trailer_signature(key, credentials, &self.chunk.previous, trailers);
        if !sigv4::same(&expected, &signature.to_ascii_lowercase()) {
            return Err(S3Error::new(
                "SignatureDoesNotMatch",
                "the trailer signature does not match; check the secret key and the signing method",
            ));
        }
        Ok(())
    }

    /// Reads the next chunk header; returns its size.
    fn open_chunk(&mut self) -> Result<u64, S3Error> {
        let line =
            self.read_line()?.ok_or_else(|| S3Error::new("IncompleteBody", "the aws-chunked body ended early"))?;
        let (size, extensions) = line.split_once(';').unwrap_or((&line, ""));
        let size = u64::from_str_radix(size.trim(), 16)
            .map_err(|_| S3Error::new("InvalidRequest", format!("bad aws-chunked chunk header {line:?}")))?;
        self.chunk.signature = extensions
            .split(';')
            .find_map(|e| e.trim().strip_prefix("chunk-signature="))
            .unwrap_or_default()
            .to_ascii_lowercase();
        if self.payload.chunk_signer().is_some() && self.chunk.signature.is_empty() {
            return Err(S3Error::new("SignatureDoesNotMatch", "a chunk of a signed aws-chunked body has no signature"));
        }
        self.chunk.hash = Some(Sha256::new());
        self.chunk.left = size;
        self.chunk.open = size > 0;
        if size == 0 {
            self.check_chunk_signature()?;
        }
        Ok(size)
    }

    /// Reads body bytes (framing removed) into `buf`, at least one.
    fn read_body(&mut self, buf: &mut [u8]) -> Result<usize, S3Error> {
        if !self.payload.is_chunked() {
            return self.read_inner(buf);
        }
        while self.chunk.left == 0 {
            self.end_chunk()?;
            if self.open_chunk()? == 0 {
                return Err(S3Error::new(
                    "IncompleteBody",
                    "the aws-chunked body is shorter than x-amz-decoded-content-length",
                ));
            }
        }
        let want = buf.len().min(self.chunk.left as usize);
        let n = self.read_inner(&mut buf[..want])?;
        self.chunk.left -= n as u64;
        if let Some(hash) = &mut self.chunk.hash {
            hash.update(&buf[..n]);
        }
        Ok(n)
    }

    /// After the last body byte: the rest of the framing, then every check.
    fn check_end(&mut self) -> Result<(), S3Error> {
        let mut trailers = HashMap::new();
        if self.payload.is_chunked() {
            self.end_chunk()?;
            if self.open_chunk()? != 0 {
                return Err(S3Error::new(
                    "InvalidRequest",
                    "the aws-chunked body is longer than x-amz-decoded-content-length",
                ));
            }
            let mut signature = None;
            let mut lines = Vec::new();
            while let Some(line) = self.read_line()? {
                if line.is_empty() {
                    break;
                }
                if lines.len() >= MAX_TRAILERS {
                    return Err(S3Error::new("InvalidRequest", "the aws-chunked trailer has too many lines"));
                }
                let Some((name, value)) = line.split_once(':') else {
                    return Err(S3Error::new("InvalidRequest", format!("bad aws-chunked trailer line {line:?}")));
                };
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
                if name == "x-amz-trailer-signature" {
                    signature = Some(value);
                } else {
                    lines.push((name, value));
                }
            }
            self.check_trailer_signature(&lines, signature.as_deref())?;
            trailers.extend(lines);
        }
        if let Payload::Signed(expected) = &self.payload {
            let got = sigv4::hex(&self.sha256.clone().finalize());
            if !expected.eq_ignore_ascii_case(&got) {
                return Err(S3Error::new(
                    "XAmzContentSHA256Mismatch",
                    format!("the body's SHA-256 is {got}, not the x-amz-content-sha256 {expected}"),
                ));
            }
        }
        let computed = |algorithm: ChecksumAlgorithm| {
            self.sums.iter().find(|h| h.algorithm() == algorithm).map(Hasher::value).unwrap_or_default()
        };
        if let Some((algorithm, value)) = &self.expected.checksum {
            if computed(*algorithm) != *value {
                return Err(S3Error::new(
                    "BadDigest",
                    format!(
                        "the {} you specified ({value}) did not match the body's, {}",
                        algorithm.name(),
                        computed(*algorithm)
                    ),
                ));
            }
        }
        if let Some((algorithm, name)) = &self.expected.trailer {
            let value = trailers.get(name).ok_or_else(|| {
                S3Error::new("InvalidRequest", format!("the trailer {name} announced in x-amz-trailer is missing"))
            })?;
            super::checksum::check_value(*algorithm, value)?;
            if computed(*algorithm) != *value {
                return Err(S3Error::new(
                    "BadDigest",
                    format!(
                        "the {} in the trailer ({value}) did not match the body's, {}",
                        algorithm.name(),
                        computed(*algorithm)
                    ),
                ));
            }
        }
        if let Some(md5) = &self.expected.content_md5 {
            let got = BASE64.encode(self.md5.clone().finalize());
            if got != *md5 {
                return Err(S3Error::new("BadDigest", format!("the body's MD5 is {got}, not the Content-MD5 {md5}")));
            }
        }
        Ok(())
    }

    fn account(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        if matches!(self.payload, Payload::Signed(_)) {
            self.sha256.update(bytes);
        }
        for sum in &mut self.sums {
            sum.update(bytes);
        }
    }

    fn step(&mut self, buf: &mut [u8]) -> Result<usize, S3Error> {
        if self.remaining == 0 {
            if !self.finished {
                self.check_end()?;
                self.finished = true;
            }
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        if want as u64 == self.remaining {
            // The last bytes: all of them are read and checked before any is handed on.
            let mut filled = 0;
            while filled < want {
                filled += self.read_body(&mut buf[filled..want])?;
            }
            self.account(&buf[..want]);
            self.remaining = 0;
            self.check_end()?;
            self.finished = true;
            return Ok(want);
        }
        let n = self.read_body(&mut buf[..want])?;
        self.account(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failure {
            return Err(io::Error::other(failure.to_string()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.step(buf).map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(data: &[u8], chunk: usize, trailer: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in data.chunks(chunk) {
            out.extend(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend(piece);
            out.extend(b"\r\n");
        }
        out.extend(format!("0\r\n{trailer}\r\n\r\n").as_bytes());
        out
    }

    fn crc32_b64(data: &[u8]) -> String {
        let mut hasher = Hasher::new(ChecksumAlgorithm::Crc32);
        hasher.update(data);
        hasher.value()
    }

    fn read_all(reader: &mut PayloadReader<'_>) -> Result<Vec<u8>, S3Error> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend(&buf[..n]),
                Err(_) => return Err(reader.failure.clone().unwrap()),
            }
        }
    }

    #[test]
    fn unsigned_trailer_framing_never_reaches_the_bytes() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let body = framed(&data, 8192, &format!("x-amz-checksum-crc32:{}", crc32_b64(&data)));
        let mut input: &[u8] = &body;
        let expected = Expected {
            trailer: Some((ChecksumAlgorithm::Crc32, "x-amz-checksum-crc32".into())),
            ..Expected::default()
        };
        let mut reader = PayloadReader::new(&mut input, Payload::StreamingUnsignedTrailer, expected, data.len() as u64);
        assert_eq!(read_all(&mut reader).unwrap(), data);
        assert_eq!(reader.etag(), sigv4::hex(&Md5::digest(&data)));
    }

    #[test]
    fn a_wrong_trailer_fails_before_the_last_byte() {
        let data = vec![7u8; 5000];
        let body = framed(&data, 1024, &format!("x-amz-checksum-crc32:{}", crc32_b64(b"other")));
        let mut input: &[u8] = &body;
        let expected = Expected {
            trailer: Some((ChecksumAlgorithm::Crc32, "x-amz-checksum-crc32".into())),
            ..Expected::default()
        };
        let mut reader = PayloadReader::new(&mut input, Payload::StreamingUnsignedTrailer, expected, 5000);
        let mut handed = 0;
        let mut buf = [0u8; 700];
        let error = loop {
            match reader.read(&mut buf) {
                Ok(0) => panic!("a bad trailer was accepted"),
                Ok(n) => handed += n,
                Err(_) => break reader.failure.clone().unwrap(),
            }
        };
        assert_eq!(error.code, "BadDigest");
        assert!(handed < 5000, "all {handed} bytes were handed on before the check");
    }

    #[test]
    fn a_signed_payload_is_checked_and_a_short_body_is_incomplete() {
        let data = b"hello world".to_vec();
        let mut input: &[u8] = &data;
        let mut reader =
            PayloadReader::new(&mut input, Payload::Signed(sigv4::sha256_hex(&data)), Expected::default(), 11);
        assert_eq!(read_all(&mut reader).unwrap(), data);

        let mut input: &[u8] = &data;
        let mut reader =
            PayloadReader::new(&mut input, Payload::Signed(sigv4::sha256_hex(b"x")), Expected::default(), 11);
        assert_eq!(read_all(&mut reader).unwrap_err().code, "XAmzContentSHA256Mismatch");

        let mut input: &[u8] = &data;
        let mut reader = PayloadReader::new(&mut input, Payload::Unsigned, Expected::default(), 20);
        assert_eq!(read_all(&mut reader).unwrap_err().code, "IncompleteBody");
    }

    /// The documented STREAMING-AWS4-HMAC-SHA256-PAYLOAD example: 65 KiB of `a`.
    #[test]
    fn signed_chunks_verify_and_a_forged_one_fails() {
        let credentials = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            date: "20130524".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            signed_headers: vec![],
            signature: "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9".into(),
            amz_date: "20130524T000000Z".into(),
            expires: None,
        };
        let key = sigv4::signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &credentials);
        let sigs = [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ];
        let body = |last: &str| {
            let mut out = Vec::new();
            out.extend(format!("10000;chunk-signature={}\r\n", sigs[0]).as_bytes());
            out.extend([b'a'; 65536]);
            out.extend(format!("\r\n400;chunk-signature={}\r\n", sigs[1]).as_bytes());
            out.extend([b'a'; 1024]);
            out.extend(format!("\r\n0;chunk-signature={last}\r\n\r\n").as_bytes());
            out
        };
        let good = body(sigs[2]);
        let mut input: &[u8] = &good;
        let payload = Payload::StreamingSigned { key: key.clone(), credentials: credentials.clone() };
        let mut reader = PayloadReader::new(&mut input, payload, Expected::default(), 66560);
        assert_eq!(read_all(&mut reader).unwrap(), vec![b'a'; 66560]);

        let forged = body(sigs[1]);
        let mut input: &[u8] = &forged;
        let payload = Payload::StreamingSigned { key, credentials };
        let mut reader = PayloadReader::new(&mut input, payload, Expected::default(), 66560);
        assert_eq!(read_all(&mut reader).unwrap_err().code, "SignatureDoesNotMatch");
    }

    #[test]
    fn a_signed_trailer_verifies_and_a_changed_one_fails() {
        let credentials = Credentials {
            access_key: "AK".into(),
            date: "20130524".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            signed_headers: vec![],
            signature: "00".repeat(32),
            amz_date: "20130524T000000Z".into(),
            expires: None,
        };
        let key = sigv4::signing_key("secret", &credentials);
        let data = vec![b'z'; 3000];
        let body = |sent_crc: &str, signed_crc: &str| {
            let mut out = Vec::new();
            let mut previous = credentials.signature.clone();
            for piece in [&data[..2048], &data[2048..], &[][..]] {
                previous = sigv4::chunk_signature(&key, &credentials, &previous, &sigv4::sha256_hex(piece));
                out.extend(format!("{:x};chunk-signature={previous}\r\n", piece.len()).as_bytes());
                out.extend(piece);
                if !piece.is_empty() {
                    out.extend(b"\r\n");
                }
            }
            let signed = [("x-amz-checksum-crc32".to_string(), signed_crc.to_string())];
            let signature = sigv4::trailer_signature(&key, &credentials, &previous, &signed);
            out.extend(
                format!("x-amz-checksum-crc32:{sent_crc}\r\nx-amz-trailer-signature:{signature}\r\n\r\n").as_bytes(),
            );
            out
        };
        let read = |framed: Vec<u8>| {
            let mut input: &[u8] = &framed;
            let payload = Payload::StreamingSignedTrailer { key: key.clone(), credentials: credentials.clone() };
            let expected = Expected {
                trailer: Some((ChecksumAlgorithm::Crc32, "x-amz-checksum-crc32".into())),
                ..Expected::default()
            };
            let mut reader = PayloadReader::new(&mut input, payload, expected, data.len() as u64);
            read_all(&mut reader).map_err(|e| e.code)
        };
        let good = crc32_b64(&data);
        assert_eq!(read(body(&good, &good)), Ok(data.clone()));
        assert_eq!(read(body(&crc32_b64(b"x"), &good)), Err("SignatureDoesNotMatch"));
        assert_eq!(read(body(&crc32_b64(b"x"), &crc32_b64(b"x"))), Err("BadDigest"));
    }
}
