//! `Client`: the HTTP client of the AetherStore API, used by the CLI, by datanodes to
//! reach the master, and by the tests. It speaks only the wire types of `proto`.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::{
    CompleteUpload, ErrorBody, InitUpload, NodeInfo, NodeList, ObjectId, ObjectInfo, Placement, RegisterNode, StatusOk,
};

#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error status and said why.
    Api {
        url: String,
        status: u16,
        message: String,
    },
    /// The request never got an answer: refused, reset, timed out.
    Transport {
        url: String,
        message: String,
    },
    /// The answer did not make sense (bad JSON, wrong length).
    Protocol {
        url: String,
        message: String,
    },
    Io(io::Error),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api { url, status, message } => write!(f, "{url}: {status}: {message}"),
            ClientError::Transport { url, message } => write!(f, "{url}: {message}"),
            ClientError::Protocol { url, message } => {
                write!(f, "{url}: unexpected answer: {message}")
            }
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

fn from_ureq(url: &str, err: ureq::Error) -> ClientError {
    match err {
        ureq::Error::Status(status, response) => {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
            ClientError::Api { url: url.to_string(), status, message }
        }
        ureq::Error::Transport(t) => ClientError::Transport { url: url.to_string(), message: t.to_string() },
    }
}

/// The one HTTP agent of a process: pooled keep-alive connections and explicit timeouts,
/// so a dead peer costs seconds, never a hung thread.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .max_idle_connections_per_host(64)
        .user_agent(concat!("aether/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    master: String,
}

impl Client {
    pub fn new(agent: ureq::Agent, master: &str) -> Client {
        Client { agent, master: master.trim_end_matches('/').to_string() }
    }

    pub fn master(&self) -> &str {
        &self.master
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.master);
        let response = self.agent.post(&url).send_json(body).map_err(|e| from_ureq(&url, e))?;
        response.into_json().map_err(|e| ClientError::Protocol { url, message: e.to_string() })
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.master);
        let response = self.agent.get(&url).call().map_err(|e| from_ureq(&url, e))?;
        response.into_json().map_err(|e| ClientError::Protocol { url, message: e.to_string() })
    }

    pub fn register(&self, id: &str, address: &str) -> Result<(), ClientError> {
        let body = RegisterNode { id: id.to_string(), address: address.to_string() };
        let _: StatusOk = self.post("/api/node/register", &body)?;
        Ok(())
    }

    pub fn init_upload(&self, size: u64, replication: Option<usize>) -> Result<Placement, ClientError> {
        self.post("/api/upload/init", &InitUpload { size, replication })
    }

    pub fn complete_upload(&self, id: &ObjectId) -> Result<(), ClientError> {
        let _: StatusOk = self.post("/api/upload/complete", &CompleteUpload { objectid: id.to_string() })?;
        Ok(())
    }

    pub fn object(&self, id: &ObjectId) -> Result<ObjectInfo, ClientError> {
        self.get_json(&format!("/api/objects/{id}"))
    }

    pub fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        let list: NodeList = self.get_json("/api/nodes")?;
        Ok(list.nodes)
    }

    /// Uploads `len` bytes from `body` to one datanode.
    pub fn put_to_node(&self, node: &str, id: &ObjectId, body: impl Read, len: u64) -> Result<(), ClientError> {
        let url = format!("{}/objects/{id}", node.trim_end_matches('/'));
        self.agent
            .put(&url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string())
            .send(body)
            .map_err(|e| from_ureq(&url, e))?;
        Ok(())
    }

    /// Streams one replica into `out` and checks that every announced byte arrived.
    pub fn get_from_node(&self, node: &str, id: &ObjectId, out: &mut dyn Write) -> Result<u64, ClientError> {
        let url = format!("{}/objects/{id}", node.trim_end_matches('/'));
        let response = self.agent.get(&url).call().map_err(|e| from_ureq(&url, e))?;
        let announced: Option<u64> = response.header("Content-Length").and_then(|v| v.parse().ok());
        let copied = io::copy(&mut response.into_reader(), out)
            .map_err(|e| ClientError::Transport { url: url.clone(), message: e.to_string() })?;
        match announced {
            Some(len) if len != copied => {
                Err(ClientError::Protocol { url, message: format!("got {copied} of {len} bytes") })
            }
            _ => Ok(copied),
        }
    }
}
