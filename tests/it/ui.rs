//! The master's status page in a real browser: headless Chromium loads it against a live
//! cluster, the test reads the DOM as a person would see it (every node listed alive, a
//! killed one turning `dead`, the event saying so, the refresh script running) and keeps
//! a phone-sized screenshot at `target/ui-screenshot.png`; and, over plain HTTP, that what
//! a node says (its version) reaches the page escaped. Without Chromium the browser test
//! says so and passes, except under CI (`CI=true`), where a missing browser fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{have_tool, pattern, upload, TempDir, TestCluster};

const CHROMIUM: &str = "chromium";

/// Runs headless Chromium with `args` and its own profile, killed after a minute.
fn chromium(profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took over a minute for {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// The node's card as the page shows it: its `data-state`.
fn state_of(dom: &str, node: &str) -> Option<String> {
    let marker = format!("data-node=\"{node}\" data-state=\"");
    let start = dom.find(&marker)? + marker.len();
    Some(dom[start..].split('"').next()?.to_string())
}

#[test]
fn the_status_page_shows_every_node_and_a_killed_one_turns_dead() {
    if !have_tool(CHROMIUM, &["--version"], "apt-get install chromium") {
        return;
    }
    let mut cluster = TestCluster::start_with(
        "ui",
        3,
        &["--replication", "2", "--dead-after", "3"],
        &["--heartbeat-interval", "0.3"],
    );
    upload(&cluster.master.url, &pattern(3, 100_000));
    let profile = TempDir::new("ui-chromium");
    let page = format!("{}/ui", cluster.master.url);
    let nodes = ["datanode-1", "datanode-2", "datanode-3"];

    // Heartbeats bring capacities within a moment of registration.
    let mut dom = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        dom = chromium(profile.path(), &["--dump-dom", &page]);
        if nodes.iter().all(|n| state_of(&dom, n).as_deref() == Some("alive")) && dom.contains("used of") {
            break;
        }
    }
    for node in nodes {
        assert_eq!(state_of(&dom, node).as_deref(), Some("alive"), "{node} on the page:\n{dom}");
    }
    assert!(dom.contains("<strong>Healthy</strong>"), "{dom}");
    assert!(dom.contains("node registered"), "the registrations are recent events:\n{dom}");
    assert!(dom.contains(aetherstore::VERSION), "versions are shown:\n{dom}");

    // The refresh script replaces the content from /ui/fragment and counts its refreshes.
    let refreshed = chromium(profile.path(), &["--virtual-time-budget=5000", "--dump-dom", &page]);
    assert!(refreshed.contains("data-refreshed=\""), "the page did not refresh itself:\n{refreshed}");

    cluster.datanodes[1].kill();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        dom = chromium(profile.path(), &["--dump-dom", &page]);
        if state_of(&dom, "datanode-2").as_deref() == Some("dead") {
            break;
        }
        assert!(Instant::now() < deadline, "datanode-2 never turned dead on the page:\n{dom}");
    }
    assert_eq!(state_of(&dom, "datanode-1").as_deref(), Some("alive"));
    assert!(dom.contains("node died") && dom.contains("node datanode-2 is dead"), "the event is listed:\n{dom}");
    assert!(!dom.contains("<strong>Healthy</strong>"), "{dom}");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(profile.path(), &["--hide-scrollbars", &shot_arg, "--window-size=412,900", &page]);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "no screenshot at {}", shot.display());
    eprintln!("screenshot of the status page: {}", PathBuf::from(&shot).display());
}

#[test]
fn what_a_node_says_reaches_the_page_escaped() {
    // An open cluster: anyone may register a node and say what it runs.
    let cluster = TestCluster::start("ui-escape", 0, 1);
    let hostile = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;
    let body = serde_json::json!({"id": "dn-x", "address": "http://127.0.0.1:9", "version": hostile}).to_string();
    let (status, answer) =
        crate::cluster::request("POST", &format!("{}/api/node/register", cluster.master.url), Some(body.as_bytes()))
            .unwrap();
    assert_eq!(status, 200, "{answer}");
    for path in ["/", "/ui", "/ui/fragment"] {
        let response = crate::cluster::agent().get(&format!("{}{path}", cluster.master.url)).call().unwrap();
        assert_eq!(response.content_type(), "text/html", "{path}");
        let html = response.into_string().unwrap();
        assert!(html.contains("data-node=\"dn-x\" data-state=\"alive\""), "{path}: {html}");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x"), "{path}: {html}");
        assert!(!html.contains("<img") && !html.contains("alert(\"x\")"), "{path}: {html}");
        assert!(html.matches("<script>").count() <= 1, "only the page's own script: {html}");
    }
}
