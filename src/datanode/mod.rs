//! The datanode: stores immutable objects on local disk and serves them over HTTP.
//!
//! Requests are parsed into an `Endpoint` and dispatched by one `match`; every byte on
//! disk goes through `store::BlobStore`. Background threads: `membership` (heartbeats,
//! inventories, disk checks, each on its own thread, and the replica reports to the
//! master), `scrub` (re-reads stored objects at a bounded rate) and `compactor`
//! (rewrites volumes full of deleted records). A chained upload forwards its bytes through `chain`.

mod chain;
mod compactor;
mod membership;
mod metrics;
mod peers;
mod scrub;
pub mod store;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use serde::Serialize;
use tiny_http::{Method, Request, Response, StatusCode};

use crate::client::Client;
use crate::http::{self, ApiError, Handled, HttpServer, Reply};
use crate::lock::DataDirLock;
use crate::log;
use crate::node_client::{NodeClient, ObjectPut, DEFAULT_HOP_TIMEOUT};
use crate::proto::{
    normalize_address, ChainSignature, Checksum, DeleteRequest, Health, ObjectId, Receipt, ReplicaResult, ReplicaState,
    ReplicateRequest, ReplicateResult, ReplicateResults, Stored, CHAIN_HEADER, CHAIN_SIGNATURE_HEADER, CHECKSUM_HEADER,
};
use membership::Reporter;
use metrics::DatanodeMetrics;
use store::{BlobStore, ObjectBody, StoreError, StoredObject};

/// The longest chain a single upload may ask a node to forward to.
const MAX_CHAIN: usize = 15;

#[derive(Debug, Clone)]
pub struct DatanodeConfig {
    /// Address to listen on, e.g. `0.0.0.0:42101`; port 0 picks a free one.
    pub listen: String,
    pub data_dir: PathBuf,
    /// The base URL other parties use to reach this node; derived from the listen
    /// address when absent.
    pub advertise: Option<String>,
    /// The master to register with; none means a standalone node.
    pub master: Option<String>,
    /// This node's id; otherwise the one kept in the data directory, or a new one.
    pub node_id: Option<String>,
    pub threads: usize,
    pub max_object_size: u64,
    /// Disk space an upload may never eat into.
    pub reserve_bytes: u64,
    /// Shared secret for internal endpoints, sent to the master and required from it.
    pub cluster_token: Option<String>,
    pub heartbeat_interval: Duration,
    /// How often the full inventory is sent (it is also sent on every registration).
    pub inventory_interval: Duration,
    /// Bytes per second the scrubber may read; 0 turns it off.
    pub scrub_rate: u64,
    /// Pause between two scrub passes over all objects.
    pub scrub_pause: Duration,
    /// How long the next node of a chain may take to accept the connection and answer
    /// the upload's head before the hop counts as failed.
    pub hop_timeout: Duration,
    /// Deadlines and caps for every connection.
    pub http: http::HttpLimits,
    /// The zone (rack, room, site) this node is in: the master spreads each object's
    /// replicas over zones.
    pub zone: Option<String>,
    /// Space this node offers, when less than its disk's: heartbeats report the smaller
    /// capacity, and as free what this node's objects leave of it (several nodes on one
    /// disk, or a disk shared with other data).
    pub capacity_bytes: Option<u64>,
}

impl DatanodeConfig {
    pub fn new(listen: &str, data_dir: PathBuf) -> DatanodeConfig {
        DatanodeConfig {
            listen: listen.to_string(),
            data_dir,
            advertise: None,
            master: None,
            node_id: None,
            threads: 32,
            max_object_size: 5 << 40,
            reserve_bytes: 64 << 20,
            cluster_token: None,
            heartbeat_interval: Duration::from_secs(3),
            inventory_interval: Duration::from_secs(600),
            scrub_rate: 32 << 20,
            scrub_pause: Duration::from_secs(3600),
            hop_timeout: DEFAULT_HOP_TIMEOUT,
            http: http::HttpLimits::default(),
            zone: None,
            capacity_bytes: None,
        }
    }
}

