//! `NodeClient`: every call to a datanode (chained uploads, repair copies, the master's
//! replicate and `HEAD` requests, and `Client`'s uploads and reads) is built here, so its
//! one rule is written once: a server's node client goes only to addresses its `Registry`
//! knows as registered datanodes, and only those requests carry the cluster token. A
//! client naming an address can therefore never make a server connect to it, nor learn
//! the token. `Client`'s node client has no token, and goes where the master sends it.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{from_ureq, json_answer, ClientError};
use crate::proto::{
    Checksum, ObjectId, ReplicateRequest, ReplicateResult, ReplicateResults, Stored, CHAIN_HEADER,
    CHAIN_SIGNATURE_HEADER, CHECKSUM_HEADER, TOKEN_HEADER,
};

/// The default of `NodeClient::hop_timeout`.
pub const DEFAULT_HOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A repair batch copies up to 64 objects of any size before its answer.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(600);

/// Which addresses are datanodes registered with the master: the only ones a
/// `NodeClient` talks to.
pub trait Registry: Send + Sync {
    fn is_registered(&self, address: &str) -> bool;
}

/// An upload to one datanode, as `NodeClient::put_object` sends it.
pub struct ObjectPut<'a> {
    pub id: ObjectId,
    /// The body's length; without it the body is sent chunked.
    pub len: Option<u64>,
    /// The checksum the body must arrive with.
    pub checksum: Option<Checksum>,
    /// Where the receiving node forwards the bytes to.
    pub chain: &'a [String],
    /// The master's signature of the placement, passed on as it came.
    pub signature: Option<&'a str>,
}

/// The registry of `NodeClient::anonymous`: with no token to keep, any address will do.
struct AnyAddress;

impl Registry for AnyAddress {
    fn is_registered(&self, _: &str) -> bool {
        true
    }
}

#[derive(Clone)]
pub struct NodeClient {
    agent: ureq::Agent,
    token: Option<String>,
    registry: Arc<dyn Registry>,
    hop_timeout: Duration,
}

impl NodeClient {
    pub fn new(agent: ureq::Agent, token: Option<String>, registry: Arc<dyn Registry>) -> NodeClient {
        NodeClient { agent, token, registry, hop_timeout: DEFAULT_HOP_TIMEOUT }
    }

    /// A node client without the token, for `Client`: it goes to the nodes the master's
    /// answers name, and has nothing secret to leak there.
    pub fn anonymous(agent: ureq::Agent) -> NodeClient {
        NodeClient::new(agent, None, Arc::new(AnyAddress))
    }

    /// How long a node may take to accept a connection and answer the head of a
    /// forwarded upload; far shorter than the transfer timeouts, so a chain answers
    /// quickly that a stalled hop failed.
    pub fn with_hop_timeout(mut self, hop_timeout: Duration) -> NodeClient {
        self.hop_timeout = hop_timeout;
        self
    }

    pub fn hop_timeout(&self) -> Duration {
        self.hop_timeout
    }

    pub fn is_registered(&self, address: &str) -> bool {
        self.registry.is_registered(address)
    }

    /// The token rule: `address` must be a registered datanode; the answer is the token
    /// to send it, if the cluster has one.
    fn authorize(&self, address: &str) -> Result<Option<&str>, ClientError> {
        if self.registry.is_registered(address) {
            Ok(self.token.as_deref())
        } else {
            Err(ClientError::NotRegistered { address: address.to_string() })
        }
    }

    fn request(&self, method: &str, address: &str, path: &str) -> Result<(ureq::Request, String), ClientError> {
        let token = self.authorize(address)?;
        let url = format!("{address}{path}");
        let request = self.agent.request(method, &url);
        let request = match token {
            Some(token) => request.set(TOKEN_HEADER, token),
            None => request,
        };
        Ok((request, url))
    }

