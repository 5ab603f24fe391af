//! `GET /metrics` seen by a real Prometheus parser (the Python `prometheus_client`'s
//! `text_string_to_metric_families`): every server's scrape parses, the numbers move
//! with traffic, labels stay bounded, and the Grafana dashboard in `deploy/grafana/`
//! queries only metrics a scrape exports. Without the parser the tests say so and
//! pass, except under CI (`CI=true`), where a missing parser fails them.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{agent, api_get, have_tool, pattern, upload, wait_until, TestCluster};

/// Parses the text with the real parser and prints every sample as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

fn scrape(base: &str) -> String {
    let response = agent().get(&format!("{base}/metrics")).call().expect("scraping /metrics");
    assert_eq!(response.content_type(), "text/plain", "{base}");
    assert!(response.header("Content-Type").unwrap_or_default().contains("version=0.0.4"));
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text).unwrap();
    text
}

#[track_caller]
fn parse(text: &str) -> Vec<Sample> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_string(),
            labels: s["labels"].as_object().unwrap().clone(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[track_caller]
fn check(samples: &[Sample], name: &str, labels: &[(&str, &str)], want: impl Fn(f64) -> bool, what: &str) {
    let got = value(samples, name, labels);
    assert!(want(got), "{name}{labels:?} = {got}, expected {what}");
}

#[test]
fn every_server_exports_metrics_a_prometheus_parser_reads_and_they_move() {
    if !have_tool("python3", &["-c", "import prometheus_client.parser"], "pip install prometheus-client") {
        return;
    }
    let cluster = TestCluster::start("metrics", 2, 2);
    let master = &cluster.master.url;
    let before = parse(&scrape(master));
    check(&before, "aether_master_objects", &[], |v| v == 0.0, "no objects yet");
    check(&before, "aether_master_nodes", &[("state", "alive")], |v| v == 2.0, "2 alive nodes");
    let init = [("endpoint", "InitUpload"), ("status", "200")];
    check(&before, "aether_http_requests_total", &init, |v| v == 0.0, "no upload yet");

    let sizes = [1000usize, 200_000, 3 << 20];
    for (i, size) in sizes.iter().enumerate() {
        upload(master, &pattern(i as u64, *size));
    }
    let total: usize = sizes.iter().sum();
    // A raw path never becomes a label: this one is counted as `unmatched`.
    let _ = agent().get(&format!("{master}/no/such/thing-{}", std::process::id())).call();

    // State gauges come from a snapshot at most a second old.
    let mut after = Vec::new();
    wait_until("the master's gauges to count 3 objects", Duration::from_secs(10), || {
        after = parse(&scrape(master));
        value(&after, "aether_master_objects", &[]) == 3.0
    });
    check(&after, "aether_http_requests_total", &init, |v| v == 3.0, "3 placements");
    let complete = [("endpoint", "CompleteUpload"), ("status", "200")];
    check(&after, "aether_http_requests_total", &complete, |v| v == 3.0, "3 completions");
    check(
        &after,
        "aether_http_requests_total",
        &[("endpoint", "unmatched"), ("status", "404")],
        |v| v >= 1.0,
        "the stray request",
    );
    check(
        &after,
        "aether_http_request_duration_seconds_count",
        &[("endpoint", "InitUpload")],
        |v| v == 3.0,
        "3 timings",
    );
    check(&after, "aether_master_objects", &[], |v| v == 3.0, "3 objects");
    check(&after, "aether_master_object_bytes", &[], |v| v == total as f64, "their bytes");
    check(&after, "aether_master_under_replicated_objects", &[], |v| v == 0.0, "all fully replicated");
    check(&after, "aether_master_nodes", &[("state", "dead")], |v| v == 0.0, "no dead node");
    check(&after, "aether_master_db_commit_batch_size_count", &[], |v| v >= 3.0, "group commits recorded");
    check(&after, "aether_master_repairs_done_total", &[], |v| v == 0.0, "nothing to repair");
    check(&after, "aether_build_info", &[("server", "master")], |v| v == 1.0, "the build info");
    // Scrapes are routine traffic: not logged at the default level.
    assert!(!cluster.master.log_text().contains("GET /metrics"), "{}", cluster.master.log_text());
    let endpoints: BTreeSet<&str> =
        after.iter().filter_map(|s| s.labels.get("endpoint").and_then(Value::as_str)).collect();
    assert!(endpoints.iter().all(|e| !e.contains('/')), "raw paths as labels: {endpoints:?}");

    for node in &cluster.datanodes {
        let samples = parse(&scrape(&node.url));
        let put = [("endpoint", "PutObject"), ("status", "201")];
        // Every upload's chain went through both nodes.
        check(&samples, "aether_http_requests_total", &put, |v| v == 3.0, "3 stored PUTs");
        check(
            &samples,
            "aether_http_received_bytes_total",
            &[("endpoint", "PutObject")],
            |v| v == total as f64,
            "the bytes in",
        );
        check(&samples, "aether_datanode_objects", &[], |v| v == 3.0, "3 objects");
        check(&samples, "aether_datanode_fsync_duration_seconds_count", &[], |v| v == 3.0, "3 fsyncs");
        check(&samples, "aether_datanode_disk_capacity_bytes", &[], |v| v > 0.0, "a disk size");
        check(&samples, "aether_datanode_disk_free_bytes", &[], |v| v > 0.0, "free space");
        check(&samples, "aether_datanode_disk_state", &[("state", "ok")], |v| v == 1.0, "a healthy disk");
        check(&samples, "aether_datanode_disk_state", &[("state", "failed")], |v| v == 0.0, "a healthy disk");
        check(&samples, "aether_datanode_chain_failures_total", &[], |v| v == 0.0, "no broken chain");
        check(&samples, "aether_build_info", &[("server", "datanode")], |v| v == 1.0, "the build info");
    }
}

/// Scrapes `base` until the sample `name` satisfies `want`, a few times a second, for
/// up to a minute; returns that scrape.
#[track_caller]
fn wait_for(base: &str, name: &str, labels: &[(&str, &str)], want: impl Fn(f64) -> bool, what: &str) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = parse(&scrape(base));
        if want(value(&samples, name, labels)) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{base}: {name}{labels:?} never became {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn scrub_corruption_and_repair_show_in_the_metrics() {
    if !have_tool("python3", &["-c", "import prometheus_client.parser"], "pip install prometheus-client") {
        return;
    }
    let datanode = ["--heartbeat-interval", "0.2", "--scrub-pause", "0.5"];
    let cluster = TestCluster::start_with("metrics-scrub", 3, &["--replication", "2"], &datanode);
    let master = &cluster.master.url;
    let id = upload(master, &pattern(5, 200_000));
    let (_, info) = api_get(&format!("{master}/api/objects/{id}")).unwrap();
    let victim = info["replica_nodes"][0]["node"].as_str().unwrap().to_string();
    let address = info["replica_nodes"][0]["address"].as_str().unwrap().to_string();
    crate::cluster::flip_stored_byte(&cluster, &victim, &id, 1234);

    let samples = wait_for(&address, "aether_datanode_scrub_corruptions_total", &[], |v| v == 1.0, "1");
    check(&samples, "aether_datanode_scrub_pass_objects", &[], |v| v <= 1.0, "at most the one object");
    wait_for(&address, "aether_datanode_scrub_passes_total", &[], |v| v >= 1.0, "a finished pass");
    let samples = wait_for(master, "aether_master_repairs_done_total", &[], |v| v >= 1.0, "a repair");
    check(&samples, "aether_master_repairs_failed_total", &[], |v| v == 0.0, "no failed repair");
    wait_for(master, "aether_master_under_replicated_objects", &[], |v| v == 0.0, "0 again");
}

/// Every `aether_*` name a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("aether_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_a_scrape_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/aetherstore.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has {} queries", exprs.len());
    if !have_tool("python3", &["-c", "import prometheus_client.parser"], "pip install prometheus-client") {
        return;
    }
    let cluster = TestCluster::start("grafana", 1, 1);
    upload(&cluster.master.url, &pattern(7, 5000));
    let mut exported = BTreeSet::new();
    for base in [&cluster.master.url, &cluster.datanodes[0].url] {
        // Twice: the second scrape counts the first.
        scrape(base);
        exported.extend(parse(&scrape(base)).into_iter().map(|s| s.name));
    }
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(exported.contains(&name), "the dashboard queries {name} ({expr}), which no scrape exports");
        }
    }
}
