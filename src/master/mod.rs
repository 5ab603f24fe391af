//! The master: the metadata control plane. It tracks datanodes and their liveness,
//! places new objects, confirms replicas from the datanodes' own reports, answers where
//! an object lives, and keeps every object at its replication factor. It never touches
//! object bytes.
//!
//! Requests are parsed into an `Endpoint` and dispatched by one `match`; all state lives
//! in `db::MetaDb` (durable) and `liveness::Membership` (heartbeats, in memory). The
//! `maintenance` thread moves node states, repairs and expires.

mod db;
pub mod events;
pub mod liveness;
mod maintenance;
mod memo;
mod metrics;
pub mod offline;
pub mod placement;
pub mod repair;
mod s3;
mod ui;
mod uploads;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tiny_http::{Method, Request};

use crate::http::{self, ApiError, Handled, HttpServer, Reply};
use crate::lock::DataDirLock;
use crate::log;
use crate::node_client::{NodeClient, Registry};
use crate::proto::s3::{PutNewEntry, PutNewPart};
use crate::proto::{
    normalize_address, validate_node_id, ChainSignature, ClusterStatus, CompleteBatch, CompleteBatchAnswer,
    CompleteUpload, DrainStatus, Health, Heartbeat, InitUpload, InitUploadBatch, Inventory, NodeCommands, NodeInfo,
    NodeList, ObjectId, ObjectInfo, Placement, PlacementBatch, Receipt, RegisterNode, ReplaceNodes, ReplicaInfo,
    ReplicaReport, StatusOk, MAX_COMPLETE_BATCH, MAX_INIT_BATCH,
};
use db::{Candidate, Confirmation, Counts, Drain, FinishUpload, MetaDb, MetaError, NewUpload, Registered};
use events::{EventKind, Events};
use liveness::{Membership, NodeState, Reported};
use memo::Memo;
use metrics::MasterMetrics;
use uploads::{Placed, Placements, UploadIds};

#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Address to listen on, e.g. `0.0.0.0:42100`; port 0 picks a free one.
    pub listen: String,
    /// Directory of the metadata database (`meta.db`).
    pub data_dir: PathBuf,
    /// Replicas placed per object unless `init` asks otherwise.
    pub replication: usize,
    /// Replicas that must be confirmed for `complete` to succeed; all of them if `None`.
    pub write_quorum: Option<usize>,
    pub threads: usize,
    pub max_object_size: u64,
    /// Silence after which a node is dead (and half of it, suspect).
    pub dead_after: Duration,
    /// Shared secret that internal requests (registration, heartbeats, reports) carry.
    pub cluster_token: Option<String>,
    /// Without a cluster token, the secret the S3 namespace API (access keys and their
    /// secrets) asks for instead; with neither, that API answers no one (`aether dev` sets it).
    pub namespace_token: Option<String>,
    /// Age after which an upload never completed, or a file no one knows, is removed.
    pub upload_grace: Duration,
    /// Re-replication batches in flight at once.
    pub repair_concurrency: usize,
    /// Deadlines and caps for every connection.
    pub http: http::HttpLimits,
    /// Rebalancing stops when every node's used fraction is within this of the others'
    /// (0.10: ten percentage points).
    pub rebalance_band: f64,
    /// Copies the rebalancer moves a second at most; 0 turns it off.
    pub rebalance_rate: f64,
}

impl MasterConfig {
    pub fn new(listen: &str, data_dir: PathBuf) -> MasterConfig {
        MasterConfig {
            listen: listen.to_string(),
            data_dir,
            replication: 2,
            write_quorum: None,
            threads: 16,
            max_object_size: 5 << 40,
            dead_after: Duration::from_secs(12),
            cluster_token: None,
            namespace_token: None,
            upload_grace: Duration::from_secs(3600),
            repair_concurrency: 16,
            http: http::HttpLimits::default(),
            rebalance_band: 0.10,
            rebalance_rate: 10.0,
        }
    }
}

/// The most replicas one object may ask for.
pub const MAX_REPLICATION: usize = 16;
/// The most nodes an upload was not placed on that `complete` asks for a copy.
const MAX_NODES_ASKED: usize = 64;
/// How long `complete` spends asking them.
const ASKING_OTHERS_FOR: Duration = Duration::from_secs(5);
/// How long placement avoids a node a client reported failed.
const FAILED_NODE_PENALTY: Duration = Duration::from_secs(10);
/// How long one `Snapshot` serves the status page and `/metrics`: however many browsers
/// and scrapers there are, the nodes and counts are read at most once a second, and on
/// a database so large that reading them is slow, at most a tenth of the time.
const SNAPSHOT_TTL: Duration = Duration::from_secs(1);
const SNAPSHOT_COST_FACTOR: u32 = 10;
/// `/api/cluster` is read afresh each time while that is cheap, but counting a large
/// database is not (2.1 s at a million objects): callers at the same time share one
/// reading, and a reading serves for ten times what it cost, so that no number of
/// clients keeps the database counting more than a tenth of the time.
const COUNTS_COST_FACTOR: u32 = 10;
/// Placements of uploads in flight kept in memory, per generation (`Placements`): two
/// generations hold the last 100,000 or more, a few hundred bytes each.
const PLACEMENTS_KEPT: usize = 50_000;
/// The largest body of a `complete_batch`: its most uploads, each with receipts of up to
/// the most replicas.
const COMPLETE_BATCH_BODY: u64 = 512 * 1024;

/// What the status page and the state metrics show, read at one time.
pub struct Snapshot {
    /// Milliseconds since the Unix epoch.
    pub taken_ms: i64,
    pub counts: Counts,
    /// Every registered node, its state as the master sees it now.
    pub nodes: Vec<NodeInfo>,
    /// The first `ui::BUCKETS_SHOWN` S3 buckets by name: (name, keys, bytes).
    pub buckets: Vec<(String, u64, u64)>,
}

pub struct Master {
    http: HttpServer,
    stop: Sender<()>,
    maintenance: JoinHandle<()>,
    state: Arc<MasterState>,
    /// Held until the master is dropped: no other server uses its data directory.
    _lock: DataDirLock,
}

