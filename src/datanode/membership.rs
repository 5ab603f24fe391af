//! A datanode's life as a cluster member: it registers with the master (again whenever
//! the master has forgotten it), sends heartbeats with its capacity, sends its full
//! inventory on registration and periodically, reports the replicas it stores or finds
//! corrupt, and carries out the deletions the master answers with.

use std::time::{Duration, Instant};

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Node;
use crate::client::Client;
use crate::log;
use crate::proto::{Heartbeat, Inventory, InventoryEntry, NodeCommands, ObjectId, ReplicaReport, ReplicaState};

/// Reports waiting for the master at most; past that they are dropped (the next
/// inventory tells the master the same).
const QUEUED_REPORTS: usize = 100_000;
/// How long the reporter waits for more reports to send with the first. Long enough that
/// an upload's own `complete` (with this node's receipt) usually reaches the master
/// first, which then recognises the report as known without a write; short next to the
/// seconds a repair takes, which these reports confirm.
const REPORT_WINDOW: Duration = Duration::from_millis(200);
/// Objects per inventory request.
const INVENTORY_BATCH: usize = 5_000;

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
        let deadline = Instant::now() + REPORT_WINDOW;
        while pending.len() < 1000 {
            match reports.recv_deadline(deadline) {
                Ok(report) => pending.push(report),
                Err(_) => break,
            }
        }
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
    }
}

/// The membership loop; returns when `stopped` is dropped.
pub fn run(node: &Node, master: &Client, interval: Duration, inventory_interval: Duration, stopped: &Receiver<()>) {
    let mut registered = false;
    let mut failures = 0u32;
    let mut next_inventory = Instant::now();
    loop {
        let outcome = if registered {
            heartbeat(node, master)
        } else {
            master.register(&node.id, &node.address).map(|()| {
                log::info(&node.id, &format!("registered with master {} as {}", master.master(), node.address));
                registered = true;
                next_inventory = Instant::now();
                NodeCommands::default()
            })
        };
        match outcome {
            Ok(commands) => {
                failures = 0;
                delete_objects(node, &commands);
                if Instant::now() >= next_inventory {
                    match send_inventory(node, master) {
                        Ok(()) => next_inventory = Instant::now() + inventory_interval,
                        Err(e) => {
                            log::warn(&node.id, &format!("inventory not delivered ({e}); retrying in 30 s"));
                            next_inventory = Instant::now() + Duration::from_secs(30);
                        }
                    }
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
        if stopped.recv_timeout(wait) != Err(RecvTimeoutError::Timeout) {
            return;
        }
    }
}

fn heartbeat(node: &Node, master: &Client) -> Result<NodeCommands, crate::client::ClientError> {
    let (free_bytes, capacity_bytes) = node.blobs.disk_space().unwrap_or((0, 0));
    master.heartbeat(&Heartbeat {
        id: node.id.clone(),
        address: node.address.clone(),
        capacity_bytes,
        free_bytes,
        object_count: node.blobs.object_count(),
        version: Some(crate::VERSION.into()),
    })
}

fn delete_objects(node: &Node, commands: &NodeCommands) {
    if commands.delete.is_empty() {
        return;
    }
    let mut deleted = 0;
    for raw in &commands.delete {
        let Ok(id) = ObjectId::parse(raw) else { continue };
        match node.blobs.delete(&id) {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) => log::error(&node.id, &format!("cannot delete {id}: {e}")),
        }
    }
    log::info(
        &node.id,
        &format!("deleted {deleted} of {} object(s) the master no longer wants", commands.delete.len()),
    );
}

/// Sends every object this node holds, in batches, ending with `done: true`.
fn send_inventory(node: &Node, master: &Client) -> Result<(), String> {
    let scan = uuid::Uuid::new_v4().to_string();
    let mut batch = Vec::with_capacity(INVENTORY_BATCH);
    let mut total = 0u64;
    let mut failure = None;
    let send = |replicas: Vec<InventoryEntry>, done: bool| -> Result<(), String> {
        let inventory = Inventory { node: node.id.clone(), scan: scan.clone(), done, replicas };
        let commands = master.inventory(&inventory).map_err(|e| e.to_string())?;
        delete_objects(node, &commands);
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
                        failure = send(std::mem::take(&mut batch), false).err();
                    }
                }
                Err(reason) => node.quarantine(&item.id, &reason),
            }
        })
        .map_err(|e| format!("cannot list objects: {e}"))?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    send(batch, true)?;
    log::info(&node.id, &format!("inventory of {total} object(s) sent to the master"));
    Ok(())
}
