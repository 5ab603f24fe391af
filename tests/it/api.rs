//! The HTTP API and the CLI as a user meets them: the original curl walk-through, the
//! `dev` cluster, `aether put/get/stat/nodes`, and a table of bad inputs per server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{
    api_get, get_bytes, pattern, put_bytes, raw_request, request, wait_until, Proc, TempDir, TestCluster, BIN,
};

fn post(url: &str, body: &Value) -> (u16, Value) {
    request("POST", url, Some(body.to_string().as_bytes())).unwrap()
}

/// The original README's "Testing the full system", step by step, against datanodes
/// that do not know the master (the walk-through registers them itself).
fn walk_through(master: &str, nodes: &[(&str, &str)]) {
    for (id, address) in nodes {
        let (status, body) = post(&format!("{master}/api/node/register"), &json!({"id": id, "address": address}));
        assert_eq!((status, body), (200, json!({"status": "OK"})));
    }
    let (status, placement) = post(&format!("{master}/api/upload/init"), &json!({"size": 1024}));
    assert_eq!(status, 200, "{placement}");
    let id = placement["objectid"].as_str().unwrap().to_string();
    let placed: Vec<String> = serde_json::from_value(placement["nodes"].clone()).unwrap();
    assert_eq!(placed.len(), 2);
    let data = b"test data\n";
    for node in &placed {
        assert_eq!(put_bytes(&format!("{node}/objects/{id}"), data), 201);
        assert_eq!(put_bytes(&format!("{node}/objects/{id}"), data), 409, "objects are immutable");
    }
    let (status, body) = post(&format!("{master}/api/upload/complete"), &json!({"objectid": id}));
    assert_eq!((status, body), (200, json!({"status": "OK"})));
    let (status, object) = api_get(&format!("{master}/api/objects/{id}")).unwrap();
    assert_eq!(status, 200);
    let mut replicas: Vec<String> = serde_json::from_value(object["replicas"].clone()).unwrap();
    let mut expected = placed.clone();
    replicas.sort();
    expected.sort();
    assert_eq!(replicas, expected);
    for node in &replicas {
        assert_eq!(get_bytes(&format!("{node}/objects/{id}")).unwrap(), data);
        let (status, health) = api_get(&format!("{node}/health")).unwrap();
        assert_eq!((status, &health["status"]), (200, &json!("ok")));
    }
}

