//! A datanode's life as a cluster member, in three threads that never wait for each
//! other:
//! - `<node>-heartbeat` registers with the master (again whenever the master has forgotten
//!   it) and sends a heartbeat every interval with the node's capacity and disk state. It
//!   does no disk I/O and no bulk work: whatever the node is busy with, it is heard from.
//! - `<node>-inventory` sends the full inventory (after each registration, after the disk
//!   comes back, and periodically) in pages at a bounded rate, and carries out the
//!   deletions the master answers with.
//! - `<node>-disk` checks the data disk every few seconds (`BlobStore::check_disk`); a
//!   change is logged and wakes the heartbeat at once, and a disk that is back asks for
//!   an inventory, so the master reconciles what the node still holds.
//!
//! The `Reporter` thread tells the master about stored and corrupt copies in batches.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Node;
use crate::client::Client;
use crate::log;
use crate::proto::{
    DiskState, Heartbeat, Inventory, InventoryEntry, NodeCommands, ObjectId, ReplicaReport, ReplicaState,
};

/// Reports waiting for the master at most; past that they are dropped (the next
/// inventory tells the master the same).
const QUEUED_REPORTS: usize = 100_000;
/// How long the reporter waits for more reports to send with the first. Long enough that
/// an upload's own `complete` (with this node's receipt) usually reaches the master
/// first, which then recognises the report as known without a write; short next to the
/// seconds a repair takes, which these reports confirm.
const REPORT_WINDOW: Duration = Duration::from_millis(200);
/// Reports sent in one request at most.
const REPORTS_PER_REQUEST: usize = 1000;
/// Objects per inventory request (the master takes each page in one write).
const INVENTORY_BATCH: usize = 10_000;

pub enum Report {
    Stored(ReplicaState),
    Corrupt(String),
}

/// Tells the master about replicas from a thread of its own, many per request. Uploads
/// never wait for it: their receipts confirm them at `complete`, and these reports cover
/// copies made without a receipt reaching the master (repairs, manual uploads).
pub struct Reporter {
    node: String,
    queue: Option<Sender<Report>>,
}

impl Reporter {
    /// Starts the reporting thread when there is a master to report to.
    pub fn start(node: &str, master: Option<Client>, stopped: Receiver<()>) -> (Reporter, Option<JoinHandle<()>>) {
        let Some(master) = master else { return (Reporter { node: node.to_string(), queue: None }, None) };
        let (queue, reports) = crossbeam_channel::bounded(QUEUED_REPORTS);
        let id = node.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("{node}-reporter"))
            .spawn(move || report_loop(&id, &master, &reports, &stopped))
            .expect("spawning the reporter thread");
        (Reporter { node: node.to_string(), queue: Some(queue) }, Some(thread))
    }

    pub fn stored(&self, replica: &ReplicaState) {
        self.enqueue(Report::Stored(replica.clone()));
    }

    pub fn corrupt(&self, id: &ObjectId) {
        self.enqueue(Report::Corrupt(id.to_string()));
    }

    fn enqueue(&self, report: Report) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(report).is_err() {
            log::warn(&self.node, "report queue full; the next inventory will tell the master instead");
        }
    }
}

