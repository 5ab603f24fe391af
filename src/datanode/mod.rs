//! The datanode: stores immutable objects on local disk and serves them over HTTP.
//!
//! `GET /health`, `PUT|GET|HEAD /objects/{id}`. Requests are parsed into an `Endpoint`
//! and dispatched by one `match`; every byte on disk goes through `store::BlobStore`.
//! With a master configured, a background thread registers the node until it succeeds.

pub mod store;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tiny_http::{Method, Request, Response, StatusCode};

use crate::client::Client;
use crate::http::{self, ApiError, Handled, HttpServer, Reply};
use crate::log;
use crate::proto::{Health, ObjectId, Stored};
use store::{BlobStore, StoreError};

#[derive(Debug, Clone)]
pub struct DatanodeConfig {
    /// Address to listen on, e.g. `0.0.0.0:42101`; port 0 picks a free one.
    pub listen: String,
    pub data_dir: PathBuf,
    /// The base URL other parties use to reach this node; derived from the listen
    /// address when absent.
    pub advertise: Option<String>,
    /// The master to register with; none means a standalone node.
    pub master: Option<String>,
    /// This node's id; otherwise the one kept in the data directory, or a new one.
    pub node_id: Option<String>,
    pub threads: usize,
    pub max_object_size: u64,
    /// Disk space an upload may never eat into.
    pub reserve_bytes: u64,
}

impl DatanodeConfig {
    pub fn new(listen: &str, data_dir: PathBuf) -> DatanodeConfig {
        DatanodeConfig {
            listen: listen.to_string(),
            data_dir,
            advertise: None,
            master: None,
            node_id: None,
            threads: 32,
            max_object_size: 5 << 40,
            reserve_bytes: 64 << 20,
        }
    }
}

/// A running datanode.
pub struct Datanode {
    http: HttpServer,
    id: String,
    address: String,
    stop: Sender<()>,
    registrar: Option<JoinHandle<()>>,
}

impl Datanode {
    pub fn start(config: DatanodeConfig, agent: ureq::Agent) -> io::Result<Datanode> {
        let id = store::load_or_create_node_id(&config.data_dir, config.node_id.as_deref())?;
        crate::proto::validate_node_id(&id).map_err(io::Error::other)?;
        let (blobs, leftovers) = BlobStore::open(&config.data_dir, config.reserve_bytes)?;
        if leftovers > 0 {
            log::warn(&id, &format!("removed {leftovers} unfinished upload(s) left by an earlier run"));
        }
        let node = Arc::new(Node { blobs, max_object_size: config.max_object_size });
        let handler_node = Arc::clone(&node);
        let http = HttpServer::start(&config.listen, config.threads, &id, move |request| handler_node.handle(request))?;
        let address = match &config.advertise {
            Some(address) => crate::proto::normalize_address(address).map_err(io::Error::other)?,
            None => default_address(http.local_addr()),
        };
        log::info(
            &id,
            &format!(
                "listening on http://{} as {address}, objects in {}",
                http.local_addr(),
                config.data_dir.display()
            ),
        );
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let registrar = config.master.as_ref().map(|master| {
            let client = Client::new(agent, master);
            let (id, address) = (id.clone(), address.clone());
            std::thread::Builder::new()
                .name(format!("{id}-register"))
                .spawn(move || register_until_done(&client, &id, &address, &stopped))
                .expect("spawning the registration thread")
        });
        Ok(Datanode { http, id, address, stop, registrar })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address this node advertises, e.g. `http://localhost:42101`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn shutdown(mut self) {
        let _ = self.stop.try_send(());
        if let Some(registrar) = self.registrar.take() {
            let _ = registrar.join();
        }
        self.http.shutdown();
        log::info(&self.id, "stopped");
    }
}

fn default_address(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// Registers with the master, retrying every second until it answers or the node stops.
fn register_until_done(client: &Client, id: &str, address: &str, stop: &Receiver<()>) {
    let mut failures = 0u32;
    loop {
        match client.register(id, address) {
            Ok(()) => {
                log::info(id, &format!("registered with master {} as {address}", client.master()));
                return;
            }
            Err(e) => {
                failures += 1;
                // The first failure and then every 30th: a master that is still starting
                // should not flood the log.
                if failures == 1 || failures % 30 == 0 {
                    log::warn(id, &format!("cannot register with master yet ({e}); retrying"));
                }
            }
        }
        if stop.recv_timeout(Duration::from_secs(1)) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
            return;
        }
    }
}

/// The API operations of a datanode.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    PutObject(ObjectId),
    GetObject(ObjectId),
    HeadObject(ObjectId),
}

