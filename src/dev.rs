//! `aether dev`: a whole local cluster in one process, a master and N datanodes on
//! loopback ports with their data under one directory, for trying AetherStore out and
//! running the original curl walk-through. Ctrl-C stops it cleanly. An S3 gateway runs
//! beside them (on the master's port + 100) with an access key named `dev` ready.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::datanode::{Datanode, DatanodeConfig};
use crate::master::{Master, MasterConfig};
use crate::proto::s3::AccessKey;
use crate::s3::{Gateway, GatewayConfig};

#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    pub datanodes: usize,
    pub replication: usize,
    /// The master's port; datanode i listens on `port + i`. Port 0 picks free ports.
    pub port: u16,
}

/// The replication factor of a dev cluster of `datanodes` nodes: the one asked for, if
/// the cluster can hold that many copies, else 2 or, with a single datanode, 1.
pub fn replication_for(datanodes: usize, requested: Option<usize>) -> Result<usize, String> {
    if datanodes == 0 {
        return Err("--datanodes must be at least 1: a cluster without datanodes cannot store anything".into());
    }
    match requested {
        Some(0) => Err("--replication must be at least 1".into()),
        Some(r) if r > datanodes => Err(format!(
            "--replication {r} needs at least {r} datanodes, but --datanodes is {datanodes}; \
             start more datanodes (--datanodes {r}) or ask for fewer replicas"
        )),
        Some(r) => Ok(r),
        None => Ok(2.min(datanodes)),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub struct DevCluster {
    master: Master,
    datanodes: Vec<Datanode>,
    pub master_url: String,
    gateway: Gateway,
    pub s3_url: String,
    pub s3_region: String,
    /// The access key named `dev`, with its secret: created on the first start.
    pub s3_key: AccessKey,
}

impl DevCluster {
    /// Starts the master, then the datanodes, and waits until every datanode has
    /// registered, so the cluster takes uploads as soon as this returns.
    pub fn start(config: &DevConfig, agent: ureq::Agent) -> io::Result<DevCluster> {
        let mut master_config =
            MasterConfig::new(&format!("127.0.0.1:{}", config.port), config.data_dir.join("master"));
        master_config.replication = config.replication;
        let master = Master::start(master_config, agent.clone())?;
        let master_port = master.local_addr().port();
        let master_url = if config.port == 0 {
            format!("http://127.0.0.1:{master_port}")
        } else {
            format!("http://localhost:{master_port}")
        };

        let mut datanodes = Vec::new();
        for i in 1..=config.datanodes {
            let id = format!("datanode-{i}");
            let port = if config.port == 0 { 0 } else { config.port + i as u16 };
            let mut node_config = DatanodeConfig::new(&format!("127.0.0.1:{port}"), config.data_dir.join(&id));
            // The original walk-through registers its datanodes under these names and
            // addresses; advertising the same ones makes its calls change nothing.
            if port != 0 {
                node_config.advertise = Some(format!("http://localhost:{port}"));
            }
            node_config.master = Some(format!("http://127.0.0.1:{master_port}"));
            node_config.node_id = Some(id);
            node_config.threads = 16;
            datanodes.push(Datanode::start(node_config, agent.clone())?);
        }

        let client = Client::new(agent.clone(), &master_url);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let registered = client.nodes().map(|nodes| nodes.len()).unwrap_or(0);
            if registered >= datanodes.len() {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "only {registered} of {} registered within 15 s",
                    plural(datanodes.len(), "datanode", "datanodes")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (gateway, s3_key) = start_gateway(config, &client, agent)?;
        let s3_port = gateway.local_addr().port();
        let s3_url = format!("http://{}:{s3_port}", if config.port == 0 { "127.0.0.1" } else { "localhost" });
        let s3_region = "us-east-1".to_string();
        Ok(DevCluster { master, datanodes, master_url, gateway, s3_url, s3_region, s3_key })
    }

    /// What runs where, for the person who started the cluster.
    pub fn summary(&self, config: &DevConfig) -> String {
        let data = config.data_dir.display();
        let mut text = format!(
            "AetherStore dev cluster: 1 master, {}, replication {}, data under {data}\n",
            plural(self.datanodes.len(), "datanode", "datanodes"),
            config.replication
        );
        text.push_str(&format!("  master      {:<28} metadata {data}/master/meta.db\n", self.master_url));
        for node in &self.datanodes {
            text.push_str(&format!("  {:<11} {:<28} objects  {data}/{}\n", node.id(), node.address(), node.id()));
        }
        text.push_str(&format!(
            "  s3          {:<28} region {}, access key {} secret {}\n",
            self.s3_url,
            self.s3_region,
            self.s3_key.id,
            self.s3_key.secret.as_deref().unwrap_or_default()
        ));
        text.push_str(&format!(
            "Try it:  echo hello > hello.txt && cargo run --release -- put hello.txt --master {}\n",
            self.master_url
        ));
        text.push_str(&format!(
            "Try S3:  AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws --endpoint-url {} --region {} s3 mb s3://demo\n",
            self.s3_key.id,
            self.s3_key.secret.as_deref().unwrap_or_default(),
            self.s3_url,
            self.s3_region
        ));
        text.push_str("Stop it: press Ctrl-C\n");
        text
    }

    pub fn shutdown(self) {
        self.gateway.shutdown();
        for node in self.datanodes {
            node.shutdown();
        }
        self.master.shutdown();
    }
}

/// Starts the dev cluster's S3 gateway (master port + 100) and finds or creates the
/// access key named `dev`.
fn start_gateway(config: &DevConfig, client: &Client, agent: ureq::Agent) -> io::Result<(Gateway, AccessKey)> {
    let existing = client.access_keys().map_err(io::Error::other)?.into_iter().find(|k| k.name == "dev");
    let key = match existing {
        Some(key) => client.access_key(&key.id),
        None => client.create_access_key("dev"),
    }
    .map_err(io::Error::other)?;
    let port = if config.port == 0 { 0 } else { config.port.saturating_add(100) };
    let gateway = Gateway::start(GatewayConfig::new(&format!("127.0.0.1:{port}"), client.master()), agent)?;
    Ok((gateway, key))
}

/// Runs a dev cluster until Ctrl-C (or SIGTERM).
pub fn run(config: &DevConfig) -> io::Result<()> {
    let (stop, stopped) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop.try_send(());
    })
    .map_err(io::Error::other)?;
    let cluster = DevCluster::start(config, crate::client::agent())?;
    print!("{}", cluster.summary(config));
    use std::io::Write;
    io::stdout().flush()?;
    let _ = stopped.recv();
    crate::log::info("dev", "stopping the cluster");
    cluster.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_fits_the_datanodes() {
        assert_eq!(replication_for(3, None), Ok(2));
        assert_eq!(replication_for(1, None), Ok(1));
        assert_eq!(replication_for(3, Some(3)), Ok(3));
        assert!(replication_for(2, Some(3)).is_err());
        assert!(replication_for(0, None).is_err());
        assert!(replication_for(2, Some(0)).is_err());
    }
}
