//! Chained uploads: while a datanode writes an upload to its disk it streams the same
//! bytes to the next node of the chain, which does the same for the rest. The client
//! sends the bytes once; every node holds at most a few chunks in memory.
//!
//! Small uploads go through the process's `ureq::Agent` (pooled connections). One the
//! store writes as a volume record through the page cache (`inline_up_to`) is forwarded
//! from the thread that received it, once its record is written and while that is
//! synced (no hand-off to another thread: at replication 3 that saved about 4 of the 8
//! thread switches per upload on each node); other small ones from a forwarding thread
//! (`Forwarders`: threads kept for the next upload, not one spawned per hop), as their
//! bytes arrive.
//! Large ones (`OWN_CONNECTION_FROM`) are written to a connection of
//! their own straight from the upload's buffer, on the thread that receives them: ureq
//! would copy the body through an 8 KiB buffer into 8 KiB sends, which with the hand-off
//! to the thread cost more CPU than the forwarding itself at replication 3.

use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::client::ClientError;
use crate::node_client::{error_message, DirectPut, NodeClient, ObjectPut, Refused, OWN_CONNECTION_FROM};
use crate::proto::{Checksum, ObjectId, ReplicaResult, Stored};

/// Chunks in flight between the local write and the forwarding connection: enough to
/// keep both busy, few enough that a slow next node slows the upload instead of filling
/// memory.
const CHUNKS_IN_FLIGHT: usize = 8;

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
    /// Through the agent, from this thread, once the whole body is here: gathered in
    /// `body`, sent at its end, answered in `results`.
    Inline { nodes: NodeClient, upload: Owned, body: Vec<u8>, results: Option<Vec<ReplicaResult>> },
    /// Through the agent, from a forwarding thread fed by a bounded channel; its results
    /// come back on `results`.
    Agent { tx: Option<Sender<Message>>, results: Receiver<Vec<ReplicaResult>>, chain: Vec<String> },
    /// Written to a connection of its own as the body arrives.
    Connection(Connection),
}

/// What to forward: the object, the rest of the chain, and how its body must arrive.
pub struct Upload<'a> {
    pub id: ObjectId,
    pub chain: &'a [String],
    /// The master's signature of the placement, passed on as it came.
    pub signature: Option<&'a str>,
    pub declared: Option<u64>,
    pub expected: Option<Checksum>,
}

/// An `Upload` kept by the forwarding half.
struct Owned {
    id: ObjectId,
    chain: Vec<String>,
    signature: Option<String>,
    declared: Option<u64>,
    expected: Option<Checksum>,
}

impl Owned {
    fn of(upload: &Upload) -> Owned {
        Owned {
            id: upload.id,
            chain: upload.chain.to_vec(),
            signature: upload.signature.map(str::to_string),
            declared: upload.declared,
            expected: upload.expected,
        }
    }

    fn upload(&self) -> Upload<'_> {
        Upload {
            id: self.id,
            chain: &self.chain,
            signature: self.signature.as_deref(),
            declared: self.declared,
            expected: self.expected,
        }
    }
}

impl Upload<'_> {
    /// The request to `chain[0]`, which forwards to the rest.
    fn put(&self) -> ObjectPut<'_> {
        ObjectPut {
            id: self.id,
            len: self.declared,
            checksum: self.expected,
            chain: &self.chain[1..],
            signature: self.signature,
        }
    }
}

impl Forward {
    /// Starts forwarding to `chain[0]`, which forwards to the rest; an empty chain
    /// forwards nothing. An upload of at most `inline_up_to` declared bytes is forwarded
    /// from the caller's thread when its body ends. The caller has checked that the chain
    /// is the master's.
    pub fn start(nodes: &NodeClient, upload: &Upload, inline_up_to: Option<u64>) -> Forward {
        if upload.chain.is_empty() {
            return Forward { via: Via::Nothing };
        }
        if let Some(len) = upload.declared.filter(|len| *len >= OWN_CONNECTION_FROM) {
            return Forward { via: Via::Connection(Connection::open(nodes, upload, len)) };
        }
        let (nodes, owned) = (nodes.clone(), Owned::of(upload));
        if let Some(len) = upload.declared.filter(|len| inline_up_to.is_some_and(|up_to| *len <= up_to)) {
            let body = Vec::with_capacity(len as usize);
            return Forward { via: Via::Inline { nodes, upload: owned, body, results: None } };
        }
        let (tx, rx) = crossbeam_channel::bounded(CHUNKS_IN_FLIGHT);
        let (done, results) = crossbeam_channel::bounded(1);
        let chain = upload.chain.to_vec();
        forwarders().run(Box::new(move || {
            let _ = done.send(forward(&nodes, &owned.upload(), rx));
        }));
        Forward { via: Via::Agent { tx: Some(tx), results, chain } }
    }

