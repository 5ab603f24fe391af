//! `aether`: the one binary of AetherStore. Parses the command line (flags first, then
//! `AETHER_*` environment variables, then defaults), builds a config and calls into the
//! library. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

use aetherstore::client::{self, Client};
use aetherstore::datanode::{Datanode, DatanodeConfig};
use aetherstore::http::HttpLimits;
use aetherstore::log;
use aetherstore::master::{Master, MasterConfig};
use aetherstore::s3::{Gateway, GatewayConfig};

use bench::{BenchConfig, Workload};
use cli::{parse_size, DEFAULT_MASTER};
use dev::DevConfig;

// The command-line glue lives beside this file, in `src/bin/aether/`: it belongs to the
// binary, not to the library's public face.
#[path = "aether/bench.rs"]
mod bench;
#[path = "aether/cli.rs"]
mod cli;
#[path = "aether/completions.rs"]
mod completions;
#[path = "aether/dev.rs"]
mod dev;

#[derive(FromArgs)]
/// AetherStore: a distributed object store. Start a local cluster with `aether dev`.
struct Args {
    /// print the version (and the git commit it was built from) and exit
    #[argh(switch, short = 'V')]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Dev(DevArgs),
    Master(MasterArgs),
    Datanode(DatanodeArgs),
    Put(PutArgs),
    Get(GetArgs),
    Stat(StatArgs),
    Rm(RmArgs),
    Nodes(NodesArgs),
    Cluster(ClusterArgs),
    Bench(BenchArgs),
    S3(S3Args),
    Key(KeyArgs),
    Health(HealthArgs),
    Completions(CompletionsArgs),
    Node(NodeArgs),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "dev")]
/// Run a local cluster until Ctrl-C: the master in this process, each datanode a child process.
struct DevArgs {
    /// directory for all data (default: ./aether-data)
    #[argh(option, default = "PathBuf::from(\"aether-data\")")]
    data: PathBuf,
    /// number of datanodes (default: 3)
    #[argh(option, default = "3")]
    datanodes: usize,
    /// replicas per object (default: 2, or 1 with a single datanode)
    #[argh(option)]
    replication: Option<usize>,
    /// master port; datanode i listens on port+i; 0 picks free ports (default: 42100)
    #[argh(option, default = "42100")]
    port: u16,
    /// the S3 gateway's port; 0 picks a free one (default: the master's port + 100)
    #[argh(option)]
    s3_port: Option<u16>,
    /// log level: error, warn, info or debug (env AETHER_LOG; default info)
    #[argh(option)]
    log_level: Option<String>,
    /// log format: text, or json for one object per line (env AETHER_LOG_FORMAT; default text)
    #[argh(option)]
    log_format: Option<String>,
    /// seconds of silence after which a datanode is dead and its copies are made again (default 12)
    #[argh(option)]
    dead_after: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "master")]
