//! [`ValkeyCluster`]: a local Valkey Cluster of [`ValkeyServer`]s, and the one shared by every test
//! of a process.

use crate::ValkeyServer;
use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a new cluster gets to cover every slot on every node.
const CLUSTER_FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A local Valkey Cluster: `primaries` primaries with `replicas` replicas each, every node a
/// [`ValkeyServer`] started with `--cluster-enabled yes` on a free loopback port, joined with
/// `valkey-cli --cluster create`. Killed and cleaned up when dropped.
///
/// `cluster-node-timeout` is 1000 ms, so a replica takes over a killed primary within a few
/// seconds.
pub struct ValkeyCluster {
    nodes: Vec<ValkeyServer>,
}

impl ValkeyCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` with all 16384 slots assigned and every replica is in sync.
    ///
    /// # Panics
    ///
    /// If `valkey-server` or `valkey-cli` is missing, or the cluster does not form in 30 s.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            // A replica whose primary just died may take over at once in a test cluster.
            "--cluster-replica-validity-factor",
            "0",
        ];
        let nodes: Vec<ValkeyServer> = (0..primaries * (1 + replicas))
            .map(|_| ValkeyServer::start_with_args(&args))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("valkey-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                panic!("valkey-cli not found: run scripts/install-valkey (or: apt-get install -t bookworm-backports valkey-tools)")
            }
            Err(e) => panic!("cannot run valkey-cli: {e}"),
        };
        assert!(
            out.status.success(),
            "valkey-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + CLUSTER_FORM_TIMEOUT;
        let total = cluster.nodes.len();
        loop {
            let ready = cluster.nodes.iter().all(|n| {
                let info = cli_sync(n.port(), &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_assigned:16384")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{total}"))
                    && {
                        let repl = cli_sync(n.port(), &["INFO", "replication"]);
                        repl.contains("role:master") || repl.contains("master_link_status:up")
                    }
            });
            if ready {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form within {CLUSTER_FORM_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One cluster of 3 primaries and 3 replicas shared by every test of the calling test
    /// binary (each test in its own namespace), started on first use. A watchdog process kills
    /// its nodes and removes their directories when the test binary exits.
    pub fn shared() -> &'static ValkeyCluster {
        static SHARED: std::sync::OnceLock<ValkeyCluster> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = Self::start(3, 1);
            cluster.watch_parent();
            cluster
        })
    }

    /// Spawns `sh` to clean up after this process when it exits (a `static` is never dropped).
    fn watch_parent(&self) {
        let pids: Vec<String> = self.nodes.iter().map(|n| n.pid().to_string()).collect();
        let dirs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'{}'", n.dir().display()))
            .collect();
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; kill -9 {pids} 2>/dev/null; rm -rf {dirs}",
            parent = std::process::id(),
            pids = pids.join(" "),
            dirs = dirs.join(" "),
        );
        // Never waited for: it outlives this process by design (it cleans up after it exits).
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster watchdog");
    }

    /// `redis://127.0.0.1:PORT/` of every node (seed URLs for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ValkeyServer::url).collect()
    }

    /// The nodes, primaries and replicas.
    pub fn nodes(&self) -> &[ValkeyServer] {
        &self.nodes
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        let port = self.live_port();
        cli_sync(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The index in [`nodes`](Self::nodes) of the primary serving `slot`, as a live node sees it.
    pub fn primary_of_slot(&self, slot: u16) -> Option<usize> {
        let nodes = cli_sync(self.live_port(), &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            });
            if !serves {
                continue;
            }
            let port: u16 = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())?;
            return self.nodes.iter().position(|n| n.port() == port);
        }
        None
    }

    /// `valkey-cli` on node `i` (raw output; "" when it does not answer).
    pub fn node_cli(&self, i: usize, args: &[&str]) -> String {
        cli_sync(self.nodes[i].port(), args)
    }

    /// Node `i`'s cluster node id (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        self.node_cli(i, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// The indexes of the live nodes that are primaries (`ROLE`).
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .filter(|&i| self.node_cli(i, &["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again after [`kill`](Self::kill) (same port, directory and `nodes.conf`,
    /// so it rejoins the cluster: as a replica when its primary role was taken over).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
    }

    /// Every key matching `pattern` on every primary (`KEYS`), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            if !cli_sync(n.port(), &["ROLE"]).starts_with("master") {
                continue;
            }
            keys.extend(
                cli_sync(n.port(), &["KEYS", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        keys.sort();
        keys
    }

    /// Runs one command through a cluster connection (routed by its keys).
    pub async fn cli<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::cluster::ClusterClient::new(self.urls()).expect("cluster client");
        let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_async_connection())
            .await
            .expect("connecting to the cluster timed out")
            .expect("connect to the cluster");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut conn))
            .await
            .expect("cluster command timed out")
            .unwrap_or_else(|e| panic!("cluster command failed: {e}"))
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live node")
            .port()
    }
}

/// `valkey-cli -p PORT ARGS...` (raw output), "" when the node does not answer.
fn cli_sync(port: u16, args: &[&str]) -> String {
    let out = Command::new("valkey-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("valkey-cli not found: run scripts/install-valkey")
        }
        Err(_) => String::new(),
    }
}
