//! The HTTP server setup shared by the master and the datanode: a TCP_NODELAY listener,
//! requests handled on their connection's thread with a cap on how many at once (and
//! room kept for the cluster's own traffic), the limits every connection is held to
//! (`HttpLimits`), per-request logging, and the JSON error type every endpoint answers with.
//!
//! Nagle's algorithm on kept-alive connections costs ~40 ms per small response (the
//! delayed-ACK interplay), so the listening socket is configured before tiny_http sees it;
//! Linux copies TCP_NODELAY onto every accepted socket.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use crate::log;
use crate::metrics::{self, Metrics};
use crate::proto::ErrorBody;

/// The largest JSON request body any control-plane endpoint accepts.
pub const MAX_JSON_BODY: u64 = 64 * 1024;

/// What one client may cost a server: the deadlines and caps every connection is held
/// to (head sizes are fixed: 8 KiB a header line, 64 KiB a head, 8 KiB a URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; 64 more are kept for the cluster's own requests,
    /// and any beyond are answered 503 and closed.
    pub max_connections: usize,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time from the first byte of a request to the end of its head (408 beyond).
    pub header_timeout: Duration,
    /// Longest silence while a body is read or a reply written, and the window over
    /// which a body must average `min_body_rate`.
    pub body_timeout: Duration,
    /// Bytes per second a request body must bring, averaged over each `body_timeout`.
    pub min_body_rate: u64,
    /// How long `accept()` may keep failing before the process exits non-zero.
    pub accept_failure_limit: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 512,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            min_body_rate: 1024,
            accept_failure_limit: Duration::from_secs(60),
        }
    }
}

/// Connections beyond `max_connections` kept for priority requests.
const RESERVED_CONNECTIONS: usize = 64;

/// An error as a client sees it: an HTTP status and a sentence, sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Set for 405 answers: the methods the path does accept.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), allow: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(409, message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, message)
    }
    pub fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> ApiError {
        ApiError {
            status: 405,
            message: format!("method {method} is not allowed on {path}; use {allow}"),
            allow: Some(allow),
        }
    }
    pub fn no_route(path: &str) -> ApiError {
        ApiError::not_found(format!("no such endpoint: {path}"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

/// A response ready to be sent, with the byte count the request log reports.
pub type Reply = Response<Box<dyn Read + Send>>;

pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header names are valid")
}

pub fn json_reply<T: Serialize>(status: u16, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).expect("wire types always serialize");
    bytes_reply(status, bytes, "application/json")
}

pub fn bytes_reply(status: u16, bytes: Vec<u8>, content_type: &str) -> Reply {
    let len = bytes.len();
    Response::new(
        StatusCode(status),
        vec![header("Content-Type", content_type)],
        Box::new(io::Cursor::new(bytes)) as Box<dyn Read + Send>,
        Some(len),
        None,
    )
}

pub fn error_reply(err: &ApiError) -> Reply {
    let mut reply = json_reply(err.status, &ErrorBody { error: err.message.clone() });
    if let Some(allow) = err.allow {
        reply.add_header(header("Allow", allow));
    }
    reply
}

/// The path of a request without its query string.
pub fn path_of(request: &Request) -> &str {
    let url = request.url();
    url.split_once('?').map_or(url, |(path, _)| path)
}

pub fn header_value<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str())
}

/// Reads and parses a small JSON body; anything malformed or oversized is a 400 that
/// names what was expected.
pub fn read_json<T: DeserializeOwned>(request: &mut Request, expected: &str) -> Result<T, ApiError> {
    read_json_limited(request, MAX_JSON_BODY, expected)
}

/// `read_json` for the few bodies allowed to be larger (datanode inventories).
pub fn read_json_limited<T: DeserializeOwned>(
    request: &mut Request,
    limit: u64,
    expected: &str,
) -> Result<T, ApiError> {
    let too_large = || ApiError::new(413, format!("JSON body is larger than {limit} bytes; send smaller batches"));
    if request.body_length().is_some_and(|len| len as u64 > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("could not read request body: {e}")))?;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body ({e}); expected {expected}")))
}

