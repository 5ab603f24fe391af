//! A datanode's disk and its membership seen from outside: a data directory that
//! vanishes or turns read-only under a running node (the node says so, the master places
//! nothing there and heals its copies elsewhere, and the node rejoins when the disk is
//! back), a node restarted on an empty disk taking over its old address, heartbeats
//! that keep coming while a node with 200,000 objects sends its inventory, and a master
//! that does not declare a whole silent cluster dead at once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{api_get, pattern, request, upload, wait_until, Proc, TempDir, TestCluster, BIN};

const FAST_MASTER: &[&str] = &["--dead-after", "1.5"];
const FAST_DATANODE: &[&str] = &["--heartbeat-interval", "0.2", "--scrub-pause", "0.5"];

fn fast_cluster(name: &str, datanodes: usize, replication: usize) -> TestCluster {
    let replication = replication.to_string();
    let mut master = vec!["--replication", replication.as_str()];
    master.extend_from_slice(FAST_MASTER);
    TestCluster::start_with(name, datanodes, &master, FAST_DATANODE)
}

fn nodes(cluster: &TestCluster) -> Vec<Value> {
    let (_, body) = api_get(&format!("{}/api/nodes", cluster.master.url)).unwrap();
    body["nodes"].as_array().cloned().unwrap_or_default()
}

fn node_state(cluster: &TestCluster, id: &str) -> String {
    nodes(cluster).iter().find(|n| n["id"] == id).map(|n| n["state"].as_str().unwrap().to_string()).unwrap_or_default()
}

fn cluster_status(cluster: &TestCluster) -> Value {
    api_get(&format!("{}/api/cluster", cluster.master.url)).unwrap().1
}

/// Waits until `/api/cluster` counts `n` failed nodes (it counts from the database,
/// written just after the state `/api/nodes` shows).
#[track_caller]
fn wait_until_failed(cluster: &TestCluster, n: u64) {
    wait_until(&format!("nodes_failed to be {n}"), Duration::from_secs(10), || {
        cluster_status(cluster)["nodes_failed"] == n
    });
}

/// Confirmed copies of an object on alive nodes other than `except` (the master lists
/// only confirmed copies, each with its node's state).
fn copies_elsewhere(cluster: &TestCluster, id: &str, except: &str) -> usize {
    let (_, body) = api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap();
    let replicas = body["replica_nodes"].as_array().cloned().unwrap_or_default();
    replicas.iter().filter(|r| r["node"] != except && r["state"] == "alive").count()
}

/// Tries `n` uploads of small objects through the real path (init, chained PUT,
/// complete); returns how many failed and the first failure.
fn try_uploads(master: &str, n: u64) -> (usize, Option<String>) {
    let mut failed = Vec::new();
    for i in 0..n {
        let data = pattern(9000 + i, 10_000);
        let body = json!({"size": data.len()}).to_string();
        let (status, placement) = request("POST", &format!("{master}/api/upload/init"), Some(body.as_bytes())).unwrap();
        if status != 200 {
            failed.push(format!("init {status}: {placement}"));
            continue;
        }
        let id = placement["objectid"].as_str().unwrap();
        let nodes: Vec<String> = serde_json::from_value(placement["nodes"].clone()).unwrap();
        let put = crate::cluster::agent()
            .put(&format!("{}/objects/{id}", nodes[0]))
            .set("X-Aether-Chain", &nodes[1..].join(","))
            .send_bytes(&data);
        let stored: Value = match put {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                failed.push(format!("PUT {code}: {}", r.into_string().unwrap_or_default()));
                continue;
            }
            Err(e) => panic!("PUT: {e}"),
        };
        if let Some(bad) = stored["replicas"].as_array().unwrap().iter().find(|r| r["status"] != 201) {
            failed.push(format!("chain: {bad}"));
            continue;
        }
        let body = json!({"objectid": id}).to_string();
        let (status, answer) =
            request("POST", &format!("{master}/api/upload/complete"), Some(body.as_bytes())).unwrap();
        if status != 200 {
            failed.push(format!("complete {status}: {answer}"));
        }
    }
    (failed.len(), failed.into_iter().next())
}

