//! Shared test harness: a throw-away `valkey-server` per test, a shared local Valkey Cluster,
//! the [`Backend`] a scenario runs on (one server, the cluster, or `MemoryStore`), and helpers to
//! drive axum routers in process (`tower::ServiceExt::oneshot`) or over real TCP.
//!
//! Use it from a test binary with `mod support;`. Every helper here is used by some binary but not
//! by all of them, hence the `dead_code` allowance.
#![allow(dead_code)]

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::io::{ErrorKind, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{Cache, CacheBuilder, MemoryStore, ValkeyConfig, ValkeyStore};

const NOT_FOUND: &str = "valkey-server not found: run scripts/install-valkey (or: apt-get install -t bookworm-backports valkey-server valkey-tools)";

/// How long a server gets to answer PING after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A `valkey-server` on a free loopback port, without persistence, in its own temporary
/// directory. Killed (and its directory removed) when dropped, also when a test panics.
pub struct ValkeyServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `valkey-server` arguments, after the defaults (so they override them); kept across
    /// [`restart`](Self::restart).
    extra_args: Vec<String>,
}

impl ValkeyServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// # Panics
    ///
    /// If `valkey-server` is not installed, or does not come up within 5 s.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with extra server arguments that override the defaults, e.g.
    /// `&["--appendonly", "yes", "--appendfsync", "always"]` for a server whose data survives
    /// [`stop`](Self::stop) + [`restart`](Self::restart) (the directory is kept until drop).
    pub fn start_with_args(args: &[&str]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tvc-valkey-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // The port is free when probed but another process may take it before the server binds:
        // try a few ports before giving up.
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: dir.clone(),
                child: None,
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    server.kill();
                }
            }
        }
        panic!("valkey-server did not start: {last_err}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (while running).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("valkey-server is not running")
            .id()
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is lost.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)) and waits for PING.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The old socket may linger for a moment: retry until the deadline.
                Err(_) if Instant::now() < deadline => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("valkey-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Resumes a [paused](Self::pause) server (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Runs one raw command, e.g. `server.cli::<Vec<String>>(&["KEYS", "ns:*"])`.
    pub async fn cli<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        self.query(&cmd).await
    }

    /// Runs one raw command built with `redis::cmd` (for binary arguments).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("valid url");
        // The client's own response timeout (500 ms by default) would cut the 5 s bound below
        // short for big replies (`KEYS` over a large keyspace) on a loaded machine.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        let mut conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .expect("connecting to valkey timed out")
        .expect("connect to valkey");
        tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut conn))
            .await
            .expect("valkey command timed out")
            .unwrap_or_else(|e| panic!("valkey command failed: {e}"))
    }

    /// Every key matching `pattern` (`KEYS`), sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.cli(&["KEYS", pattern]).await;
        keys.sort();
        keys
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("valkey.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        // (Again on every attempt: a failed attempt's guard removes it when dropped.)
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("create {:?}: {e}", self.dir))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open log: {e}"))?;
        let child = Command::new("valkey-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            Err(e) => panic!("cannot run valkey-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "exited with {status}; log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no PONG on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ValkeyServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether a server on `port` answers PING (raw RESP, so it needs no runtime).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// A response with its body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The `Cache-Status` header ("" when absent).
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
            .unwrap_or("")
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// Whether the response was a fresh hit.
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// Collects a response's body.
pub async fn collect<B>(res: Response<B>) -> Resp
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a request through the router in process and collects the response.
pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let res = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .expect("request did not complete within 10 s")
        .expect("router is infallible");
    collect(res).await
}

