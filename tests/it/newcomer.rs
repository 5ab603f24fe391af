//! What a newcomer meets first, tried as they would: `aether dev` (one cluster per data
//! directory, a datanode killed to watch it heal), the seed's walk-through verbatim,
//! `aether put` from a pipe or `-`, and inputs refused before the cluster is asked.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aetherstore::client::Client;
use serde_json::{json, Value};

use crate::cluster::{api_get, pattern, request, wait_until, TempDir, TestCluster, BIN};

/// A running `aether dev`, with what its banner said.
struct Dev {
    child: Child,
    master: String,
    /// (id, address, pid) of each datanode.
    nodes: Vec<(String, String, u32)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Dev {
    fn start(data: &Path, extra: &[&str]) -> Dev {
        let mut child = Command::new(BIN)
            .args(["dev", "--data"])
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), Arc::clone(&log));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (mut master, mut nodes) = (String::new(), Vec::new());
        let mut banner = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            banner.push(line.clone());
            if line.starts_with("Stop it") {
                break;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() >= 4 && words[0] == "master" {
                master = words[1].to_string();
            } else if words.len() >= 4 && words[0].starts_with("datanode-") && words[2] == "pid" {
                nodes.push((words[0].to_string(), words[1].to_string(), words[3].parse().unwrap()));
            }
        }
        let dev = Dev { child, master, nodes, log };
        assert!(!dev.master.is_empty(), "no banner: {banner:?}\n{}", dev.log_text());
        dev
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn aether(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("AETHER_MASTER", &self.master).stdin(Stdio::null()).output().unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of aether dev ----\n{}", self.log_text());
        }
    }
}

/// Runs `aether ARGS`; a command still running after `limit` is killed and counts as a
/// failure to refuse.
fn run_for(args: &[&str], data: &Path, limit: Duration) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
            return (true, format!("aether {args:?} was still running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_data_directory_serves_one_server_at_a_time() {
    let dir = TempDir::new("dirlock");
    let dev = Dev::start(dir.path(), &["--port", "0"]);
    let data = dir.path().join("in.txt");
    std::fs::write(&data, b"written before the second start").unwrap();
    let put = dev.aether(&["put", data.to_str().unwrap()]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();

    let limit = Duration::from_secs(20);
    let dev_pid = dev.child.id();
    let (ok, err) = run_for(&["dev", "--port", "0", "--data"], dir.path(), limit);
    assert!(!ok && err.contains(&format!("is in use by PID {dev_pid}")), "{err}");
    let master_dir = dir.path().join("master");
    let (ok, err) = run_for(&["master", "--listen", "127.0.0.1:0", "--data"], &master_dir, limit);
    assert!(!ok && err.contains(&format!("is in use by PID {dev_pid}")), "{err}");
    let (node, _, node_pid) = &dev.nodes[0];
    let node_dir = dir.path().join(node);
    let (ok, err) = run_for(&["datanode", "--listen", "127.0.0.1:0", "--data"], &node_dir, limit);
    assert!(!ok && err.contains(&format!("is in use by PID {node_pid}")), "{err}");

    // The first cluster noticed nothing: same nodes at the same addresses, data intact.
    let (_, list) = api_get(&format!("{}/api/nodes", dev.master)).unwrap();
    let mut registered: Vec<(String, String)> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["address"].as_str().unwrap().to_string()))
        .collect();
    registered.sort();
    let expected: Vec<(String, String)> = dev.nodes.iter().map(|(id, url, _)| (id.clone(), url.clone())).collect();
    assert_eq!(registered, expected);
    let get = dev.aether(&["get", &id]);
    assert!(get.status.success() && get.stdout == b"written before the second start");
}