impl Master {
    pub fn start(config: MasterConfig, agent: ureq::Agent) -> io::Result<Master> {
        log::info("master", &format!("aether {} starting", crate::VERSION));
        if !(1..=MAX_REPLICATION).contains(&config.replication) {
            return Err(io::Error::other(format!(
                "replication factor {} is out of range 1..={MAX_REPLICATION}",
                config.replication
            )));
        }
        if config.write_quorum.is_some_and(|w| w == 0 || w > config.replication) {
            return Err(io::Error::other(format!(
                "write quorum must be between 1 and the replication factor {}",
                config.replication
            )));
        }
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let db_path = config.data_dir.join("meta.db");
        let db = MetaDb::open(&db_path, config.threads + 2).map_err(io::Error::other)?;
        let metrics = MasterMetrics::new(db.commit_batches());
        let upload_ids = UploadIds::new(&db.upload_secret().map_err(io::Error::other)?);
        // Moves do not survive a restart: their expected copies are dropped.
        db.forget_all_expected().map_err(io::Error::other)?;
        let known = db.nodes().map_err(io::Error::other)?;
        let nodes = Arc::new(RwLock::new(Arc::new(known.iter().map(|n| (n.id.clone(), n.address.clone())).collect())));
        let node_client = NodeClient::new(agent, config.cluster_token.clone(), Arc::clone(&nodes) as Arc<dyn Registry>);
        let drains: HashMap<String, Drain> = known.iter().filter_map(|n| n.drain.map(|d| (n.id.clone(), d))).collect();
        let zones: Vec<(String, String)> =
            known.iter().filter_map(|n| n.zone.clone().map(|z| (n.id.clone(), z))).collect();
        let membership = Membership::new(known.into_iter().map(|n| (n.id, n.state)), config.dead_after, Instant::now());
        for node in drains.keys() {
            membership.set_draining(node, true);
        }
        for (node, zone) in &zones {
            membership.set_zone(node, zone);
        }
        let state = Arc::new(MasterState {
            db,
            config: config.clone(),
            membership,
            node_client,
            scans: Mutex::new(HashMap::new()),
            nodes,
            repairs_in_flight: AtomicU64::new(0),
            versions: Mutex::new(HashMap::new()),
            penalties: Mutex::new(HashMap::new()),
            events: Events::default(),
            metrics,
            snapshot: Memo::new(SNAPSHOT_TTL, SNAPSHOT_COST_FACTOR),
            counts: Memo::new(Duration::ZERO, COUNTS_COST_FACTOR),
            drains: Mutex::new(drains),
            upload_ids,
            placements: Placements::new(PLACEMENTS_KEPT),
        });
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let maintenance_state = Arc::clone(&state);
        let maintenance = std::thread::Builder::new()
            .name("master-maintenance".into())
            .spawn(move || maintenance::run(&maintenance_state, &stopped))?;
        let handler_state = Arc::clone(&state);
        let token = config.cluster_token.clone();
        let priority = move |request: &Request| {
            let endpoint = Endpoint::parse(request.method(), http::path_of(request));
            matches!(endpoint, Ok(Endpoint::Health | Endpoint::Metrics))
                || http::is_cluster_traffic(request, token.as_deref(), endpoint.is_ok_and(|e| e.is_internal()))
        };
        let http = HttpServer::start(
            &config.listen,
            config.threads,
            &config.http,
            "master",
            &state.metrics.registry,
            priority,
            move |request| handler_state.handle(request),
        )?;
        log::info(
            "master",
            &format!(
                "listening on http://{}, metadata in {}, replication {}, write quorum {}, dead after {:?}",
                http.local_addr(),
                db_path.display(),
                config.replication,
                config.write_quorum.unwrap_or(config.replication),
                config.dead_after
            ),
        );
        log::info("master", &format!("status page at http://{}/ui, metrics at /metrics", http.local_addr()));
        if config.cluster_token.is_none() {
            log::warn(
                "master",
                "no cluster token: anyone who can reach this port can register nodes and report replicas; \
                 set --cluster-token (or AETHER_CLUSTER_TOKEN) on the master and every datanode",
            );
        }
        Ok(Master { http, stop, maintenance, state, _lock: lock })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.http.local_addr()
    }

    pub fn shutdown(self) {
        drop(self.stop);
        let _ = self.maintenance.join();
        self.http.shutdown();
        // Connection threads may outlive this, so the database is not closed by a drop;
        // it is left with its log folded in, ready to copy or back up.
        if let Err(e) = self.state.db.checkpoint_all() {
            log::warn("master", &format!("stopping with the metadata log not folded in: {e}"));
        }
        log::info("master", "stopped");
    }
}

/// The API operations of the master.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Metrics,
    StatusPage,
    StatusFragment,
    RegisterNode,
    Heartbeat,
    ReportReplicas,
    Inventory,
    ListNodes,
    ClusterStatus,
    InitUpload,
    InitUploadBatch,
    ReplaceNodes,
    CompleteUpload,
    CompleteUploadBatch,
    GetObject(ObjectId),
    DeleteObject(ObjectId),
    RedirectToReplica(ObjectId),
    /// The S3 namespace (`master/s3.rs`).
    S3(s3::S3Endpoint),
    DrainNode(String),
    UndrainNode(String),
    RemoveNode(String),
}

impl Endpoint {
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let is_get = matches!(method, Method::Get | Method::Head);
        let is_post = *method == Method::Post;
        let (endpoint, allowed, allow) = match path {
            "/health" => (Endpoint::Health, is_get, "GET"),
            "/metrics" => (Endpoint::Metrics, is_get, "GET"),
            "/" | "/ui" => (Endpoint::StatusPage, is_get, "GET"),
            "/ui/fragment" => (Endpoint::StatusFragment, is_get, "GET"),
            "/api/node/register" => (Endpoint::RegisterNode, is_post, "POST"),
            "/api/node/heartbeat" => (Endpoint::Heartbeat, is_post, "POST"),
            "/api/node/inventory" => (Endpoint::Inventory, is_post, "POST"),
            "/api/replicas/report" => (Endpoint::ReportReplicas, is_post, "POST"),
            "/api/nodes" => (Endpoint::ListNodes, is_get, "GET"),
            "/api/cluster" => (Endpoint::ClusterStatus, is_get, "GET"),
            "/api/upload/init" => (Endpoint::InitUpload, is_post, "POST"),
            "/api/upload/init_batch" => (Endpoint::InitUploadBatch, is_post, "POST"),
            "/api/upload/replace" => (Endpoint::ReplaceNodes, is_post, "POST"),
            "/api/upload/complete" => (Endpoint::CompleteUpload, is_post, "POST"),
            "/api/upload/complete_batch" => (Endpoint::CompleteUploadBatch, is_post, "POST"),
            _ if path.starts_with("/api/s3/") => (Endpoint::S3(s3::S3Endpoint::parse(method, path)?), true, ""),
            _ => {
                if let Some(raw_id) = path.strip_prefix("/api/objects/") {
                    let id = ObjectId::parse(raw_id).map_err(ApiError::bad_request)?;
                    match method {
                        Method::Delete => (Endpoint::DeleteObject(id), true, ""),
                        _ => (Endpoint::GetObject(id), is_get, "GET, DELETE"),
                    }
                } else if let Some(raw_id) = path.strip_prefix("/objects/") {
                    let id = ObjectId::parse(raw_id).map_err(ApiError::bad_request)?;
                    (Endpoint::RedirectToReplica(id), is_get, "GET")
                } else if let Some(rest) = path.strip_prefix("/api/nodes/") {
                    let (node, action) = rest.split_once('/').unwrap_or((rest, ""));
                    validate_node_id(node).map_err(ApiError::bad_request)?;
                    let node = node.to_string();
                    match action {
                        "drain" => (Endpoint::DrainNode(node), is_post, "POST"),
                        "undrain" => (Endpoint::UndrainNode(node), is_post, "POST"),
                        "" => (Endpoint::RemoveNode(node), *method == Method::Delete, "DELETE"),
                        _ => return Err(ApiError::no_route(path)),
                    }
                } else {
                    return Err(ApiError::no_route(path));
                }
            }
        };
        if allowed {
            Ok(endpoint)
        } else {
            Err(ApiError::method_not_allowed(method, path, allow))
        }
    }

    /// The metrics label: the variant's name, whatever the object.
    fn name(&self) -> &'static str {
        match self {
            Endpoint::Health => "Health",
            Endpoint::Metrics => "Metrics",
            Endpoint::StatusPage => "StatusPage",
            Endpoint::StatusFragment => "StatusFragment",
            Endpoint::RegisterNode => "RegisterNode",
            Endpoint::Heartbeat => "Heartbeat",
            Endpoint::ReportReplicas => "ReportReplicas",
            Endpoint::Inventory => "Inventory",
            Endpoint::ListNodes => "ListNodes",
            Endpoint::ClusterStatus => "ClusterStatus",
            Endpoint::InitUpload => "InitUpload",
            Endpoint::InitUploadBatch => "InitUploadBatch",
            Endpoint::ReplaceNodes => "ReplaceNodes",
            Endpoint::CompleteUpload => "CompleteUpload",
            Endpoint::CompleteUploadBatch => "CompleteUploadBatch",
            Endpoint::GetObject(_) => "GetObject",
            Endpoint::DeleteObject(_) => "DeleteObject",
            Endpoint::RedirectToReplica(_) => "RedirectToReplica",
            Endpoint::S3(_) => "S3Namespace",
            Endpoint::DrainNode(_) => "DrainNode",
            Endpoint::UndrainNode(_) => "UndrainNode",
            Endpoint::RemoveNode(_) => "RemoveNode",
        }
    }

    /// Requests that come every few seconds from machines (health checks, scrapes, the
    /// status page's refresh, the datanodes' own traffic): logged at debug.
    fn is_routine(&self) -> bool {
        self.is_internal() || matches!(self, Endpoint::Health | Endpoint::Metrics | Endpoint::StatusFragment)
    }

    /// Operations only datanodes may ask for: they change what the master believes.
    fn is_internal(&self) -> bool {
        matches!(
            self,
            Endpoint::RegisterNode
                | Endpoint::Heartbeat
                | Endpoint::ReportReplicas
                | Endpoint::Inventory
                | Endpoint::S3(_)
        )
    }

    /// Operations that need the cluster token, when there is one: the internal ones,
    /// deleting an object, and an operator's drains and removals.
    fn needs_token(&self) -> bool {
        self.is_internal()
            || matches!(
                self,
                Endpoint::DeleteObject(_) | Endpoint::DrainNode(_) | Endpoint::UndrainNode(_) | Endpoint::RemoveNode(_)
            )
    }
}

