//! Chained uploads: while a datanode writes an upload to its disk it streams the same
//! bytes to the next node of the chain, which does the same for the rest. The client
//! sends the bytes once; every node holds at most a few chunks in memory.
//!
//! Small uploads go through the process's `ureq::Agent` (pooled connections) from a
//! forwarding thread. Large ones (`OWN_CONNECTION_FROM`) are written to a connection of
//! their own straight from the upload's buffer, on the thread that receives them: ureq
//! would copy the body through an 8 KiB buffer into 8 KiB sends, which with the hand-off
//! to the thread cost more CPU than the forwarding itself at replication 3.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::proto::{Checksum, ObjectId, ReplicaResult, Stored, CHAIN_HEADER, CHECKSUM_HEADER, TOKEN_HEADER};

/// Chunks in flight between the local write and the forwarding connection: enough to
/// keep both busy, few enough that a slow next node slows the upload instead of filling
/// memory.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Declared body sizes from which an upload is forwarded over a connection of its own.
/// Below it a new connection per upload would cost more than the copies it saves.
const OWN_CONNECTION_FROM: u64 = 1 << 20;
/// The same limits as `client::agent`'s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// An answer's head and body are a few hundred bytes; more is not a datanode talking.
const MAX_ANSWER: u64 = 1 << 20;

enum Message {
    Chunk(Vec<u8>),
    /// The body arrived whole; without it the forwarded request is aborted.
    End,
}

/// The forwarding half of a chained upload.
pub struct Forward {
    via: Via,
}

enum Via {
    /// The chain ends here.
    Nothing,
    /// Through the agent, from a forwarding thread fed by a bounded channel.
    Agent { tx: Option<Sender<Message>>, thread: JoinHandle<Vec<ReplicaResult>> },
    /// Written to a connection of its own as the body arrives.
    Connection(Connection),
}

impl Forward {
    /// Starts forwarding to `chain[0]`, which forwards to the rest; an empty chain
    /// forwards nothing.
    pub fn start(
        agent: &ureq::Agent,
        id: ObjectId,
        chain: &[String],
        declared: Option<u64>,
        expected: Option<Checksum>,
        token: Option<String>,
    ) -> Forward {
        if chain.is_empty() {
            return Forward { via: Via::Nothing };
        }
        if let Some(len) = declared.filter(|len| *len >= OWN_CONNECTION_FROM) {
            return Forward { via: Via::Connection(Connection::open(id, chain, len, expected, token.as_deref())) };
        }
        let (tx, rx) = crossbeam_channel::bounded(CHUNKS_IN_FLIGHT);
        let (agent, chain) = (agent.clone(), chain.to_vec());
        let thread = std::thread::Builder::new()
            .name("chain-forward".into())
            .spawn(move || forward(&agent, id, &chain, declared, expected, token.as_deref(), rx))
            .expect("spawning a forwarding thread");
        Forward { via: Via::Agent { tx: Some(tx), thread } }
    }

    /// The callback `BlobStore::put` hands each piece of the body to, and an empty piece
    /// once the body arrived whole.
    pub fn sink(&mut self) -> impl FnMut(&[u8]) + '_ {
        let mut open = true;
        move |chunk: &[u8]| match &mut self.via {
            Via::Nothing => {}
            Via::Agent { tx, .. } => {
                let Some(tx) = tx.as_ref().filter(|_| open) else { return };
                let message = if chunk.is_empty() { Message::End } else { Message::Chunk(chunk.to_vec()) };
                // A failed send means the next node gave up; this copy carries on regardless.
                open = tx.send(message).is_ok();
            }
            Via::Connection(connection) => connection.send(chunk),
        }
    }

    /// Waits for the rest of the chain to answer and returns its results, next node first.
    pub fn finish(self) -> Vec<ReplicaResult> {
        match self.via {
            Via::Nothing => Vec::new(),
            Via::Agent { mut tx, thread } => {
                tx.take();
                thread.join().expect("the forwarding thread does not panic")
            }
            Via::Connection(connection) => connection.finish(),
        }
    }
}

/// A large upload's own connection to the next node: the request head is written when it
/// opens, each piece of the body as it arrives (the Content-Length delimits it), and the
/// answer is read at the end. An upload abandoned before its end is cut off by closing
/// the connection, so the next node sees a short body and stores nothing.
struct Connection {
    chain: Vec<String>,
    stream: Option<TcpStream>,
    /// Why the request could not be sent whole, if it could not.
    error: Option<String>,
    ended: bool,
}

