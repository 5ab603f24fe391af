//! Uploads in flight without a database row: self-proving upload ids and the placements
//! kept in memory, which let `init` answer without a durable write.
//!
//! An upload id is a UUID version 4, as the seed API promises: its 122 bits look random to
//! anyone without this master's secret, but they carry the second it was issued and the
//! replication asked for (sealed with a pad derived from 54 random bits) and a MAC over
//! the rest, keyed with a secret of this master's database. So `complete` knows, even after a restart, that this
//! master issued the id, how many copies it needs, and whether the upload is still within
//! its grace period: the one durable write of an upload is its `complete`. Where the
//! copies were placed is kept only in memory (`Placements`, bounded): `complete` prefers
//! those nodes, but finds copies without them by asking the live nodes.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::Mac;
use rand::RngCore;

use crate::proto::ObjectId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of the MAC at the end of an id (the rest: 4 bytes of sealed time, 54 random
/// bits, the sealed replication and the UUID's version and variant bits).
const MAC_BYTES: usize = 4;

/// What an upload id says about itself, once its MAC checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub replication: usize,
    /// Unix milliseconds of the second it was issued in (never later than the issue).
    pub issued_ms: i64,
}

/// Issues and checks upload ids with one key.
pub struct UploadIds {
    key: Vec<u8>,
}

impl UploadIds {
    pub fn new(secret: &[u8]) -> UploadIds {
        // A key of its own, so that an id's MAC can never pass for any other MAC.
        let mut derive = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        derive.update(b"aetherstore upload id key v1");
        UploadIds { key: derive.finalize().into_bytes().to_vec() }
    }

    fn keyed(&self, purpose: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(purpose);
        mac
    }

    /// The MAC over everything before it (the sealed time and replication included).
    fn mac(&self, bytes: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed(b"mac");
        mac.update(&bytes[..16 - MAC_BYTES]);
        mac
    }

    /// The pad that seals the time (bytes 0..4) and the replication (byte 6's low
    /// nibble): derived from the id's random bits (bytes 4, 5, 7, 8's low six bits and
    /// 9..12), so that every id's pad differs.
    fn pad(&self, bytes: &[u8; 16]) -> [u8; 5] {
        let mut pad = self.keyed(b"pad");
        pad.update(&[bytes[4], bytes[5], bytes[7], bytes[8] & 0x3f, bytes[9], bytes[10], bytes[11]]);
        let out = pad.finalize().into_bytes();
        [out[0], out[1], out[2], out[3], out[4] & 0x0f]
    }

    /// A new id for an upload of `replication` (1..=16) copies issued at `now_ms`.
    pub fn issue(&self, replication: usize, now_ms: i64, rng: &mut impl RngCore) -> ObjectId {
        assert!((1..=16).contains(&replication), "replication is checked before an id is issued");
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        let pad = self.pad(&bytes);
        let secs = (now_ms.max(0) / 1000) as u32;
        for (i, byte) in secs.to_be_bytes().iter().enumerate() {
            bytes[i] = byte ^ pad[i];
        }
        bytes[6] = 0x40 | ((replication - 1) as u8 ^ pad[4]);
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes[16 - MAC_BYTES..].copy_from_slice(&tag[..MAC_BYTES]);
        ObjectId::from_bytes(bytes)
    }

    /// What `id` says, if this master issued it; `None` for any other id (an upload of
    /// an older version has a database row instead).
    pub fn check(&self, id: &ObjectId) -> Option<Issued> {
        let bytes = id.as_bytes();
        if bytes[6] >> 4 != 4 || bytes[8] >> 6 != 0b10 {
            return None;
        }
        self.mac(bytes).verify_truncated_left(&bytes[16 - MAC_BYTES..]).ok()?;
        let pad = self.pad(bytes);
        let sealed: [u8; 4] = bytes[..4].try_into().expect("four bytes");
        let secs = u32::from_be_bytes([sealed[0] ^ pad[0], sealed[1] ^ pad[1], sealed[2] ^ pad[2], sealed[3] ^ pad[3]]);
        let replication = ((bytes[6] & 0x0f) ^ pad[4]) as usize + 1;
        Some(Issued { replication, issued_ms: i64::from(secs) * 1000 })
    }
}

