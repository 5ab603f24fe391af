//! `TestCluster` and `Proc`: the real `aether` binary started on free loopback ports
//! with its own temporary directories, killed and cleaned up on `Drop` (its log is
//! printed when the test failed).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aether");

/// Tests share the machine; the one that writes a whole GiB takes it alone, since its
/// writeback makes every other test's fsyncs (and so their deadlines) crawl.
static DISK: RwLock<()> = RwLock::new(());

enum DiskGuard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// A temporary directory removed on drop unless the test failed. It also holds the
/// test's share of the disk.
pub struct TempDir(pub PathBuf, #[allow(dead_code)] DiskGuard);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let guard = DiskGuard::Shared(DISK.read().unwrap_or_else(|e| e.into_inner()));
        TempDir::with_guard(name, guard)
    }

    /// A directory for a test that needs the disk to itself.
    pub fn exclusive(name: &str) -> TempDir {
        let guard = DiskGuard::Exclusive(DISK.write().unwrap_or_else(|e| e.into_inner()));
        TempDir::with_guard(name, guard)
    }

    fn with_guard(name: &str, guard: DiskGuard) -> TempDir {
        let path = std::env::temp_dir().join(format!("aether-it-{name}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path, guard)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One running `aether` server process.
pub struct Proc {
    pub name: String,
    child: Child,
    /// `http://127.0.0.1:PORT` as the server reported it.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `aether ARGS` and waits until it logs the address it listens on.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_with_env(name, args, &[])
    }

    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(BIN);
        command.args(args);
        Proc::spawn(name, command, env)
    }

    /// Starts `program ARGS`, a wrapper that ends by running `aether` (e.g. `unshare`).
    pub fn start_wrapped(name: &str, program: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(program);
        command.args(args);
        Proc::spawn(name, command, &[])
    }

    fn spawn(name: &str, mut command: Command, env: &[(&str, &str)]) -> Proc {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for var in ["AETHER_MASTER", "AETHER_CLUSTER_TOKEN", "AETHER_LISTEN", "AETHER_DATA"] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("starting aether");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split([' ', ',']).next().unwrap_or_default().to_string();
                    let _ = tx.try_send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not start: {}", log.lock().unwrap().join("\n"));
            }
        };
        Proc { name: name.to_string(), child, url: format!("http://{addr}"), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has ended on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, as a power cut would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the log has a line containing `needle`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) {
        wait_until(&format!("{} to log {needle:?}", self.name), Duration::from_secs(20), || {
            self.log.lock().unwrap().iter().any(|l| l.contains(needle))
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Polls `condition` until it holds, failing the test after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A master and datanodes, each its own process with its own directory.
pub struct TestCluster {
    pub dir: TempDir,
    pub master: Proc,
    pub datanodes: Vec<Proc>,
    master_args: Vec<String>,
}

impl TestCluster {
    /// A master with `replication` and `n` datanodes that register themselves.
    pub fn start(name: &str, n: usize, replication: usize) -> TestCluster {
        TestCluster::start_with(name, n, &["--replication", &replication.to_string()], &[])
    }

    pub fn start_with(name: &str, n: usize, master_extra: &[&str], datanode_extra: &[&str]) -> TestCluster {
        let dir = TempDir::new(name);
        let mut master_args: Vec<String> = vec!["master".into(), "--listen".into(), "127.0.0.1:0".into()];
        master_args.push("--data".into());
        master_args.push(dir.path().join("master").display().to_string());
        master_args.extend(master_extra.iter().map(|s| s.to_string()));
        let master = Proc::start("master", &master_args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut cluster = TestCluster { dir, master, datanodes: Vec::new(), master_args };
        for i in 1..=n {
            cluster.add_datanode(&format!("datanode-{i}"), datanode_extra);
        }
        let want = n;
        let url = cluster.master.url.clone();
        wait_until("datanodes to register", Duration::from_secs(60), || {
            api_get(&format!("{url}/api/nodes"))
                .map(|(_, body)| body["nodes"].as_array().map_or(0, |a| a.len()) >= want)
                .unwrap_or(false)
        });
        cluster
    }

    pub fn datanode_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    pub fn datanode_args(&self, id: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> =
            ["datanode", "--listen", "127.0.0.1:0", "--node-id", id, "--master", &self.master.url]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.push("--data".into());
        args.push(self.datanode_dir(id).display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    pub fn add_datanode(&mut self, id: &str, extra: &[&str]) -> usize {
        let args = self.datanode_args(id, extra);
        let node = Proc::start(id, &args.iter().map(String::as_str).collect::<Vec<_>>());
        self.datanodes.push(node);
        self.datanodes.len() - 1
    }

    /// Kills the master with SIGKILL and starts it again on the same data and port, as
    /// a crashed service restarted by systemd would be.
    pub fn restart_master(&mut self) {
        self.master.kill();
        let address = self.master.url.trim_start_matches("http://").to_string();
        let args: Vec<String> =
            self.master_args.iter().map(|a| if a == "127.0.0.1:0" { address.clone() } else { a.clone() }).collect();
        self.master = Proc::start("master", &args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    pub fn aether(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("AETHER_MASTER", &self.master.url)
            .stdin(Stdio::null())
            .output()
            .expect("running aether")
    }
}

/// `GET url` → (status, JSON body or Null).
pub fn api_get(url: &str) -> Result<(u16, serde_json::Value), String> {
    request("GET", url, None)
}

/// Sends a request with an optional raw body and returns the status and the JSON body
/// (Null when the body is not JSON).
pub fn request(method: &str, url: &str, body: Option<&[u8]>) -> Result<(u16, serde_json::Value), String> {
    let agent = agent();
    let req = agent.request(method, url);
    let result = match body {
        Some(bytes) => req.set("Content-Type", "application/json").send_bytes(bytes),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = response.status();
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

/// PUT raw bytes; returns the status.
pub fn put_bytes(url: &str, bytes: &[u8]) -> u16 {
    match agent().put(url).send_bytes(bytes) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("PUT {url}: {e}"),
    }
}

/// GET raw bytes, or the error status.
pub fn get_bytes(url: &str) -> Result<Vec<u8>, u16> {
    match agent().get(url).call() {
        Ok(r) => {
            let mut out = Vec::new();
            r.into_reader().read_to_end(&mut out).unwrap();
            Ok(out)
        }
        Err(ureq::Error::Status(code, _)) => Err(code),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Deterministic pseudo-random bytes, so large bodies need not be kept in memory.
pub struct PatternReader {
    pub seed: u64,
    pub remaining: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.remaining as usize);
        for byte in &mut buf[..n] {
            // xorshift64: cheap, and never the same byte pattern twice in a row.
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            *byte = self.seed as u8;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    PatternReader { seed: seed | 1, remaining: len as u64 }.read_to_end(&mut out).unwrap();
    out
}

/// Sends one request over a fresh socket exactly as written (no URL normalisation, so
/// `..` reaches the server) and returns the status and the JSON body (Null if none).
pub fn raw_request(base: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, serde_json::Value) {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default();
    (status, json)
}

/// Uploads `bytes` the way `aether put` does, over plain HTTP: placement, one chained
/// PUT through every placed node, complete. Returns the object id.
#[track_caller]
pub fn upload(master: &str, bytes: &[u8]) -> String {
    let body = serde_json::json!({"size": bytes.len()}).to_string();
    let (status, placement) = request("POST", &format!("{master}/api/upload/init"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 200, "{placement}");
    let id = placement["objectid"].as_str().unwrap().to_string();
    let nodes: Vec<String> = serde_json::from_value(placement["nodes"].clone()).unwrap();
    let mut put = agent().put(&format!("{}/objects/{id}", nodes[0])).set("X-Aether-Chain", &nodes[1..].join(","));
    if let Some(signature) = placement["signature"].as_str() {
        put = put.set("X-Aether-Chain-Signature", signature);
    }
    let response = put.send_bytes(bytes);
    let stored: serde_json::Value = response.unwrap().into_json().unwrap();
    assert!(stored["replicas"].as_array().unwrap().iter().all(|r| r["status"] == 201), "{stored}");
    let body = serde_json::json!({"objectid": id}).to_string();
    let (status, answer) = request("POST", &format!("{master}/api/upload/complete"), Some(body.as_bytes())).unwrap();
    assert_eq!(status, 200, "{answer}");
    id
}

/// Whether `program args` runs, for tests that drive a tool beside cargo (boto3, aws-cli,
/// Chromium, the Prometheus parser): when it does not, fails under CI (`.ci/run` installs
/// them all) and says so otherwise.
pub fn have_tool(program: &str, args: &[&str], install: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} {args:?} failed: CI must have it ({install}; .ci/run installs it)"
        );
        eprintln!("!!! SKIPPED: {program} is not available here ({install}); CI runs this test !!!");
    }
    ok
}

/// Where a datanode keeps an object's file, when the object is a file of its own.
pub fn object_file(cluster: &TestCluster, node: &str, id: &str) -> PathBuf {
    cluster.datanode_dir(node).join("objects").join(&id[0..2]).join(&id[2..4]).join(id)
}

/// Flips byte `at` of a datanode's copy of an object, wherever it is kept: in its file,
/// or in its record in a volume (found by the record header's magic and the object's id).
pub fn flip_stored_byte(cluster: &TestCluster, node: &str, id: &str, at: usize) {
    use std::os::unix::fs::FileExt;
    let file = object_file(cluster, node, id);
    let (path, offset) = if file.exists() {
        (file, at)
    } else {
        let key = aetherstore::proto::ObjectId::parse(id).unwrap().to_bytes();
        let volumes = cluster.datanode_dir(node).join("volumes");
        let found = std::fs::read_dir(&volumes).unwrap().find_map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).ok()?;
            let header = bytes.windows(24).position(|w| &w[0..4] == b"AREC" && w[8..24] == key)?;
            Some((path, header + 48 + at))
        });
        found.unwrap_or_else(|| panic!("{node} holds no copy of {id}"))
    };
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset as u64).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], offset as u64).unwrap();
}
