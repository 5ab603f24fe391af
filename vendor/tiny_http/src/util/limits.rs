//! AetherStore patch: what one client may cost a server. `Limits` is the configuration;
//! `ReadClock` holds each read of a connection to a deadline that depends on what the
//! connection is waiting for (the next request, the rest of a request head, a body);
//! `DrainOnDrop` skips an unread body through a fixed buffer, or closes the connection;
//! `ChunkLineLimit` bounds the chunk-size lines the chunked decoder buffers.

use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::ConnectionCloser;
use crate::Request;

/// Something the server could not do on its own, for the embedding program to log or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// The server goes on; e.g. `accept()` failed and is retried after a pause.
    Warning(String),
    /// The server can no longer serve (the listener failed for too long, or its thread
    /// died): the program should exit so that its supervisor restarts it.
    Fatal(String),
    /// A request was answered by the server itself, before any handler saw it (a
    /// malformed or oversized head, a deadline missed, an HTTP version it does not
    /// speak), and its connection closed: the embedding program's request log should
    /// show it like any other answer.
    Refused {
        status: u16,
        peer: Option<std::net::SocketAddr>,
        reason: String,
    },
}

/// The limits one server applies to every connection.
#[derive(Clone)]
pub struct Limits {
    /// Longest header line (and request line without its URL), in bytes: 431 beyond.
    pub max_header_line: usize,
    /// Longest request head (request line and all headers), in bytes: 431 beyond.
    pub max_head: usize,
    /// Longest URL, in bytes: 414 beyond.
    pub max_url: usize,
    /// Time from the first byte of a request to the end of its head: 408 beyond.
    pub head_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request before it is closed.
    pub idle_timeout: Duration,
    /// Longest silence while a body is read or a response written; also the window in
    /// which a body must bring at least `min_body_rate` bytes per second.
    pub body_timeout: Duration,
    /// Bytes per second a body must average over each `body_timeout` window.
    pub min_body_rate: u64,
    /// A body the handler left unread is skipped if at most this many bytes remain;
    /// otherwise the connection is closed.
    pub max_drain: u64,
    /// Connections served at once; beyond it (and the reserved ones) a connection is
    /// answered 503 and closed.
    pub max_connections: usize,
    /// Connections beyond `max_connections` kept for priority requests: on such a
    /// connection, a request `is_priority` refuses is answered 503 and the connection closed.
    pub reserved_connections: usize,
    /// Which requests are priority traffic (e.g. internal requests of a cluster).
    pub is_priority: Option<Arc<dyn Fn(&Request) -> bool + Send + Sync>>,
    /// How long `accept()` may keep failing before the server reports a fatal trouble.
    pub accept_failure_limit: Duration,
    /// Where troubles go; without it, they go to the `log` crate.
    pub report: Option<Arc<dyn Fn(Trouble) + Send + Sync>>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header_line: 8 << 10,
            max_head: 64 << 10,
            max_url: 8 << 10,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(20),
            min_body_rate: 1024,
            max_drain: 1 << 20,
            max_connections: 512,
            reserved_connections: 64,
            is_priority: None,
            accept_failure_limit: Duration::from_secs(60),
            report: None,
        }
    }
}

impl Limits {
    pub(crate) fn report(&self, trouble: Trouble) {
        match &self.report {
            Some(report) => report(trouble),
            None => match trouble {
                Trouble::Warning(message) => log::warn!("{}", message),
                Trouble::Fatal(message) => log::error!("{}", message),
                Trouble::Refused { status, peer, reason } => {
                    log::info!("refused a request from {:?}: {} {}", peer, status, reason)
                }
            },
        }
    }

    pub(crate) fn is_priority(&self, request: &Request) -> bool {
        self.is_priority.as_ref().is_some_and(|f| f(request))
    }
}

enum Phase {
    /// Waiting for the first byte of the next request.
    Idle,
    /// Reading a request head that must be complete by `deadline`.
    Head { deadline: Instant },
    /// Reading a body (or writing its response): each window must bring its quota. The
    /// first window starts at the body's first read, not at the end of the head, so a
    /// request that waited for a slot (or a client that waited for `100 Continue`) is
    /// not held to time it did not have.
    Body { window_end: Option<Instant>, window_bytes: u64 },
    /// Skipping the unread rest of a body, which must arrive by `deadline`.
    Drain { deadline: Instant },
}

/// How long the unread rest of a body may take to arrive before the connection is
/// closed instead: skipping it only saves the client a new connection, so it must not
/// hold a request slot for long.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The deadlines of one connection's reads, shared by its reader and its `ClientConnection`.
pub(crate) struct ReadClock {
    head_timeout: Duration,
    idle_timeout: Duration,
    body_timeout: Duration,
    /// Bytes each body window must bring.
    quota: u64,
    phase: Mutex<Phase>,
}

