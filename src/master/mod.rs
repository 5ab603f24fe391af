//! The master: the metadata control plane. It tracks datanodes, places new objects on
//! them and answers where an object's replicas are. It never touches object bytes.
//!
//! Requests are parsed into an `Endpoint` and dispatched by one `match`; all state lives
//! in `db::MetaDb`.

pub mod db;
pub mod placement;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tiny_http::{Method, Request};

use crate::http::{self, ApiError, Handled, HttpServer};
use crate::log;
use crate::proto::{
    normalize_address, validate_node_id, CompleteUpload, Health, InitUpload, NodeInfo, NodeList, ObjectId, ObjectInfo,
    Placement, RegisterNode, ReplicaInfo, StatusOk,
};
use db::{MetaDb, MetaError, Registered};

#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Address to listen on, e.g. `0.0.0.0:42100`; port 0 picks a free one.
    pub listen: String,
    /// Directory of the metadata database (`meta.db`).
    pub data_dir: PathBuf,
    /// Replicas placed per object unless `init` asks otherwise.
    pub replication: usize,
    pub threads: usize,
    pub max_object_size: u64,
}

impl MasterConfig {
    pub fn new(listen: &str, data_dir: PathBuf) -> MasterConfig {
        MasterConfig { listen: listen.to_string(), data_dir, replication: 2, threads: 16, max_object_size: 5 << 40 }
    }
}

/// The most replicas one object may ask for.
pub const MAX_REPLICATION: usize = 16;

pub struct Master {
    http: HttpServer,
}

impl Master {
    pub fn start(config: MasterConfig) -> io::Result<Master> {
        if !(1..=MAX_REPLICATION).contains(&config.replication) {
            return Err(io::Error::other(format!(
                "replication factor {} is out of range 1..={MAX_REPLICATION}",
                config.replication
            )));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", config.data_dir.display())))?;
        let db_path = config.data_dir.join("meta.db");
        let db = MetaDb::open(&db_path, config.threads).map_err(io::Error::other)?;
        let state = Arc::new(MasterState { db, config: config.clone() });
        let http = HttpServer::start(&config.listen, config.threads, "master", move |request| state.handle(request))?;
        log::info(
            "master",
            &format!(
                "listening on http://{}, metadata in {}, replication {}",
                http.local_addr(),
                db_path.display(),
                config.replication
            ),
        );
        Ok(Master { http })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.http.local_addr()
    }

    pub fn shutdown(self) {
        self.http.shutdown();
        log::info("master", "stopped");
    }
}

/// The API operations of the master.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    RegisterNode,
    ListNodes,
    InitUpload,
    CompleteUpload,
    GetObject(ObjectId),
}

impl Endpoint {
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let (endpoint, allow) = match path {
            "/health" => (Endpoint::Health, "GET"),
            "/api/node/register" => (Endpoint::RegisterNode, "POST"),
            "/api/nodes" => (Endpoint::ListNodes, "GET"),
            "/api/upload/init" => (Endpoint::InitUpload, "POST"),
            "/api/upload/complete" => (Endpoint::CompleteUpload, "POST"),
            _ => match path.strip_prefix("/api/objects/") {
                Some(raw_id) => {
                    let id = ObjectId::parse(raw_id).map_err(ApiError::bad_request)?;
                    (Endpoint::GetObject(id), "GET")
                }
                None => return Err(ApiError::no_route(path)),
            },
        };
        let allowed = match allow {
            "POST" => *method == Method::Post,
            _ => matches!(method, Method::Get | Method::Head),
        };
        if allowed {
            Ok(endpoint)
        } else {
            Err(ApiError::method_not_allowed(method, path, allow))
        }
    }
}

struct MasterState {
    db: MetaDb,
    config: MasterConfig,
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> ApiError {
        ApiError::new(e.status(), e.to_string())
    }
}

impl MasterState {
    fn handle(&self, request: &mut Request) -> Handled {
        let bytes_in = request.body_length().unwrap_or(0) as u64;
        let result = Endpoint::parse(request.method(), http::path_of(request))
            .and_then(|endpoint| self.dispatch(endpoint, request));
        let mut handled = match result {
            Ok(reply) => Handled::from(reply),
            Err(e) => Handled::from(e),
        };
        handled.bytes_in = bytes_in;
        handled
    }

