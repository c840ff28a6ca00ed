//! Valkey through deadpool-redis, with a hot path that skips the pool's per-checkout PING.
//!
//! # Why lanes
//!
//! deadpool-redis recycles a connection on every `pool.get()` by sending `UNWATCH` + `PING`: a
//! full extra round trip per request (measured here: a pooled GET handler at ~33k req/s against
//! ~77k for one shared `MultiplexedConnection`). A `MultiplexedConnection` already pipelines any
//! number of concurrent commands over one socket, so checking one out per request buys nothing.
//!
//! [`ValkeyStore`] keeps a few **lanes**: connections checked out of the pool once and held.
//! Requests clone a lane's `MultiplexedConnection` (a reference-count bump) and send their command
//! at once. When a command fails with a connection error the lane is emptied and its connection
//! detached from the pool; the next request on that lane checks out a fresh one, with the pool's
//! connect timeout and size limit. Long multi-round-trip work (pattern `SCAN`s) checks out its own
//! pooled connection so it never sits in front of hot-path commands.
//!
//! # Cluster
//!
//! [`ValkeyStore::cluster`] holds lanes of redis-rs `ClusterConnection`s instead (each already
//! one multiplexed connection per node that follows `MOVED`/`ASK` and refreshes its slot map),
//! so a hit is still one command on an already-open socket. Caches on it name every key of a
//! namespace under the hash tag `{namespace}` ([`KeySpace::hash_tagged`]), so each operation's
//! keys are in one slot; pattern invalidation scans every primary.

use super::{
    KeySpace, Lookup, LookupMany, Store, StoreError, StoreErrorKind, StoreFuture, Target, Write,
    Written,
};
use bytes::Bytes;
use deadpool_redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use deadpool_redis::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use deadpool_redis::redis::{
    self, aio::ConnectionLike, aio::MultiplexedConnection, AsyncConnectionConfig, RedisError,
};
use deadpool_redis::{Manager, Pool, Runtime};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Retries of one command by the cluster client (redirects, `TRYAGAIN`, a node unreachable).
const CLUSTER_RETRIES: u32 = 3;
/// Waits between those retries, in milliseconds (jittered, growing).
const CLUSTER_RETRY_WAIT_MIN_MS: u64 = 5;
const CLUSTER_RETRY_WAIT_MAX_MS: u64 = 200;

/// Settings for [`ValkeyStore`]. Every duration has a default suited to a cache (fail fast).
#[derive(Clone, Debug)]
pub struct ValkeyConfig {
    url: String,
    /// Seed nodes of a Valkey Cluster; empty for a single server.
    cluster: Vec<String>,
    pool_size: usize,
    lanes: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    wait_timeout: Duration,
    scan_count: usize,
}

impl ValkeyConfig {
    /// Settings for a server URL: `redis://[user:password@]host:port[/db]`, or `rediss://` with
    /// the `tls` feature. User and password authenticate with Valkey ACLs.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: Vec::new(),
            pool_size: 8,
            lanes: 1,
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(100),
            wait_timeout: Duration::from_millis(100),
            scan_count: 1000,
        }
    }

    /// Settings for a Valkey Cluster reached through `nodes` (`redis://host:port` URLs of some
    /// of its nodes; one that answers is enough, the client learns the rest from it). See
    /// [`ValkeyStore::cluster`].
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cluster: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut cfg = Self::from_url(cluster.first().cloned().unwrap_or_default());
        cfg.cluster = cluster;
        cfg
    }

    /// Maximum pooled connections (lanes plus connections for scans). Default 8. Not used by a
    /// cluster store, whose cluster connections each hold one connection per node.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(2);
        self
    }

    /// How many multiplexed connections carry hot-path commands. Default 1: one multiplexed
    /// connection pipelines concurrent commands best (measured: with 2 lanes hit throughput
    /// dropped on a 2-core machine); raise it when one connection's socket is the bottleneck.
    pub fn lanes(mut self, n: usize) -> Self {
        self.lanes = n.max(1);
        self
    }

    /// Timeout for opening a connection. Default 250 ms.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Timeout for one command's response. Default 100 ms.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Timeout for waiting on a free pooled connection. Default 100 ms.
    pub fn wait_timeout(mut self, d: Duration) -> Self {
        self.wait_timeout = d;
        self
    }

    /// `COUNT` hint for each `SCAN` step of pattern invalidation. Default 1000.
    pub fn scan_count(mut self, n: usize) -> Self {
        self.scan_count = n.max(1);
        self
    }
}

