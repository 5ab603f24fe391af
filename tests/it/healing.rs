//! Replication and self-healing on a local multi-process cluster with short intervals:
//! chained uploads, a datanode killed mid-upload, dead-node detection and repair, a
//! flipped byte on disk (in a small object, and in a large one found while it streams), deletes that survive a node's absence, a master restart, the
//! cluster token, ranges and the master's redirect, reads from the client's cache of
//! locations.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherstore::client::Client;
use aetherstore::proto::ObjectId;
use serde_json::{json, Value};

use crate::cluster::{
    agent, api_get, flip_stored_byte, get_bytes, object_file, pattern, raw_request, request, upload, wait_until, Proc,
    TestCluster,
};

/// Master and datanode flags that make failure detection and repair take a second or two.
const FAST_MASTER: &[&str] = &["--dead-after", "1.5"];
const FAST_DATANODE: &[&str] = &["--heartbeat-interval", "0.2", "--scrub-pause", "0.5"];

fn fast_cluster(name: &str, datanodes: usize, replication: usize, extra_master: &[&str]) -> TestCluster {
    let mut master: Vec<&str> = vec!["--replication"];
    let replication = replication.to_string();
    master.push(&replication);
    master.extend_from_slice(FAST_MASTER);
    master.extend_from_slice(extra_master);
    TestCluster::start_with(name, datanodes, &master, FAST_DATANODE)
}

fn client(cluster: &TestCluster) -> Client {
    Client::new(aetherstore::client::agent(), &cluster.master.url)
}

fn object(cluster: &TestCluster, id: &str) -> Value {
    let (status, body) = api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn cluster_status(cluster: &TestCluster) -> Value {
    api_get(&format!("{}/api/cluster", cluster.master.url)).unwrap().1
}

/// Whether a running datanode (`datanode-N`) holds a copy: its `HEAD` answers, whether the
/// copy is a file of its own or a record in a volume.
fn has_copy(cluster: &TestCluster, node: &str, id: &str) -> bool {
    let n: usize = node.trim_start_matches("datanode-").parse().unwrap();
    let url = format!("{}/objects/{id}", cluster.datanodes[n - 1].url);
    match crate::cluster::agent().head(&url).call() {
        Ok(response) => response.status() == 200,
        Err(ureq::Error::Status(404, _)) => false,
        Err(e) => panic!("HEAD {url}: {e}"),
    }
}

fn download(cluster: &TestCluster, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client(cluster).download(&ObjectId::parse(id).unwrap(), &mut out).unwrap();
    out
}

#[test]
fn a_chained_upload_lands_on_every_placed_node_with_its_checksum() {
    let cluster = fast_cluster("chain", 3, 3, &[]);
    let data = pattern(21, 3 << 20);
    let id = upload(&cluster.master.url, &data);
    let info = object(&cluster, &id);
    assert_eq!(info["replicas"].as_array().unwrap().len(), 3);
    let checksum = info["checksum"].as_str().unwrap().to_string();
    assert!(checksum.starts_with("crc32c:"));
    for node in info["replicas"].as_array().unwrap() {
        let response = agent().get(&format!("{}/objects/{id}", node.as_str().unwrap())).call().unwrap();
        assert_eq!(response.header("X-Aether-Checksum"), Some(checksum.as_str()));
        let mut bytes = Vec::new();
        response.into_reader().read_to_end(&mut bytes).unwrap();
        assert!(bytes == data);
    }
    for i in 1..=3 {
        assert!(object_file(&cluster, &format!("datanode-{i}"), &id).exists());
    }
    // Ranges, as a resumed download asks for them.
    let node = info["replicas"][0].as_str().unwrap();
    let response = agent().get(&format!("{node}/objects/{id}")).set("Range", "bytes=1000-1999").call().unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(response.header("Content-Range"), Some(format!("bytes 1000-1999/{}", 3 << 20).as_str()));
    let mut part = Vec::new();
    response.into_reader().read_to_end(&mut part).unwrap();
    assert!(part == data[1000..2000]);
    let head = agent().head(&format!("{node}/objects/{id}")).call().unwrap();
    let want = (3 << 20).to_string();
    assert_eq!(head.header("Content-Length"), Some(want.as_str()), "large objects are sized, not chunked");
    // The master redirects curl -L users to a live replica.
    let (status, body) = raw_request(&cluster.master.url, "GET", &format!("/objects/{id}"), None);
    assert_eq!(status, 307, "{body}");
    let location = body["location"].as_str().unwrap();
    assert!(get_bytes(location).unwrap() == data);
}

#[test]
fn sigkill_during_replicated_uploads_loses_nothing_acknowledged() {
    let mut cluster = fast_cluster("kill-chain", 4, 3, &[]);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let master = cluster.master.url.clone();
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (acknowledged, stop, master) = (Arc::clone(&acknowledged), Arc::clone(&stop), master.clone());
            std::thread::spawn(move || {
                let client = Client::new(aetherstore::client::agent(), &master);
                let mut failures = 0;
                for i in 0..200u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let data = pattern(w * 1000 + i + 1, 256 * 1024 + (i as usize * 4099) % 65536);
                    let mut open = || Ok(Box::new(std::io::Cursor::new(data.clone())) as Box<dyn Read + Send>);
                    match client.upload(data.len() as u64, None, &mut open) {
                        Ok(done) => acknowledged.lock().unwrap().push((done.id, data)),
                        Err(_) => failures += 1,
                    }
                }
                failures
            })
        })
        .collect();
    wait_until("some uploads", Duration::from_secs(30), || acknowledged.lock().unwrap().len() >= 20);
    cluster.datanodes[1].kill();
    let before = acknowledged.lock().unwrap().len();
    wait_until("uploads after the kill", Duration::from_secs(60), || acknowledged.lock().unwrap().len() >= before + 30);
    stop.store(true, Ordering::Relaxed);
    let failures: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let acknowledged = acknowledged.lock().unwrap();
    eprintln!("{} uploads acknowledged, {failures} refused around the kill", acknowledged.len());
    let client = client(&cluster);
    for (id, data) in acknowledged.iter() {
        let mut out = Vec::new();
        client.download(id, &mut out).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(out == *data, "{id} came back different");
    }
}