impl Connection {
    fn open(id: ObjectId, chain: &[String], len: u64, expected: Option<Checksum>, token: Option<&str>) -> Connection {
        let mut connection = Connection { chain: chain.to_vec(), stream: None, error: None, ended: false };
        let mut head = format!("PUT /objects/{id} HTTP/1.1\r\n");
        let host = match chain[0].strip_prefix("http://") {
            Some(host) => host,
            None => {
                connection.error = Some(format!("cannot forward to {}: only http:// is supported", chain[0]));
                return connection;
            }
        };
        head += &format!("Host: {host}\r\nUser-Agent: aether/{}\r\n", env!("CARGO_PKG_VERSION"));
        head += &format!("Content-Length: {len}\r\nConnection: close\r\n");
        if chain.len() > 1 {
            head += &format!("{CHAIN_HEADER}: {}\r\n", chain[1..].join(","));
        }
        if let Some(sum) = expected {
            head += &format!("{CHECKSUM_HEADER}: {sum}\r\n");
        }
        if let Some(token) = token {
            head += &format!("{TOKEN_HEADER}: {token}\r\n");
        }
        head += "\r\n";
        match connect(host).and_then(|mut stream| stream.write_all(head.as_bytes()).map(|()| stream)) {
            Ok(stream) => connection.stream = Some(stream),
            Err(e) => connection.error = Some(format!("cannot reach {}: {e}", chain[0])),
        }
        connection
    }

    fn send(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            self.ended = true;
            return;
        }
        let Some(stream) = self.stream.as_mut().filter(|_| self.error.is_none()) else { return };
        // A failed write means the next node gave up (its answer may say why); this copy
        // carries on regardless.
        if let Err(e) = stream.write_all(chunk) {
            self.error = Some(format!("sending the body to {}: {e}", self.chain[0]));
        }
    }

    fn finish(self) -> Vec<ReplicaResult> {
        let next = &self.chain[0];
        let Some(stream) = self.stream else {
            return broken_chain(&self.chain, 502, self.error.unwrap_or_default());
        };
        if !self.ended {
            let _ = stream.shutdown(Shutdown::Both);
            return broken_chain(&self.chain, 502, "the upstream upload was abandoned".to_string());
        }
        match read_answer(&stream) {
            Ok((status, body)) if status < 300 => match serde_json::from_slice::<Stored>(&body) {
                Ok(stored) => stored.replicas,
                Err(e) => broken_chain(&self.chain, 502, format!("unreadable answer from {next}: {e}")),
            },
            Ok((status, body)) => {
                let text = String::from_utf8_lossy(&body).into_owned();
                let message = serde_json::from_str::<crate::proto::ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
                broken_chain(&self.chain, status, message)
            }
            Err(e) => {
                broken_chain(&self.chain, 502, self.error.unwrap_or_else(|| format!("no answer from {next}: {e}")))
            }
        }
    }
}

