use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::ReadClock;

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    /// AetherStore patch: fallible, since duplicating a socket takes a file descriptor
    /// (upstream unwrapped it, and an `EMFILE` killed the accept thread).
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(Some(timeout)),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    /// AetherStore patch: the deadlines of this connection's reads (read half only).
    clock: Option<Arc<ReadClock>>,
    /// The read timeout last set on the socket, to set it only when it changes.
    read_timeout: Option<Duration>,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            clock: None,
            read_timeout: None,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            clock: None,
            read_timeout: None,
        };

        Ok((read, write))
    }

    /// AetherStore patch: every read of this stream waits at most what `clock` allows.
    pub(crate) fn with_clock(mut self, clock: Arc<ReadClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }
}

/// AetherStore patch: ends a connection from the thread handling a request, whoever owns
/// its reader and writer. A response that failed part-way (its body reader returned an
/// error, or ended before its `Content-Length`) leaves the client waiting for bytes that
/// will never come, and a request body left unread leaves the next request's start
/// unknown: closing tells the client at once, and nothing more is read or sent on that
/// connection. Only the writing direction is shut down here (the client sees the end);
/// the socket closes when its connection ends, which resets it if the client is still
/// sending, instead of leaving it stalled on a shut reading direction.
#[derive(Clone)]
pub(crate) struct ConnectionCloser(Arc<(Mutex<Stream>, AtomicBool, Option<Arc<ReadClock>>)>);

impl ConnectionCloser {
    pub(crate) fn new(socket: &RefinedTcpStream) -> IoResult<ConnectionCloser> {
        let stream = socket.stream.try_clone()?;
        Ok(ConnectionCloser(Arc::new((Mutex::new(stream), AtomicBool::new(false), socket.clock.clone()))))
    }

    /// The rest of a request body is being skipped: its reads get a short deadline.
    pub(crate) fn draining(&self) {
        if let Some(clock) = &self.0 .2 {
            clock.draining();
        }
    }

    pub(crate) fn close(&self) {
        self.0 .1.store(true, Ordering::Relaxed);
        if let Ok(mut stream) = self.0 .0.lock() {
            stream.shutdown(Shutdown::Write).ok();
        }
    }

    /// Whether the connection was closed: it serves no further request.
    pub(crate) fn is_closed(&self) -> bool {
        self.0 .1.load(Ordering::Relaxed)
    }

    /// Ends a connection after a response was flushed: stops writing, reads (and drops)
    /// what the client still sends, for up to `time` and `bytes`, so that closing does
    /// not reset the connection before the client read the response.
    pub(crate) fn linger_close(&self, time: Duration, bytes: usize) {
        self.close();
        if let Ok(mut stream) = self.0 .0.lock() {
            let deadline = Instant::now() + time;
            let mut buffer = [0u8; 8192];
            let mut drained = 0;
            while drained < bytes {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || stream.set_read_timeout(left).is_err() {
                    break;
                }
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        }
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let Some(clock) = &self.clock else {
            return self.stream.read(buf);
        };
        let timeout = clock.before_read()?;
        // Setting a timeout is a system call: skip it while it stays the same (idle and
        // body reads); a request head's shrinking deadline sets it on each read.
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = Some(timeout);
        }
        clock.after_read(self.stream.read(buf))
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