/// Checks the cluster token of an internal request: with a token configured, a request
/// without the same token is refused with 401 before it changes anything.
pub fn check_token(request: &Request, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = header_value(request, crate::proto::TOKEN_HEADER).unwrap_or_default();
    // Compare every byte whatever the outcome, so timing says nothing about the token.
    let same =
        given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(401, format!("this cluster requires its token in the {} header", crate::proto::TOKEN_HEADER)))
    }
}

/// What a handler produced: the reply, and for the request log how many body bytes it
/// took in and, for an error, what went wrong.
pub struct Handled {
    pub reply: Reply,
    pub bytes_in: u64,
    pub error: Option<String>,
    /// Routine traffic (health checks, the cluster's own internal requests): logged at
    /// debug when it succeeds, so heartbeats do not drown what an operator needs to see.
    pub routine: bool,
    /// The metrics label of the request: the name of its `Endpoint` variant, never a
    /// raw path, so the number of label values stays bounded (`metrics::UNMATCHED` for
    /// a request no endpoint matched).
    pub endpoint: &'static str,
}

impl From<Reply> for Handled {
    fn from(reply: Reply) -> Handled {
        Handled { reply, bytes_in: 0, error: None, routine: false, endpoint: metrics::UNMATCHED }
    }
}

impl From<ApiError> for Handled {
    fn from(err: ApiError) -> Handled {
        Handled {
            reply: error_reply(&err),
            bytes_in: 0,
            error: Some(err.message),
            routine: false,
            endpoint: metrics::UNMATCHED,
        }
    }
}

/// Whether a request is the cluster's own traffic, which has room kept for it in the
/// request gate and among connections: with a cluster token, any request that carries
/// it; in an open cluster, the internal endpoints (`internal_endpoint`).
pub fn is_cluster_traffic(request: &Request, token: Option<&str>, internal_endpoint: bool) -> bool {
    match token {
        Some(_) => check_token(request, token).is_ok(),
        None => internal_endpoint,
    }
}

/// A running HTTP server. Each connection's requests are handled on the thread that
/// reads that connection (tiny_http's pool grows a thread per open connection), so a
/// request costs no hand-off between threads; at most `threads` are handled at once,
/// plus a quarter more for priority requests (health checks, the cluster's own traffic).
pub struct HttpServer {
    server: tiny_http::Server,
    gate: Arc<Gate>,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `listen` with TCP_NODELAY and serves it, handling at most `threads` requests
    /// at once, each by one call of `handler`. `name` prefixes the request log lines;
    /// every request is counted and timed in `metrics`; `priority` says which requests
    /// get the room kept for priority traffic.
    pub fn start<P, H>(
        listen: &str,
        threads: usize,
        limits: &HttpLimits,
        name: &str,
        metrics: &Metrics,
        priority: P,
        handler: H,
    ) -> io::Result<HttpServer>
    where
        P: Fn(&Request) -> bool + Send + Sync + 'static,
        H: Fn(&mut Request) -> Handled + Send + Sync + 'static,
    {
        HttpServer::serve(bind(listen)?, threads, limits, name, metrics, priority, handler)
    }

