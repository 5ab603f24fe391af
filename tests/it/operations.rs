//! Day-two operations seen from outside: draining a node (its copies moved before any is
//! dropped, so no object ever has fewer than R; refused at once when the others are too
//! few; cancelled; durable across a master restart; then removed), rebalancing onto a new
//! empty node until usage is within the band, and zones (replicas spread over them, so a
//! whole zone can die and everything is still read back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{agent, api_get, pattern, request, upload, wait_until, TestCluster};

const FAST_MASTER: &[&str] = &["--dead-after", "1.5"];
const FAST_DATANODE: &[&str] = &["--heartbeat-interval", "0.2", "--scrub-pause", "0.5"];

fn fast_cluster(name: &str, datanodes: usize, master_extra: &[&str], datanode_extra: &[&str]) -> TestCluster {
    let mut master = FAST_MASTER.to_vec();
    master.extend_from_slice(master_extra);
    let mut datanode = FAST_DATANODE.to_vec();
    datanode.extend_from_slice(datanode_extra);
    TestCluster::start_with(name, datanodes, &master, &datanode)
}

fn nodes(master: &str) -> Vec<Value> {
    let (_, body) = api_get(&format!("{master}/api/nodes")).unwrap();
    body["nodes"].as_array().cloned().unwrap_or_default()
}

fn node(master: &str, id: &str) -> Value {
    nodes(master).into_iter().find(|n| n["id"] == id).unwrap_or(Value::Null)
}

/// The nodes holding a confirmed copy of an object, by id.
fn holders(master: &str, id: &str) -> Vec<String> {
    let (status, body) = api_get(&format!("{master}/api/objects/{id}")).unwrap();
    assert_eq!(status, 200, "{body}");
    body["replica_nodes"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap().to_string()).collect()
}

/// The value of an unlabelled sample in the master's `/metrics` (None when absent).
fn metric(master: &str, name: &str) -> Option<f64> {
    let text = agent().get(&format!("{master}/metrics")).call().ok()?.into_string().ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The master's status page, the part its script refreshes.
fn status_page(master: &str) -> String {
    agent().get(&format!("{master}/ui/fragment")).call().unwrap().into_string().unwrap()
}

fn upload_many(master: &str, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let bytes = pattern(i as u64 + 1, size);
            (upload(master, &bytes), bytes)
        })
        .collect()
}

/// Reads every object back with `aether get` (which tries each replica in turn).
#[track_caller]
fn read_all_back(cluster: &TestCluster, objects: &[(String, Vec<u8>)]) {
    let out = cluster.dir.path().join("read-back");
    for (id, bytes) in objects {
        let got = cluster.aether(&["get", id, "-o", &out.display().to_string()]);
        assert!(got.status.success(), "get {id}: {}", String::from_utf8_lossy(&got.stderr));
        assert!(std::fs::read(&out).unwrap() == *bytes, "object {id} read back with other bytes");
    }
}

