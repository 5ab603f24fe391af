//! Fuzzes request parsing end to end: the input is sent as raw bytes over loopback TCP to
//! an in-process `HttpServer` (`fuzz_api::start_http_server`: the vendored tiny_http that
//! both servers use, with its request-line, header, chunked and Content-Length parsing)
//! whose handler runs the datanode's and master's own parsers on what arrived: the object
//! id in the path, the `Range` and `X-Aether-Chain` headers and a JSON body. The server
//! must answer or close the connection, never crash, hang or stop accepting.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use aetherstore::fuzz_api::start_http_server;
use libfuzzer_sys::fuzz_target;

/// How long the server may take to answer or close once the whole input was sent.
const DEADLINE: Duration = Duration::from_secs(10);

fn server() -> SocketAddr {
    static SERVER: OnceLock<SocketAddr> = OnceLock::new();
    *SERVER.get_or_init(|| start_http_server().expect("the fuzz server starts"))
}

fuzz_target!(|input: &[u8]| {
    let addr = server();
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE)
        .unwrap_or_else(|e| panic!("the server no longer accepts connections: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    // The server may answer and close before it read everything: write errors are fine.
    let _ = stream.write_all(input);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                assert!(answer.len() < 1 << 20, "the server answered more than 1 MiB");
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the server neither answered nor closed within {DEADLINE:?} of the request's end")
            }
            // A reset is a closed connection.
            Err(_) => break,
        }
    }
    // Not "HTTP/1.": tiny_http answers a 400 or 417 in the version the request named,
    // HTTP/2.0 included (harmless: the connection closes after it).
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/"),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
});
