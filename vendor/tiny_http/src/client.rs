use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::io::Write;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::common::{HTTPVersion, Header, Method};
use crate::util::{ConnectionCloser, Limits, ReadClock, RefinedTcpStream};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // AetherStore patch: lets a request whose response failed part-way close the connection
    closer: ConnectionCloser,

    // AetherStore patch: head sizes, timeouts, and the clock that enforces the timeouts
    limits: Arc<Limits>,
    clock: Arc<ReadClock>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// AetherStore patch: no request began (the client closed, or stayed idle too long).
    NoRequest,
    /// AetherStore patch: an answer and the sentence that says why, then the connection closes.
    Refused(u16, HTTPVersion, String),
}

/// AetherStore patch: why a line of a request head could not be read.
enum LineError {
    Io(IoError),
    TooLong,
    NotAscii,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    /// AetherStore patch: fallible (the closer duplicates the socket), and bound by `limits`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<Limits>,
    ) -> IoResult<ClientConnection> {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let clock = ReadClock::new(&limits);
        let read_socket = read_socket.with_clock(Arc::clone(&clock));
        let closer = ConnectionCloser::new(&read_socket)?;

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        Ok(ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            closer,
            limits,
            clock,
        })
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// AetherStore patch: at most `max` bytes (upstream had no limit: a 200 MiB header
    /// line took 200 MB), and the first byte of a request starts its head's deadline.
    fn read_next_line(&mut self, max: usize, starts_request: bool) -> Result<String, LineError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(LineError::Io)?,
                None => {
                    return Err(LineError::Io(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };
            if starts_request && buf.is_empty() {
                self.clock.head_started();
            }

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return match AsciiString::from_ascii(buf) {
                    Ok(line) => Ok(line.to_string()),
                    Err(_) => Err(LineError::NotAscii),
                };
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
            if buf.len() > max + 1 {
                return Err(LineError::TooLong);
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let limits = Arc::clone(&self.limits);
        self.clock.idle();
        let (method, path, version, headers) = {
            // reading the request line
            let line_limit = limits.max_url + limits.max_header_line;
            let line = match self.read_next_line(line_limit, true) {
                Ok(line) => line,
                Err(LineError::Io(_)) if self.clock.is_idle() => return Err(ReadError::NoRequest),
                Err(LineError::Io(e)) => return Err(ReadError::ReadIoError(e)),
                Err(LineError::TooLong) => return Err(url_too_long(&limits)),
                Err(LineError::NotAscii) => {
                    return Err(ReadError::Refused(
                        400,
                        HTTPVersion(1, 1),
                        "the request line holds a byte that is not ASCII".into(),
                    ))
                }
            };
            let mut head_size = line.len() + 2;
            let (method, path, version) = parse_request_line(
                line.trim(), // TODO: remove this conversion
            )?;
            if path.len() > limits.max_url {
                return Err(url_too_long(&limits));
            }

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = match self.read_next_line(limits.max_header_line, false) {
                        Ok(line) => line,
                        Err(LineError::Io(e)) => return Err(ReadError::ReadIoError(e)),
                        Err(LineError::TooLong) => {
                            return Err(ReadError::Refused(
                                431,
                                version,
                                format!(
                                    "a header line is longer than {} bytes",
                                    limits.max_header_line
                                ),
                            ))
                        }
                        Err(LineError::NotAscii) => {
                            return Err(ReadError::Refused(
                                400,
                                version,
                                "a header holds a byte that is not ASCII".into(),
                            ))
                        }
                    };
                    head_size += line.len() + 2;
                    if head_size > limits.max_head {
                        return Err(ReadError::Refused(
                            431,
                            version,
                            format!("the request head is larger than {} bytes", limits.max_head),
                        ));
                    }

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };
        self.clock.body_started();

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some(self.closer.clone()),
            limits.max_drain,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }

    /// AetherStore patch: answers a request that cannot be served with a JSON error and
    /// closes the connection (we do not know where the next request would start).
    fn refuse(&mut self, status: u16, version: HTTPVersion, message: &str) {
        use crate::{Response, StatusCode};

        self.limits.report(crate::Trouble::Refused {
            status,
            peer: self.remote_addr.as_ref().ok().copied().flatten(),
            reason: message.to_string(),
        });

        let mut writer = self.sink.next().unwrap();
        let body = format!("{{\"error\": \"{}\"}}", message.replace(['"', '\\'], "'"));
        let response = Response::from_string(body)
            .with_status_code(StatusCode(status))
            .with_header(
                Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap(),
            );
        response
            .raw_print(&mut writer, version, &[], false, None)
            .and_then(|()| writer.flush())
            .ok();
        drop(writer);
        // A client sending a malformed head gets a moment to read the answer; one
        // sending an endless one is not read much further.
        self.closer.linger_close(std::time::Duration::from_secs(1), 256 << 10);
    }
}

fn url_too_long(limits: &Limits) -> ReadError {
    ReadError::Refused(
        414,
        HTTPVersion(1, 1),
        format!("the URL is longer than {} bytes", limits.max_url),
    )
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests || self.closer.is_closed() {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    self.refuse(400, HTTPVersion(1, 1), "the request line is malformed");
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    self.refuse(400, ver, "a header line is malformed");
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let message = err.to_string();
                    self.refuse(408, HTTPVersion(1, 1), &message);
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    self.refuse(417, ver, "the only expectation understood is 100-continue");
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::Refused(status, ver, message)) => {
                    self.refuse(status, ver, &message);
                    return None;
                }

                Err(ReadError::NoRequest) => return None,

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // AetherStore patch: answered through the request's own writer, then the
                // connection closes. A writer taken from the sink waited for the request's
                // writer to be dropped, which the request outlived: the connection's
                // thread hung forever on any request line naming HTTP/2.0 or later.
                self.limits.report(crate::Trouble::Refused {
                    status: 505,
                    peer: rq.remote_addr().copied(),
                    reason: format!("HTTP/{} is not spoken here", rq.http_version()),
                });
                let mut writer = rq.into_writer();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(&mut writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                std::io::Write::flush(&mut writer).ok();
                return None;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