/// Run the metadata server.
struct MasterArgs {
    /// address to listen on (env AETHER_LISTEN; default 0.0.0.0:42100)
    #[argh(option)]
    listen: Option<String>,
    /// directory of the metadata database (env AETHER_DATA; default ./aether-data/master)
    #[argh(option)]
    data: Option<PathBuf>,
    /// replicas per object (env AETHER_REPLICATION; default 2)
    #[argh(option)]
    replication: Option<usize>,
    /// requests handled at once (env AETHER_THREADS; default 16)
    #[argh(option)]
    threads: Option<usize>,
    /// largest object accepted, e.g. 5T (env AETHER_MAX_OBJECT_SIZE; default 5T)
    #[argh(option)]
    max_object_size: Option<String>,
    /// replicas that must be confirmed before an upload completes (env AETHER_WRITE_QUORUM; default: all)
    #[argh(option)]
    write_quorum: Option<usize>,
    /// seconds of silence after which a datanode is dead, half of it suspect (env AETHER_DEAD_AFTER; default 12)
    #[argh(option)]
    dead_after: Option<String>,
    /// shared secret datanodes (and deletes) must present (env AETHER_CLUSTER_TOKEN, which keeps it out of ps; default none: an open cluster)
    #[argh(option)]
    cluster_token: Option<String>,
    /// seconds after which uploads never completed, and files no one knows, are removed (env AETHER_UPLOAD_GRACE; default 3600)
    #[argh(option)]
    upload_grace: Option<String>,
    /// re-replication batches (of up to 64 objects) in flight at once (env AETHER_REPAIR_CONCURRENCY; default 16)
    #[argh(option)]
    repair_concurrency: Option<usize>,
    /// log level: error, warn, info or debug (env AETHER_LOG; default info)
    #[argh(option)]
    log_level: Option<String>,
    /// log format: text, or json for one object per line (env AETHER_LOG_FORMAT; default text)
    #[argh(option)]
    log_format: Option<String>,
    /// connections served at once; 64 more are kept for cluster traffic, others get 503 (env AETHER_MAX_CONNECTIONS; default 512)
    #[argh(option)]
    max_connections: Option<usize>,
    /// seconds a kept-alive connection may wait for its next request (env AETHER_IDLE_TIMEOUT; default 60)
    #[argh(option)]
    idle_timeout: Option<String>,
    /// seconds from a request's first byte to the end of its headers (env AETHER_HEADER_TIMEOUT; default 10)
    #[argh(option)]
    header_timeout: Option<String>,
    /// seconds of silence allowed in a request body or reply, and the window for --min-body-rate (env AETHER_BODY_TIMEOUT; default 20)
    #[argh(option)]
    body_timeout: Option<String>,
    /// bytes per second a request body must average, e.g. 1K (env AETHER_MIN_BODY_RATE; default 1K)
    #[argh(option)]
    min_body_rate: Option<String>,
    /// seconds accept() may keep failing before the server exits non-zero (env AETHER_ACCEPT_FAILURE_LIMIT; default 60)
    #[argh(option)]
    accept_failure_limit: Option<String>,
    /// percentage points of disk usage nodes may differ by before copies move from the fullest to the emptiest (env AETHER_REBALANCE_BAND; default 10)
    #[argh(option)]
    rebalance_band: Option<f64>,
    /// copies the rebalancer moves a second at most, fractions allowed; 0 turns it off (env AETHER_REBALANCE_RATE; default 10)
    #[argh(option)]
    rebalance_rate: Option<f64>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "datanode")]
/// Run a storage node.
struct DatanodeArgs {
    /// address to listen on (env AETHER_LISTEN; default 0.0.0.0:42101)
    #[argh(option)]
    listen: Option<String>,
    /// directory for objects (env AETHER_DATA; default ./aether-data/datanode)
    #[argh(option)]
    data: Option<PathBuf>,
    /// master to register with, e.g. http://10.0.0.1:42100 (env AETHER_MASTER; default none)
    #[argh(option)]
    master: Option<String>,
    /// base URL others reach this node at (env AETHER_ADVERTISE; default from --listen)
    #[argh(option)]
    advertise: Option<String>,
    /// node id (env AETHER_NODE_ID; default the one kept in the data directory, else new)
    #[argh(option)]
    node_id: Option<String>,
    /// requests handled at once (env AETHER_THREADS; default 32)
    #[argh(option)]
    threads: Option<usize>,
    /// largest object accepted, e.g. 5T (env AETHER_MAX_OBJECT_SIZE; default 5T)
    #[argh(option)]
    max_object_size: Option<String>,
    /// disk space uploads must leave free, e.g. 64M (env AETHER_RESERVE; default 64M)
    #[argh(option)]
    reserve: Option<String>,
    /// shared secret of the cluster (env AETHER_CLUSTER_TOKEN, which keeps it out of ps; default none)
    #[argh(option)]
    cluster_token: Option<String>,
    /// seconds between heartbeats, fractions allowed (env AETHER_HEARTBEAT_INTERVAL; default 3)
    #[argh(option)]
    heartbeat_interval: Option<String>,
    /// seconds between full inventories sent to the master (env AETHER_INVENTORY_INTERVAL; default 600)
    #[argh(option)]
    inventory_interval: Option<String>,
    /// bytes per second the scrubber re-reads, e.g. 32M; 0 turns it off (env AETHER_SCRUB_RATE; default 32M)
    #[argh(option)]
    scrub_rate: Option<String>,
    /// seconds between scrub passes (env AETHER_SCRUB_PAUSE; default 3600)
    #[argh(option)]
    scrub_pause: Option<String>,
    /// log level: error, warn, info or debug (env AETHER_LOG; default info)
    #[argh(option)]
    log_level: Option<String>,
    /// log format: text, or json for one object per line (env AETHER_LOG_FORMAT; default text)
    #[argh(option)]
    log_format: Option<String>,
    /// seconds the next node of a chain may take to accept an upload before the hop fails, fractions allowed (env AETHER_HOP_TIMEOUT; default 5)
    #[argh(option)]
    hop_timeout: Option<String>,
    /// connections served at once; 64 more are kept for cluster traffic, others get 503 (env AETHER_MAX_CONNECTIONS; default 512)
    #[argh(option)]
    max_connections: Option<usize>,
    /// seconds a kept-alive connection may wait for its next request (env AETHER_IDLE_TIMEOUT; default 60)
    #[argh(option)]
    idle_timeout: Option<String>,
    /// seconds from a request's first byte to the end of its headers (env AETHER_HEADER_TIMEOUT; default 10)
    #[argh(option)]
    header_timeout: Option<String>,
    /// seconds of silence allowed in a request body or reply, and the window for --min-body-rate (env AETHER_BODY_TIMEOUT; default 20)
    #[argh(option)]
    body_timeout: Option<String>,
    /// bytes per second a request body must average, e.g. 1K (env AETHER_MIN_BODY_RATE; default 1K)
    #[argh(option)]
    min_body_rate: Option<String>,
    /// seconds accept() may keep failing before the server exits non-zero (env AETHER_ACCEPT_FAILURE_LIMIT; default 60)
    #[argh(option)]
    accept_failure_limit: Option<String>,
    /// the zone (rack, room or site) of this node: each object's replicas are spread over zones (env AETHER_ZONE; default none)
    #[argh(option)]
    zone: Option<String>,
    /// space this node offers, e.g. 500G, when less than its disk (env AETHER_CAPACITY; default the disk's)
    #[argh(option)]
    capacity: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "s3")]