    /// Whether there is anything to forward.
    pub fn forwards(&self) -> bool {
        !matches!(self.via, Via::Nothing)
    }

    /// The callback `BlobStore::put` hands each piece of the body to, and an empty piece
    /// once the body arrived whole (an inline forward is sent then, and answered before
    /// this returns).
    pub fn sink(&mut self) -> impl FnMut(&[u8]) + '_ {
        let mut open = true;
        move |chunk: &[u8]| match &mut self.via {
            Via::Nothing => {}
            Via::Inline { nodes, upload, body, results } => {
                if !chunk.is_empty() {
                    body.extend_from_slice(chunk);
                } else if results.is_none() {
                    *results = Some(forward_gathered(nodes, &upload.upload(), std::mem::take(body)));
                }
            }
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
            // Never sent: the body did not arrive whole, or this node could not write it.
            Via::Inline { upload, results, .. } => results.unwrap_or_else(|| {
                broken_chain(&upload.chain, 502, "not forwarded: the upload failed on the node before".into())
            }),
            Via::Agent { mut tx, results, chain } => {
                tx.take();
                results.recv().unwrap_or_else(|_| broken_chain(&chain, 500, "the forwarding thread failed".into()))
            }
            Via::Connection(connection) => connection.finish(),
        }
    }
}

/// Idle forwarding threads kept waiting for the next small upload (more exit when done).
const IDLE_FORWARDERS: usize = 32;
/// How long an idle forwarding thread waits for work before it exits.
const FORWARDER_IDLE_FOR: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

/// The threads that forward small uploads: a thread per upload in flight, as many as
/// there are uploads (a fixed pool could deadlock two nodes forwarding to each other),
/// but a thread that finished waits a while for the next upload instead of exiting, so
/// the steady state spawns none.
struct Forwarders {
    jobs: (Sender<Job>, Receiver<Job>),
    /// Threads waiting in `recv`, not yet promised a job.
    idle: AtomicUsize,
}

fn forwarders() -> &'static Forwarders {
    static FORWARDERS: OnceLock<Forwarders> = OnceLock::new();
    FORWARDERS.get_or_init(Forwarders::new)
}

impl Forwarders {
    fn new() -> Forwarders {
        Forwarders { jobs: crossbeam_channel::unbounded(), idle: AtomicUsize::new(0) }
    }

    /// Runs `job` on an idle thread, or on a new one when none is idle.
    fn run(&'static self, job: Job) {
        let promised = self.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        if promised {
            // An idle thread is promised to take it: it only exits after taking it.
            let _ = self.jobs.0.send(job);
            return;
        }
        std::thread::Builder::new()
            .name("chain-forward".into())
            .spawn(move || {
                job();
                self.serve();
            })
            .expect("spawning a forwarding thread");
    }

    fn serve(&'static self) {
        loop {
            if self.idle.fetch_add(1, Ordering::AcqRel) >= IDLE_FORWARDERS {
                if self.unpromise() {
                    return;
                }
            } else {
                match self.jobs.1.recv_timeout(FORWARDER_IDLE_FOR) {
                    Ok(job) => {
                        job();
                        continue;
                    }
                    Err(_) if self.unpromise() => return,
                    Err(_) => {}
                }
            }
            // A job was promised to this thread meanwhile: take it.
            match self.jobs.1.recv() {
                Ok(job) => job(),
                Err(_) => return,
            }
        }
    }