struct MasterState {
    db: MetaDb,
    config: MasterConfig,
    membership: Membership,
    /// Calls to datanodes (replicate, `HEAD`): only registered ones, with the token.
    node_client: NodeClient,
    /// Inventory scans under way: node → (scan id, when its first batch arrived).
    scans: Mutex<HashMap<String, (String, i64)>>,
    /// Every registered node's (id, address), by id: placement reads it instead of the
    /// database. Addresses change only by registration, which refreshes it. It is also
    /// the `Registry` of the master's `NodeClient`.
    nodes: Arc<RwLock<Arc<Vec<Candidate>>>>,
    repairs_in_flight: AtomicU64,
    /// What each node said it runs, by id: memory only, told again by every heartbeat.
    versions: Mutex<HashMap<String, String>>,
    /// Nodes clients reported failed for an upload, until when placement avoids them.
    penalties: Mutex<HashMap<String, Instant>>,
    /// What happened lately, for the status page.
    events: Events,
    metrics: MasterMetrics,
    /// What the status page and `/metrics` show (`SNAPSHOT_TTL`).
    snapshot: Memo<Snapshot>,
    /// What `/api/cluster` counts (`COUNTS_COST_FACTOR`).
    counts: Memo<Counts>,
    /// Nodes an operator drains, and how far: the database's record, kept in memory for
    /// the maintenance loop.
    drains: Mutex<HashMap<String, Drain>>,
    /// Issues and checks upload ids, which prove themselves (`uploads.rs`).
    upload_ids: UploadIds,
    /// Where uploads in flight were placed: memory only, bounded.
    placements: Placements,
}

impl Registry for RwLock<Arc<Vec<Candidate>>> {
    fn is_registered(&self, address: &str) -> bool {
        self.read().expect("nodes lock").iter().any(|(_, known)| known == address)
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> ApiError {
        ApiError::new(e.status(), e.to_string())
    }
}

impl MasterState {
    fn handle(&self, request: &mut Request) -> Handled {
        let bytes_in = request.body_length().unwrap_or(0) as u64;
        let mut routine = false;
        let mut name = crate::metrics::UNMATCHED;
        let result = Endpoint::parse(request.method(), http::path_of(request)).and_then(|endpoint| {
            routine = endpoint.is_routine();
            name = endpoint.name();
            if endpoint.needs_token() {
                http::check_token(request, self.config.cluster_token.as_deref())?;
            }
            self.dispatch(endpoint, request)
        });
        let mut handled = match result {
            Ok(reply) => Handled::from(reply),
            Err(e) => Handled::from(e),
        };
        handled.bytes_in = bytes_in;
        handled.routine = routine;
        handled.endpoint = name;
        handled
    }

