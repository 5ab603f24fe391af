//! The checksums S3 clients send and ask for (`x-amz-checksum-*`): computing them while
//! bytes stream (`Hasher`), their base64 form, and a multipart object's checksum from its
//! parts' (`composite`: the checksum of the parts' checksums, `-N`; `full_object`: the
//! parts' CRCs combined into the whole body's).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crc_fast::CrcAlgorithm;
use sha1::Digest as _;

use super::error::S3Error;
use crate::proto::s3::{Checksum, ChecksumAlgorithm};

fn crc_algorithm(algorithm: ChecksumAlgorithm) -> Option<CrcAlgorithm> {
    match algorithm {
        ChecksumAlgorithm::Crc32 => Some(CrcAlgorithm::Crc32IsoHdlc),
        ChecksumAlgorithm::Crc32c => Some(CrcAlgorithm::Crc32Iscsi),
        ChecksumAlgorithm::Crc64nvme => Some(CrcAlgorithm::Crc64Nvme),
        ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256 => None,
    }
}

/// The length of an algorithm's raw checksum, in bytes.
fn raw_len(algorithm: ChecksumAlgorithm) -> usize {
    match algorithm {
        ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c => 4,
        ChecksumAlgorithm::Crc64nvme => 8,
        ChecksumAlgorithm::Sha1 => 20,
        ChecksumAlgorithm::Sha256 => 32,
    }
}