    /// Leaves the idle count unless a submitter has counted on this thread already.
    fn unpromise(&self) -> bool {
        self.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

/// A large upload's own connection to the next node (`NodeClient::open_put`): each
/// piece of the body is written as it arrives (the Content-Length delimits it), and the
/// answer is read at the end. An upload abandoned before its end is cut off by closing
/// the connection, so the next node sees a short body and stores nothing.
struct Connection {
    chain: Vec<String>,
    upload: Result<DirectPut, Refused>,
    /// Why the body could not be sent whole, if it could not.
    error: Option<String>,
    ended: bool,
}

impl Connection {
    fn open(nodes: &NodeClient, upload: &Upload, len: u64) -> Connection {
        let put = ObjectPut { len: Some(len), ..upload.put() };
        let opened = nodes.open_put(&upload.chain[0], &put);
        Connection { chain: upload.chain.to_vec(), upload: opened, error: None, ended: false }
    }

    fn send(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            self.ended = true;
            return;
        }
        let (Ok(upload), None) = (self.upload.as_mut(), &self.error) else { return };
        // A failed write means the next node gave up (its answer may say why); this copy
        // carries on regardless.
        if let Err(e) = upload.send(chunk) {
            self.error = Some(format!("sending the body to {}: {e}", self.chain[0]));
        }
    }

    fn finish(self) -> Vec<ReplicaResult> {
        let next = &self.chain[0];
        let upload = match self.upload {
            Ok(upload) => upload,
            Err(refused) => return broken_chain(&self.chain, refused.status, refused.message),
        };
        if !self.ended {
            upload.abandon();
            return broken_chain(&self.chain, 502, "the upstream upload was abandoned".to_string());
        }
        match upload.answer() {
            Ok((status, body)) if status < 300 => match serde_json::from_slice::<Stored>(&body) {
                Ok(stored) => stored.replicas,
                Err(e) => broken_chain(&self.chain, 502, format!("unreadable answer from {next}: {e}")),
            },
            Ok((status, body)) => broken_chain(&self.chain, status, error_message(&body)),
            Err(e) => {
                broken_chain(&self.chain, 502, self.error.unwrap_or_else(|| format!("no answer from {next}: {e}")))
            }
        }
    }
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

/// Forwards a small upload through the agent. With a declared length (under
/// `OWN_CONNECTION_FROM`) the body is gathered first and the whole exchange is bounded by
/// the hop timeout for each node left in the chain and one more, so a stalled next node
/// (a pooled connection into a partition, say) fails the hop in seconds and every node
/// upstream still answers within its own, longer bound. An undeclared length streams.
fn forward(nodes: &NodeClient, upload: &Upload, rx: Receiver<Message>) -> Vec<ReplicaResult> {
    let mut reader = ChannelReader { rx, chunk: Vec::new(), pos: 0 };
    if let Some(len) = upload.declared {
        let mut body = Vec::with_capacity(len as usize);
        if let Err(e) = reader.read_to_end(&mut body) {
            return broken_chain(upload.chain, 502, e.to_string());
        }
        return forward_gathered(nodes, upload, body);
    }
    let answer = nodes.put_object(&upload.chain[0], &upload.put(), reader, None);
    chain_results(upload, answer, None)
}

/// Forwards a small upload whose body is here whole, within the hop timeout for each
/// node left in the chain and one more.
fn forward_gathered(nodes: &NodeClient, upload: &Upload, body: Vec<u8>) -> Vec<ReplicaResult> {
    let hops = u32::try_from(upload.chain.len()).unwrap_or(u32::MAX).saturating_add(1);
    let bound = Some((Instant::now(), nodes.hop_timeout().saturating_mul(hops)));
    let answer = nodes.put_object(&upload.chain[0], &upload.put(), Cursor::new(body), bound.map(|(_, limit)| limit));
    chain_results(upload, answer, bound)
}

/// The chain's results from the next node's answer (`bound`: when the exchange started,
/// and its limit).
fn chain_results(
    upload: &Upload,
    answer: Result<Stored, ClientError>,
    bound: Option<(Instant, Duration)>,
) -> Vec<ReplicaResult> {
    let next = &upload.chain[0];
    match answer {
        Ok(stored) => stored.replicas,
        Err(ClientError::Api { status, message, .. }) => broken_chain(upload.chain, status, message),
        Err(ClientError::Transport { .. }) if bound.is_some_and(|(started, limit)| started.elapsed() >= limit) => {
            let limit = bound.map(|(_, limit)| limit).unwrap_or_default();
            broken_chain(upload.chain, 504, format!("{next} did not answer the upload within {limit:?}"))
        }
        // ureq's own message names the URL already.
        Err(ClientError::Transport { message, .. }) => broken_chain(upload.chain, 502, message),
        Err(e) => broken_chain(upload.chain, 502, e.to_string()),
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
    use crate::node_client::tests::serve_once;
    use crate::node_client::Registry;
    use crate::proto::{CHAIN_HEADER, CHECKSUM_HEADER, TOKEN_HEADER};
    use std::net::TcpListener;
    use std::sync::Arc;

    struct Everyone;

    impl Registry for Everyone {
        fn is_registered(&self, _: &str) -> bool {
            true
        }
    }

    fn nodes(token: Option<&str>) -> NodeClient {
        NodeClient::new(crate::client::agent(), token.map(str::to_string), Arc::new(Everyone))
            .with_hop_timeout(Duration::from_millis(500))
    }

    fn open(token: Option<&str>, id: ObjectId, chain: &[String], len: u64, expected: Option<Checksum>) -> Connection {
        let upload = Upload { id, chain, signature: Some("sig"), declared: Some(len), expected };
        Connection::open(&nodes(token), &upload, len)
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
        let mut connection = open(Some("secret"), id, &chain, data.len() as u64, Some(Checksum(7)));
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
            "X-Aether-Chain-Signature: sig".to_string(),
            "Expect: 100-continue".to_string(),
        ] {
            assert!(head.contains(&header), "{header:?} missing from {head}");
        }
    }

    #[test]
    fn refusals_and_abandoned_uploads_break_the_chain() {
        let id = ObjectId::new_random();
        let (next, server) = serve_once(507, r#"{"error":"disk full"}"#.to_string());
        let chain = [next.clone(), "http://after:1".to_string()];
        let mut connection = open(None, id, &chain, 5, None);
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
        let mut connection = open(None, id, &[next], 10, None);
        connection.send(b"hello");
        assert_eq!(connection.finish()[0].status, 502);
        assert_eq!(server.join().unwrap().1, b"hello");

        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut connection = open(None, id, &[format!("http://127.0.0.1:{port}")], 1, None);
        connection.send(b"x");
        connection.send(&[]);
        let results = connection.finish();
        assert_eq!(results[0].status, 502);
        assert!(results[0].error.as_deref().unwrap().contains("cannot reach"), "{results:?}");
    }

    #[test]
    fn a_small_upload_is_forwarded_from_the_callers_thread_when_its_body_ends() {
        let id = ObjectId::new_random();
        let stored = Stored {
            objectid: id.to_string(),
            size: 11,
            checksum: Checksum(7),
            replicas: vec![ReplicaResult { node: "n".into(), status: 201, checksum: None, receipt: None, error: None }],
        };
        let (next, server) = serve_once(201, serde_json::to_string(&stored).unwrap());
        let chain = [next];
        let upload = Upload { id, chain: &chain, signature: None, declared: Some(11), expected: None };
        let mut forward = Forward::start(&nodes(None), &upload, Some(64));
        assert!(matches!(forward.via, Via::Inline { .. }) && forward.forwards());
        {
            let mut sink = forward.sink();
            sink(b"hello ");
            sink(b"world");
            // Nothing is sent before the end of the body; the end sends it and waits for
            // the answer, on this thread.
            assert!(!server.is_finished());
            sink(&[]);
        }
        // (The server's thread may still be on its way out after answering: that the
        // results are here already is what shows the answer came before `sink` returned.)
        assert!(matches!(&forward.via, Via::Inline { results: Some(_), .. }));
        assert_eq!(forward.finish(), stored.replicas);
        assert_eq!(server.join().unwrap().1, b"hello world");

        // A body that never ended (or a record this node could not write) is never sent.
        let mut forward = Forward::start(&nodes(None), &upload, Some(64));
        forward.sink()(b"hello");
        let results = forward.finish();
        assert_eq!(results[0].status, 502);
        assert!(results[0].error.as_deref().unwrap().contains("not forwarded"), "{results:?}");
        // Past `inline_up_to`, a forwarding thread takes the body as it arrives.
        assert!(matches!(Forward::start(&nodes(None), &upload, Some(10)).via, Via::Agent { .. }));
        assert!(matches!(Forward::start(&nodes(None), &upload, None).via, Via::Agent { .. }));
    }

    #[test]
    fn forwarding_threads_are_reused_and_never_too_few() {
        let pool: &'static Forwarders = Box::leak(Box::new(Forwarders::new()));
        let run_and_wait = |job: Box<dyn FnOnce() -> std::thread::ThreadId + Send>| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            pool.run(Box::new(move || {
                let _ = tx.send(job());
            }));
            rx.recv().unwrap()
        };
        let mut threads = std::collections::HashSet::new();
        for _ in 0..50 {
            // Once the last job's thread waits for work, the next job goes to it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !threads.is_empty() && pool.idle.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            threads.insert(run_and_wait(Box::new(|| std::thread::current().id())));
        }
        assert_eq!(threads.len(), 1, "one thread served every job in turn");

        // More jobs at once than threads kept idle: each gets a thread of its own, or
        // these would wait for each other forever.
        let jobs = IDLE_FORWARDERS * 2;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(jobs + 1));
        for _ in 0..jobs {
            let barrier = barrier.clone();
            pool.run(Box::new(move || {
                barrier.wait();
            }));
        }
        barrier.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.idle.load(Ordering::Acquire) != IDLE_FORWARDERS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pool.idle.load(Ordering::Acquire), IDLE_FORWARDERS, "the others exited");
    }

    #[test]
    fn a_next_node_that_never_answers_fails_the_hop_within_the_hop_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let next = format!("http://{}", listener.local_addr().unwrap());
        let started = Instant::now();
        let mut connection = open(None, ObjectId::new_random(), &[next], 4 << 20, None);
        connection.send(&vec![0u8; 4 << 20]);
        connection.send(&[]);
        let results = connection.finish();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(results[0].status, 504, "{results:?}");
        drop(listener);
    }
}