#[track_caller]
fn aether_ok(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.aether(args);
    assert!(out.status.success(), "aether {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_drain_copies_every_object_before_dropping_any_and_the_drained_node_is_removed() {
    let mut cluster = fast_cluster("drain", 4, &["--replication", "2"], &[]);
    let master = cluster.master.url.clone();
    let objects = upload_many(&master, 40, 1024);
    let on_first: usize = objects.iter().filter(|(id, _)| holders(&master, id).contains(&"datanode-1".into())).count();
    assert!(on_first > 0, "placement put nothing on datanode-1");

    // Watch every object's replica count for the whole drain.
    let stop = Arc::new(AtomicBool::new(false));
    let fewest: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let watcher = {
        let (stop, fewest, master) = (Arc::clone(&stop), Arc::clone(&fewest), master.clone());
        let ids: Vec<String> = objects.iter().map(|(id, _)| id.clone()).collect();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds == 0 {
                for id in &ids {
                    let count = holders(&master, id).len();
                    let mut fewest = fewest.lock().unwrap();
                    let entry = fewest.entry(id.clone()).or_insert(count);
                    *entry = (*entry).min(count);
                }
                rounds += 1;
            }
            rounds
        })
    };

    let started = Instant::now();
    let said = aether_ok(&cluster, &["node", "drain", "datanode-1"]);
    assert!(said.contains("draining") || said.contains("drained"), "{said}");
    wait_until("datanode-1 to be drained", Duration::from_secs(60), || {
        node(&master, "datanode-1")["drain"] == "drained"
    });
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rounds = watcher.join().unwrap();
    eprintln!(
        "drained {on_first} copies of 40 objects off datanode-1 in {:.2} s ({rounds} polling rounds)",
        took.as_secs_f64()
    );

    for (id, fewest) in fewest.lock().unwrap().iter() {
        assert!(*fewest >= 2, "object {id} fell to {fewest} replica(s) during the drain");
    }
    for (id, _) in &objects {
        let now = holders(&master, id);
        assert!(now.len() >= 2 && !now.contains(&"datanode-1".to_string()), "{id}: {now:?}");
    }
    let drained = node(&master, "datanode-1");
    assert_eq!(drained["replicas"], 0, "{drained}");
    let listing = aether_ok(&cluster, &["nodes"]);
    assert!(listing.lines().any(|l| l.starts_with("datanode-1") && l.contains("drained")), "{listing}");
    let (_, status) = api_get(&format!("{master}/api/cluster")).unwrap();
    assert_eq!((status["nodes_drained"].as_u64(), status["under_replicated"].as_u64()), (Some(1), Some(0)), "{status}");
    // The metrics say the same (their snapshot is at most a second old).
    wait_until("the drain's gauges to show it done", Duration::from_secs(10), || {
        metric(&master, "aether_master_nodes_drained") == Some(1.0)
            && metric(&master, "aether_master_nodes_draining") == Some(0.0)
            && metric(&master, "aether_master_copies_to_move") == Some(0.0)
    });
    let moved = metric(&master, "aether_master_copies_moved_total").unwrap_or(0.0);
    assert!(moved >= 1.0 && moved <= on_first as f64, "{moved} copies moved, {on_first} were on datanode-1");
    // And so does the status page, with the drain's events.
    let page = status_page(&master);
    assert!(page.contains("1 node(s) drained, waiting for `aether node remove`"), "{page}");
    assert!(page.contains("<b>node draining</b> node datanode-1 is draining"), "{page}");
    assert!(page.contains("<b>node drained</b> node datanode-1 is drained"), "{page}");
    // The drained node is told to delete its copies.
    wait_until("datanode-1 to delete its copies", Duration::from_secs(20), || {
        node(&master, "datanode-1")["object_count"] == 0
    });
    // New objects do not go to it.
    for (id, _) in upload_many(&master, 10, 512) {
        assert!(!holders(&master, &id).contains(&"datanode-1".to_string()));
    }

    // The drain is durable: a restarted master still knows it.
    cluster.restart_master();
    let master = cluster.master.url.clone();
    assert_eq!(node(&master, "datanode-1")["drain"], "drained");

    // Removing forgets it (its process stopped first, or it would register again as new).
    cluster.datanodes[0].kill();
    aether_ok(&cluster, &["node", "remove", "datanode-1"]);
    assert!(nodes(&master).iter().all(|n| n["id"] != "datanode-1"));
    assert!(status_page(&master).contains("<b>node removed</b> node datanode-1 is removed"));
    read_all_back(&cluster, &objects);
}

/// Sends `signal` (e.g. "-STOP") to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Resumes a stopped process however the test ends, so that its `Proc` can be killed.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

