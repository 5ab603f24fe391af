//! `aether s3`: an S3-compatible endpoint in front of the cluster. It is stateless (any
//! number may run side by side): buckets, keys and access keys live in the master's
//! namespace, reached over the internal API; object bytes stream client → gateway →
//! datanode chain through `Client::upload`, and back from a replica, never through the
//! master and never held whole in memory.
//!
//! A request is parsed into an `router::Operation`, authenticated (`auth.rs`, SigV4),
//! and dispatched by one `match` in `handlers.rs`; every failure is an `S3Error`
//! answered as S3's XML error body.

mod auth;
mod body;
mod checksum;
pub mod error;
mod handlers;
mod multipart;
pub mod router;
pub mod sigv4;
mod xml;

use std::io;
use std::time::Duration;

use tiny_http::Request;

use crate::client::Client;
use crate::http::{self, Handled, HttpServer, Reply};
use crate::log;
use crate::metrics::Metrics;
use error::S3Error;
use router::Operation;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address to listen on, e.g. `0.0.0.0:9000`; port 0 picks a free one.
    pub listen: String,
    /// The master's URL.
    pub master: String,
    /// The region the gateway answers for (`GetBucketLocation`); signatures may name any.
    pub region: String,
    pub threads: usize,
    /// The cluster token, sent to the master with every namespace call.
    pub cluster_token: Option<String>,
    /// How long an access key fetched from the master is trusted before asking again.
    pub key_cache: Duration,
    /// With a root domain, `bucket.ROOT/key` is served too (virtual-hosted style).
    pub root_domain: Option<String>,
    /// Deadlines and caps for every connection.
    pub http: crate::http::HttpLimits,
}

impl GatewayConfig {
    pub fn new(listen: &str, master: &str) -> GatewayConfig {
        GatewayConfig {
            listen: listen.to_string(),
            master: master.to_string(),
            region: "us-east-1".to_string(),
            threads: 64,
            cluster_token: None,
            key_cache: Duration::from_secs(5),
            root_domain: None,
            http: crate::http::HttpLimits::default(),
        }
    }
}

pub struct Gateway {
    http: HttpServer,
}

impl Gateway {
    /// Refuses to start without a cluster token: the master serves the namespace (access
    /// keys' secrets included) only to those who have it.
    pub fn start(config: GatewayConfig, agent: ureq::Agent) -> io::Result<Gateway> {
        if config.cluster_token.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "aether s3 needs the cluster token (--cluster-token or AETHER_CLUSTER_TOKEN): the master serves \
                 buckets and access keys (secrets included) only to those who have it; give the master and every \
                 datanode the same token",
            ));
        }
        log::info("s3", &format!("aether {} starting", crate::VERSION));
        let client = Client::new(agent, &config.master).with_token(config.cluster_token.clone());
        let metrics = Metrics::new("s3");
        let state = GatewayState {
            keys: auth::KeyCache::new(config.key_cache),
            client,
            config: config.clone(),
            metrics: metrics.clone(),
        };
        // Only health checks and scrapes have slots of their own: every other request is a
        // client's.
        let priority = |request: &tiny_http::Request| matches!(crate::http::path_of(request), "/health" | "/metrics");
        let http = HttpServer::start(
            &config.listen,
            config.threads,
            &config.http,
            "s3",
            &metrics,
            priority,
            move |request| state.handle(request),
        )?;
        log::info(
            "s3",
            &format!(
                "listening on http://{} (S3), region {}, master {}",
                http.local_addr(),
                config.region,
                config.master
            ),
        );
        Ok(Gateway { http })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.http.local_addr()
    }

    pub fn shutdown(self) {
        self.http.shutdown();
        log::info("s3", "stopped");
    }
}

struct GatewayState {
    config: GatewayConfig,
    client: Client,
    keys: auth::KeyCache,
    metrics: Metrics,
}

/// A request's identity for logs and error bodies.
fn request_id() -> String {
    use rand::Rng;
    format!("{:016X}", rand::thread_rng().gen::<u64>())
}

impl GatewayState {
    fn handle(&self, request: &mut Request) -> Handled {
        if let Some(handled) = self.own_endpoint(request) {
            return handled;
        }
        let id = request_id();
        let bytes_in = request.body_length().unwrap_or(0) as u64;
        let resource = http::path_of(request).to_string();
        let mut endpoint = crate::metrics::UNMATCHED;
        let result = self.serve(request, &mut endpoint);
        let mut handled = match result {
            Ok(reply) => Handled::from(reply),
            Err(e) => {
                let mut reply = http::bytes_reply(e.status(), xml::error(&e, &resource, &id), "application/xml");
                if request.method() == &tiny_http::Method::Head {
                    // A HEAD answer has no body to carry the code; S3 sends only the status.
                    reply = http::bytes_reply(e.status(), Vec::new(), "application/xml");
                }
                let mut handled = Handled::from(reply);
                handled.error = Some(e.to_string());
                handled
            }
        };
        handled.reply.add_header(http::header("x-amz-request-id", &id));
        handled.reply.add_header(http::header("Server", "AetherStore"));
        handled.bytes_in = bytes_in;
        handled.endpoint = endpoint;
        handled
    }

    /// `GET /health` and `GET /metrics` without a signature are the gateway's own, for
    /// load balancers and Prometheus. Buckets named `health` or `metrics` stay reachable:
    /// every S3 request is signed (this gateway has no anonymous access).
    fn own_endpoint(&self, request: &Request) -> Option<Handled> {
        let unsigned = http::header_value(request, "Authorization").is_none()
            && !request.url().contains("X-Amz-Signature=")
            && matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head);
        let (reply, endpoint) = match http::path_of(request) {
            "/health" if unsigned => (http::json_reply(200, &crate::proto::Health::ok()), "Health"),
            "/metrics" if unsigned => (self.metrics.reply(), "Metrics"),
            _ => return None,
        };
        let mut handled = Handled::from(reply);
        handled.routine = true;
        handled.endpoint = endpoint;
        Some(handled)
    }

    /// Serves one S3 request; `endpoint` gets the operation's name once it is known.
    fn serve(&self, request: &mut Request, endpoint: &mut &'static str) -> Result<Reply, S3Error> {
        let url = request.url().to_string();
        let (raw_path, raw_query) = url.split_once('?').unwrap_or((&url, ""));
        let query = sigv4::parse_query(raw_query);
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str().to_string(), h.value.as_str().to_string()))
            .collect();
        let is_copy = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-amz-copy-source"));
        let method = request.method().as_str().to_string();
        // Virtual-hosted style (`bucket.ROOT-DOMAIN/key`) routes as path style does; the
        // signature covers the path as sent.
        let host = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map(|(_, v)| v.as_str());
        let routed = match router::bucket_from_host(host.unwrap_or_default(), self.config.root_domain.as_deref()) {
            Some(bucket) => format!("/{bucket}{raw_path}"),
            None => raw_path.to_string(),
        };
        let operation = Operation::parse(&method, &routed, &query, is_copy)?;
        *endpoint = operation.name();
        let signer = self.authenticate(&method, raw_path, raw_query, &headers, &query)?;
        let context = handlers::Context { query: &query, headers: &headers, signer };
        self.dispatch(operation, context, request)
    }
}