impl Endpoint {
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        if path == "/health" {
            return match method {
                Method::Get | Method::Head => Ok(Endpoint::Health),
                _ => Err(ApiError::method_not_allowed(method, path, "GET")),
            };
        }
        let Some(raw_id) = path.strip_prefix("/objects/") else {
            return Err(ApiError::no_route(path));
        };
        let id = ObjectId::parse(raw_id).map_err(ApiError::bad_request)?;
        match method {
            Method::Put => Ok(Endpoint::PutObject(id)),
            Method::Get => Ok(Endpoint::GetObject(id)),
            Method::Head => Ok(Endpoint::HeadObject(id)),
            _ => Err(ApiError::method_not_allowed(method, path, "GET, HEAD, PUT")),
        }
    }
}

struct Node {
    blobs: BlobStore,
    max_object_size: u64,
}

impl Node {
    fn handle(&self, request: &mut Request) -> Handled {
        let endpoint = match Endpoint::parse(request.method(), http::path_of(request)) {
            Ok(endpoint) => endpoint,
            Err(e) => return e.into(),
        };
        let result = match endpoint {
            Endpoint::Health => Ok(http::json_reply(200, &Health { status: "ok".to_string() }).into()),
            Endpoint::PutObject(id) => self.put(request, &id),
            Endpoint::GetObject(id) => self.get(&id),
            Endpoint::HeadObject(id) => self.head(&id),
        };
        result.unwrap_or_else(|e| ApiError::new(e.status(), e.to_string()).into())
    }

    fn put(&self, request: &mut Request, id: &ObjectId) -> Result<Handled, StoreError> {
        let declared = match http::header_value(request, "Content-Length") {
            Some(value) => Some(
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| StoreError::Body(io::Error::other(format!("bad Content-Length {value:?}"))))?,
            ),
            None => None,
        };
        // Refuse before reading a byte, so a client waiting on `100-continue` sends nothing.
        if self.blobs.contains(id) {
            return Err(StoreError::Exists(*id));
        }
        if declared.is_some_and(|len| len > self.max_object_size) {
            return Err(StoreError::TooLarge { limit: self.max_object_size });
        }
        let size = self.blobs.put(id, request.as_reader(), declared, self.max_object_size)?;
        let reply = http::json_reply(201, &Stored { objectid: id.to_string(), size });
        Ok(Handled { reply, bytes_in: size, error: None })
    }

    fn get(&self, id: &ObjectId) -> Result<Handled, StoreError> {
        let (file, len) = self.blobs.open_object(id)?;
        Ok(object_reply(Box::new(file), len).into())
    }

    fn head(&self, id: &ObjectId) -> Result<Handled, StoreError> {
        let len = self.blobs.object_size(id)?;
        // tiny_http sends no body for HEAD but keeps Content-Length from the length given.
        Ok(object_reply(Box::new(io::empty()), len).into())
    }
}

fn object_reply(body: Box<dyn Read + Send>, len: u64) -> Reply {
    let len = usize::try_from(len).expect("object sizes fit in memory addresses on 64-bit hosts");
    Response::new(
        StatusCode(200),
        vec![http::header("Content-Type", "application/octet-stream")],
        body,
        Some(len),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let id = "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03";
        let parsed = ObjectId::parse(id).unwrap();
        let table: &[(Method, String, Result<Endpoint, u16>)] = &[
            (Method::Get, "/health".into(), Ok(Endpoint::Health)),
            (Method::Put, format!("/objects/{id}"), Ok(Endpoint::PutObject(parsed))),
            (Method::Get, format!("/objects/{id}"), Ok(Endpoint::GetObject(parsed))),
            (Method::Head, format!("/objects/{id}"), Ok(Endpoint::HeadObject(parsed))),
            (Method::Delete, format!("/objects/{id}"), Err(405)),
            (Method::Post, "/health".into(), Err(405)),
            (Method::Get, "/objects/../../etc/passwd".into(), Err(400)),
            (Method::Get, "/objects/".into(), Err(400)),
            (Method::Get, "/nope".into(), Err(404)),
        ];
        for (method, path, want) in table {
            let got = Endpoint::parse(method, path).map_err(|e| e.status);
            assert_eq!(&got, want, "{method} {path}");
        }
    }
}
