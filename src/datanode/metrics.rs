//! The datanode's metrics: objects held, disk capacity and free space (read at each
//! scrape), fsync latency (timed by the store), chains this node could not forward, and
//! the scrubber's progress and findings, beside the request metrics every server has
//! (`crate::metrics`).

use prometheus::{IntCounter, IntGauge};

use super::store::BlobStore;
use crate::metrics::Metrics;

pub struct DatanodeMetrics {
    pub registry: Metrics,
    objects: IntGauge,
    capacity: IntGauge,
    free: IntGauge,
    /// Uploads whose next node of the chain failed or refused them.
    pub chain_failures: IntCounter,
    pub scrub_objects: IntCounter,
    pub scrub_bytes: IntCounter,
    pub scrub_corruptions: IntCounter,
    pub scrub_passes: IntCounter,
    /// Objects in the scrub pass under way, and how many of them it has checked.
    pub scrub_pass_objects: IntGauge,
    pub scrub_pass_checked: IntGauge,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

impl DatanodeMetrics {
    pub fn new(store: &BlobStore) -> DatanodeMetrics {
        let metrics = DatanodeMetrics {
            registry: Metrics::new("datanode"),
            objects: gauge("aether_datanode_objects", "Objects stored on this node."),
            capacity: gauge("aether_datanode_disk_capacity_bytes", "Size of the data directory's disk."),
            free: gauge("aether_datanode_disk_free_bytes", "Bytes an unprivileged writer may still use on that disk."),
            chain_failures: counter(
                "aether_datanode_chain_failures_total",
                "Uploads whose next node of the chain failed or refused them.",
            ),
            scrub_objects: counter("aether_datanode_scrub_objects_total", "Objects the scrubber verified."),
            scrub_bytes: counter("aether_datanode_scrub_bytes_total", "Bytes the scrubber verified."),
            scrub_corruptions: counter(
                "aether_datanode_scrub_corruptions_total",
                "Corrupt copies the scrubber found (and quarantined).",
            ),
            scrub_passes: counter("aether_datanode_scrub_passes_total", "Scrub passes finished over all objects."),
            scrub_pass_objects: gauge("aether_datanode_scrub_pass_objects", "Objects in the scrub pass under way."),
            scrub_pass_checked: gauge(
                "aether_datanode_scrub_pass_checked_objects",
                "Objects the scrub pass under way has checked so far.",
            ),
        };
        let registry = &metrics.registry;
        for gauge in [
            &metrics.objects,
            &metrics.capacity,
            &metrics.free,
            &metrics.scrub_pass_objects,
            &metrics.scrub_pass_checked,
        ] {
            registry.register(gauge);
        }
        for counter in [
            &metrics.chain_failures,
            &metrics.scrub_objects,
            &metrics.scrub_bytes,
            &metrics.scrub_corruptions,
            &metrics.scrub_passes,
        ] {
            registry.register(counter);
        }
        registry.register(store.fsync_seconds());
        metrics
    }

    /// Fills the gauges that mirror the store, just before a scrape.
    pub fn fill(&self, store: &BlobStore) {
        self.objects.set(store.object_count() as i64);
        if let Ok((free, capacity)) = store.disk_space() {
            self.free.set(free as i64);
            self.capacity.set(capacity as i64);
        }
    }
}