#[test]
fn a_datanode_whose_data_directory_vanishes_is_failed_healed_around_and_rejoins() {
    let cluster = fast_cluster("disk-gone", 4, 3);
    let ids: Vec<String> = (0..12).map(|i| upload(&cluster.master.url, &pattern(100 + i, 20_000))).collect();
    let on_1: Vec<&String> = ids.iter().filter(|id| copies_elsewhere(&cluster, id, "datanode-1") < 3).collect();
    assert!(!on_1.is_empty(), "some objects have a copy on datanode-1");

    // Its disk goes away under it, as `rm -rf` or an unmount leaves it (renamed, so it
    // can come back).
    let dir = cluster.datanode_dir("datanode-1");
    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap();
    wait_until("datanode-1 to be failed", Duration::from_secs(20), || node_state(&cluster, "datanode-1") == "failed");
    wait_until_failed(&cluster, 1);
    let listing = cluster.aether(&["nodes"]);
    let table = String::from_utf8_lossy(&listing.stdout);
    assert!(table.lines().any(|l| l.contains("datanode-1") && l.contains("failed")), "{table}");

    // Its copies are made again elsewhere, and nothing new is placed on it.
    wait_until("datanode-1's copies to be re-created", Duration::from_secs(60), || {
        ids.iter().all(|id| copies_elsewhere(&cluster, id, "datanode-1") >= 3)
    });
    wait_until("no object under-replicated", Duration::from_secs(30), || {
        cluster_status(&cluster)["under_replicated"] == 0
    });
    let (failed, first) = try_uploads(&cluster.master.url, 20);
    assert_eq!(failed, 0, "uploads failed while a node's disk was gone; first: {first:?}");

    // The disk comes back: the node rejoins, sends its inventory and takes uploads again.
    std::fs::rename(&away, &dir).unwrap();
    wait_until("datanode-1 to be alive again", Duration::from_secs(20), || {
        node_state(&cluster, "datanode-1") == "alive"
    });
    cluster.datanodes[0].wait_for_log("rejoining and sending an inventory");
    wait_until_failed(&cluster, 0);
    let (failed, first) = try_uploads(&cluster.master.url, 10);
    assert_eq!(failed, 0, "first: {first:?}");
    assert!(ids.iter().all(|id| copies_elsewhere(&cluster, id, "") >= 3));
}

/// Whether this process may mount filesystems in a mount namespace of its own (root, as
/// the tests run in CI and in the dev container).
fn can_mount() -> bool {
    Command::new("unshare").args(["--mount", "--propagation", "private", "true"]).status().is_ok_and(|s| s.success())
}

