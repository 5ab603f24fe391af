//! `NodeClient`: every call to a datanode (chained uploads, repair copies, the master's
//! replicate and `HEAD` requests, and `Client`'s uploads and reads) is built here, so its
//! one rule is written once: a server's node client goes only to addresses its `Registry`
//! knows as registered datanodes, and only those requests carry the cluster token. A
//! client naming an address can therefore never make a server connect to it, nor learn
//! the token. `Client`'s node client has no token, and goes where the master sends it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::buffers::BufferPool;
use crate::client::{from_ureq, json_answer, ClientError};
use crate::proto::{
    Checksum, ErrorBody, ObjectId, ReplicateRequest, ReplicateResult, ReplicateResults, Stored, CHAIN_HEADER,
    CHAIN_SIGNATURE_HEADER, CHECKSUM_HEADER, TOKEN_HEADER,
};

/// The default of `NodeClient::hop_timeout`.
pub const DEFAULT_HOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A repair batch copies up to 64 objects of any size before its answer.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(600);
/// Declared body sizes from which an upload is written to a connection of its own
/// (`NodeClient::open_put`) instead of through the agent, which copies a body through an
/// 8 KiB buffer into 8 KiB sends: the receiving node then wakes for every 8 KiB. Below it,
/// a new connection per upload costs more than the copies it saves.
pub const OWN_CONNECTION_FROM: u64 = 1 << 20;
/// The most of a body `put_object` reads for one send on a connection of its own.
const PIECE: usize = 1 << 20;
/// Piece buffers kept for the next large upload (zeroing a fresh one per 1 MiB upload was
/// 1 % of all CPU samples of 1 MiB PUTs at R = 3); at most 8, whatever ran at once.
static PIECES: BufferPool = BufferPool::new(PIECE, 8);
/// The same limit as `client::agent`'s, for each write of the body and read of the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// An answer's head and body are a few hundred bytes; more is not a datanode talking.
const MAX_ANSWER: u64 = 1 << 20;
const MAX_ANSWER_HEAD: u64 = 16 << 10;

/// Which addresses are datanodes registered with the master: the only ones a
/// `NodeClient` talks to.
pub trait Registry: Send + Sync {
    fn is_registered(&self, address: &str) -> bool;
}

/// An upload to one datanode, as `NodeClient::put_object` sends it.
pub struct ObjectPut<'a> {
    pub id: ObjectId,
    /// The body's length; without it the body is sent chunked.
    pub len: Option<u64>,
    /// The checksum the body must arrive with.
    pub checksum: Option<Checksum>,
    /// Where the receiving node forwards the bytes to.
    pub chain: &'a [String],
    /// The master's signature of the placement, passed on as it came.
    pub signature: Option<&'a str>,
}

/// The registry of `NodeClient::anonymous`: with no token to keep, any address will do.
struct AnyAddress;

impl Registry for AnyAddress {
    fn is_registered(&self, _: &str) -> bool {
        true
    }
}

#[derive(Clone)]
pub struct NodeClient {
    agent: ureq::Agent,
    token: Option<String>,
    registry: Arc<dyn Registry>,
    hop_timeout: Duration,
    /// Connections of finished downloads (`open_get`), kept for the next ones.
    idle_gets: Arc<Mutex<Vec<IdleGet>>>,
}

impl NodeClient {
    pub fn new(agent: ureq::Agent, token: Option<String>, registry: Arc<dyn Registry>) -> NodeClient {
        NodeClient { agent, token, registry, hop_timeout: DEFAULT_HOP_TIMEOUT, idle_gets: Arc::default() }
    }

    /// A node client without the token, for `Client`: it goes to the nodes the master's
    /// answers name, and has nothing secret to leak there.
    pub fn anonymous(agent: ureq::Agent) -> NodeClient {
        NodeClient::new(agent, None, Arc::new(AnyAddress))
    }

    /// How long a node may take to accept a connection and answer the head of a
    /// forwarded upload; far shorter than the transfer timeouts, so a chain answers
    /// quickly that a stalled hop failed.
    pub fn with_hop_timeout(mut self, hop_timeout: Duration) -> NodeClient {
        self.hop_timeout = hop_timeout;
        self
    }

    pub fn hop_timeout(&self) -> Duration {
        self.hop_timeout
    }

    pub fn is_registered(&self, address: &str) -> bool {
        self.registry.is_registered(address)
    }