#[test]
fn a_drain_in_progress_shows_in_the_metrics_the_cli_and_the_page_until_it_is_drained() {
    // Every object is on datanode-1 and datanode-2 (R=2) before datanode-3 joins, and the
    // rebalancer is off: datanode-3 is the only node that can take datanode-1's copies.
    // It is stopped (SIGSTOP) before the drain starts, so the drain cannot finish until it
    // is resumed, however slow or fast this machine is; a master that hears nothing for
    // less than half of --dead-after still counts it alive, so the drain is accepted.
    let mut cluster = TestCluster::start_with(
        "drain-watched",
        2,
        &["--replication", "2", "--dead-after", "60", "--rebalance-rate", "0"],
        FAST_DATANODE,
    );
    let master = cluster.master.url.clone();
    let objects = upload_many(&master, 12, 2048);
    let third = cluster.add_datanode("datanode-3", FAST_DATANODE);
    wait_until("datanode-3 to be alive", Duration::from_secs(20), || node(&master, "datanode-3")["state"] == "alive");
    signal(cluster.datanodes[third].pid(), "-STOP");
    let resume = Resume(cluster.datanodes[third].pid());
    let stopped = Instant::now();

    aether_ok(&cluster, &["node", "drain", "datanode-1"]);
    let draining_row = |listing: &str| {
        listing.lines().any(|l| l.starts_with("datanode-1") && l.split_whitespace().nth(2) == Some("draining"))
    };
    // Each view is read until it shows the drain (the metrics and the page come from a
    // snapshot at most a second old); none may say drained meanwhile.
    let (mut in_metrics, mut in_cli, mut in_page) = (false, false, false);
    wait_until("the drain to show in the metrics, `aether nodes` and the page", Duration::from_secs(20), || {
        in_metrics = in_metrics
            || (metric(&master, "aether_master_nodes_draining") == Some(1.0)
                && metric(&master, "aether_master_copies_to_move") == Some(objects.len() as f64));
        in_cli = in_cli || draining_row(&aether_ok(&cluster, &["nodes"]));
        let page = status_page(&master);
        in_page = in_page || page.contains(&format!("1 node(s) draining, {} copies left to move", objects.len()));
        assert!(!page.contains("node(s) drained"), "drained while its only target was stopped: {page}");
        in_metrics && in_cli && in_page
    });
    let summary = aether_ok(&cluster, &["cluster"]);
    assert!(summary.contains(&format!("1 draining ({} copies left to move), 0 drained", objects.len())), "{summary}");
    // The drain really was held up by datanode-3 (the views were not just fast): it is
    // still draining, and the master never stopped counting datanode-3 alive.
    assert_eq!(node(&master, "datanode-1")["drain"], "draining");
    assert!(stopped.elapsed() < Duration::from_secs(29), "datanode-3 was stopped too long to count as alive");
    assert_eq!(node(&master, "datanode-3")["state"], "alive");

    drop(resume);
    wait_until("datanode-1 to be drained", Duration::from_secs(60), || {
        node(&master, "datanode-1")["drain"] == "drained"
    });
    wait_until("every view to show the drain done", Duration::from_secs(10), || {
        metric(&master, "aether_master_nodes_draining") == Some(0.0)
            && metric(&master, "aether_master_nodes_drained") == Some(1.0)
            && metric(&master, "aether_master_copies_to_move") == Some(0.0)
            && aether_ok(&cluster, &["nodes"])
                .lines()
                .any(|l| l.starts_with("datanode-1") && l.split_whitespace().nth(2) == Some("drained"))
            && status_page(&master).contains("1 node(s) drained, waiting for `aether node remove`")
            && !status_page(&master).contains("node(s) draining")
    });
    for (id, _) in &objects {
        let now = holders(&master, id);
        assert!(now.len() >= 2 && !now.contains(&"datanode-1".to_string()), "{id}: {now:?}");
    }
    read_all_back(&cluster, &objects);
}