    fn dispatch(&self, endpoint: Endpoint, request: &mut Request) -> Result<http::Reply, ApiError> {
        match endpoint {
            Endpoint::Health => Ok(http::json_reply(200, &Health { status: "ok".into() })),
            Endpoint::RegisterNode => {
                let body: RegisterNode =
                    http::read_json(request, r#"{"id": "datanode-1", "address": "http://host:42101"}"#)?;
                self.register_node(body)
            }
            Endpoint::ListNodes => self.list_nodes(),
            Endpoint::InitUpload => {
                let body: InitUpload = http::read_json(request, r#"{"size": <bytes>}"#)?;
                self.init_upload(body)
            }
            Endpoint::CompleteUpload => {
                let body: CompleteUpload = http::read_json(request, r#"{"objectid": "<uuid>"}"#)?;
                self.complete_upload(body)
            }
            Endpoint::GetObject(id) => self.get_object(id),
        }
    }

    fn register_node(&self, body: RegisterNode) -> Result<http::Reply, ApiError> {
        validate_node_id(&body.id).map_err(ApiError::bad_request)?;
        let address = normalize_address(&body.address).map_err(ApiError::bad_request)?;
        let outcome = self.db.register_node(&body.id, &address)?;
        match outcome {
            Registered::New => log::info("master", &format!("node {} registered at {address}", body.id)),
            Registered::AddressChanged => log::info("master", &format!("node {} moved to {address}", body.id)),
            Registered::Unchanged => {}
        }
        Ok(http::json_reply(200, &StatusOk::ok()))
    }

    fn list_nodes(&self) -> Result<http::Reply, ApiError> {
        let nodes = self
            .db
            .nodes()?
            .into_iter()
            .map(|n| NodeInfo {
                id: n.id,
                address: n.address,
                state: n.state,
                registered_at: rfc3339(n.registered_at),
                last_seen: rfc3339(n.last_seen),
                replicas: n.replicas,
            })
            .collect();
        Ok(http::json_reply(200, &NodeList { nodes }))
    }

    fn init_upload(&self, body: InitUpload) -> Result<http::Reply, ApiError> {
        let max = self.config.max_object_size;
        if body.size > max {
            return Err(ApiError::bad_request(format!(
                "size {} is larger than the maximum object size of {max} bytes",
                body.size
            )));
        }
        let replication = body.replication.unwrap_or(self.config.replication);
        if !(1..=MAX_REPLICATION).contains(&replication) {
            return Err(ApiError::bad_request(format!(
                "replication {replication} is out of range 1..={MAX_REPLICATION}"
            )));
        }
        let id = ObjectId::new_random();
        let nodes = self.db.create_object(id, body.size, replication, |live, n| {
            placement::choose_random(live, n, &mut rand::thread_rng()).map_err(MetaError::Unavailable)
        })?;
        Ok(http::json_reply(200, &Placement { objectid: id.to_string(), nodes }))
    }

    fn complete_upload(&self, body: CompleteUpload) -> Result<http::Reply, ApiError> {
        let id = ObjectId::parse(&body.objectid).map_err(ApiError::bad_request)?;
        self.db.complete_object(id)?;
        Ok(http::json_reply(200, &StatusOk::ok()))
    }

    fn get_object(&self, id: ObjectId) -> Result<http::Reply, ApiError> {
        let object = self.db.object(id)?;
        let info = ObjectInfo {
            objectid: object.id,
            size: object.size,
            status: object.status,
            replicas: object.replicas.iter().map(|r| r.address.clone()).collect(),
            replica_nodes: object
                .replicas
                .into_iter()
                .map(|r| ReplicaInfo { node: r.node_id, address: r.address, state: r.state })
                .collect(),
            created_at: rfc3339(object.created_at),
            completed_at: object.completed_at.map(rfc3339),
        };
        Ok(http::json_reply(200, &info))
    }
}

fn rfc3339(unix_ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
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
            (Method::Post, "/api/node/register".into(), Ok(Endpoint::RegisterNode)),
            (Method::Get, "/api/nodes".into(), Ok(Endpoint::ListNodes)),
            (Method::Post, "/api/upload/init".into(), Ok(Endpoint::InitUpload)),
            (Method::Post, "/api/upload/complete".into(), Ok(Endpoint::CompleteUpload)),
            (Method::Get, format!("/api/objects/{id}"), Ok(Endpoint::GetObject(parsed))),
            (Method::Get, "/api/upload/init".into(), Err(405)),
            (Method::Delete, "/api/nodes".into(), Err(405)),
            (Method::Get, "/api/objects/not-a-uuid".into(), Err(400)),
            (Method::Get, "/api/objects/../../etc".into(), Err(400)),
            (Method::Get, "/api/unknown".into(), Err(404)),
        ];
        for (method, path, want) in table {
            let got = Endpoint::parse(method, path).map_err(|e| e.status);
            assert_eq!(&got, want, "{method} {path}");
        }
    }
}