#[test]
fn a_dev_datanode_killed_with_sigkill_is_healed_around() {
    let dir = TempDir::new("devheal");
    let dev = Dev::start(dir.path(), &["--port", "0", "--dead-after", "3"]);
    assert_eq!(dev.nodes.len(), 3, "{:?}", dev.nodes);
    for (_, _, pid) in &dev.nodes {
        assert_ne!(*pid, dev.child.id(), "each datanode is a process of its own");
    }
    let data = dir.path().join("in.bin");
    std::fs::write(&data, pattern(5, 100_000)).unwrap();
    let put = dev.aether(&["put", data.to_str().unwrap()]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();
    let holders = |info: &Value| -> Vec<String> {
        info["replica_nodes"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap().to_string()).collect()
    };
    let (_, info) = api_get(&format!("{}/api/objects/{id}", dev.master)).unwrap();
    let victim = holders(&info)[0].clone();
    let (_, _, pid) = dev.nodes.iter().find(|(node, ..)| *node == victim).unwrap();

    // What the README tells a newcomer to do.
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let url = format!("{}/api/objects/{id}", dev.master);
    wait_until("the object to be back at 2 copies without the killed node", Duration::from_secs(60), || {
        let (_, info) = api_get(&url).unwrap();
        let nodes = holders(&info);
        let states: Vec<&str> =
            info["replica_nodes"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
        nodes.len() == 2 && !nodes.contains(&victim) && states.iter().all(|s| *s == "alive")
    });
    let (_, cluster) = api_get(&format!("{}/api/cluster", dev.master)).unwrap();
    assert_eq!((cluster["nodes_dead"].as_u64(), cluster["under_replicated"].as_u64()), (Some(1), Some(0)));
    let get = dev.aether(&["get", &id]);
    assert!(get.status.success() && get.stdout == pattern(5, 100_000));
    let log = dev.log_text();
    assert!(log.contains(&format!("{victim} (pid {pid}) stopped")) && log.contains("To start it again"), "{log}");
}

/// A port P such that P..P+n are free now, for `aether dev --port P`.
fn free_port_run(n: u16) -> u16 {
    loop {
        let base = 20_000 + rand::random::<u16>() % 40_000;
        let held: Vec<_> = (0..n).map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if held.len() == n as usize {
            return base;
        }
    }
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    request("POST", url, Some(body.to_string().as_bytes())).unwrap()
}

/// `curl -X PUT --data-binary "@test.txt" URL`, exactly: curl sends a form content type.
fn curl_put(url: &str, bytes: &[u8]) -> u16 {
    match crate::cluster::agent().put(url).set("Content-Type", "application/x-www-form-urlencoded").send_bytes(bytes) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("PUT {url}: {e}"),
    }
}

/// The README's "original walk-through", command for command, with the uploads going
/// to `put_to` whatever `init` placed. Returns the object id.
fn verbatim_walk_through(port: u16, put_to: &[u16]) -> String {
    let master = format!("http://localhost:{port}");
    for i in 1..=2 {
        let node = json!({"id": format!("datanode-{i}"), "address": format!("http://localhost:{}", port + i)});
        assert_eq!(post(&format!("{master}/api/node/register"), &node), (200, json!({"status": "OK"})));
    }
    let (status, placement) = post(&format!("{master}/api/upload/init"), &json!({"size": 1024}));
    assert_eq!(status, 200, "{placement}");
    let id = placement["objectid"].as_str().unwrap().to_string();
    for node in put_to {
        assert_eq!(curl_put(&format!("http://localhost:{node}/objects/{id}"), b"test data\n"), 201);
    }
    let (status, answer) = post(&format!("{master}/api/upload/complete"), &json!({"objectid": id}));
    assert_eq!((status, &answer), (200, &json!({"status": "OK"})), "placed {placement}, uploaded to {put_to:?}");
    id
}

fn replica_addresses(master: &str, id: &str) -> Vec<String> {
    let (status, object) = api_get(&format!("{master}/api/objects/{id}")).unwrap();
    assert_eq!(status, 200, "{object}");
    let mut replicas: Vec<String> = serde_json::from_value(object["replicas"].clone()).unwrap();
    replicas.sort();
    replicas
}

#[test]
fn the_seed_walkthrough_runs_verbatim_against_dev_every_time() {
    let dir = TempDir::new("verbatim");
    let port = free_port_run(4);
    // The gateway on a free port: the master's port + 100 may be anyone's on a busy machine.
    let _dev = Dev::start(dir.path(), &["--port", &port.to_string(), "--dead-after", "4", "--s3-port", "0"]);
    let master = format!("http://localhost:{port}");
    let seed_nodes = vec![format!("http://localhost:{}", port + 1), format!("http://localhost:{}", port + 2)];
    for _ in 0..20 {
        let id = verbatim_walk_through(port, &[port + 1, port + 2]);
        assert_eq!(replica_addresses(&master, &id), seed_nodes, "the copies are where the bytes went, R of them");
        for node in &seed_nodes {
            assert_eq!(crate::cluster::get_bytes(&format!("{node}/objects/{id}")).unwrap(), b"test data\n");
        }
    }
    // A copy beyond the replication factor (uploaded to all three) is removed again.
    let id = verbatim_walk_through(port, &[port + 1, port + 2, port + 3]);
    let kept = replica_addresses(&master, &id);
    assert_eq!(kept.len(), 2, "{kept:?}");
    let surplus: Vec<String> =
        (1..=3).map(|i| format!("http://localhost:{}", port + i)).filter(|a| !kept.contains(a)).collect();
    let url = format!("{}/objects/{id}", surplus[0]);
    wait_until("the surplus copy to be deleted", Duration::from_secs(30), || {
        crate::cluster::get_bytes(&url) == Err(404)
    });
    // Nothing is left short of copies. Polled: on a loaded machine a datanode may miss
    // heartbeats for the 4 s of --dead-after, and its copies are then made elsewhere.
    wait_until("no object to be under-replicated", Duration::from_secs(30), || {
        api_get(&format!("{master}/api/cluster")).is_ok_and(|(_, cluster)| cluster["under_replicated"] == 0)
    });
}

/// `aether put ARGS` with `stdin` fed on standard input; returns (success, stdout, stderr).
fn put_with_stdin(master: &str, args: &[&str], stdin: Vec<u8>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("put")
        .args(args)
        .env("AETHER_MASTER", master)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &stdin);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[track_caller]
fn check_stored(cluster: &TestCluster, id: &str, expected: &[u8]) {
    let (status, info) = api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap();
    assert_eq!((status, info["size"].as_u64()), (200, Some(expected.len() as u64)), "{info}");
    let get = cluster.aether(&["get", id]);
    assert!(get.status.success() && get.stdout == expected, "{} bytes back", get.stdout.len());
}

#[test]
fn put_uploads_exactly_what_a_pipe_a_fifo_or_dash_gives() {
    let cluster = TestCluster::start("stdin", 3, 2);
    let master = cluster.master.url.clone();
    // The issue's own command: a pipe behind /dev/stdin, whose metadata says 0 bytes.
    let (ok, id, err) = put_with_stdin(&master, &["/dev/stdin"], b"hi\n".to_vec());
    assert!(ok, "{err}");
    check_stored(&cluster, &id, b"hi\n");
    // `-` is standard input, before or after the options; past 8 MiB it is spooled to a file.
    let big = pattern(21, (9 << 20) + 123);
    let (ok, id, err) = put_with_stdin(&master, &["-", "--replication", "3"], big.clone());
    assert!(ok, "{err}");
    check_stored(&cluster, &id, &big);
    let (_, info) = api_get(&format!("{master}/api/objects/{id}")).unwrap();
    assert_eq!(info["replicas"].as_array().unwrap().len(), 3);
    let (ok, id, err) = put_with_stdin(&master, &["--replication", "2", "-"], Vec::new());
    assert!(ok, "{err}");
    check_stored(&cluster, &id, b"");
    // A FIFO, written by another process as it is read.
    let fifo = cluster.dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let data = pattern(22, 300_000);
    let (path, bytes) = (fifo.clone(), data.clone());
    let writer = std::thread::spawn(move || std::fs::write(path, bytes).unwrap());
    let put = cluster.aether(&["put", fifo.to_str().unwrap()]);
    writer.join().unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    check_stored(&cluster, String::from_utf8(put.stdout).unwrap().trim(), &data);
}

#[test]
fn put_refuses_a_directory_or_a_missing_file_before_asking_the_cluster() {
    let dir = TempDir::new("putdir");
    // Nothing listens here: an error about the input proves the cluster was never asked.
    let nowhere = "http://127.0.0.1:1";
    let missing = dir.path().join("missing.txt");
    for (path, said) in [(dir.path(), "is a directory"), (missing.as_path(), "No such file")] {
        let output = Command::new(BIN)
            .args(["put", path.to_str().unwrap(), "--master", nowhere])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && output.stdout.is_empty(), "{err}");
        assert!(err.contains(said) && !err.contains("127.0.0.1:1"), "{err}");
    }
}

