//! Fuzzes `ObjectId::parse`, which guards every path on disk: what it accepts is written
//! back in one canonical form (36 characters of lower-case hex and hyphens) that parses to
//! the same id, so no accepted text can name anything but an object file.
#![no_main]

use aetherstore::proto::ObjectId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(id) = ObjectId::parse(text) {
        let canonical = id.to_string();
        assert_eq!(canonical.len(), 36, "{text:?}");
        assert!(canonical.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'));
        assert_eq!(ObjectId::parse(&canonical), Ok(id), "{text:?}");
    }
});
