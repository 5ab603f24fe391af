//! `aether dev`: a whole local cluster for trying AetherStore out and running the
//! original curl walk-through: the master in this process, each datanode a child process
//! of its own (`aether datanode`) on loopback ports, their data under one directory, and
//! an S3 gateway (on the master's port + 100, or `--s3-port`) with an access key named `dev` ready.
//! A datanode is its own process so that it can be killed (`kill -9 PID`, the PIDs are
//! printed) to watch the master notice and repair, as in a real cluster. Ctrl-C stops
//! everything cleanly; the children also die with this process.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aetherstore::client::Client;
use aetherstore::lock::DataDirLock;
use aetherstore::log;
use aetherstore::master::{Master, MasterConfig};
use aetherstore::proto::s3::AccessKey;
use aetherstore::s3::{Gateway, GatewayConfig};

/// Set in a dev datanode's environment to the PID of the `aether dev` that started it.
pub const DEV_PARENT_VAR: &str = "AETHER_DEV_PARENT";

#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    pub datanodes: usize,
    pub replication: usize,
    /// The master's port; datanode i listens on `port + i`. Port 0 picks free ports.
    pub port: u16,
    /// Silence after which the master declares a datanode dead (and repairs its copies).
    pub dead_after: Duration,
    /// The S3 gateway's port: `port + 100` if not given (a free one when `port` is 0).
    pub s3_port: Option<u16>,
}

/// The dev cluster's S3 gateway, and the key it prints.
struct DevGateway {
    gateway: Gateway,
    url: String,
    region: String,
    /// The access key named `dev`, with its secret: created on the first start.
    key: AccessKey,
}

/// One datanode child process and how to start it again.
struct DevNode {
    id: String,
    address: String,
    args: Vec<String>,
    child: Child,
    /// Set once its exit was noticed and told.
    exited: Option<ExitStatus>,
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
    datanodes: Vec<DevNode>,
    pub master_url: String,
    _lock: DataDirLock,
    /// The S3 gateway, started once the datanodes are registered.
    s3: Option<DevGateway>,
    /// The token of this run's S3 namespace API (`aether key` needs it).
    namespace_token: String,
}