/// A [`Store`] on Valkey (or any Redis-protocol server). Cheap to clone.
///
/// Creating it does not connect: the first operation does, and a server that is down is
/// reported per operation (the cache then serves from the handler) until it comes back.
///
/// ```no_run
/// use tower_valkey_cache::{Cache, ValkeyStore};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = ValkeyStore::new("redis://127.0.0.1:6379")?;
/// let cache = Cache::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ValkeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Conns,
    next_lane: AtomicUsize,
    lane_ids: AtomicU64,
    scan_count: usize,
    url_redacted: String,
    /// For the dedicated pub/sub connections of L1 tiers ([`crate::l1`]): the server, or each
    /// seed node of a cluster (a subscription on any node hears the whole cluster's `PUBLISH`).
    pubsub: Vec<redis::Client>,
    connect_timeout: Duration,
}

/// Where hot-path connections come from.
enum Conns {
    /// One server: lanes checked out of a deadpool pool.
    Single {
        pool: Pool,
        lanes: Box<[Mutex<Option<Held>>]>,
    },
    /// A cluster: lanes of cluster connections. A `ClusterConnection` already multiplexes one
    /// connection per node, follows `MOVED`/`ASK` redirects and refreshes the slot map itself,
    /// so pooling them would only add the pool's per-checkout `PING`.
    Cluster {
        client: Box<ClusterClient>,
        lanes: Box<[ClusterLane]>,
        /// Held while a lane connects: creating a cluster connection fetches the slot map and
        /// connects to every node, so a cold burst must not start one per request.
        connecting: Arc<tokio::sync::Mutex<()>>,
    },
}

/// A cluster lane: the connection and its id.
type ClusterLane = Mutex<Option<(u64, ClusterConnection)>>;

struct Held {
    id: u64,
    conn: MultiplexedConnection,
    // Keeps the pool slot while the lane holds the connection.
    _pooled: deadpool_redis::Connection,
}

/// A hot-path connection: to the server, or to the cluster (routed by key slot).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for ValkeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mode, lanes) = match &self.inner.conns {
            Conns::Single { lanes, .. } => ("single", lanes.len()),
            Conns::Cluster { lanes, .. } => ("cluster", lanes.len()),
        };
        f.debug_struct("ValkeyStore")
            .field("url", &self.inner.url_redacted)
            .field("mode", &mode)
            .field("lanes", &lanes)
            .finish()
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn invalid_url(e: RedisError) -> StoreError {
    StoreError::new(StoreErrorKind::Server, format!("invalid Valkey URL: {e}"))
}