#[test]
fn a_drain_the_others_cannot_take_is_refused_at_once_and_a_drain_can_be_cancelled() {
    let mut cluster = fast_cluster("drain-refused", 2, &["--replication", "2"], &[]);
    let master = cluster.master.url.clone();
    upload_many(&master, 3, 256);
    let refused = cluster.aether(&["node", "drain", "datanode-1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("409") && stderr.contains("cannot drain node datanode-1") && stderr.contains("need 2"),
        "{stderr}"
    );
    assert!(node(&master, "datanode-1")["drain"].is_null());

    // A node neither drained nor dead is not removed, and the answer says why.
    let (status, body) = request("DELETE", &format!("{master}/api/nodes/datanode-2"), None).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("aether node drain datanode-2"), "{body}");

    cluster.add_datanode("datanode-3", FAST_DATANODE);
    wait_until("datanode-3 to register", Duration::from_secs(20), || !node(&master, "datanode-3").is_null());

    // With R=2 the drain starts; while it lasts nothing new is placed on the node, and
    // once cancelled the node takes new copies again.
    let body = serde_json::json!({"size": 10, "replication": 2}).to_string();
    aether_ok(&cluster, &["node", "drain", "datanode-1"]);
    for _ in 0..20 {
        let (_, placement) = request("POST", &format!("{master}/api/upload/init"), Some(body.as_bytes())).unwrap();
        let nodes: Vec<String> = serde_json::from_value(placement["nodes"].clone()).unwrap();
        assert!(!nodes.contains(&cluster.datanodes[0].url), "a draining node was placed: {placement}");
    }
    let said = aether_ok(&cluster, &["node", "cancel-drain", "datanode-1"]);
    assert!(said.contains("no longer draining"), "{said}");
    assert!(node(&master, "datanode-1")["drain"].is_null());
    let mut placed_on_first = 0;
    for _ in 0..20 {
        let (_, placement) = request("POST", &format!("{master}/api/upload/init"), Some(body.as_bytes())).unwrap();
        let nodes: Vec<String> = serde_json::from_value(placement["nodes"].clone()).unwrap();
        placed_on_first += nodes.contains(&cluster.datanodes[0].url) as usize;
    }
    assert!(placed_on_first > 0, "a node whose drain was cancelled got nothing in 20 placements");
    let (_, status) = api_get(&format!("{master}/api/cluster")).unwrap();
    assert_eq!(status["nodes_draining"], 0, "{status}");
    assert!(status_page(&master).contains("<b>drain cancelled</b>"));

    // A dead node may be removed once its copies were made again elsewhere.
    cluster.datanodes[1].kill();
    wait_until("datanode-2 dead and its copies repaired", Duration::from_secs(30), || {
        let (_, status) = api_get(&format!("{master}/api/cluster")).unwrap();
        // `/api/cluster` counts from the database, which repair and removal read.
        status["nodes_dead"] == 1 && status["under_replicated"] == 0
    });
    aether_ok(&cluster, &["node", "remove", "datanode-2"]);
    assert!(nodes(&master).iter().all(|n| n["id"] != "datanode-2"));
}

/// Used fraction of a node's capacity in percent, as its heartbeat said.
fn used_percent(node: &Value) -> f64 {
    let capacity = node["capacity_bytes"].as_f64().unwrap_or(0.0);
    let free = node["free_bytes"].as_f64().unwrap_or(0.0);
    if capacity == 0.0 {
        return 100.0;
    }
    100.0 * (1.0 - free / capacity)
}