/// Where an upload in flight was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub size: u64,
    /// Node ids, in the placement's order.
    pub nodes: Vec<String>,
}

/// Placements of uploads in flight, in memory only and bounded: two generations of at
/// most `generation` entries each; when the newer one is full, the older one is dropped.
/// Losing one costs `complete` a look at more nodes, never an upload.
pub struct Placements {
    generation: usize,
    maps: Mutex<(HashMap<ObjectId, Placed>, HashMap<ObjectId, Placed>)>,
}

impl Placements {
    pub fn new(generation: usize) -> Placements {
        Placements { generation: generation.max(1), maps: Mutex::new((HashMap::new(), HashMap::new())) }
    }

    pub fn insert(&self, id: ObjectId, placed: Placed) {
        let mut maps = self.maps.lock().expect("placements lock");
        if maps.0.len() >= self.generation {
            maps.1 = std::mem::take(&mut maps.0);
        }
        maps.0.insert(id, placed);
    }

    pub fn get(&self, id: &ObjectId) -> Option<Placed> {
        let maps = self.maps.lock().expect("placements lock");
        maps.0.get(id).or_else(|| maps.1.get(id)).cloned()
    }

    pub fn remove(&self, id: &ObjectId) {
        let mut maps = self.maps.lock().expect("placements lock");
        maps.0.remove(id);
        maps.1.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_tells_its_issue_and_replication_only_to_its_key() {
        let ids = UploadIds::new(b"secret");
        let mut rng = rand::thread_rng();
        for replication in 1..=16 {
            let id = ids.issue(replication, 1_800_000_123_456, &mut rng);
            assert_eq!(ids.check(&id), Some(Issued { replication, issued_ms: 1_800_000_123_000 }));
            // Canonical text, and the same id back from it.
            assert_eq!(ObjectId::parse(&id.to_string()).unwrap(), id);
            // A UUID version 4 (RFC 9562), as the seed API promises object ids are.
            let text = id.to_string();
            assert_eq!(text.as_bytes()[14], b'4', "version 4: {id}");
            assert!(matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "variant: {id}");
            assert_eq!(uuid::Uuid::parse_str(&text).unwrap().get_version_num(), 4);
            assert_eq!(UploadIds::new(b"other").check(&id), None);
        }
        assert_eq!(ids.check(&ObjectId::new_random()), None);
        let id = ids.issue(3, 1_800_000_000_000, &mut rng);
        // Any bit changed, the id is not ours (time, randomness, replication or MAC).
        for byte in 0..16 {
            for bit in 0..8 {
                let mut bytes = *id.as_bytes();
                bytes[byte] ^= 1 << bit;
                assert_eq!(ids.check(&ObjectId::from_bytes(bytes)), None, "byte {byte} bit {bit}");
            }
        }
        let a = ids.issue(1, 0, &mut rng);
        let b = ids.issue(1, 0, &mut rng);
        assert_ne!(a, b);
        // The issue time is sealed: ids of one second share no visible prefix.
        let prefixes: std::collections::HashSet<[u8; 4]> =
            (0..64).map(|_| ids.issue(2, 1_800_000_000_000, &mut rng).as_bytes()[..4].try_into().unwrap()).collect();
        assert_eq!(prefixes.len(), 64);
    }

    #[test]
    fn placements_keep_at_most_two_generations() {
        let placements = Placements::new(2);
        let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new_random()).collect();
        let placed = |n: u64| Placed { size: n, nodes: vec![format!("n{n}")] };
        for (n, id) in ids.iter().enumerate() {
            placements.insert(*id, placed(n as u64));
        }
        let kept = {
            let maps = placements.maps.lock().unwrap();
            maps.0.len() + maps.1.len()
        };
        assert_eq!(kept, 3);
        assert_eq!(placements.get(&ids[0]), None, "the oldest goes first");
        assert_eq!(placements.get(&ids[4]), Some(placed(4)));
        assert_eq!(placements.get(&ids[3]), Some(placed(3)));
        placements.remove(&ids[4]);
        assert_eq!(placements.get(&ids[4]), None);
    }
}