    /// The headers of an upload, token included: for `put_object` and for uploads written
    /// to a connection of their own (`put_head`).
    fn put_headers(&self, address: &str, put: &ObjectPut) -> Result<Vec<(&'static str, String)>, ClientError> {
        let token = self.authorize(address)?;
        let mut headers = Vec::new();
        if let Some(len) = put.len {
            headers.push(("Content-Length", len.to_string()));
        }
        if !put.chain.is_empty() {
            headers.push((CHAIN_HEADER, put.chain.join(",")));
        }
        if let Some(signature) = put.signature {
            headers.push((CHAIN_SIGNATURE_HEADER, signature.to_string()));
        }
        if let Some(sum) = put.checksum {
            headers.push((CHECKSUM_HEADER, sum.to_string()));
        }
        if let Some(token) = token {
            headers.push((TOKEN_HEADER, token.to_string()));
        }
        Ok(headers)
    }

    /// The head of `PUT /objects/{id}` to `address` (`http://host:port`), for a caller that
    /// writes it and the body to a socket itself. It asks the node to answer
    /// `100 Continue` before the body, so a stalled node shows within `hop_timeout`.
    pub fn put_head(&self, address: &str, put: &ObjectPut) -> Result<String, ClientError> {
        let host = address.strip_prefix("http://").ok_or_else(|| ClientError::Protocol {
            url: address.to_string(),
            message: "only http:// node addresses can be written to directly".into(),
        })?;
        let mut head = format!("PUT /objects/{} HTTP/1.1\r\n", put.id);
        head += &format!("Host: {host}\r\nUser-Agent: aether/{}\r\n", env!("CARGO_PKG_VERSION"));
        head += "Connection: close\r\nExpect: 100-continue\r\n";
        for (name, value) in self.put_headers(address, put)? {
            head += &format!("{name}: {value}\r\n");
        }
        head += "\r\n";
        Ok(head)
    }

    /// Uploads `body` to `address`; `timeout` bounds the whole exchange.
    pub fn put_object(
        &self,
        address: &str,
        put: &ObjectPut,
        body: impl Read,
        timeout: Option<Duration>,
    ) -> Result<Stored, ClientError> {
        let headers = self.put_headers(address, put)?;
        let url = format!("{address}/objects/{}", put.id);
        let mut request = self.agent.put(&url).set("Content-Type", "application/octet-stream");
        for (name, value) in &headers {
            request = request.set(name, value);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send(body).map_err(|e| from_ureq(&url, e))?;
        json_answer(response, &url)
    }

    /// `GET /objects/{id}` on `address`, from byte `offset` on (a range past 0); the
    /// answer and its URL.
    pub fn get_object(
        &self,
        address: &str,
        id: &ObjectId,
        offset: u64,
    ) -> Result<(ureq::Response, String), ClientError> {
        let (mut request, url) = self.request("GET", address, &format!("/objects/{id}"))?;
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| from_ureq(&url, e))?;
        Ok((response, url))
    }

    /// Asks `source` to copy objects to another node; one result per object.
    pub fn replicate(&self, source: &str, body: &ReplicateRequest) -> Result<Vec<ReplicateResult>, ClientError> {
        let (request, url) = self.request("POST", source, "/internal/replicate")?;
        let response = request.timeout(REPLICATE_TIMEOUT).send_json(body).map_err(|e| from_ureq(&url, e))?;
        let answer: ReplicateResults = json_answer(response, &url)?;
        Ok(answer.results)
    }

    /// `HEAD`s an object on `address`: its size and checksum if the node has it.
    pub fn head_object(&self, address: &str, id: &ObjectId) -> Result<(u64, Checksum), ClientError> {
        let (request, url) = self.request("HEAD", address, &format!("/objects/{id}"))?;
        let response = request.timeout(self.hop_timeout).call().map_err(|e| from_ureq(&url, e))?;
        let size = response.header("Content-Length").and_then(|v| v.parse().ok());
        let checksum = response.header(CHECKSUM_HEADER).map(Checksum::parse);
        match (size, checksum) {
            (Some(size), Some(Ok(checksum))) => Ok((size, checksum)),
            _ => Err(ClientError::Protocol { url, message: "no size or checksum in the answer".into() }),
        }
    }
}
