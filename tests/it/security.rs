//! What a client without the cluster token cannot do: make a datanode connect to an
//! address of its choosing (and so learn the token), forward along a chain the master did
//! not sign, or delete an object; and how long a chain waits on a hop that never answers.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aetherstore::proto::ChainSignature;
use serde_json::{json, Value};

use crate::cluster::{agent, api_get, get_bytes, raw_request, request, upload, TestCluster, BIN};

const TOKEN: &str = "s3cret-cluster-token";

/// A listener on loopback that records every connection made to it and what arrived on
/// it, and then hangs up.
struct Attacker {
    url: String,
    heard: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Attacker {
    fn start() -> Attacker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (heard, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (sink, stopped) = (Arc::clone(&heard), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                        let mut bytes = vec![0u8; 64 << 10];
                        let n = stream.read(&mut bytes).unwrap_or(0);
                        sink.lock().unwrap().push(bytes[..n].to_vec());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Attacker { url, heard, stop, thread: Some(thread) }
    }

    /// Asserts that nothing connected, after a moment for a late connection to show.
    #[track_caller]
    fn assert_heard_nothing(&self) {
        std::thread::sleep(Duration::from_millis(300));
        let heard = self.heard.lock().unwrap();
        let text: Vec<String> = heard.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert!(!text.iter().any(|t| t.contains(TOKEN)), "the cluster token reached the attacker: {text:?}");
        assert!(heard.is_empty(), "a datanode connected to the attacker's address: {text:?}");
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// PUTs `body` to `node` with the given extra headers; returns the status and JSON body.
fn put(node: &str, id: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut put = agent().put(&format!("{node}/objects/{id}"));
    for (name, value) in headers {
        put = put.set(name, value);
    }
    let response = match put.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("PUT {node}: {e}"),
    };
    (response.status(), response.into_json().unwrap_or(Value::Null))
}

fn placement(master: &str, size: usize) -> (String, Vec<String>, Option<String>) {
    let body = json!({"size": size}).to_string();
    let (status, placement) = request("POST", &format!("{master}/api/upload/init"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 200, "{placement}");
    let nodes = serde_json::from_value(placement["nodes"].clone()).unwrap();
    let signature = placement["signature"].as_str().map(str::to_string);
    (placement["objectid"].as_str().unwrap().to_string(), nodes, signature)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token_cluster(name: &str, n: usize) -> TestCluster {
    TestCluster::start_with(name, n, &["--replication", "2", "--cluster-token", TOKEN], &["--cluster-token", TOKEN])
}

#[test]
fn a_chain_naming_a_stranger_is_refused_without_contacting_it_with_a_token() {
    let cluster = token_cluster("sec-token-chain", 2);
    let attacker = Attacker::start();
    let (id, nodes, signature) = placement(&cluster.master.url, 5);
    let signature = signature.expect("a cluster with a token signs its placements");
    let first = &nodes[0];
    let attacker_url = attacker.url.clone();
    let chain = format!("{attacker_url},{}", nodes[1]);

    // No signature at all.
    let (status, body) = put(first, &id, &[("X-Aether-Chain", &attacker_url)], b"hello");
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("X-Aether-Chain-Signature"), "{body}");

    // The master's real signature, with the attacker put in the chain.
    let (status, body) =
        put(first, &id, &[("X-Aether-Chain", &chain), ("X-Aether-Chain-Signature", &signature)], b"hello");
    assert_eq!(status, 403, "{body}");

    // The master's real signature, edited to name the attacker.
    let tampered = signature.replace(&nodes[1], &attacker_url);
    assert_ne!(tampered, signature);
    let (status, body) =
        put(first, &id, &[("X-Aether-Chain", &attacker_url), ("X-Aether-Chain-Signature", &tampered)], b"hello");
    assert_eq!(status, 403, "{body}");

    // Signed with another key, naming the attacker.
    let forged =
        ChainSignature::sign("guessed-token", &id, std::slice::from_ref(&attacker_url), now() + 600).to_string();
    let (status, body) =
        put(first, &id, &[("X-Aether-Chain", &attacker_url), ("X-Aether-Chain-Signature", &forged)], b"hello");
    assert_eq!(status, 403, "{body}");

    // The right key, but expired; and the right key for another object.
    let real = vec![nodes[1].clone()];
    let expired = ChainSignature::sign(TOKEN, &id, &real, now() - 5).to_string();
    let (status, body) =
        put(first, &id, &[("X-Aether-Chain", &nodes[1]), ("X-Aether-Chain-Signature", &expired)], b"hello");
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("expired"), "{body}");
    let (other, _, other_signature) = placement(&cluster.master.url, 5);
    assert_ne!(other, id);
    let (status, body) = put(
        first,
        &id,
        &[("X-Aether-Chain", &nodes[1]), ("X-Aether-Chain-Signature", &other_signature.unwrap())],
        b"hello",
    );
    assert_eq!(status, 403, "{body}");
    attacker.assert_heard_nothing();
    assert_eq!(get_bytes(&format!("{first}/objects/{id}")), Err(404), "a refused upload stores nothing");

    // The placement as the master signed it goes through.
    let (status, body) =
        put(first, &id, &[("X-Aether-Chain", &nodes[1]), ("X-Aether-Chain-Signature", &signature)], b"hello");
    assert_eq!(status, 201, "{body}");
    assert!(body["replicas"].as_array().unwrap().iter().all(|r| r["status"] == 201), "{body}");

    // The master's own repair orders are held to the same rule.
    let order = json!({"target": attacker_url, "objects": [id]}).to_string();
    let response =
        agent().post(&format!("{first}/internal/replicate")).set("X-Aether-Token", TOKEN).send_bytes(order.as_bytes());
    assert!(matches!(response, Err(ureq::Error::Status(403, _))), "{response:?}");
    attacker.assert_heard_nothing();
}

#[test]
fn a_chain_naming_a_stranger_is_refused_without_contacting_it_in_an_open_cluster() {
    let cluster = TestCluster::start("sec-open-chain", 2, 2);
    let attacker = Attacker::start();
    let (id, nodes, signature) = placement(&cluster.master.url, 5);
    assert_eq!(signature, None, "an open cluster has no key to sign with");
    for size in [5, 1000] {
        let body = vec![7u8; size];
        let (status, answer) = put(&nodes[0], &id, &[("X-Aether-Chain", &attacker.url)], &body);
        assert_eq!(status, 403, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("not a datanode registered"), "{answer}");
    }
    attacker.assert_heard_nothing();
    // Chains of registered nodes, and plain uploads, work as before.
    let id = upload(&cluster.master.url, b"still chained");
    assert_eq!(get_bytes(&format!("{}/objects/{id}", nodes[1])).unwrap(), b"still chained");
}

#[test]
fn deleting_needs_the_token_when_the_cluster_has_one() {
    let cluster = token_cluster("sec-delete", 2);
    let m = &cluster.master.url;
    let id = upload(m, b"keep me");
    let (status, body) = raw_request(m, "DELETE", &format!("/api/objects/{id}"), None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("X-Aether-Token"), "{body}");
    assert_eq!(api_get(&format!("{m}/api/objects/{id}")).unwrap().0, 200, "the object is still there");

    let rm = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["rm", &id]).env("AETHER_MASTER", m).env_remove("AETHER_CLUSTER_TOKEN").stdin(Stdio::null());
        if let Some(token) = token {
            command.env("AETHER_CLUSTER_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = rm(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    let deleted = rm(Some(TOKEN));
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert_eq!(api_get(&format!("{m}/api/objects/{id}")).unwrap().0, 404);
}

#[test]
fn a_hop_that_accepts_but_never_answers_fails_within_the_hop_timeout() {
    let cluster = TestCluster::start_with("sec-hop", 1, &["--replication", "1"], &["--hop-timeout", "1"]);
    let m = &cluster.master.url;
    // A "datanode" that takes connections and never says a word, registered like a node.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    stalled.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let acceptor = std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            match stalled.accept() {
                Ok((stream, _)) => holder.lock().unwrap().push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let register = json!({"id": "stalled", "address": stalled_url}).to_string();
    let (status, body) = request("POST", &format!("{m}/api/node/register"), Some(register.as_bytes())).unwrap();
    assert_eq!(status, 200, "{body}");
    let first = &cluster.datanodes[0].url;
    // A small upload goes through the pooled agent, a large one over its own connection.
    for size in [1000, 100_000, 3 << 20] {
        let id = aetherstore::proto::ObjectId::new_random().to_string();
        let started = Instant::now();
        let (status, body) = put(first, &id, &[("X-Aether-Chain", &stalled_url)], &vec![1u8; size]);
        let took = started.elapsed();
        assert_eq!(status, 201, "{body}");
        let replicas = body["replicas"].as_array().unwrap();
        assert_eq!(replicas[0]["status"], 201, "{body}");
        assert_eq!(replicas[1]["node"], stalled_url.as_str(), "{body}");
        assert_eq!(replicas[1]["status"], 504, "{body}");
        assert!(took < Duration::from_secs(15), "{size} bytes: the chain waited {took:?} on a stalled hop");
    }
    assert!(!held.lock().unwrap().is_empty(), "the stalled node was contacted");
    stop.store(true, Ordering::Relaxed);
    acceptor.join().unwrap();
}

/// A chain that broke part-way is retried with the nodes it never reached and their
/// replacements: `replace` signs them together (`keep`), and only registered nodes.
#[test]
fn replace_signs_the_kept_nodes_with_the_new_ones() {
    let cluster = TestCluster::start_with(
        "sec-replace-keep",
        4,
        &["--replication", "3", "--cluster-token", TOKEN],
        &["--cluster-token", TOKEN],
    );
    let master = &cluster.master.url;
    let (id, nodes, _) = placement(master, 5);
    let (failed, keep) = (&nodes[0], &nodes[1..]);
    let ask = |keep: &[String]| {
        let body = json!({"objectid": id, "failed": [failed], "keep": keep, "count": 1}).to_string();
        request("POST", &format!("{master}/api/upload/replace"), Some(body.as_bytes())).unwrap()
    };

    let attacker = Attacker::start();
    let (status, body) = ask(std::slice::from_ref(&attacker.url));
    assert_eq!(status, 400, "a stranger in keep must not be signed: {body}");

    let (status, more) = ask(keep);
    assert_eq!(status, 200, "{more}");
    let new: Vec<String> = serde_json::from_value(more["nodes"].clone()).unwrap();
    assert_eq!(new.len(), 1, "{more}");
    assert!(!nodes.contains(&new[0]), "{more}");
    let signature = more["signature"].as_str().unwrap();
    let chain = format!("{},{}", keep[1], new[0]);
    let headers = [("X-Aether-Chain", chain.as_str()), ("X-Aether-Chain-Signature", signature)];
    let (status, body) = put(&keep[0], &id, &headers, b"hello");
    assert_eq!(status, 201, "{body}");
    let stored: Vec<u64> = body["replicas"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(stored, [201, 201, 201], "{body}");
    attacker.assert_heard_nothing();
}