/// Remounts the tmpfs at `dir`, inside the mount namespace of process `pid`.
fn remount(pid: u32, dir: &Path, mode: &str) {
    let status = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "mount", "-o", &format!("remount,{mode}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "remount {mode} failed");
}

#[test]
fn a_datanode_whose_disk_turns_read_only_gets_no_placements_until_it_is_writable() {
    assert!(can_mount(), "this test needs `unshare --mount` (run the tests as root)");
    let mut cluster = fast_cluster("disk-ro", 3, 3);
    // A fourth node on a tmpfs of its own, mounted in its own mount namespace (gone with
    // the process, whatever happens to the test).
    let dir = cluster.datanode_dir("datanode-ro");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = vec!["--mount".into(), "--propagation".into(), "private".into(), "sh".into()];
    args.push("-c".into());
    args.push(r#"mount -t tmpfs -o size=64m tmpfs "$1" && shift && exec "$@""#.into());
    args.push("sh".into());
    args.push(dir.display().to_string());
    args.push(BIN.into());
    args.extend(cluster.datanode_args("datanode-ro", FAST_DATANODE));
    let node = Proc::start_wrapped("datanode-ro", "unshare", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = node.pid();
    cluster.datanodes.push(node);
    wait_until("datanode-ro to register", Duration::from_secs(20), || node_state(&cluster, "datanode-ro") == "alive");

    remount(pid, &dir, "ro");
    wait_until("datanode-ro to be read-only", Duration::from_secs(20), || {
        node_state(&cluster, "datanode-ro") == "read-only"
    });
    wait_until_failed(&cluster, 1);
    // R=3 with three writable nodes of four: every upload lands on the three.
    let (failed, first) = try_uploads(&cluster.master.url, 20);
    assert_eq!(failed, 0, "uploads failed with a read-only node in the cluster; first: {first:?}");

    remount(pid, &dir, "rw");
    wait_until("datanode-ro to be alive again", Duration::from_secs(20), || {
        node_state(&cluster, "datanode-ro") == "alive"
    });
    wait_until_failed(&cluster, 0);
}

#[test]
fn a_datanode_restarted_on_an_empty_disk_takes_over_its_dead_predecessors_address() {
    let cluster = fast_cluster("takeover", 3, 3);
    // A node that chose its own id (no --node-id), on a port it will come back on.
    let dir = TempDir::new("takeover-node");
    let data = dir.path().join("data");
    let start = |listen: &str| {
        let args = ["datanode", "--listen", listen, "--master", &cluster.master.url, "--data"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(data.display().to_string());
        args.extend(FAST_DATANODE.iter().map(|s| s.to_string()));
        Proc::start("roaming", &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut first = start("127.0.0.1:0");
    let address = first.url.clone();
    wait_until("the roaming node to register", Duration::from_secs(20), || nodes(&cluster).len() == 4);
    let old_id = nodes(&cluster).iter().find(|n| n["address"] == address.as_str()).unwrap()["id"].clone();
    let ids: Vec<String> = (0..12).map(|i| upload(&cluster.master.url, &pattern(300 + i, 20_000))).collect();

    // It dies, loses its disk, and starts again, empty, at the same address.
    first.kill();
    std::fs::remove_dir_all(&data).unwrap();
    let second = start(address.trim_start_matches("http://"));
    wait_until("the new node to take the address over", Duration::from_secs(30), || {
        nodes(&cluster).iter().any(|n| n["address"] == address.as_str() && n["id"] != old_id && n["state"] == "alive")
    });
    let old_id = old_id.as_str().unwrap();
    assert_eq!(node_state(&cluster, old_id), "removed");
    cluster.master.wait_for_log(&format!("taking it over from node {old_id}"));
    // The old node's copies are re-created.
    wait_until("the old node's copies to be re-created", Duration::from_secs(60), || {
        ids.iter().all(|id| copies_elsewhere(&cluster, id, old_id) >= 3)
    });
    drop(second);
}

#[test]
fn heartbeats_keep_coming_while_a_node_with_200k_objects_sends_its_inventory() {
    let dir = TempDir::exclusive("many-objects");
    let data = dir.path().join("datanode-big");
    let started = Instant::now();
    // Half as files of their own, half as volume records: an inventory walks both.
    aetherstore::datanode::store::populate_unsynced(&data, 100_000, 64).unwrap();
    aetherstore::datanode::store::populate_records_unsynced(&data, 100_000, 64).unwrap();
    eprintln!("wrote 200,000 objects in {:.1}s", started.elapsed().as_secs_f64());

    let master_dir = dir.path().join("master");
    let master_args = ["master", "--listen", "127.0.0.1:0", "--replication", "1", "--dead-after", "3", "--data"];
    let mut master_args: Vec<String> = master_args.iter().map(|s| s.to_string()).collect();
    master_args.push(master_dir.display().to_string());
    let master = Proc::start("master", &master_args.iter().map(String::as_str).collect::<Vec<_>>());
    let node_args = [
        "datanode",
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        "datanode-big",
        "--master",
        &master.url,
        "--heartbeat-interval",
        "0.2",
        "--inventory-interval",
        "1",
        "--scrub-rate",
        "0",
        "--data",
    ];
    let mut node_args: Vec<String> = node_args.iter().map(|s| s.to_string()).collect();
    node_args.push(data.display().to_string());
    let node = Proc::start("datanode-big", &node_args.iter().map(String::as_str).collect::<Vec<_>>());

    // Watch the node through two full inventories (each takes about 10 s in a debug
    // build): it must never go 1.5 s (half of --dead-after, when it would be suspect)
    // without a heartbeat; one every 0.2 s is asked for.
    let watched = Instant::now();
    let mut worst = 0.0f64;
    let inventories = || node.log_text().matches("inventory of 200000 object(s) sent").count();
    while inventories() < 2 {
        assert!(watched.elapsed() < Duration::from_secs(90), "two inventories did not finish in 90 s");
        if let Ok((200, body)) = api_get(&format!("{}/api/nodes", master.url)) {
            if let Some(n) = body["nodes"].as_array().and_then(|a| a.first()) {
                worst = worst.max(n["last_seen_secs_ago"].as_f64().unwrap_or(0.0));
                assert_eq!(n["state"], "alive", "after {:.1}s: {n}", watched.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "two inventories of 200,000 objects in {:.1}s; longest silence seen {worst:.1}s",
        watched.elapsed().as_secs_f64()
    );
    assert!(worst < 1.5, "the node was silent for {worst:.1}s");
    assert!(!master.log_text().contains("is suspect"), "{}", master.log_text());
}

#[test]
fn a_master_holds_back_when_most_of_the_cluster_falls_silent_at_once() {
    let cluster =
        TestCluster::start_with("mass-silence", 3, &["--replication", "2", "--dead-after", "3"], FAST_DATANODE);
    upload(&cluster.master.url, &pattern(7, 10_000));
    let signal = |signal: &str| {
        for node in &cluster.datanodes {
            let status = Command::new("kill").args([signal, &node.pid().to_string()]).status().unwrap();
            assert!(status.success());
        }
    };
    // Every datanode stalls at once (as a network cut between them and the master would
    // look): they turn suspect, but none is declared dead within twice --dead-after.
    signal("-STOP");
    let stopped = Instant::now();
    let mut longest = 0.0f64;
    while longest < 4.5 {
        assert!(stopped.elapsed() < Duration::from_secs(30), "the nodes' silence was never measured");
        for n in nodes(&cluster) {
            let silent = n["last_seen_secs_ago"].as_f64().unwrap();
            assert!(
                n["state"] != "dead" || silent >= 5.5,
                "{} declared dead after {silent:.1}s of silence shared by the whole cluster",
                n["id"]
            );
            longest = longest.max(silent);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.master.wait_for_log("HOLDING BACK");
    signal("-CONT");
    wait_until("every node to be alive again", Duration::from_secs(20), || {
        nodes(&cluster).iter().all(|n| n["state"] == "alive")
    });
    assert!(!cluster.master.log_text().contains("re-replicated"), "{}", cluster.master.log_text());
}