/// One checksum computed over bytes as they pass.
#[derive(Clone)]
pub enum Hasher {
    Crc(ChecksumAlgorithm, crc_fast::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(algorithm: ChecksumAlgorithm) -> Hasher {
        match (algorithm, crc_algorithm(algorithm)) {
            (_, Some(crc)) => Hasher::Crc(algorithm, crc_fast::Digest::new(crc)),
            (ChecksumAlgorithm::Sha1, None) => Hasher::Sha1(sha1::Sha1::new()),
            _ => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn algorithm(&self) -> ChecksumAlgorithm {
        match self {
            Hasher::Crc(algorithm, _) => *algorithm,
            Hasher::Sha1(_) => ChecksumAlgorithm::Sha1,
            Hasher::Sha256(_) => ChecksumAlgorithm::Sha256,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Crc(_, digest) => digest.update(bytes),
            Hasher::Sha1(digest) => digest.update(bytes),
            Hasher::Sha256(digest) => sha2::Digest::update(digest, bytes),
        }
    }

    /// The checksum so far, raw (CRCs big-endian, as S3 encodes them).
    pub fn raw(&self) -> Vec<u8> {
        match self {
            Hasher::Crc(algorithm, digest) => {
                let value = digest.finalize();
                if raw_len(*algorithm) == 4 {
                    (value as u32).to_be_bytes().to_vec()
                } else {
                    value.to_be_bytes().to_vec()
                }
            }
            Hasher::Sha1(digest) => digest.clone().finalize().to_vec(),
            Hasher::Sha256(digest) => sha2::Digest::finalize(digest.clone()).to_vec(),
        }
    }

    /// The checksum so far, as S3 sends it (base64).
    pub fn value(&self) -> String {
        BASE64.encode(self.raw())
    }

    pub fn checksum(&self) -> Checksum {
        Checksum { algorithm: self.algorithm(), value: self.value(), composite: false }
    }
}

/// Checks that a checksum a client sent is base64 of the algorithm's length (S3 answers
/// 400 InvalidRequest to anything else).
pub fn check_value(algorithm: ChecksumAlgorithm, value: &str) -> Result<(), S3Error> {
    match BASE64.decode(value.trim()) {
        Ok(raw) if raw.len() == raw_len(algorithm) => Ok(()),
        _ => Err(S3Error::new("InvalidRequest", format!("value for {} is invalid: {value:?}", algorithm.header()))),
    }
}

/// The raw bytes of a stored (single) checksum.
fn raw_of(checksum: &Checksum) -> Result<Vec<u8>, S3Error> {
    BASE64
        .decode(checksum.value.trim())
        .ok()
        .filter(|raw| raw.len() == raw_len(checksum.algorithm))
        .ok_or_else(|| S3Error::internal(format!("a stored checksum {:?} is not valid", checksum.value)))
}

/// A multipart object's `COMPOSITE` checksum: the algorithm over its parts' raw checksums
/// in order, `-N` after it.
pub fn composite(algorithm: ChecksumAlgorithm, parts: &[Checksum]) -> Result<Checksum, S3Error> {
    let mut hasher = Hasher::new(algorithm);
    for part in parts {
        hasher.update(&raw_of(part)?);
    }
    Ok(Checksum { algorithm, value: format!("{}-{}", hasher.value(), parts.len()), composite: true })
}

/// A multipart object's `FULL_OBJECT` checksum (CRCs only): its parts' CRCs combined, as if
/// computed over the whole body. `parts` are (checksum, size) in order.
pub fn full_object(algorithm: ChecksumAlgorithm, parts: &[(Checksum, u64)]) -> Result<Checksum, S3Error> {
    let crc = crc_algorithm(algorithm).ok_or_else(|| {
        S3Error::new("InvalidRequest", format!("{} checksums cannot be of the full object", algorithm.name()))
    })?;
    let mut combined: Option<u64> = None;
    for (part, size) in parts {
        let raw = raw_of(part)?;
        let value = raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        combined = Some(match combined {
            None => value,
            Some(before) => crc_fast::checksum_combine(crc, before, value, *size),
        });
    }
    let value = combined.unwrap_or_else(|| crc_fast::checksum(crc, b""));
    let raw =
        if raw_len(algorithm) == 4 { (value as u32).to_be_bytes().to_vec() } else { value.to_be_bytes().to_vec() };
    Ok(Checksum { algorithm, value: BASE64.encode(raw), composite: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(algorithm: ChecksumAlgorithm, data: &[u8]) -> Checksum {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.checksum()
    }

    #[test]
    fn each_algorithm_has_its_catalogue_check_value() {
        let hex =
            |c: &Checksum| BASE64.decode(&c.value).unwrap().iter().map(|b| format!("{b:02x}")).collect::<String>();
        let check = b"123456789";
        assert_eq!(hex(&sum(ChecksumAlgorithm::Crc32, check)), "cbf43926");
        assert_eq!(hex(&sum(ChecksumAlgorithm::Crc32c, check)), "e3069283");
        assert_eq!(hex(&sum(ChecksumAlgorithm::Crc64nvme, check)), "ae8b14860a799888");
        assert_eq!(hex(&sum(ChecksumAlgorithm::Sha1, b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(&sum(ChecksumAlgorithm::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_value(ChecksumAlgorithm::Crc32, &sum(ChecksumAlgorithm::Crc32, check).value).is_ok());
        assert!(check_value(ChecksumAlgorithm::Sha256, &sum(ChecksumAlgorithm::Crc32, check).value).is_err());
        assert!(check_value(ChecksumAlgorithm::Crc32, "not base64!").is_err());
    }

    #[test]
    fn multipart_checksums_are_composite_or_combined() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (a, b) = data.split_at(60_000);
        for algorithm in [ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Crc64nvme] {
            let parts = [(sum(algorithm, a), a.len() as u64), (sum(algorithm, b), b.len() as u64)];
            assert_eq!(full_object(algorithm, &parts).unwrap(), sum(algorithm, &data), "{algorithm:?}");
        }
        assert!(full_object(ChecksumAlgorithm::Sha256, &[]).is_err());
        let parts = [sum(ChecksumAlgorithm::Sha256, a), sum(ChecksumAlgorithm::Sha256, b)];
        let mut raw = BASE64.decode(&parts[0].value).unwrap();
        raw.extend(BASE64.decode(&parts[1].value).unwrap());
        let expected = format!("{}-2", sum(ChecksumAlgorithm::Sha256, &raw).value);
        let got = composite(ChecksumAlgorithm::Sha256, &parts).unwrap();
        assert_eq!((got.value, got.composite), (expected, true));
    }
}