    /// The token rule: `address` must be a registered datanode; the answer is the token
    /// to send it, if the cluster has one.
    fn authorize(&self, address: &str) -> Result<Option<&str>, ClientError> {
        if self.registry.is_registered(address) {
            Ok(self.token.as_deref())
        } else {
            Err(ClientError::NotRegistered { address: address.to_string() })
        }
    }

    fn request(&self, method: &str, address: &str, path: &str) -> Result<(ureq::Request, String), ClientError> {
        let token = self.authorize(address)?;
        let url = format!("{address}{path}");
        let request = self.agent.request(method, &url);
        let request = match token {
            Some(token) => request.set(TOKEN_HEADER, token),
            None => request,
        };
        Ok((request, url))
    }

    /// The headers of an upload, token included: for `put_object` and for uploads written
    /// to a connection of their own (`put_head`).
    fn put_headers(&self, address: &str, put: &ObjectPut) -> Result<Vec<(&'static str, String)>, ClientError> {
        let token = self.authorize(address)?;
        let mut headers = Vec::new();
        if let Some(len) = put.len {
            headers.push(("Content-Length", len.to_string()));
        }
        if !put.chain.is_empty() {
            headers.push((CHAIN_HEADER, put.chain.join(",")));
        }
        if let Some(signature) = put.signature {
            headers.push((CHAIN_SIGNATURE_HEADER, signature.to_string()));
        }
        if let Some(sum) = put.checksum {
            headers.push((CHECKSUM_HEADER, sum.to_string()));
        }
        if let Some(token) = token {
            headers.push((TOKEN_HEADER, token.to_string()));
        }
        Ok(headers)
    }

    /// The head of `PUT /objects/{id}` to `address` (`http://host:port`), for a caller that
    /// writes it and the body to a socket itself. It asks the node to answer
    /// `100 Continue` before the body, so a stalled node shows within `hop_timeout`.
    pub fn put_head(&self, address: &str, put: &ObjectPut) -> Result<String, ClientError> {
        let host = address.strip_prefix("http://").ok_or_else(|| ClientError::Protocol {
            url: address.to_string(),
            message: "only http:// node addresses can be written to directly".into(),
        })?;
        let mut head = head_start("PUT", &format!("/objects/{}", put.id), host);
        head += "Connection: close\r\nExpect: 100-continue\r\n";
        for (name, value) in self.put_headers(address, put)? {
            head += &format!("{name}: {value}\r\n");
        }
        head += "\r\n";
        Ok(head)
    }

