//! Fuzzes the datanode's `Range` header parser: any header text gives a range or a 416,
//! never a panic, and a range it gives is in order.
#![no_main]

use aetherstore::fuzz_api::parse_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    match parse_range(Some(header)) {
        Ok(Some((start, Some(end)))) => assert!(start <= end, "{header:?} gave {start}-{end}"),
        Ok(Some((_, None))) => {}
        Ok(None) => panic!("a header {header:?} was read as no range"),
        Err(status) => assert_eq!(status, 416, "{header:?}"),
    }
});