/// `GET uri` through the router.
pub async fn get(app: &Router, uri: &str) -> Resp {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// A request builder for `method uri` with headers.
pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An axum router served over TCP on 127.0.0.1 in the background; stopped when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `app` on a free loopback port.
    pub async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1 client for [`HttpServer`].
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
>;

/// A new [`HttpClient`].
pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// `GET url` over TCP; returns the response with its body still streaming.
pub async fn http_get(client: &HttpClient, url: &str) -> Response<hyper::body::Incoming> {
    let req = Request::get(url)
        .body(http_body_util::Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no response headers within 10 s")
        .expect("HTTP request")
}

// ---------------------------------------------------------------------------------------------
// Valkey Cluster
// ---------------------------------------------------------------------------------------------

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
            .map(|n| format!("'{}'", n.dir.display()))
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
            .filter(|&i| self.nodes[i].child.is_some())
            .filter(|&i| self.node_cli(i, &["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Every key matching `pattern` on every primary (`KEYS`), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
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
            .find(|n| n.child.is_some())
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

/// A [`ValkeyStore`](ValkeyStore) on the [shared](ValkeyCluster::shared)
/// cluster with `timeout` for connecting and for responses, and a namespace suffix unique in
/// this process (tests share the cluster, so each adds it to its namespaces).
pub fn shared_cluster_store(timeout: Duration) -> (&'static ValkeyCluster, ValkeyStore, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let cluster = ValkeyCluster::shared();
    let store = ValkeyStore::with_config(
        ValkeyConfig::cluster(cluster.urls())
            .connect_timeout(timeout)
            .response_timeout(timeout),
    )
    .expect("cluster store");
    (
        cluster,
        store,
        format!("_c{}", N.fetch_add(1, Ordering::Relaxed)),
    )
}

/// `ns` with `suffix`, unless it already ends with it.
pub fn suffixed(ns: &str, suffix: &str) -> String {
    if ns.ends_with(suffix) {
        ns.to_owned()
    } else {
        format!("{ns}{suffix}")
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The timeouts of a [`ValkeyStore`] on one server: connect, response, and waiting for a pooled
/// connection. Every test binary passes its own (generous: debug builds of parallel tests on a
/// 2-core machine are slow, and most scenarios are about behaviour, not latency).
#[derive(Clone, Copy, Debug)]
pub struct StoreTimeouts {
    /// `ValkeyConfig::connect_timeout`.
    pub connect: Duration,
    /// `ValkeyConfig::response_timeout`.
    pub response: Duration,
    /// `ValkeyConfig::wait_timeout`.
    pub wait: Duration,
}

impl StoreTimeouts {
    /// The same timeout for all three.
    pub const fn all(t: Duration) -> Self {
        Self {
            connect: t,
            response: t,
            wait: t,
        }
    }
}

/// A [`ValkeyStore`] on `server` with the timeouts `t`.
pub fn valkey_store(server: &ValkeyServer, t: StoreTimeouts) -> ValkeyStore {
    ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(t.connect)
            .response_timeout(t.response)
            .wait_timeout(t.wait),
    )
    .expect("valkey store")
}

/// The raw stored value at `key` (relative to the cache's namespace), read through the cache's
/// store.
pub async fn stored(cache: &Cache, key: &str) -> Option<Bytes> {
    cache
        .store()
        .read(cache.key_space(), key)
        .await
        .expect("store read")
        .value
}

/// Whether the cache's store holds an entry at `key` (relative to the cache's namespace).
pub async fn has_entry(cache: &Cache, key: &str) -> bool {
    stored(cache, key).await.is_some()
}

/// Runs scenarios written once over a [`Backend`] on one backend: for every `name`, a
/// `#[tokio::test] async fn name()` calling `super::name(backend)`. Used in a module per backend:
///
/// ```ignore
/// mod memory {
///     crate::support::on!(super::Backend::memory(super::MemoryStore::new()) => miss_then_hit, head);
/// }
/// ```
#[allow(unused_macros)]
macro_rules! on {
    ($backend:expr => $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::$name($backend).await
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use on;

/// What a scenario written once runs on: its own single Valkey server, the binary's
/// [shared](ValkeyCluster::shared) cluster (each test in its own namespaces, see
/// [`namespace`](Self::namespace)), or a `MemoryStore`.
pub enum Backend {
    /// A `valkey-server` of this test alone.
    Valkey {
        server: ValkeyServer,
        store: ValkeyStore,
    },
    /// The shared cluster (3 primaries, 3 replicas); namespaces get `suffix`.
    Cluster {
        cluster: &'static ValkeyCluster,
        store: ValkeyStore,
        suffix: String,
    },
    /// The embedded store.
    Memory(MemoryStore),
}

impl Backend {
    /// A new single server, with a store on it with the timeouts `t`.
    pub fn valkey(t: StoreTimeouts) -> Self {
        let server = ValkeyServer::start();
        let store = valkey_store(&server, t);
        Backend::Valkey { server, store }
    }

    /// The shared cluster, through a store with `timeout` for connecting and for responses.
    pub fn cluster(timeout: Duration) -> Self {
        let (cluster, store, suffix) = shared_cluster_store(timeout);
        Backend::Cluster {
            cluster,
            store,
            suffix,
        }
    }

    /// `store` (e.g. `MemoryStore::new()`).
    pub fn memory(store: MemoryStore) -> Self {
        Backend::Memory(store)
    }

    /// The store, to share between caches.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Valkey { store, .. } | Backend::Cluster { store, .. } => {
                Arc::new(store.clone())
            }
            Backend::Memory(store) => Arc::new(store.clone()),
        }
    }

    /// The namespace this test uses for `ns`: `ns` itself, with this test's suffix on the
    /// shared cluster.
    pub fn namespace(&self, ns: &str) -> String {
        match self {
            Backend::Cluster { suffix, .. } => suffixed(ns, suffix),
            _ => ns.to_owned(),
        }
    }

    /// A cache builder in [namespace](Self::namespace) `ns` with the operation timeout `op`.
    pub fn builder(&self, ns: &str, op: Duration) -> CacheBuilder {
        Cache::builder_shared(self.store())
            .namespace(self.namespace(ns))
            .timeout(op)
    }

    /// [`builder`](Self::builder), built.
    pub fn cache(&self, ns: &str, op: Duration) -> Cache {
        self.builder(ns, op).build()
    }

    /// The single server, if this is one.
    pub fn server(&self) -> Option<&ValkeyServer> {
        match self {
            Backend::Valkey { server, .. } => Some(server),
            _ => None,
        }
    }

    /// The single server, mutably (to stop and restart it).
    ///
    /// # Panics
    ///
    /// If this is not a single server: the scenario only makes sense on one.
    pub fn server_mut(&mut self) -> &mut ValkeyServer {
        match self {
            Backend::Valkey { server, .. } => server,
            _ => panic!("this scenario needs a single Valkey server"),
        }
    }

    /// Whether this is the shared cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster { .. })
    }

    /// Every key matching `pattern` as Valkey lists them (`KEYS`, on every primary of the
    /// cluster), sorted; None on memory.
    pub async fn keys(&self, pattern: &str) -> Option<Vec<String>> {
        match self {
            Backend::Valkey { server, .. } => Some(server.keys(pattern).await),
            Backend::Cluster { cluster, .. } => Some(cluster.keys(pattern)),
            Backend::Memory(_) => None,
        }
    }

    /// Writes raw bytes at a full store key for 60 s, outside the crate (Valkey `SET`,
    /// `MemoryStore::put_raw`).
    pub async fn put_raw(&self, store_key: &str, value: &[u8]) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(store_key).arg(value).arg("EX").arg(60);
        match self {
            Backend::Valkey { server, .. } => {
                let () = server.query(&cmd).await;
            }
            Backend::Cluster { store, .. } => {
                let mut conn = store
                    .cluster_connection()
                    .await
                    .expect("cluster connection");
                let () = cmd.query_async(&mut conn).await.expect("SET");
            }
            Backend::Memory(store) => store.put_raw(
                store_key,
                Bytes::copy_from_slice(value),
                Duration::from_secs(60),
            ),
        }
    }
}
