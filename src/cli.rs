//! The client commands of `aether`: `put`, `get`, `stat` and `nodes`, built on `Client`.
//! They print results on standard output and progress on a terminal's standard error.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{Client, ClientError};
use crate::proto::ObjectId;

/// The master a client talks to when neither `--master` nor `AETHER_MASTER` says.
pub const DEFAULT_MASTER: &str = "http://127.0.0.1:42100";

pub type CliResult<T> = Result<T, String>;

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

/// Uploads `path`: asks the master for a placement, sends the file to every placed node
/// in parallel, then completes the upload. Returns the new object's id.
pub fn put(client: &Client, path: &Path, replication: Option<usize>) -> CliResult<ObjectId> {
    let size = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    let placement = client.init_upload(size, replication).map_err(|e| e.to_string())?;
    let id = ObjectId::parse(&placement.objectid)?;
    let bar = progress(size * placement.nodes.len() as u64, "uploading");
    let results: Vec<Result<(), ClientError>> = std::thread::scope(|scope| {
        let uploads: Vec<_> = placement
            .nodes
            .iter()
            .map(|node| {
                let bar = bar.clone();
                scope.spawn(move || {
                    let file = File::open(path)?;
                    client.put_to_node(node, &id, bar.wrap_read(file), size)
                })
            })
            .collect();
        uploads.into_iter().map(|u| u.join().expect("upload threads do not panic")).collect()
    });
    bar.finish_and_clear();
    let failures: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| e.to_string()).collect();
    if !failures.is_empty() {
        return Err(format!(
            "upload of {id} failed on {} of {} nodes, not completed: {}",
            failures.len(),
            placement.nodes.len(),
            failures.join("; ")
        ));
    }
    client.complete_upload(&id).map_err(|e| e.to_string())?;
    Ok(id)
}

/// Downloads an object to `output` (standard output when `None`), trying each replica in
/// turn. A file is written beside its destination and renamed into place when whole.
pub fn get(client: &Client, id: &str, output: Option<&Path>) -> CliResult<u64> {
    let id = ObjectId::parse(id)?;
    let info = client.object(&id).map_err(|e| e.to_string())?;
    if info.replicas.is_empty() {
        return Err(format!("object {id} has no replicas"));
    }
    let bar = progress(info.size, "downloading");
    let mut errors = Vec::new();
    let result = match output {
        Some(path) => {
            let partial = partial_path(path);
            let mut done = None;
            for node in &info.replicas {
                bar.set_position(0);
                let attempt = File::create(&partial).map_err(ClientError::from).and_then(|file| {
                    let mut out = io::BufWriter::with_capacity(1 << 20, file);
                    let n = client.get_from_node(node, &id, &mut bar.wrap_write(&mut out))?;
                    let file = out.into_inner().map_err(|e| e.into_error())?;
                    file.sync_all()?;
                    Ok(n)
                });
                match attempt.and_then(|n| check_size(n, info.size, node)) {
                    Ok(n) => {
                        done = Some(n);
                        break;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            match done {
                Some(n) => fs::rename(&partial, path)
                    .map(|()| n)
                    .map_err(|e| format!("cannot move {} into place: {e}", partial.display())),
                None => {
                    let _ = fs::remove_file(&partial);
                    Err(format!("every replica of {id} failed: {}", errors.join("; ")))
                }
            }
        }
        None => {
            let stdout = io::stdout().lock();
            let mut out = CountingWriter { inner: bar.wrap_write(stdout), written: 0 };
            let mut done = None;
            for node in &info.replicas {
                match client.get_from_node(node, &id, &mut out).and_then(|n| check_size(n, info.size, node)) {
                    Ok(n) => {
                        done = Some(n);
                        break;
                    }
                    // Bytes already on standard output cannot be taken back.
                    Err(e) if out.written > 0 => {
                        errors.push(e.to_string());
                        break;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            out.flush().map_err(|e| e.to_string())?;
            done.ok_or_else(|| format!("download of {id} failed: {}", errors.join("; ")))
        }
    };
    bar.finish_and_clear();
    result
}

fn check_size(got: u64, want: u64, node: &str) -> Result<u64, ClientError> {
    if got == want {
        Ok(got)
    } else {
        Err(ClientError::Protocol {
            url: node.to_string(),
            message: format!("replica has {got} bytes, the master says {want}"),
        })
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".aether-partial");
    path.with_file_name(name)
}

struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The master's metadata of one object, as pretty JSON.
pub fn stat(client: &Client, id: &str) -> CliResult<String> {
    let id = ObjectId::parse(id)?;
    let info = client.object(&id).map_err(|e| e.to_string())?;
    Ok(serde_json::to_string_pretty(&info).expect("wire types serialize"))
}

/// The registered nodes as a table.
pub fn nodes(client: &Client) -> CliResult<String> {
    let nodes = client.nodes().map_err(|e| e.to_string())?;
    let mut table = format!("{:<20} {:<32} {:<8} {:>10}  {}\n", "ID", "ADDRESS", "STATE", "REPLICAS", "LAST SEEN");
    for n in nodes {
        table.push_str(&format!("{:<20} {:<32} {:<8} {:>10}  {}\n", n.id, n.address, n.state, n.replicas, n.last_seen));
    }
    Ok(table)
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
}