    /// Uploads `body` to `address`; `timeout` bounds the whole exchange.
    pub fn put_object(
        &self,
        address: &str,
        put: &ObjectPut,
        body: impl Read,
        timeout: Option<Duration>,
    ) -> Result<Stored, ClientError> {
        if let Some(len) = put.len.filter(|len| *len >= OWN_CONNECTION_FROM && timeout.is_none()) {
            return self.put_direct(address, put, body, len);
        }
        let headers = self.put_headers(address, put)?;
        let url = format!("{address}/objects/{}", put.id);
        let mut request = self.agent.put(&url).set("Content-Type", "application/octet-stream");
        for (name, value) in &headers {
            request = request.set(name, value);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send(body).map_err(|e| from_ureq(&url, e))?;
        json_answer(response, &url)
    }

    /// `put_object` over a connection of its own: each read of the body (up to `PIECE`
    /// bytes) in one send.
    fn put_direct(&self, address: &str, put: &ObjectPut, body: impl Read, len: u64) -> Result<Stored, ClientError> {
        let url = format!("{address}/objects/{}", put.id);
        let head = self.put_head(address, put)?;
        let mut upload = self.open_with_head(address, &head).map_err(|refused| refused.into_error(&url))?;
        let mut body = body.take(len);
        // Only bytes just read into it are sent.
        let mut piece = PIECES.lend();
        let mut sent = 0u64;
        loop {
            let n = read_some(&mut body, &mut piece)?;
            if n == 0 {
                break;
            }
            if let Err(e) = upload.send(&piece[..n]) {
                // The node may have stopped reading to refuse the upload; its answer says why.
                return Err(match upload.answer() {
                    Ok((status, answer)) if status >= 300 => {
                        ClientError::Api { url, status, message: error_message(&answer) }
                    }
                    _ => ClientError::Transport { url, message: format!("sending the body: {e}") },
                });
            }
            sent += n as u64;
        }
        if sent < len {
            upload.abandon();
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the body ended after {sent} of its {len} bytes"),
            )));
        }
        let (status, answer) =
            upload.answer().map_err(|e| ClientError::Transport { url: url.clone(), message: e.to_string() })?;
        if status >= 300 {
            return Err(ClientError::Api { url, status, message: error_message(&answer) });
        }
        serde_json::from_slice(&answer)
            .map_err(|e| ClientError::Protocol { url, message: format!("not the expected JSON: {e}") })
    }

    /// Opens `PUT /objects/{id}` on `address` over a connection of its own, for a caller
    /// that sends the body in pieces as it has them (`Content-Length` is `put.len`, which
    /// must be set). The node must answer `100 Continue` within `hop_timeout`, so a node
    /// that accepted the connection but is stalled or cut off shows at once instead of
    /// after the transfer timeout.
    pub fn open_put(&self, address: &str, put: &ObjectPut) -> Result<DirectPut, Refused> {
        let head = self.put_head(address, put).map_err(|e| Refused {
            status: 502,
            message: e.to_string(),
            answered: false,
        })?;
        self.open_with_head(address, &head)
    }

    fn open_with_head(&self, address: &str, head: &str) -> Result<DirectPut, Refused> {
        let failed = |status, message| Refused { status, message, answered: false };
        let host = address.trim_start_matches("http://");
        let hop = self.hop_timeout;
        let stream = connect(host, hop)
            .and_then(|mut stream| stream.write_all(head.as_bytes()).map(|()| stream))
            .map_err(|e| failed(502, format!("cannot reach {address}: {e}")))?;
        let answers = stream.try_clone().map_err(|e| failed(502, format!("cannot read from {address}: {e}")))?;
        let mut upload = DirectPut { stream, answers: Answers(BufReader::new(answers)) };
        match upload.await_continue(hop) {
            Ok(None) => Ok(upload),
            Ok(Some((status, message))) => Err(Refused { status, message, answered: true }),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(failed(504, format!("{address} did not answer the upload's head within {hop:?}")))
            }
            Err(e) => Err(failed(502, format!("no answer from {address}: {e}"))),
        }
    }

    /// `GET /objects/{id}` on `address`: bytes `first..=last` (to its end without
    /// `last`; a range unless the whole object is asked for); the answer and its URL.
    /// `expected` is how many bytes the caller expects: from `OWN_CONNECTION_FROM` on, the
    /// answer is read from a connection of its own (`open_get`) instead of through the
    /// agent, which reads a body 8 KiB per system call and copies it once more on the way.
    pub fn get_object(
        &self,
        address: &str,
        id: &ObjectId,
        first: u64,
        last: Option<u64>,
        expected: u64,
    ) -> Result<(NodeAnswer, String), ClientError> {
        let range = (first > 0 || last.is_some())
            .then(|| format!("bytes={first}-{}", last.map(|last| last.to_string()).unwrap_or_default()));
        if expected >= OWN_CONNECTION_FROM && address.starts_with("http://") {
            return self.open_get(address, id, range.as_deref()).map(|(get, url)| (NodeAnswer::Direct(get), url));
        }
        let (mut request, url) = self.request("GET", address, &format!("/objects/{id}"))?;
        if let Some(range) = &range {
            request = request.set("Range", range);
        }
        let response = request.call().map_err(|e| from_ureq(&url, e))?;
        Ok((NodeAnswer::Agent(response), url))
    }

    /// `GET /objects/{id}` over a connection of its own: the answer's head is read here
    /// (an error status is the node's error), its body as the caller reads it, each read
    /// straight from the socket into the caller's buffer. The connection of a download
    /// read to its end is kept for the next one to the same node: a new connection per
    /// 1 MiB download cost more than it saved (both ends' TCP buffers start small and
    /// grow with each connection; the node wakes a thread for each).
    fn open_get(&self, address: &str, id: &ObjectId, range: Option<&str>) -> Result<(DirectGet, String), ClientError> {
        let token = self.authorize(address)?;
        let url = format!("{address}/objects/{id}");
        let host = address.trim_start_matches("http://");
        let mut head = head_start("GET", &format!("/objects/{id}"), host);
        if let Some(range) = range {
            head += &format!("Range: {range}\r\n");
        }
        if let Some(token) = token {
            head += &format!("{TOKEN_HEADER}: {token}\r\n");
        }
        head += "\r\n";
        let transport = |e: io::Error| ClientError::Transport { url: url.clone(), message: e.to_string() };
        // A kept connection the node has closed since fails before the first byte of its
        // answer; a GET can then go again on a new one.
        let kept = self.take_idle(host).and_then(|mut answers| {
            answers.0.get_mut().write_all(head.as_bytes()).ok()?;
            let head = answers.read_head().ok()?;
            Some((answers, head))
        });
        let (mut answers, answer_head) = match kept {
            Some(kept) => kept,
            None => {
                let stream = connect(host, self.hop_timeout)
                    .and_then(|mut stream| stream.write_all(head.as_bytes()).map(|()| stream))
                    .and_then(|stream| stream.set_read_timeout(Some(IO_TIMEOUT)).map(|()| stream))
                    .map_err(|e| ClientError::Unreachable {
                        url: url.clone(),
                        message: format!("cannot reach {address}: {e}"),
                    })?;
                let mut answers = Answers(BufReader::new(stream));
                let head = answers.read_head().map_err(transport)?;
                (answers, head)
            }
        };
        if answer_head.status >= 300 {
            let body = answers.read_body(answer_head.content_length).map_err(transport)?;
            return Err(ClientError::Api { url, status: answer_head.status, message: error_message(&body) });
        }
        let remaining = answer_head.content_length;
        let keep =
            remaining.is_some() && !answer_head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let get = DirectGet {
            head: answer_head,
            answers: Some(answers),
            remaining,
            keep: keep.then(|| (host.to_string(), Arc::clone(&self.idle_gets))),
        };
        Ok((get, url))
    }

    /// A kept download connection to `host`, if one is young enough.
    fn take_idle(&self, host: &str) -> Option<Answers> {
        let mut idle = self.idle_gets.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|kept| kept.since.elapsed() < KEEP_IDLE_FOR);
        let index = idle.iter().rposition(|kept| kept.host == host)?;
        Some(idle.swap_remove(index).answers)
    }

    /// Asks `source` to copy objects to another node; one result per object.
    pub fn replicate(&self, source: &str, body: &ReplicateRequest) -> Result<Vec<ReplicateResult>, ClientError> {
        let (request, url) = self.request("POST", source, "/internal/replicate")?;
        let response = request.timeout(REPLICATE_TIMEOUT).send_json(body).map_err(|e| from_ureq(&url, e))?;
        let answer: ReplicateResults = json_answer(response, &url)?;
        Ok(answer.results)
    }

    /// `HEAD`s an object on `address`: its size and checksum if the node has it.
    pub fn head_object(&self, address: &str, id: &ObjectId) -> Result<(u64, Checksum), ClientError> {
        let (request, url) = self.request("HEAD", address, &format!("/objects/{id}"))?;
        let response = request.timeout(self.hop_timeout).call().map_err(|e| from_ureq(&url, e))?;
        let size = response.header("Content-Length").and_then(|v| v.parse().ok());
        let checksum = response.header(CHECKSUM_HEADER).map(Checksum::parse);
        match (size, checksum) {
            (Some(size), Some(Ok(checksum))) => Ok((size, checksum)),
            _ => Err(ClientError::Protocol { url, message: "no size or checksum in the answer".into() }),
        }
    }
}