fn report_loop(node: &str, master: &Client, reports: &Receiver<Report>, stopped: &Receiver<()>) {
    let mut pending: Vec<Report> = Vec::new();
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            crossbeam_channel::select! {
                recv(reports) -> report => match report {
                    Ok(report) => pending.push(report),
                    Err(_) => return,
                },
                recv(stopped) -> _ => return,
            }
        }
        // The window is waited out once, and what came meanwhile taken at its end: not
        // woken by every upload (a receive per report cost each PUT two thread switches).
        // A node stopping sends what it has first, as it did when stopping meanwhile.
        let stopping = stopped.recv_timeout(REPORT_WINDOW) != Err(RecvTimeoutError::Timeout);
        pending.extend(reports.try_iter().take(REPORTS_PER_REQUEST.saturating_sub(pending.len())));
        let mut report = ReplicaReport { node: node.to_string(), stored: Vec::new(), corrupt: Vec::new() };
        for item in &pending {
            match item {
                Report::Stored(replica) => report.stored.push(replica.clone()),
                Report::Corrupt(id) => report.corrupt.push(id.clone()),
            }
        }
        // Deletions the answer names are also queued for this node's heartbeats.
        match master.report(&report) {
            Ok(_) => {
                pending.clear();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 30 == 0 {
                    log::warn(node, &format!("{} report(s) not delivered yet ({failures} tries): {e}", pending.len()));
                }
                if stopped.recv_timeout(Duration::from_secs(1)) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// How often the disk is checked.
const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A disk check older than this means the check itself hangs (a stalled disk): the node
/// reports its disk failed rather than go on saying it is fine.
const DISK_CHECK_STALE: Duration = Duration::from_secs(20);
/// Inventory entries sent per second at most, so a node with millions of objects spreads
/// its inventory over minutes instead of taking its cores (and the master's writer).
const INVENTORY_RATE: u64 = 25_000;
/// Deletion batches waiting for the inventory thread; past that they are dropped (the
/// master schedules them again when the next inventory shows the copies).
const QUEUED_DELETIONS: usize = 64;

/// Timing of the membership threads.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub inventory: Duration,
}

/// Starts the heartbeat, inventory and disk-check threads; they return when `stopped`
/// is dropped.
pub fn start(node: &Arc<Node>, master: &Client, timing: Timing, stopped: &Receiver<()>) -> Vec<JoinHandle<()>> {
    let (want_inventory, inventory_wanted) = crossbeam_channel::bounded::<()>(1);
    let (deletions, to_delete) = crossbeam_channel::bounded::<Vec<String>>(QUEUED_DELETIONS);
    let (wake, woken) = crossbeam_channel::bounded::<()>(1);
    let spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(format!("{}-{what}", node.id)).spawn(f).expect("spawning a membership thread")
    };
    let heartbeat = {
        let (node, master, stopped, want_inventory) =
            (Arc::clone(node), master.clone(), stopped.clone(), want_inventory.clone());
        spawn(
            "heartbeat",
            Box::new(move || {
                heartbeat_loop(&node, &master, timing.heartbeat, &want_inventory, &deletions, &woken, &stopped)
            }),
        )
    };
    let inventory = {
        let (node, master, stopped) = (Arc::clone(node), master.clone(), stopped.clone());
        spawn(
            "inventory",
            Box::new(move || inventory_loop(&node, &master, timing.inventory, &inventory_wanted, &to_delete, &stopped)),
        )
    };
    let disk = {
        let (node, stopped) = (Arc::clone(node), stopped.clone());
        spawn("disk", Box::new(move || disk_loop(&node, &want_inventory, &wake, &stopped)))
    };
    vec![heartbeat, inventory, disk]
}

