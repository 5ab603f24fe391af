//! `aether bench`: the load generator and the small measurement tools of the benchmark
//! suite (`bench/run.sh`). Workloads against a running cluster go through the real
//! client path (`Client`): `put`, `get`, `mixed`, and the master-only `init` and
//! `lookup`. `loopback` measures this machine's TCP bandwidth over 127.0.0.1, and
//! `populate` fills a stopped master's database with many objects for scaling runs.
//!
//! Every object a workload writes has deterministic content derived from a seed it
//! remembers, so every read is compared byte for byte (besides the CRC-32C the client
//! verifies): a fast wrong answer counts as an error, never as an operation.
//!
//! Loops are bounded twice: by an operation count and by a time limit.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use aetherstore::client::{self, Client, ClientError};
use aetherstore::master;
use aetherstore::proto::{Checksum, ObjectId};

/// How long a run with an operation count may take at most.
const COUNT_TIME_LIMIT: Duration = Duration::from_secs(600);
/// How long a run without an operation count lasts unless told.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Bytes a default working set of `get` and `mixed` may hold.
const WORKING_SET_BYTES: u64 = 1 << 30;
/// Objects per transaction of `populate`.
const POPULATE_BATCH: u64 = 100_000;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Uploads (`Client::upload`: init, chained PUT, complete).
    Put,
    /// Downloads of a working set uploaded first (`Client::download`), verified.
    Get,
    /// Puts and gets at `put_percent` puts.
    Mixed,
    /// `POST /api/upload/init` alone: a placement, no durable write.
    Init,
    /// `GET /api/objects/{id}` on the master alone.
    Lookup,
    /// TCP bandwidth over 127.0.0.1, no server involved.
    Loopback,
    /// Fills a stopped master's database with objects (offline).
    Populate,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Init => "init",
            Workload::Lookup => "lookup",
            Workload::Loopback => "loopback",
            Workload::Populate => "populate",
        }
    }

    pub fn parse(text: &str) -> Result<Workload, String> {
        Ok(match text {
            "put" => Workload::Put,
            "get" => Workload::Get,
            "mixed" => Workload::Mixed,
            "init" => Workload::Init,
            "lookup" => Workload::Lookup,
            "loopback" => Workload::Loopback,
            "populate" => Workload::Populate,
            _ => {
                return Err(format!(
                    "unknown workload {text:?}: use put, get, mixed, init, lookup, loopback or populate"
                ))
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub workload: Workload,
    pub master: String,
    /// Object size in bytes.
    pub size: u64,
    /// Concurrent clients (threads); streams for `loopback`.
    pub threads: usize,
    /// Operations to run; with `None` the run lasts `duration`.
    pub count: Option<u64>,
    /// How long to run; with a count, the time limit (default 600 s).
    pub duration: Option<Duration>,
    /// Replicas per object; the master's default when `None`.
    pub replication: Option<usize>,
    /// Objects uploaded before a `get`, `mixed` or `lookup` run.
    pub working_set: Option<usize>,
    /// Share of puts in `mixed`, in percent.
    pub put_percent: u32,
    /// `lookup`: look up the objects `populate` created (ids 0..N) instead of uploading.
    pub populated: Option<u64>,
    /// `populate`: the master's data directory (the master must be stopped).
    pub data_dir: Option<PathBuf>,
    /// `populate`: how many objects the database should hold.
    pub objects: Option<u64>,
    /// `populate`: also a key for each object in this new S3 bucket.
    pub bucket: Option<String>,
    pub json: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles of `samples` (nanoseconds), which this sorts.
    fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] as f64 / 1e6
        };
        let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64 / 1e6;
        Latency { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: at(1.0), mean }
    }
}

/// The figures of one kind of operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    /// Object bytes moved per second, in MB (10^6 bytes).
    pub mb_per_sec: f64,
    pub latency_ms: Latency,
}