impl DevCluster {
    /// Starts the master, then the datanodes, and waits until every datanode has
    /// registered at its address, so the cluster takes uploads as soon as this returns.
    pub fn start(config: &DevConfig, agent: ureq::Agent) -> io::Result<DevCluster> {
        // The whole tree is this cluster's; the master and each datanode lock their own
        // directories inside it as well, so none of them can be started twice either.
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let exe = std::env::current_exe()?;
        let mut master_config =
            MasterConfig::new(&format!("127.0.0.1:{}", config.port), config.data_dir.join("master"));
        master_config.replication = config.replication;
        master_config.dead_after = config.dead_after;
        // The cluster stays open (the original walk-through registers datanodes with curl),
        // but its S3 namespace holds access keys' secrets: only this process, its gateway,
        // and whoever it shows this run's token to, may read it.
        let namespace_token = new_token();
        master_config.namespace_token = Some(namespace_token.clone());
        let master = Master::start(master_config, agent.clone())?;
        let master_port = master.local_addr().port();
        let master_url = if config.port == 0 {
            format!("http://127.0.0.1:{master_port}")
        } else {
            format!("http://localhost:{master_port}")
        };
        // Heartbeats often enough that a live node is never taken for a suspect one.
        let heartbeat = (config.dead_after / 4).min(Duration::from_secs(3)).max(Duration::from_millis(100));

        let mut cluster =
            DevCluster { master, datanodes: Vec::new(), master_url, _lock: lock, s3: None, namespace_token };
        for i in 1..=config.datanodes {
            let id = format!("datanode-{i}");
            let port = if config.port == 0 { free_port()? } else { config.port + i as u16 };
            // The original walk-through registers its datanodes under these names and
            // addresses; advertising the same ones makes its calls change nothing.
            let address =
                if config.port == 0 { format!("http://127.0.0.1:{port}") } else { format!("http://localhost:{port}") };
            let data = config.data_dir.join(&id);
            let mut args: Vec<String> = vec![
                "datanode".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data".into(),
                data.display().to_string(),
                "--master".into(),
                format!("http://127.0.0.1:{master_port}"),
                "--advertise".into(),
                address.clone(),
                "--node-id".into(),
                id.clone(),
                "--threads".into(),
                "16".into(),
                "--heartbeat-interval".into(),
                format!("{}", heartbeat.as_secs_f64()),
            ];
            args.extend(log::as_args());
            let child = Command::new(&exe)
                .args(&args)
                .env(DEV_PARENT_VAR, std::process::id().to_string())
                .env_remove("AETHER_CLUSTER_TOKEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot start {id} ({}): {e}", exe.display())))?;
            cluster.datanodes.push(DevNode { id, address, args, child, exited: None });
        }

        let client = Client::new(agent.clone(), &cluster.master_url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let registered = client.nodes().unwrap_or_default();
            let ready = cluster.datanodes.iter().all(|node| {
                registered.iter().any(|n| n.id == node.id && n.address == node.address && n.state == "alive")
            });
            if ready {
                break;
            }
            let mut stopped = None;
            for node in &mut cluster.datanodes {
                if let Some(status) = node.child.try_wait()? {
                    stopped = Some(format!("{} stopped at start-up ({status}); its log is above", node.id));
                }
            }
            if let Some(message) = stopped {
                cluster.shutdown();
                return Err(io::Error::other(message));
            }
            if Instant::now() > deadline {
                cluster.shutdown();
                return Err(io::Error::other("the datanodes did not all register within 30 s; their logs are above"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let namespace = client.clone().with_token(Some(cluster.namespace_token.clone()));
        let (gateway, key) = match start_gateway(config, &namespace, &cluster.namespace_token, agent) {
            Ok(started) => started,
            Err(e) => {
                cluster.shutdown();
                return Err(e);
            }
        };
        let port = gateway.local_addr().port();
        let url = format!("http://{}:{port}", if config.port == 0 { "127.0.0.1" } else { "localhost" });
        cluster.s3 = Some(DevGateway { gateway, url, region: "us-east-1".into(), key });
        Ok(cluster)
    }

    /// What runs where, for the person who started the cluster.
    pub fn summary(&self, config: &DevConfig) -> String {
        let data = config.data_dir.display();
        let mut text = format!(
            "AetherStore dev cluster: 1 master, {}, replication {}, data under {data}\n",
            plural(self.datanodes.len(), "datanode", "datanodes"),
            config.replication
        );
        let pid = std::process::id();
        text.push_str(&format!("  master      {:<26} pid {pid:<8} metadata {data}/master/meta.db\n", self.master_url));
        for node in &self.datanodes {
            text.push_str(&format!(
                "  {:<11} {:<26} pid {:<8} objects  {data}/{}\n",
                node.id,
                node.address,
                node.child.id(),
                node.id
            ));
        }
        if let Some(s3) = &self.s3 {
            text.push_str(&format!(
                "  s3          {:<26} region {}, access key {} secret {}\n",
                s3.url,
                s3.region,
                s3.key.id,
                s3.key.secret.as_deref().unwrap_or_default()
            ));
        }
        text.push_str(&format!(
            "Try it:  echo hello > hello.txt && cargo run --release -- put hello.txt --master {}\n",
            self.master_url
        ));
        text.push_str(&format!(
            "Heal it: kill -9 a datanode's pid; the master declares it dead after {} s and copies its objects again (watch `aether nodes`)\n",
            config.dead_after.as_secs_f64()
        ));
        if let Some(s3) = &self.s3 {
            text.push_str(&format!(
                "Try S3:  AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws --endpoint-url {} --region {} s3 mb s3://demo\n",
                s3.key.id,
                s3.key.secret.as_deref().unwrap_or_default(),
                s3.url,
                s3.region
            ));
        }
        text.push_str(&format!(
            "Keys:    aether key create NAME --master {} --cluster-token {} (this run's S3 namespace token)\n",
            self.master_url, self.namespace_token
        ));
        text.push_str("Stop it: press Ctrl-C\n");
        text
    }

    /// Notices datanodes that stopped (killed, crashed) and says so once, with the
    /// command that starts each again.
    fn watch(&mut self) {
        for node in &mut self.datanodes {
            if node.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                node.exited = Some(status);
                log::warn(
                    "dev",
                    &format!(
                        "{} (pid {}) stopped ({status}); the master will declare it dead and re-create its copies \
                         on the other datanodes. To start it again: {} {}",
                        node.id,
                        node.child.id(),
                        std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "aether".into()),
                        node.args.join(" ")
                    ),
                );
            }
        }
    }

    /// Stops every datanode (SIGTERM, then SIGKILL after 20 s), then the master.
    pub fn shutdown(mut self) {
        if let Some(s3) = self.s3.take() {
            s3.gateway.shutdown();
        }
        for node in &mut self.datanodes {
            if node.exited.is_none() && node.child.try_wait().ok().flatten().is_none() {
                if let Some(pid) = rustix::process::Pid::from_raw(node.child.id() as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &mut self.datanodes {
            while node.child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    log::warn("dev", &format!("{} did not stop within 20 s; killing it", node.id));
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.master.shutdown();
    }
}

/// A port nobody listens on right now, for a datanode started with `--port 0`.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// In a datanode started by `aether dev`: dies with its dev cluster, so that no datanode
/// outlives the cluster it belongs to (even when `aether dev` itself is killed).
pub fn follow_dev_parent() {
    let Some(parent) = std::env::var(DEV_PARENT_VAR).ok().and_then(|v| v.parse::<i32>().ok()) else { return };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Term));
    // The parent may have died before the line above took effect.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        std::process::exit(1);
    }
}

/// Starts the dev cluster's S3 gateway (master port + 100, or `--s3-port`) and finds or creates the
/// access key named `dev`.
fn start_gateway(
    config: &DevConfig,
    client: &Client,
    token: &str,
    agent: ureq::Agent,
) -> io::Result<(Gateway, AccessKey)> {
    let existing = client.access_keys().map_err(io::Error::other)?.into_iter().find(|k| k.name == "dev");
    let key = match existing {
        Some(key) => client.access_key(&key.id),
        None => client.create_access_key("dev"),
    }
    .map_err(io::Error::other)?;
    let port = config.s3_port.unwrap_or(if config.port == 0 { 0 } else { config.port.saturating_add(100) });
    let mut gateway_config = GatewayConfig::new(&format!("127.0.0.1:{port}"), client.master());
    gateway_config.cluster_token = Some(token.to_string());
    let gateway = Gateway::start(gateway_config, agent)?;
    Ok((gateway, key))
}

/// A fresh random token: 32 letters and digits.
fn new_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..32).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// Runs a dev cluster until Ctrl-C (or SIGTERM).
pub fn run(config: &DevConfig) -> io::Result<()> {
    let (stop, stopped) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop.try_send(());
    })
    .map_err(io::Error::other)?;
    let mut cluster = DevCluster::start(config, aetherstore::client::agent())?;
    print!("{}", cluster.summary(config));
    io::stdout().flush()?;
    while stopped.recv_timeout(Duration::from_millis(250)) == Err(crossbeam_channel::RecvTimeoutError::Timeout) {
        cluster.watch();
    }
    log::info("dev", "stopping the cluster");
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