#[test]
fn a_dead_node_is_detected_and_every_object_returns_to_full_strength() {
    let mut cluster = fast_cluster("heal", 4, 3, &[]);
    let ids: Vec<String> = (0..40).map(|i| upload(&cluster.master.url, &pattern(i + 100, 1000 + i as usize))).collect();
    cluster.datanodes[0].kill();
    wait_until("the node to be declared dead", Duration::from_secs(20), || cluster_status(&cluster)["nodes_dead"] == 1);
    wait_until("every object back at 3 replicas", Duration::from_secs(60), || {
        cluster_status(&cluster)["under_replicated"] == 0
    });
    let nodes = api_get(&format!("{}/api/nodes", cluster.master.url)).unwrap().1;
    let dead = nodes["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "datanode-1").unwrap().clone();
    assert_eq!(dead["state"], "dead", "{nodes}");
    for (i, id) in ids.iter().enumerate() {
        let info = object(&cluster, id);
        let holders: Vec<&str> =
            info["replica_nodes"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap()).collect();
        assert_eq!(holders.len(), 3, "{info}");
        assert!(!holders.contains(&"datanode-1"), "{info}");
        for holder in holders {
            assert!(has_copy(&cluster, holder, id), "{id} missing on {holder}");
        }
        assert!(download(&cluster, id) == pattern(i as u64 + 100, 1000 + i));
    }

    // The dead node comes back with its old copies: they are one too many now, so its
    // inventory gets them deleted, and every object keeps its three.
    let args = cluster.datanode_args("datanode-1", FAST_DATANODE);
    cluster.datanodes[0] = Proc::start("datanode-1", &args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until("the returned node's surplus copies to be deleted", Duration::from_secs(30), || {
        ids.iter().all(|id| !has_copy(&cluster, "datanode-1", id))
    });
    for id in &ids {
        assert_eq!(object(&cluster, id)["replica_nodes"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn a_flipped_byte_is_never_served_and_is_repaired() {
    let cluster = fast_cluster("rot", 3, 2, &[]);
    let data = pattern(7, 200_000);
    let (read_id, scrub_id) = (upload(&cluster.master.url, &data), upload(&cluster.master.url, &data));
    // A volume record (up to 1 MiB), written by O_DIRECT.
    let flip = |id: &str| -> (String, String) {
        let info = object(&cluster, id);
        let victim = info["replica_nodes"][0].clone();
        flip_stored_byte(&cluster, victim["node"].as_str().unwrap(), id, 1234);
        (victim["node"].as_str().unwrap().to_string(), victim["address"].as_str().unwrap().to_string())
    };
    // Found by a read: the bad copy is refused, the client fails over.
    let (read_victim, address) = flip(&read_id);
    let (status, body) = raw_request(&address, "GET", &format!("/objects/{read_id}"), None);
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().unwrap().contains("corrupt"), "{body}");
    assert!(download(&cluster, &read_id) == data);
    // Found by the scrubber, with no read at all.
    let (scrub_victim, _) = flip(&scrub_id);
    for (id, victim) in [(&read_id, &read_victim), (&scrub_id, &scrub_victim)] {
        wait_until("the bad copy to be replaced", Duration::from_secs(30), || {
            let info = object(&cluster, id);
            let holders: Vec<&str> =
                info["replica_nodes"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap()).collect();
            holders.len() == 2 && !holders.contains(&victim.as_str())
        });
        assert!(download(&cluster, id) == data);
        let quarantine = cluster.datanode_dir(victim).join("quarantine");
        assert!(std::fs::read_dir(quarantine).unwrap().count() >= 1);
    }
}

#[test]
fn a_copy_lost_in_a_cluster_of_exactly_r_nodes_is_made_again_where_it_was() {
    let cluster = fast_cluster("remake", 3, 3, &[]);
    let data = pattern(8, 100_000);
    let id = upload(&cluster.master.url, &data);
    let victim = object(&cluster, &id)["replica_nodes"][1].clone();
    let (node, address) = (victim["node"].as_str().unwrap(), victim["address"].as_str().unwrap());
    flip_stored_byte(&cluster, node, &id, 99);
    let (status, _) = raw_request(address, "GET", &format!("/objects/{id}"), None);
    assert_eq!(status, 500, "the corrupt copy is refused and quarantined");
    // No fourth node to copy to: the node that lost its copy gets a good one back.
    wait_until("the copy to be made again on its node", Duration::from_secs(30), || {
        get_bytes(&format!("{address}/objects/{id}")).is_ok_and(|bytes| bytes == data)
    });
    wait_until("the master to count it", Duration::from_secs(30), || {
        let holders = object(&cluster, &id)["replica_nodes"].as_array().unwrap().clone();
        holders.len() == 3 && holders.iter().any(|r| r["node"] == node)
    });
    assert_eq!(cluster_status(&cluster)["under_replicated"], 0);
    assert!(std::fs::read_dir(cluster.datanode_dir(node).join("quarantine")).unwrap().count() >= 1);
}

/// GETs `path` the way curl does, on a kept-alive HTTP/1.1 connection, and reads until
/// the server closes it. Returns the status, the announced Content-Length and how many
/// body bytes came. A server that left the connection open would run into the timeout.
fn get_until_closed(base: &str, path: &str) -> (u16, usize, usize) {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        panic!("the connection was left open after {} bytes: {e}", answer.len());
    }
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole header") + 4;
    let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head.split("content-length:").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok());
    (status, length.expect("a Content-Length"), answer.len() - split)
}

#[test]
fn a_flipped_byte_in_a_large_object_cuts_its_reply_short() {
    // No scrubber: the reads below must be the ones that find the flipped bytes.
    let master = ["--replication", "2", "--dead-after", "1.5"];
    let cluster =
        TestCluster::start_with("rot-large", 3, &master, &["--heartbeat-interval", "0.2", "--scrub-rate", "0"]);
    let data = pattern(11, 3 << 20);
    let (curl_id, client_id) = (upload(&cluster.master.url, &data), upload(&cluster.master.url, &data));
    let flip = |id: &str, at: usize| -> (String, String) {
        let info = object(&cluster, id);
        let victim = info["replica_nodes"][0].clone();
        let path = object_file(&cluster, victim["node"].as_str().unwrap(), id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        (victim["node"].as_str().unwrap().to_string(), victim["address"].as_str().unwrap().to_string())
    };

    // Found while streaming to curl: the headers went out, the body stops short and the
    // connection closes.
    let (curl_victim, address) = flip(&curl_id, 1 << 20);
    let (status, announced, received) = get_until_closed(&address, &format!("/objects/{curl_id}"));
    assert_eq!((status, announced), (200, data.len()));
    assert!(received < data.len(), "a corrupt copy was sent whole");
    assert!(!object_file(&cluster, &curl_victim, &curl_id).exists(), "quarantined before the reply ended");
    assert!(download(&cluster, &curl_id) == data, "the next read comes from a good replica");

    // Found while streaming to our client, in the last chunk: what came before it was
    // good, and the client resumes from another replica.
    let (client_victim, _) = flip(&client_id, data.len() - 100);
    assert!(download(&cluster, &client_id) == data);

    for (id, victim) in [(&curl_id, &curl_victim), (&client_id, &client_victim)] {
        wait_until("the bad copy to be replaced", Duration::from_secs(30), || {
            let info = object(&cluster, id);
            let holders: Vec<&str> =
                info["replica_nodes"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap()).collect();
            holders.len() == 2 && !holders.contains(&victim.as_str())
        });
        let node = cluster.datanodes.iter().find(|d| &d.name == victim).unwrap();
        let found = format!("object {id} failed verification");
        assert_eq!(node.log_text().matches(&found).count(), 1, "quarantined and reported once");
        assert!(download(&cluster, id) == data);
    }
}

#[test]
fn a_node_down_during_a_delete_does_not_bring_the_object_back() {
    let mut cluster = fast_cluster("delete", 3, 3, &[]);
    // Past the volume threshold (1 MiB): a file of its own, which the test can see while
    // its node is down.
    let id = upload(&cluster.master.url, &pattern(3, 1_100_000));
    let args = cluster.datanode_args("datanode-2", FAST_DATANODE);
    cluster.datanodes[1].kill();
    let rm = cluster.aether(&["rm", &id]);
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    assert_eq!(api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap().0, 404);
    for node in ["datanode-1", "datanode-3"] {
        wait_until("live copies to go", Duration::from_secs(20), || !object_file(&cluster, node, &id).exists());
    }
    assert!(object_file(&cluster, "datanode-2", &id).exists(), "the dead node kept its copy");
    cluster.datanodes[1] = Proc::start("datanode-2", &args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until("the returning node to delete its copy", Duration::from_secs(20), || {
        !object_file(&cluster, "datanode-2", &id).exists()
    });
    cluster.datanodes[1].wait_for_log("inventory of");
    assert_eq!(api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap().0, 404);
    assert_eq!(cluster.aether(&["rm", &id]).status.code(), Some(1), "deleting twice is an error");
}

#[test]
fn the_cluster_survives_a_master_restart_and_a_lost_master_database() {
    let mut cluster = fast_cluster("master-loss", 3, 2, &[]);
    let first = upload(&cluster.master.url, b"before the restart");
    cluster.restart_master();
    let second = upload(&cluster.master.url, b"after the restart");
    assert_eq!(download(&cluster, &first), b"before the restart");
    assert_eq!(download(&cluster, &second), b"after the restart");

    // A master whose database is gone: datanodes find they are unknown and register again.
    cluster.master.kill();
    std::fs::remove_dir_all(cluster.dir.path().join("master")).unwrap();
    cluster.restart_master();
    wait_until("datanodes to register again", Duration::from_secs(20), || {
        api_get(&format!("{}/api/nodes", cluster.master.url)).unwrap().1["nodes"].as_array().unwrap().len() == 3
    });
    let third = upload(&cluster.master.url, b"on a new master");
    assert_eq!(download(&cluster, &third), b"on a new master");
}

#[test]
fn a_cluster_token_keeps_strangers_out() {
    let token = "s3cret-token";
    let cluster = TestCluster::start_with(
        "token",
        2,
        &["--replication", "2", "--cluster-token", token],
        &["--cluster-token", token, "--heartbeat-interval", "0.2"],
    );
    let m = &cluster.master.url;
    let register = json!({"id": "intruder", "address": "http://127.0.0.1:9"}).to_string();
    let (status, body) = raw_request(m, "POST", "/api/node/register", Some(register.as_bytes()));
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"));
    let nodes = api_get(&format!("{m}/api/nodes")).unwrap().1;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "the refused node was not added: {nodes}");
    let id = upload(m, b"guarded");
    let holder = object(&cluster, &id)["replicas"][0].as_str().unwrap().to_string();
    let (status, _) = raw_request(&holder, "DELETE", &format!("/objects/{id}"), None);
    assert_eq!(status, 401);
    let response = agent().delete(&format!("{holder}/objects/{id}")).set("X-Aether-Token", token).call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(get_bytes(&format!("{holder}/objects/{id}")), Err(404));
    let (status, _) = request("GET", &format!("{m}/health"), None).unwrap();
    assert_eq!(status, 200, "public endpoints need no token");
}

#[test]
fn uploads_never_completed_are_collected() {
    // An upload has no row before its `complete`: what an abandoned one leaves is copies
    // of an unknown object, which the nodes' inventories find.
    let mut datanode = FAST_DATANODE.to_vec();
    datanode.extend(["--inventory-interval", "0.5"]);
    let cluster = TestCluster::start_with(
        "expire",
        2,
        &["--replication", "2", "--dead-after", "1.5", "--upload-grace", "1"],
        &datanode,
    );
    let body = json!({"size": 5}).to_string();
    let (_, placement) =
        request("POST", &format!("{}/api/upload/init", cluster.master.url), Some(body.as_bytes())).unwrap();
    let id = placement["objectid"].as_str().unwrap().to_string();
    let node = placement["nodes"][0].as_str().unwrap();
    assert_eq!(crate::cluster::put_bytes(&format!("{node}/objects/{id}"), b"abandoned"), 201);
    wait_until("the abandoned bytes to be deleted", Duration::from_secs(30), || {
        get_bytes(&format!("{node}/objects/{id}")) == Err(404)
    });
    let complete = json!({"objectid": id}).to_string();
    let (status, body) =
        request("POST", &format!("{}/api/upload/complete", cluster.master.url), Some(complete.as_bytes())).unwrap();
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_download_cut_off_mid_way_resumes_on_another_replica() {
    let mut cluster = fast_cluster("resume", 2, 2, &[]);
    let data = pattern(99, 48 << 20);
    let id = upload(&cluster.master.url, &data);
    let info = object(&cluster, &id);
    let first = info["replica_nodes"][0]["node"].as_str().unwrap().to_string();
    let index = cluster.datanodes.iter().position(|n| n.name == first).unwrap();
    let other = 1 - index;

    /// Kills the replica being read once some bytes of it have arrived.
    struct CutOff<'a> {
        out: Vec<u8>,
        victim: &'a mut crate::cluster::Proc,
        after: usize,
    }
    impl std::io::Write for CutOff<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.out.extend_from_slice(buf);
            if self.out.len() >= self.after {
                self.victim.kill();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let client = client(&cluster);
    let mut sink = CutOff { out: Vec::new(), victim: &mut cluster.datanodes[index], after: 4 << 20 };
    client.download(&ObjectId::parse(&id).unwrap(), &mut sink).unwrap();
    assert!(sink.out == data, "resumed download differs");
    cluster.datanodes[other].wait_for_log(" 206 ");
}

fn upload_with(client: &Client, data: &[u8]) -> ObjectId {
    let bytes = data.to_vec();
    let mut open = || -> std::io::Result<Box<dyn Read + Send>> { Ok(Box::new(std::io::Cursor::new(bytes.clone()))) };
    client.upload(data.len() as u64, None, &mut open).unwrap().id
}

#[test]
fn a_client_reads_objects_it_knows_without_the_master() {
    let mut cluster = fast_cluster("cached-reads", 2, 2, &[]);
    let client = client(&cluster);
    let written = pattern(7, 4096);
    let id = upload_with(&client, &written);
    // One written by someone else, read once while the master is up.
    let other = pattern(8, 10_000);
    let other_id = ObjectId::parse(&upload(&cluster.master.url, &other)).unwrap();
    let mut out = Vec::new();
    client.download(&other_id, &mut out).unwrap();
    assert!(out == other);

    cluster.master.kill();
    for (id, data) in [(id, &written), (other_id, &other)] {
        let mut out = Vec::new();
        client.download(&id, &mut out).unwrap();
        assert!(&out == data, "{id} read back differs");
    }
    // An object it never saw needs the master, which is down: a clear error.
    let unknown = ObjectId::new_random();
    assert!(client.download(&unknown, &mut Vec::new()).is_err());
}

#[test]
fn a_stale_cached_location_is_refreshed_from_the_master_once() {
    use aetherstore::locations::Location;
    let cluster = fast_cluster("stale-location", 2, 2, &[]);
    let client = client(&cluster);
    let data = pattern(9, 70_000);
    let id = upload_with(&client, &data);
    let real = client.locations().get(&id).unwrap();
    assert_eq!(real.replicas.len(), 2);
    // As if the copies had moved: the cache names a node that has none.
    let nowhere = Location { replicas: vec!["http://127.0.0.1:1".into()], ..real.clone() };
    client.locations().insert(id, nowhere);
    let mut out = Vec::new();
    client.download(&id, &mut out).unwrap();
    assert!(out == data);
    let mut fresh = client.locations().get(&id).unwrap().replicas;
    fresh.sort();
    let mut want = real.replicas;
    want.sort();
    assert_eq!(fresh, want, "the cache holds the master's locations again");
    // A deleted object is not read from the cache of the client that deleted it.
    client.delete_object(&id).unwrap();
    assert!(client.locations().get(&id).is_none());
    assert!(client.download(&id, &mut Vec::new()).is_err());
}
