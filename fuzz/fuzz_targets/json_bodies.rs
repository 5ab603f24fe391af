//! Fuzzes the JSON bodies the servers read (through serde, as `http::read_json` does):
//! every request body type of the master and the datanode, and the replies the client
//! reads. Malformed input is an error, never a panic, and whatever parses can be written
//! back and parsed again.
#![no_main]

use aetherstore::proto::*;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        let written = serde_json::to_vec(&value).expect("a parsed body serialises");
        serde_json::from_slice::<T>(&written).expect("a written body parses again");
    }
}

fuzz_target!(|body: &[u8]| {
    // Bodies servers accept.
    round_trip::<RegisterNode>(body);
    round_trip::<Heartbeat>(body);
    round_trip::<ReplicaReport>(body);
    round_trip::<Inventory>(body);
    round_trip::<InitUpload>(body);
    round_trip::<InitUploadBatch>(body);
    round_trip::<ReplaceNodes>(body);
    round_trip::<CompleteUpload>(body);
    round_trip::<ReplicateRequest>(body);
    round_trip::<DeleteRequest>(body);
    // Replies clients and datanodes read.
    round_trip::<Placement>(body);
    round_trip::<PlacementBatch>(body);
    round_trip::<ObjectInfo>(body);
    round_trip::<NodeList>(body);
    round_trip::<NodeCommands>(body);
    round_trip::<ReplicateResult>(body);
    round_trip::<Stored>(body);
    round_trip::<ClusterStatus>(body);
    round_trip::<ErrorBody>(body);
});
