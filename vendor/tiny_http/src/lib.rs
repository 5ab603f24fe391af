//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
pub use util::{Limits, Trouble};

mod client;
mod common;
mod connection;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::start(listener.into(), ssl_config, None, Limits::default())
    }

    /// AetherStore patch: builds a server that calls `handler` for every request on the
    /// thread that read it from its connection, instead of queueing it for `recv()`.
    /// That saves a thread hand-off (two context switches) per request. `handler` must
    /// respond to the request; `recv()` on such a server never returns a request. After
    /// the server is dropped, a connection ends after the request it is handling.
    /// Every connection is held to `limits` (head sizes, timeouts, connection cap).
    pub fn from_listener_with_handler<L: Into<Listener>>(
        listener: L,
        handler: Arc<dyn Fn(Request) + Send + Sync + 'static>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::start(listener.into(), None, Some(handler), limits)
    }

    fn start(
        listener: Listener,
        ssl_config: Option<SslConfig>,
        handler: Option<Arc<dyn Fn(Request) + Send + Sync + 'static>>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let limits = Arc::new(limits);
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
        type SslContext = ();
        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        thread::spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new();
            // AetherStore patch: a listener that stops accepting must not go unnoticed.
            let _watch = AcceptWatch {
                close: inside_close_trigger.clone(),
                limits: Arc::clone(&limits),
            };
            let open = Arc::new(AtomicUsize::new(0));
            let mut failures = AcceptFailures::default();
            let mut refused = RefusedConnections::default();

            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                // AetherStore patch: an accept error (EMFILE, ENFILE, ENOBUFS..) is
                // retried after a growing pause; upstream broke out of this loop for good.
                let (sock, _) = match server.accept() {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        if inside_close_trigger.load(Relaxed) {
                            break;
                        }
                        if !failures.failed(&e, &limits) {
                            break;
                        }
                        continue;
                    }
                };

                // AetherStore patch: a cap on open connections. Beyond it, a few more are
                // kept for priority requests; beyond those, a 503 and the end.
                let already_open = open.load(Relaxed);
                if already_open >= limits.max_connections + limits.reserved_connections {
                    refuse_connection(sock, already_open);
                    refused.count(already_open, &limits);
                    continue;
                }
                let probation = already_open >= limits.max_connections;
                sock.set_write_timeout(Some(limits.body_timeout)).ok();

                let client = {
                    use util::RefinedTcpStream;
                    let streams = match ssl {
                        None => RefinedTcpStream::new(sock),
                        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                        Some(ref ssl) => {
                            // trying to apply SSL over the connection
                            // if an error occurs, we just close the socket and resume listening
                            let sock = match ssl.accept(sock) {
                                Ok(s) => s,
                                Err(_) => continue,
                            };

                            RefinedTcpStream::new(sock)
                        }
                        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                        Some(ref _ssl) => unreachable!(),
                    };
                    let client = streams.and_then(|(read_closable, write_closable)| {
                        ClientConnection::new(write_closable, read_closable, Arc::clone(&limits))
                    });
                    match client {
                        Ok(client) => client,
                        Err(e) => {
                            if !failures.failed(&e, &limits) {
                                break;
                            }
                            continue;
                        }
                    }
                };

                let messages = inside_messages.clone();
                let handler = handler.clone();
                let close = inside_close_trigger.clone();
                let task_limits = Arc::clone(&limits);
                let mut client = Some(client);
                open.fetch_add(1, Relaxed);
                let mut counted = Some(OpenConnection(Arc::clone(&open)));
                let spawned = tasks_pool.spawn(Box::new(move || {
                    let _counted = counted.take();
                    if let Some(client) = client.take() {
                        if let Some(handler) = &handler {
                            for rq in client {
                                if probation && !task_limits.is_priority(&rq) {
                                    refuse_request(rq);
                                    break;
                                }
                                handler(rq);
                                if close.load(Relaxed) {
                                    break;
                                }
                            }
                        // Synchronization is needed for HTTPS requests to avoid a deadlock
                        } else if client.secure() {
                            let (sender, receiver) = mpsc::channel();
                            for rq in client {
                                messages.push(rq.with_notify_sender(sender.clone()).into());
                                receiver.recv().unwrap();
                            }
                        } else {
                            for rq in client {
                                messages.push(rq.into());
                            }
                        }
                    }
                }));
                // Only a connection that got its thread is a success: an accept that
                // succeeds while duplicating its socket or starting its thread fails (out of
                // descriptors or threads) serves no one.
                match spawned {
                    Ok(()) => failures.succeeded(),
                    Err(e) => {
                        let e = IoError::new(e.kind(), format!("cannot start a connection thread: {}", e));
                        if !failures.failed(&e, &limits) {
                            break;
                        }
                    }
                }
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

