//! `Client`: the HTTP client of the AetherStore API, used by the CLI, by datanodes to
//! reach the master, and by the tests. It speaks only the wire types of `proto`.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

mod s3;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::{
    Checksum, ClusterStatus, CompleteUpload, ErrorBody, Heartbeat, InitUpload, Inventory, NodeCommands, NodeInfo,
    NodeList, ObjectId, ObjectInfo, Placement, Receipt, RegisterNode, ReplaceNodes, ReplicaReport, ReplicaResult,
    StatusOk, Stored, CHAIN_HEADER, CHECKSUM_HEADER, TOKEN_HEADER,
};

#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error status and said why.
    Api {
        url: String,
        status: u16,
        message: String,
    },
    /// Nothing answered at the address: the connection was refused or the host name
    /// does not resolve. Usually the server is not running, or the address is wrong.
    Unreachable {
        url: String,
        message: String,
    },
    /// The request never got a whole answer: reset, timed out.
    Transport {
        url: String,
        message: String,
    },
    /// The answer did not make sense (bad JSON, wrong length).
    Protocol {
        url: String,
        message: String,
    },
    /// Every replica of an object failed; the message says how each did.
    NoReplica {
        message: String,
    },
    Io(io::Error),
}

impl ClientError {
    /// What went wrong, without the URL (for lists that name each node themselves).
    pub fn reason(&self) -> String {
        match self {
            ClientError::Api { status, message, .. } => format!("{status}: {message}"),
            ClientError::Unreachable { message, .. } | ClientError::Transport { message, .. } => message.clone(),
            ClientError::Protocol { message, .. } => format!("unexpected answer: {message}"),
            ClientError::NoReplica { message } => message.clone(),
            ClientError::Io(e) => e.to_string(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api { url, status, message } => write!(f, "{url}: {status}: {message}"),
            ClientError::Transport { url, message } => write!(f, "{url}: {message}"),
            ClientError::Unreachable { url, message } => write!(f, "{url}: {message}"),
            ClientError::Protocol { url, message } => {
                write!(f, "{url}: unexpected answer: {message}")
            }
            ClientError::NoReplica { message } => write!(f, "{message}"),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

fn from_ureq(url: &str, err: ureq::Error) -> ClientError {
    match err {
        ureq::Error::Status(status, response) => {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
            ClientError::Api { url: url.to_string(), status, message }
        }
        ureq::Error::Transport(t) => {
            // ureq's own text repeats the URL; the error already names it once.
            let cause = std::error::Error::source(&t).map(|e| e.to_string());
            let url = url.to_string();
            match (t.kind(), cause) {
                (ureq::ErrorKind::ConnectionFailed, Some(cause)) => {
                    ClientError::Unreachable { url, message: format!("cannot connect: {cause}") }
                }
                (ureq::ErrorKind::Dns, cause) => ClientError::Unreachable {
                    url,
                    message: format!("cannot resolve the host name: {}", cause.as_deref().unwrap_or("unknown host")),
                },
                (kind, cause) => {
                    let message = [Some(kind.to_string()), t.message().map(str::to_string), cause]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ");
                    ClientError::Transport { url, message }
                }
            }
        }
    }
}

/// A master address as people write it: `host:port` means `http://host:port`.
pub fn master_url(text: &str) -> String {
    let text = text.trim();
    let url = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    url.trim_end_matches('/').to_string()
}

/// The one HTTP agent of a process: pooled keep-alive connections and explicit timeouts,
/// so a dead peer costs seconds, never a hung thread.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .max_idle_connections_per_host(64)
        .user_agent(concat!("aether/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    master: String,
    token: Option<String>,
}

/// What an upload achieved: the object id and every node's result.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub id: ObjectId,
    pub size: u64,
    pub checksum: Checksum,
    pub replicas: Vec<ReplicaResult>,
}

impl Client {
    pub fn new(agent: ureq::Agent, master: &str) -> Client {
        Client { agent, master: master_url(master), token: None }
    }

    /// Sends the cluster token with every request to the master.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.token {
            Some(token) => request.set(TOKEN_HEADER, token),
            None => request,
        }
    }

    pub fn master(&self) -> &str {
        &self.master
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.master);
        let response = self.request("POST", &url).send_json(body).map_err(|e| from_ureq(&url, e))?;
        response.into_json().map_err(|e| ClientError::Protocol { url, message: e.to_string() })
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.master);
        let response = self.request("GET", &url).call().map_err(|e| from_ureq(&url, e))?;
        response.into_json().map_err(|e| ClientError::Protocol { url, message: e.to_string() })
    }

    pub fn register(&self, id: &str, address: &str) -> Result<(), ClientError> {
        let body =
            RegisterNode { id: id.to_string(), address: address.to_string(), version: Some(crate::VERSION.into()) };
        let _: StatusOk = self.post("/api/node/register", &body)?;
        Ok(())
    }

    pub fn init_upload(&self, size: u64, replication: Option<usize>) -> Result<Placement, ClientError> {
        self.post("/api/upload/init", &InitUpload { size, replication })
    }

