//! [`ValkeyConfig`]: connection settings of a [`ValkeyStore`](super::ValkeyStore).

use std::time::Duration;

/// Retries of one command by the cluster client (redirects, `TRYAGAIN`, a node unreachable).
pub(super) const CLUSTER_RETRIES: u32 = 3;
/// Waits between those retries, in milliseconds (jittered, growing).
pub(super) const CLUSTER_RETRY_WAIT_MIN_MS: u64 = 5;
pub(super) const CLUSTER_RETRY_WAIT_MAX_MS: u64 = 200;

/// Settings for [`ValkeyStore`](crate::ValkeyStore). Every duration has a default suited to a cache (fail fast).
#[derive(Clone, Debug)]
pub struct ValkeyConfig {
    pub(super) url: String,
    /// Seed nodes of a Valkey Cluster; empty for a single server.
    pub(super) cluster: Vec<String>,
    pub(super) pool_size: usize,
    pub(super) lanes: usize,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) bulk_response_timeout: Duration,
    pub(super) wait_timeout: Duration,
    pub(super) scan_count: usize,
    pub(super) invalidation_batch: usize,
}

impl ValkeyConfig {
    /// Settings for a server URL: `redis://[user:password@]host:port[/db]`, or `rediss://` with
    /// the `tls-rustls` feature. User and password authenticate with Valkey ACLs.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: Vec::new(),
            pool_size: 8,
            lanes: 1,
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(100),
            bulk_response_timeout: Duration::from_secs(2),
            wait_timeout: Duration::from_millis(100),
            scan_count: 1000,
            invalidation_batch: 256,
        }
    }

    /// Settings for a Valkey Cluster reached through `nodes` (`redis://host:port` URLs of some
    /// of its nodes; one that answers is enough, the client learns the rest from it). See
    /// [`ValkeyStore::cluster`](crate::ValkeyStore::cluster).
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

    /// Maximum pooled connections (the hot-path lanes are checked out of it; the rest serve users of `ValkeyStore::pool`, feature `unstable`). Default 8. Not used by a
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

    /// Timeout for one response on the bulk lane, the connection of multi-step invalidations
    /// (each step of a large tag, each `SCAN` step of a pattern). Default 2 s. The whole
    /// operation is bounded by `CacheBuilder::bulk_timeout` (and its caller's wait by
    /// `CacheBuilder::invalidation_wait`, when set).
    pub fn bulk_response_timeout(mut self, d: Duration) -> Self {
        self.bulk_response_timeout = d;
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

    /// How many members of a tag each step of a tag invalidation removes (one short script per
    /// step, so no step holds the server for long whatever the tag's size). Default 256; between
    /// 1 and 1000.
    pub fn invalidation_batch(mut self, n: usize) -> Self {
        self.invalidation_batch = n.clamp(1, 1000);
        self
    }
}