/// The outcome of a workload against a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub size: u64,
    pub threads: usize,
    pub replication: Option<usize>,
    pub duration_secs: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_ms: Latency,
    /// For `mixed`: puts and gets apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub put: Option<OpStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get: Option<OpStats>,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopbackReport {
    pub workload: Workload,
    pub streams: usize,
    pub duration_secs: f64,
    pub bytes: u64,
    pub mb_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PopulateReport {
    pub workload: Workload,
    pub objects: u64,
    pub added: u64,
    pub replication: usize,
    pub seconds: f64,
    pub objects_per_sec: f64,
    /// With `--bucket`: the bucket, its keys (`populated_key`) and its owner's access key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<PopulatedBucket>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PopulatedBucket {
    pub name: String,
    pub keys: u64,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub seconds: f64,
}

/// Runs a benchmark and returns what to print: a human summary, or JSON.
pub fn run(config: &BenchConfig) -> Result<String, String> {
    if config.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    match config.workload {
        Workload::Loopback => {
            let report = loopback(config.threads, config.duration.unwrap_or(Duration::from_secs(3)))?;
            Ok(if config.json {
                to_json(&report)
            } else {
                format!(
                    "loopback TCP, {} stream(s): {:.0} MB/s ({} bytes in {:.2} s)\n",
                    report.streams, report.mb_per_sec, report.bytes, report.duration_secs
                )
            })
        }
        Workload::Populate => {
            let report = populate(config)?;
            Ok(if config.json {
                to_json(&report)
            } else {
                format!(
                    "populate: {} objects in the database ({} added in {:.1} s, {:.0} objects/s)\n{}",
                    report.objects,
                    report.added,
                    report.seconds,
                    report.objects_per_sec,
                    report.bucket.as_ref().map_or(String::new(), |b| format!(
                        "bucket {}: {} keys in {:.1} s, owned by access key {} secret {}\n",
                        b.name, b.keys, b.seconds, b.access_key_id, b.secret_access_key
                    ))
                )
            })
        }
        _ => {
            let report = run_workload(config)?;
            let text = if config.json { to_json(&report) } else { human(&report) };
            if report.ops == 0 {
                // Print what was learnt, but fail: nothing succeeded.
                return Err(format!("{text}no operation succeeded"));
            }
            Ok(text)
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("reports serialize") + "\n"
}

/// The human-readable summary of a report.
pub fn human(report: &Report) -> String {
    let replication = report.replication.map_or("default".to_string(), |r| r.to_string());
    let mut text = format!(
        "{} {} x {} thread(s), replication {replication}: {} ops in {:.2} s, {} error(s)\n",
        report.workload.name(),
        if report.workload == Workload::Lookup { "objects".to_string() } else { size_text(report.size) },
        report.threads,
        report.ops,
        report.duration_secs,
        report.errors
    );
    let line = |name: &str, s: &OpStats| {
        format!(
            "  {name:<5} {:>10.1} ops/s {:>9.1} MB/s   latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n",
            s.ops_per_sec, s.mb_per_sec, s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99, s.latency_ms.max
        )
    };
    let all = OpStats {
        ops: report.ops,
        errors: report.errors,
        ops_per_sec: report.ops_per_sec,
        mb_per_sec: report.mb_per_sec,
        latency_ms: report.latency_ms,
    };
    text.push_str(&line("all", &all));
    if let Some(put) = &report.put {
        text.push_str(&line("put", put));
    }
    if let Some(get) = &report.get {
        text.push_str(&line("get", get));
    }
    for error in &report.error_samples {
        let _ = writeln!(text, "  error: {error}");
    }
    text
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

// ---- Object content -------------------------------------------------------------

/// The repeating block object content is cut from; its odd length keeps objects from
/// lining up with any power-of-two buffer.
const BLOCK_LEN: usize = (1 << 20) + 13;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = Vec::with_capacity(BLOCK_LEN + 8);
        while bytes.len() < BLOCK_LEN {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes.truncate(BLOCK_LEN);
        bytes
    })
}

/// The content of the object written with `seed`: the seed's 8 bytes, then the block
/// from an offset the seed chooses. Calls `f` with consecutive pieces of bytes
/// `pos..pos + len`.
fn content_pieces(seed: u64, pos: u64, len: usize, f: &mut dyn FnMut(&[u8])) {
    let head = seed.to_le_bytes();
    let (mut pos, mut left) = (pos, len);
    if pos < 8 && left > 0 {
        let take = left.min(8 - pos as usize);
        f(&head[pos as usize..pos as usize + take]);
        pos += take as u64;
        left -= take;
    }
    let block = block();
    let start = (seed % BLOCK_LEN as u64) as usize;
    while left > 0 {
        let at = ((start as u64 + pos) % BLOCK_LEN as u64) as usize;
        let take = left.min(BLOCK_LEN - at);
        f(&block[at..at + take]);
        pos += take as u64;
        left -= take;
    }
}

/// Reads the content of an object: `len` bytes from `seed`.
struct ContentReader {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        let mut filled = 0;
        content_pieces(self.seed, self.pos, n, &mut |piece| {
            buf[filled..filled + piece.len()].copy_from_slice(piece);
            filled += piece.len();
        });
        self.pos += n as u64;
        Ok(n)
    }
}