/// Why `NodeClient::open_put` could not start an upload: the node's refusal (`answered`),
/// or 502 when it could not be reached and 504 when it did not answer in time.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
    pub answered: bool,
}

impl Refused {
    fn into_error(self, url: &str) -> ClientError {
        let (url, message) = (url.to_string(), self.message);
        match (self.answered, self.status) {
            (true, status) => ClientError::Api { url, status, message },
            (false, 502) => ClientError::Unreachable { url, message },
            (false, _) => ClientError::Transport { url, message },
        }
    }
}

/// An upload written to a connection of its own (`NodeClient::open_put`): each `send`
/// is one write of the caller's bytes; `answer` reads the node's answer once the whole
/// body is sent; `abandon` cuts the connection, so the node sees a short body and stores
/// nothing.
pub struct DirectPut {
    stream: TcpStream,
    /// The same socket, buffered for reading the answers (`100 Continue`, then the final
    /// one): read a byte at a time, an answer took a system call per byte.
    answers: Answers,
}

impl DirectPut {
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn abandon(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The final answer: its status and body (an interim `100 Continue` is skipped).
    pub fn answer(mut self) -> io::Result<(u16, Vec<u8>)> {
        loop {
            let head = self.answers.read_head()?;
            if head.status != 100 {
                return Ok((head.status, self.answers.read_body(head.content_length)?));
            }
        }
    }

    /// Waits up to `hop` for the first answer: `100 Continue` (None: send the body), or
    /// a final answer refusing the upload (its status and error).
    fn await_continue(&mut self, hop: Duration) -> io::Result<Option<(u16, String)>> {
        self.stream.set_read_timeout(Some(hop))?;
        let head = self.answers.read_head()?;
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        if head.status == 100 {
            return Ok(None);
        }
        let body = self.answers.read_body(head.content_length)?;
        Ok(Some((head.status, error_message(&body))))
    }
}

/// A datanode's answers on a connection of its own, read through a buffer.
struct Answers(BufReader<TcpStream>);

/// An answer's status line and headers.
struct Head {
    status: u16,
    content_length: Option<u64>,
    headers: Vec<(String, String)>,
}

impl Answers {
    /// Reads an HTTP/1.1 answer's head, at most `MAX_ANSWER_HEAD` bytes of it.
    fn read_head(&mut self) -> io::Result<Head> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let room = MAX_ANSWER_HEAD.saturating_sub(head.len() as u64);
            if room == 0 {
                return Err(bad("the answer's head is too long"));
            }
            if (&mut self.0).take(room).read_until(b'\n', &mut head)? == 0 {
                return Err(bad("the answer ended inside its head"));
            }
        }
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.strip_prefix("HTTP/1."))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| bad("not an HTTP answer"))?;
        let mut content_length = None;
        let mut headers = Vec::new();
        for line in lines.filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').ok_or_else(|| bad("malformed header"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse::<u64>().map_err(|_| bad("bad Content-Length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
                return Err(bad("chunked answers are not expected from a datanode"));
            }
            headers.push((name.to_string(), value.to_string()));
        }
        Ok(Head { status, content_length, headers })
    }

    /// Reads an answer's body, delimited by its Content-Length or by the end of the
    /// connection (which the request asked the server to close).
    fn read_body(&mut self, content_length: Option<u64>) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let limit = content_length.unwrap_or(MAX_ANSWER).min(MAX_ANSWER);
        (&mut self.0).take(limit).read_to_end(&mut body)?;
        if content_length.is_some_and(|len| body.len() as u64 != len) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the answer ended inside its body"));
        }
        Ok(body)
    }
}

