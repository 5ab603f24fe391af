//! The client commands of `aether`: `put`, `get`, `stat`, `rm`, `nodes` and `cluster`,
//! built on `Client`. They print results on standard output, and progress and a
//! one-line summary of each transfer on a terminal's standard error.

pub mod keys;

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use aetherstore::client::{self, Client, ClientError};
use aetherstore::proto::ObjectId;

/// The master a client talks to when neither `--master` nor `AETHER_MASTER` says.
pub const DEFAULT_MASTER: &str = "http://127.0.0.1:42100";

pub type CliResult<T> = Result<T, String>;

/// A client error as one sentence for the person at the terminal, with a hint when the
/// master does not answer at all.
fn explain(client: &Client, error: ClientError) -> String {
    match &error {
        ClientError::Unreachable { url, message } if url.starts_with(client.master()) => format!(
            "cannot reach the master at {} ({message}); is a master running? Start one with `aether dev`, \
             or point --master (or AETHER_MASTER) at yours",
            client.master()
        ),
        _ => error.to_string(),
    }
}

/// What a finished transfer did, e.g. `uploaded 64.00 MiB in 1.2 s (53.33 MiB/s)`.
fn summary(verb: &str, bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    format!("{verb} {} in {secs:.1} s ({}/s)", HumanBytes(bytes), HumanBytes((bytes as f64 / secs) as u64))
}

/// Prints the summary on a terminal only: scripts that read standard error see nothing.
fn print_summary(verb: &str, bytes: u64, started: Instant) {
    if io::stderr().is_terminal() {
        eprintln!("{}", summary(verb, bytes, started.elapsed()));
    }
}

fn progress(total: u64, what: &str) -> ProgressBar {
    // indicatif draws nothing when standard error is not a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Standard input, as an argument to `put`.
pub const STDIN: &str = "-";
/// A stream is spooled in memory up to this size, and into an unlinked temporary file
/// beyond it.
const SPOOL_IN_MEMORY: usize = 8 << 20;

/// What `aether put` uploads. A regular file is read again for each attempt. A stream
/// (standard input, a pipe, a FIFO, a terminal) can be read only once and tells its size
/// only at its end, while `init` asks for the size and a broken chain needs the bytes
/// again: it is read to its end first, into memory or a temporary file.
enum Input {
    File { path: PathBuf, size: u64 },
    Memory(Arc<[u8]>),
    Spooled { file: File, size: u64 },
}

impl Input {
    /// Opens what `put` was given, or says clearly why it cannot be uploaded, before
    /// anything is asked of the cluster.
    fn open(path: &Path) -> CliResult<Input> {
        if path == Path::new(STDIN) {
            return Input::spool(&mut io::stdin().lock(), "standard input");
        }
        let name = path.display();
        let file = File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("cannot read {name}: {e}"))?;
        if meta.is_dir() {
            return Err(format!("{name} is a directory; aether put uploads one file (or - for standard input)"));
        }
        if meta.is_file() {
            return Ok(Input::File { path: path.to_path_buf(), size: meta.len() });
        }
        // A pipe, FIFO, terminal or socket: its metadata says nothing of its length.
        let mut file = file;
        Input::spool(&mut file, &name.to_string())
    }

    fn spool(stream: &mut dyn Read, what: &str) -> CliResult<Input> {
        let failed = |e: io::Error| format!("cannot read {what}: {e}");
        let mut head = Vec::new();
        stream.take(SPOOL_IN_MEMORY as u64 + 1).read_to_end(&mut head).map_err(failed)?;
        if head.len() <= SPOOL_IN_MEMORY {
            return Ok(Input::Memory(head.into()));
        }
        let mut file = spool_file().map_err(|e| {
            format!(
                "cannot keep {what} in a temporary file in {}: {e}; set TMPDIR to a writable directory",
                std::env::temp_dir().display()
            )
        })?;
        file.write_all(&head).map_err(|e| format!("cannot spool {what}: {e}"))?;
        let rest = io::copy(stream, &mut file).map_err(failed)?;
        Ok(Input::Spooled { file, size: head.len() as u64 + rest })
    }

    fn len(&self) -> u64 {
        match self {
            Input::File { size, .. } | Input::Spooled { size, .. } => *size,
            Input::Memory(bytes) => bytes.len() as u64,
        }
    }

    /// The bytes from the start, for one attempt.
    fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Input::File { path, .. } => Box::new(File::open(path)?),
            Input::Memory(bytes) => Box::new(io::Cursor::new(Arc::clone(bytes))),
            Input::Spooled { file, .. } => {
                let mut file = file.try_clone()?;
                file.seek(SeekFrom::Start(0))?;
                Box::new(file)
            }
        })
    }
}

