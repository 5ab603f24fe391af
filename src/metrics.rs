//! `GET /metrics` for every server: one `prometheus::Registry` per server (no global
//! registry, so a master and datanodes in one process keep their numbers apart), the
//! request metrics `http.rs` records for each request, and the Prometheus text encoding.
//!
//! Labels are bounded by construction: an endpoint label is the name of a server's
//! `Endpoint` variant (never a raw path), a status label one of the few HTTP statuses
//! a server answers, and a state label one of a node state enum's names. A server adds
//! its own metrics with `register`, and fills gauges that mirror state just before a
//! scrape (`Metrics::reply`'s caller does that).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::http::{self, Reply};

/// The endpoint label of a request no `Endpoint` matched (unknown paths, bad methods).
pub const UNMATCHED: &str = "unmatched";

/// A server's metrics registry with the request metrics every server has.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
}

impl Metrics {
    /// A registry for one server; `server` (`master`, `datanode`, `s3`) labels its
    /// `aether_build_info` so a dashboard can tell the kinds apart.
    pub fn new(server: &'static str) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("aether_http_requests_total", "HTTP requests answered, by endpoint and status."),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "aether_http_request_duration_seconds",
                "Time from a request's admission to the end of its reply, by endpoint.",
            )
            .buckets(exponential_buckets(0.0005, 4.0, 10).expect("valid buckets")),
            &["endpoint"],
        )
        .expect("valid metric");
        let received = IntCounterVec::new(
            Opts::new("aether_http_received_bytes_total", "Request body bytes taken in, by endpoint."),
            &["endpoint"],
        )
        .expect("valid metric");
        let sent = IntCounterVec::new(
            Opts::new("aether_http_sent_bytes_total", "Reply body bytes sent, by endpoint."),
            &["endpoint"],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new("aether_build_info", "Always 1: what this server runs, as labels."),
            &["server", "version"],
        )
        .expect("valid metric");
        build.with_label_values(&[server, crate::VERSION]).set(1);
        let metrics = Metrics { registry, requests, durations, received, sent };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.durations.clone()),
            Box::new(metrics.received.clone()),
            Box::new(metrics.sent.clone()),
            Box::new(build),
        ] {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    /// Adds a server's own metric to the registry. Names are fixed at compile time, so a
    /// clash is a programming error and panics at start-up.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: &C) {
        self.registry.register(Box::new(collector.clone())).expect("metric names are unique");
    }

    /// Records one answered request (called by `http.rs` where it logs the request).
    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
        self.requests.with_label_values(&[endpoint, &status.to_string()]).inc();
        self.durations.with_label_values(&[endpoint]).observe(seconds);
        if bytes_in > 0 {
            self.received.with_label_values(&[endpoint]).inc_by(bytes_in);
        }
        if bytes_out > 0 {
            self.sent.with_label_values(&[endpoint]).inc_by(bytes_out);
        }
    }

    /// Everything registered, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text).expect("encoding into a string");
        text
    }

    /// The `GET /metrics` answer: what a server's handler returns for its `Metrics`
    /// endpoint, after filling its state gauges.
    pub fn reply(&self) -> Reply {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("encoding into memory");
        http::bytes_reply(200, buffer, prometheus::TEXT_FORMAT)
    }
}

/// A histogram of seconds for disk and database timings: 50 µs to about 3 s.
pub fn seconds_histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(exponential_buckets(0.00005, 3.0, 11).expect("valid buckets")),
    )
    .expect("valid metric")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_shows_in_the_text_with_bounded_labels() {
        let metrics = Metrics::new("master");
        metrics.observe_request("InitUpload", 200, 0.002, 10, 20);
        metrics.observe_request("InitUpload", 503, 0.002, 0, 0);
        let text = metrics.render();
        assert!(text.contains(r#"aether_http_requests_total{endpoint="InitUpload",status="200"} 1"#), "{text}");
        assert!(text.contains(r#"aether_http_requests_total{endpoint="InitUpload",status="503"} 1"#), "{text}");
        assert!(text.contains(r#"aether_http_received_bytes_total{endpoint="InitUpload"} 10"#), "{text}");
        assert!(text.contains(r#"aether_build_info{server="master""#), "{text}");
    }
}
