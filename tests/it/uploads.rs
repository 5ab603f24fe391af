//! One-commit uploads: `init` writes nothing durable, `complete` is the upload's one
//! durable write; placements survive a master restart through their self-proving ids;
//! abandoned uploads are collected by inventories after the grace period, and a
//! `complete` racing the collector never loses the copies it vouched for.

use std::time::{Duration, Instant};

use aetherstore::client::{Client, ClientError};
use aetherstore::proto::{ObjectId, Receipt};
use serde_json::json;

use crate::cluster::{api_get, get_bytes, pattern, request, upload, wait_until, TestCluster};

fn client(cluster: &TestCluster) -> Client {
    Client::new(aetherstore::client::agent(), &cluster.master.url)
}

/// Metadata writes the master has committed so far (`_sum` of the commit-batch
/// histogram: every write counts one, however many share a commit).
fn master_writes(master: &str) -> f64 {
    commit_histogram(master, "sum")
}

/// Durable commits of the master's database so far (each holds one or more writes).
fn master_commits(master: &str) -> f64 {
    commit_histogram(master, "count")
}

fn commit_histogram(master: &str, part: &str) -> f64 {
    let (status, _) = api_get(&format!("{master}/health")).unwrap();
    assert_eq!(status, 200);
    let text = crate::cluster::agent().get(&format!("{master}/metrics")).call().unwrap().into_string().unwrap();
    let name = format!("aether_master_db_commit_batch_size_{part} ");
    let line =
        text.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no commit-batch histogram in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn an_upload_costs_the_master_one_durable_write() {
    let cluster = TestCluster::start("one-write", 3, 2);
    let m = cluster.master.url.clone();
    let client = client(&cluster);
    // A first upload, so that every node has registered and reported before counting.
    client.upload(5, None, &mut || Ok(&b"first"[..])).unwrap();
    let before = master_writes(&m);
    let n = 30;
    for i in 0..n {
        let data = pattern(i, 4096);
        client.upload(data.len() as u64, None, &mut || Ok(&data[..])).unwrap();
    }
    // The seed's flow: `complete` without receipts, the master asks the placed nodes.
    for i in 0..10 {
        upload(&m, &pattern(100 + i, 100));
    }
    let writes = master_writes(&m) - before;
    // Two per upload before (init and complete); background work (the maintenance
    // loop's expiry every 10 s) adds a few at most.
    assert!(writes <= (n + 10 + 4) as f64, "{writes} metadata writes for {} uploads", n + 10);
}

#[test]
fn a_placement_from_before_a_master_restart_completes() {
    let mut cluster = TestCluster::start("restart-init", 3, 2);
    let client = client(&cluster);
    let data = pattern(7, 10_000);
    let placement = client.init_upload(data.len() as u64, None).unwrap();
    let id = ObjectId::parse(&placement.objectid).unwrap();
    assert_eq!(placement.nodes.len(), 2);
    // Placed, but nothing written yet: the restart forgets the placement.
    cluster.restart_master();
    let client = Client::new(aetherstore::client::agent(), &cluster.master.url);
    let stored =
        client.put_chain(&placement.nodes, placement.signature.as_deref(), &id, &data[..], data.len() as u64).unwrap();
    let receipts: Vec<Receipt> = stored.replicas.iter().filter_map(|r| r.receipt.clone()).collect();
    assert_eq!(receipts.len(), 2);
    // The client retries while the master restarts; then the id proves itself.
    client.complete_with_receipts(&id, receipts).unwrap();
    let (status, object) = api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap();
    assert_eq!(
        (status, object["status"].as_str(), object["replicas"].as_array().map(Vec::len)),
        (200, Some("complete"), Some(2))
    );
    let mut read = Vec::new();
    client.download(&id, &mut read).unwrap();
    assert!(read == data);
}

#[test]
fn uploads_ride_out_a_master_restart() {
    let mut cluster = TestCluster::start("restart-ride", 2, 2);
    let client = client(&cluster);
    // The master is down when the upload starts: `init` is asked again until it is back.
    cluster.master.kill();
    let uploader = std::thread::spawn(move || {
        let data = pattern(3, 5000);
        let uploaded = client.upload(data.len() as u64, None, &mut || Ok(&data[..]));
        (client, uploaded.map(|u| u.id))
    });
    cluster.restart_master();
    let (client, uploaded) = uploader.join().unwrap();
    let id = uploaded.unwrap_or_else(|e| panic!("upload across a master restart: {e}"));
    let mut read = Vec::new();
    client.download(&id, &mut read).unwrap();
    assert!(read == pattern(3, 5000));
}

#[test]
fn an_id_the_master_never_issued_does_not_complete() {
    let cluster = TestCluster::start("foreign-id", 1, 1);
    let m = &cluster.master.url;
    let (_, nodes) = api_get(&format!("{m}/api/nodes")).unwrap();
    let node = nodes["nodes"][0]["address"].as_str().unwrap().to_string();
    let id = ObjectId::new_random().to_string();
    assert_eq!(crate::cluster::put_bytes(&format!("{node}/objects/{id}"), b"made up"), 201);
    let body = json!({"objectid": id}).to_string();
    let (status, answer) = request("POST", &format!("{m}/api/upload/complete"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("call /api/upload/init first"), "{answer}");
}

#[test]
fn a_deleted_upload_in_flight_never_completes() {
    let cluster = TestCluster::start("delete-pending", 1, 1);
    let m = &cluster.master.url;
    let body = json!({"size": 4}).to_string();
    let (_, placement) = request("POST", &format!("{m}/api/upload/init"), Some(body.as_bytes())).unwrap();
    let id = placement["objectid"].as_str().unwrap();
    // The seed API names objects with UUIDv4: an upload id is one, whatever it carries.
    assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
    assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    let node = placement["nodes"][0].as_str().unwrap();
    assert_eq!(crate::cluster::put_bytes(&format!("{node}/objects/{id}"), b"gone"), 201);
    let (status, answer) = request("DELETE", &format!("{m}/api/objects/{id}"), None).unwrap();
    assert_eq!(status, 200, "{answer}");
    let body = json!({"objectid": id}).to_string();
    let (status, answer) = request("POST", &format!("{m}/api/upload/complete"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 404, "{answer}");
    let replace = json!({"objectid": id, "failed": [node], "count": 1}).to_string();
    let (status, answer) = request("POST", &format!("{m}/api/upload/replace"), Some(replace.as_bytes())).unwrap();
    assert_eq!(status, 409, "{answer}");
    // Its node is told to delete the copy at its next check-in.
    wait_until("the deleted upload's copy to go", Duration::from_secs(30), || {
        get_bytes(&format!("{node}/objects/{id}")) == Err(404)
    });
}

/// Uploads stored at once and completed one by one across the grace period, while
/// inventories run every 0.3 s: each `complete` either succeeds, and then its copies
/// stay, or is refused as expired; never does a complete succeed over collected copies.
#[test]
fn a_complete_racing_the_collector_is_never_lost() {
    let grace = 2;
    let cluster = TestCluster::start_with(
        "collector-race",
        2,
        &["--replication", "2", "--upload-grace", &grace.to_string()],
        &["--heartbeat-interval", "0.2", "--inventory-interval", "0.3"],
    );
    let client = client(&cluster);
    let count = 10;
    let mut uploads = Vec::new();
    for i in 0..count {
        let data = pattern(i, 64);
        let placement = client.init_upload(data.len() as u64, None).unwrap();
        let id = ObjectId::parse(&placement.objectid).unwrap();
        let stored = client
            .put_chain(&placement.nodes, placement.signature.as_deref(), &id, &data[..], data.len() as u64)
            .unwrap();
        let receipts: Vec<Receipt> = stored.replicas.iter().filter_map(|r| r.receipt.clone()).collect();
        assert_eq!(receipts.len(), 2);
        uploads.push((id, data, placement.nodes, receipts));
    }
    let started = Instant::now();
    let mut completed = Vec::new();
    let mut refused = Vec::new();
    for (i, (id, data, nodes, receipts)) in uploads.into_iter().enumerate() {
        // Spread over 0.5 .. 5 s: before the grace, around it, and well after the
        // collector took the copies.
        let at = Duration::from_millis(500 + 500 * i as u64);
        while started.elapsed() < at {
            std::thread::sleep(Duration::from_millis(20));
        }
        match client.complete_with_receipts(&id, receipts) {
            Ok(()) => completed.push((id, data, nodes)),
            Err(ClientError::Api { status: 404, message, .. }) => {
                assert!(message.contains("expired"), "{message}");
                refused.push((id, nodes));
            }
            Err(e) => panic!("complete of {id}: {e}"),
        }
    }
    assert!(!completed.is_empty() && !refused.is_empty(), "{} completed, {} refused", completed.len(), refused.len());
    // The collector has run past the grace once the refused uploads' copies are gone;
    // every completed object keeps its copies.
    wait_until("the refused uploads' copies to be collected", Duration::from_secs(30), || {
        refused
            .iter()
            .all(|(id, nodes)| nodes.iter().all(|node| get_bytes(&format!("{node}/objects/{id}")) == Err(404)))
    });
    let m = cluster.master.url.clone();
    for (id, data, nodes) in &completed {
        for node in nodes {
            assert_eq!(get_bytes(&format!("{node}/objects/{id}")).as_deref(), Ok(&data[..]), "{id} on {node}");
        }
        let (status, object) = api_get(&format!("{m}/api/objects/{id}")).unwrap();
        assert_eq!((status, object["replicas"].as_array().map(Vec::len)), (200, Some(2)), "{object}");
    }
}

/// Requests the master answered for `endpoint` (an `Endpoint` variant's name), any status.
fn requests_to(master: &str, endpoint: &str) -> f64 {
    let text = crate::cluster::agent().get(&format!("{master}/metrics")).call().unwrap().into_string().unwrap();
    let prefix = format!("aether_http_requests_total{{endpoint=\"{endpoint}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Stores and completes an upload on a placement as it came, with the datanodes' receipts.
fn store_on(client: &Client, placement: &aetherstore::proto::Placement, data: &[u8]) -> ObjectId {
    let (id, receipts) = stage_on(client, placement, data);
    client.complete_with_receipts(&id, receipts).unwrap();
    id
}

/// Stores an upload on a placement as it came and returns its id and the receipts of its
/// copies, not completed.
fn stage_on(client: &Client, placement: &aetherstore::proto::Placement, data: &[u8]) -> (ObjectId, Vec<Receipt>) {
    let id = ObjectId::parse(&placement.objectid).unwrap();
    let stored = client
        .put_chain(&placement.nodes, placement.signature.as_deref(), &id, data, data.len() as u64)
        .unwrap_or_else(|e| panic!("chain {:?}: {e}", placement.nodes));
    let receipts: Vec<Receipt> = stored.replicas.iter().filter_map(|r| r.receipt.clone()).collect();
    assert_eq!(receipts.len(), placement.nodes.len(), "{stored:?}");
    (id, receipts)
}

/// Each upload is complete with `copies` replicas and reads back as it was written.
#[track_caller]
fn all_complete(client: &Client, uploaded: &[(ObjectId, Vec<u8>)], copies: usize) {
    for (id, data) in uploaded {
        let (status, object) = api_get(&format!("{}/api/objects/{id}", client.master())).unwrap();
        assert_eq!((status, object["replicas"].as_array().map(Vec::len)), (200, Some(copies)), "{object}");
        let mut read = Vec::new();
        client.download(id, &mut read).unwrap();
        assert!(read == *data, "{id}");
    }
}

#[test]
fn init_batch_hands_out_placements_each_as_init_does() {
    let cluster = TestCluster::start("init-batch", 3, 2);
    let m = &cluster.master.url;
    let client = client(&cluster);
    let body = json!({"size": 1000, "count": 64}).to_string();
    let (status, answer) = request("POST", &format!("{m}/api/upload/init_batch"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 200, "{answer}");
    let batch: aetherstore::proto::PlacementBatch = serde_json::from_value(answer).unwrap();
    assert_eq!((batch.placements.len(), batch.upload_grace_ms), (64, 3_600_000));
    let ids: std::collections::HashSet<&str> = batch.placements.iter().map(|p| p.objectid.as_str()).collect();
    assert_eq!(ids.len(), 64, "every placement has an id of its own");
    let mut used = std::collections::HashSet::new();
    for placement in &batch.placements {
        let id = &placement.objectid;
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4, "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        let nodes: std::collections::HashSet<&String> = placement.nodes.iter().collect();
        assert_eq!(nodes.len(), 2, "{placement:?}");
        assert_eq!(placement.signature, None, "no token, no signature");
        used.extend(placement.nodes.iter().cloned());
    }
    // Each placement is its own choice: over 64 of them every node takes some.
    assert_eq!(used.len(), 3, "{used:?}");
    for (i, placement) in batch.placements.iter().take(5).enumerate() {
        let data = pattern(i as u64, 3000);
        let id = store_on(&client, placement, &data);
        let mut read = Vec::new();
        client.download(&id, &mut read).unwrap();
        assert!(read == data, "{id}");
    }
    let oversized = format!(r#"{{"size": 1, "count": 2, "pad": "{}"}}"#, "x".repeat(70_000));
    let refused: &[(String, u16, &str)] = &[
        (json!({"size": 10, "count": 0}).to_string(), 400, "count 0 is out of range"),
        (json!({"size": 10, "count": 1000}).to_string(), 400, "count 1000 is out of range"),
        (json!({"size": 10}).to_string(), 400, "count"),
        (json!({"size": 10, "count": 2, "replication": 17}).to_string(), 400, "replication 17"),
        (json!({"size": 1u64 << 50, "count": 2}).to_string(), 400, "maximum object size"),
        (json!({"size": 10, "count": 2, "replication": 4}).to_string(), 503, "need 4 datanodes"),
        (oversized, 413, "larger than"),
    ];
    for (body, want, says) in refused {
        let (status, answer) = request("POST", &format!("{m}/api/upload/init_batch"), Some(body.as_bytes())).unwrap();
        assert_eq!(status, *want, "{body:.80}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{body:.80}: {answer}");
    }
    let (status, _) = api_get(&format!("{m}/api/upload/init_batch")).unwrap();
    assert_eq!(status, 405);
}

#[test]
fn complete_batch_completes_what_its_receipts_vouch_for() {
    let cluster = TestCluster::start("complete-batch", 3, 2);
    let m = &cluster.master.url;
    let client = client(&cluster);
    let batch: aetherstore::proto::PlacementBatch = {
        let body = json!({"size": 1000, "count": 4}).to_string();
        let (status, answer) = request("POST", &format!("{m}/api/upload/init_batch"), Some(body.as_bytes())).unwrap();
        assert_eq!(status, 200, "{answer}");
        serde_json::from_value(answer).unwrap()
    };
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(i, 900)).collect();
    let (a, a_receipts) = stage_on(&client, &batch.placements[0], &data[0]);
    let (b, b_receipts) = stage_on(&client, &batch.placements[1], &data[1]);
    let (c, _) = stage_on(&client, &batch.placements[2], &data[2]);
    // Never stored: the receipts of another upload do not vouch for it.
    let d = &batch.placements[3].objectid;
    let (writes, commits) = (master_writes(m), master_commits(m));
    let uploads = json!([
        {"objectid": a.to_string(), "receipts": a_receipts},
        {"objectid": b.to_string(), "receipts": b_receipts},
        {"objectid": c.to_string()},
        {"objectid": d, "receipts": a_receipts},
        {"objectid": "not-an-id", "receipts": a_receipts},
        {"objectid": a.to_string(), "receipts": a_receipts},
    ]);
    let body = json!({ "uploads": uploads }).to_string();
    let (status, answer) = request("POST", &format!("{m}/api/upload/complete_batch"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"completed": [true, true, false, false, false, true]}));
    // A write for each upload the receipts vouch for (A twice), in one commit.
    assert_eq!((master_writes(m), master_commits(m)), (writes + 3.0, commits + 1.0), "the batch is one commit");
    all_complete(&client, &[(a, data[0].clone()), (b, data[1].clone())], 2);
    // What the batch left is as it was: `complete` alone finishes C the slow way (its
    // nodes are asked) and refuses D, whose bytes are nowhere.
    let (status, object) = api_get(&format!("{m}/api/objects/{c}")).unwrap();
    assert_eq!(status, 404, "{object}");
    client.complete_upload(&c).unwrap();
    all_complete(&client, &[(c, data[2].clone())], 2);
    let d = ObjectId::parse(d).unwrap();
    let refused = client.complete_upload(&d).unwrap_err();
    assert_eq!(refused.status(), Some(503), "{refused}");

    // Nothing vouched for costs no write at all.
    let writes = master_writes(m);
    let body = json!({"uploads": [{"objectid": c.to_string()}, {"objectid": "x", "receipts": b_receipts}]}).to_string();
    let (status, answer) = request("POST", &format!("{m}/api/upload/complete_batch"), Some(body.as_bytes())).unwrap();
    assert_eq!((status, answer), (200, json!({"completed": [false, false]})));
    assert_eq!(master_writes(m), writes);

    let one = json!({"objectid": a.to_string()});
    let oversized = format!(r#"{{"uploads": [{one}], "pad": "{}"}}"#, "x".repeat(600_000));
    let refused: &[(String, u16, &str)] = &[
        (json!({"uploads": []}).to_string(), 400, "0 uploads is out of range"),
        (json!({ "uploads": vec![one.clone(); 65] }).to_string(), 400, "65 uploads is out of range"),
        (json!({"objectid": a.to_string()}).to_string(), 400, "expected"),
        (json!({"uploads": [{"receipts": []}]}).to_string(), 400, "objectid"),
        (oversized, 413, "larger than"),
    ];
    for (body, want, says) in refused {
        let (status, answer) =
            request("POST", &format!("{m}/api/upload/complete_batch"), Some(body.as_bytes())).unwrap();
        assert_eq!(status, *want, "{body:.80}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{body:.80}: {answer}");
    }
    let (status, _) = api_get(&format!("{m}/api/upload/complete_batch")).unwrap();
    assert_eq!(status, 405);
}

#[test]
fn small_uploads_take_placements_from_batches() {
    let cluster = TestCluster::start("batched", 3, 2);
    let m = cluster.master.url.clone();
    let client = client(&cluster);
    let (threads, each) = (4, 50);
    let uploaded: Vec<(ObjectId, Vec<u8>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let client = &client;
                scope.spawn(move || {
                    (0..each)
                        .map(|i| {
                            let data = pattern(t * 1000 + i, 100 + (i as usize * 1301) % 65_000);
                            let uploaded = client.upload(data.len() as u64, None, &mut || Ok(&data[..])).unwrap();
                            (uploaded.id, data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let count = uploaded.len() as f64;
    let (init, batches) = (requests_to(&m, "InitUpload"), requests_to(&m, "InitUploadBatch"));
    assert_eq!(init, 0.0, "small uploads take placements from batches");
    // Batches double from one up to the queue's bound, refilled below a quarter of it.
    assert!(batches >= 1.0 && batches <= 8.0 + count / 16.0, "{batches} batches for {count} uploads");
    // Their `complete`s go in batches too (each at most as many as the uploads waiting).
    let (complete, batches) = (requests_to(&m, "CompleteUpload"), requests_to(&m, "CompleteUploadBatch"));
    assert_eq!(complete, 0.0, "every upload had its receipts, so none was completed alone");
    assert!(batches >= 1.0 && batches <= count, "{batches} batches for {count} uploads");
    // Every upload is an ordinary one: completed, on 2 nodes, read back from the master's word.
    all_complete(&Client::new(aetherstore::client::agent(), &m), &uploaded, 2);
    // A large upload asks `init` for itself, and completes alone.
    let large = pattern(9, 65 * 1024 + 1);
    client.upload(large.len() as u64, None, &mut || Ok(&large[..])).unwrap();
    assert_eq!(requests_to(&m, "InitUpload"), 1.0);
    assert_eq!(requests_to(&m, "CompleteUpload"), 1.0);
}

#[test]
fn queued_placements_naming_a_killed_node_still_upload() {
    let mut cluster = TestCluster::start("batch-kill", 3, 2);
    let m = cluster.master.url.clone();
    let client = client(&cluster);
    // Enough uploads to fill the queue: placements naming every node wait in it.
    for i in 0..12 {
        let data = pattern(i, 2000);
        client.upload(data.len() as u64, None, &mut || Ok(&data[..])).unwrap();
    }
    let batches = requests_to(&m, "InitUploadBatch");
    cluster.datanodes[0].kill();
    let mut uploaded = Vec::new();
    for i in 0..30 {
        let data = pattern(100 + i, 2000);
        let done = client.upload(data.len() as u64, None, &mut || Ok(&data[..]));
        uploaded.push((done.unwrap_or_else(|e| panic!("upload {i} after the kill: {e}")).id, data));
    }
    // The chains that broke at the dead node asked for replacements; the placements
    // used came from batches taken before the kill.
    assert!(requests_to(&m, "ReplaceNodes") >= 1.0, "no placement named the killed node");
    assert_eq!(requests_to(&m, "InitUpload"), 0.0);
    assert!(requests_to(&m, "InitUploadBatch") - batches <= 3.0);
    all_complete(&client, &uploaded, 2);
}

#[test]
fn batched_placements_carry_signatures_chains_accept() {
    let token = "batch-cluster-token";
    let cluster = TestCluster::start_with(
        "batch-token",
        3,
        &["--replication", "3", "--cluster-token", token],
        &["--cluster-token", token],
    );
    let m = cluster.master.url.clone();
    let client = client(&cluster);
    let batch = client.init_upload_batch(100, None, 4).unwrap();
    let signatures: std::collections::HashSet<String> =
        batch.placements.iter().map(|p| p.signature.clone().expect("a signature with a token")).collect();
    assert_eq!(signatures.len(), 4, "each placement is signed for its own id");
    // A signature is for its own placement only: swapped, the first datanode refuses to forward.
    let (first, second) = (&batch.placements[0], &batch.placements[1]);
    let swapped = aetherstore::proto::Placement { signature: second.signature.clone(), ..first.clone() };
    let id = ObjectId::parse(&first.objectid).unwrap();
    let refused = client.put_chain(&swapped.nodes, swapped.signature.as_deref(), &id, &b"abc"[..], 3);
    assert!(matches!(&refused, Err(ClientError::Api { status: 403, .. })), "{refused:?}");
    store_on(&client, second, b"signed");
    // Through the client's queue: three copies each, forwarded along signed chains.
    for i in 0..20 {
        let data = pattern(i, 500);
        let uploaded = client.upload(data.len() as u64, None, &mut || Ok(&data[..])).unwrap();
        assert_eq!(uploaded.replicas.iter().filter(|r| r.status == 201).count(), 3, "{:?}", uploaded.replicas);
    }
    assert_eq!(requests_to(&m, "InitUpload"), 0.0);
}
