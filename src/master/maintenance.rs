//! The master's maintenance loop, twice a second: it moves silent nodes to suspect and
//! dead (holding back a mass death, and giving grace after its own stall), plans re-replication for objects below their replication factor and hands the
//! batches to a bounded pool of repair workers, and expires uploads never completed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::events::EventKind;
use super::{repair, MasterState};
use crate::log;
use crate::proto::{ReplicaState, ReplicateRequest, ReplicateResult};

const TICK: Duration = Duration::from_millis(500);
/// A sleep this much longer than a tick means the loop itself was not running.
const STALLED: Duration = Duration::from_secs(3);
/// Objects per replicate request.
const BATCH: usize = 64;

/// One request to a source node: copy `objects` to `target`.
struct RepairJob {
    source: String,
    target: String,
    objects: Vec<String>,
}

pub fn run(state: &Arc<MasterState>, stopped: &Receiver<()>) {
    let workers = state.config.repair_concurrency.max(1);
    let (jobs, queue) = crossbeam_channel::bounded::<RepairJob>(workers);
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let (state, queue, in_flight) = (Arc::clone(state), queue.clone(), Arc::clone(&in_flight));
            std::thread::Builder::new()
                .name(format!("master-repair-{i}"))
                .spawn(move || {
                    for job in queue {
                        let n = job.objects.len() as i64;
                        state.metrics.repairs_queued.sub(n);
                        state.metrics.repairs_running.add(n);
                        run_job(&state, &job);
                        state.metrics.repairs_running.sub(n);
                        let mut set = in_flight.lock().expect("in-flight lock");
                        for object in &job.objects {
                            set.remove(object);
                        }
                        state.repairs_in_flight.store(set.len() as u64, Ordering::Relaxed);
                    }
                })
                .expect("spawning a repair worker")
        })
        .collect();

    let mut last_expiry = Instant::now();
    // How much longer than a tick the last sleep took: a sleep far too long means this
    // process was not running (slow repair planning, which runs between sleeps, is not
    // counted, or a slow database would keep every node alive).
    let mut overslept = Duration::ZERO;
    loop {
        update_liveness(state, overslept);
        if let Err(e) = schedule_repairs(state, &jobs, &in_flight) {
            log::error("master", &format!("repair planning failed: {e}"));
        }
        if last_expiry.elapsed() >= Duration::from_secs(10) {
            last_expiry = Instant::now();
            expire_uploads(state);
        }
        let sleep = Instant::now();
        if stopped.recv_timeout(TICK) != Err(RecvTimeoutError::Timeout) {
            break;
        }
        overslept = sleep.elapsed().saturating_sub(TICK);
    }
    drop(jobs);
    for handle in handles {
        let _ = handle.join();
    }
}

/// Moves silent nodes along the state machine. `overslept` is how much longer than a tick
/// this loop's last sleep took: a loop that did not run for a while (the master stalled, was paused or starved) has
/// not heard heartbeats that may well have been sent, so every node gets fresh grace
/// instead of the whole cluster being declared dead at once.
fn update_liveness(state: &MasterState, overslept: Duration) {
    let now = Instant::now();
    if overslept >= STALLED {
        log::warn(
            "master",
            &format!(
                "the maintenance loop did not run for {:.1}s (this master was stalled or paused); every node \
                 gets a fresh {:?} before its silence counts",
                (overslept + TICK).as_secs_f64(),
                state.membership.dead_after()
            ),
        );
        state.membership.grace(now);
    }
    let tick = state.membership.tick(now);
    if !tick.held.is_empty() {
        state.events.record(
            EventKind::SilenceHeld,
            format!(
                "HOLDING BACK: {} node(s) went silent at once ({}), more than half of the cluster; that is more \
                 likely this master's or its network's trouble than a mass death, so they stay suspect for \
                 another {:?} before their replicas are re-created",
                tick.held.len(),
                tick.held.join(", "),
                state.membership.dead_after()
            ),
        );
    }
    for (node, new_state, silent) in tick.changes {
        let message = format!("node {node} is {} (silent for {:.1}s)", new_state.as_str(), silent.as_secs_f64());
        match new_state {
            super::NodeState::Dead => {
                state.events.record(EventKind::NodeDead, format!("{message}; its replicas will be re-created"))
            }
            _ => state.events.record(EventKind::NodeSuspect, message),
        }
        if let Err(e) = state.db.set_node_state(&node, new_state) {
            log::error("master", &format!("cannot record that node {node} is {}: {e}", new_state.as_str()));
        }
    }
}