impl ValkeyStore {
    /// A store for `url` with default settings.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::with_config(ValkeyConfig::from_url(url))
    }

    /// A store on a Valkey Cluster, reached through some of its nodes (`redis://host:port`),
    /// with default settings ([`ValkeyConfig::cluster`] for others).
    ///
    /// Every key of a cache namespace is named under the hash tag `{namespace}`, so one
    /// namespace lives in one slot (on one primary) and the cache's multi-key scripts run there
    /// atomically; spread load over the primaries with several namespaces. Redirects during
    /// resharding and failover are followed by the cluster client. See the crate's README,
    /// *Valkey Cluster*.
    ///
    /// ```no_run
    /// use tower_valkey_cache::{Cache, ValkeyStore};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = ValkeyStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])?;
    /// let cache = Cache::builder(store).namespace("products").build();
    /// # Ok(()) }
    /// ```
    pub fn cluster<I, S>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_config(ValkeyConfig::cluster(nodes))
    }

    /// A store from settings.
    pub fn with_config(cfg: ValkeyConfig) -> Result<Self, StoreError> {
        #[cfg(feature = "tls")]
        {
            // rustls needs a process-wide crypto provider; keep the application's if it set one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let lanes = cfg.lanes;
        let (conns, pubsub, url_redacted) = if cfg.cluster.is_empty() {
            let conn_cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_response_timeout(Some(cfg.response_timeout));
            let manager =
                Manager::new_with_config(cfg.url.as_str(), conn_cfg).map_err(invalid_url)?;
            let pool = Pool::builder(manager)
                .max_size(cfg.pool_size.max(cfg.lanes + 1))
                .wait_timeout(Some(cfg.wait_timeout))
                .create_timeout(Some(cfg.connect_timeout))
                .recycle_timeout(Some(cfg.response_timeout))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::new(StoreErrorKind::Server, e.to_string()))?;
            let pubsub = vec![redis::Client::open(cfg.url.as_str()).map_err(invalid_url)?];
            let lanes = (0..lanes).map(|_| Mutex::new(None)).collect();
            (Conns::Single { pool, lanes }, pubsub, redact(&cfg.url))
        } else {
            let client = ClusterClientBuilder::new(cfg.cluster.iter().map(String::as_str))
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.response_timeout)
                // The client's defaults (16 retries, waits from 1.28 s) suit a general-purpose
                // client; a cache operation has a ~100 ms budget, and a retry the caller stopped
                // waiting for only adds load while a primary is down.
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_RETRY_WAIT_MIN_MS)
                .max_retry_wait(CLUSTER_RETRY_WAIT_MAX_MS)
                .build()
                .map_err(invalid_url)?;
            let pubsub = cfg
                .cluster
                .iter()
                .map(|u| redis::Client::open(u.as_str()).map_err(invalid_url))
                .collect::<Result<Vec<_>, _>>()?;
            let lanes = (0..lanes).map(|_| Mutex::new(None)).collect();
            let urls: Vec<String> = cfg.cluster.iter().map(|u| redact(u)).collect();
            (
                Conns::Cluster {
                    client: Box::new(client),
                    lanes,
                    connecting: Arc::new(tokio::sync::Mutex::new(())),
                },
                pubsub,
                format!("cluster[{}]", urls.join(",")),
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                conns,
                next_lane: AtomicUsize::new(0),
                lane_ids: AtomicU64::new(1),
                scan_count: cfg.scan_count,
                url_redacted,
                pubsub,
                connect_timeout: cfg.connect_timeout,
            }),
        })
    }

    /// Whether this store is on a Valkey Cluster ([`ValkeyStore::cluster`]).
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conns, Conns::Cluster { .. })
    }

    /// The underlying deadpool-redis pool, for your own commands; `None` on a cluster (use
    /// [`cluster_connection`](Self::cluster_connection)).
    pub fn pool(&self) -> Option<&Pool> {
        match &self.inner.conns {
            Conns::Single { pool, .. } => Some(pool),
            Conns::Cluster { .. } => None,
        }
    }

    /// Clients for dedicated (pub/sub) connections: the server, or each cluster seed node.
    pub(crate) fn pubsub_clients(&self) -> &[redis::Client] {
        &self.inner.pubsub
    }

    /// The configured connect timeout.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// A multiplexed connection from one of the hot-path lanes (connecting if needed). An error
    /// on a cluster store: use [`cluster_connection`](Self::cluster_connection).
    pub async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        match self.lane().await?.2 {
            Conn::Single(c) => Ok(c),
            Conn::Cluster(_) => Err(StoreError::new(
                StoreErrorKind::Server,
                "a cluster store has no single-server connection: use cluster_connection()",
            )),
        }
    }

    /// A cluster connection from one of the hot-path lanes (connecting if needed), routing each
    /// command by its keys' slot. An error on a single-server store.
    pub async fn cluster_connection(&self) -> Result<ClusterConnection, StoreError> {
        match self.lane().await?.2 {
            Conn::Cluster(c) => Ok(c),
            Conn::Single(_) => Err(StoreError::new(
                StoreErrorKind::Server,
                "not a cluster store: use connection()",
            )),
        }
    }

    async fn lane(&self) -> Result<(usize, u64, Conn), StoreError> {
        let inner = &self.inner;
        let idx = inner.next_lane.fetch_add(1, Ordering::Relaxed);
        match &inner.conns {
            Conns::Single { pool, lanes } => {
                let idx = idx % lanes.len();
                if let Some(h) = lock(&lanes[idx]).as_ref() {
                    return Ok((idx, h.id, Conn::Single(h.conn.clone())));
                }
                let pooled = pool.get().await.map_err(pool_error)?;
                let conn: MultiplexedConnection = (*pooled).clone();
                let id = inner.lane_ids.fetch_add(1, Ordering::Relaxed);
                let mut slot = lock(&lanes[idx]);
                match slot.as_ref() {
                    // Another request filled the lane meanwhile: use it, give ours back.
                    Some(h) => Ok((idx, h.id, Conn::Single(h.conn.clone()))),
                    None => {
                        *slot = Some(Held {
                            id,
                            conn: conn.clone(),
                            _pooled: pooled,
                        });
                        Ok((idx, id, Conn::Single(conn)))
                    }
                }
            }
            Conns::Cluster {
                client,
                lanes,
                connecting,
            } => {
                let idx = idx % lanes.len();
                if let Some((id, c)) = lock(&lanes[idx]).as_ref() {
                    return Ok((idx, *id, Conn::Cluster(c.clone())));
                }
                // Connect in a task of its own holding the lock: a request that stops waiting
                // (its operation timed out) neither wastes the connection nor lets the next
                // request start another one meanwhile.
                let guard = connecting.clone().lock_owned().await;
                if let Some((id, c)) = lock(&lanes[idx]).as_ref() {
                    return Ok((idx, *id, Conn::Cluster(c.clone())));
                }
                let (inner, client) = (self.inner.clone(), ClusterClient::clone(client));
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    let conn = client.get_async_connection().await?;
                    let id = inner.lane_ids.fetch_add(1, Ordering::Relaxed);
                    if let Conns::Cluster { lanes, .. } = &inner.conns {
                        *lock(&lanes[idx]) = Some((id, conn.clone()));
                    }
                    Ok::<_, RedisError>((id, conn))
                });
                match task.await {
                    Ok(Ok((id, conn))) => Ok((idx, id, Conn::Cluster(conn))),
                    Ok(Err(e)) => Err(redis_error(e)),
                    Err(e) => Err(StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("valkey cluster connect task: {e}"),
                    )),
                }
            }
        }
    }

    /// Empties a lane whose connection failed (a single server's: detached from the pool).
    ///
    /// A cluster connection reconnects to nodes and refreshes its slot map by itself (a failed
    /// primary's slots move to its replica), so it is only replaced when the client reports it
    /// cannot reach the cluster at all.
    fn drop_lane(&self, idx: usize, id: u64, err: &RedisError) {
        match &self.inner.conns {
            Conns::Single { lanes, .. } => {
                if !(err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_unrecoverable_error())
                {
                    return;
                }
                let held = {
                    let mut slot = lock(&lanes[idx]);
                    match slot.as_ref() {
                        Some(h) if h.id == id => slot.take(),
                        _ => None,
                    }
                };
                if let Some(h) = held {
                    tracing::debug!(lane = idx, "valkey connection lost; lane will reconnect");
                    drop(deadpool_redis::Connection::take(h._pooled));
                }
            }
            Conns::Cluster { lanes, .. } => {
                if err.kind() != redis::ErrorKind::ClusterConnectionNotFound {
                    return;
                }
                let mut slot = lock(&lanes[idx]);
                if matches!(slot.as_ref(), Some((held, _)) if *held == id) {
                    tracing::debug!(
                        lane = idx,
                        "valkey cluster unreachable; lane will reconnect"
                    );
                    *slot = None;
                }
            }
        }
    }

    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let (idx, id, mut conn) = self.lane().await?;
        match f(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.drop_lane(idx, id, &e);
                Err(redis_error(e))
            }
        }
    }

    async fn scan_unlink(&self, pattern: &str) -> Result<u64, StoreError> {
        let pool = match &self.inner.conns {
            Conns::Single { pool, .. } => pool,
            Conns::Cluster { .. } => return self.scan_unlink_cluster(pattern).await,
        };
        let mut conn = pool.get().await.map_err(pool_error)?;
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .scan_cmd(cursor, pattern)
                .query_async(&mut *conn)
                .await
                .map_err(redis_error)?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut *conn)
                    .await
                    .map_err(redis_error)?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    fn scan_cmd(&self, cursor: u64, pattern: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(self.inner.scan_count);
        cmd
    }

    /// `SCAN` on every primary (from `CLUSTER NODES`), so keys of a slot that is migrating
    /// between two primaries are found on both; the keys found are unlinked through the cluster
    /// connection, routed by slot (`ASK`/`MOVED` followed).
    async fn scan_unlink_cluster(&self, pattern: &str) -> Result<u64, StoreError> {
        let Conn::Cluster(mut conn) = self.lane().await?.2 else {
            return Err(StoreError::new(StoreErrorKind::Server, "not a cluster"));
        };
        let mut nodes_cmd = redis::cmd("CLUSTER");
        nodes_cmd.arg("NODES");
        let nodes = conn
            .route_command(
                nodes_cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(redis_error)?;
        let nodes: String = redis::from_redis_value(nodes)
            .map_err(|e| StoreError::new(StoreErrorKind::Server, format!("CLUSTER NODES: {e}")))?;
        let primaries = cluster_primaries(&nodes);
        if primaries.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "CLUSTER NODES lists no reachable primary",
            ));
        }
        let mut removed = 0u64;
        for (host, port) in primaries {
            let mut cursor: u64 = 0;
            loop {
                let reply = conn
                    .route_command(
                        self.scan_cmd(cursor, pattern),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        }),
                    )
                    .await
                    .map_err(redis_error)?;
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                    .map_err(|e| StoreError::new(StoreErrorKind::Server, format!("SCAN: {e}")))?;
                if !keys.is_empty() {
                    removed += unlink_cluster(&mut conn, &keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }
}