/// Compares what is written to it with the content of an object.
struct ContentCheck {
    seed: u64,
    pos: u64,
    first_difference: Option<u64>,
}

impl Write for ContentCheck {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        let start = self.pos;
        let mut differs = None;
        content_pieces(self.seed, self.pos, buf.len(), &mut |piece| {
            if differs.is_none() && buf[at..at + piece.len()] != *piece {
                let within = buf[at..].iter().zip(piece).position(|(a, b)| a != b).unwrap_or(0);
                differs = Some(start + (at + within) as u64);
            }
            at += piece.len();
        });
        if self.first_difference.is_none() {
            self.first_difference = differs;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An object this run wrote, and how to check it.
#[derive(Debug, Clone, Copy)]
struct Written {
    id: ObjectId,
    seed: u64,
    size: u64,
}

fn upload(client: &Client, size: u64, replication: Option<usize>) -> Result<Written, String> {
    let seed: u64 = rand::random();
    let mut open = || -> io::Result<Box<dyn Read + Send>> { Ok(Box::new(ContentReader { seed, pos: 0, len: size })) };
    let uploaded = client.upload(size, replication, &mut open).map_err(|e| e.to_string())?;
    let good = uploaded.replicas.iter().filter(|r| r.status == 201).count();
    if let Some(wanted) = replication.filter(|&wanted| good < wanted) {
        return Err(format!("upload {} completed with {good} of {wanted} replicas", uploaded.id));
    }
    Ok(Written { id: uploaded.id, seed, size })
}

fn download(client: &Client, object: &Written) -> Result<(), String> {
    let mut check = ContentCheck { seed: object.seed, pos: 0, first_difference: None };
    let n = client.download(&object.id, &mut check).map_err(|e| e.to_string())?;
    if n != object.size {
        return Err(format!("{}: got {n} of {} bytes", object.id, object.size));
    }
    if let Some(at) = check.first_difference {
        return Err(format!("{}: wrong bytes from byte {at} on (the checksum agreed)", object.id));
    }
    Ok(())
}

/// The key `populate --bucket` gives its `index`-th object: in index order.
pub fn populated_key(index: u64) -> String {
    format!("key-{index:09}")
}

/// The id `populate` gives its `index`-th object: a version 4 UUID made from the index,
/// so `lookup --populated N` finds the same ids without a list.
pub fn populated_id(index: u64) -> ObjectId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix(index).to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(index ^ 0xA5A5_A5A5_A5A5_A5A5).to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    ObjectId::parse(&uuid.to_string()).expect("a UUID is an object id")
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---- Running a workload -----------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Other,
}

/// What one thread measured.
#[derive(Default)]
struct Samples {
    put: Vec<u64>,
    get: Vec<u64>,
    other: Vec<u64>,
    put_errors: u64,
    get_errors: u64,
    other_errors: u64,
}

impl Samples {
    fn record(&mut self, op: Op, elapsed: Duration, ok: bool) {
        let nanos = elapsed.as_nanos() as u64;
        match (op, ok) {
            (Op::Put, true) => self.put.push(nanos),
            (Op::Get, true) => self.get.push(nanos),
            (Op::Other, true) => self.other.push(nanos),
            (Op::Put, false) => self.put_errors += 1,
            (Op::Get, false) => self.get_errors += 1,
            (Op::Other, false) => self.other_errors += 1,
        }
    }

