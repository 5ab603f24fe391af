//! Fuzzes the parser of a volume record's 48-byte header (read at start-up replay, by
//! scans, compaction and before every read of a small object; start-up also tries it at
//! every 8-byte offset past a damaged header): any bytes and any salt give an answer,
//! never a panic, and a header it accepts is exactly the one the store would write.
#![no_main]

use aetherstore::fuzz_api::{encode_record_header, parse_record_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, [u8; 48])| {
    let (salt, header) = input;
    if let Ok((kind, id, len, checksum, created)) = parse_record_header(&header, salt) {
        assert!(kind == 1 || (kind == 2 && len == 0));
        assert!(len <= 64 * 1024);
        assert_eq!(encode_record_header(kind, id, len, checksum, created, salt), header);
    }
    // A header the store wrote is always accepted with its own salt.
    let (id, len) = ([salt as u8; 16], (salt % (64 * 1024 + 1)) as u32);
    let written = encode_record_header(1, id, len, salt as u32, salt >> 3, salt);
    assert_eq!(parse_record_header(&written, salt), Ok((1, id, len, salt as u32, salt >> 3)));
});