/// Registration and heartbeats, and nothing that could delay them.
fn heartbeat_loop(
    node: &Node,
    master: &Client,
    interval: Duration,
    want_inventory: &Sender<()>,
    deletions: &Sender<Vec<String>>,
    woken: &Receiver<()>,
    stopped: &Receiver<()>,
) {
    let mut registered = false;
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let outcome = if registered {
            heartbeat(node, master)
        } else {
            master.register_in_zone(&node.id, &node.address, node.zone.as_deref()).map(|()| {
                log::info(&node.id, &format!("registered with master {} as {}", master.master(), node.address));
                registered = true;
                // A full send (never blocks): one request pending is as good as two.
                let _ = want_inventory.try_send(());
                NodeCommands::default()
            })
        };
        match outcome {
            Ok(commands) => {
                failures = 0;
                if !commands.delete.is_empty() && deletions.try_send(commands.delete).is_err() {
                    log::warn(&node.id, "deletion queue full; the master asks again after the next inventory");
                }
            }
            Err(e) if registered && e.status() == Some(404) => {
                log::warn(
                    &node.id,
                    "the master does not know this node (was its database replaced?); registering again",
                );
                registered = false;
                continue;
            }
            Err(e) => {
                failures += 1;
                // The first failure and then every 20th: a master that is down should
                // not flood the log.
                if failures == 1 || failures % 20 == 0 {
                    let what = if registered { "heartbeat" } else { "registration" };
                    log::warn(&node.id, &format!("{what} failed ({failures} in a row): {e}"));
                }
            }
        }
        let wait = if registered { interval } else { interval.min(Duration::from_secs(1)) };
        let wait = wait.saturating_sub(started.elapsed());
        crossbeam_channel::select! {
            recv(stopped) -> _ => return,
            recv(woken) -> _ => {}
            default(wait) => {}
        }
    }
}

fn heartbeat(node: &Node, master: &Client) -> Result<NodeCommands, crate::client::ClientError> {
    // The last disk check's figures: a heartbeat touches no disk, so a stalled disk
    // cannot stall it.
    let health = node.blobs.disk_health();
    let (disk, disk_error) = if health.state == DiskState::Ok && health.checked.elapsed() > DISK_CHECK_STALE {
        let silent = health.checked.elapsed().as_secs();
        (DiskState::Failed, Some(format!("the disk check has not finished for {silent} s (a stalled disk?)")))
    } else {
        (health.state, health.reason)
    };
    let (capacity_bytes, free_bytes) = match node.capacity_bytes {
        None => (health.capacity_bytes, health.free_bytes),
        Some(offered) => {
            let left = offered.saturating_sub(node.blobs.stored_bytes());
            (offered.min(health.capacity_bytes), left.min(health.free_bytes))
        }
    };
    master.heartbeat(&Heartbeat {
        id: node.id.clone(),
        address: node.address.clone(),
        capacity_bytes,
        free_bytes: if disk == DiskState::Ok { free_bytes } else { 0 },
        object_count: node.blobs.object_count(),
        version: Some(crate::VERSION.into()),
        disk,
        disk_error,
        zone: node.zone.clone(),
    })
}

/// Checks the disk every `DISK_CHECK_INTERVAL`; says when its state changes.
fn disk_loop(node: &Node, want_inventory: &Sender<()>, wake: &Sender<()>, stopped: &Receiver<()>) {
    let mut seen = node.blobs.disk_health().changes;
    loop {
        if stopped.recv_timeout(DISK_CHECK_INTERVAL) != Err(RecvTimeoutError::Timeout) {
            return;
        }
        node.blobs.check_disk();
        // Compared by count of changes, not by state: a write or the scrubber may have
        // found the disk failed, and it may be back already.
        let health = node.blobs.disk_health();
        if health.changes == seen {
            continue;
        }
        seen = health.changes;
        match health.state {
            DiskState::Ok => {
                log::info(&node.id, "the data disk passes its checks again; rejoining and sending an inventory");
                let _ = want_inventory.try_send(());
            }
            state => log::error(
                &node.id,
                &format!(
                    "the data disk is {} ({}); telling the master, which places nothing here and re-creates \
                     this node's copies elsewhere",
                    state.as_str(),
                    health.reason.unwrap_or_default()
                ),
            ),
        }
        let _ = wake.try_send(());
    }
}