fn schedule_repairs(
    state: &MasterState,
    jobs: &crossbeam_channel::Sender<RepairJob>,
    in_flight: &Mutex<HashSet<String>>,
) -> Result<(), String> {
    let busy = in_flight.lock().expect("in-flight lock").len();
    let capacity = (state.config.repair_concurrency.max(1) * BATCH * 2).saturating_sub(busy);
    if capacity == 0 {
        return Ok(());
    }
    let candidates = state.db.under_replicated(busy + capacity).map_err(|e| e.to_string())?;
    let fresh: Vec<repair::UnderReplicated> = {
        let set = in_flight.lock().expect("in-flight lock");
        candidates.into_iter().filter(|c| !set.contains(&c.object)).take(capacity).collect()
    };
    if fresh.is_empty() {
        return Ok(());
    }
    let targets = state.membership.placeable(0);
    let plan = repair::plan(&fresh, &targets, &mut rand::thread_rng());
    if plan.is_empty() {
        return Ok(());
    }
    let addresses = state.db.addresses().map_err(|e| e.to_string())?;
    for (source, target, objects) in repair::batches(plan, BATCH) {
        let (Some(source), Some(target)) = (addresses.get(&source), addresses.get(&target)) else { continue };
        {
            let mut set = in_flight.lock().expect("in-flight lock");
            set.extend(objects.iter().cloned());
            state.repairs_in_flight.store(set.len() as u64, Ordering::Relaxed);
        }
        let job = RepairJob { source: source.clone(), target: target.clone(), objects };
        let n = job.objects.len() as i64;
        state.metrics.repairs_queued.add(n);
        if let Err(crossbeam_channel::TrySendError::Full(job)) = jobs.try_send(job) {
            state.metrics.repairs_queued.sub(n);
            // Every worker is busy: these wait for the next tick.
            let mut set = in_flight.lock().expect("in-flight lock");
            for object in &job.objects {
                set.remove(object);
            }
            state.repairs_in_flight.store(set.len() as u64, Ordering::Relaxed);
            break;
        }
    }
    Ok(())
}

/// Asks the source node to copy a batch; the target reports each copy it stores, which
/// is what makes the master count it.
fn run_job(state: &MasterState, job: &RepairJob) {
    let body = ReplicateRequest { target: job.target.clone(), objects: job.objects.clone() };
    match state.node_client.replicate(&job.source, &body) {
        Ok(results) => {
            record_copies(state, &results);
            let failed: Vec<&ReplicateResult> = results.iter().filter(|r| r.status != 201).collect();
            state.metrics.repairs_done.inc_by((results.len() - failed.len()) as u64);
            state.metrics.repairs_failed.inc_by(failed.len() as u64);
            if failed.is_empty() {
                state.events.record(
                    EventKind::RepairFinished,
                    format!("re-replicated {} object(s) from {} to {}", job.objects.len(), job.source, job.target),
                );
            } else {
                let first = failed[0].error.as_deref().unwrap_or("unknown error");
                state.events.record(
                    EventKind::RepairFailed,
                    format!(
                        "re-replication from {} to {}: {} of {} failed (first: {first})",
                        job.source,
                        job.target,
                        failed.len(),
                        job.objects.len()
                    ),
                );
            }
        }
        Err(e) => {
            state.metrics.repairs_failed.inc_by(job.objects.len() as u64);
            let message = format!("re-replication request to {} failed: {e}", job.source);
            state.events.record(EventKind::RepairFailed, message)
        }
    }
}

/// Counts the copies a repair made at once, from the targets' receipts, instead of
/// waiting for the targets' reports: until they are counted, the next scan would plan the
/// same objects again, onto other nodes.
fn record_copies(state: &MasterState, results: &[ReplicateResult]) {
    let token = state.config.cluster_token.as_deref();
    let mut by_node: HashMap<&str, Vec<ReplicaState>> = HashMap::new();
    for result in results.iter().filter(|r| r.status == 201) {
        let Some(receipt) = result.receipt.as_ref().filter(|r| r.verify(token, &result.objectid)) else { continue };
        by_node.entry(&receipt.node).or_default().push(ReplicaState {
            objectid: result.objectid.clone(),
            size: receipt.size,
            checksum: receipt.checksum,
        });
    }
    for (node, copies) in by_node {
        if let Err(e) = state.db.report_replicas(node, copies, Vec::new()) {
            log::warn("master", &format!("cannot record the copies repair made on {node} (its report will): {e}"));
        }
    }
}

fn expire_uploads(state: &MasterState) {
    let cutoff = super::db::now_ms() - state.config.upload_grace.as_millis() as i64;
    match state.db.expire_pending(cutoff) {
        Ok(0) => {}
        Ok(n) => log::info(
            "master",
            &format!("expired {n} upload(s) never completed within {:?}", state.config.upload_grace),
        ),
        Err(e) => log::error("master", &format!("cannot expire stale uploads: {e}")),
    }
    // S3 multipart uploads may take long; a week untouched is abandoned.
    let cutoff = super::db::now_ms() - MULTIPART_EXPIRY.as_millis() as i64;
    match state.db.expire_multipart(cutoff) {
        Ok(0) => {}
        Ok(n) => log::info("master", &format!("expired {n} S3 multipart upload(s) older than a week")),
        Err(e) => log::error("master", &format!("cannot expire S3 multipart uploads: {e}")),
    }
}

/// Age after which an S3 multipart upload neither completed nor aborted is removed.
const MULTIPART_EXPIRY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