    pub fn complete_upload(&self, id: &ObjectId) -> Result<(), ClientError> {
        self.complete_with_receipts(id, Vec::new())
    }

    /// Completes an upload, handing over the datanodes' receipts for the copies they stored.
    pub fn complete_with_receipts(&self, id: &ObjectId, receipts: Vec<Receipt>) -> Result<(), ClientError> {
        let _: StatusOk = self.post("/api/upload/complete", &CompleteUpload { objectid: id.to_string(), receipts })?;
        Ok(())
    }

    pub fn object(&self, id: &ObjectId) -> Result<ObjectInfo, ClientError> {
        self.get_json(&format!("/api/objects/{id}"))
    }

    pub fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        let list: NodeList = self.get_json("/api/nodes")?;
        Ok(list.nodes)
    }

    pub fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<NodeCommands, ClientError> {
        self.post("/api/node/heartbeat", heartbeat)
    }

    pub fn report(&self, report: &ReplicaReport) -> Result<NodeCommands, ClientError> {
        self.post("/api/replicas/report", report)
    }

    pub fn inventory(&self, inventory: &Inventory) -> Result<NodeCommands, ClientError> {
        self.post("/api/node/inventory", inventory)
    }

    pub fn replace_nodes(&self, id: &ObjectId, failed: &[String], count: usize) -> Result<Placement, ClientError> {
        let body = ReplaceNodes { objectid: id.to_string(), failed: failed.to_vec(), count };
        self.post("/api/upload/replace", &body)
    }

    pub fn delete_object(&self, id: &ObjectId) -> Result<(), ClientError> {
        let url = format!("{}/api/objects/{id}", self.master);
        self.request("DELETE", &url).call().map_err(|e| from_ureq(&url, e))?;
        Ok(())
    }

    pub fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.get_json("/api/cluster")
    }

    /// Sends `len` bytes to the first node of `chain`, which stores them and forwards
    /// them along the rest; returns every node's result.
    pub fn put_chain(&self, chain: &[String], id: &ObjectId, body: impl Read, len: u64) -> Result<Stored, ClientError> {
        let first = chain.first().ok_or_else(|| ClientError::Protocol {
            url: self.master.clone(),
            message: "the placement names no node".into(),
        })?;
        let url = format!("{}/objects/{id}", first.trim_end_matches('/'));
        let mut request = self
            .agent
            .put(&url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string());
        if chain.len() > 1 {
            request = request.set(CHAIN_HEADER, &chain[1..].join(","));
        }
        let response = request.send(body).map_err(|e| from_ureq(&url, e))?;
        response.into_json().map_err(|e| ClientError::Protocol { url, message: e.to_string() })
    }

    /// Uploads an object to as many replicas as the master places: the bytes go once,
    /// down a chain of datanodes; nodes the chain lost are replaced by new ones from the
    /// master (reading the bytes again through `open`), then the upload is completed,
    /// which the master grants only once enough replicas are confirmed by their nodes.
    pub fn upload<R: Read>(
        &self,
        len: u64,
        replication: Option<usize>,
        open: &mut dyn FnMut() -> io::Result<R>,
    ) -> Result<Uploaded, ClientError> {
        let placement = self.init_upload(len, replication)?;
        let id = ObjectId::parse(&placement.objectid)
            .map_err(|message| ClientError::Protocol { url: self.master.clone(), message })?;
        let wanted = placement.nodes.len();
        let mut chain = placement.nodes;
        let mut stored: Vec<ReplicaResult> = Vec::new();
        let mut checksum = None;
        for _attempt in 0..3 {
            let results = match self.put_chain(&chain, &id, open()?, len) {
                Ok(answer) => {
                    checksum = Some(answer.checksum);
                    answer.replicas
                }
                Err(e) => chain
                    .iter()
                    .map(|node| ReplicaResult {
                        node: node.clone(),
                        status: e.status().unwrap_or(502),
                        checksum: None,
                        receipt: None,
                        error: Some(e.reason()),
                    })
                    .collect(),
            };
            let failed: Vec<String> = results.iter().filter(|r| r.status != 201).map(|r| r.node.clone()).collect();
            stored.extend(results);
            let good = stored.iter().filter(|r| r.status == 201).count();
            if good >= wanted {
                break;
            }
            match self.replace_nodes(&id, &failed, wanted - good) {
                Ok(more) if !more.nodes.is_empty() => chain = more.nodes,
                _ => break,
            }
        }
        if !stored.iter().any(|r| r.status == 201) {
            // Nothing to complete: say what each node answered, each node once.
            let mut each: Vec<String> = Vec::new();
            for r in stored.iter().rev() {
                if !each.iter().any(|e| e.starts_with(&format!("{}: ", r.node))) {
                    each.push(format!("{}: {}", r.node, r.error.as_deref().unwrap_or("no copy")));
                }
            }
            each.reverse();
            return Err(ClientError::NoReplica { message: format!("no datanode stored {id} ({})", each.join("; ")) });
        }
        let receipts = stored.iter().filter(|r| r.status == 201).filter_map(|r| r.receipt.clone()).collect();
        self.complete_with_receipts(&id, receipts).map_err(|e| match e {
            ClientError::Api { url, status, message } => {
                let outcome: Vec<String> = stored
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {}{}",
                            r.node,
                            r.status,
                            r.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                        )
                    })
                    .collect();
                ClientError::Api { url, status, message: format!("{message}; replicas: {}", outcome.join(", ")) }
            }
            other => other,
        })?;
        Ok(Uploaded { id, size: len, checksum: checksum.unwrap_or_default(), replicas: stored })
    }

    /// Downloads an object into `out`, verifying its checksum. Replicas are tried in the
    /// master's order (live nodes first); when one fails part-way, the next one resumes
    /// from the byte where it broke, using an HTTP range.
    pub fn download(&self, id: &ObjectId, out: &mut dyn Write) -> Result<u64, ClientError> {
        let info = self.object(id)?;
        let mut written = 0u64;
        let mut sum = Checksum::default();
        // The last failure of each replica, in the order they were tried.
        let mut errors: Vec<(&str, String)> = Vec::new();
        // Each replica gets two chances: a transfer cut by a passing fault resumes too.
        let attempts = info.replicas.iter().chain(info.replicas.iter());
        for node in attempts {
            let error = match self.fetch(node, id, written, info.checksum, &mut sum, &mut written, out) {
                Ok(()) if written == info.size => break,
                Ok(()) => format!("ended at byte {written} of {}", info.size),
                Err(e) => e.reason(),
            };
            match errors.iter_mut().find(|(n, _)| *n == node.as_str()) {
                Some(entry) => entry.1 = error,
                None => errors.push((node, error)),
            }
        }
        if written != info.size {
            let each: Vec<String> = errors.iter().map(|(node, error)| format!("{node}: {error}")).collect();
            let message = if each.is_empty() {
                format!("object {id} has no replica to read from")
            } else {
                format!("every replica of {id} failed ({})", each.join("; "))
            };
            return Err(ClientError::NoReplica { message });
        }
        if let Some(expected) = info.checksum.filter(|expected| *expected != sum) {
            return Err(ClientError::Protocol {
                url: self.master.clone(),
                message: format!("downloaded bytes have checksum {sum}, the object has {expected}"),
            });
        }
        Ok(written)
    }

    /// Streams one replica from `offset` on into `out`, counting what arrives.
    #[allow(clippy::too_many_arguments)]
    fn fetch(
        &self,
        node: &str,
        id: &ObjectId,
        offset: u64,
        expected: Option<Checksum>,
        sum: &mut Checksum,
        written: &mut u64,
        out: &mut dyn Write,
    ) -> Result<(), ClientError> {
        let url = format!("{}/objects/{id}", node.trim_end_matches('/'));
        let mut request = self.agent.get(&url);
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| from_ureq(&url, e))?;
        let protocol = |message: String| ClientError::Protocol { url: url.clone(), message };
        let replica_sum = response.header(CHECKSUM_HEADER).map(Checksum::parse).transpose().map_err(protocol)?;
        if let (Some(expected), Some(replica)) = (expected, replica_sum) {
            if expected != replica {
                return Err(protocol(format!("replica has checksum {replica}, the object has {expected}")));
            }
        }
        if offset > 0 {
            let range = response.header("Content-Range").unwrap_or_default();
            if response.status() != 206 || !range.starts_with(&format!("bytes {offset}-")) {
                return Err(protocol(format!("asked for bytes {offset}-, got {} {range:?}", response.status())));
            }
        }
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Transport { url, message: e.to_string() }),
            };
            out.write_all(&buf[..n])?;
            sum.update(&buf[..n]);
            *written += n as u64;
        }
    }

    /// Uploads `len` bytes from `body` to one datanode.
    pub fn put_to_node(&self, node: &str, id: &ObjectId, body: impl Read, len: u64) -> Result<(), ClientError> {
        let url = format!("{}/objects/{id}", node.trim_end_matches('/'));
        self.agent
            .put(&url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string())
            .send(body)
            .map_err(|e| from_ureq(&url, e))?;
        Ok(())
    }

    /// Streams one replica into `out` and checks that every announced byte arrived.
    pub fn get_from_node(&self, node: &str, id: &ObjectId, out: &mut dyn Write) -> Result<u64, ClientError> {
        let url = format!("{}/objects/{id}", node.trim_end_matches('/'));
        let response = self.agent.get(&url).call().map_err(|e| from_ureq(&url, e))?;
        let announced: Option<u64> = response.header("Content-Length").and_then(|v| v.parse().ok());
        let copied = io::copy(&mut response.into_reader(), out)
            .map_err(|e| ClientError::Transport { url: url.clone(), message: e.to_string() })?;
        match announced {
            Some(len) if len != copied => {
                Err(ClientError::Protocol { url, message: format!("got {copied} of {len} bytes") })
            }
            _ => Ok(copied),
        }
    }
}
