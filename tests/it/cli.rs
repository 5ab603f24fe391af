//! What a newcomer meets around the edges: log levels and formats, versions, `aether dev`
//! with one datanode, client errors when the master is absent or written without a
//! scheme, the summary after a transfer, and `aether cluster`.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{api_get, request, upload, wait_until, Proc, TempDir, TestCluster, BIN};

/// Runs `aether ARGS`, killing it if it has not ended within `limit` (a command that
/// should refuse to start must not hang the test when it starts after all).
#[track_caller]
fn aether_within(limit: Duration, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("AETHER_MASTER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running aether");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("aether {args:?} still ran after {limit:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn post(url: &str, body: &Value) -> u16 {
    request("POST", url, Some(body.to_string().as_bytes())).unwrap().0
}

#[test]
fn heartbeats_are_quiet_at_the_default_level_failures_are_not() {
    // Heartbeats ten times a second: two seconds of them would be ~40 lines.
    let cluster = TestCluster::start_with("quiet", 2, &["--replication", "1"], &["--heartbeat-interval", "0.05"]);
    let m = &cluster.master.url;
    let started = Instant::now();
    wait_until("two seconds of heartbeats", Duration::from_secs(10), || {
        started.elapsed() > Duration::from_secs(2)
            && api_get(&format!("{m}/api/nodes")).unwrap().1["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["object_count"].is_u64())
    });
    upload(m, b"an object, so reports flow too");
    // A failure is still logged: bad input, and a heartbeat from a node nobody knows.
    assert_eq!(post(&format!("{m}/api/upload/init"), &json!({"size": "big"})), 400);
    let ghost = json!({"id": "ghost", "address": "http://127.0.0.1:1", "capacity_bytes": 1, "free_bytes": 1, "object_count": 0});
    assert_eq!(post(&format!("{m}/api/node/heartbeat"), &ghost), 404);
    cluster.master.wait_for_log("/api/upload/init 400");
    cluster.master.wait_for_log("/api/node/heartbeat 404");
    let log = cluster.master.log_text();
    let routine = ["/api/node/heartbeat 200", "/api/replicas/report 200", "/api/node/inventory 200", "/health 200"];
    for line in log.lines() {
        assert!(!routine.iter().any(|r| line.contains(r)), "routine traffic logged at the default level: {line}");
    }
    // The state changes are there.
    assert!(log.contains("node datanode-1 registered"), "{log}");
}

#[test]
fn debug_level_shows_routine_traffic_and_json_lines_parse() {
    let dir = TempDir::new("log-json");
    let data = dir.path().join("m").display().to_string();
    let master = Proc::start_with_env(
        "master",
        &["master", "--listen", "127.0.0.1:0", "--data", &data, "--log-format", "json"],
        &[("AETHER_LOG", "debug")],
    );
    let node_data = dir.path().join("d1").display().to_string();
    let node_args = [
        "datanode",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &node_data,
        "--master",
        &master.url,
        "--heartbeat-interval",
        "0.1",
    ];
    let _node = Proc::start("datanode", &node_args);
    master.wait_for_log("/api/node/heartbeat 200");
    for line in master.log_text().lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["time"].is_string() && value["component"] == "master", "{line}");
        assert!(["debug", "info", "warn", "error"].contains(&value["level"].as_str().unwrap()), "{line}");
    }
}

#[test]
fn version_is_the_same_everywhere() {
    let output = aether_within(Duration::from_secs(10), &["--version"]);
    assert!(output.status.success());
    let printed = text(&output.stdout);
    let version = printed.trim().strip_prefix("aether ").unwrap_or_else(|| panic!("{printed:?}")).to_string();
    assert!(!version.is_empty());

    let cluster = TestCluster::start("version", 1, 1);
    for url in [&cluster.master.url, &cluster.datanodes[0].url] {
        let (status, health) = api_get(&format!("{url}/health")).unwrap();
        assert_eq!((status, health["status"].as_str(), health["version"].as_str()), (200, Some("ok"), Some(&*version)));
    }
    let nodes = api_get(&format!("{}/api/nodes", cluster.master.url)).unwrap().1;
    assert_eq!(nodes["nodes"][0]["version"].as_str(), Some(&*version), "{nodes}");
    let listed = cluster.aether(&["nodes"]);
    assert!(listed.status.success() && text(&listed.stdout).contains(&version), "{}", text(&listed.stdout));
    assert!(cluster.master.log_text().lines().next().unwrap().contains(&version));
    assert!(cluster.datanodes[0].log_text().lines().next().unwrap().contains(&version));
}