/// `UNLINK`s keys through a cluster connection. The client splits a multi-key command by slot,
/// so keys of several slots never make a `CROSSSLOT` error; while a slot migrates, its keys may be
/// split between two primaries and the source answers `TRYAGAIN` for the batch: then each key
/// goes alone, following its own `ASK` redirect.
async fn unlink_cluster(conn: &mut ClusterConnection, keys: &[String]) -> Result<u64, StoreError> {
    match redis::cmd("UNLINK").arg(keys).query_async(conn).await {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain) => {
            let mut n = 0u64;
            for k in keys {
                let one: u64 = redis::cmd("UNLINK")
                    .arg(k)
                    .query_async(conn)
                    .await
                    .map_err(redis_error)?;
                n += one;
            }
            Ok(n)
        }
        Err(e) => Err(redis_error(e)),
    }
}

/// The `(host, port)` of each primary in a `CLUSTER NODES` reply that serves slots and is not
/// marked failed.
fn cluster_primaries(nodes: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.contains(&"fail") || fields.len() < 9 {
            continue;
        }
        // ip:port@cport[,hostname]
        let addr = addr.split(['@', ',']).next().unwrap_or("");
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 && !host.is_empty() => out.push((host.to_owned(), port)),
            _ => {}
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Lanes hold plain data; a panic elsewhere cannot leave one inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool_error(e: deadpool_redis::PoolError) -> StoreError {
    match e {
        deadpool_redis::PoolError::Timeout(_) => {
            StoreError::new(StoreErrorKind::Timeout, format!("valkey pool: {e}"))
        }
        deadpool_redis::PoolError::Backend(e) => redis_error(e),
        e => StoreError::new(StoreErrorKind::Unavailable, format!("valkey pool: {e}")),
    }
}

fn redis_error(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Server
    };
    StoreError::new(kind, format!("valkey: {e}"))
}