#[test]
fn uploads_right_after_a_datanode_sigkill_use_the_nodes_that_remain() {
    uploads_after_a_sigkill(TestCluster::start("afterkill", 4, 3));
}

/// The same with a cluster token: the retried chain (nodes the broken one never reached,
/// and their replacements) travels under one signature from `replace`.
#[test]
fn uploads_right_after_a_datanode_sigkill_use_the_nodes_that_remain_with_a_token() {
    let token = "newcomer-token";
    let master = ["--replication", "3", "--cluster-token", token];
    uploads_after_a_sigkill(TestCluster::start_with("afterkill-token", 4, &master, &["--cluster-token", token]));
}

fn uploads_after_a_sigkill(mut cluster: TestCluster) {
    let client = Client::new(aetherstore::client::agent(), &cluster.master.url);
    let victim = cluster.datanodes[1].url.clone();
    // A warm client: it holds placements taken ahead, most of them naming the victim.
    for i in 0..7 {
        let body = pattern(i, 5000);
        client.upload(5000, None, &mut || Ok(std::io::Cursor::new(body.clone()))).unwrap();
    }
    cluster.datanodes[1].kill();
    let (mut failures, mut through_victim) = (Vec::new(), 0);
    for i in 0..20 {
        let data = pattern(100 + i, 5000);
        let body = data.clone();
        let mut open = || Ok(Box::new(std::io::Cursor::new(body.clone())) as Box<dyn Read + Send>);
        match client.upload(data.len() as u64, None, &mut open) {
            Ok(uploaded) => {
                through_victim += uploaded.replicas.iter().any(|r| r.node == victim) as usize;
                // No node refused the retried chain (with a token: as not signed for it).
                let refused: Vec<_> = uploaded.replicas.iter().filter(|r| r.status == 403).collect();
                assert!(refused.is_empty(), "{refused:?}");
                let mut back = Vec::new();
                client.download(&uploaded.id, &mut back).unwrap();
                assert!(back == data);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "three healthy nodes remain for R=3, yet: {failures:#?}");
    // The first upload that met the dead node reported it; placement avoided it after
    // that, and the client dropped the placements naming it that it held.
    assert!(through_victim <= 2, "{through_victim} of 20 uploads were placed on the dead node");
    // A 503 says what it counted.
    let (status, answer) =
        request("POST", &format!("{}/api/upload/init", cluster.master.url), Some(br#"{"size": 10, "replication": 5}"#))
            .unwrap();
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(status == 503 && error.contains("of the 4 registered"), "{status} {answer}");
}

/// A proxy in front of the master that passes requests on, one connection each, except
/// for the first `complete`: that one reaches the master, which commits it, and then
/// `on_complete` runs (it kills the master) before the client's connection is closed
/// without an answer. With `every` set, every `complete` is answered that way.
fn lossy_proxy(master: String, every: bool, on_complete: crossbeam_channel::Sender<()>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let lost = Arc::new(Mutex::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let (master, lost, on_complete) = (master.clone(), Arc::clone(&lost), on_complete.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                while let Some(request) = read_message(&mut reader) {
                    let is_complete = String::from_utf8_lossy(&request).starts_with("POST /api/upload/complete ");
                    let Some(answer) = forward(&master, &request) else { return };
                    if is_complete && (every || !std::mem::replace(&mut *lost.lock().unwrap(), true)) {
                        let _ = on_complete.send(());
                        return; // closes the client's connection: no answer
                    }
                    if std::io::Write::write_all(&mut &client, &answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// One HTTP/1.1 message (head and Content-Length body) from `reader`.
fn read_message(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
        message.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    message.extend(body);
    Some(message)
}

fn forward(master: &str, request: &[u8]) -> Option<Vec<u8>> {
    let mut upstream = std::net::TcpStream::connect(master.trim_start_matches("http://")).ok()?;
    std::io::Write::write_all(&mut upstream, request).ok()?;
    read_message(&mut BufReader::new(upstream))
}

#[test]
fn a_lost_complete_answer_is_asked_again_and_the_id_is_printed() {
    let mut cluster = TestCluster::start("lostcomplete", 3, 2);
    let input = cluster.dir.path().join("in.bin");
    let data = pattern(31, 70_000);
    std::fs::write(&input, &data).unwrap();

    // The master commits `complete`, is SIGKILLed before it answers, and comes back.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let proxy = lossy_proxy(cluster.master.url.clone(), false, tx);
    let put = {
        let (proxy, input) = (proxy.clone(), input.clone());
        std::thread::spawn(move || {
            Command::new(BIN).args(["put", input.to_str().unwrap(), "--master", &proxy]).output().unwrap()
        })
    };
    rx.recv_timeout(Duration::from_secs(60)).expect("the client to complete its upload");
    cluster.restart_master();
    let put = put.join().unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();
    check_stored(&cluster, &id, &data);

    // When the answer never comes, the id is printed all the same, with how to check it.
    let (tx, rx) = crossbeam_channel::bounded(16);
    let proxy = lossy_proxy(cluster.master.url.clone(), true, tx);
    let put = Command::new(BIN).args(["put", input.to_str().unwrap(), "--master", &proxy]).output().unwrap();
    let err = String::from_utf8_lossy(&put.stderr);
    assert!(!put.status.success() && err.contains("aether stat"), "{err}");
    assert!(rx.len() >= 3, "complete was asked {} time(s)", rx.len());
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();
    let (status, info) = api_get(&format!("{}/api/objects/{id}", cluster.master.url)).unwrap();
    assert_eq!((status, info["status"].as_str()), (200, Some("complete")), "{info}");
}