/// Run an S3-compatible endpoint (stateless; run as many as you like).
struct S3Args {
    /// address to listen on (env AETHER_LISTEN; default 0.0.0.0:9000)
    #[argh(option)]
    listen: Option<String>,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// region reported to clients (env AETHER_REGION; default us-east-1)
    #[argh(option)]
    region: Option<String>,
    /// serve bucket.ROOT_DOMAIN/key too (virtual-hosted style), e.g. s3.example.com (env AETHER_ROOT_DOMAIN; default none)
    #[argh(option)]
    root_domain: Option<String>,
    /// requests handled at once (env AETHER_THREADS; default 64)
    #[argh(option)]
    threads: Option<usize>,
    /// shared secret of the cluster, sent to the master (env AETHER_CLUSTER_TOKEN; default none)
    #[argh(option)]
    cluster_token: Option<String>,
    /// log level: error, warn, info or debug (env AETHER_LOG; default info)
    #[argh(option)]
    log_level: Option<String>,
    /// log format: text, or json for one object per line (env AETHER_LOG_FORMAT; default text)
    #[argh(option)]
    log_format: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "key")]
/// Manage S3 access keys: create, list, delete, grant.
struct KeyArgs {
    #[argh(subcommand)]
    command: KeyCommand,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// shared secret of the cluster (env AETHER_CLUSTER_TOKEN; default none)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum KeyCommand {
    Create(KeyCreateArgs),
    List(KeyListArgs),
    Delete(KeyDeleteArgs),
    Grant(KeyGrantArgs),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "create")]