/// A running datanode.
pub struct Datanode {
    http: HttpServer,
    id: String,
    address: String,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
    /// Held until the node is dropped: no other server uses its data directory.
    _lock: DataDirLock,
}

impl Datanode {
    pub fn start(config: DatanodeConfig, agent: ureq::Agent) -> io::Result<Datanode> {
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let id = store::load_or_create_node_id(&config.data_dir, config.node_id.as_deref())?;
        crate::proto::validate_node_id(&id).map_err(io::Error::other)?;
        log::info(&id, &format!("aether {} starting", crate::VERSION));
        let (blobs, leftovers) = BlobStore::open(&config.data_dir, config.reserve_bytes)?;
        if leftovers > 0 {
            log::warn(&id, &format!("removed {leftovers} unfinished upload(s) left by an earlier run"));
        }
        for repair in blobs.repairs() {
            log::warn(&id, repair);
        }
        let start_up = blobs.start_up();
        for fallback in &start_up.fallbacks {
            log::warn(&id, fallback);
        }
        log::info(
            &id,
            &format!(
                "opened the volumes in {:.2} s: {} from their index files, {} replayed ({} sealed without an index file)",
                start_up.seconds, start_up.from_index, start_up.replayed, start_up.without_index
            ),
        );
        let listener = http::bind(&config.listen)?;
        let bound = listener.local_addr()?;
        let address = match &config.advertise {
            Some(address) => normalize_address(address).map_err(io::Error::other)?,
            None => default_address(bound),
        };
        let master =
            config.master.as_ref().map(|m| Client::new(agent.clone(), m).with_token(config.cluster_token.clone()));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (reporter, reporter_thread) = Reporter::start(&id, master.clone(), stopped.clone());
        let peers = Arc::new(peers::Peers::new(&id, master.clone()));
        let nodes = NodeClient::new(agent.clone(), config.cluster_token.clone(), Arc::clone(&peers) as _)
            .with_hop_timeout(config.hop_timeout);
        let metrics = DatanodeMetrics::new(&blobs);
        let node = Arc::new(Node {
            metrics,
            id: id.clone(),
            address: address.clone(),
            blobs,
            max_object_size: config.max_object_size,
            nodes,
            peers,
            token: config.cluster_token.clone(),
            reporter,
            zone: config.zone.clone(),
            capacity_bytes: config.capacity_bytes,
        });

        let mut threads: Vec<JoinHandle<()>> = reporter_thread.into_iter().collect();
        if let Some(master) = master {
            let timing =
                membership::Timing { heartbeat: config.heartbeat_interval, inventory: config.inventory_interval };
            threads.extend(membership::start(&node, &master, timing, &stopped));
        } else if config.cluster_token.is_none() {
            log::warn(&id, "no --master: this node stands alone until something registers it");
        }
        if config.scrub_rate > 0 {
            let scrub_node = Arc::clone(&node);
            let (stopped, rate, pause) = (stopped.clone(), config.scrub_rate, config.scrub_pause);
            threads.push(spawn(&id, "scrub", move || scrub::run(&scrub_node, rate, pause, &stopped)));
        }

        let compactor_node = Arc::clone(&node);
        let compactor_stopped = stopped.clone();
        threads.push(spawn(&id, "compactor", move || compactor::run(&compactor_node, &compactor_stopped)));
        let (volumes_node, volumes_stopped) = (Arc::clone(&node), stopped.clone());
        threads.push(spawn(&id, "volumes", move || compactor::volumes(&volumes_node, &volumes_stopped)));

        let handler_node = Arc::clone(&node);
        let token = config.cluster_token.clone();
        let priority = move |request: &Request| {
            let endpoint = Endpoint::parse(request.method(), http::path_of(request));
            matches!(endpoint, Ok(Endpoint::Health | Endpoint::Metrics))
                || http::is_cluster_traffic(request, token.as_deref(), endpoint.is_ok_and(|e| e.is_internal()))
        };
        let registry = node.metrics.registry.clone();
        let http =
            HttpServer::serve(listener, config.threads, &config.http, &id, &registry, priority, move |request| {
                handler_node.handle(request)
            })?;
        log::info(
            &id,
            &format!(
                "listening on http://{bound} as {address}, {} objects in {}",
                node.blobs.object_count(),
                config.data_dir.display()
            ),
        );
        Ok(Datanode { http, id, address, stop, threads, _lock: lock })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address this node advertises, e.g. `http://localhost:42101`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn shutdown(self) {
        // Dropping the only sender wakes every background loop at once.
        drop(self.stop);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.http.shutdown();
        log::info(&self.id, "stopped");
    }
}

fn spawn(id: &str, what: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(format!("{id}-{what}")).spawn(f).expect("spawning a background thread")
}

fn default_address(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// The API operations of a datanode.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Metrics,
    PutObject(ObjectId),
    GetObject(ObjectId),
    HeadObject(ObjectId),
    DeleteObject(ObjectId),
    Replicate,
    DeleteObjects,
}

impl Endpoint {
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let post_only = |endpoint| match method {
            Method::Post => Ok(endpoint),
            _ => Err(ApiError::method_not_allowed(method, path, "POST")),
        };
        match path {
            "/health" => {
                return match method {
                    Method::Get | Method::Head => Ok(Endpoint::Health),
                    _ => Err(ApiError::method_not_allowed(method, path, "GET")),
                }
            }
            "/metrics" => {
                return match method {
                    Method::Get | Method::Head => Ok(Endpoint::Metrics),
                    _ => Err(ApiError::method_not_allowed(method, path, "GET")),
                }
            }
            "/internal/replicate" => return post_only(Endpoint::Replicate),
            "/internal/delete" => return post_only(Endpoint::DeleteObjects),
            _ => {}
        }
        let Some(raw_id) = path.strip_prefix("/objects/") else {
            return Err(ApiError::no_route(path));
        };
        let id = ObjectId::parse(raw_id).map_err(ApiError::bad_request)?;
        match method {
            Method::Put => Ok(Endpoint::PutObject(id)),
            Method::Get => Ok(Endpoint::GetObject(id)),
            Method::Head => Ok(Endpoint::HeadObject(id)),
            Method::Delete => Ok(Endpoint::DeleteObject(id)),
            _ => Err(ApiError::method_not_allowed(method, path, "GET, HEAD, PUT, DELETE")),
        }
    }

