//! The master's metrics: node states, objects and their bytes, under-replicated
//! objects, repairs queued/running/done, chain failures clients reported, drains and
//! the copies moves made, and the group-commit batch sizes of the metadata writer,
//! beside the request metrics every server has (`crate::metrics`). State gauges are
//! filled from a `Snapshot` just before each scrape; counters move where the work happens.

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

use super::liveness::NodeState;
use super::Snapshot;
use crate::metrics::Metrics;

pub struct MasterMetrics {
    pub registry: Metrics,
    nodes: IntGaugeVec,
    objects: IntGauge,
    object_bytes: IntGauge,
    under_replicated: IntGauge,
    pending_deletes: IntGauge,
    /// Objects handed to the repair workers and not yet picked up.
    pub repairs_queued: IntGauge,
    /// Objects a repair worker is copying now.
    pub repairs_running: IntGauge,
    /// Objects repair copied (the target confirmed the copy).
    pub repairs_done: IntCounter,
    /// Objects repair tried to copy and could not.
    pub repairs_failed: IntCounter,
    /// Datanodes clients reported as having broken an upload's chain.
    pub chain_failures: IntCounter,
    nodes_draining: IntGauge,
    nodes_drained: IntGauge,
    copies_to_move: IntGauge,
    /// Copies dropped from a node once their new copy elsewhere was confirmed: drains,
    /// rebalance and zone spreading.
    pub copies_moved: IntCounter,
    /// 1 while the rebalancer finds nodes' usage outside the band and moves copies.
    pub rebalancing: IntGauge,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

impl MasterMetrics {
    /// The master's registry; `commit_batches` is the metadata writer's histogram.
    pub fn new(commit_batches: &prometheus::Histogram) -> MasterMetrics {
        let registry = Metrics::new("master");
        let metrics = MasterMetrics {
            nodes: IntGaugeVec::new(Opts::new("aether_master_nodes", "Registered datanodes by state."), &["state"])
                .expect("valid metric"),
            objects: gauge("aether_master_objects", "Complete objects."),
            object_bytes: gauge("aether_master_object_bytes", "Bytes of the complete objects (one copy each)."),
            under_replicated: gauge(
                "aether_master_under_replicated_objects",
                "Objects with fewer confirmed copies on nodes that are not dead than their replication factor.",
            ),
            pending_deletes: gauge("aether_master_pending_deletes", "Copies datanodes have yet to delete."),
            repairs_queued: gauge("aether_master_repairs_queued", "Objects waiting for a repair worker."),
            repairs_running: gauge("aether_master_repairs_running", "Objects a repair worker is copying now."),
            repairs_done: counter("aether_master_repairs_done_total", "Objects re-replicated by repair."),
            repairs_failed: counter("aether_master_repairs_failed_total", "Object copies repair could not make."),
            chain_failures: counter(
                "aether_master_chain_failures_total",
                "Datanodes clients reported as having broken an upload's chain.",
            ),
            nodes_draining: gauge("aether_master_nodes_draining", "Datanodes whose copies are being moved away."),
            nodes_drained: gauge("aether_master_nodes_drained", "Drained datanodes, waiting for `aether node remove`."),
            copies_to_move: gauge("aether_master_copies_to_move", "Copies draining datanodes still hold."),
            copies_moved: counter(
                "aether_master_copies_moved_total",
                "Copies moved to another node by a drain, the rebalancer or zone spreading.",
            ),
            rebalancing: gauge(
                "aether_master_rebalancing",
                "1 while the rebalancer moves copies because nodes' disk usage is outside the band.",
            ),
            registry,
        };
        metrics.registry.register(&metrics.nodes);
        for gauge in [
            &metrics.objects,
            &metrics.object_bytes,
            &metrics.under_replicated,
            &metrics.pending_deletes,
            &metrics.repairs_queued,
            &metrics.repairs_running,
            &metrics.nodes_draining,
            &metrics.nodes_drained,
            &metrics.copies_to_move,
            &metrics.rebalancing,
        ] {
            metrics.registry.register(gauge);
        }
        for counter in [&metrics.repairs_done, &metrics.repairs_failed, &metrics.chain_failures, &metrics.copies_moved]
        {
            metrics.registry.register(counter);
        }
        metrics.registry.register(commit_batches);
        metrics
    }

    /// Fills the state gauges from what the master knows now: a series for every
    /// `NodeState`, at 0 when no node is in it.
    pub fn fill(&self, snapshot: &Snapshot) {
        for state in NodeState::ALL {
            let n = snapshot.nodes.iter().filter(|n| n.state == state.as_str()).count();
            self.nodes.with_label_values(&[state.as_str()]).set(n as i64);
        }
        self.objects.set(snapshot.counts.objects as i64);
        self.object_bytes.set(snapshot.counts.object_bytes as i64);
        self.under_replicated.set(snapshot.counts.under_replicated as i64);
        self.pending_deletes.set(snapshot.counts.pending_deletes as i64);
        self.nodes_draining.set(snapshot.counts.nodes_draining as i64);
        self.nodes_drained.set(snapshot.counts.nodes_drained as i64);
        self.copies_to_move.set(snapshot.counts.copies_to_move as i64);
    }
}
