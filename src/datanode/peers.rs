//! `Peers`: the addresses of the datanodes registered with the master, as this datanode
//! knows them: the `Registry` of its `NodeClient`, so it forwards uploads and copies
//! objects only to those. The list is fetched from the master (`GET /api/nodes`) when an
//! address is not in it, at most once a second, so that no client can make a datanode
//! connect to an address of its choosing, nor flood the master with look-ups. The nodes a
//! valid placement signature names count as registered too (the master signed them).

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::log;
use crate::node_client::Registry;

/// The least time between two look-ups of the list at the master.
const MIN_REFRESH: Duration = Duration::from_secs(1);

pub struct Peers {
    node: String,
    /// None for a datanode without a master: it knows no peer.
    master: Option<Client>,
    addresses: RwLock<HashSet<String>>,
    /// When the last fetch of the list started; held while fetching, so one fetch runs
    /// at a time.
    fetched: Mutex<Option<Instant>>,
}

impl Peers {
    pub fn new(node: &str, master: Option<Client>) -> Peers {
        Peers { node: node.to_string(), master, addresses: RwLock::default(), fetched: Mutex::new(None) }
    }

    /// Adds addresses the master vouched for in a placement signature it made: it places
    /// only registered nodes, so a chain it signed needs no look-up.
    pub fn learn(&self, addresses: &[String]) {
        let mut known = self.addresses.write().expect("peers lock");
        for address in addresses {
            if !known.contains(address) {
                known.insert(address.clone());
            }
        }
    }

    fn knows(&self, address: &str) -> bool {
        self.addresses.read().expect("peers lock").contains(address)
    }
}

impl Registry for Peers {
    fn is_registered(&self, address: &str) -> bool {
        if self.knows(address) {
            return true;
        }
        let Some(master) = &self.master else { return false };
        let missed = Instant::now();
        let mut fetched = self.fetched.lock().expect("peers fetch lock");
        // Another caller may have fetched the list while this one waited for the lock;
        // a list asked for after this miss is as fresh as any this one could fetch, so
        // callers that pile up behind one fetch do not each fetch again.
        if self.knows(address) || fetched.is_some_and(|started| started >= missed) {
            return self.knows(address);
        }
        if let Some(last) = *fetched {
            std::thread::sleep(MIN_REFRESH.saturating_sub(last.elapsed()));
        }
        let started = Instant::now();
        match master.nodes() {
            Ok(nodes) => *self.addresses.write().expect("peers lock") = nodes.into_iter().map(|n| n.address).collect(),
            Err(e) => log::warn(&self.node, &format!("cannot fetch the registered datanodes from the master: {e}")),
        }
        *fetched = Some(started);
        self.knows(address)
    }
}