#[test]
fn dev_with_one_datanode_takes_uploads() {
    let dir = TempDir::new("dev-one");
    let data = dir.path().join("data").display().to_string();
    let dev = Proc::start("dev", &["dev", "--datanodes", "1", "--port", "0", "--data", &data]);
    wait_until("the datanode to register", Duration::from_secs(20), || {
        api_get(&format!("{}/api/nodes", dev.url))
            .is_ok_and(|(_, b)| b["nodes"].as_array().is_some_and(|a| a.len() == 1))
    });
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, b"hello\n").unwrap();
    let put = aether_within(Duration::from_secs(60), &["put", file.to_str().unwrap(), "--master", &dev.url]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    let id = text(&put.stdout).trim().to_string();
    let object = api_get(&format!("{}/api/objects/{id}", dev.url)).unwrap().1;
    assert_eq!(object["replicas"].as_array().map(Vec::len), Some(1), "{object}");

    // More replicas than datanodes, asked for explicitly, is refused before anything starts.
    let refused = aether_within(
        Duration::from_secs(10),
        &["dev", "--datanodes", "2", "--replication", "3", "--port", "0", "--data", &data],
    );
    assert!(!refused.status.success());
    assert_eq!(text(&refused.stderr).lines().count(), 1, "{}", text(&refused.stderr));
}

#[test]
fn master_address_without_scheme_works_and_no_master_says_so_once() {
    let cluster = TestCluster::start("host-port", 1, 1);
    let host_port = cluster.master.url.trim_start_matches("http://");
    let listed = aether_within(Duration::from_secs(30), &["nodes", "--master", host_port]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains("datanode-1"));

    let nowhere = format!("127.0.0.1:{}", closed_port());
    for master in [nowhere.clone(), format!("http://{nowhere}")] {
        let failed = aether_within(Duration::from_secs(30), &["nodes", "--master", &master]);
        assert!(!failed.status.success());
        let message = text(&failed.stderr);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert_eq!(message.matches(&nowhere).count(), 1, "the address once: {message}");
        assert!(message.contains("aether dev"), "a hint: {message}");
    }
}

#[test]
fn every_replica_down_names_each_node_once() {
    let mut cluster = TestCluster::start("all-down", 2, 2);
    let id = upload(&cluster.master.url, b"two copies, both about to vanish");
    let addresses: Vec<String> = cluster.datanodes.iter().map(|n| n.url.clone()).collect();
    for node in &mut cluster.datanodes {
        node.kill();
    }
    let out = cluster.dir.path().join("out");
    let failed = cluster.aether(&["get", &id, "-o", out.to_str().unwrap()]);
    assert!(!failed.status.success());
    let message = text(&failed.stderr);
    assert_eq!(message.lines().count(), 1, "{message}");
    for address in &addresses {
        assert_eq!(message.matches(address.as_str()).count(), 1, "{address} once: {message}");
    }
    // An upload placed on them fails the same way.
    let file = cluster.dir.path().join("in");
    std::fs::write(&file, b"nowhere to go").unwrap();
    let failed = cluster.aether(&["put", file.to_str().unwrap()]);
    assert!(!failed.status.success());
    let message = text(&failed.stderr);
    assert_eq!(message.lines().count(), 1, "{message}");
    for address in &addresses {
        assert!(message.matches(address.as_str()).count() <= 1, "{address} at most once: {message}");
    }
}

#[test]
fn a_transfer_ends_with_a_summary_on_a_terminal_only() {
    let cluster = TestCluster::start("summary", 1, 1);
    let file = cluster.dir.path().join("twelve.txt");
    std::fs::write(&file, b"12 bytes...\n").unwrap();
    let path = file.to_str().unwrap();

    // Piped: the id on standard output, nothing on standard error.
    let piped = cluster.aether(&["put", path]);
    assert!(piped.status.success());
    assert_eq!(text(&piped.stderr), "");

    // On a terminal (script(1) gives the command a pseudo-terminal): one more line, with the size.
    let command = format!("{BIN} put {path} --master {}", cluster.master.url);
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs the command on a terminal");
    let mut shown = String::new();
    child.stdout.take().unwrap().read_to_string(&mut shown).unwrap();
    assert!(child.wait().unwrap().success(), "{shown}");
    // Not the progress bar ("12 B/12 B .. eta"): the line it leaves behind.
    let summary = shown.split(['\r', '\n']).find(|l| l.contains("12 B") && !l.contains("eta"));
    assert!(summary.is_some_and(|l| l.contains("/s")), "{shown:?}");
}

#[test]
fn cluster_command_shows_the_counts() {
    let cluster = TestCluster::start("cluster-cmd", 2, 2);
    upload(&cluster.master.url, b"one object");
    let shown = cluster.aether(&["cluster"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let out = text(&shown.stdout);
    let status = api_get(&format!("{}/api/cluster", cluster.master.url)).unwrap().1;
    assert_eq!(status["objects"], 1);
    assert!(out.contains("2 alive") && out.contains(status["version"].as_str().unwrap()), "{out}");
    let help = aether_within(Duration::from_secs(10), &["put", "--help"]);
    assert!(help.status.success());
    let positional = text(&help.stdout);
    let file_line = positional.lines().find(|l| l.trim_start().starts_with("file ")).unwrap_or_default();
    assert!(file_line.split_whitespace().count() > 1, "put --help describes its argument: {positional}");
}