#[test]
fn a_new_empty_node_is_filled_until_usage_is_within_the_band() {
    // 100 MiB offered by each node; 30 objects of 1 MiB at R=2 fill the first two to 30%.
    let capacity: &[&str] = &["--capacity", "100M"];
    let mut cluster = fast_cluster(
        "rebalance",
        2,
        &["--replication", "2", "--rebalance-band", "10", "--rebalance-rate", "8"],
        capacity,
    );
    let master = cluster.master.url.clone();
    let objects = upload_many(&master, 30, 1 << 20);
    wait_until("the first nodes' heartbeats to count their objects", Duration::from_secs(20), || {
        nodes(&master).iter().all(|n| used_percent(n) > 29.0)
    });
    let mut args = FAST_DATANODE.to_vec();
    args.extend_from_slice(capacity);
    let started = Instant::now();
    cluster.add_datanode("datanode-3", &args);
    wait_until("datanode-3's first heartbeat", Duration::from_secs(20), || {
        node(&master, "datanode-3")["capacity_bytes"].as_u64().is_some_and(|c| c > 0)
    });
    let before: Vec<f64> = nodes(&master).iter().map(used_percent).collect();
    let mut after = Vec::new();
    wait_until("usage within 10 points", Duration::from_secs(90), || {
        let now = nodes(&master);
        after = now.iter().map(used_percent).collect();
        let spread = after.iter().cloned().fold(f64::MIN, f64::max) - after.iter().cloned().fold(f64::MAX, f64::min);
        now.len() == 3 && spread <= 10.0 && now.iter().all(|n| n["object_count"] == n["replicas"])
    });
    let took = started.elapsed();
    let moved = node(&master, "datanode-3")["replicas"].as_u64().unwrap();
    eprintln!(
        "rebalanced from {before:.1?} % to {after:.1?} % used in {:.1} s, moving {moved} copies",
        took.as_secs_f64()
    );
    // Bounded: the band is reached with about the copies needed (20 of 60) and no churn,
    // and no faster than 8 a second (after a first second's worth).
    assert!((10..=26).contains(&moved), "{moved} copies moved to the new node");
    assert!(took.as_secs_f64() >= (moved as f64 - 8.0) / 8.0, "{moved} copies in {took:?}: faster than 8 a second");
    // The rebalance's start and end are among the page's events.
    wait_until("the rebalance's end among the events", Duration::from_secs(20), || {
        let page = status_page(&master);
        page.contains("points apart; moving copies") && page.contains("<b>rebalance</b> rebalance: every node")
    });
    for (id, _) in &objects {
        assert_eq!(holders(&master, id).len(), 2, "object {id}");
    }
    read_all_back(&cluster, &objects);
}

#[test]
fn replicas_spread_over_zones_so_a_whole_zone_can_die() {
    let mut cluster = TestCluster::start_with("zones", 0, &["--replication", "2", "--dead-after", "1.5"], &[]);
    let add = |cluster: &mut TestCluster, id: &str, zone: &str| {
        let mut args = FAST_DATANODE.to_vec();
        args.extend_from_slice(&["--zone", zone]);
        cluster.add_datanode(id, &args);
    };
    let master = cluster.master.url.clone();
    let zoned = |n: usize| {
        let master = master.clone();
        move || {
            let listed = nodes(&master);
            listed.len() == n && listed.iter().all(|n| n["zone"].is_string())
        }
    };
    // At first only the east zone exists: both copies of these objects are there.
    add(&mut cluster, "datanode-1", "east");
    add(&mut cluster, "datanode-2", "east");
    wait_until("two east nodes", Duration::from_secs(30), zoned(2));
    let mut objects = upload_many(&cluster.master.url, 10, 2048);
    // The west zone joins: new objects get one copy in each zone, and the old ones get
    // one of their two east copies moved west.
    add(&mut cluster, "datanode-3", "west");
    add(&mut cluster, "datanode-4", "west");
    wait_until("four nodes with their zones", Duration::from_secs(30), zoned(4));
    let master = cluster.master.url.clone();
    let listing = aether_ok(&cluster, &["nodes"]);
    assert!(listing.contains("zone east") && listing.contains("zone west"), "{listing}");
    let zone_of: HashMap<String, String> = nodes(&master)
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["zone"].as_str().unwrap().to_string()))
        .collect();
    let new = upload_many(&master, 20, 2048);
    let zones_of = |id: &str| {
        let mut zones: Vec<String> = holders(&master, id).iter().map(|h| zone_of[h].clone()).collect();
        zones.sort();
        zones.dedup();
        zones
    };
    for (id, _) in &new {
        assert_eq!(zones_of(id).len(), 2, "new object {id} has its replicas in one zone");
    }
    let started = Instant::now();
    wait_until("the old objects to spread over both zones", Duration::from_secs(60), || {
        objects.iter().all(|(id, _)| zones_of(id).len() == 2 && holders(&master, id).len() == 2)
    });
    eprintln!("spread 10 old objects over a new zone in {:.1} s", started.elapsed().as_secs_f64());
    let page = status_page(&master);
    assert!(page.contains("<b>zone spreading</b> moving "), "{page}");
    objects.extend(new);
    // The whole east zone dies: every object is still read back.
    cluster.datanodes[0].kill();
    cluster.datanodes[1].kill();
    read_all_back(&cluster, &objects);
}
