//! Chained uploads: while a datanode writes an upload to its disk it streams the same
//! bytes to the next node of the chain, which does the same for the rest. The client
//! sends the bytes once; every node holds at most a few chunks in memory.

use std::io::{self, Read};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::proto::{Checksum, ObjectId, ReplicaResult, Stored, CHAIN_HEADER, CHECKSUM_HEADER, TOKEN_HEADER};

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
    tx: Option<Sender<Message>>,
    thread: Option<JoinHandle<Vec<ReplicaResult>>>,
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
            return Forward { tx: None, thread: None };
        }
        let (tx, rx) = crossbeam_channel::bounded(CHUNKS_IN_FLIGHT);
        let (agent, chain) = (agent.clone(), chain.to_vec());
        let thread = std::thread::Builder::new()
            .name("chain-forward".into())
            .spawn(move || forward(&agent, id, &chain, declared, expected, token.as_deref(), rx))
            .expect("spawning a forwarding thread");
        Forward { tx: Some(tx), thread: Some(thread) }
    }

    /// The callback `BlobStore::put` hands each written chunk to.
    pub fn sink(&self) -> impl FnMut(&[u8]) + '_ {
        let mut open = self.tx.is_some();
        move |chunk: &[u8]| {
            let Some(tx) = self.tx.as_ref().filter(|_| open) else { return };
            let message = if chunk.is_empty() { Message::End } else { Message::Chunk(chunk.to_vec()) };
            // A failed send means the next node gave up; this copy carries on regardless.
            open = tx.send(message).is_ok();
        }
    }

    /// Waits for the rest of the chain to answer and returns its results, next node first.
    pub fn finish(mut self) -> Vec<ReplicaResult> {
        self.tx.take();
        self.thread.take().map(|t| t.join().expect("the forwarding thread does not panic")).unwrap_or_default()
    }
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
    let failed = |status: u16, error: String| {
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
    };
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
