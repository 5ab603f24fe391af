//! What survives a crash: datanodes killed with SIGKILL in the middle of uploads, a
//! master killed and restarted, and a 1 GiB object streamed with little memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::cluster::{
    agent, api_get, get_bytes, pattern, put_bytes, request, upload, wait_until, PatternReader, Proc, TempDir,
    TestCluster,
};

fn start_datanode(dir: &std::path::Path) -> Proc {
    Proc::start("dn", &["datanode", "--listen", "127.0.0.1:0", "--data", dir.to_str().unwrap()])
}

#[test]
fn sigkill_mid_upload_never_leaves_a_partial_object() {
    let dir = TempDir::new("crash");
    let data = dir.path().join("d");
    let mut node = start_datanode(&data);

    // A finished object, acknowledged with 201 before the crash.
    let kept = "11111111-2222-4333-8444-555555555555";
    let kept_bytes = pattern(5, 5 << 20);
    assert_eq!(put_bytes(&format!("{}/objects/{kept}", node.url), &kept_bytes), 201);

    // Uploads cut off by the crash at different points: headers only, mid-body, and
    // every byte sent but no answer yet read.
    let torn = [
        ("aaaaaaaa-0000-4000-8000-000000000001", 0usize),
        ("aaaaaaaa-0000-4000-8000-000000000002", 20 << 20),
        ("aaaaaaaa-0000-4000-8000-000000000003", 64 << 20),
    ];
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut streams = Vec::new();
    for (id, sent) in torn {
        let mut stream = TcpStream::connect(&addr).unwrap();
        write!(stream, "PUT /objects/{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", 64 << 20).unwrap();
        let mut body = PatternReader { seed: 9, remaining: sent as u64 };
        std::io::copy(&mut body, &mut stream).unwrap();
        streams.push(stream);
    }
    // The mid-body uploads have reached the disk as temporary files.
    wait_until("partial uploads on disk", Duration::from_secs(20), || {
        std::fs::read_dir(data.join("tmp")).map(|d| d.count() >= 2).unwrap_or(false)
    });
    node.kill();
    drop(streams);

    let node = start_datanode(&data);
    node.wait_for_log("removed");
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    for (id, _) in torn {
        assert_eq!(get_bytes(&format!("{}/objects/{id}", node.url)), Err(404), "{id} was served");
    }
    assert!(get_bytes(&format!("{}/objects/{kept}", node.url)).unwrap() == kept_bytes);
}

#[test]
fn master_restart_keeps_all_metadata() {
    let mut cluster = TestCluster::start("restart", 3, 2);
    let m = cluster.master.url.clone();
    let post = |url: &str, body: serde_json::Value| request("POST", url, Some(body.to_string().as_bytes())).unwrap();
    let mut completed = Vec::new();
    for i in 0..20u64 {
        let id = upload(&m, &pattern(i, i as usize));
        let (_, object) = api_get(&format!("{m}/api/objects/{id}")).unwrap();
        completed.push((id, i, object["replicas"].clone()));
    }
    let (_, pending) = post(&format!("{m}/api/upload/init"), json!({"size": 10}));
    let pending_nodes = pending["nodes"].clone();
    let pending = pending["objectid"].as_str().unwrap().to_string();
    let (_, nodes_before) = api_get(&format!("{m}/api/nodes")).unwrap();

    cluster.restart_master();
    let m = cluster.master.url.clone();
    for (id, size, nodes) in &completed {
        let (status, object) = api_get(&format!("{m}/api/objects/{id}")).unwrap();
        assert_eq!((status, object["size"].as_u64()), (200, Some(*size)));
        let mut want: Vec<String> = serde_json::from_value(nodes.clone()).unwrap();
        let mut got: Vec<String> = serde_json::from_value(object["replicas"].clone()).unwrap();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }
    let (_, nodes_after) = api_get(&format!("{m}/api/nodes")).unwrap();
    let ids =
        |v: &serde_json::Value| v["nodes"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&nodes_after), ids(&nodes_before));
    assert_eq!(api_get(&format!("{m}/api/objects/{pending}")).unwrap().0, 404);
    let nodes: Vec<String> = serde_json::from_value(pending_nodes).unwrap();
    for node in &nodes {
        assert_eq!(put_bytes(&format!("{node}/objects/{pending}"), b"late bytes"), 201);
    }
    assert_eq!(post(&format!("{m}/api/upload/complete"), json!({"objectid": pending})).0, 200);
    let (status, object) = api_get(&format!("{m}/api/objects/{pending}")).unwrap();
    assert_eq!((status, object["size"].as_u64()), (200, Some(10)));
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn one_gib_object_streams_through_a_small_datanode() {
    const SIZE: u64 = 1 << 30;
    let dir = TempDir::exclusive("gib");
    let node = start_datanode(&dir.path().join("d"));
    let url = format!("{}/objects/22222222-3333-4444-8555-666666666666", node.url);
    let body = PatternReader { seed: 77, remaining: SIZE };
    let response = agent().put(&url).set("Content-Length", &SIZE.to_string()).send(body).unwrap();
    assert_eq!(response.status(), 201);

    let mut served = agent().get(&url).call().unwrap().into_reader();
    let mut expected = PatternReader { seed: 77, remaining: SIZE };
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut total = 0u64;
    loop {
        let n = served.read(&mut a).unwrap();
        if n == 0 {
            break;
        }
        expected.read_exact(&mut b[..n]).unwrap();
        assert!(a[..n] == b[..n], "byte mismatch near offset {total}");
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    let peak = peak_rss_kib(node.pid());
    eprintln!("datanode peak RSS during 1 GiB upload and download: {} MiB", peak / 1024);
    assert!(peak < 100 * 1024, "datanode peak RSS {peak} KiB");
}