/// Inventories and deletions: the node's bulk conversations with the master.
fn inventory_loop(
    node: &Node,
    master: &Client,
    interval: Duration,
    inventory_wanted: &Receiver<()>,
    to_delete: &Receiver<Vec<String>>,
    stopped: &Receiver<()>,
) {
    // The first inventory waits for the first registration to ask for it.
    let mut next_inventory: Option<Instant> = None;
    loop {
        let wait = next_inventory.map_or(Duration::from_secs(3600), |at| at.saturating_duration_since(Instant::now()));
        let due = crossbeam_channel::select! {
            recv(stopped) -> _ => return,
            recv(inventory_wanted) -> _ => true,
            recv(to_delete) -> batch => {
                if let Ok(batch) = batch {
                    delete_objects(node, &batch);
                }
                false
            }
            default(wait) => next_inventory.is_some(),
        };
        if !due {
            continue;
        }
        let health = node.blobs.disk_health();
        if health.state != DiskState::Ok {
            // The disk check asks again when the disk is back.
            next_inventory = None;
            continue;
        }
        match send_inventory(node, master, stopped) {
            Ok(()) => next_inventory = Some(Instant::now() + interval),
            Err(e) => {
                if stopped.try_recv() != Err(crossbeam_channel::TryRecvError::Empty) {
                    return;
                }
                log::warn(&node.id, &format!("inventory not delivered ({e}); retrying in 30 s"));
                next_inventory = Some(Instant::now() + Duration::from_secs(30));
            }
        }
    }
}

fn delete_objects(node: &Node, delete: &[String]) {
    if delete.is_empty() {
        return;
    }
    let mut deleted = 0;
    for raw in delete {
        let Ok(id) = ObjectId::parse(raw) else { continue };
        match node.blobs.delete(&id) {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) => {
                log::error(&node.id, &format!("cannot delete {id}: {e}"));
                // Perhaps the disk's fault: the check tells the master if so.
                node.blobs.check_disk();
            }
        }
    }
    log::info(&node.id, &format!("deleted {deleted} of {} object(s) the master no longer wants", delete.len()));
}

/// Sends every object this node holds, in pages of `INVENTORY_BATCH`, ending with
/// `done: true`, at most `INVENTORY_RATE` entries a second.
fn send_inventory(node: &Node, master: &Client, stopped: &Receiver<()>) -> Result<(), String> {
    let started = Instant::now();
    let scan = uuid::Uuid::new_v4().to_string();
    let mut batch = Vec::with_capacity(INVENTORY_BATCH);
    let mut total = 0u64;
    let mut failure = None;
    let send = |replicas: Vec<InventoryEntry>, done: bool, sent: u64| -> Result<(), String> {
        let inventory = Inventory { node: node.id.clone(), scan: scan.clone(), done, replicas };
        let commands = master.inventory(&inventory).map_err(|e| e.to_string())?;
        delete_objects(node, &commands.delete);
        // Sleep off any lead over the allowed rate, staying responsive to shutdown.
        let due = Duration::from_secs_f64(sent as f64 / INVENTORY_RATE as f64);
        if let Some(lead) = due.checked_sub(started.elapsed()) {
            if stopped.recv_timeout(lead) != Err(RecvTimeoutError::Timeout) {
                return Err("the node is stopping".to_string());
            }
        }
        Ok(())
    };
    node.blobs
        .scan(&mut |item| {
            if failure.is_some() {
                return;
            }
            match item.stored {
                Ok(stored) => {
                    total += 1;
                    batch.push(InventoryEntry {
                        objectid: item.id.to_string(),
                        size: stored.size,
                        checksum: stored.checksum,
                        age_secs: item.age_secs,
                    });
                    if batch.len() == INVENTORY_BATCH {
                        failure = send(std::mem::take(&mut batch), false, total).err();
                    }
                }
                Err(reason) => node.quarantine(&item.id, &reason),
            }
        })
        .map_err(|e| {
            // Perhaps the disk's fault: the check tells the master if so.
            node.blobs.check_disk();
            format!("cannot list objects: {e}")
        })?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    send(batch, true, 0)?;
    log::info(
        &node.id,
        &format!("inventory of {total} object(s) sent to the master in {:.1}s", started.elapsed().as_secs_f64()),
    );
    Ok(())
}
