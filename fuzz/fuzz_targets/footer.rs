//! Fuzzes the parser of an object file's 32-byte footer (read at start-up scans, by
//! inventories and before every read): any bytes and any file length give an answer,
//! never a panic, and a footer it accepts is exactly the one the store would write.
#![no_main]

use aetherstore::fuzz_api::{encode_footer, parse_footer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, [u8; 32])| {
    let (file_len, footer) = input;
    if let Ok((size, checksum, created)) = parse_footer(&footer, file_len) {
        assert_eq!(size + 32, file_len);
        assert_eq!(encode_footer(size, checksum, created), footer);
    }
    // A footer the store wrote is always accepted for its own length.
    let (size, checksum) = (file_len >> 1, file_len as u32);
    let written = encode_footer(size, checksum, file_len);
    assert_eq!(parse_footer(&written, size + 32), Ok((size, checksum, file_len)));
});