fn connect(host: &str) -> io::Result<TcpStream> {
    let host = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for address in host.to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads an HTTP/1.1 answer: its status and body (delimited by Content-Length, or by the
/// end of the connection, which the request asked the server to close).
fn read_answer(stream: &TcpStream) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut reader = BufReader::new(stream.take(MAX_ANSWER));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad("not an HTTP answer"))?;
    let mut content_length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("the answer ended inside its head"));
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad("malformed header"))?;
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.trim().parse::<u64>().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.trim().eq_ignore_ascii_case("identity") {
            return Err(bad("chunked answers are not expected from a datanode"));
        }
    }
    let mut body = Vec::new();
    match content_length {
        Some(len) => {
            reader.take(len).read_to_end(&mut body)?;
            if body.len() as u64 != len {
                return Err(bad("the answer ended inside its body"));
            }
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}

/// Results for a chain that broke at its first node: that node's status and error, and
/// "not known" for the rest.
fn broken_chain(chain: &[String], status: u16, error: String) -> Vec<ReplicaResult> {
    let next = &chain[0];
    let mut results =
        vec![ReplicaResult { node: next.clone(), status, checksum: None, receipt: None, error: Some(error) }];
    results.extend(chain[1..].iter().map(|node| ReplicaResult {
        node: node.clone(),
        status: 502,
        checksum: None,
        receipt: None,
        error: Some(format!("not known: the chain broke at {next}")),
    }));
    results
}

fn forward(
    agent: &ureq::Agent,
    id: ObjectId,
    chain: &[String],
    declared: Option<u64>,
    expected: Option<Checksum>,
    token: Option<&str>,
    rx: Receiver<Message>,
) -> Vec<ReplicaResult> {
    let next = &chain[0];
    let mut request = agent.put(&format!("{next}/objects/{id}"));
    if chain.len() > 1 {
        request = request.set(CHAIN_HEADER, &chain[1..].join(","));
    }
    if let Some(len) = declared {
        request = request.set("Content-Length", &len.to_string());
    }
    if let Some(sum) = expected {
        request = request.set(CHECKSUM_HEADER, &sum.to_string());
    }
    if let Some(token) = token {
        request = request.set(TOKEN_HEADER, token);
    }
    let failed = |status: u16, error: String| broken_chain(chain, status, error);
    match request.send(ChannelReader { rx, chunk: Vec::new(), pos: 0 }) {
        Ok(response) => match response.into_json::<Stored>() {
            Ok(stored) => stored.replicas,
            Err(e) => failed(502, format!("unreadable answer: {e}")),
        },
        Err(ureq::Error::Status(status, response)) => {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<crate::proto::ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
            failed(status, message)
        }
        Err(e) => failed(502, e.to_string()),
    }
}

/// The request body of the forwarded upload: the chunks as they arrive, an end of file
/// only after `End`, and an error if the upstream upload was abandoned, so the next node
/// never mistakes a cut-off body for a whole one.
struct ChannelReader {
    rx: Receiver<Message>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Message::Chunk(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Message::End) => return Ok(0),
                Err(_) => return Err(io::Error::other("the upstream upload was abandoned")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-request server: reads the request, hands its head and body to the test, and
    /// answers `status` with `answer`.
    fn serve_once(status: u16, answer: String) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
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

    #[test]
    fn a_connection_of_its_own_forwards_the_body_and_reads_the_answer() {
        let id = ObjectId::new_random();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let stored = Stored {
            objectid: id.to_string(),
            size: data.len() as u64,
            checksum: Checksum(7),
            replicas: vec![ReplicaResult {
                node: "http://next".into(),
                status: 201,
                checksum: Some(Checksum(7)),
                receipt: None,
                error: None,
            }],
        };
        let (next, server) = serve_once(201, serde_json::to_string(&stored).unwrap());
        let chain = [next, "http://after:1".to_string()];
        let mut connection = Connection::open(id, &chain, data.len() as u64, Some(Checksum(7)), Some("secret"));
        for piece in data.chunks(100_003) {
            connection.send(piece);
        }
        connection.send(&[]);
        let results = connection.finish();
        assert_eq!(results.len(), 1);
        assert_eq!((results[0].node.as_str(), results[0].status), ("http://next", 201));
        let (head, body) = server.join().unwrap();
        assert!(body == data, "the body arrived changed");
        assert!(head.starts_with(&format!("PUT /objects/{id} HTTP/1.1\r\n")), "{head}");
        for header in [
            format!("{CHAIN_HEADER}: http://after:1"),
            format!("{CHECKSUM_HEADER}: {}", Checksum(7)),
            format!("{TOKEN_HEADER}: secret"),
        ] {
            assert!(head.contains(&header), "{header:?} missing from {head}");
        }
    }

    #[test]
    fn refusals_and_abandoned_uploads_break_the_chain() {
        let id = ObjectId::new_random();
        let (next, server) = serve_once(507, r#"{"error":"disk full"}"#.to_string());
        let chain = [next.clone(), "http://after:1".to_string()];
        let mut connection = Connection::open(id, &chain, 5, None, None);
        connection.send(b"hello");
        connection.send(&[]);
        let results = connection.finish();
        assert_eq!(
            results.iter().map(|r| (r.status, r.error.clone().unwrap())).collect::<Vec<_>>(),
            [(507, "disk full".to_string()), (502, format!("not known: the chain broke at {next}"))]
        );
        server.join().unwrap();

        // Without the end of the body the connection is cut: the next node sees a short body.
        let (next, server) = serve_once(201, String::new());
        let mut connection = Connection::open(id, &[next], 10, None, None);
        connection.send(b"hello");
        assert_eq!(connection.finish()[0].status, 502);
        assert_eq!(server.join().unwrap().1, b"hello");

        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut connection = Connection::open(id, &[format!("http://127.0.0.1:{port}")], 1, None, None);
        connection.send(b"x");
        connection.send(&[]);
        let results = connection.finish();
        assert_eq!(results[0].status, 502);
        assert!(results[0].error.as_deref().unwrap().contains("cannot reach"), "{results:?}");
    }
}