/// A temporary file no one else can open: it is removed from its directory at once and
/// lives until closed.
fn spool_file() -> io::Result<File> {
    let path = std::env::temp_dir().join(format!(".aether-put-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}

/// Uploads `path` (a file, a pipe or FIFO, or `-` for standard input) through a
/// replicated chain and completes it; returns the new id.
pub fn put(client: &Client, path: &Path, replication: Option<usize>) -> CliResult<ObjectId> {
    let input = Input::open(path)?;
    let size = input.len();
    let started = Instant::now();
    let bar = progress(size, "uploading");
    let mut open = || -> io::Result<Box<dyn Read + Send>> {
        bar.set_position(0);
        Ok(Box::new(bar.wrap_read(input.reader()?)))
    };
    let uploaded = client.upload(size, replication, &mut open);
    bar.finish_and_clear();
    let uploaded = uploaded.map_err(|e| {
        // The id is printed whatever happens once the copies are stored: the object may
        // well be complete, and `aether stat ID` tells.
        if let ClientError::CompleteUnknown { id, .. } = &e {
            println!("{id}");
        }
        explain(client, e)
    })?;
    for replica in uploaded.replicas.iter().filter(|r| r.status != 201) {
        eprintln!(
            "aether: note: {} did not take a copy ({}); another node did",
            replica.node,
            replica.error.as_deref().unwrap_or("no reason given")
        );
    }
    print_summary("uploaded", size, started);
    Ok(uploaded.id)
}

/// Downloads an object to `output` (standard output when `None`), verifying its
/// checksum and failing over between replicas. A file is written beside its destination
/// and renamed into place only when whole and verified.
pub fn get(client: &Client, id: &str, output: Option<&Path>) -> CliResult<u64> {
    let id = ObjectId::parse(id)?;
    let started = Instant::now();
    let size = client.object(&id).map_err(|e| explain(client, e))?.size;
    let bar = progress(size, "downloading");
    let result = match output {
        Some(path) => {
            let partial = partial_path(path);
            let result = File::create(&partial)
                .map_err(|e| format!("cannot create {}: {e}", partial.display()))
                .and_then(|file| {
                    let mut out = io::BufWriter::with_capacity(1 << 20, file);
                    let n = client.download(&id, &mut bar.wrap_write(&mut out)).map_err(|e| explain(client, e))?;
                    let file = out.into_inner().map_err(|e| e.into_error().to_string())?;
                    file.sync_all().map_err(|e| e.to_string())?;
                    fs::rename(&partial, path)
                        .map_err(|e| format!("cannot move {} into place: {e}", partial.display()))?;
                    Ok(n)
                });
            if result.is_err() {
                let _ = fs::remove_file(&partial);
            }
            result
        }
        None => {
            let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            let n = client.download(&id, &mut bar.wrap_write(&mut out)).map_err(|e| explain(client, e));
            out.flush().map_err(|e| e.to_string())?;
            n
        }
    };
    bar.finish_and_clear();
    if let Ok(n) = result {
        print_summary("downloaded", n, started);
    }
    result
}

/// Deletes an object.
pub fn rm(client: &Client, id: &str) -> CliResult<()> {
    let id = ObjectId::parse(id)?;
    client.delete_object(&id).map_err(|e| match e.status() {
        Some(401) => format!("{e}: deleting needs the cluster token; set AETHER_CLUSTER_TOKEN (or --cluster-token)"),
        _ => explain(client, e),
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".aether-partial");
    path.with_file_name(name)
}

/// The master's metadata of one object, as pretty JSON.
pub fn stat(client: &Client, id: &str) -> CliResult<String> {
    let id = ObjectId::parse(id)?;
    let info = client.object(&id).map_err(|e| explain(client, e))?;
    Ok(serde_json::to_string_pretty(&info).expect("wire types serialize"))
}

/// The registered nodes as a table.
pub fn nodes(client: &Client) -> CliResult<String> {
    let nodes = client.nodes().map_err(|e| explain(client, e))?;
    let row = |cells: [&str; 7]| {
        format!(
            "{:<20} {:<32} {:<8} {:>9} {:>10} {:>10}  {}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    let mut table = row(["ID", "ADDRESS", "STATE", "REPLICAS", "FREE", "SEEN", "VERSION"]);
    for mut n in nodes {
        // A drain shows in the state: `draining` (its replicas are the copies left),
        // `drained`, or e.g. `dead/draining`; the zone after the version.
        if let Some(drain) = &n.drain {
            n.state = if n.state == "alive" { drain.clone() } else { format!("{}/{drain}", n.state) };
        }
        if let Some(zone) = &n.zone {
            n.version = Some(format!("{}  zone {zone}", n.version.as_deref().unwrap_or("-")));
        }
        let free = n.free_bytes.map_or("-".to_string(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64));
        let seen = format!("{:.1}s ago", n.last_seen_secs_ago);
        let version = n.version.as_deref().unwrap_or("-");
        table.push_str(&row([&n.id, &n.address, &n.state, &n.replicas.to_string(), &free, &seen, version]));
    }
    Ok(table)
}

/// The master's `/api/cluster` for people.
pub fn cluster(client: &Client) -> CliResult<String> {
    let c = client.cluster().map_err(|e| explain(client, e))?;
    let mut text = format!("master      {} (aether {})\n", client.master(), c.version);
    text.push_str(&format!(
        "datanodes   {} alive, {} suspect, {} dead\n",
        c.nodes_alive, c.nodes_suspect, c.nodes_dead
    ));
    text.push_str(&format!("objects     {}, {} under-replicated\n", c.objects, c.under_replicated));
    text.push_str(&format!("repairs     {} in flight\n", c.repairs_in_flight));
    text.push_str(&format!("deletes     {} copies waiting for their node\n", c.pending_deletes));
    if c.nodes_draining + c.nodes_drained > 0 {
        text.push_str(&format!(
            "drains      {} draining ({} copies left to move), {} drained\n",
            c.nodes_draining, c.copies_to_move, c.nodes_drained
        ));
    }
    Ok(text)
}

/// `aether nodes --json`: the master's `GET /api/nodes` as it answered, on one line.
pub fn nodes_json(client: &Client) -> CliResult<String> {
    api_json(client, "/api/nodes")
}

/// `aether cluster --json`: the master's `GET /api/cluster` as it answered, on one line.
pub fn cluster_json(client: &Client) -> CliResult<String> {
    api_json(client, "/api/cluster")
}

/// `aether stat ID --json`: the master's `GET /api/objects/ID` as it answered, on one line.
pub fn stat_json(client: &Client, id: &str) -> CliResult<String> {
    let id = ObjectId::parse(id)?;
    api_json(client, &format!("/api/objects/{id}"))
}

/// JSON output is the API's own answer, passed through: the same field names, and fields
/// a newer master adds appear without a newer client.
fn api_json(client: &Client, path: &str) -> CliResult<String> {
    let value = client.get_value(path).map_err(|e| explain(client, e))?;
    Ok(serde_json::to_string(&value).expect("JSON values serialize"))
}

/// `aether health URL`: succeeds when the server at `url` answers `GET /health` with a
/// 200 and `"status": "ok"` within `timeout`; otherwise fails with the reason in one line.
/// Prints `ok URL (aether VERSION)`, or with `json` the server's answer.
pub fn health(url: &str, timeout: Duration, json: bool) -> CliResult<String> {
    let (url, answer) = client::health(url, timeout).map_err(|e| e.to_string())?;
    let status = answer.get("status").and_then(|s| s.as_str()).unwrap_or_default();
    if status != "ok" {
        return Err(format!("{url}: status is {status:?}, not \"ok\""));
    }
    if json {
        return Ok(serde_json::to_string(&answer).expect("JSON values serialize"));
    }
    let version = answer.get("version").and_then(|v| v.as_str()).unwrap_or("unknown");
    Ok(format!("ok {url} (aether {version})"))
}

/// Parses a byte size: a plain number, or one with a suffix K, M, G or T (powers of 1024,
/// with or without "iB").
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| format!("invalid size {text:?}: expected e.g. 1048576 or 64M"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size {text:?}: the unit must be K, M, G or T")),
    };
    number.checked_mul(1u64 << shift).ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("5TiB"), Ok(5 << 40));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn summary_names_size_time_and_rate() {
        let line = summary("uploaded", 3 << 20, Duration::from_secs(2));
        assert_eq!(line, "uploaded 3.00 MiB in 2.0 s (1.50 MiB/s)");
    }
}