/// A node's answer to `GET /objects/{id}`: through the agent, or on a connection of its
/// own (`NodeClient::open_get`).
pub enum NodeAnswer {
    Agent(ureq::Response),
    Direct(DirectGet),
}

impl NodeAnswer {
    pub fn status(&self) -> u16 {
        match self {
            NodeAnswer::Agent(response) => response.status(),
            NodeAnswer::Direct(get) => get.head.status,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            NodeAnswer::Agent(response) => response.header(name),
            NodeAnswer::Direct(get) => get.head.header(name),
        }
    }

    pub fn into_reader(self) -> Box<dyn Read + Send + Sync> {
        match self {
            NodeAnswer::Agent(response) => response.into_reader(),
            NodeAnswer::Direct(get) => Box::new(get),
        }
    }
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A download on a connection of its own (`NodeClient::open_get`): its body, read
/// straight from the socket once the few bytes buffered with the head are taken. A body
/// that ends before its `Content-Length` is an error, never a short object.
pub struct DirectGet {
    head: Head,
    answers: Option<Answers>,
    /// Bytes of the body still to come, when the node said how many.
    remaining: Option<u64>,
    /// Where to keep the connection once the body is read to its end, and for which node.
    keep: Option<(String, Arc<Mutex<Vec<IdleGet>>>)>,
}

/// A download connection kept for the next download from its node.
struct IdleGet {
    host: String,
    answers: Answers,
    since: Instant,
}

/// At most this many download connections are kept, each for at most `KEEP_IDLE_FOR`
/// (well inside the node's idle timeout).
const KEEP_IDLE: usize = 16;
const KEEP_IDLE_FOR: Duration = Duration::from_secs(20);

impl Drop for DirectGet {
    /// Keeps the connection if its answer was read exactly to its end; a download given
    /// up part-way closes it.
    fn drop(&mut self) {
        let (Some(answers), Some((host, idle))) = (self.answers.take(), self.keep.take()) else { return };
        if self.remaining != Some(0) || !answers.0.buffer().is_empty() {
            return;
        }
        let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= KEEP_IDLE {
            idle.remove(0);
        }
        idle.push(IdleGet { host, answers, since: Instant::now() });
    }
}

impl Read for DirectGet {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.remaining {
            Some(0) => return Ok(0),
            Some(remaining) => buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let Some(answers) = self.answers.as_mut() else { return Ok(0) };
        let n = answers.0.read(&mut buf[..want])?;
        if let Some(remaining) = &mut self.remaining {
            if n == 0 && want > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the answer ended {remaining} bytes short of its Content-Length"),
                ));
            }
            *remaining -= n as u64;
        }
        Ok(n)
    }
}