    /// Serves a listener made by `bind`, for callers that need its address first.
    pub fn serve<P, H>(
        listener: TcpListener,
        threads: usize,
        limits: &HttpLimits,
        name: &str,
        metrics: &Metrics,
        priority: P,
        handler: H,
    ) -> io::Result<HttpServer>
    where
        P: Fn(&Request) -> bool + Send + Sync + 'static,
        H: Fn(&mut Request) -> Handled + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let threads = threads.max(1);
        let gate = Arc::new(Gate::new(threads, (threads / 4).max(4)));
        let priority: Arc<dyn Fn(&Request) -> bool + Send + Sync> = Arc::new(priority);
        let (inner_gate, inner_priority, log_name) = (Arc::clone(&gate), Arc::clone(&priority), name.to_string());
        let report_metrics = metrics.clone();
        let metrics = metrics.clone();
        let serve_one =
            move |request: Request| serve_one(request, &log_name, &metrics, &inner_gate, &*inner_priority, &handler);
        let report_name = name.to_string();
        let tiny_limits = tiny_http::Limits {
            head_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            body_timeout: limits.body_timeout,
            min_body_rate: limits.min_body_rate,
            max_connections: limits.max_connections.max(1),
            reserved_connections: RESERVED_CONNECTIONS,
            is_priority: Some(priority),
            accept_failure_limit: limits.accept_failure_limit,
            report: Some(Arc::new(move |trouble| match trouble {
                tiny_http::Trouble::Warning(message) => log::warn(&report_name, &message),
                tiny_http::Trouble::Refused { status, peer, reason } => {
                    // Logged and counted like a handler's answer, so that an operator sees
                    // who sends malformed, oversized or too-slow requests.
                    report_metrics.observe_request(metrics::UNMATCHED, status, 0.0, 0, 0);
                    let peer = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
                    log::info(&report_name, &format!("refused a request from {peer}: {status} {reason}"));
                }
                tiny_http::Trouble::Fatal(message) => {
                    // A server that cannot take connections must not live on looking
                    // healthy (heartbeating as alive): exit, and let the supervisor restart it.
                    log::error(&report_name, &format!("{message}; exiting"));
                    std::process::exit(1);
                }
            })),
            ..tiny_http::Limits::default()
        };
        let server = tiny_http::Server::from_listener_with_handler(listener, Arc::new(serve_one), tiny_limits)
            .map_err(|e| io::Error::other(format!("cannot serve {addr}: {e}")))?;
        Ok(HttpServer { server, gate, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests (later ones get a 503) and waits for the ones under way.
    pub fn shutdown(self) {
        self.gate.close();
        drop(self.server);
    }
}

/// Admits at most `limit` requests at once, and `reserved` more priority ones; at
/// shutdown, none.
struct Gate {
    limit: usize,
    reserved: usize,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    busy: usize,
    waiting: usize,
    closed: bool,
}

impl Gate {
    fn new(limit: usize, reserved: usize) -> Gate {
        Gate { limit, reserved, state: Mutex::new(GateState::default()), changed: Condvar::new() }
    }

    /// Waits for room; `false` once the gate is closed.
    fn enter(&self, priority: bool) -> bool {
        let room = if priority { self.limit + self.reserved } else { self.limit };
        let mut state = self.state.lock().expect("gate lock");
        while state.busy >= room && !state.closed {
            state.waiting += 1;
            state = self.changed.wait(state).expect("gate lock");
            state.waiting -= 1;
        }
        if state.closed {
            return false;
        }
        state.busy += 1;
        true
    }

    fn leave(&self) {
        let mut state = self.state.lock().expect("gate lock");
        state.busy -= 1;
        // Waking costs a system call; only pay it when someone waits.
        if state.waiting > 0 {
            self.changed.notify_all();
        }
    }

    /// Refuses new requests and waits until the admitted ones are done.
    fn close(&self) {
        let mut state = self.state.lock().expect("gate lock");
        state.closed = true;
        self.changed.notify_all();
        while state.busy > 0 {
            state.waiting += 1;
            state = self.changed.wait(state).expect("gate lock");
            state.waiting -= 1;
        }
    }
}

/// Leaves the gate when dropped, also when a handler panics.
struct Admitted<'a>(&'a Gate);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

fn serve_one<H>(
    mut request: Request,
    name: &str,
    metrics: &Metrics,
    gate: &Gate,
    priority: &dyn Fn(&Request) -> bool,
    handler: &H,
) where
    H: Fn(&mut Request) -> Handled,
{
    // A small body is read before the gate, so a client sending it slowly holds its own
    // connection only, never a slot of the gate (the connection's deadlines bound it).
    if let Err(e) = request.buffer_body(MAX_JSON_BODY as usize) {
        let status = if e.kind() == io::ErrorKind::TimedOut { 408 } else { 400 };
        let err = ApiError::new(status, format!("could not read request body: {e}"));
        metrics.observe_request(metrics::UNMATCHED, status, 0.0, 0, 0);
        log::info(name, &format!("{} {} {status}: {}", request.method(), request.url(), err.message));
        let _ = request.respond(error_reply(&err));
        return;
    }
    if !gate.enter(priority(&request)) {
        let _ = request.respond(error_reply(&ApiError::unavailable("the server is shutting down")));
        return;
    }
    let _admitted = Admitted(gate);
    let started = Instant::now();
    let method = request.method().clone();
    let url = request.url().to_string();
    let handled = handler(&mut request);
    let status = handled.reply.status_code().0;
    let bytes_out = handled.reply.data_length().unwrap_or(0);
    let result = request.respond(handled.reply);
    let elapsed = started.elapsed();
    metrics.observe_request(handled.endpoint, status, elapsed.as_secs_f64(), handled.bytes_in, bytes_out as u64);
    let mut outcome = match &handled.error {
        Some(message) => format!(": {message}"),
        None => String::new(),
    };
    if let Err(e) = result {
        outcome.push_str(&format!(" (reply not delivered: {e})"));
    }
    // Health checks and heartbeats come every few seconds; only the ones that fail are
    // worth a line at the default level.
    let level =
        if handled.routine && status < 400 && outcome.is_empty() { log::Level::Debug } else { log::Level::Info };
    if !log::enabled(level) {
        return;
    }
    log::log(
        level,
        name,
        &format!(
            "{method} {url} {status} in={} out={bytes_out} {:.1}ms{outcome}",
            handled.bytes_in,
            elapsed.as_secs_f64() * 1000.0
        ),
    );
}

/// Binds a listening socket with TCP_NODELAY (inherited by every accepted connection).
///
/// A port held only by connections (one closing, or an outgoing one that was given this
/// port) is free again soon, so the bind is tried again for up to `BIND_RETRY_FOR`; a
/// port another server listens on fails at once. Either way the error names the sockets
/// holding the port, as this host's `/proc/net/tcp` lists them.
pub fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("bad listen address {listen:?}: {e}")))?
        .next()
        .ok_or_else(|| io::Error::other(format!("listen address {listen:?} resolves to nothing")))?;
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    let deadline = Instant::now() + BIND_RETRY_FOR;
    loop {
        let error = match socket.bind(&addr.into()) {
            Ok(()) => break,
            Err(e) => e,
        };
        let holders = if error.kind() == io::ErrorKind::AddrInUse { port_holders(addr.port()) } else { Vec::new() };
        let listening = holders.iter().any(PortHolder::listening);
        if error.kind() != io::ErrorKind::AddrInUse || listening || Instant::now() >= deadline {
            let mut message = format!("cannot listen on {addr}: {error}");
            // A listener is the whole story; connections (a busy port has hundreds) are
            // named a few at a time.
            let named: Vec<&PortHolder> = holders.iter().filter(|h| h.listening() || !listening).collect();
            if !named.is_empty() {
                let mut held: Vec<String> = named.iter().take(3).map(|h| h.to_string()).collect();
                if named.len() > 3 {
                    held.push(format!("{} more", named.len() - 3));
                }
                message.push_str(&format!(" (held by {})", held.join(", ")));
            }
            if holders.iter().any(|h| h.listening() && h.local.ip() == std::net::Ipv4Addr::new(127, 0, 0, 11)) {
                message.push_str(
                    "; 127.0.0.11 is Docker's embedded DNS server, which takes a random port of the \
                     container's network: listen on the container's own address instead of a wildcard",
                );
            }
            return Err(io::Error::new(error.kind(), message));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    socket.listen(1024)?;
    Ok(socket.into())
}

/// How long `bind` waits for a port that only connections hold.
const BIND_RETRY_FOR: Duration = Duration::from_secs(10);

/// A TCP socket bound to a port, from `/proc/net/tcp` or `/proc/net/tcp6`.
struct PortHolder {
    local: SocketAddr,
    remote: SocketAddr,
    /// The kernel's TCP state number (`include/net/tcp_states.h`).
    state: u8,
}

impl PortHolder {
    fn listening(&self) -> bool {
        self.state == 0x0A
    }
}

impl fmt::Display for PortHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.listening() {
            return write!(f, "a listening socket on {}", self.local);
        }
        let state = match self.state {
            0x01 => "established",
            0x02 => "SYN sent",
            0x03 => "SYN received",
            0x04 => "FIN wait 1",
            0x05 => "FIN wait 2",
            0x06 => "TIME_WAIT",
            0x07 => "closed",
            0x08 => "close wait",
            0x09 => "last ACK",
            0x0B => "closing",
            _ => "unknown state",
        };
        write!(f, "a connection {} -> {} ({state})", self.local, self.remote)
    }
}

