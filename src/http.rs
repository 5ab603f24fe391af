//! The HTTP server setup shared by the master and the datanode: a TCP_NODELAY listener,
//! requests handled on their connection's thread with a cap on how many at once,
//! per-request logging, and the JSON error type every endpoint answers with.
//!
//! Nagle's algorithm on kept-alive connections costs ~40 ms per small response (the
//! delayed-ACK interplay), so the listening socket is configured before tiny_http sees it;
//! Linux copies TCP_NODELAY onto every accepted socket.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use crate::log;
use crate::proto::ErrorBody;

/// The largest JSON request body any control-plane endpoint accepts.
pub const MAX_JSON_BODY: u64 = 64 * 1024;

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
}

impl From<Reply> for Handled {
    fn from(reply: Reply) -> Handled {
        Handled { reply, bytes_in: 0, error: None, routine: false }
    }
}

impl From<ApiError> for Handled {
    fn from(err: ApiError) -> Handled {
        Handled { reply: error_reply(&err), bytes_in: 0, error: Some(err.message), routine: false }
    }
}

/// A running HTTP server. Each connection's requests are handled on the thread that
/// reads that connection (tiny_http's pool grows a thread per open connection), so a
/// request costs no hand-off between threads; at most `threads` are handled at once.
pub struct HttpServer {
    server: tiny_http::Server,
    gate: Arc<Gate>,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `listen` with TCP_NODELAY and serves it, handling at most `threads` requests
    /// at once, each by one call of `handler`. `name` prefixes the request log lines.
    pub fn start<H>(listen: &str, threads: usize, name: &str, handler: H) -> io::Result<HttpServer>
    where
        H: Fn(&mut Request) -> Handled + Send + Sync + 'static,
    {
        HttpServer::serve(bind(listen)?, threads, name, handler)
    }

    /// Serves a listener made by `bind`, for callers that need its address first.
    pub fn serve<H>(listener: TcpListener, threads: usize, name: &str, handler: H) -> io::Result<HttpServer>
    where
        H: Fn(&mut Request) -> Handled + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate::new(threads.max(1)));
        let (inner_gate, name) = (Arc::clone(&gate), name.to_string());
        let serve_one = move |request: Request| serve_one(request, &name, &inner_gate, &handler);
        let server = tiny_http::Server::from_listener_with_handler(listener, Arc::new(serve_one))
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

/// Admits at most `limit` requests at once and, at shutdown, none.
struct Gate {
    limit: usize,
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
    fn new(limit: usize) -> Gate {
        Gate { limit, state: Mutex::new(GateState::default()), changed: Condvar::new() }
    }

    /// Waits for room; `false` once the gate is closed.
    fn enter(&self) -> bool {
        let mut state = self.state.lock().expect("gate lock");
        while state.busy >= self.limit && !state.closed {
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

fn serve_one<H>(mut request: Request, name: &str, gate: &Gate, handler: &H)
where
    H: Fn(&mut Request) -> Handled,
{
    if !gate.enter() {
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
    socket.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_is_json_with_allow_header() {
        let err = ApiError::method_not_allowed(&Method::Get, "/api/upload/init", "POST");
        let reply = error_reply(&err);
        assert_eq!(reply.status_code().0, 405);
        assert!(reply.headers().iter().any(|h| h.field.equiv("Allow") && h.value == "POST"));
    }
}