#[test]
fn seed_walkthrough_against_standalone_servers() {
    let dir = TempDir::new("walk");
    let data = |name: &str| dir.path().join(name).display().to_string();
    let master = Proc::start("master", &["master", "--listen", "127.0.0.1:0", "--data", &data("m")]);
    let n1 = Proc::start("dn1", &["datanode", "--listen", "127.0.0.1:0", "--data", &data("d1")]);
    let n2 = Proc::start("dn2", &["datanode", "--listen", "127.0.0.1:0", "--data", &data("d2")]);
    let nodes = [("datanode-1", n1.url.as_str()), ("datanode-2", n2.url.as_str())];
    walk_through(&master.url, &nodes);
    // Registering again, as the walk-through does on a second run, adds no node.
    walk_through(&master.url, &nodes);
    let (_, list) = api_get(&format!("{}/api/nodes", master.url)).unwrap();
    assert_eq!(list["nodes"].as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn dev_cluster_serves_the_walkthrough_and_stops_on_sigint() {
    let dir = TempDir::new("dev");
    let mut child = Command::new(BIN)
        .args(["dev", "--port", "0", "--data"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("Stop it") {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 2 && (words[0] == "master" || words[0].starts_with("datanode-")) {
            urls.push((words[0].to_string(), words[1].to_string()));
        }
    }
    assert_eq!(urls.len(), 4, "{urls:?}");
    let master = &urls[0].1;
    let nodes: Vec<(&str, &str)> = urls[1..3].iter().map(|(id, url)| (id.as_str(), url.as_str())).collect();
    walk_through(master, &nodes);
    let (_, list) = api_get(&format!("{master}/api/nodes")).unwrap();
    assert_eq!(list["nodes"].as_array().unwrap().len(), 3, "the walk-through's registrations add no node: {list}");

    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "dev cluster did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn cli_put_get_stat_nodes() {
    let cluster = TestCluster::start("cli", 3, 2);
    let input = cluster.dir.path().join("in.bin");
    let data = pattern(11, 3 << 20);
    std::fs::write(&input, &data).unwrap();

    let put = cluster.aether(&["put", input.to_str().unwrap()]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();

    let output = cluster.dir.path().join("out.bin");
    let get = cluster.aether(&["get", &id, "-o", output.to_str().unwrap()]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert!(std::fs::read(&output).unwrap() == data);
    let get = cluster.aether(&["get", &id]);
    assert!(get.status.success() && get.stdout == data);

    let stat = cluster.aether(&["stat", &id]);
    let info: Value = serde_json::from_slice(&stat.stdout).unwrap();
    assert_eq!((info["size"].as_u64(), info["replicas"].as_array().unwrap().len()), (Some(3 << 20), 2));

    let nodes = String::from_utf8(cluster.aether(&["nodes"]).stdout).unwrap();
    for i in 1..=3 {
        assert!(nodes.contains(&format!("datanode-{i}")), "{nodes}");
    }

    let missing = cluster.aether(&["get", "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn get_fails_over_to_another_replica() {
    let mut cluster = TestCluster::start("failover", 2, 2);
    let input = cluster.dir.path().join("in.bin");
    std::fs::write(&input, b"survives one node").unwrap();
    let put = cluster.aether(&["put", input.to_str().unwrap()]);
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();
    cluster.datanodes[0].kill();
    let get = cluster.aether(&["get", &id]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(get.stdout, b"survives one node");
}

/// One row of a bad-input table: what is sent, and what must come back.
#[track_caller]
fn check(base: &str, method: &str, path: &str, body: Option<&str>, status: u16, error_has: &str) {
    let (got, answer) = raw_request(base, method, path, body.map(str::as_bytes));
    assert_eq!(got, status, "{method} {path} {body:?} answered {answer}");
    if method != "HEAD" {
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: no JSON error in {answer}"));
        assert!(error.contains(error_has), "{method} {path}: {error:?} lacks {error_has:?}");
    }
}

#[test]
fn master_rejects_bad_input_with_json_errors() {
    let cluster = TestCluster::start("master-bad", 1, 1);
    let m = cluster.master.url.as_str();
    let id = "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03";
    let table: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/api/upload/init", Some("{not json"), 400, "malformed JSON"),
        ("POST", "/api/upload/init", Some("{}"), 400, "size"),
        ("POST", "/api/upload/init", Some(r#"{"size": -1}"#), 400, "size"),
        ("POST", "/api/upload/init", Some(r#"{"size": "big"}"#), 400, "size"),
        ("POST", "/api/upload/init", Some(r#"{"size": 10, "replication": 0}"#), 400, "replication"),
        ("POST", "/api/upload/init", Some(r#"{"size": 10, "replication": 2}"#), 503, "only 1"),
        ("POST", "/api/upload/init", Some(r#"{"size": 99999999999999999}"#), 400, "maximum object size"),
        ("GET", "/api/upload/init", None, 405, "POST"),
        ("POST", "/api/upload/complete", Some(r#"{"objectid": "nope"}"#), 400, "invalid object id"),
        ("POST", "/api/upload/complete", Some(&format!(r#"{{"objectid": "{id}"}}"#)), 404, "no upload"),
        ("GET", &format!("/api/objects/{id}"), None, 404, "not found"),
        ("GET", "/api/objects/..%2F..%2Fetc%2Fpasswd", None, 400, "invalid object id"),
        ("GET", "/api/objects/../../etc/passwd", None, 400, "invalid object id"),
        ("DELETE", "/api/nodes", None, 405, "GET"),
        ("GET", "/api/nowhere", None, 404, "no such endpoint"),
        ("POST", "/api/node/register", Some(r#"{"id": "a/b", "address": "http://x:1"}"#), 400, "invalid node id"),
        ("POST", "/api/node/register", Some(r#"{"id": "n9", "address": "x:1"}"#), 400, "invalid node address"),
        ("POST", "/api/node/register", Some(r#"{"id": "n9"}"#), 400, "address"),
    ];
    for (method, path, body, status, error_has) in table {
        check(m, method, path, *body, *status, error_has);
    }
    let oversized = format!(r#"{{"size": 1, "pad": "{}"}}"#, "x".repeat(70_000));
    check(m, "POST", "/api/upload/init", Some(&oversized), 413, "larger than");
    // An address held by one node cannot be taken over silently by another id.
    let (_, nodes) = api_get(&format!("{m}/api/nodes")).unwrap();
    let taken = nodes["nodes"][0]["address"].as_str().unwrap().to_string();
    let body = json!({"id": "impostor", "address": taken}).to_string();
    check(m, "POST", "/api/node/register", Some(&body), 409, "already registered");

    // A pending object is not served, cannot complete before its datanode has it, and
    // completing it twice is fine.
    let (_, placement) = post(&format!("{m}/api/upload/init"), &json!({"size": 0}));
    let pending = placement["objectid"].as_str().unwrap();
    check(m, "GET", &format!("/api/objects/{pending}"), None, 404, "still being uploaded");
    let body = json!({"objectid": pending}).to_string();
    check(m, "POST", "/api/upload/complete", Some(&body), 503, "only 0 of the 1 required replicas");
    assert_eq!(put_bytes(&format!("{}/objects/{pending}", placement["nodes"][0].as_str().unwrap()), b""), 201);
    for _ in 0..2 {
        let (status, _) = post(&format!("{m}/api/upload/complete"), &json!({"objectid": pending}));
        assert_eq!(status, 200);
    }
}

/// Sends a PUT whose body stops short of its Content-Length, then closes the socket.
fn put_short_body(base: &str, id: &str, declared: usize, sent: usize) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "PUT /objects/{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared}\r\n\r\n").unwrap();
    stream.write_all(&vec![b'x'; sent]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
}

#[test]
fn datanode_rejects_bad_input_and_changes_nothing() {
    let dir = TempDir::new("dn-bad");
    let data_dir = dir.path().join("d");
    let node = Proc::start(
        "dn",
        &["datanode", "--listen", "127.0.0.1:0", "--data", data_dir.to_str().unwrap(), "--max-object-size", "64K"],
    );
    let d = node.url.as_str();
    let id = "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03";
    let table: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("GET", "/objects/not-a-uuid", None, 400, "invalid object id"),
        ("PUT", "/objects/..%2F..%2Fetc%2Fpasswd", Some("x"), 400, "invalid object id"),
        ("PUT", "/objects/../../tmp/evil", Some("x"), 400, "invalid object id"),
        ("GET", &format!("/objects/{id}"), None, 404, "not found"),
        ("HEAD", &format!("/objects/{id}"), None, 404, ""),
        ("POST", &format!("/objects/{id}"), None, 405, "PUT"),
        ("POST", "/health", None, 405, "GET"),
        ("GET", "/nowhere", None, 404, "no such endpoint"),
        ("PUT", &format!("/objects/{id}"), Some(&"y".repeat(70_000)), 413, "65536 bytes"),
    ];
    for (method, path, body, status, error_has) in table {
        check(d, method, path, *body, *status, error_has);
    }
    // tiny_http buffers bodies up to 1 KiB itself and drops a short one unseen; longer
    // ones stream into the store, which must notice the shortfall.
    put_short_body(d, id, 500, 100);
    put_short_body(d, id, 50_000, 20_000);
    node.wait_for_log("body ended after 20000 of 50000 bytes");
    check(d, "GET", &format!("/objects/{id}"), None, 404, "not found");
    assert_eq!(std::fs::read_dir(data_dir.join("tmp")).unwrap().count(), 0, "leftover temp files");

    // A good upload still works after all that, and is immutable.
    assert_eq!(put_bytes(&format!("{d}/objects/{id}"), b"fine"), 201);
    check(d, "PUT", &format!("/objects/{id}"), Some("other"), 409, "already exists");
    assert_eq!(get_bytes(&format!("{d}/objects/{id}")).unwrap(), b"fine");
    let head = crate::cluster::agent().head(&format!("{d}/objects/{id}")).call().unwrap();
    assert_eq!(head.header("Content-Length"), Some("4"));
    // Any spelling of a UUID names the same object.
    assert_eq!(get_bytes(&format!("{d}/objects/{}", id.to_uppercase())).unwrap(), b"fine");
}

#[test]
fn full_disk_refuses_uploads_and_leaves_nothing() {
    let dir = TempDir::new("full");
    let mount = dir.path().join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // Without a small filesystem of its own (mounting needs root), the node is told to
    // keep more space free than the disk has, which takes the same refusal path.
    let reserve = if mounted { "0" } else { "1000000T" };
    struct Unmount(std::path::PathBuf, bool);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if self.1 {
                let _ = Command::new("umount").arg(&self.0).status();
            }
        }
    }
    let _unmount = Unmount(mount.clone(), mounted);
    let data = mount.join("d");
    let node = Proc::start(
        "dn",
        &["datanode", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--reserve", reserve],
    );
    let id = "6d1f1a52-3b7e-4c2a-8f0e-1d2c3b4a5f60";
    let url = format!("{}/objects/{id}", node.url);
    let big = pattern(3, 8 << 20);
    // Declared length: refused before a byte is written.
    let (status, body) = request("PUT", &url, Some(&big)).unwrap();
    assert_eq!(status, 507, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not enough disk space"), "{body}");
    if mounted {
        // Chunked: the length is unknown until the disk fills up mid-write. The node
        // answers 507 and stops reading, so the client sees that answer or, if it is
        // still sending, the connection closing on it; either way nothing is stored.
        match crate::cluster::agent().put(&url).send(&big[..]) {
            Err(ureq::Error::Status(code, _)) => assert_eq!(code, 507),
            Err(ureq::Error::Transport(_)) => node.wait_for_log(" 507 "),
            Ok(response) => panic!("a full disk took the upload: {}", response.status()),
        }
    }
    assert_eq!(get_bytes(&url), Err(404));
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0, "leftover temp files");
    // Space is back for a small object.
    if mounted {
        assert_eq!(put_bytes(&url, b"small"), 201);
    }
}

#[test]
fn health_answers_on_both_servers() {
    let cluster = TestCluster::start("health", 1, 1);
    for url in [&cluster.master.url, &cluster.datanodes[0].url] {
        wait_until("health", Duration::from_secs(5), || {
            api_get(&format!("{url}/health")).is_ok_and(|(status, body)| status == 200 && body["status"] == "ok")
        });
    }
}

/// Found by the `http_request` fuzz target: a request line naming HTTP/2.0 (or later) was
/// never answered, even after the client closed, and its connection's thread waited
/// forever. Now it is a 505 and the connection closes.
#[test]
fn a_request_for_http_2_is_answered_505_and_closed() {
    let dir = TempDir::new("http2");
    let data = dir.path().join("m");
    let master = Proc::start("m", &["master", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()]);
    for request_line in ["GET /health HTTP/2.0", "PRI * HTTP/2.0", "HEAD /objects/x HTTP/3.0"] {
        let mut stream = TcpStream::connect(master.url.trim_start_matches("http://")).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(stream, "{request_line}\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap_or_else(|e| panic!("{request_line:?}: no answer and no close: {e}"));
        assert!(answer.starts_with("HTTP/1.1 505"), "{request_line:?} was answered {answer:?}");
    }
    assert_eq!(api_get(&format!("{}/health", master.url)).unwrap().0, 200);
}

/// A node `/api/nodes` lists can be placed on at once: a client that waits there for its
/// nodes and then uploads is never told there are too few (the master once listed a
/// registering node a moment before placement knew it).
#[test]
fn a_node_the_master_lists_can_be_placed_on_at_once() {
    let cluster = TestCluster::start("listed-placeable", 0, 1);
    let m = cluster.master.url.clone();
    const NODES: usize = 16;
    // All at once: their rows are committed together, and each then has its own steps
    // to take, one after another.
    let start = std::sync::Arc::new(std::sync::Barrier::new(NODES));
    let registering: Vec<_> = (1..=NODES)
        .map(|i| {
            let (m, start) = (m.clone(), std::sync::Arc::clone(&start));
            std::thread::spawn(move || {
                // Nothing listens there: registering and placing never contact a node.
                let node = json!({"id": format!("listed-{i}"), "address": format!("http://127.0.0.1:{}", 20 + i)});
                start.wait();
                let (status, answer) = post(&format!("{m}/api/node/register"), &node);
                assert_eq!(status, 200, "{answer}");
            })
        })
        .collect();
    // Polled without a pause, to land between a registration's steps if it can.
    let (mut listed, deadline) = (0, std::time::Instant::now() + Duration::from_secs(30));
    while listed < NODES {
        assert!(std::time::Instant::now() < deadline, "only {listed} of {NODES} nodes listed after 30 s");
        let (_, nodes) = api_get(&format!("{m}/api/nodes")).unwrap();
        let now = nodes["nodes"].as_array().map_or(0, Vec::len);
        if now > listed {
            listed = now;
            let (status, answer) = post(&format!("{m}/api/upload/init"), &json!({"size": 1, "replication": listed}));
            assert_eq!(status, 200, "{listed} nodes listed, and yet: {answer}");
        }
    }
    for thread in registering {
        thread.join().unwrap();
    }
}
