//! `Client`: the HTTP client of the AetherStore API, used by the CLI, by datanodes to
//! reach the master, and by the tests. It speaks only the wire types of `proto`.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod completions;
mod prefetch;
mod s3;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::locations::{Location, Locations, DEFAULT_CAPACITY};
use crate::node_client::{NodeClient, ObjectPut};
use crate::proto::{
    Checksum, ClusterStatus, CompleteBatch, CompleteBatchAnswer, CompleteUpload, DrainStatus, Heartbeat, InitUpload,
    InitUploadBatch, Inventory, NodeCommands, NodeInfo, NodeList, ObjectId, ObjectInfo, Placement, PlacementBatch,
    Receipt, RegisterNode, ReplaceNodes, ReplicaReport, ReplicaResult, StatusOk, Stored, CHECKSUM_HEADER, TOKEN_HEADER,
};
use completions::{Completions, Outcome};
use prefetch::{Prefetched, Taken, SMALL_UPLOAD};

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
    /// A server refused to contact an address that is not a registered datanode.
    NotRegistered {
        address: String,
    },
    Io(io::Error),
    /// An upload's bytes are stored, but whether `complete` took effect is not known:
    /// its answer was lost however often it was asked.
    CompleteUnknown {
        id: ObjectId,
        source: Box<ClientError>,
    },
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
            ClientError::NotRegistered { .. } | ClientError::CompleteUnknown { .. } => self.to_string(),
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
            ClientError::NotRegistered { address } => {
                write!(f, "{address} is not a datanode registered with the master; not contacting it")
            }
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::CompleteUnknown { id, source } => write!(
                f,
                "upload {id}: its copies are stored, but whether it was completed is unknown ({source}); \
                 check with `aether stat {id}`"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

/// The most a JSON answer from a master or a datanode may take. The largest real ones
/// (`init_batch`'s placements, a chain's results at the highest replication) are tens
/// of KiB; a server sending more is broken or hostile, and is not read on.
pub(crate) const MAX_JSON_ANSWER: u64 = 4 << 20;
/// How much of an announced JSON answer is allocated before its bytes arrive.
const JSON_ANSWER_PRESIZED: u64 = 64 << 10;

/// Reads a JSON answer whole, at most `MAX_JSON_ANSWER` bytes, then parses it (ureq's
/// `into_json` parses from the connection whatever comes).
pub(crate) fn json_answer<T: DeserializeOwned>(response: ureq::Response, url: &str) -> Result<T, ClientError> {
    // The announced length sizes the buffer only as far as real answers go: past that it
    // grows with the bytes that actually arrive, not with what a server claims.
    let announced = response.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = Vec::with_capacity(announced.unwrap_or(0).min(JSON_ANSWER_PRESIZED) as usize);
    response
        .into_reader()
        .take(MAX_JSON_ANSWER + 1)
        .read_to_end(&mut body)
        .map_err(|e| ClientError::Transport { url: url.to_string(), message: e.to_string() })?;
    let protocol = |message: String| ClientError::Protocol { url: url.to_string(), message };
    if body.len() as u64 > MAX_JSON_ANSWER {
        return Err(protocol(format!("the answer is longer than {MAX_JSON_ANSWER} bytes")));
    }
    serde_json::from_slice(&body).map_err(|e| protocol(format!("the answer is not the JSON expected: {e}")))
}

pub(crate) fn from_ureq(url: &str, err: ureq::Error) -> ClientError {
    match err {
        ureq::Error::Status(status, response) => {
            let text = response.into_string().unwrap_or_default();
            let message = crate::node_client::error_message(text.as_bytes());
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

/// Asks a server's `GET /health` (`url` is its base URL, or the health URL itself),
/// giving up after `timeout` in all: for `aether health` and container health checks.
/// The URL asked and the server's answer as it came (a `Health` and whatever else the
/// server adds), whatever its `status`; an error for anything but a 200 with JSON.
pub fn health(url: &str, timeout: Duration) -> Result<(String, serde_json::Value), ClientError> {
    let base = master_url(url);
    let url = if base.ends_with("/health") { base } else { format!("{base}/health") };
    let agent =
        ureq::AgentBuilder::new().timeout(timeout).user_agent(concat!("aether/", env!("CARGO_PKG_VERSION"))).build();
    let response = agent.get(&url).call().map_err(|e| from_ureq(&url, e))?;
    let health = json_answer(response, &url)?;
    Ok((url, health))
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    /// Uploads to and reads from datanodes (without the token).
    nodes: NodeClient,
    master: String,
    token: Option<String>,
    /// Where objects this client uploaded or read live, shared by its clones.
    locations: Arc<Locations>,
    /// Placements taken ahead for small uploads, shared by its clones.
    prefetched: Arc<Prefetched>,
    /// `complete`s of concurrent uploads sent together, shared by its clones.
    completions: Arc<Completions>,
}

/// An upload whose copies are stored but not yet completed (`Client::stage`).
#[derive(Debug)]
pub struct Staged {
    pub id: ObjectId,
    pub len: u64,
    source: Option<Checksum>,
    stored: Vec<ReplicaResult>,
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
        let nodes = NodeClient::anonymous(agent.clone());
        let locations = Arc::new(Locations::new(DEFAULT_CAPACITY));
        let prefetched = Arc::new(Prefetched::new());
        let completions = Arc::new(Completions::new());
        Client { agent, nodes, master: master_url(master), token: None, locations, prefetched, completions }
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

    /// Where this client believes objects live (see `download`).
    pub fn locations(&self) -> &Locations {
        &self.locations
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.master);
        let response = self.request("POST", &url).send_json(body).map_err(|e| from_ureq(&url, e))?;
        json_answer(response, &url)
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.master);
        let response = self.request("GET", &url).call().map_err(|e| from_ureq(&url, e))?;
        json_answer(response, &url)
    }

    pub fn register(&self, id: &str, address: &str) -> Result<(), ClientError> {
        self.register_in_zone(id, address, None)
    }

    pub fn register_in_zone(&self, id: &str, address: &str, zone: Option<&str>) -> Result<(), ClientError> {
        let body = RegisterNode {
            id: id.to_string(),
            address: address.to_string(),
            version: Some(crate::VERSION.into()),
            zone: zone.map(String::from),
        };
        let _: StatusOk = self.post("/api/node/register", &body)?;
        Ok(())
    }

    pub fn init_upload(&self, size: u64, replication: Option<usize>) -> Result<Placement, ClientError> {
        self.post("/api/upload/init", &InitUpload { size, replication })
    }

    /// `count` placements for uploads of up to `size` bytes at once.
    pub fn init_upload_batch(
        &self,
        size: u64,
        replication: Option<usize>,
        count: usize,
    ) -> Result<PlacementBatch, ClientError> {
        self.post("/api/upload/init_batch", &InitUploadBatch { size, replication, count })
    }

    /// A placement for a new upload of `len` bytes: for a small one, one taken ahead
    /// (`prefetch.rs`: the queue is refilled by `init_batch` when it runs low); for a
    /// large one, or from a master that predates `init_batch`, one `init`.
    fn place(&self, len: u64, replication: Option<usize>) -> Result<Placement, ClientError> {
        if len > SMALL_UPLOAD || !self.prefetched.supported() {
            return self.retrying(|| self.init_upload(len, replication));
        }
        let Taken { placement, refill } = self.prefetched.take(replication);
        let Some(refill) = refill else {
            return Ok(placement.expect("without the duty to refill, take hands out a placement"));
        };
        let for_me = placement.is_none();
        match self.retrying(|| self.init_upload_batch(SMALL_UPLOAD, replication, refill.count)) {
            Ok(batch) => match (placement, refill.fill(batch, for_me)) {
                (Some(placement), _) | (None, Some(placement)) => Ok(placement),
                (None, None) => Err(ClientError::Protocol {
                    url: format!("{}/api/upload/init_batch", self.master),
                    message: "the master answered no placement".into(),
                }),
            },
            Err(e) if matches!(e.status(), Some(404 | 405)) => {
                self.prefetched.mark_unsupported();
                drop(refill);
                match placement {
                    Some(placement) => Ok(placement),
                    None => self.retrying(|| self.init_upload(len, replication)),
                }
            }
            // A refill that failed is tried again by the next upload; this one goes on
            // with the placement it has, if it has one.
            Err(e) => placement.ok_or(e),
        }
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

    /// `count` more nodes for an upload in progress, in place of `failed`; the signature
    /// of the answer also names `keep`, nodes of the placement still to be tried.
    pub fn replace_nodes(
        &self,
        id: &ObjectId,
        failed: &[String],
        keep: &[String],
        count: usize,
    ) -> Result<Placement, ClientError> {
        let body = ReplaceNodes { objectid: id.to_string(), failed: failed.to_vec(), keep: keep.to_vec(), count };
        self.post("/api/upload/replace", &body)
    }

    pub fn delete_object(&self, id: &ObjectId) -> Result<(), ClientError> {
        self.locations.remove(id);
        let url = format!("{}/api/objects/{id}", self.master);
        self.request("DELETE", &url).call().map_err(|e| from_ureq(&url, e))?;
        Ok(())
    }

    /// Starts draining a node (`aether node drain`); needs the token when there is one.
    pub fn drain_node(&self, node: &str) -> Result<DrainStatus, ClientError> {
        self.post(&format!("/api/nodes/{node}/drain"), &serde_json::json!({}))
    }

    /// Cancels a node's drain.
    pub fn undrain_node(&self, node: &str) -> Result<DrainStatus, ClientError> {
        self.post(&format!("/api/nodes/{node}/undrain"), &serde_json::json!({}))
    }

    /// Forgets a drained node, or a dead one whose copies were made again.
    pub fn remove_node(&self, node: &str) -> Result<(), ClientError> {
        let url = format!("{}/api/nodes/{node}", self.master);
        self.request("DELETE", &url).call().map_err(|e| from_ureq(&url, e))?;
        Ok(())
    }

    pub fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.get_json("/api/cluster")
    }

    /// The master's answer to `GET path` (e.g. `/api/nodes`) as it came, for `--json`
    /// output that keeps every field the master sends, known to this client or not.
    pub fn get_value(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get_json(path)
    }

    /// Sends `len` bytes to the first node of `chain`, which stores them and forwards
    /// them along the rest (with the master's `signature` of the placement, which a
    /// cluster with a token requires); returns every node's result.
    pub fn put_chain(
        &self,
        chain: &[String],
        signature: Option<&str>,
        id: &ObjectId,
        body: impl Read,
        len: u64,
    ) -> Result<Stored, ClientError> {
        let first = chain.first().ok_or_else(|| ClientError::Protocol {
            url: self.master.clone(),
            message: "the placement names no node".into(),
        })?;
        let put = ObjectPut { id: *id, len: Some(len), checksum: None, chain: &chain[1..], signature };
        self.nodes.put_object(first.trim_end_matches('/'), &put, body, None)
    }

    /// `complete_with_receipts`, in one request with the other uploads of this client
    /// completing at the same time (`completions.rs`): for small uploads, where the
    /// `complete` is a large share of the cost (a large one's would only wait for the
    /// batch on its way). An upload the batch did not complete is completed alone, which
    /// takes the slow way or says why it cannot; so is one without receipts (the master
    /// would have to ask its nodes), and every upload to a master that predates batches.
    fn complete_together(&self, id: &ObjectId, receipts: Vec<Receipt>) -> Result<(), ClientError> {
        if receipts.is_empty() || !self.completions.supported() {
            return self.complete_with_receipts(id, receipts);
        }
        let upload = CompleteUpload { objectid: id.to_string(), receipts: receipts.clone() };
        let outcome = self.completions.complete(upload, |uploads| {
            let answer: Result<CompleteBatchAnswer, ClientError> =
                self.post("/api/upload/complete_batch", &CompleteBatch { uploads });
            if answer.as_ref().is_err_and(|e| matches!(e.status(), Some(404 | 405))) {
                self.completions.mark_unsupported();
            }
            answer.map(|answer| answer.completed)
        });
        match outcome {
            Outcome::Completed => Ok(()),
            Outcome::Alone => self.complete_with_receipts(id, receipts),
        }
    }

    /// Uploads an object to as many replicas as the master places: the bytes go once,
    /// down a chain of datanodes; nodes the chain lost are replaced by new ones from the
    /// master (reading the bytes again through `open`), then the upload is completed,
    /// which the master grants only once enough replicas are confirmed by their nodes.
    ///
    /// Only nodes known to have failed are reported to the master as failed: the nodes
    /// after a break in the chain never saw the bytes, so they are tried again. What the
    /// datanodes stored must be the bytes read from `open` (size and CRC-32C), or nothing
    /// is completed.
    pub fn upload<R: Read>(
        &self,
        len: u64,
        replication: Option<usize>,
        open: &mut dyn FnMut() -> io::Result<R>,
    ) -> Result<Uploaded, ClientError> {
        let staged = self.stage(len, replication, open)?;
        let id = staged.id;
        let (uploaded, ()) = self.commit(staged, |receipts| {
            if len > SMALL_UPLOAD {
                self.complete_with_receipts(&id, receipts)
            } else {
                self.complete_together(&id, receipts)
            }
        })?;
        Ok(uploaded)
    }

    /// The first half of `upload`: the bytes stored on the datanodes, nothing completed
    /// yet; `commit` completes it (alone, or in a write of its own, as the S3 gateway's
    /// PUT does with its key).
    pub fn stage<R: Read>(
        &self,
        len: u64,
        replication: Option<usize>,
        open: &mut dyn FnMut() -> io::Result<R>,
    ) -> Result<Staged, ClientError> {
        let placement = self.place(len, replication)?;
        let id = ObjectId::parse(&placement.objectid)
            .map_err(|message| ClientError::Protocol { url: self.master.clone(), message })?;
        let wanted = placement.nodes.len();
        let mut chain = placement.nodes;
        let mut signature = placement.signature;
        let mut stored: Vec<ReplicaResult> = Vec::new();
        let mut source: Option<Checksum> = None;
        for _attempt in 0..MAX_CHAIN_ATTEMPTS {
            let tally = Arc::new(Mutex::new(Checksum::default()));
            let body = Tally { inner: open()?.take(len), sum: Arc::clone(&tally) };
            let outcome = self.put_chain(&chain, signature.as_deref(), &id, body, len);
            let read = *tally.lock().expect("tally lock");
            let results = match outcome {
                Ok(answer) => {
                    if let Some(first) = source.filter(|first| *first != read) {
                        return Err(ClientError::Protocol {
                            url: self.master.clone(),
                            message: format!(
                                "the input changed while it was uploaded (checksum {read}, before {first})"
                            ),
                        });
                    }
                    if answer.size != len || answer.checksum != read {
                        return Err(ClientError::Protocol {
                            url: chain[0].clone(),
                            message: format!(
                                "the datanodes stored {} bytes with checksum {}, but {len} bytes with checksum {read} \
                                 were read; upload {id} was not completed",
                                answer.size, answer.checksum
                            ),
                        });
                    }
                    source = Some(read);
                    answer.replicas
                }
                Err(e) => vec![ReplicaResult {
                    node: chain[0].clone(),
                    status: e.status().unwrap_or(502),
                    checksum: None,
                    receipt: None,
                    error: Some(e.reason()),
                }],
            };
            let (good, failed, untried) = classify(&chain, results, read);
            stored.extend(good);
            let have = stored.iter().filter(|r| r.status == 201 || r.status == 409).count();
            stored.extend(failed.iter().cloned());
            if have >= wanted {
                break;
            }
            let failed: Vec<String> = failed.into_iter().map(|r| r.node).collect();
            self.prefetched.forget_nodes(&failed);
            chain = untried.into_iter().take(wanted - have).collect();
            let more = wanted - have - chain.len();
            if more > 0 {
                // Without replacements the untried nodes are still worth a try, under the
                // signature that named them; `complete` then says what is missing.
                if let Ok(placement) = self.replace_nodes(&id, &failed, &chain, more) {
                    chain.extend(placement.nodes);
                    signature = placement.signature;
                }
            }
            if chain.is_empty() {
                break;
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
        Ok(Staged { id, len, source, stored })
    }

    /// Completes a staged upload with `complete` (given the receipts of its copies;
    /// asked again while the master's answer is lost, so it must be idempotent); returns
    /// the upload and what `complete` answered.
    pub fn commit<T>(
        &self,
        staged: Staged,
        mut complete: impl FnMut(Vec<Receipt>) -> Result<T, ClientError>,
    ) -> Result<(Uploaded, T), ClientError> {
        let Staged { id, len, source, stored } = staged;
        let receipts: Vec<Receipt> = stored
            .iter()
            .filter(|r| r.status == 201)
            .filter_map(|r| r.receipt.clone())
            .filter(|r| r.size == len && source == Some(r.checksum))
            .collect();
        let answer = self.retrying(|| complete(receipts.clone())).map_err(|e| match e {
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
            other if stored.iter().any(|r| r.status == 201 || r.status == 409) => {
                ClientError::CompleteUnknown { id, source: Box::new(other) }
            }
            other => other,
        })?;
        let replicas = stored.iter().filter(|r| r.status == 201 || r.status == 409).map(|r| r.node.clone()).collect();
        self.locations.insert(id, Location { replicas, size: len, checksum: source });
        Ok((Uploaded { id, size: len, checksum: source.unwrap_or_default(), replicas: stored }, answer))
    }

    /// Asks the master again, with backoff and for a bounded time, when its answer is
    /// lost (a master restarting, a connection cut): for `init`, which writes nothing
    /// durable, and `complete`, which is idempotent. A definite answer from the master
    /// (400, 404, 503 "not confirmed") is not retried.
    fn retrying<T>(&self, mut call: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
        let mut delay = Duration::from_millis(250);
        let deadline = Instant::now() + MASTER_RETRY_FOR;
        loop {
            let error = match call() {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let lost = match &error {
                ClientError::Api { status, .. } => matches!(status, 500 | 502 | 504),
                // A master restarting refuses connections for a moment.
                ClientError::Unreachable { .. }
                | ClientError::Transport { .. }
                | ClientError::Protocol { .. }
                | ClientError::Io(_) => true,
                ClientError::NoReplica { .. }
                | ClientError::NotRegistered { .. }
                | ClientError::CompleteUnknown { .. } => false,
            };
            if !lost || Instant::now() + delay > deadline {
                return Err(error);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(4));
        }
    }

    /// Downloads an object into `out`, verifying its checksum. Replicas are tried in the
    /// master's order (live nodes first); when one fails part-way, the next one resumes
    /// from the byte where it broke, using an HTTP range.
    ///
    /// Where the copies are comes from this client's cache of locations when it has the
    /// object (ids are immutable: no master round trip); when no cached replica serves
    /// it, the master is asked once and the read goes on from the byte it reached. So an
    /// object another client deleted may still be read here until its nodes have removed
    /// their copies (at their next check-in).
    pub fn download(&self, id: &ObjectId, out: &mut dyn Write) -> Result<u64, ClientError> {
        let cached = self.locations.get(id);
        let from_cache = cached.is_some();
        let mut location = match cached {
            Some(location) => location,
            None => self.locate(id)?,
        };
        let mut written = 0u64;
        let mut sum = Checksum::default();
        // The last failure of each replica, in the order they were tried.
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut served = self.read_replicas(id, &location, &mut sum, &mut written, &mut errors, out);
        if served.is_none() && from_cache {
            self.locations.remove(id);
            location = self.locate(id)?;
            if location.size < written {
                return Err(ClientError::Protocol {
                    url: self.master.clone(),
                    message: format!("object {id} has {} bytes, {written} were read already", location.size),
                });
            }
            served = self.read_replicas(id, &location, &mut sum, &mut written, &mut errors, out);
        }
        let Some(served) = served else {
            self.locations.remove(id);
            let each: Vec<String> = errors.iter().map(|(node, error)| format!("{node}: {error}")).collect();
            let message = if each.is_empty() {
                format!("object {id} has no replica to read from")
            } else {
                format!("every replica of {id} failed ({})", each.join("; "))
            };
            return Err(ClientError::NoReplica { message });
        };
        if let Some(expected) = location.checksum.filter(|expected| *expected != sum) {
            self.locations.remove(id);
            return Err(ClientError::Protocol {
                url: self.master.clone(),
                message: format!("downloaded bytes have checksum {sum}, the object has {expected}"),
            });
        }
        if served != 0 {
            // Readers after this one start at the replica that answered.
            location.replicas.swap(0, served);
            self.locations.insert(*id, location);
        }
        Ok(written)
    }

    /// Where a completed object's copies are, from the master; remembered for later reads.
    fn locate(&self, id: &ObjectId) -> Result<Location, ClientError> {
        let info = self.object(id)?;
        let location = Location { replicas: info.replicas, size: info.size, checksum: info.checksum };
        if info.status == "complete" {
            self.locations.insert(*id, location.clone());
        }
        Ok(location)
    }

    /// Reads the object's bytes from `written` on from the replicas of `location`, each
    /// tried twice (a transfer cut by a passing fault resumes too); the index of the
    /// replica that delivered the last byte, or `None` when none did.
    fn read_replicas(
        &self,
        id: &ObjectId,
        location: &Location,
        sum: &mut Checksum,
        written: &mut u64,
        errors: &mut Vec<(String, String)>,
        out: &mut dyn Write,
    ) -> Option<usize> {
        let replicas = location.replicas.iter().enumerate();
        for (index, node) in replicas.clone().chain(replicas) {
            let error = match self.fetch(node, id, *written, location, sum, written, out) {
                Ok(()) if *written == location.size => return Some(index),
                Ok(()) => format!("ended at byte {written} of {}", location.size),
                Err(e) => e.reason(),
            };
            match errors.iter_mut().find(|(n, _)| n == node) {
                Some(entry) => entry.1 = error,
                None => errors.push((node.clone(), error)),
            }
        }
        None
    }

    /// Streams one replica from `offset` on into `out`, counting what arrives.
    #[allow(clippy::too_many_arguments)]
    fn fetch(
        &self,
        node: &str,
        id: &ObjectId,
        offset: u64,
        location: &Location,
        sum: &mut Checksum,
        written: &mut u64,
        out: &mut dyn Write,
    ) -> Result<(), ClientError> {
        let expected = location.checksum;
        let (response, url) = self.nodes.get_object(
            node.trim_end_matches('/'),
            id,
            offset,
            None,
            location.size.saturating_sub(offset),
        )?;
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
        // A buffer of the announced size up to 256 KiB: zeroing 256 KiB for each small
        // object took a quarter of a reading client's CPU.
        let announced = response.header("Content-Length").and_then(|v| v.trim().parse::<usize>().ok());
        let mut buf = vec![0u8; announced.unwrap_or(FETCH_BUFFER).clamp(1, FETCH_BUFFER)];
        let mut reader = response.into_reader();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Transport { url, message: e.to_string() }),
            };
            if *written + n as u64 > location.size {
                return Err(protocol(format!("the node sent more than the object's {} bytes", location.size)));
            }
            out.write_all(&buf[..n])?;
            sum.update(&buf[..n]);
            *written += n as u64;
        }
    }

    /// Uploads `len` bytes from `body` to one datanode.
    pub fn put_to_node(&self, node: &str, id: &ObjectId, body: impl Read, len: u64) -> Result<(), ClientError> {
        let put = ObjectPut { id: *id, len: Some(len), checksum: None, chain: &[], signature: None };
        self.nodes.put_object(node.trim_end_matches('/'), &put, body, None)?;
        Ok(())
    }

    /// Streams one replica into `out` and checks that every announced byte arrived.
    pub fn get_from_node(&self, node: &str, id: &ObjectId, out: &mut dyn Write) -> Result<u64, ClientError> {
        let (response, url) = self.nodes.get_object(node.trim_end_matches('/'), id, 0, None, 0)?;
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

/// The most a download holds in memory: what one read of the body may take.
const FETCH_BUFFER: usize = 256 * 1024;
/// Chain attempts of one upload: the first, and replacements for nodes it lost.
const MAX_CHAIN_ATTEMPTS: usize = 4;
/// How long `init` and `complete` are asked again when their answer is lost.
const MASTER_RETRY_FOR: Duration = Duration::from_secs(16);

/// Sorts a chain's results, in chain order, into copies stored (201, or 409: the node has
/// the object already) whose checksum is `read`, the node where the chain broke (known to
/// have failed), and the nodes after the break, which never saw the bytes and may be
/// tried again. A node that stored other bytes than were read counts as failed.
fn classify(
    chain: &[String],
    results: Vec<ReplicaResult>,
    read: Checksum,
) -> (Vec<ReplicaResult>, Vec<ReplicaResult>, Vec<String>) {
    let (mut good, mut failed, mut untried) = (Vec::new(), Vec::new(), Vec::new());
    let mut broke = false;
    for mut result in results {
        if broke {
            untried.push(result.node);
            continue;
        }
        match result.status {
            201 if result.checksum.is_none_or(|sum| sum == read) => good.push(result),
            201 => {
                result.status = 502;
                result.error = Some(format!("stored other bytes (checksum {:?}) than were read", result.checksum));
                failed.push(result);
            }
            409 => {
                broke = true;
                good.push(result);
            }
            _ => {
                broke = true;
                failed.push(result);
            }
        }
    }
    // A chain that broke at its first node answered for no other.
    let answered = good.len() + failed.len() + untried.len();
    untried.extend(chain.iter().skip(answered).cloned());
    (good, failed, untried)
}

/// A body reader that checksums what it hands out, for comparing with what was stored.
struct Tally<R> {
    inner: R,
    sum: Arc<Mutex<Checksum>>,
}

impl<R: Read> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum.lock().expect("tally lock").update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback that answers one request with `answer` and then, if given,
    /// `endless` again and again until the client stops reading; returns its URL.
    fn serve_once(answer: &'static [u8], endless: Option<&'static [u8]>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.read(&mut [0u8; 4096]);
            let _ = stream.write_all(answer);
            while let Some(piece) = endless {
                if stream.write_all(piece).is_err() {
                    break;
                }
            }
        });
        url
    }

    #[test]
    fn a_json_answer_is_read_up_to_its_limit_and_no_further() {
        // A JSON array that never ends: refused once it passes the limit.
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[";
        let url = serve_once(head, Some(b"0,0,0,0,0,0,0,0,"));
        let err = health(&url, Duration::from_secs(20)).unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains(&format!("longer than {MAX_JSON_ANSWER} bytes")), "{err}");

        // Within the limit, an answer that is not JSON says so.
        let url = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!", None);
        let err = health(&url, Duration::from_secs(20)).unwrap_err();
        assert!(err.to_string().contains("not the JSON expected"), "{err}");
    }

    /// A master on loopback that answers 404 to `complete_batch` (as one from before it
    /// does) and OK to anything else; returns its URL and the paths asked so far.
    fn master_without_batches() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::clone(&asked);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let paths = Arc::clone(&paths);
                std::thread::spawn(move || {
                    let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut head = Vec::new();
                        let mut line = String::new();
                        while io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 2 {
                            head.push(std::mem::take(&mut line));
                        }
                        let Some(request) = head.first() else { return };
                        let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                        let length: u64 = head
                            .iter()
                            .find_map(|h| {
                                h.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        io::copy(&mut (&mut reader).take(length), &mut io::sink()).unwrap();
                        let (status, body) = match path.as_str() {
                            "/api/upload/complete_batch" => ("404 Not Found", r#"{"error": "no route"}"#),
                            _ => ("200 OK", r#"{"status": "OK"}"#),
                        };
                        paths.lock().unwrap().push(path);
                        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, asked)
    }

    #[test]
    fn a_master_without_batches_gets_a_complete_per_upload() {
        let (url, asked) = master_without_batches();
        let client = Client::new(agent(), &url);
        let receipt = Receipt {
            node: "node-1".into(),
            size: 3,
            checksum: Checksum::parse("crc32c:0000002a").unwrap(),
            mac: "00".into(),
        };
        for _ in 0..2 {
            client.complete_together(&ObjectId::new_random(), vec![receipt.clone()]).unwrap();
        }
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked, ["/api/upload/complete_batch", "/api/upload/complete", "/api/upload/complete"]);
        assert!(!client.completions.supported());
    }

    fn result(node: &str, status: u16, checksum: Option<u32>) -> ReplicaResult {
        ReplicaResult {
            node: node.to_string(),
            status,
            checksum: checksum.map(|c| Checksum::parse(&format!("crc32c:{c:08x}")).unwrap()),
            receipt: None,
            error: None,
        }
    }

    #[test]
    fn only_the_node_where_a_chain_broke_counts_as_failed() {
        let read = Checksum::parse("crc32c:0000002a").unwrap();
        let chain: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let nodes = |results: &[ReplicaResult]| results.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(" ");

        let answered = vec![result("a", 201, Some(42)), result("b", 502, None), result("c", 502, None)];
        let (good, failed, untried) = classify(&chain, answered, read);
        assert_eq!((nodes(&good), nodes(&failed), untried.join(" ")), ("a".into(), "b".into(), "c d".into()));

        // The first node did not answer: it failed, the others never saw a byte.
        let (good, failed, untried) = classify(&chain, vec![result("a", 502, None)], read);
        assert_eq!((good.len(), nodes(&failed), untried.join(" ")), (0, "a".into(), "b c d".into()));

        // A copy of other bytes is no copy; a node that has the object already is one.
        let answered = vec![result("a", 201, Some(7)), result("b", 409, None), result("c", 502, None)];
        let (good, failed, untried) = classify(&chain, answered, read);
        assert_eq!((nodes(&good), nodes(&failed), untried.join(" ")), ("b".into(), "a".into(), "c d".into()));
    }
}