    /// The metrics label: the variant's name, whatever the object.
    fn name(&self) -> &'static str {
        match self {
            Endpoint::Health => "Health",
            Endpoint::Metrics => "Metrics",
            Endpoint::PutObject(_) => "PutObject",
            Endpoint::GetObject(_) => "GetObject",
            Endpoint::HeadObject(_) => "HeadObject",
            Endpoint::DeleteObject(_) => "DeleteObject",
            Endpoint::Replicate => "Replicate",
            Endpoint::DeleteObjects => "DeleteObjects",
        }
    }

    /// Operations only the master (or another datanode) may ask for.
    fn is_internal(&self) -> bool {
        matches!(self, Endpoint::DeleteObject(_) | Endpoint::Replicate | Endpoint::DeleteObjects)
    }
}

pub(crate) struct Node {
    id: String,
    address: String,
    blobs: BlobStore,
    max_object_size: u64,
    /// Every call to another datanode: only registered ones, with the token.
    nodes: NodeClient,
    /// The registered datanodes as this node knows them: `nodes`' registry.
    peers: Arc<peers::Peers>,
    token: Option<String>,
    reporter: Reporter,
    metrics: DatanodeMetrics,
    zone: Option<String>,
    /// `--capacity`, when given.
    capacity_bytes: Option<u64>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::new(e.status(), e.to_string())
    }
}