const GLOB_TO_LUA: &str = r#"
local function glob_to_lua(g)
  local out, i, n = {'^'}, 1, #g
  local function lit(c) if c:match('%w') then return c end return '%' .. c end
  while i <= n do
    local c = g:sub(i, i)
    if c == '*' then out[#out + 1] = '.*'
    elseif c == '?' then out[#out + 1] = '.'
    elseif c == '\\' and i < n then i = i + 1; out[#out + 1] = lit(g:sub(i, i))
    elseif c == '[' then
      local j, cls = i + 1, {'['}
      if g:sub(j, j) == '^' then cls[#cls + 1] = '^'; j = j + 1 end
      while j <= n and g:sub(j, j) ~= ']' do
        local d = g:sub(j, j)
        if d == '\\' and j < n then j = j + 1; cls[#cls + 1] = lit(g:sub(j, j))
        elseif d == '-' then cls[#cls + 1] = '-'
        else cls[#cls + 1] = lit(d) end
        j = j + 1
      end
      if j > n then out[#out + 1] = '%[' else cls[#cls + 1] = ']'; out[#out + 1] = table.concat(cls); i = j end
    else out[#out + 1] = lit(c) end
    i = i + 1
  end
  out[#out + 1] = '$'
  return table.concat(out)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// KEYS: entry, key tombstone, patterns, tag tombstones..., tag sets...
/// ARGV: value, ttl ms, since (-1: unguarded), tag count
const FILL: &str = r#"
local since, ntags = tonumber(ARGV[3]), tonumber(ARGV[4])
if since >= 0 then
  local t = redis.call('GET', KEYS[2])
  if t and tonumber(t) > since then return 0 end
  for i = 1, ntags do
    local tt = redis.call('GET', KEYS[3 + i])
    if tt and tonumber(tt) > since then return 0 end
  end
  local pats = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, '+inf')
  if #pats > 0 then
    local now = now_ms()
    for _, m in ipairs(pats) do
      local exp, pat = m:match('^(%d+)|(.*)$')
      if exp and tonumber(exp) > now and string.match(KEYS[1], glob_to_lua(pat)) then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 1, ntags do
  local set = KEYS[3 + ntags + i]
  redis.call('SADD', set, KEYS[1])
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
  for _, m in ipairs(redis.call('SRANDMEMBER', set, 2)) do
    if redis.call('EXISTS', m) == 0 then redis.call('SREM', set, m) end
  end
end
return 1
"#;

/// KEYS: patterns, then (entry, key tombstone) pairs. ARGV: then (value, ttl ms, since) triples.
/// Returns one 1 (stored) or 0 (superseded) per entry.
const FILL_MANY: &str = r#"
local out, pats, now = {}, nil, nil
for i = 2, #KEYS, 2 do
  local j = (i - 2) / 2 * 3
  local value, ttl, since = ARGV[j + 1], ARGV[j + 2], tonumber(ARGV[j + 3])
  local ok = true
  if since >= 0 then
    local t = redis.call('GET', KEYS[i + 1])
    if t and tonumber(t) > since then ok = false end
    if ok then
      if pats == nil then pats = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'); now = now_ms() end
      for p = 1, #pats, 2 do
        local exp, pat = pats[p]:match('^(%d+)|(.*)$')
        if tonumber(pats[p + 1]) > since and exp and tonumber(exp) > now and string.match(KEYS[i], glob_to_lua(pat)) then ok = false; break end
      end
    end
  end
  if ok then redis.call('SET', KEYS[i], value, 'PX', ttl); out[#out + 1] = 1 else out[#out + 1] = 0 end
end
return out
"#;

/// KEYS: clock, then (entry, tombstone) pairs. ARGV: tombstone ttl ms.
const INVALIDATE_KEYS: &str = r#"
local c, n = redis.call('INCR', KEYS[1]), 0
for i = 2, #KEYS, 2 do
  n = n + redis.call('UNLINK', KEYS[i])
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
end
return n
"#;

/// KEYS: clock, then (tag set, tombstone) pairs. ARGV: tombstone ttl ms.
const INVALIDATE_TAGS: &str = r#"
local c, n = redis.call('INCR', KEYS[1]), 0
for i = 2, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
  local members = redis.call('SMEMBERS', KEYS[i])
  for j = 1, #members, 1000 do
    n = n + redis.call('UNLINK', unpack(members, j, math.min(j + 999, #members)))
  end
  redis.call('UNLINK', KEYS[i])
end
return n
"#;

/// KEYS: clock, patterns. ARGV: tombstone ttl ms, full pattern.
const RECORD_PATTERN: &str = r#"
local c = redis.call('INCR', KEYS[1])
local now, ttl = now_ms(), tonumber(ARGV[1])
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, 31)) do
  local exp = tonumber(m:match('^(%d+)|'))
  if exp and exp <= now then redis.call('ZREM', KEYS[2], m) else break end
end
redis.call('ZADD', KEYS[2], c, (now + ttl) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return c
"#;

/// KEYS: lock. ARGV: token. Deletes the lock only if the token still holds it.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

struct Scripts {
    fill_many: redis::Script,
    unlock: redis::Script,
    fill: redis::Script,
    keys: redis::Script,
    tags: redis::Script,
    pattern: redis::Script,
}

fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        unlock: redis::Script::new(UNLOCK),
        fill_many: redis::Script::new(&format!("{GLOB_TO_LUA}{FILL_MANY}")),
        fill: redis::Script::new(&format!("{GLOB_TO_LUA}{FILL}")),
        keys: redis::Script::new(INVALIDATE_KEYS),
        tags: redis::Script::new(INVALIDATE_TAGS),
        pattern: redis::Script::new(&format!("{GLOB_TO_LUA}{RECORD_PATTERN}")),
    })
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Store for ValkeyStore {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        Box::pin(async move {
            let entry = space.entry(key);
            let clock_key = space.clock();
            let (value, clock): (Option<Bytes>, Option<u64>) = self
                .run(async |c| {
                    redis::cmd("MGET")
                        .arg(&entry)
                        .arg(clock_key)
                        .query_async(c)
                        .await
                })
                .await?;
            Ok(Lookup {
                value,
                clock: clock.unwrap_or(0),
            })
        })
    }

    fn write<'a>(&'a self, space: &'a KeySpace, w: Write<'a>) -> StoreFuture<'a, Written> {
        Box::pin(async move {
            let entry = space.entry(w.key);
            if w.since.is_none() && w.tags.is_empty() {
                let () = self
                    .run(async |c| {
                        redis::cmd("SET")
                            .arg(&entry)
                            .arg(w.value.as_ref())
                            .arg("PX")
                            .arg(ms(w.ttl))
                            .query_async(c)
                            .await
                    })
                    .await?;
                return Ok(Written::Stored);
            }
            let mut inv = scripts().fill.prepare_invoke();
            inv.key(&entry)
                .key(space.key_tombstone(w.key))
                .key(space.patterns());
            for t in w.tags {
                inv.key(space.tag_tombstone(t));
            }
            for t in w.tags {
                inv.key(space.tag_set(t));
            }
            inv.arg(w.value.as_ref())
                .arg(ms(w.ttl))
                .arg(w.since.map_or(-1i64, |s| s as i64))
                .arg(w.tags.len());
            let stored: i64 = self.run(async |c| inv.invoke_async(c).await).await?;
            Ok(if stored == 1 {
                Written::Stored
            } else {
                Written::Superseded
            })
        })
    }

    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(LookupMany::default());
            }
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(space.entry(k));
            }
            cmd.arg(space.clock());
            let mut values: Vec<Option<Bytes>> =
                self.run(async |c| cmd.query_async(c).await).await?;
            let clock = values
                .pop()
                .flatten()
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                .unwrap_or(0);
            Ok(LookupMany { values, clock })
        })
    }

    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            let mut inv = scripts().fill_many.prepare_invoke();
            inv.key(space.patterns());
            for w in &writes {
                inv.key(space.entry(w.key)).key(space.key_tombstone(w.key));
                inv.arg(w.value.as_ref())
                    .arg(ms(w.ttl))
                    .arg(w.since.map_or(-1i64, |s| s as i64));
            }
            let out: Vec<i64> = self.run(async |c| inv.invoke_async(c).await).await?;
            Ok(out
                .into_iter()
                .map(|r| {
                    if r == 1 {
                        Written::Stored
                    } else {
                        Written::Superseded
                    }
                })
                .collect())
        })
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let ttl = ms(space.tombstone_ttl());
            match target {
                Target::Keys(keys) | Target::Tags(keys) if keys.is_empty() => Ok(0),
                Target::Keys(keys) => {
                    let mut inv = scripts().keys.prepare_invoke();
                    inv.key(space.clock());
                    for k in keys {
                        inv.key(space.entry(k)).key(space.key_tombstone(k));
                    }
                    inv.arg(ttl);
                    self.run(async |c| inv.invoke_async(c).await).await
                }
                Target::Tags(tags) => {
                    let mut inv = scripts().tags.prepare_invoke();
                    inv.key(space.clock());
                    for t in tags {
                        inv.key(space.tag_set(t)).key(space.tag_tombstone(t));
                    }
                    inv.arg(ttl);
                    self.run(async |c| inv.invoke_async(c).await).await
                }
                Target::Pattern(p) => {
                    let full = space.entry(p);
                    let mut inv = scripts().pattern.prepare_invoke();
                    inv.key(space.clock())
                        .key(space.patterns())
                        .arg(ttl)
                        .arg(&full);
                    let _clock: u64 = self.run(async |c| inv.invoke_async(c).await).await?;
                    self.scan_unlink(&full).await
                }
            }
        })
    }

    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let lock = space.lock(key);
            let r: Option<String> = self
                .run(async |c| {
                    redis::cmd("SET")
                        .arg(&lock)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(lease))
                        .query_async(c)
                        .await
                })
                .await?;
            Ok(r.is_some())
        })
    }

    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = scripts().unlock.prepare_invoke();
            inv.key(space.lock(key)).arg(token);
            let _: i64 = self.run(async |c| inv.invoke_async(c).await).await?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let _: String = self
                .run(async |c| redis::cmd("PING").query_async(c).await)
                .await?;
            Ok(())
        })
    }

    fn needs_hash_tags(&self) -> bool {
        self.is_cluster()
    }

    fn name(&self) -> &'static str {
        "valkey"
    }

    fn bounded(&self) -> Option<crate::eviction::BoundedStore> {
        Some(self.into())
    }

    fn l1_bus(&self) -> Option<crate::l1::Bus> {
        Some(crate::l1::Bus::valkey(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_primaries;

    #[test]
    fn cluster_primaries_are_the_serving_masters_not_failed_or_replicas() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002,node-c master,fail - 0 1 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
e5 127.0.0.1:7004@17004 master - 0 1 5 connected
f6 :0@0 master,noaddr - 0 1 6 connected 10923-16383
g7 ::1:7006@17006 master - 0 1 7 connected 10923-16383
";
        assert_eq!(
            cluster_primaries(nodes),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("::1".to_owned(), 7006),
            ]
        );
    }
}