/// The TCP sockets of this network namespace bound to local `port` (none when `/proc`
/// cannot be read: the error then goes without them).
fn port_holders(port: u16) -> Vec<PortHolder> {
    let mut holders = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        holders.extend(text.lines().skip(1).filter_map(parse_proc_tcp_line).filter(|h| h.local.port() == port));
    }
    holders
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st ...`, addresses as hex words in the
/// host's byte order, then `:PORT` in hex.
fn parse_proc_tcp_line(line: &str) -> Option<PortHolder> {
    let mut fields = line.split_whitespace().skip(1);
    let (local, remote, state) = (fields.next()?, fields.next()?, fields.next()?);
    Some(PortHolder {
        local: parse_proc_addr(local)?,
        remote: parse_proc_addr(remote)?,
        state: u8::from_str_radix(state, 16).ok()?,
    })
}

fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
        .collect::<Option<_>>()?;
    // Each 32-bit word is printed as the host reads it from memory in network order.
    let ip: std::net::IpAddr = match words[..] {
        [v4] => std::net::Ipv4Addr::from(u32::from_be_bytes(v4.to_ne_bytes())).into(),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let listen = "   3: 0B00007F:A475 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        let holder = parse_proc_tcp_line(listen).unwrap();
        assert_eq!(holder.to_string(), "a listening socket on 127.0.0.11:42101");
        let v6 = "   0: 00000000000000000000000001000000:A474 00000000000000000000000001000000:D2F0 06 0 0 0";
        let holder = parse_proc_tcp_line(v6).unwrap();
        assert_eq!(holder.to_string(), "a connection [::1]:42100 -> [::1]:54000 (TIME_WAIT)");
        assert!(parse_proc_tcp_line("  sl  local_address rem_address   st").is_none());
    }

    #[test]
    fn a_port_another_server_listens_on_is_refused_at_once_naming_it() {
        let taken = bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let started = Instant::now();
        let error = bind(&addr.to_string()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(started.elapsed() < BIND_RETRY_FOR, "a listening holder is not waited for");
        assert!(error.to_string().contains(&format!("held by a listening socket on {addr}")), "{error}");
    }

    #[test]
    fn error_reply_is_json_with_allow_header() {
        let err = ApiError::method_not_allowed(&Method::Get, "/api/upload/init", "POST");
        let reply = error_reply(&err);
        assert_eq!(reply.status_code().0, 405);
        assert!(reply.headers().iter().any(|h| h.field.equiv("Allow") && h.value == "POST"));
    }
}
