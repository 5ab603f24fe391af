//! The datanode's metrics: objects held, the data disk's state, capacity and free space
//! (as the last disk check found them: a scrape does no disk I/O), fsync latency (timed by the store), chains this node could not forward, and
//! the scrubber's progress and findings, beside the request metrics every server has
//! (`crate::metrics`).

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

use super::store::BlobStore;
use crate::metrics::Metrics;
use crate::proto::DiskState;

pub struct DatanodeMetrics {
    pub registry: Metrics,
    objects: IntGauge,
    capacity: IntGauge,
    free: IntGauge,
    /// 1 for the disk's state, 0 for the others.
    disk_state: IntGaugeVec,
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
            disk_state: IntGaugeVec::new(
                Opts::new("aether_datanode_disk_state", "1 for the data disk's state (ok, read-only, failed)."),
                &["state"],
            )
            .expect("valid metric"),
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
        registry.register(&metrics.disk_state);
        registry.register(store.fsync_seconds());
        metrics
    }

    /// Fills the gauges that mirror the store, just before a scrape, from memory: a
    /// failing disk must not hang the scrape that would show it failing.
    pub fn fill(&self, store: &BlobStore) {
        self.objects.set(store.object_count() as i64);
        let health = store.disk_health();
        self.free.set(health.free_bytes as i64);
        self.capacity.set(health.capacity_bytes as i64);
        for state in [DiskState::Ok, DiskState::ReadOnly, DiskState::Failed] {
            self.disk_state.with_label_values(&[state.as_str()]).set(i64::from(health.state == state));
        }
    }
}