impl Node {
    fn handle(self: &Arc<Self>, request: &mut Request) -> Handled {
        let endpoint = match Endpoint::parse(request.method(), http::path_of(request)) {
            Ok(endpoint) => endpoint,
            Err(e) => return e.into(),
        };
        if endpoint.is_internal() {
            if let Err(e) = http::check_token(request, self.token.as_deref()) {
                return e.into();
            }
        }
        let routine = endpoint.is_internal() || matches!(endpoint, Endpoint::Health | Endpoint::Metrics);
        let name = endpoint.name();
        let result = match endpoint {
            Endpoint::Health => Ok(http::json_reply(200, &Health::ok()).into()),
            Endpoint::Metrics => {
                self.metrics.fill(&self.blobs);
                Ok(self.metrics.registry.reply().into())
            }
            Endpoint::PutObject(id) => self.put(request, &id),
            Endpoint::GetObject(id) => {
                Ok(self.get(request, &id).map_or_else(|e| self.get_error(&id, e), Handled::from))
            }
            Endpoint::HeadObject(id) => self.head(&id).map(Handled::from),
            Endpoint::DeleteObject(id) => self.delete(&[id]).map(Handled::from),
            Endpoint::Replicate => self.replicate(request).map(Handled::from),
            Endpoint::DeleteObjects => self.delete_listed(request).map(Handled::from),
        };
        let mut handled = result.unwrap_or_else(Handled::from);
        handled.routine = routine;
        handled.endpoint = name;
        handled
    }