/// AetherStore patch: counts an open connection until its task ends (or is dropped
/// without running).
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// AetherStore patch: reports a fatal trouble if the accept thread ends (returns or
/// panics) while the server is meant to be running.
struct AcceptWatch {
    close: Arc<AtomicBool>,
    limits: Arc<Limits>,
}

impl Drop for AcceptWatch {
    fn drop(&mut self) {
        if !self.close.load(Relaxed) {
            let why = if thread::panicking() { "panicked" } else { "stopped" };
            self.limits.report(Trouble::Fatal(format!(
                "the thread accepting connections {}; this server can no longer serve",
                why
            )));
        }
    }
}

/// AetherStore patch: accept errors in a row, with the pause before the next try.
#[derive(Default)]
struct AcceptFailures {
    since: Option<Instant>,
    pause: Duration,
    reported: Option<Instant>,
    count: u64,
}

impl AcceptFailures {
    /// Counts a failure and waits; `false` when the server has failed for too long.
    fn failed(&mut self, error: &IoError, limits: &Limits) -> bool {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        self.count += 1;
        if now.duration_since(since) >= limits.accept_failure_limit {
            limits.report(Trouble::Fatal(format!(
                "cannot accept connections for {:?} ({} failures, the last: {})",
                limits.accept_failure_limit, self.count, error
            )));
            return false;
        }
        if self.reported.map_or(true, |at| now.duration_since(at) >= Duration::from_secs(10)) {
            limits.report(Trouble::Warning(format!(
                "cannot accept a connection ({}); retrying, and giving up after {:?} of failures",
                error, limits.accept_failure_limit
            )));
            self.reported = Some(now);
        }
        self.pause = (self.pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        thread::sleep(self.pause);
        true
    }

    fn succeeded(&mut self) {
        if self.since.take().is_some() {
            self.pause = Duration::ZERO;
            self.reported = None;
            self.count = 0;
        }
    }
}

/// AetherStore patch: connections refused for the cap, reported at most every 10 s.
#[derive(Default)]
struct RefusedConnections {
    reported: Option<Instant>,
    since_report: u64,
}

impl RefusedConnections {
    fn count(&mut self, open: usize, limits: &Limits) {
        self.since_report += 1;
        let now = Instant::now();
        if self.reported.map_or(true, |at| now.duration_since(at) >= Duration::from_secs(10)) {
            limits.report(Trouble::Warning(format!(
                "{} connections open, the most allowed: refused {} new one(s) with 503",
                open, self.since_report
            )));
            self.reported = Some(now);
            self.since_report = 0;
        }
    }
}

/// AetherStore patch: the answer to a connection beyond every cap, written from the
/// accept thread without ever waiting on the client.
fn refuse_connection(sock: Connection, open: usize) {
    let body = format!(
        "{{\"error\": \"the server has {} connections open and takes no more; retry later\"}}",
        open
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{}",
        body.len(),
        body
    );
    if sock.set_nonblocking(true).is_ok() {
        use std::io::Write;
        let mut sock = sock;
        let _ = sock.write(reply.as_bytes());
        let _ = sock.shutdown(Shutdown::Write);
    }
}

/// AetherStore patch: the answer to a request that is not priority traffic on a
/// connection taken beyond `max_connections`.
fn refuse_request(rq: Request) {
    let body = "{\"error\": \"the server has all its connections busy; retry later\"}";
    let response = Response::from_string(body)
        .with_status_code(503)
        .with_header(Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap())
        .with_header(Header::from_bytes(&b"Retry-After"[..], &b"1"[..]).unwrap());
    let _ = rq.respond(response);
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
