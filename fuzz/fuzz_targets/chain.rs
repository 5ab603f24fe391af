//! Fuzzes the datanode's `X-Aether-Chain` header parser (the list of nodes an upload is
//! forwarded to). Whatever it accepts is a short list of base URLs, each already in the
//! one spelling `normalize_address` gives. When the chain gets a signature, feed the
//! signed form through the same door (`fuzz_api::parse_chain`).
#![no_main]

use aetherstore::fuzz_api::parse_chain;
use aetherstore::proto::normalize_address;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    if let Ok(chain) = parse_chain(Some(header)) {
        assert!(chain.len() <= 15, "{header:?} gave {} nodes", chain.len());
        for address in &chain {
            assert!(address.starts_with("http://") || address.starts_with("https://"), "{address:?}");
            assert_eq!(normalize_address(address).as_deref(), Ok(address.as_str()), "{header:?}");
        }
    }
});