    /// Stores an upload and, for a chained upload, forwards it to the rest of the chain
    /// while it is being written. Answers once this copy is on disk and the chain has
    /// answered, with every node's result.
    fn put(&self, request: &mut Request, id: &ObjectId) -> Result<Handled, ApiError> {
        let declared = match http::header_value(request, "Content-Length") {
            Some(value) => Some(
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("bad Content-Length {value:?}")))?,
            ),
            None => None,
        };
        let expected = http::header_value(request, CHECKSUM_HEADER)
            .map(Checksum::parse)
            .transpose()
            .map_err(ApiError::bad_request)?;
        let chain = parse_chain(http::header_value(request, CHAIN_HEADER))?;
        let signature = http::header_value(request, CHAIN_SIGNATURE_HEADER).map(str::to_string);
        // Refuse before reading a byte, so a client waiting on `100-continue` sends nothing.
        self.blobs.check_writable()?;
        self.check_chain(id, &chain, signature.as_deref())?;
        if self.blobs.contains(id) {
            return Err(StoreError::Exists(*id).into());
        }
        if declared.is_some_and(|len| len > self.max_object_size) {
            return Err(StoreError::TooLarge { limit: self.max_object_size }.into());
        }

        // The body's reader answers a waiting `100 Continue` now, before this node
        // contacts the next: each hop answers within its own hop timeout, whatever
        // happens further down the chain.
        let body = request.as_reader();
        let upload = chain::Upload { id: *id, chain: &chain, signature: signature.as_deref(), declared, expected };
        let mut forward = chain::Forward::start(&self.nodes, &upload, self.blobs.inline_up_to());
        let forwards = forward.forwards();
        let stored = {
            let mut sink = forward.sink();
            let sink = forwards.then_some(&mut sink as &mut dyn FnMut(&[u8]));
            self.blobs.put(id, body, declared, self.max_object_size, expected, sink)
        };
        let downstream = forward.finish();
        if downstream.first().is_some_and(|next| next.status != 201) {
            self.metrics.chain_failures.inc();
        }
        let stored = stored?;
        self.reporter.stored(&ReplicaState { objectid: id.to_string(), size: stored.size, checksum: stored.checksum });

        let object = id.to_string();
        let receipt = Receipt::sign(self.token.as_deref(), &object, &self.id, stored.size, stored.checksum);
        let mut replicas = vec![ReplicaResult {
            node: self.address.clone(),
            status: 201,
            checksum: Some(stored.checksum),
            receipt: Some(receipt),
            error: None,
        }];
        replicas.extend(downstream);
        let reply = with_checksum(
            http::json_reply(
                201,
                &Stored { objectid: id.to_string(), size: stored.size, checksum: stored.checksum, replicas },
            ),
            stored.checksum,
        );
        Ok(Handled { bytes_in: stored.size, ..Handled::from(reply) })
    }

    /// A chain is forwarded only when the master placed it: in a cluster with a token,
    /// the master's signature for this object must name every node of it (which makes
    /// them known as registered); in any cluster, every node must be registered with the
    /// master. Anything else is refused
    /// before this node connects anywhere.
    fn check_chain(&self, id: &ObjectId, chain: &[String], signature: Option<&str>) -> Result<(), ApiError> {
        if chain.is_empty() {
            return Ok(());
        }
        if let Some(token) = self.token.as_deref() {
            let signature = signature.ok_or_else(|| {
                ApiError::new(
                    403,
                    format!(
                        "a chained upload needs the master's {CHAIN_SIGNATURE_HEADER} header from its placement \
                         (POST /api/upload/init answers it as \"signature\")"
                    ),
                )
            })?;
            let signature = ChainSignature::parse(signature).map_err(ApiError::bad_request)?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            signature.verify(token, &id.to_string(), now).map_err(|e| ApiError::new(403, e))?;
            if let Some(stranger) = chain.iter().find(|node| !signature.names(node)) {
                return Err(ApiError::new(403, format!("{stranger} is not a node the master placed this object on")));
            }
            self.peers.learn(&signature.nodes);
        }
        if let Some(stranger) = chain.iter().find(|node| !self.nodes.is_registered(node)) {
            return Err(ApiError::new(
                403,
                format!("{stranger} is not a datanode registered with this node's master; not forwarding to it"),
            ));
        }
        Ok(())
    }

    fn get(self: &Arc<Self>, request: &Request, id: &ObjectId) -> Result<Reply, ApiError> {
        let range = parse_range(http::header_value(request, "Range"))?;
        let read = self.blobs.read_verified(id, range, self.on_corrupt(id)).map_err(|e| self.on_store_error(id, e))?;
        let len = usize::try_from(read.len).expect("object sizes fit in memory addresses on 64-bit hosts");
        let status = if range.is_some() { 206 } else { 200 };
        // Always a Content-Length (tiny_http would switch to chunked encoding past
        // 32 KiB): clients check it, and HEAD answers carry the size in it. A large
        // object found corrupt while it streams ends the reply short of that length and
        // closes the connection (our tiny_http patch), so no client takes it as whole.
        let headers = object_headers(read.object);
        let mut reply = match read.body {
            ObjectBody::Verified { bytes, from } => {
                Response::new(StatusCode(status), headers, Box::new(io::empty()) as Box<dyn Read + Send>, None, None)
                    .with_bytes(bytes, from)
            }
            ObjectBody::Streaming(body) => Response::new(StatusCode(status), headers, body, Some(len), None),
        }
        .with_chunked_threshold(usize::MAX);
        if let Some((start, _)) = range {
            let end = start + read.len - 1;
            reply.add_header(http::header("Content-Range", &format!("bytes {start}-{end}/{}", read.object.size)));
        }
        Ok(reply)
    }

    /// A 416 says how large the object is (`Content-Range: bytes */SIZE`), so the client
    /// can ask for a range that exists.
    fn get_error(&self, id: &ObjectId, error: ApiError) -> Handled {
        let status = error.status;
        let mut handled = Handled::from(error);
        if status == 416 {
            if let Ok(stored) = self.blobs.stat(id) {
                handled.reply.add_header(http::header("Content-Range", &format!("bytes */{}", stored.size)));
            }
        }
        handled
    }

    fn head(&self, id: &ObjectId) -> Result<Reply, ApiError> {
        let stored = self.blobs.stat(id).map_err(|e| self.on_store_error(id, e))?;
        let len = usize::try_from(stored.size).expect("object sizes fit in memory addresses on 64-bit hosts");
        // tiny_http sends no body for HEAD but keeps Content-Length from the length given.
        let body = Box::new(io::empty()) as Box<dyn Read + Send>;
        Ok(Response::new(StatusCode(200), object_headers(stored), body, Some(len), None)
            .with_chunked_threshold(usize::MAX))
    }

    /// A corrupt copy is moved aside and reported the moment it is found.
    fn on_store_error(&self, id: &ObjectId, error: StoreError) -> ApiError {
        if let StoreError::Corrupt { reason, .. } = &error {
            self.quarantine(id, reason);
        }
        error.into()
    }

    /// The same for a copy found corrupt while it streams, after its headers went out.
    fn on_corrupt(self: &Arc<Self>, id: &ObjectId) -> store::OnCorrupt {
        let (node, id) = (Arc::clone(self), *id);
        Box::new(move |error| {
            node.on_store_error(&id, error);
        })
    }

    /// Readers that find the same corrupt copy at once (or a reader and the scrubber)
    /// quarantine and report it once: whoever moves the file.
    pub(crate) fn quarantine(&self, id: &ObjectId, reason: &str) {
        match self.blobs.quarantine(id) {
            Ok(false) => return,
            Ok(true) => log::error(&self.id, &format!("object {id} failed verification ({reason}); quarantined it")),
            Err(e) => log::error(
                &self.id,
                &format!("object {id} failed verification ({reason}) and cannot be quarantined: {e}"),
            ),
        }
        self.reporter.corrupt(id);
    }

    fn delete(&self, ids: &[ObjectId]) -> Result<Reply, ApiError> {
        let mut deleted = 0;
        for id in ids {
            if self.blobs.delete(id).map_err(|e| ApiError::internal(format!("cannot delete {id}: {e}")))? {
                deleted += 1;
            }
        }
        #[derive(Serialize)]
        struct Deleted {
            deleted: usize,
        }
        Ok(http::json_reply(200, &Deleted { deleted }))
    }

    fn delete_listed(&self, request: &mut Request) -> Result<Reply, ApiError> {
        let body: DeleteRequest = http::read_json(request, r#"{"objects": ["<uuid>", ..]}"#)?;
        let ids = body.objects.iter().map(|id| ObjectId::parse(id)).collect::<Result<Vec<_>, _>>();
        self.delete(&ids.map_err(ApiError::bad_request)?)
    }

    /// Copies objects to another node, each verified here and again there.
    fn replicate(self: &Arc<Self>, request: &mut Request) -> Result<Reply, ApiError> {
        let body: ReplicateRequest = http::read_json(request, r#"{"target": "http://..", "objects": ["<uuid>", ..]}"#)?;
        let target = normalize_address(&body.target).map_err(ApiError::bad_request)?;
        if !self.nodes.is_registered(&target) {
            return Err(ApiError::new(
                403,
                format!("{target} is not a datanode registered with this node's master; not copying to it"),
            ));
        }
        let mut results = Vec::with_capacity(body.objects.len());
        for raw in &body.objects {
            let id = ObjectId::parse(raw).map_err(ApiError::bad_request)?;
            let outcome = self.copy_to(&id, &target);
            if let Err(e) = &outcome {
                log::warn(&self.id, &format!("copying {id} to {target} failed: {}", e.message));
            }
            let (status, receipt, error) = match outcome {
                Ok(receipt) => (201, receipt, None),
                Err(e) => (e.status, None, Some(e.message)),
            };
            results.push(ReplicateResult { objectid: id.to_string(), status, error, receipt });
        }
        Ok(http::json_reply(200, &ReplicateResults { results }))
    }

    /// Copies an object to `target`; returns the target's receipt, or none when the target
    /// had the object already. A copy found corrupt on the way ends the upload short, so
    /// the target stores nothing.
    fn copy_to(self: &Arc<Self>, id: &ObjectId, target: &str) -> Result<Option<Receipt>, ApiError> {
        let read = self.blobs.read_verified(id, None, self.on_corrupt(id)).map_err(|e| self.on_store_error(id, e))?;
        let put = ObjectPut {
            id: *id,
            len: Some(read.len),
            checksum: Some(read.object.checksum),
            chain: &[],
            signature: None,
        };
        match self.nodes.put_object(target, &put, read.body.into_reader(), None) {
            Ok(stored) => Ok(stored.replicas.into_iter().next().and_then(|r| r.receipt)),
            // The target has it already: as good as copied (it reported the copy then).
            Err(e) if e.status() == Some(409) => Ok(None),
            Err(e) => Err(ApiError::new(e.status().unwrap_or(502), e.to_string())),
        }
    }
}

fn object_headers(stored: StoredObject) -> Vec<tiny_http::Header> {
    vec![
        http::header("Content-Type", "application/octet-stream"),
        http::header(CHECKSUM_HEADER, &stored.checksum.to_string()),
        http::header("Accept-Ranges", "bytes"),
    ]
}

fn with_checksum(mut reply: Reply, checksum: Checksum) -> Reply {
    reply.add_header(http::header(CHECKSUM_HEADER, &checksum.to_string()));
    reply
}

pub(crate) fn parse_chain(header: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(header) = header.filter(|h| !h.trim().is_empty()) else { return Ok(Vec::new()) };
    let chain: Vec<String> =
        header.split(',').map(normalize_address).collect::<Result<_, _>>().map_err(ApiError::bad_request)?;
    if chain.len() > MAX_CHAIN {
        return Err(ApiError::bad_request(format!("a chain may name at most {MAX_CHAIN} nodes")));
    }
    Ok(chain)
}

/// Parses a single `bytes=START-END` or `bytes=START-` range. Suffix ranges
/// (`bytes=-N`) and lists of ranges are refused: clients of this store resume from an
/// offset, and one range keeps the reply a plain stream.
pub(crate) fn parse_range(header: Option<&str>) -> Result<Option<(u64, Option<u64>)>, ApiError> {
    let Some(header) = header else { return Ok(None) };
    let bad = || ApiError::new(416, format!("range {header:?} is not supported; use bytes=START-END or bytes=START-"));
    let spec = header.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse::<u64>().map_err(|_| bad())?),
    };
    if end.is_some_and(|end| end < start) {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let id = "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03";
        let parsed = ObjectId::parse(id).unwrap();
        let table: &[(Method, String, Result<Endpoint, u16>)] = &[
            (Method::Get, "/health".into(), Ok(Endpoint::Health)),
            (Method::Get, "/metrics".into(), Ok(Endpoint::Metrics)),
            (Method::Put, "/metrics".into(), Err(405)),
            (Method::Put, format!("/objects/{id}"), Ok(Endpoint::PutObject(parsed))),
            (Method::Get, format!("/objects/{id}"), Ok(Endpoint::GetObject(parsed))),
            (Method::Head, format!("/objects/{id}"), Ok(Endpoint::HeadObject(parsed))),
            (Method::Delete, format!("/objects/{id}"), Ok(Endpoint::DeleteObject(parsed))),
            (Method::Post, "/internal/replicate".into(), Ok(Endpoint::Replicate)),
            (Method::Post, "/internal/delete".into(), Ok(Endpoint::DeleteObjects)),
            (Method::Get, "/internal/replicate".into(), Err(405)),
            (Method::Post, format!("/objects/{id}"), Err(405)),
            (Method::Post, "/health".into(), Err(405)),
            (Method::Get, "/objects/../../etc/passwd".into(), Err(400)),
            (Method::Get, "/objects/".into(), Err(400)),
            (Method::Get, "/nope".into(), Err(404)),
        ];
        for (method, path, want) in table {
            let got = Endpoint::parse(method, path).map_err(|e| e.status);
            assert_eq!(&got, want, "{method} {path}");
        }
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range(None).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-99")).unwrap(), Some((0, Some(99))));
        assert_eq!(parse_range(Some("bytes=100-")).unwrap(), Some((100, None)));
        for bad in ["bytes=-5", "bytes=9-3", "items=0-1", "bytes=a-b", "bytes=0-1,5-6"] {
            assert_eq!(parse_range(Some(bad)).unwrap_err().status, 416, "{bad}");
        }
    }

    #[test]
    fn chains_parse() {
        assert!(parse_chain(None).unwrap().is_empty());
        assert_eq!(parse_chain(Some("http://a:1, http://b:2/")).unwrap(), vec!["http://a:1", "http://b:2"]);
        assert!(parse_chain(Some("http://a:1,nope")).is_err());
    }
}