    fn merge(&mut self, other: Samples) {
        self.put.extend(other.put);
        self.get.extend(other.get);
        self.other.extend(other.other);
        self.put_errors += other.put_errors;
        self.get_errors += other.get_errors;
        self.other_errors += other.other_errors;
    }
}

/// Hands out operations until the count or the time is up.
struct Budget {
    issued: AtomicU64,
    count: u64,
    deadline: Instant,
    /// Set when the run must end early (the cluster went away).
    stop: AtomicBool,
}

impl Budget {
    fn take(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.issued.fetch_add(1, Ordering::Relaxed) < self.count
    }
}

/// Distinct error messages, the first few.
struct Errors(Mutex<Vec<String>>);

impl Errors {
    fn note(&self, message: String) {
        let mut errors = self.0.lock().expect("errors lock");
        if errors.len() < 5 && !errors.contains(&message) {
            errors.push(message);
        }
    }
}

fn run_workload(config: &BenchConfig) -> Result<Report, String> {
    let client = Client::new(client::agent(), &config.master);
    let size = config.size;
    let replication = config.replication;
    let errors = Errors(Mutex::new(Vec::new()));

    // The working set: objects to read, uploaded before the clock starts.
    let working_set: Vec<Written> = match (config.workload, config.populated) {
        (Workload::Lookup, Some(n)) => {
            if n == 0 {
                return Err("--populated must be at least 1".into());
            }
            Vec::new()
        }
        (Workload::Get | Workload::Mixed | Workload::Lookup, _) => {
            let default = (WORKING_SET_BYTES / size.max(1)).clamp(config.threads as u64, 1000) as usize;
            let wanted = config.working_set.unwrap_or(default).max(1);
            prepare(&client, wanted, size, replication, config.threads)?
        }
        _ => Vec::new(),
    };

    let count = config.count.unwrap_or(u64::MAX);
    let limit = config.duration.unwrap_or(if config.count.is_some() { COUNT_TIME_LIMIT } else { DEFAULT_DURATION });
    let started = Instant::now();
    let budget = Budget { issued: AtomicU64::new(0), count, deadline: started + limit, stop: AtomicBool::new(false) };
    let mut all = Samples::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|_| {
                let (client, budget, errors, working_set) = (&client, &budget, &errors, &working_set);
                scope.spawn(move || {
                    let mut samples = Samples::default();
                    let mut failures_in_a_row = 0u32;
                    while budget.take() {
                        let op = choose_op(config);
                        let begun = Instant::now();
                        let outcome = one_op(client, config, op, working_set);
                        samples.record(op, begun.elapsed(), outcome.is_ok());
                        match outcome {
                            Ok(()) => failures_in_a_row = 0,
                            Err(e) => {
                                errors.note(e);
                                failures_in_a_row += 1;
                                // A cluster that keeps failing ends the run instead of
                                // spinning through the time limit.
                                if failures_in_a_row >= 100 {
                                    budget.stop.store(true, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    samples
                })
            })
            .collect();
        for handle in handles {
            all.merge(handle.join().expect("bench threads do not panic"));
        }
    });
    let elapsed = started.elapsed().as_secs_f64();

    let bytes_per_op = match config.workload {
        Workload::Init | Workload::Lookup => 0,
        _ => size,
    };
    let stats = |samples: &mut Vec<u64>, errors: u64| OpStats {
        ops: samples.len() as u64,
        errors,
        ops_per_sec: samples.len() as f64 / elapsed,
        mb_per_sec: (samples.len() as u64 * bytes_per_op) as f64 / elapsed / 1e6,
        latency_ms: Latency::of(samples),
    };
    let mut combined: Vec<u64> = all.put.iter().chain(&all.get).chain(&all.other).copied().collect();
    let total = stats(&mut combined, all.put_errors + all.get_errors + all.other_errors);
    let (put, get) = if config.workload == Workload::Mixed {
        (Some(stats(&mut all.put, all.put_errors)), Some(stats(&mut all.get, all.get_errors)))
    } else {
        (None, None)
    };
    Ok(Report {
        workload: config.workload,
        size,
        threads: config.threads,
        replication,
        duration_secs: elapsed,
        ops: total.ops,
        errors: total.errors,
        ops_per_sec: total.ops_per_sec,
        mb_per_sec: total.mb_per_sec,
        latency_ms: total.latency_ms,
        put,
        get,
        error_samples: errors.0.into_inner().expect("errors lock"),
    })
}

fn choose_op(config: &BenchConfig) -> Op {
    match config.workload {
        Workload::Put => Op::Put,
        Workload::Get => Op::Get,
        Workload::Mixed if rand::random::<u32>() % 100 < config.put_percent => Op::Put,
        Workload::Mixed => Op::Get,
        _ => Op::Other,
    }
}

fn one_op(client: &Client, config: &BenchConfig, op: Op, working_set: &[Written]) -> Result<(), String> {
    let pick = || &working_set[rand::random::<usize>() % working_set.len()];
    match (op, config.workload) {
        (Op::Put, _) => upload(client, config.size, config.replication).map(|_| ()),
        (Op::Get, _) => download(client, pick()),
        (_, Workload::Init) => {
            client.init_upload(config.size, config.replication).map(|_| ()).map_err(|e| e.to_string())
        }
        (_, Workload::Lookup) => {
            let (id, size) = match config.populated {
                Some(n) => (populated_id(rand::random::<u64>() % n), None),
                None => {
                    let object = pick();
                    (object.id, Some(object.size))
                }
            };
            let info = client.object(&id).map_err(|e: ClientError| e.to_string())?;
            if info.replicas.is_empty() || size.is_some_and(|size| size != info.size) {
                return Err(format!("{id}: the master answered {} replicas, size {}", info.replicas.len(), info.size));
            }
            Ok(())
        }
        _ => unreachable!("loopback and populate do not run operations"),
    }
}

/// Uploads `wanted` objects with `threads` threads, untimed.
fn prepare(
    client: &Client,
    wanted: usize,
    size: u64,
    replication: Option<usize>,
    threads: usize,
) -> Result<Vec<Written>, String> {
    let next = AtomicU64::new(0);
    let deadline = Instant::now() + COUNT_TIME_LIMIT;
    let written = Mutex::new(Vec::with_capacity(wanted));
    let failure = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(wanted) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < wanted as u64 && Instant::now() < deadline {
                    match upload(client, size, replication) {
                        Ok(object) => written.lock().expect("written lock").push(object),
                        Err(e) => {
                            *failure.lock().expect("failure lock") = Some(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("failure lock") {
        return Err(format!("could not upload the working set: {e}"));
    }
    let written = written.into_inner().expect("written lock");
    if written.len() < wanted {
        return Err(format!("uploaded only {} of {wanted} working-set objects in time", written.len()));
    }
    Ok(written)
}

// ---- Machine limits and offline tools ------------------------------------------------

/// Sends bytes over `streams` loopback TCP connections for `duration`: the fastest
/// any byte stream between two processes of this machine can go.
fn loopback(streams: usize, duration: Duration) -> Result<LoopbackReport, String> {
    let streams = streams.min(64);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut pairs = Vec::with_capacity(streams);
    for _ in 0..streams {
        // The backlog holds the connection until it is accepted.
        let sender = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (receiver, _) = listener.accept().map_err(|e| e.to_string())?;
        let timeout = Some(duration + Duration::from_secs(10));
        for socket in [&sender, &receiver] {
            socket.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            socket.set_write_timeout(timeout).map_err(|e| e.to_string())?;
        }
        pairs.push((sender, receiver));
    }
    let received = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + duration;
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (mut sender, mut receiver) in pairs {
            let received = &received;
            handles.push(scope.spawn(move || -> Result<(), String> {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    match receiver.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => received.fetch_add(n as u64, Ordering::Relaxed),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(format!("loopback receive: {e}")),
                    };
                }
            }));
            handles.push(scope.spawn(move || -> Result<(), String> {
                let buf = vec![0x5Au8; 1 << 20];
                while Instant::now() < deadline {
                    sender.write_all(&buf).map_err(|e| format!("loopback send: {e}"))?;
                }
                sender.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())
            }));
        }
        handles.into_iter().map(|h| h.join().expect("loopback threads do not panic")).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    outcomes.into_iter().collect::<Result<Vec<()>, String>>()?;
    let bytes = received.into_inner();
    Ok(LoopbackReport {
        workload: Workload::Loopback,
        streams,
        duration_secs: elapsed,
        bytes,
        mb_per_sec: bytes as f64 / elapsed / 1e6,
    })
}

fn populate(config: &BenchConfig) -> Result<PopulateReport, String> {
    let data = config.data_dir.as_ref().ok_or("populate needs --data DIR (the master's data directory)")?;
    let objects = config.objects.ok_or("populate needs --objects N")?;
    let replication = config.replication.unwrap_or(3).max(1);
    let nodes: Vec<String> = (1..=replication).map(|i| format!("bench-node-{i}")).collect();
    let started = Instant::now();
    let object = |i| (populated_id(i), 4096, Checksum(splitmix(i) as u32));
    let added = master::offline::populate(data, &nodes, objects, POPULATE_BATCH, object)?;
    let seconds = started.elapsed().as_secs_f64();
    let bucket = match &config.bucket {
        None => None,
        Some(name) => {
            let started = Instant::now();
            let owner = master::offline::populate_bucket(data, name, objects, object, populated_key)?;
            Some(PopulatedBucket {
                name: name.clone(),
                keys: objects,
                access_key_id: owner.id,
                secret_access_key: owner.secret.unwrap_or_default(),
                seconds: started.elapsed().as_secs_f64(),
            })
        }
    };
    Ok(PopulateReport {
        workload: Workload::Populate,
        objects,
        added,
        replication,
        seconds,
        objects_per_sec: added as f64 / seconds.max(1e-9),
        bucket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_reads_back_and_differs_by_seed() {
        let mut bytes = Vec::new();
        ContentReader { seed: 42, pos: 0, len: 3 * BLOCK_LEN as u64 + 5 }.read_to_end(&mut bytes).unwrap();
        assert_eq!(&bytes[..8], &42u64.to_le_bytes());
        let mut check = ContentCheck { seed: 42, pos: 0, first_difference: None };
        for piece in bytes.chunks(100_003) {
            check.write_all(piece).unwrap();
        }
        assert_eq!(check.first_difference, None);
        let mut other = ContentCheck { seed: 43, pos: 0, first_difference: None };
        other.write_all(&bytes[..4]).unwrap();
        other.write_all(&bytes[4..]).unwrap();
        assert_eq!(other.first_difference, Some(0));
        bytes[BLOCK_LEN + 1] ^= 1;
        let mut check = ContentCheck { seed: 42, pos: 0, first_difference: None };
        check.write_all(&bytes).unwrap();
        assert_eq!(check.first_difference, Some(BLOCK_LEN as u64 + 1));
    }

    #[test]
    fn percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|ms| ms * 1_000_000).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latency::of(&mut []).max, 0.0);
    }

    #[test]
    fn populated_ids_are_stable_and_distinct() {
        assert_eq!(populated_id(7), populated_id(7));
        assert_ne!(populated_id(7), populated_id(8));
        assert_eq!(populated_id(7).to_string().as_bytes()[14], b'4');
    }
}