/// The request line and the headers every request written to a connection of its own
/// starts with.
fn head_start(method: &str, path: &str, host: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aether/{}\r\n", env!("CARGO_PKG_VERSION"))
}

fn connect(host: &str, hop: Duration) -> io::Result<TcpStream> {
    let host = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for address in host.to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, hop) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One read of the body: what it has now, up to `buf`'s length (a body that trickles in
/// is passed on as it comes, not held until a whole piece arrived); 0 at its end.
fn read_some(body: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match body.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}

/// The error sentence of an error answer's body.
pub fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).into_owned();
    serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-request server: reads the request head, answers `100 Continue` as a
    /// datanode does when asked to, reads the body, hands head and body to the test, and answers
    /// `status` with `answer`.
    pub(crate) fn serve_once(status: u16, answer: String) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let (mut head, mut line) = (String::new(), String::new());
            while line != "\r\n" {
                line.clear();
                reader.read_line(&mut line).unwrap();
                head += &line;
            }
            if head.to_ascii_lowercase().contains("expect: 100-continue") {
                (&stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            }
            let len: u64 =
                head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.trim().parse().unwrap());
            let mut body = Vec::new();
            reader.take(len).read_to_end(&mut body).unwrap();
            if body.len() as u64 == len {
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
                (&stream).write_all(reply.as_bytes()).unwrap();
            }
            (head, body)
        });
        (address, thread)
    }

    fn put(id: ObjectId, len: u64) -> ObjectPut<'static> {
        ObjectPut { id, len: Some(len), checksum: None, chain: &[], signature: None }
    }

    #[test]
    fn a_large_upload_goes_over_a_connection_of_its_own_and_its_answer_is_read() {
        let nodes = NodeClient::anonymous(crate::client::agent());
        let id = ObjectId::new_random();
        let data: Vec<u8> = (0..(3 << 20) + 17u32).map(|i| (i % 251) as u8).collect();
        let stored =
            Stored { objectid: id.to_string(), size: data.len() as u64, checksum: Checksum(7), replicas: vec![] };
        let (address, server) = serve_once(201, serde_json::to_string(&stored).unwrap());
        let answer = nodes.put_object(&address, &put(id, data.len() as u64), &data[..], None).unwrap();
        assert_eq!((answer.objectid, answer.size, answer.checksum), (stored.objectid, stored.size, stored.checksum));
        let (head, body) = server.join().unwrap();
        assert!(body == data, "the body arrived changed");
        assert!(head.contains("Expect: 100-continue") && head.contains("Connection: close"), "{head}");

        // A refusal is the node's error, with its status.
        let (address, server) = serve_once(507, r#"{"error":"disk full"}"#.to_string());
        match nodes.put_object(&address, &put(id, 1 << 20), &vec![1u8; 1 << 20][..], None) {
            Err(ClientError::Api { status: 507, message, .. }) => assert_eq!(message, "disk full"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();

        // A body shorter than declared is never passed off as whole: the node sees the
        // connection cut short, and the caller an error.
        let (address, server) = serve_once(201, String::new());
        let err = nodes.put_object(&address, &put(id, 2 << 20), &vec![1u8; 1 << 20][..], None).unwrap_err();
        assert!(err.to_string().contains("ended after 1048576 of its 2097152 bytes"), "{err}");
        assert_eq!(server.join().unwrap().1.len(), 1 << 20);

        // An address the registry does not know is refused as such, before any connection.
        struct Nobody;
        impl Registry for Nobody {
            fn is_registered(&self, _: &str) -> bool {
                false
            }
        }
        let strict = NodeClient::new(crate::client::agent(), Some("secret".into()), Arc::new(Nobody));
        let err =
            strict.put_object("http://127.0.0.1:9", &put(id, 1 << 20), &vec![1u8; 1 << 20][..], None).unwrap_err();
        assert!(matches!(err, ClientError::NotRegistered { .. }), "{err:?}");

        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = nodes
            .put_object(&format!("http://127.0.0.1:{port}"), &put(id, 1 << 20), &vec![1u8; 1 << 20][..], None)
            .unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    }

    /// Reads one request head from a test server's connection; `None` at its end.
    fn read_request(reader: &mut BufReader<TcpStream>) -> Option<String> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if reader.read_until(b'\n', &mut head).ok()? == 0 {
                return None;
            }
        }
        Some(String::from_utf8(head).unwrap())
    }

    #[test]
    fn a_large_download_is_read_from_a_connection_of_its_own_that_the_next_one_reuses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let data: Vec<u8> = (0..(2 << 20) + 5u32).map(|i| (i % 251) as u8).collect();
        let served = data.clone();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            let accept = || {
                let stream = listener.accept().unwrap().0;
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                (BufReader::new(stream.try_clone().unwrap()), stream)
            };
            let whole = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Test: yes\r\n\r\n", served.len());
            // Two downloads on the first connection (a second connection for the second
            // download would never be answered), then the node closes it.
            let (mut reader, stream) = accept();
            for _ in 0..2 {
                heads.push(read_request(&mut reader).expect("the second download reuses the connection"));
                (&stream).write_all(whole.as_bytes()).unwrap();
                (&stream).write_all(&served).unwrap();
            }
            drop((reader, stream));
            // The next download finds it closed and connects again: a refusal.
            let (mut reader, stream) = accept();
            heads.push(read_request(&mut reader).unwrap());
            let error = r#"{"error":"no such object"}"#;
            (&stream)
                .write_all(
                    format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{error}", error.len()).as_bytes(),
                )
                .unwrap();
            // Then a body cut short of its Content-Length.
            let (mut reader, stream) = accept();
            heads.push(read_request(&mut reader).unwrap());
            (&stream).write_all(whole.as_bytes()).unwrap();
            (&stream).write_all(&served[..1 << 20]).unwrap();
            heads
        });
        let nodes = NodeClient::anonymous(crate::client::agent());
        let id = ObjectId::new_random();
        let len = data.len() as u64;

        let (answer, _) = nodes.get_object(&address, &id, 0, None, len).unwrap();
        assert!(matches!(answer, NodeAnswer::Direct(_)));
        assert_eq!((answer.status(), answer.header("x-test")), (200, Some("yes")));
        let mut body = Vec::new();
        answer.into_reader().read_to_end(&mut body).unwrap();
        assert!(body == data, "the body arrived changed");

        let (answer, _) = nodes.get_object(&address, &id, 5, None, len - 5).unwrap();
        body.clear();
        answer.into_reader().read_to_end(&mut body).unwrap();
        assert_eq!(body.len(), data.len());

        match nodes.get_object(&address, &id, 0, None, len) {
            Err(ClientError::Api { status: 404, message, .. }) => assert_eq!(message, "no such object"),
            other => panic!("{:?}", other.map(|(answer, _)| answer.status())),
        }

        let (answer, _) = nodes.get_object(&address, &id, 0, None, len).unwrap();
        let err = answer.into_reader().read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");

        let heads = server.join().unwrap();
        assert!(heads[0].starts_with(&format!("GET /objects/{id} HTTP/1.1\r\n")), "{}", heads[0]);
        assert!(!heads[0].to_ascii_lowercase().contains("connection: close"), "{}", heads[0]);
        assert!(heads[1].contains("Range: bytes=5-\r\n"), "{}", heads[1]);

        // An address the registry does not know, and nobody listening.
        struct Nobody;
        impl Registry for Nobody {
            fn is_registered(&self, _: &str) -> bool {
                false
            }
        }
        let strict = NodeClient::new(crate::client::agent(), Some("secret".into()), Arc::new(Nobody));
        let err = strict.get_object("http://127.0.0.1:9", &id, 0, None, len).map(|_| ()).unwrap_err();
        assert!(matches!(err, ClientError::NotRegistered { .. }), "{err:?}");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = nodes.get_object(&format!("http://127.0.0.1:{port}"), &id, 0, None, len).map(|_| ()).unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    }
}
