//! `aether bench` against a small cluster for about a second per workload, so the load
//! generator cannot rot: its JSON report must have sane figures and no errors.

use serde_json::Value;

use crate::cluster::TestCluster;

#[track_caller]
fn bench(cluster: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = cluster.aether(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "aether {all:?} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("aether {all:?} printed no JSON ({e}): {stdout}"))
}

#[track_caller]
fn check_sane(report: &Value, workload: &str) {
    assert_eq!(report["workload"], workload, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["error_samples"].as_array().unwrap().is_empty(), "{report}");
    let ops = report["ops"].as_u64().unwrap();
    assert!(ops > 0, "{report}");
    let seconds = report["duration_secs"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < 30.0, "{report}");
    let rate = report["ops_per_sec"].as_f64().unwrap();
    assert!((rate - ops as f64 / seconds).abs() < 0.01 * rate + 1e-9, "{report}");
    let latency = &report["latency_ms"];
    let [p50, p90, p99, max] = ["p50", "p90", "p99", "max"].map(|p| latency[p].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{report}");
}

#[test]
fn bench_put_get_mixed_and_lookup_report_sane_json() {
    let cluster = TestCluster::start("bench", 2, 2);
    let put = bench(&cluster, &["put", "--duration", "1", "--threads", "2", "--size", "4K", "--replication", "2"]);
    check_sane(&put, "put");
    assert!(put["duration_secs"].as_f64().unwrap() >= 1.0, "ran for its --duration: {put}");
    assert_eq!((put["size"].as_u64(), put["replication"].as_u64()), (Some(4096), Some(2)));
    let mb = put["mb_per_sec"].as_f64().unwrap();
    assert!((mb - put["ops_per_sec"].as_f64().unwrap() * 4096.0 / 1e6).abs() < 1e-6, "{put}");

    let get = bench(&cluster, &["get", "--duration", "1", "--threads", "2", "--size", "10000", "--working-set", "8"]);
    check_sane(&get, "get");

    let mixed = bench(&cluster, &["mixed", "--duration", "1", "--threads", "2", "--working-set", "4"]);
    check_sane(&mixed, "mixed");
    let parts = mixed["put"]["ops"].as_u64().unwrap() + mixed["get"]["ops"].as_u64().unwrap();
    assert_eq!(parts, mixed["ops"].as_u64().unwrap(), "{mixed}");

    let count = bench(&cluster, &["lookup", "--count", "50", "--threads", "2", "--working-set", "4"]);
    assert_eq!(count["ops"], 50, "{count}");
    check_sane(&count, "lookup");
}
