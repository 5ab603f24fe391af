//! The master's maintenance loop, twice a second: it moves silent nodes to suspect and
//! dead (holding back a mass death, and giving grace after its own stall), plans re-replication for objects below their replication factor and hands the
//! batches to a bounded pool of repair workers, and expires uploads never completed.
//!
//! The same workers move copies: off a draining node, from the fullest node to the
//! emptiest (rebalance), and out of a zone holding two copies of an object into a zone
//! holding none (a bounded walk over every object). A move is a repair copy with a node to release: once the new
//! copy is confirmed, the released node's copy is dropped (`MetaDb::release_copy`, which
//! refuses while the object would fall short of its replicas without it) and the node is
//! told to delete it. So an object never has fewer counted copies than its replication
//! factor because of a move.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::db::Drain;
use super::events::EventKind;
use super::{placement, repair, MasterState};
use crate::log;
use crate::proto::{ReplicaState, ReplicateRequest, ReplicateResult};

const TICK: Duration = Duration::from_millis(500);
/// A sleep this much longer than a tick means the loop itself was not running.
const STALLED: Duration = Duration::from_secs(3);
/// Objects per replicate request.
const BATCH: usize = 64;

/// One request to a source node: copy `objects` to `target`; for a move, then drop the
/// copies of `release` (a node id).
struct RepairJob {
    source: String,
    target: String,
    target_id: String,
    objects: Vec<String>,
    release: Option<String>,
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
    let mut rebalance = Rebalance::default();
    // How much longer than a tick the last sleep took: a sleep far too long means this
    // process was not running (slow repair planning, which runs between sleeps, is not
    // counted, or a slow database would keep every node alive).
    let mut overslept = Duration::ZERO;
    loop {
        update_liveness(state, overslept);
        if let Err(e) = schedule_repairs(state, &jobs, &in_flight) {
            log::error("master", &format!("repair planning failed: {e}"));
        }
        if let Err(e) = schedule_drains(state, &jobs, &in_flight) {
            log::error("master", &format!("drain planning failed: {e}"));
        }
        if let Err(e) = schedule_rebalance(state, &jobs, &in_flight, &mut rebalance) {
            log::error("master", &format!("rebalance planning failed: {e}"));
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
    let plan = repair::plan(&fresh, &targets, &state.membership.zones(), &mut rand::thread_rng());
    send_jobs(state, jobs, in_flight, plan, Release::Nothing)
}

/// Whose copies a plan's transfers release once the new ones are confirmed.
#[derive(Clone, Copy)]
enum Release<'a> {
    /// None: a repair.
    Nothing,
    /// This node's (a drain, a rebalance off the fullest node).
    Node(&'a str),
    /// Each transfer's source's (a copy moved to another zone).
    Source,
}

/// Hands a plan's batches to the workers, as far as they take them.
fn send_jobs(
    state: &MasterState,
    jobs: &crossbeam_channel::Sender<RepairJob>,
    in_flight: &Mutex<HashSet<String>>,
    plan: Vec<repair::Transfer>,
    release: Release,
) -> Result<(), String> {
    if plan.is_empty() {
        return Ok(());
    }
    let addresses = state.db.addresses().map_err(|e| e.to_string())?;
    for (source_id, target, objects) in repair::batches(plan, BATCH) {
        let (Some(source), Some(target_address)) = (addresses.get(&source_id), addresses.get(&target)) else {
            continue;
        };
        let release = match release {
            Release::Nothing => None,
            Release::Node(node) => Some(node.to_string()),
            Release::Source => Some(source_id.clone()),
        };
        if release.is_some() {
            state.db.expect_copies(&target, objects.clone()).map_err(|e| e.to_string())?;
        }
        {
            let mut set = in_flight.lock().expect("in-flight lock");
            set.extend(objects.iter().cloned());
            state.repairs_in_flight.store(set.len() as u64, Ordering::Relaxed);
        }
        let job =
            RepairJob { source: source.clone(), target: target_address.clone(), target_id: target, objects, release };
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
            drop(set);
            if job.release.is_some() {
                state.db.forget_expected(&job.target_id, job.objects).map_err(|e| e.to_string())?;
            }
            break;
        }
    }
    Ok(())
}

/// Moves copies off draining nodes: each object on one gets a new copy elsewhere (a
/// repair transfer, zone-spread like any), and its copy on the draining node is
/// released once that is confirmed. An object that already has its full count without
/// the draining node is released at once. A draining node with nothing left is drained.
fn schedule_drains(
    state: &MasterState,
    jobs: &crossbeam_channel::Sender<RepairJob>,
    in_flight: &Mutex<HashSet<String>>,
) -> Result<(), String> {
    // Drained nodes too: an upload placed on one before its drain may complete there.
    let draining: Vec<(String, Drain)> = {
        let drains = state.drains.lock().expect("drains lock");
        let mut nodes: Vec<(String, Drain)> = drains.iter().map(|(id, d)| (id.clone(), *d)).collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes
    };
    for (node, drain) in draining {
        let busy = in_flight.lock().expect("in-flight lock").len();
        let capacity = (state.config.repair_concurrency.max(1) * BATCH * 2).saturating_sub(busy);
        let copies = state.db.copies_on(&node, busy + capacity.max(1)).map_err(|e| e.to_string())?;
        if copies.is_empty() {
            if drain == Drain::Draining {
                finish_drain(state, &node)?;
            }
            continue;
        }
        if capacity == 0 {
            return Ok(());
        }
        let mut wanted = Vec::new();
        for copy in copies {
            if in_flight.lock().expect("in-flight lock").contains(&copy.object) {
                continue;
            }
            let others: Vec<String> = copy.holders.iter().filter(|h| **h != node).cloned().collect();
            if others.len() >= copy.replication {
                state.db.release_copy(&copy.object, &node).map_err(|e| e.to_string())?;
                continue;
            }
            wanted.push(repair::UnderReplicated {
                object: copy.object,
                replication: copy.replication,
                size: 0,
                healthy: others,
                // The draining node's own copy is the source when it is the only one.
                read_only: vec![node.clone()],
                holders: copy.holders,
                lacking: Vec::new(),
            });
            if wanted.len() >= capacity {
                break;
            }
        }
        let targets = state.membership.placeable(0);
        let plan = repair::plan(&wanted, &targets, &state.membership.zones(), &mut rand::thread_rng());
        send_jobs(state, jobs, in_flight, plan, Release::Node(&node))?;
    }
    Ok(())
}

fn finish_drain(state: &MasterState, node: &str) -> Result<(), String> {
    // Under the lock: a drain cancelled meanwhile stays cancelled.
    let mut drains = state.drains.lock().expect("drains lock");
    if drains.get(node) != Some(&Drain::Draining) {
        return Ok(());
    }
    state.db.set_drain(node, Some(Drain::Drained)).map_err(|e| e.to_string())?;
    drains.insert(node.to_string(), Drain::Drained);
    drop(drains);
    state.events.record(
        EventKind::NodeDrained,
        format!(
            "node {node} is drained: none of its copies is needed any more; `aether node remove {node}` forgets it"
        ),
    );
    Ok(())
}

/// The rebalancer's memory between ticks.
#[derive(Default)]
struct Rebalance {
    /// Moves it may still start, refilled at `--rebalance-rate` a second.
    budget: f64,
    last: Option<Instant>,
    /// Whether the last tick found usage outside the band (for logging the change).
    active: bool,
    /// The last object id the zone walk looked at (`""`: start over).
    zone_cursor: String,
    /// When the zone walk last reached the end of the objects.
    zone_pass_ended: Option<Instant>,
    /// Whether this zone pass's first move went to the events (one per pass, so the
    /// moves of a long pass do not push everything else out of the ring).
    zone_pass_reported: bool,
}

/// Moves copies from the fullest node to the emptiest (by used fraction of capacity, as
/// their heartbeats say) while they are more than `--rebalance-band` apart, at most
/// `--rebalance-rate` objects a second, only while no repair or drain is under way.
fn schedule_rebalance(
    state: &MasterState,
    jobs: &crossbeam_channel::Sender<RepairJob>,
    in_flight: &Mutex<HashSet<String>>,
    rebalance: &mut Rebalance,
) -> Result<(), String> {
    let rate = state.config.rebalance_rate;
    let now = Instant::now();
    let elapsed = rebalance.last.map_or(TICK, |last| now.saturating_duration_since(last));
    rebalance.last = Some(now);
    if rate <= 0.0 {
        return Ok(());
    }
    rebalance.budget = (rebalance.budget + rate * elapsed.as_secs_f64()).min(rate.max(1.0));
    if !in_flight.lock().expect("in-flight lock").is_empty() || rebalance.budget < 1.0 {
        return Ok(());
    }
    if schedule_zone_fixes(state, jobs, in_flight, rebalance)? {
        return Ok(());
    }
    let usage: Vec<placement::Usage<String>> = state
        .membership
        .placeable(0)
        .into_iter()
        .filter_map(|id| {
            let member = state.membership.get(&id)?;
            let capacity_bytes = member.capacity_bytes.filter(|c| *c > 0)?;
            Some(placement::Usage { node: id, capacity_bytes, free_bytes: member.free_bytes? })
        })
        .collect();
    let Some((from, to, bytes)) = placement::rebalance_step(&usage, state.config.rebalance_band) else {
        if rebalance.active {
            rebalance.active = false;
            state.metrics.rebalancing.set(0);
            state.events.record(
                EventKind::Rebalance,
                format!("rebalance: every node's usage is within {:.0} points", band_points(state)),
            );
        }
        return Ok(());
    };
    if !rebalance.active {
        rebalance.active = true;
        state.metrics.rebalancing.set(1);
        let used = |id: &str| usage.iter().find(|u| u.node == id).map_or(0.0, |u| u.used() * 100.0);
        state.events.record(
            EventKind::Rebalance,
            format!(
                "rebalance: {from} is {:.1}% used and {to} {:.1}%, more than {:.0} points apart; moving copies at \
                     most {rate} a second",
                used(&from),
                used(&to),
                band_points(state)
            ),
        );
    }
    let zones = state.membership.zones();
    let zone = |node: &str| zones.get(node).map_or("", String::as_str);
    let limit = rebalance.budget.floor() as usize;
    let mut moved_bytes = 0u64;
    let mut plan = Vec::new();
    for copy in state.db.copies_on(&from, 4 * limit.max(16)).map_err(|e| e.to_string())? {
        if plan.len() >= limit || moved_bytes >= bytes {
            break;
        }
        if copy.holders.contains(&to) || copy.holders.len() < copy.replication {
            continue;
        }
        // A move keeps the zone spread: the new copy's zone is the old one's, or one
        // none of the object's other copies is in.
        let others: Vec<&str> = copy.holders.iter().filter(|h| **h != from).map(|h| zone(h)).collect();
        if zone(&to) != zone(&from) && others.contains(&zone(&to)) {
            continue;
        }
        moved_bytes += copy.size;
        plan.push(repair::Transfer { object: copy.object, source: from.clone(), target: to.clone() });
    }
    rebalance.budget -= plan.len() as f64;
    send_jobs(state, jobs, in_flight, plan, Release::Node(&from))
}

/// Objects looked at per tick by the walk that spreads copies over zones.
const ZONE_WALK_PAGE: usize = 512;
/// The pause between two walks over every object.
const ZONE_WALK_PAUSE: Duration = Duration::from_secs(60);

/// Walks every object, a page a tick, and moves one of two copies that share a zone to a
/// zone the object has no copy in (when there are two zones or more), within the
/// rebalancer's rate. Returns whether it planned any move.
fn schedule_zone_fixes(
    state: &MasterState,
    jobs: &crossbeam_channel::Sender<RepairJob>,
    in_flight: &Mutex<HashSet<String>>,
    rebalance: &mut Rebalance,
) -> Result<bool, String> {
    let zones = state.membership.zones();
    let targets = state.membership.placeable(0);
    let mut distinct: Vec<&str> = targets.iter().map(|t| zones.get(t).map_or("", String::as_str)).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() < 2 {
        return Ok(false);
    }
    if rebalance.zone_pass_ended.is_some_and(|ended| ended.elapsed() < ZONE_WALK_PAUSE) {
        return Ok(false);
    }
    let page = state.db.objects_after(&rebalance.zone_cursor, ZONE_WALK_PAGE).map_err(|e| e.to_string())?;
    let mut fixes = repair::zone_fixes(&page, &targets, &zones, &mut rand::thread_rng());
    let allowed = rebalance.budget.floor() as usize;
    // The walk goes on after the last object looked at, or after the last one moved
    // when the rate cut the moves short.
    if fixes.len() > allowed {
        fixes.truncate(allowed);
        rebalance.zone_cursor = fixes.last().map_or(rebalance.zone_cursor.clone(), |f| f.object.clone());
    } else if let Some((last, _)) = page.last() {
        rebalance.zone_cursor = last.clone();
    } else {
        rebalance.zone_cursor.clear();
        rebalance.zone_pass_ended = Some(Instant::now());
        rebalance.zone_pass_reported = false;
    }
    if fixes.is_empty() {
        return Ok(false);
    }
    let message = format!("moving {} object(s) to spread their copies over zones", fixes.len());
    if rebalance.zone_pass_reported {
        log::info("master", &message);
    } else {
        rebalance.zone_pass_reported = true;
        state.events.record(EventKind::ZoneSpread, format!("{message} (more may follow in this pass)"));
    }
    rebalance.budget -= fixes.len() as f64;
    send_jobs(state, jobs, in_flight, fixes, Release::Source)?;
    Ok(true)
}

fn band_points(state: &MasterState) -> f64 {
    state.config.rebalance_band * 100.0
}

/// Asks the source node to copy a batch; the target reports each copy it stores, which
/// is what makes the master count it.
fn run_job(state: &MasterState, job: &RepairJob) {
    let body = ReplicateRequest { target: job.target.clone(), objects: job.objects.clone() };
    match state.node_client.replicate(&job.source, &body) {
        Ok(results) => {
            record_copies(state, &results);
            if let Some(release) = &job.release {
                release_copies(state, release, &results);
                let failed: Vec<String> =
                    results.iter().filter(|r| r.status != 201).map(|r| r.objectid.clone()).collect();
                forget_expected(state, &job.target_id, failed);
            }
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
            state.events.record(EventKind::RepairFailed, message);
            if job.release.is_some() {
                forget_expected(state, &job.target_id, job.objects.clone());
            }
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

fn forget_expected(state: &MasterState, target: &str, objects: Vec<String>) {
    if objects.is_empty() {
        return;
    }
    if let Err(e) = state.db.forget_expected(target, objects) {
        log::warn("master", &format!("cannot forget the copies a move to {target} did not make: {e}"));
    }
}

/// After a move's copies were counted: drops the released node's copies of the objects
/// whose new copy is confirmed (the database checks the object keeps its full count).
fn release_copies(state: &MasterState, node: &str, results: &[ReplicateResult]) {
    let mut released = 0;
    for result in results.iter().filter(|r| r.status == 201) {
        match state.db.release_copy(&result.objectid, node) {
            Ok(true) => released += 1,
            Ok(false) => {}
            Err(e) => log::warn("master", &format!("cannot release {}'s copy of {}: {e}", node, result.objectid)),
        }
    }
    if released > 0 {
        state.metrics.copies_moved.inc_by(released);
        log::info("master", &format!("moved {released} object(s) off {node}; it is told to delete its copies"));
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