impl ReadClock {
    pub(crate) fn new(limits: &Limits) -> Arc<ReadClock> {
        let window = limits.body_timeout.as_secs_f64();
        Arc::new(ReadClock {
            head_timeout: limits.head_timeout,
            idle_timeout: limits.idle_timeout,
            body_timeout: limits.body_timeout,
            quota: (limits.min_body_rate as f64 * window) as u64,
            phase: Mutex::new(Phase::Idle),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection waits for its next request.
    pub(crate) fn idle(&self) {
        *self.phase() = Phase::Idle;
    }

    /// The first byte of a request arrived: its head must follow within `head_timeout`.
    pub(crate) fn head_started(&self) {
        let mut phase = self.phase();
        if let Phase::Idle = *phase {
            *phase = Phase::Head { deadline: Instant::now() + self.head_timeout };
        }
    }

    /// The head is read: what follows is a body, bound by silence and rate.
    pub(crate) fn body_started(&self) {
        *self.phase() = Phase::Body { window_end: None, window_bytes: 0 };
    }

    /// The handler is done and the rest of the body is being skipped.
    pub(crate) fn draining(&self) {
        *self.phase() = Phase::Drain { deadline: Instant::now() + DRAIN_TIME };
    }

    pub(crate) fn is_idle(&self) -> bool {
        matches!(*self.phase(), Phase::Idle)
    }

    /// How long the next read may wait, or the error that ends the connection now.
    pub(crate) fn before_read(&self) -> IoResult<Duration> {
        let now = Instant::now();
        let mut phase = self.phase();
        if let Phase::Body { window_end: window_end @ None, .. } = &mut *phase {
            *window_end = Some(now + self.body_timeout);
        }
        match *phase {
            Phase::Idle => Ok(self.idle_timeout),
            Phase::Head { deadline } => match deadline.checked_duration_since(now) {
                Some(left) if !left.is_zero() => Ok(left),
                _ => Err(self.head_too_slow()),
            },
            Phase::Drain { deadline } => match deadline.checked_duration_since(now) {
                Some(left) if !left.is_zero() => Ok(left),
                _ => Err(drain_too_slow()),
            },
            Phase::Body { window_end, window_bytes } => {
                if window_bytes >= self.quota {
                    Ok(self.body_timeout)
                } else {
                    match window_end.and_then(|end| end.checked_duration_since(now)) {
                        Some(left) if !left.is_zero() => Ok(left),
                        _ => Err(self.body_too_slow()),
                    }
                }
            }
        }
    }

    /// Accounts for a read that returned `result`, turning a socket timeout into the
    /// error that says which limit was hit.
    pub(crate) fn after_read(&self, result: IoResult<usize>) -> IoResult<usize> {
        let mut phase = self.phase();
        match result {
            Ok(n) => {
                if let Phase::Body { window_end, window_bytes } = &mut *phase {
                    *window_bytes += n as u64;
                    let now = Instant::now();
                    if window_end.is_some_and(|end| now >= end) {
                        if *window_bytes < self.quota && n > 0 {
                            return Err(self.body_too_slow());
                        }
                        *window_end = Some(now + self.body_timeout);
                        *window_bytes = 0;
                    }
                }
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(match *phase {
                Phase::Idle => IoError::new(ErrorKind::TimedOut, "the connection was idle too long"),
                Phase::Head { .. } => self.head_too_slow(),
                Phase::Drain { .. } => drain_too_slow(),
                Phase::Body { window_bytes, .. } if window_bytes >= self.quota => IoError::new(
                    ErrorKind::TimedOut,
                    format!("no byte of the request body came for {:?}", self.body_timeout),
                ),
                Phase::Body { .. } => self.body_too_slow(),
            }),
            Err(e) => Err(e),
        }
    }

    fn head_too_slow(&self) -> IoError {
        IoError::new(ErrorKind::TimedOut, format!("the request head took longer than {:?}", self.head_timeout))
    }

    fn body_too_slow(&self) -> IoError {
        IoError::new(
            ErrorKind::TimedOut,
            format!("the request body came slower than {} bytes in {:?}", self.quota, self.body_timeout),
        )
    }
}

fn drain_too_slow() -> IoError {
    IoError::new(ErrorKind::TimedOut, format!("the unread rest of a request body took longer than {:?}", DRAIN_TIME))
}

/// Reads a body to its end when dropped unread, through a fixed buffer, at most
/// `max_drain` bytes and within `DRAIN_TIME`; a body with more left (or one that fails
/// or lags) closes the connection instead, since the next request would start inside it.
pub(crate) struct DrainOnDrop<R: Read> {
    inner: R,
    /// Bytes left if known (Content-Length), for refusing a long drain before reading.
    remaining: Option<u64>,
    max_drain: u64,
    closer: Option<ConnectionCloser>,
    ended: bool,
    failed: bool,
}

impl<R: Read> DrainOnDrop<R> {
    pub(crate) fn new(inner: R, remaining: Option<u64>, max_drain: u64, closer: Option<ConnectionCloser>) -> Self {
        DrainOnDrop { inner, remaining, max_drain, closer, ended: false, failed: false }
    }

    fn drain(&mut self) -> bool {
        if self.remaining.is_some_and(|left| left > self.max_drain) {
            return false;
        }
        if let Some(closer) = &self.closer {
            closer.draining();
        }
        let mut buffer = [0u8; 8192];
        let mut drained = 0u64;
        loop {
            match self.inner.read(&mut buffer) {
                Ok(0) => return true,
                Ok(n) => {
                    drained += n as u64;
                    if drained > self.max_drain {
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

impl<R: Read> Read for DrainOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let result = self.inner.read(buf);
        match &result {
            Ok(0) if !buf.is_empty() => self.ended = true,
            Ok(n) => self.remaining = self.remaining.map(|left| left.saturating_sub(*n as u64)),
            // A body that failed half-way leaves the connection mid-message: it closes
            // once the request is done (after its error response went out).
            Err(e) if e.kind() != ErrorKind::Interrupted => self.failed = true,
            Err(_) => {}
        }
        result
    }
}

impl<R: Read> Drop for DrainOnDrop<R> {
    fn drop(&mut self) {
        if self.failed {
            if let Some(closer) = &self.closer {
                closer.close();
            }
        } else if !self.ended && !self.drain() {
            // A client still sending a body it was answered before (a 413, a 507) reads
            // that answer only once its sending is done: closing at once would reset the
            // connection under it.
            if let Some(closer) = &self.closer {
                closer.linger_close(Duration::from_secs(2), 64 << 20);
            }
        }
    }
}

/// Bounds the lines the chunked decoder reads byte by byte (chunk sizes and their
/// extensions), which it collects in a vector with no limit: a run of more than `limit`
/// one-byte reads without a line feed is an error.
pub(crate) struct ChunkLineLimit<R: Read> {
    inner: R,
    run: usize,
    limit: usize,
}

impl<R: Read> ChunkLineLimit<R> {
    pub(crate) fn new(inner: R, limit: usize) -> Self {
        ChunkLineLimit { inner, run: 0, limit }
    }
}

impl<R: Read> Read for ChunkLineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let n = self.inner.read(buf)?;
        if buf.len() == 1 && n == 1 && buf[0] != b'\n' {
            self.run += 1;
            if self.run > self.limit {
                return Err(IoError::new(
                    ErrorKind::InvalidData,
                    format!("a chunk-size line is longer than {} bytes", self.limit),
                ));
            }
        } else {
            self.run = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn drain_skips_a_short_rest_through_a_fixed_buffer() {
        let mut source = Cursor::new(vec![7u8; 100_000]);
        {
            let reader = DrainOnDrop::new(source.by_ref().take(50_000), Some(50_000), 1 << 20, None);
            drop(reader);
        }
        assert_eq!(source.position(), 50_000);
    }

    #[test]
    fn drain_refuses_a_long_declared_rest_without_reading() {
        let mut source = Cursor::new(vec![7u8; 10]);
        drop(DrainOnDrop::new(source.by_ref(), Some(99_999_999_999_999_999), 1 << 20, None));
        assert_eq!(source.position(), 0);
    }

    #[test]
    fn a_body_window_starts_at_its_first_read_and_must_bring_its_quota() {
        let limits = Limits {
            body_timeout: Duration::from_millis(50),
            min_body_rate: 1000, // 50 bytes a window
            ..Limits::default()
        };
        let clock = ReadClock::new(&limits);
        clock.body_started();
        // Time spent before the first read (waiting for a slot) does not count.
        std::thread::sleep(Duration::from_millis(80));
        assert!(clock.before_read().is_ok());
        assert!(clock.after_read(Ok(60)).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        // The quota was met: the next window starts with this read.
        assert!(clock.before_read().is_ok());
        assert!(clock.after_read(Ok(10)).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        let slow = clock.before_read().unwrap_err();
        assert_eq!(slow.kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn chunk_line_limit_stops_an_endless_size_line() {
        let mut reader = ChunkLineLimit::new(Cursor::new(vec![b'f'; 10_000]), 4096);
        let mut byte = [0u8; 1];
        let failed = (0..10_000).find(|_| reader.read(&mut byte).is_err());
        assert_eq!(failed, Some(4096));
    }
}
