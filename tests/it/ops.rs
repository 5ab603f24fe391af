//! What operators and their scripts use: `aether health` (exit code and reason),
//! `--json` output with the API's own field names, shell completions, and `bench
//! populate` through the master's offline function.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{api_get, upload, wait_until, Proc, TempDir, TestCluster, BIN};

fn aether(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("AETHER_MASTER").stdin(Stdio::null()).output().expect("running aether")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `aether ARGS` must fail with exit code 1 and one line on standard error that contains
/// `reason`; returns that line.
#[track_caller]
fn check_unhealthy(args: &[&str], reason: &str) -> String {
    let output = aether(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "aether {args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(reason), "aether {args:?} should say {reason:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    stderr
}

/// A server on loopback that answers every connection with `response` (or never, when
/// it is `None`), for as long as the test runs.
fn fake_server(response: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            match response {
                Some(response) => {
                    let _ = stream.write_all(response.as_bytes());
                }
                None => held.push(stream),
            }
        }
    });
    url
}

#[test]
fn health_exits_zero_when_ok_and_one_with_a_reason_otherwise() {
    let cluster = TestCluster::start("ops-health", 1, 1);
    for url in [&cluster.master.url, &cluster.datanodes[0].url] {
        let output = aether(&["health", url]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).starts_with(&format!("ok {url}/health (aether ")), "{}", text(&output.stdout));
        // --json: the server's own answer, on one line.
        let output = aether(&["health", "--json", url]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let stdout = text(&output.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let answer: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(answer, api_get(&format!("{url}/health")).unwrap().1);
    }
    // Written without a scheme, or as the health URL itself.
    let address = cluster.master.url.trim_start_matches("http://");
    assert!(aether(&["health", address]).status.success());
    assert!(aether(&["health", &format!("{}/health", cluster.master.url)]).status.success());
    // Without a URL: AETHER_MASTER.
    let output = cluster.aether(&["health"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    // Nothing listens.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    check_unhealthy(&["health", &format!("http://127.0.0.1:{port}")], "cannot connect");
    // Another status: a path where no health endpoint is.
    check_unhealthy(&["health", &format!("{}/api", cluster.master.url)], "404");
    // A 200 whose status is not ok.
    let draining = fake_server(Some(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\nConnection: close\r\n\r\n{\"status\":\"draining\"}",
    ));
    check_unhealthy(&["health", &draining], "status is \"draining\", not \"ok\"");
    // A 200 that is not JSON.
    let garbage = fake_server(Some("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"));
    check_unhealthy(&["health", &garbage], "unexpected answer");
    // A server that never answers: --timeout bounds the wait.
    let silent = fake_server(None);
    let started = Instant::now();
    check_unhealthy(&["health", "--timeout", "0.5", &silent], "timed out");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    check_unhealthy(&["health", "--timeout", "soon", &silent], "not a positive number of seconds");
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap_or_else(|| panic!("an object: {value}")).keys().cloned().collect()
}

#[track_caller]
fn json_of(cluster: &TestCluster, args: &[&str]) -> Value {
    let output = cluster.aether(args);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "aether {args:?}: {}", text(&output.stderr));
    assert_eq!(stdout.lines().count(), 1, "aether {args:?} prints one line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("aether {args:?} printed no JSON ({e}): {stdout}"))
}

#[test]
fn json_output_has_the_fields_of_the_api() {
    let cluster = TestCluster::start("ops-json", 2, 2);
    let id = upload(&cluster.master.url, b"json output");
    let master = &cluster.master.url;

    let stat = json_of(&cluster, &["stat", &id, "--json"]);
    assert_eq!(stat, api_get(&format!("{master}/api/objects/{id}")).unwrap().1);
    assert_eq!(stat["objectid"], id.as_str());
    assert_eq!(stat["replicas"].as_array().unwrap().len(), 2, "{stat}");

    // Nodes: the same fields (the times move between two calls, so not every value).
    let nodes = json_of(&cluster, &["nodes", "--json"]);
    let api = api_get(&format!("{master}/api/nodes")).unwrap().1;
    assert_eq!(keys(&nodes), keys(&api));
    let ids = |v: &Value| v["nodes"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&nodes), ids(&api));
    for (ours, theirs) in nodes["nodes"].as_array().unwrap().iter().zip(api["nodes"].as_array().unwrap()) {
        assert_eq!(keys(ours), keys(theirs));
        for field in ["id", "address", "state", "version"] {
            assert_eq!(ours[field], theirs[field], "{field}");
        }
    }
    assert!(keys(&nodes["nodes"][0]).is_superset(&["id", "address", "state", "replicas"].map(String::from).into()));

    wait_until("both copies counted", Duration::from_secs(30), || {
        api_get(&format!("{master}/api/cluster")).unwrap().1["under_replicated"] == 0
    });
    let status = json_of(&cluster, &["cluster", "--json"]);
    assert_eq!(keys(&status), keys(&api_get(&format!("{master}/api/cluster")).unwrap().1));
    assert_eq!((status["nodes_alive"].as_u64(), status["objects"].as_u64()), (Some(2), Some(1)), "{status}");

    // Errors stay one sentence on standard error, with nothing on standard output.
    let output = cluster.aether(&["stat", "not-an-id", "--json"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

/// What bash offers after `words` (the last one is being completed), with the script of
/// `aether completions bash` loaded.
#[track_caller]
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let array = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
    let program = format!(
        "source '{}'; COMP_WORDS=({array}); COMP_CWORD={}; _aether; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.len() - 1
    );
    let output = Command::new("bash").args(["--norc", "--noprofile", "-c", &program]).output().expect("bash runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

#[test]
fn completions_offer_every_command_and_flag() {
    let dir = TempDir::new("ops-completions");
    let output = aether(&["completions", "bash"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let script = dir.path().join("aether.bash");
    std::fs::write(&script, &output.stdout).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", text(&syntax.stderr));

    // Every command `aether --help` lists, and nothing else.
    let help = text(&aether(&["--help"]).stdout);
    let commands: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert!(commands.len() >= 12, "{commands:?}");
    assert_eq!(bash_completes(&script, &["aether", ""]), commands);
    assert_eq!(bash_completes(&script, &["aether", "st"]), ["stat"]);
    assert_eq!(bash_completes(&script, &["aether", "he"]), ["health"]);
    assert_eq!(bash_completes(&script, &["aether", "nodes", "--"]), ["--master", "--json", "--help"]);
    assert_eq!(bash_completes(&script, &["aether", "get", "-"]), ["-o", "--output", "--master", "--help"]);
    assert_eq!(bash_completes(&script, &["aether", "--master", "x", "health", "--t"]), ["--timeout"]);
    // A flag's value and a positional argument are left to bash's file completion.
    assert!(bash_completes(&script, &["aether", "get", "--master", ""]).is_empty());
    assert!(bash_completes(&script, &["aether", "put", ""]).is_empty());
    // A positional argument that happens to be a command's name is not taken for one.
    assert_eq!(bash_completes(&script, &["aether", "get", "put", "--m"]), ["--master"]);

    for shell in ["zsh", "fish"] {
        let output = aether(&["completions", shell]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let script = text(&output.stdout);
        for command in &commands {
            assert!(script.contains(command.as_str()), "{shell} script lacks {command}");
        }
    }
    // Where those shells are installed (they are not needed to build or test), their own
    // parsers check the scripts, and fish completes from its script.
    let dir_path = dir.path().to_path_buf();
    for (shell, file, check) in [("zsh", "_aether", "-n"), ("fish", "aether.fish", "-n")] {
        if Command::new(shell).arg("-c").arg("exit 0").output().is_err() {
            continue;
        }
        let path = dir_path.join(file);
        std::fs::write(&path, aether(&["completions", shell]).stdout).unwrap();
        let output = Command::new(shell).arg(check).arg(&path).output().unwrap();
        assert!(output.status.success(), "{shell} -n: {}", text(&output.stderr));
        if shell == "fish" {
            let program = format!("source '{}'; complete -C 'aether he'", path.display());
            let output = Command::new("fish").args(["--no-config", "-c", &program]).output().unwrap();
            assert!(text(&output.stdout).starts_with("health\t"), "fish: {}", text(&output.stdout));
        }
    }
    let output = aether(&["completions", "tcsh"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("choose bash, zsh or fish"), "{}", text(&output.stderr));
}

#[test]
fn bench_populate_fills_a_master_through_its_offline_function() {
    let dir = TempDir::new("ops-populate");
    let data = dir.path().join("master");
    let data = data.to_str().unwrap();
    let output = aether(&["bench", "populate", "--data", data, "--objects", "1500", "--replication", "2", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_str(&text(&output.stdout)).unwrap();
    assert_eq!((report["added"].as_u64(), report["replication"].as_u64()), (Some(1500), Some(2)), "{report}");

    let master = Proc::start("master", &["master", "--listen", "127.0.0.1:0", "--data", data]);
    let output = aether(&["cluster", "--json", "--master", &master.url]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let status: Value = serde_json::from_str(&text(&output.stdout)).unwrap();
    assert_eq!(status["objects"], 1500, "{status}");
}

#[test]
fn the_image_health_check_asks_aether_health() {
    let cluster = TestCluster::start("ops-healthcheck", 1, 1);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/docker/healthcheck.sh");
    // The image has aether on its PATH; here it is the binary under test.
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let address = |url: &str| url.trim_start_matches("http://").to_string();
    let master_port = address(&cluster.master.url).rsplit(':').next().unwrap().to_string();
    let dead_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases = [
        (address(&cluster.master.url), true),
        (address(&cluster.datanodes[0].url), true),
        // A wildcard address is asked at 127.0.0.1.
        (format!("0.0.0.0:{master_port}"), true),
        (format!("127.0.0.1:{dead_port}"), false),
    ];
    for (listen, healthy) in cases {
        let output = Command::new("bash")
            .arg(&script)
            .env("AETHER_LISTEN", &listen)
            .env("PATH", &path)
            .output()
            .expect("bash runs");
        assert_eq!(output.status.success(), healthy, "AETHER_LISTEN={listen}: {}", text(&output.stderr));
        if !healthy {
            assert_eq!(output.status.code(), Some(1), "Docker reads 1 as unhealthy");
            assert!(text(&output.stderr).contains("cannot connect"), "{}", text(&output.stderr));
        }
    }
}