/// Create an access key; prints its id and secret.
struct KeyCreateArgs {
    /// a name to remember the key by
    #[argh(positional)]
    name: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// shared secret of the cluster (env AETHER_CLUSTER_TOKEN; default none)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
/// List the access keys (without secrets).
struct KeyListArgs {
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// shared secret of the cluster (env AETHER_CLUSTER_TOKEN; default none)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
/// Delete an access key.
struct KeyDeleteArgs {
    /// the access key id
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// shared secret of the cluster (env AETHER_CLUSTER_TOKEN; default none)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "grant")]
/// Let an access key read, write or own a bucket.
struct KeyGrantArgs {
    /// the access key id
    #[argh(positional)]
    key: String,
    /// the bucket
    #[argh(positional)]
    bucket: String,
    /// read, write or owner
    #[argh(positional)]
    access: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// shared secret of the cluster (env AETHER_CLUSTER_TOKEN; default none)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "put")]
/// Upload a file; prints the new object id.
struct PutArgs {
    /// the file to upload; - (or a pipe or FIFO) uploads standard input, read to its end first
    #[argh(positional)]
    file: PathBuf,
    /// replicas for this object (default: the master's replication factor)
    #[argh(option)]
    replication: Option<usize>,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
/// Download an object to standard output or a file.
struct GetArgs {
    /// the object id that `aether put` printed
    #[argh(positional)]
    id: String,
    /// write to this file instead of standard output
    #[argh(option, short = 'o')]
    output: Option<PathBuf>,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "stat")]
/// Show an object's metadata and replicas.
struct StatArgs {
    /// the object id
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// print the master's JSON answer on one line (the fields of GET /api/objects/ID)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "rm")]
/// Delete an object.
struct RmArgs {
    /// the object id
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// the cluster's token, which deleting needs when the master has one (env AETHER_CLUSTER_TOKEN, which keeps it out of ps)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "nodes")]
/// List the datanodes the master knows.
struct NodesArgs {
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// print the master's JSON answer on one line (the fields of GET /api/nodes)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "cluster")]
/// Show the cluster's health: nodes by state, objects, repairs, deletes.
struct ClusterArgs {
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// print the master's JSON answer on one line (the fields of GET /api/cluster)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "health")]
/// Check a master or datanode: exit 0 when GET /health answers 200 with status ok, else 1 with the reason.
struct HealthArgs {
    /// the server's URL, e.g. http://127.0.0.1:42100 or 10.0.0.5:42101 (default: AETHER_MASTER, else http://127.0.0.1:42100)
    #[argh(positional)]
    url: Option<String>,
    /// seconds to wait for the whole answer, fractions allowed (default 5)
    #[argh(option)]
    timeout: Option<String>,
    /// print the server's JSON answer on one line
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "completions")]
/// Print a shell completion script: aether completions bash > /etc/bash_completion.d/aether
struct CompletionsArgs {
    /// bash, zsh or fish
    #[argh(positional)]
    shell: String,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "node")]
/// Operate on one datanode: drain it, cancel its drain, remove it.
struct NodeArgs {
    #[argh(subcommand)]
    action: NodeAction,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum NodeAction {
    Drain(NodeDrainArgs),
    CancelDrain(NodeCancelDrainArgs),
    Undrain(NodeUndrainArgs),
    Remove(NodeRemoveArgs),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "drain")]
/// Move every copy off a node (each copied elsewhere before it is dropped) and place nothing new there.
struct NodeDrainArgs {
    /// the node id, as `aether nodes` lists it
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// the cluster's token, which this needs when the master has one (env AETHER_CLUSTER_TOKEN, which keeps it out of ps)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "cancel-drain")]
/// Cancel a drain: the node takes new copies again.
struct NodeCancelDrainArgs {
    /// the node id
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// the cluster's token, which this needs when the master has one (env AETHER_CLUSTER_TOKEN, which keeps it out of ps)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "undrain")]
/// The same as cancel-drain.
struct NodeUndrainArgs {
    /// the node id
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// the cluster's token, which this needs when the master has one (env AETHER_CLUSTER_TOKEN, which keeps it out of ps)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
/// Forget a drained node, or a dead one whose copies were all made again.
struct NodeRemoveArgs {
    /// the node id
    #[argh(positional)]
    id: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// the cluster's token, which this needs when the master has one (env AETHER_CLUSTER_TOKEN, which keeps it out of ps)
    #[argh(option)]
    cluster_token: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "bench")]
/// Measure: put, get, mixed, init, lookup against a running cluster; loopback (this
/// machine's TCP bandwidth); populate (fill a stopped master's database for scaling runs).
struct BenchArgs {
    /// put, get, mixed, init, lookup, loopback or populate
    #[argh(positional)]
    workload: String,
    /// master URL (env AETHER_MASTER; default http://127.0.0.1:42100)
    #[argh(option)]
    master: Option<String>,
    /// object size, e.g. 4K, 1M, 64M (default 4K)
    #[argh(option, default = "String::from(\"4K\")")]
    size: String,
    /// concurrent clients; streams for loopback (default 16)
    #[argh(option, default = "16")]
    threads: usize,
    /// operations to run (default: run for --duration)
    #[argh(option)]
    count: Option<u64>,
    /// seconds to run, fractions allowed; with --count, the time limit (default 10, or 600 with --count)
    #[argh(option)]
    duration: Option<String>,
    /// replicas per object (default: the master's replication factor)
    #[argh(option)]
    replication: Option<usize>,
    /// objects uploaded before get, mixed or lookup (default: up to 1000, at most 1 GiB)
    #[argh(option)]
    working_set: Option<usize>,
    /// share of puts in mixed, in percent (default 30)
    #[argh(option, default = "30")]
    put_percent: u32,
    /// lookup: look up the N objects populate created instead of uploading a working set
    #[argh(option)]
    populated: Option<u64>,
    /// populate: the master's data directory (stop the master first)
    #[argh(option)]
    data: Option<PathBuf>,
    /// populate: how many objects the database should hold
    #[argh(option)]
    objects: Option<u64>,
    /// populate: also give each object a key (key-000000000, ..) in this new S3 bucket
    #[argh(option)]
    bucket: Option<String>,
    /// print the report as JSON
    #[argh(switch)]
    json: bool,
}

/// A setting from its flag, else its environment variable, else `None`.
fn setting(flag: Option<String>, var: &str) -> Option<String> {
    flag.or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

fn parsed<T: std::str::FromStr>(flag: Option<T>, var: &str, default: T) -> Result<T, String> {
    match flag {
        Some(value) => Ok(value),
        None => match std::env::var(var) {
            Ok(text) if !text.is_empty() => text.parse().map_err(|_| format!("{var}={text:?} is not valid")),
            _ => Ok(default),
        },
    }
}

fn size_setting(flag: Option<String>, var: &str, default: u64) -> Result<u64, String> {
    setting(flag, var).map_or(Ok(default), |text| parse_size(&text))
}

/// A duration in seconds, fractions allowed.
fn seconds_setting(flag: Option<String>, var: &str, default: Duration) -> Result<Duration, String> {
    match setting(flag, var) {
        None => Ok(default),
        Some(text) => match text.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
            _ => Err(format!("{var} / its flag: {text:?} is not a positive number of seconds")),
        },
    }
}

/// The connection limits of a server, from its flags, then `AETHER_*` variables.
struct HttpFlags {
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    min_body_rate: Option<String>,
    accept_failure_limit: Option<String>,
}

fn http_limits(flags: HttpFlags) -> Result<HttpLimits, String> {
    let default = HttpLimits::default();
    Ok(HttpLimits {
        max_connections: parsed(flags.max_connections, "AETHER_MAX_CONNECTIONS", default.max_connections)?,
        idle_timeout: seconds_setting(flags.idle_timeout, "AETHER_IDLE_TIMEOUT", default.idle_timeout)?,
        header_timeout: seconds_setting(flags.header_timeout, "AETHER_HEADER_TIMEOUT", default.header_timeout)?,
        body_timeout: seconds_setting(flags.body_timeout, "AETHER_BODY_TIMEOUT", default.body_timeout)?,
        min_body_rate: size_setting(flags.min_body_rate, "AETHER_MIN_BODY_RATE", default.min_body_rate)?,
        accept_failure_limit: seconds_setting(
            flags.accept_failure_limit,
            "AETHER_ACCEPT_FAILURE_LIMIT",
            default.accept_failure_limit,
        )?,
    })
}

fn client_for(master: Option<String>) -> Client {
    let master = setting(master, "AETHER_MASTER").unwrap_or_else(|| DEFAULT_MASTER.to_string());
    Client::new(client::agent(), &master)
}

/// Sets the log level and format of a server from its flags, else `AETHER_LOG` and
/// `AETHER_LOG_FORMAT`, else info and text.
fn init_log(level: Option<String>, format: Option<String>) -> Result<(), String> {
    let level = setting(level, "AETHER_LOG").map_or(Ok(log::Level::Info), |t| log::Level::parse(&t))?;
    let format = setting(format, "AETHER_LOG_FORMAT").map_or(Ok(log::Format::Text), |t| log::Format::parse(&t))?;
    log::init(level, format);
    Ok(())
}

fn wait_for_stop_signal() -> Result<(), String> {
    let (stop, stopped) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop.try_send(());
    })
    .map_err(|e| e.to_string())?;
    let _ = stopped.recv();
    Ok(())
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Dev(args) => {
            init_log(args.log_level, args.log_format)?;
            let config = DevConfig {
                data_dir: args.data,
                datanodes: args.datanodes,
                replication: dev::replication_for(args.datanodes, args.replication)?,
                port: args.port,
                dead_after: seconds_setting(args.dead_after, "AETHER_DEAD_AFTER", Duration::from_secs(12))?,
                s3_port: args.s3_port,
            };
            dev::run(&config).map_err(|e| e.to_string())
        }
        Command::Master(args) => {
            init_log(args.log_level, args.log_format)?;
            let listen = setting(args.listen, "AETHER_LISTEN").unwrap_or_else(|| "0.0.0.0:42100".into());
            let data = setting(args.data.map(|p| p.display().to_string()), "AETHER_DATA")
                .unwrap_or_else(|| "aether-data/master".into());
            let mut config = MasterConfig::new(&listen, PathBuf::from(data));
            config.replication = parsed(args.replication, "AETHER_REPLICATION", config.replication)?;
            config.threads = parsed(args.threads, "AETHER_THREADS", config.threads)?;
            config.max_object_size =
                size_setting(args.max_object_size, "AETHER_MAX_OBJECT_SIZE", config.max_object_size)?;
            config.write_quorum = match args.write_quorum {
                Some(w) => Some(w),
                None => setting(None, "AETHER_WRITE_QUORUM")
                    .map(|t| t.parse().map_err(|_| format!("AETHER_WRITE_QUORUM={t:?} is not a number")))
                    .transpose()?,
            };
            config.dead_after = seconds_setting(args.dead_after, "AETHER_DEAD_AFTER", config.dead_after)?;
            config.cluster_token = setting(args.cluster_token, "AETHER_CLUSTER_TOKEN");
            config.upload_grace = seconds_setting(args.upload_grace, "AETHER_UPLOAD_GRACE", config.upload_grace)?;
            config.repair_concurrency =
                parsed(args.repair_concurrency, "AETHER_REPAIR_CONCURRENCY", config.repair_concurrency)?;
            let band = parsed(args.rebalance_band, "AETHER_REBALANCE_BAND", config.rebalance_band * 100.0)?;
            if !(0.0..=100.0).contains(&band) {
                return Err(format!("--rebalance-band {band} is not between 0 and 100 percentage points"));
            }
            config.rebalance_band = band / 100.0;
            config.rebalance_rate = parsed(args.rebalance_rate, "AETHER_REBALANCE_RATE", config.rebalance_rate)?;
            if !(config.rebalance_rate >= 0.0 && config.rebalance_rate.is_finite()) {
                return Err(format!("--rebalance-rate {} is not a number of copies a second", config.rebalance_rate));
            }
            config.http = http_limits(HttpFlags {
                max_connections: args.max_connections,
                idle_timeout: args.idle_timeout,
                header_timeout: args.header_timeout,
                body_timeout: args.body_timeout,
                min_body_rate: args.min_body_rate,
                accept_failure_limit: args.accept_failure_limit,
            })?;
            let master = Master::start(config, client::agent()).map_err(|e| e.to_string())?;
            wait_for_stop_signal()?;
            master.shutdown();
            Ok(())
        }
        Command::Datanode(args) => {
            dev::follow_dev_parent();
            init_log(args.log_level, args.log_format)?;
            let listen = setting(args.listen, "AETHER_LISTEN").unwrap_or_else(|| "0.0.0.0:42101".into());
            let data = setting(args.data.map(|p| p.display().to_string()), "AETHER_DATA")
                .unwrap_or_else(|| "aether-data/datanode".into());
            let mut config = DatanodeConfig::new(&listen, PathBuf::from(data));
            config.master = setting(args.master, "AETHER_MASTER");
            config.advertise = setting(args.advertise, "AETHER_ADVERTISE");
            config.node_id = setting(args.node_id, "AETHER_NODE_ID");
            config.threads = parsed(args.threads, "AETHER_THREADS", config.threads)?;
            config.max_object_size =
                size_setting(args.max_object_size, "AETHER_MAX_OBJECT_SIZE", config.max_object_size)?;
            config.reserve_bytes = size_setting(args.reserve, "AETHER_RESERVE", config.reserve_bytes)?;
            config.cluster_token = setting(args.cluster_token, "AETHER_CLUSTER_TOKEN");
            config.heartbeat_interval =
                seconds_setting(args.heartbeat_interval, "AETHER_HEARTBEAT_INTERVAL", config.heartbeat_interval)?;
            config.inventory_interval =
                seconds_setting(args.inventory_interval, "AETHER_INVENTORY_INTERVAL", config.inventory_interval)?;
            config.scrub_rate = size_setting(args.scrub_rate, "AETHER_SCRUB_RATE", config.scrub_rate)?;
            config.scrub_pause = seconds_setting(args.scrub_pause, "AETHER_SCRUB_PAUSE", config.scrub_pause)?;
            config.hop_timeout = seconds_setting(args.hop_timeout, "AETHER_HOP_TIMEOUT", config.hop_timeout)?;
            config.zone = setting(args.zone, "AETHER_ZONE");
            config.capacity_bytes = setting(args.capacity, "AETHER_CAPACITY").map(|t| parse_size(&t)).transpose()?;
            config.http = http_limits(HttpFlags {
                max_connections: args.max_connections,
                idle_timeout: args.idle_timeout,
                header_timeout: args.header_timeout,
                body_timeout: args.body_timeout,
                min_body_rate: args.min_body_rate,
                accept_failure_limit: args.accept_failure_limit,
            })?;
            let node = Datanode::start(config, client::agent()).map_err(|e| e.to_string())?;
            wait_for_stop_signal()?;
            node.shutdown();
            Ok(())
        }
        Command::Put(args) => {
            let id = cli::put(&client_for(args.master), &args.file, args.replication)?;
            println!("{id}");
            Ok(())
        }
        Command::Get(args) => {
            cli::get(&client_for(args.master), &args.id, args.output.as_deref())?;
            Ok(())
        }
        Command::Stat(args) if args.json => {
            println!("{}", cli::stat_json(&client_for(args.master), &args.id)?);
            Ok(())
        }
        Command::Stat(args) => {
            println!("{}", cli::stat(&client_for(args.master), &args.id)?);
            Ok(())
        }
        Command::Rm(args) => {
            let client = client_for(args.master).with_token(setting(args.cluster_token, "AETHER_CLUSTER_TOKEN"));
            cli::rm(&client, &args.id)
        }
        Command::Nodes(args) if args.json => {
            println!("{}", cli::nodes_json(&client_for(args.master))?);
            Ok(())
        }
        Command::Nodes(args) => {
            print!("{}", cli::nodes(&client_for(args.master))?);
            Ok(())
        }
        Command::Cluster(args) if args.json => {
            println!("{}", cli::cluster_json(&client_for(args.master))?);
            Ok(())
        }
        Command::Cluster(args) => {
            print!("{}", cli::cluster(&client_for(args.master))?);
            Ok(())
        }
        Command::S3(args) => {
            init_log(args.log_level, args.log_format)?;
            let listen = setting(args.listen, "AETHER_LISTEN").unwrap_or_else(|| "0.0.0.0:9000".into());
            let master = setting(args.master, "AETHER_MASTER").unwrap_or_else(|| DEFAULT_MASTER.to_string());
            let mut config = GatewayConfig::new(&listen, &master);
            config.region = setting(args.region, "AETHER_REGION").unwrap_or(config.region);
            config.root_domain = setting(args.root_domain, "AETHER_ROOT_DOMAIN");
            config.threads = parsed(args.threads, "AETHER_THREADS", config.threads)?;
            config.cluster_token = setting(args.cluster_token, "AETHER_CLUSTER_TOKEN");
            let gateway = Gateway::start(config, client::agent()).map_err(|e| e.to_string())?;
            wait_for_stop_signal()?;
            gateway.shutdown();
            Ok(())
        }
        Command::Key(args) => {
            // `--master` and `--cluster-token` may come before or after the key command.
            let client = |master: Option<String>, token: Option<String>| {
                client_for(master.or(args.master.clone()))
                    .with_token(setting(token.or(args.cluster_token.clone()), "AETHER_CLUSTER_TOKEN"))
            };
            let out = match args.command {
                KeyCommand::Create(a) => cli::keys::create(&client(a.master, a.cluster_token), &a.name)?,
                KeyCommand::List(a) => cli::keys::list(&client(a.master, a.cluster_token))?,
                KeyCommand::Delete(a) => cli::keys::delete(&client(a.master, a.cluster_token), &a.id)?,
                KeyCommand::Grant(a) => {
                    cli::keys::grant(&client(a.master, a.cluster_token), &a.key, &a.bucket, &a.access)?
                }
            };
            print!("{out}");
            Ok(())
        }
        Command::Health(args) => {
            let url = setting(args.url, "AETHER_MASTER").unwrap_or_else(|| DEFAULT_MASTER.to_string());
            let timeout = seconds_setting(args.timeout, "--timeout", Duration::from_secs(5))?;
            println!("{}", cli::health(&url, timeout, args.json)?);
            Ok(())
        }
        Command::Completions(args) => {
            print!("{}", completions::script(&args.shell, &command_tree())?);
            Ok(())
        }
        Command::Node(args) => node_command(args),
        Command::Bench(args) => {
            let config = BenchConfig {
                workload: Workload::parse(&args.workload)?,
                master: setting(args.master, "AETHER_MASTER").unwrap_or_else(|| DEFAULT_MASTER.to_string()),
                size: parse_size(&args.size)?,
                threads: args.threads,
                count: args.count,
                duration: args.duration.map(|d| seconds_setting(Some(d), "--duration", Duration::ZERO)).transpose()?,
                replication: args.replication,
                working_set: args.working_set,
                put_percent: args.put_percent.min(100),
                populated: args.populated,
                data_dir: args.data,
                objects: args.objects,
                bucket: args.bucket,
                json: args.json,
            };
            print!("{}", bench::run(&config)?);
            Ok(())
        }
    }
}

/// Every command and flag of `aether`, read from argh's help for each of them.
fn command_tree() -> completions::CommandSpec {
    let help = |words: &[&str]| {
        let mut args = words.to_vec();
        args.push("--help");
        match Args::from_args(&["aether"], &args) {
            Err(early_exit) => early_exit.output,
            Ok(_) => String::new(),
        }
    };
    completions::CommandSpec::read(&["aether"], "", &help)
}

/// `aether node drain|cancel-drain|undrain|remove ID`.
fn node_command(args: NodeArgs) -> Result<(), String> {
    let client = |master: Option<String>, token: Option<String>| {
        client_for(master).with_token(setting(token, "AETHER_CLUSTER_TOKEN"))
    };
    let explain = |e: client::ClientError| match e.status() {
        Some(401) => format!("{e}: this needs the cluster token; set AETHER_CLUSTER_TOKEN (or --cluster-token)"),
        _ => e.to_string(),
    };
    match args.action {
        NodeAction::Drain(a) => {
            let status = client(a.master, a.cluster_token).drain_node(&a.id).map_err(explain)?;
            match status.drain.as_deref() {
                Some("drained") => println!("node {} is drained; `aether node remove {}` forgets it", a.id, a.id),
                _ => println!(
                    "node {} is draining: {} copies to move; `aether nodes` shows the copies left",
                    a.id, status.copies_left
                ),
            }
        }
        NodeAction::CancelDrain(NodeCancelDrainArgs { id, master, cluster_token })
        | NodeAction::Undrain(NodeUndrainArgs { id, master, cluster_token }) => {
            let status = client(master, cluster_token).undrain_node(&id).map_err(explain)?;
            println!("node {id} is no longer draining; it holds {} copies and takes new ones", status.copies_left);
        }
        NodeAction::Remove(a) => {
            client(a.master, a.cluster_token).remove_node(&a.id).map_err(explain)?;
            println!("node {} is removed", a.id);
        }
    }
    Ok(())
}

/// The command line with a lone `-` (standard input, as in every Unix tool) moved after a
/// `--`, where argh takes it for the positional argument it is rather than an option.
fn stdin_dash_as_positional(mut args: Vec<String>) -> Vec<String> {
    if args.iter().any(|a| a == "--") {
        return args;
    }
    // Not when it is an option's value (`get -o -`).
    let dash = (1..args.len()).find(|&i| args[i] == cli::STDIN && !args[i - 1].starts_with('-'));
    if let Some(i) = dash {
        args.remove(i);
        args.push("--".into());
        args.push(cli::STDIN.into());
    }
    args
}

/// `argh::from_env`, but with `stdin_dash_as_positional`.
fn parse_args() -> Args {
    let strings: Vec<String> =
        std::env::args_os().map(|s| s.into_string()).collect::<Result<Vec<_>, _>>().unwrap_or_else(|arg| {
            eprintln!("Invalid utf8: {}", arg.to_string_lossy());
            std::process::exit(1)
        });
    let strings = stdin_dash_as_positional(strings);
    let cmd = "aether";
    let strs: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    Args::from_args(&[cmd], &strs).unwrap_or_else(|early_exit| {
        std::process::exit(match early_exit.status {
            Ok(()) => {
                println!("{}", early_exit.output);
                0
            }
            Err(()) => {
                eprintln!("{}\nRun {cmd} --help for more information.", early_exit.output);
                1
            }
        })
    })
}

fn main() -> ExitCode {
    let args: Args = parse_args();
    if args.version {
        println!("aether {}", aetherstore::VERSION);
        return ExitCode::SUCCESS;
    }
    let Some(command) = args.command else {
        // As argh answers `--help`: the commands, then a word on where to start.
        if let Err(help) = Args::from_args(&["aether"], &["--help"]) {
            eprint!("{}", help.output);
        }
        eprintln!("\naether: error: no command given; try `aether dev` for a local cluster");
        return ExitCode::FAILURE;
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("aether: error: {message}");
            ExitCode::FAILURE
        }
    }
}