    fn dispatch(&self, endpoint: Endpoint, request: &mut Request) -> Result<Reply, ApiError> {
        match endpoint {
            Endpoint::Health => Ok(http::json_reply(200, &Health::ok())),
            Endpoint::Metrics => {
                self.metrics.fill(&*self.snapshot()?);
                Ok(self.metrics.registry.reply())
            }
            Endpoint::StatusPage => self.status_page(false),
            Endpoint::StatusFragment => self.status_page(true),
            Endpoint::RegisterNode => {
                let body: RegisterNode =
                    http::read_json(request, r#"{"id": "datanode-1", "address": "http://host:42101"}"#)?;
                self.register_node(body)
            }
            Endpoint::Heartbeat => {
                let body: Heartbeat = http::read_json(request, "a heartbeat")?;
                self.heartbeat(body)
            }
            Endpoint::ReportReplicas => {
                let body: ReplicaReport = http::read_json(request, "a replica report")?;
                let corrupt = body.corrupt.len();
                let delete = self.db.report_replicas(&body.node, body.stored, body.corrupt)?;
                if corrupt > 0 {
                    let message =
                        format!("node {} found {corrupt} corrupt copy(ies); they will be re-created", body.node);
                    self.events.record(EventKind::CopyCorrupt, message);
                }
                Ok(http::json_reply(200, &NodeCommands { delete }))
            }
            Endpoint::Inventory => {
                let body: Inventory = http::read_json_limited(request, 16 << 20, "an inventory batch")?;
                self.inventory(body)
            }
            Endpoint::ListNodes => self.list_nodes(),
            Endpoint::ClusterStatus => self.cluster_status(),
            Endpoint::InitUpload => {
                let body: InitUpload = http::read_json(request, r#"{"size": <bytes>}"#)?;
                self.init_upload(body)
            }
            Endpoint::InitUploadBatch => {
                let body: InitUploadBatch = http::read_json(request, r#"{"size": <bytes>, "count": <1 to 64>}"#)?;
                self.init_upload_batch(body)
            }
            Endpoint::ReplaceNodes => {
                let body: ReplaceNodes =
                    http::read_json(request, r#"{"objectid": "<uuid>", "failed": ["http://.."], "count": 1}"#)?;
                self.replace_nodes(body)
            }
            Endpoint::CompleteUpload => {
                let body: CompleteUpload = http::read_json(request, r#"{"objectid": "<uuid>"}"#)?;
                self.complete_upload(body)
            }
            Endpoint::CompleteUploadBatch => {
                let body: CompleteBatch = http::read_json_limited(
                    request,
                    COMPLETE_BATCH_BODY,
                    r#"{"uploads": [{"objectid": "<uuid>", "receipts": [..]}, ..]}"#,
                )?;
                self.complete_upload_batch(body)
            }
            Endpoint::GetObject(id) => self.get_object(id),
            Endpoint::DeleteObject(id) => {
                self.delete_object(id)?;
                log::info("master", &format!("object {id} deleted; its copies are removed as their nodes check in"));
                Ok(http::json_reply(200, &StatusOk::ok()))
            }
            Endpoint::RedirectToReplica(id) => self.redirect(id),
            Endpoint::S3(endpoint) => self.dispatch_s3(endpoint, request),
            Endpoint::DrainNode(node) => self.drain_node(&node),
            Endpoint::UndrainNode(node) => self.undrain_node(&node),
            Endpoint::RemoveNode(node) => self.remove_node(&node),
        }
    }

    /// Starts draining a node: nothing new is placed there, and the maintenance loop
    /// copies each of its objects elsewhere before dropping its copy. Refused at once
    /// when the other nodes are too few to hold every object's replicas.
    fn drain_node(&self, node: &str) -> Result<Reply, ApiError> {
        let known = self.db.nodes()?.into_iter().find(|n| n.id == node);
        let Some(row) = known else {
            return Err(ApiError::not_found(format!("node {node:?} is not registered; `aether nodes` lists them")));
        };
        if row.drain.is_none() {
            let need = self.db.max_replication_on(node)?;
            let others: Vec<String> = self.membership.placeable(0).into_iter().filter(|n| n != node).collect();
            if others.len() < need {
                return Err(ApiError::new(
                    409,
                    format!(
                        "cannot drain node {node}: objects on it need {need} replicas each, but only {} other \
                         node(s) can take copies (alive, with room, not draining){}; start another datanode, or \
                         cancel another drain, first",
                        others.len(),
                        if others.is_empty() { String::new() } else { format!(": {}", others.join(", ")) }
                    ),
                ));
            }
            let mut drains = self.drains.lock().expect("drains lock");
            self.db.set_drain(node, Some(Drain::Draining))?;
            drains.insert(node.to_string(), Drain::Draining);
            drop(drains);
            self.membership.set_draining(node, true);
            self.events.record(
                EventKind::NodeDraining,
                format!(
                    "node {node} is draining: nothing new goes there, and its {} copies are moved to other nodes \
                     (each dropped only once its new copy is confirmed)",
                    row.replicas
                ),
            );
        }
        let drain = self.drains.lock().expect("drains lock").get(node).map(|d| d.as_str().to_string());
        Ok(http::json_reply(200, &DrainStatus { id: node.to_string(), drain, copies_left: row.replicas }))
    }

    /// Cancels a drain: the node takes new copies again; copies already moved stay where
    /// they went.
    fn undrain_node(&self, node: &str) -> Result<Reply, ApiError> {
        let Some(row) = self.db.nodes()?.into_iter().find(|n| n.id == node) else {
            return Err(ApiError::not_found(format!("node {node:?} is not registered; `aether nodes` lists them")));
        };
        if row.drain.is_some() {
            // Under the lock, as the maintenance loop finishing the drain writes.
            let mut drains = self.drains.lock().expect("drains lock");
            self.db.set_drain(node, None)?;
            drains.remove(node);
            drop(drains);
            self.membership.set_draining(node, false);
            self.events.record(
                EventKind::DrainCancelled,
                format!("node {node}'s drain is cancelled: it takes new copies again"),
            );
        }
        Ok(http::json_reply(200, &DrainStatus { id: node.to_string(), drain: None, copies_left: row.replicas }))
    }

    /// Forgets a drained node, or a dead one whose copies were all made again.
    fn remove_node(&self, node: &str) -> Result<Reply, ApiError> {
        self.db.remove_node(node)?;
        self.membership.forget(node);
        self.drains.lock().expect("drains lock").remove(node);
        self.refresh_known()?;
        self.events.record(
            EventKind::NodeRemoved,
            format!("node {node} is removed; if its datanode is still running it registers again as a new, empty node"),
        );
        Ok(http::json_reply(200, &StatusOk::ok()))
    }

    /// Reads placement's list of nodes again from the database, keeping only the nodes
    /// membership knows.
    fn refresh_known(&self) -> Result<(), ApiError> {
        // Read under the lock: two registrations at once must not leave the list of
        // whichever read the database first (without the other node in it).
        let mut known = self.nodes.write().expect("nodes lock");
        // `addresses`, not `nodes`: that one also counts every node's replicas. A row
        // another registration committed may not be in membership yet: that node joins
        // the list when its own registration refreshes it, so a listed node is one
        // placement can choose (CI once saw 16 listed and 14 placeable).
        let mut nodes: Vec<Candidate> =
            self.db.addresses()?.into_iter().filter(|(id, _)| self.membership.get(id).is_some()).collect();
        nodes.sort();
        *known = Arc::new(nodes);
        Ok(())
    }

    fn register_node(&self, body: RegisterNode) -> Result<Reply, ApiError> {
        validate_node_id(&body.id).map_err(ApiError::bad_request)?;
        let address = normalize_address(&body.address).map_err(ApiError::bad_request)?;
        let outcome = self.db.register_node(&body.id, &address)?;
        let before = self.membership.registered(&body.id, Instant::now());
        // Placement's list last: `/api/nodes` lists only the nodes in it, so a node
        // listed there is one placement can already choose. An unchanged node missing
        // from it is one whose first registration failed at this step: it is retried.
        let listed = self.nodes.read().expect("nodes lock").iter().any(|(id, _)| *id == body.id);
        if outcome != Registered::Unchanged || !listed {
            self.refresh_known()?;
        }
        self.note_version(&body.id, body.version);
        self.note_zone(&body.id, body.zone)?;
        match outcome {
            Registered::TookOver { previous } => {
                self.membership.removed(&previous);
                self.events.record(
                    EventKind::NodeTookOver,
                    format!(
                        "node {} registered at {address}, taking it over from node {previous}, which was dead or \
                         failed: {previous} is removed and its copies will be re-created",
                        body.id
                    ),
                );
            }
            Registered::New => {
                self.events.record(EventKind::NodeRegistered, format!("node {} registered at {address}", body.id))
            }
            Registered::AddressChanged => {
                self.events.record(EventKind::NodeMoved, format!("node {} moved to {address}", body.id))
            }
            Registered::Unchanged if before.is_some_and(|s| s != NodeState::Alive) => {
                self.events.record(EventKind::NodeBack, format!("node {} registered again and is alive", body.id))
            }
            Registered::Unchanged => {}
        }
        Ok(http::json_reply(200, &StatusOk::ok()))
    }

    fn heartbeat(&self, body: Heartbeat) -> Result<Reply, ApiError> {
        let now = Instant::now();
        let reported = Reported {
            capacity_bytes: body.capacity_bytes,
            free_bytes: body.free_bytes,
            object_count: body.object_count,
            disk: body.disk,
        };
        let before = self
            .membership
            .heartbeat(&body.id, &reported, now)
            .ok_or_else(|| ApiError::not_found(format!("node {:?} is not registered; register it first", body.id)))?;
        self.note_version(&body.id, body.version);
        self.note_zone(&body.id, body.zone)?;
        let state = NodeState::heard_from(body.disk);
        if before != state {
            self.db.set_node_state(&body.id, state)?;
            match state {
                NodeState::Alive => self
                    .events
                    .record(EventKind::NodeBack, format!("node {} is alive again (was {})", body.id, before.as_str())),
                _ => self.events.record(
                    EventKind::DiskFailed,
                    format!(
                        "node {} reports its disk {} ({}): nothing is placed there and its copies are re-created \
                         elsewhere",
                        body.id,
                        body.disk.as_str(),
                        body.disk_error.as_deref().unwrap_or("no reason given")
                    ),
                ),
            }
        }
        let delete = self.db.take_deletions(&body.id, 1000)?;
        Ok(http::json_reply(200, &NodeCommands { delete }))
    }

    /// Records the zone a node named, in memory and (when it changed) in the database.
    fn note_zone(&self, id: &str, zone: Option<String>) -> Result<(), ApiError> {
        let zone = zone.unwrap_or_default();
        if self.membership.set_zone(id, &zone) {
            self.db.set_zone(id, Some(zone.clone()).filter(|z| !z.is_empty()))?;
            if !zone.is_empty() {
                log::info("master", &format!("node {id} is in zone {zone}"));
            }
        }
        Ok(())
    }

    fn note_version(&self, id: &str, version: Option<String>) {
        let Some(version) = version else { return };
        let mut versions = self.versions.lock().expect("versions lock");
        if versions.get(id) != Some(&version) {
            if let Some(before) = versions.insert(id.to_string(), version.clone()) {
                log::info("master", &format!("node {id} now runs aether {version} (was {before})"));
            }
        }
    }

    fn inventory(&self, body: Inventory) -> Result<Reply, ApiError> {
        let started = {
            let mut scans = self.scans.lock().expect("scans lock");
            let entry = scans.entry(body.node.clone()).or_insert_with(|| (body.scan.clone(), db::now_ms()));
            if entry.0 != body.scan {
                *entry = (body.scan.clone(), db::now_ms());
            }
            entry.1
        };
        let grace = self.config.upload_grace.as_secs();
        let delete = self.db.inventory(&body.node, &body.scan, body.replicas, grace)?;
        if body.done {
            self.scans.lock().expect("scans lock").remove(&body.node);
            let missing = self.db.finish_inventory(&body.node, &body.scan, started)?;
            if missing > 0 {
                self.events.record(
                    EventKind::CopiesLost,
                    format!("node {} no longer has {missing} replica(s); they will be re-created", body.node),
                );
            }
        }
        if !delete.is_empty() {
            log::info("master", &format!("node {} holds {} object(s) to delete", body.node, delete.len()));
        }
        Ok(http::json_reply(200, &NodeCommands { delete }))
    }

    fn list_nodes(&self) -> Result<Reply, ApiError> {
        Ok(http::json_reply(200, &NodeList { nodes: self.node_infos()? }))
    }

    /// Every registered node as `/api/nodes` and the status page show it.
    fn node_infos(&self) -> Result<Vec<NodeInfo>, ApiError> {
        // A node registering is listed once placement knows it, not before.
        let known = Arc::clone(&self.nodes.read().expect("nodes lock"));
        let known: HashSet<&str> = known.iter().map(|(id, _)| id.as_str()).collect();
        let now = Instant::now();
        let versions = self.versions.lock().expect("versions lock").clone();
        let zones = self.membership.zones();
        let nodes = self
            .db
            .nodes()?
            .into_iter()
            .filter(|n| known.contains(n.id.as_str()))
            .map(|n| {
                let member = self.membership.get(&n.id);
                let version = versions.get(&n.id).cloned();
                let silent = member.map_or(0.0, |m| now.saturating_duration_since(m.last_seen).as_secs_f64());
                let zone = zones.get(&n.id).cloned().or(n.zone);
                NodeInfo {
                    state: member.map_or(n.state, |m| m.state).as_str().to_string(),
                    last_seen: rfc3339(db::now_ms() - (silent * 1000.0) as i64),
                    last_seen_secs_ago: (silent * 10.0).round() / 10.0,
                    id: n.id,
                    address: n.address,
                    registered_at: rfc3339(n.registered_at),
                    replicas: n.replicas,
                    capacity_bytes: member.and_then(|m| m.capacity_bytes),
                    free_bytes: member.and_then(|m| m.free_bytes),
                    object_count: member.and_then(|m| m.object_count),
                    version,
                    zone,
                    drain: n.drain.map(|d| d.as_str().to_string()),
                }
            })
            .collect();
        Ok(nodes)
    }

    /// The nodes and counts, read at most once per `SNAPSHOT_TTL` (or ten times what
    /// reading them took); callers meanwhile share the last reading, and wait for one
    /// under way instead of starting another.
    fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        self.snapshot.get(|| -> Result<Snapshot, ApiError> {
            Ok(Snapshot {
                taken_ms: db::now_ms(),
                counts: self.db.counts()?,
                nodes: self.node_infos()?,
                buckets: self.db.bucket_usage(ui::BUCKETS_SHOWN)?,
            })
        })
    }

    /// The status page, or (`fragment`) the part of it the page's refresh replaces.
    fn status_page(&self, fragment: bool) -> Result<Reply, ApiError> {
        let snapshot = self.snapshot()?;
        let events = self.events.recent();
        let repairs = ui::Repairs {
            queued: self.metrics.repairs_queued.get().max(0) as u64,
            running: self.metrics.repairs_running.get().max(0) as u64,
            done: self.metrics.repairs_done.get(),
            failed: self.metrics.repairs_failed.get(),
        };
        let moves = ui::Moves {
            copies_moved: self.metrics.copies_moved.get(),
            rebalancing: self.metrics.rebalancing.get() > 0,
        };
        let view = ui::View {
            snapshot: &snapshot,
            events: &events,
            repairs,
            moves,
            replication: self.config.replication,
            buckets: Some(snapshot.buckets.clone()),
        };
        let html = if fragment { ui::fragment(&view) } else { ui::page(&view) };
        let mut reply = http::bytes_reply(200, html.into_bytes(), "text/html; charset=utf-8");
        reply.add_header(http::header("Cache-Control", "no-store"));
        // Nothing from elsewhere: no external loads, no framing, fetches to this master only.
        reply.add_header(http::header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; \
             frame-ancestors 'none'",
        ));
        reply.add_header(http::header("X-Content-Type-Options", "nosniff"));
        Ok(reply)
    }

    fn cluster_status(&self) -> Result<Reply, ApiError> {
        // Node states come from the database, like the replica counts beside them, so
        // a node reported dead is one whose replicas already count as lost.
        let counts = self.counts.get(|| self.db.counts())?;
        Ok(http::json_reply(
            200,
            &ClusterStatus {
                nodes_alive: counts.nodes_alive,
                nodes_suspect: counts.nodes_suspect,
                nodes_dead: counts.nodes_dead,
                nodes_failed: counts.nodes_failed,
                objects: counts.objects,
                under_replicated: counts.under_replicated,
                repairs_in_flight: self.repairs_in_flight.load(Ordering::Relaxed),
                pending_deletes: counts.pending_deletes,
                nodes_draining: counts.nodes_draining,
                copies_to_move: counts.copies_to_move,
                nodes_drained: counts.nodes_drained,
                version: crate::VERSION.to_string(),
            },
        ))
    }

    /// Chooses `n` of the `known` (id, address) pairs that may take `size` more bytes:
    /// alive nodes first, then (only as far as those do not go) nodes a client recently
    /// reported failed and suspect ones; spread over zones and weighted by free space
    /// (`placement::choose_spread`).
    fn chooser(&self, size: u64) -> impl Fn(&[Candidate], usize) -> Result<Vec<Candidate>, MetaError> {
        let (alive, suspect) = (self.membership.placeable(size), self.membership.fallback(size));
        let penalized = self.penalized(Instant::now());
        let (avoided, preferred): (Vec<String>, Vec<String>) = alive.into_iter().partition(|id| penalized.contains(id));
        let fallback: Vec<String> = avoided.into_iter().chain(suspect).collect();
        let registered = self.nodes.read().expect("nodes lock").len();
        let zones = self.membership.zones();
        let free: HashMap<String, Option<u64>> = preferred
            .iter()
            .chain(&fallback)
            .map(|id| (id.clone(), self.membership.get(id).and_then(|m| m.free_bytes)))
            .collect();
        move |known, n| {
            let pick = |ids: &[String]| -> Vec<placement::Site<Candidate>> {
                known
                    .iter()
                    .filter(|(id, _)| ids.contains(id))
                    .map(|candidate| placement::Site {
                        zone: zones.get(&candidate.0).cloned().unwrap_or_default(),
                        free_bytes: free.get(&candidate.0).copied().flatten(),
                        node: candidate.clone(),
                    })
                    .collect()
            };
            let (first, then) = (pick(&preferred), pick(&fallback));
            let eligible = first.len() + then.len();
            placement::choose_spread(&first, &then, &[], n, &mut rand::thread_rng()).map_err(|e| {
                if eligible >= n {
                    return MetaError::Unavailable(e);
                }
                MetaError::Unavailable(format!(
                    "need {n} datanodes for {n} replicas but only {eligible} of the {registered} registered are \
                     eligible (alive or suspect, not draining, with room for {size} bytes, and neither used by this \
                     upload already nor reported failed by it); start more datanodes or ask for fewer replicas"
                ))
            })
        }
    }

    /// Nodes clients reported failed within the last `FAILED_NODE_PENALTY`.
    fn penalized(&self, now: Instant) -> Vec<String> {
        let mut penalties = self.penalties.lock().expect("penalties lock");
        penalties.retain(|_, until| *until > now);
        penalties.keys().cloned().collect()
    }

    fn init_upload(&self, body: InitUpload) -> Result<Reply, ApiError> {
        let mut placements = self.place_uploads(body.size, body.replication, 1)?;
        Ok(http::json_reply(200, &placements.remove(0)))
    }

    /// `count` placements in one answer, each exactly what `init` would answer: its own
    /// id (and issue time), its own choice of nodes, its own signature.
    fn init_upload_batch(&self, body: InitUploadBatch) -> Result<Reply, ApiError> {
        if !(1..=MAX_INIT_BATCH).contains(&body.count) {
            return Err(ApiError::bad_request(format!(
                "count {} is out of range 1..={MAX_INIT_BATCH}; ask for several batches",
                body.count
            )));
        }
        let placements = self.place_uploads(body.size, body.replication, body.count)?;
        let upload_grace_ms = self.upload_grace_ms() as u64;
        Ok(http::json_reply(200, &PlacementBatch { placements, upload_grace_ms }))
    }

    /// Places `count` new uploads of `size` bytes and `replication` copies (the master's
    /// factor when `None`).
    fn place_uploads(&self, size: u64, replication: Option<usize>, count: usize) -> Result<Vec<Placement>, ApiError> {
        let max = self.config.max_object_size;
        if size > max {
            return Err(ApiError::bad_request(format!(
                "size {size} is larger than the maximum object size of {max} bytes"
            )));
        }
        let replication = replication.unwrap_or(self.config.replication);
        if !(1..=MAX_REPLICATION).contains(&replication) {
            return Err(ApiError::bad_request(format!(
                "replication {replication} is out of range 1..={MAX_REPLICATION}"
            )));
        }
        let known = Arc::clone(&self.nodes.read().expect("nodes lock"));
        let choose = self.chooser(size);
        (0..count)
            .map(|_| {
                // Nothing durable: the id proves it was issued here, for how many copies
                // and when, and the placement is kept in memory (`uploads.rs`).
                let id = self.upload_ids.issue(replication, db::now_ms(), &mut rand::thread_rng());
                let placed = choose(&known, replication)?;
                let (nodes, addresses): (Vec<String>, Vec<String>) = placed.into_iter().unzip();
                self.placements.insert(id, Placed { size, nodes });
                Ok(self.placement(id, addresses))
            })
            .collect()
    }

    /// An upload this master issued the id of, with its placement if still in memory;
    /// `None` for an id of an upload with a row (or of none at all).
    fn new_upload(&self, id: &ObjectId) -> Option<NewUpload> {
        let issued = self.upload_ids.check(id)?;
        let placed = self.placements.get(id).map(|p| p.nodes).unwrap_or_default();
        Some(NewUpload { replication: issued.replication, issued_ms: issued.issued_ms, placed })
    }

    fn upload_grace_ms(&self) -> i64 {
        self.config.upload_grace.as_millis() as i64
    }

    /// Deletes an object, or an upload in flight (which then can no longer complete).
    fn delete_object(&self, id: ObjectId) -> Result<(), ApiError> {
        match (self.db.delete_object(id), self.new_upload(&id)) {
            (Err(MetaError::NotFound(_)), Some(upload)) => {
                self.db.delete_upload(id, upload, self.upload_grace_ms())?;
                self.placements.remove(&id);
                Ok(())
            }
            (done, _) => Ok(done?),
        }
    }

    /// More nodes for an upload in flight, in memory (`replace_nodes` for one with a row).
    fn replace_in_flight(&self, id: ObjectId, upload: NewUpload, body: ReplaceNodes) -> Result<Vec<String>, ApiError> {
        if db::now_ms() - upload.issued_ms >= self.upload_grace_ms() {
            return Err(MetaError::Conflict(format!("upload {id} expired; start a new upload")).into());
        }
        // Completed or deleted already.
        if self.db.has_row(id)? {
            return Err(MetaError::Conflict(format!("object {id} is not an upload in progress")).into());
        }
        let known = Arc::clone(&self.nodes.read().expect("nodes lock"));
        let id_of = |address: &String| known.iter().find(|(_, a)| a == address).map(|(node, _)| node.clone());
        let failed: Vec<String> = body.failed.iter().filter_map(id_of).collect();
        let mut placed = upload.placed;
        placed.retain(|node| !failed.contains(node));
        for node in body.keep.iter().filter_map(id_of) {
            if !placed.contains(&node) {
                placed.push(node);
            }
        }
        let candidates: Vec<Candidate> =
            known.iter().filter(|(node, _)| !placed.contains(node) && !failed.contains(node)).cloned().collect();
        let size = self.placements.get(&id).map_or(0, |p| p.size);
        let chosen = self.chooser(size)(&candidates, body.count)?;
        placed.extend(chosen.iter().map(|(node, _)| node.clone()));
        self.placements.insert(id, Placed { size, nodes: placed });
        Ok(chosen.into_iter().map(|(_, address)| address).collect())
    }

    fn replace_nodes(&self, body: ReplaceNodes) -> Result<Reply, ApiError> {
        let id = ObjectId::parse(&body.objectid).map_err(ApiError::bad_request)?;
        if body.count == 0 || body.count > MAX_REPLICATION {
            return Err(ApiError::bad_request(format!("count must be between 1 and {MAX_REPLICATION}")));
        }
        let upload = self.new_upload(&id);
        let size = match &upload {
            Some(_) => 0,
            None => self.db.object_with_status(id, true)?.size,
        };
        // A node that fails chains is avoided by placement for a while: most likely it
        // is dead and not yet declared so, or cut off from its peers.
        let until = Instant::now() + FAILED_NODE_PENALTY;
        let known = Arc::clone(&self.nodes.read().expect("nodes lock"));
        for (node, _) in known.iter().filter(|(_, address)| body.failed.contains(address)) {
            let before = self.penalties.lock().expect("penalties lock").insert(node.clone(), until);
            self.metrics.chain_failures.inc();
            if before.is_none() {
                log::info(
                    "master",
                    &format!("a client reports node {node} failed upload {id}; placement avoids it for {FAILED_NODE_PENALTY:?}"),
                );
            }
        }
        // Only registered nodes are ever signed: the signature is what lets a datanode
        // hand the upload (and with it the cluster token) to a node.
        if let Some(stranger) = body.keep.iter().find(|address| !known.iter().any(|(_, a)| a == *address)) {
            return Err(ApiError::bad_request(format!(
                "{stranger} in \"keep\" is not a registered datanode; name only nodes of this upload's placement"
            )));
        }
        let keep = body.keep.clone();
        let nodes = match upload {
            Some(upload) => self.replace_in_flight(id, upload, body)?,
            None => self.db.replace_nodes(id, body.failed, body.count, self.chooser(size))?,
        };
        let mut signed = keep;
        signed.extend(nodes.iter().cloned());
        let signature = self.sign_chain(id, &signed);
        Ok(http::json_reply(200, &Placement { objectid: id.to_string(), nodes, signature }))
    }

    /// A placement, signed when the cluster has a token.
    fn placement(&self, id: ObjectId, nodes: Vec<String>) -> Placement {
        let signature = self.sign_chain(id, &nodes);
        Placement { objectid: id.to_string(), nodes, signature }
    }

    /// The signature that lets datanodes forward an upload to `nodes` (registered ones
    /// only), for as long as the upload may be completed; none in an open cluster.
    fn sign_chain(&self, id: ObjectId, nodes: &[String]) -> Option<String> {
        self.config.cluster_token.as_deref().map(|token| {
            let expires = (db::now_ms() / 1000) as u64 + self.config.upload_grace.as_secs();
            ChainSignature::sign(token, &id.to_string(), nodes, expires).to_string()
        })
    }

    /// The copies that receipts vouch for: each signed by a member node for this object.
    fn confirmations(&self, canonical: &str, receipts: &[Receipt]) -> Vec<Confirmation> {
        let token = self.config.cluster_token.as_deref();
        receipts
            .iter()
            .filter(|r| self.membership.get(&r.node).is_some() && r.verify(token, canonical))
            .map(|r| Confirmation { node_id: r.node.clone(), size: r.size, checksum: r.checksum })
            .collect()
    }

    /// An S3 PUT: completes its upload and points the key at it in one durable write
    /// (`MetaDb::put_new_entry`).
    pub(super) fn put_new_entry(&self, body: PutNewEntry) -> Result<Option<String>, ApiError> {
        let entry = body.entry;
        self.complete_with(
            &entry.objectid.clone(),
            body.receipts,
            |upload, grace_ms, quorum, found| self.db.put_new_entry(entry.clone(), upload, grace_ms, quorum, found),
            || self.db.put_entry(entry.clone()),
        )
    }

    /// An S3 UploadPart: completes its upload and records it as the part in one durable
    /// write (`MetaDb::put_new_part`).
    pub(super) fn put_new_part(&self, body: PutNewPart) -> Result<(), ApiError> {
        let part = body.part;
        self.complete_with(
            &part.objectid.clone(),
            body.receipts,
            |upload, grace_ms, quorum, found| self.db.put_new_part(part.clone(), upload, grace_ms, quorum, found),
            || self.db.put_part(part.clone()),
        )
    }

    /// Completes upload `objectid` and records what names it in one durable write
    /// (`together`, given what `finish_upload` takes). When the receipts do not make a
    /// quorum, the upload is completed the slow way (`complete_upload` asks the nodes)
    /// and then named (`after`); a refusal then deletes the object.
    fn complete_with<T>(
        &self,
        objectid: &str,
        receipts: Vec<Receipt>,
        together: impl FnOnce(Option<NewUpload>, i64, usize, Vec<Confirmation>) -> Result<T, MetaError>,
        after: impl FnOnce() -> Result<T, MetaError>,
    ) -> Result<T, ApiError> {
        let id = ObjectId::parse(objectid).map_err(ApiError::bad_request)?;
        let found = self.confirmations(&id.to_string(), &receipts);
        let quorum = self.config.write_quorum.unwrap_or(usize::MAX);
        match together(self.new_upload(&id), self.upload_grace_ms(), quorum, found) {
            Err(MetaError::Unavailable(_)) => {}
            done => {
                let done = done?;
                self.placements.remove(&id);
                return Ok(done);
            }
        }
        self.complete_upload(CompleteUpload { objectid: id.to_string(), receipts })?;
        match after() {
            Ok(done) => Ok(done),
            Err(e) => {
                if matches!(e, MetaError::NotFound(_) | MetaError::Conflict(_) | MetaError::Invalid(_)) {
                    let _ = self.db.delete_object(id);
                }
                Err(e.into())
            }
        }
    }

    /// Completes the uploads of a batch whose receipts make their quorum, all in one
    /// durable commit (a write each), and says which. The others are left as they were
    /// for a `complete` of their own: the slow way (asking nodes) is not taken here, so
    /// that one request costs one commit and never waits on a node.
    fn complete_upload_batch(&self, body: CompleteBatch) -> Result<Reply, ApiError> {
        let count = body.uploads.len();
        if !(1..=MAX_COMPLETE_BATCH).contains(&count) {
            return Err(ApiError::bad_request(format!(
                "{count} uploads is out of range 1..={MAX_COMPLETE_BATCH}; send several batches"
            )));
        }
        let quorum = self.config.write_quorum.unwrap_or(usize::MAX);
        // Each upload the receipts may complete, with its place in the batch.
        let (places, finishing): (Vec<(usize, ObjectId)>, Vec<FinishUpload>) = body
            .uploads
            .iter()
            .enumerate()
            .filter_map(|(place, upload)| {
                let id = ObjectId::parse(&upload.objectid).ok()?;
                let found = self.confirmations(&id.to_string(), &upload.receipts);
                (!found.is_empty()).then(|| ((place, id), FinishUpload { id, upload: self.new_upload(&id), found }))
            })
            .unzip();
        let mut completed = vec![false; count];
        if finishing.is_empty() {
            // Nothing a receipt vouches for: no write (and no sync) for it.
            return Ok(http::json_reply(200, &CompleteBatchAnswer { completed }));
        }
        let outcomes = self.db.finish_uploads(finishing, self.upload_grace_ms(), quorum)?;
        for ((place, id), outcome) in places.into_iter().zip(outcomes) {
            if outcome.is_ok() {
                self.placements.remove(&id);
                completed[place] = true;
            }
        }
        Ok(http::json_reply(200, &CompleteBatchAnswer { completed }))
    }

    /// Completes an upload once enough replicas are confirmed, in one durable write.
    /// Receipts signed by the datanodes usually suffice. Otherwise replicas no datanode
    /// has vouched for yet (the seed's `complete` without receipts, a node without
    /// `--master`) are checked by asking their node directly: the placed nodes first
    /// (from the upload's row, or the master's memory), then other live nodes, and the
    /// upload is completed with what they say.
    fn complete_upload(&self, body: CompleteUpload) -> Result<Reply, ApiError> {
        let id = ObjectId::parse(&body.objectid).map_err(ApiError::bad_request)?;
        let canonical = id.to_string();
        let mut found = self.confirmations(&canonical, &body.receipts);
        let upload = self.new_upload(&id);
        // Without a configured write quorum, every placed replica is needed.
        let quorum = self.config.write_quorum.unwrap_or(usize::MAX);
        let complete = |found: Vec<Confirmation>| {
            let done = self.db.finish_upload(id, upload.clone(), self.upload_grace_ms(), quorum, found);
            if done.is_ok() {
                self.placements.remove(&id);
            }
            done
        };
        // An upload without a row cannot complete on nothing: without receipts (the
        // seed's flow), its nodes are asked first rather than spend a write on it.
        if !(found.is_empty() && upload.is_some() && !self.db.has_row(id)?) {
            match complete(found.clone()) {
                Err(MetaError::Unavailable(_)) => {}
                done => {
                    done?;
                    return Ok(http::json_reply(200, &StatusOk::ok()));
                }
            }
        }
        // Short of copies: an upload of an older version has a pending row, which says
        // where it was placed and what is confirmed; one without has only its id.
        let known = Arc::clone(&self.nodes.read().expect("nodes lock"));
        let (replication, placed, confirmed): (usize, Vec<Candidate>, Vec<String>) =
            match (self.db.object_with_status(id, true), &upload) {
                (Ok(object), _) => (
                    object.replication,
                    object
                        .replicas
                        .iter()
                        .filter(|r| !r.confirmed())
                        .map(|r| (r.node_id.clone(), r.address.clone()))
                        .collect(),
                    object.replicas.iter().filter(|r| r.confirmed()).map(|r| r.node_id.clone()).collect(),
                ),
                (Err(MetaError::NotFound(_)), Some(upload)) => (
                    upload.replication,
                    known.iter().filter(|(node, _)| upload.placed.contains(node)).cloned().collect(),
                    Vec::new(),
                ),
                (Err(e), _) => return Err(e.into()),
            };
        let known_node = |node: &str, found: &[Confirmation]| found.iter().any(|f| f.node_id == node);
        let asked: Vec<Confirmation> = placed
            .iter()
            .filter(|(node, _)| !known_node(node, &found))
            .filter_map(|(node, address)| self.ask_node(node, address, &id))
            .collect();
        found.extend(asked);
        match complete(found.clone()) {
            Err(MetaError::Unavailable(_)) => {}
            done => {
                done?;
                return Ok(http::json_reply(200, &StatusOk::ok()));
            }
        }
        // Still short: a copy confirmed by a datanode counts wherever it landed, so live
        // nodes the upload was not placed on are asked too (the original walk-through
        // PUTs to nodes of its own choosing, and their reports may still be on the way;
        // after a restart the master no longer knows where it placed an upload).
        let copies =
            |found: &[Confirmation]| confirmed.len() + found.iter().filter(|f| !confirmed.contains(&f.node_id)).count();
        let deadline = Instant::now() + ASKING_OTHERS_FOR;
        let others = known
            .iter()
            .filter(|(node, _)| {
                self.membership.get(node).is_some_and(|m| matches!(m.state, NodeState::Alive | NodeState::Suspect))
            })
            .filter(|(node, _)| {
                !placed.iter().any(|(p, _)| p == node) && !confirmed.contains(node) && !known_node(node, &found)
            })
            .take(MAX_NODES_ASKED)
            .cloned()
            .collect::<Vec<Candidate>>();
        for (node, address) in &others {
            if copies(&found) >= replication || Instant::now() > deadline {
                break;
            }
            found.extend(self.ask_node(node, address, &id));
        }
        complete(found)?;
        Ok(http::json_reply(200, &StatusOk::ok()))
    }

    /// `HEAD`s an object on a node: its size and checksum if the node has it.
    fn ask_node(&self, node_id: &str, address: &str, id: &ObjectId) -> Option<Confirmation> {
        match self.node_client.head_object(address, id) {
            Ok((size, checksum)) => Some(Confirmation { node_id: node_id.to_string(), size, checksum }),
            Err(e) => {
                log::info("master", &format!("node {node_id} does not confirm {id}: HEAD {e}"));
                None
            }
        }
    }

    fn get_object(&self, id: ObjectId) -> Result<Reply, ApiError> {
        let object = match self.db.object(id) {
            Err(MetaError::NotFound(_)) if self.placements.get(&id).is_some() => {
                return Err(ApiError::new(
                    404,
                    format!("object {id} is still being uploaded; it is served once /api/upload/complete succeeds"),
                ))
            }
            found => found?,
        };
        // Copies a node has lost or found corrupt are not replicas to read from.
        let readable: Vec<&db::ReplicaRow> = object.replicas.iter().filter(|r| r.confirmed()).collect();
        let info = ObjectInfo {
            objectid: object.id.clone(),
            size: object.size,
            status: object.status.as_str().to_string(),
            replicas: readable.iter().map(|r| r.address.clone()).collect(),
            replica_nodes: readable
                .iter()
                .map(|r| ReplicaInfo {
                    node: r.node_id.clone(),
                    address: r.address.clone(),
                    state: r.node_state.as_str().to_string(),
                })
                .collect(),
            checksum: object.checksum,
            created_at: rfc3339(object.created_at),
            completed_at: object.completed_at.map(rfc3339),
        };
        Ok(http::json_reply(200, &info))
    }

    /// `GET /objects/{id}` on the master: a redirect to a live replica, for `curl -L`.
    fn redirect(&self, id: ObjectId) -> Result<Reply, ApiError> {
        let object = self.db.object(id)?;
        let replica =
            object.replicas.iter().find(|r| r.confirmed() && r.node_state == NodeState::Alive).ok_or_else(|| {
                ApiError::unavailable(format!("no live datanode holds object {id} right now; try again shortly"))
            })?;
        let location = format!("{}/objects/{id}", replica.address);
        let mut reply = http::json_reply(307, &serde_json::json!({ "location": location }));
        reply.add_header(http::header("Location", &location));
        Ok(reply)
    }
}

fn rfc3339(unix_ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
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
            (Method::Get, "/".into(), Ok(Endpoint::StatusPage)),
            (Method::Get, "/ui".into(), Ok(Endpoint::StatusPage)),
            (Method::Get, "/ui/fragment".into(), Ok(Endpoint::StatusFragment)),
            (Method::Post, "/metrics".into(), Err(405)),
            (Method::Post, "/ui".into(), Err(405)),
            (Method::Get, "/ui/other".into(), Err(404)),
            (Method::Post, "/api/node/register".into(), Ok(Endpoint::RegisterNode)),
            (Method::Post, "/api/node/heartbeat".into(), Ok(Endpoint::Heartbeat)),
            (Method::Post, "/api/node/inventory".into(), Ok(Endpoint::Inventory)),
            (Method::Post, "/api/replicas/report".into(), Ok(Endpoint::ReportReplicas)),
            (Method::Get, "/api/nodes".into(), Ok(Endpoint::ListNodes)),
            (Method::Get, "/api/cluster".into(), Ok(Endpoint::ClusterStatus)),
            (Method::Post, "/api/upload/init".into(), Ok(Endpoint::InitUpload)),
            (Method::Post, "/api/upload/init_batch".into(), Ok(Endpoint::InitUploadBatch)),
            (Method::Get, "/api/upload/init_batch".into(), Err(405)),
            (Method::Post, "/api/upload/replace".into(), Ok(Endpoint::ReplaceNodes)),
            (Method::Post, "/api/upload/complete".into(), Ok(Endpoint::CompleteUpload)),
            (Method::Get, format!("/api/objects/{id}"), Ok(Endpoint::GetObject(parsed))),
            (Method::Delete, format!("/api/objects/{id}"), Ok(Endpoint::DeleteObject(parsed))),
            (Method::Get, format!("/objects/{id}"), Ok(Endpoint::RedirectToReplica(parsed))),
            (Method::Post, "/api/nodes/datanode-1/drain".into(), Ok(Endpoint::DrainNode("datanode-1".into()))),
            (Method::Post, "/api/nodes/datanode-1/undrain".into(), Ok(Endpoint::UndrainNode("datanode-1".into()))),
            (Method::Delete, "/api/nodes/datanode-1".into(), Ok(Endpoint::RemoveNode("datanode-1".into()))),
            (Method::Get, "/api/nodes/datanode-1/drain".into(), Err(405)),
            (Method::Post, "/api/nodes/datanode-1/explode".into(), Err(404)),
            (Method::Post, "/api/nodes/bad%20id/drain".into(), Err(400)),
            (Method::Get, "/api/upload/init".into(), Err(405)),
            (Method::Put, format!("/api/objects/{id}"), Err(405)),
            (Method::Put, format!("/objects/{id}"), Err(405)),
            (Method::Delete, "/api/nodes".into(), Err(405)),
            (Method::Get, "/api/objects/not-a-uuid".into(), Err(400)),
            (Method::Get, "/api/objects/../../etc".into(), Err(400)),
            (Method::Get, "/api/unknown".into(), Err(404)),
            (Method::Post, "/api/s3/objects/put".into(), Ok(Endpoint::S3(s3::S3Endpoint::PutEntry))),
            (Method::Post, "/api/s3/objects/put_new".into(), Ok(Endpoint::S3(s3::S3Endpoint::PutNewEntry))),
            (Method::Post, "/api/s3/uploads/part_new".into(), Ok(Endpoint::S3(s3::S3Endpoint::PutNewPart))),
            (Method::Get, "/api/s3/keys".into(), Ok(Endpoint::S3(s3::S3Endpoint::ListKeys))),
            (Method::Get, "/api/s3/objects/put".into(), Err(405)),
            (Method::Post, "/api/s3/nothing".into(), Err(404)),
        ];
        for (method, path, want) in table {
            let got = Endpoint::parse(method, path).map_err(|e| e.status);
            assert_eq!(&got, want, "{method} {path}");
        }
    }
}
