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
//! connect timeout and size limit. A connection that is no longer authenticated (`NOAUTH`,
//! `WRONGPASS`) is dropped the same way. Multi-step invalidations (tag drains, pattern `SCAN`s)
//! run on a **bulk lane** of their own, so they never sit in front of hot-path commands.
//!
//! # Large tags
//!
//! A tag invalidation first advances the clock and leaves the tag's tombstone (fills that read an
//! older clock are refused from then on), then removes the tag's members in steps of
//! [`ValkeyConfig::invalidation_batch`] (default 256), each one short script: no step holds the
//! server for more than a few milliseconds, whatever the tag's size, and the count returned is
//! the sum of what the steps removed.
//!
//! # Cluster
//!
//! [`ValkeyStore::cluster`] holds lanes of redis-rs `ClusterConnection`s instead (each already
//! one multiplexed connection per node that follows `MOVED`/`ASK` and refreshes its slot map),
//! so a hit is still one command on an already-open socket. Caches on it name every key of a
//! namespace under the hash tag `{namespace}` ([`KeySpace::hash_tagged`]), so each operation's
//! keys are in one slot; pattern invalidation scans every primary.

mod config;
mod conn;
mod pubsub;
mod ranked;
mod scan;
#[cfg(feature = "unstable")]
mod unstable;

pub use config::ValkeyConfig;

use super::{
    InvalidationBus, KeySpace, Lookup, LookupMany, RankedStore, Shard, Store, StoreError,
    StoreErrorKind, StoreFuture, Target, Write, Written,
};
use bytes::Bytes;
use config::{CLUSTER_RETRIES, CLUSTER_RETRY_WAIT_MAX_MS, CLUSTER_RETRY_WAIT_MIN_MS};
use conn::{invalid_url, redact, Conns};
use deadpool_redis::cluster::ClusterClientBuilder;
use deadpool_redis::redis::{self, AsyncConnectionConfig};
use deadpool_redis::{Manager, Pool, Runtime};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
    /// Members removed per step of a tag invalidation.
    invalidation_batch: usize,
    url_redacted: String,
    /// For the dedicated pub/sub connections of L1 tiers (`l1`): the server, or each
    /// seed node of a cluster (a subscription on any node hears the whole cluster's `PUBLISH`).
    pubsub: Vec<redis::Client>,
    connect_timeout: Duration,
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
        #[cfg(feature = "tls-rustls")]
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
            let conns = Conns::Single {
                pool,
                lanes,
                bulk: Mutex::new(None),
                bulk_client: Box::new(redis::Client::open(cfg.url.as_str()).map_err(invalid_url)?),
                bulk_config: Box::new(
                    AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(cfg.connect_timeout))
                        .set_response_timeout(Some(cfg.bulk_response_timeout)),
                ),
            };
            (conns, pubsub, redact(&cfg.url))
        } else {
            let client = |response_timeout| {
                ClusterClientBuilder::new(cfg.cluster.iter().map(String::as_str))
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(response_timeout)
                    // The client's defaults (16 retries, waits from 1.28 s) suit a general-purpose
                    // client; a cache operation has a ~100 ms budget, and a retry the caller
                    // stopped waiting for only adds load while a primary is down.
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_RETRY_WAIT_MIN_MS)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MAX_MS)
                    .build()
                    .map_err(invalid_url)
            };
            let bulk_client = Box::new(client(cfg.bulk_response_timeout)?);
            let client = client(cfg.response_timeout)?;
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
                    bulk: Mutex::new(None),
                    bulk_client,
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
                invalidation_batch: cfg.invalidation_batch,
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
    /// Clients for dedicated (pub/sub) connections: the server, or each cluster seed node.
    pub(crate) fn pubsub_clients(&self) -> &[redis::Client] {
        &self.inner.pubsub
    }

    /// The configured connect timeout.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// Invalidates `tags` in every shard of `space`, the shards concurrently on the bulk lane
    /// (pipelined on its connection); the sum of what they removed once every shard applied
    /// them (see [`Self::invalidate_tags_in`]).
    async fn invalidate_tags(
        &self,
        space: &KeySpace,
        tags: &[String],
        ttl: u64,
    ) -> Result<u64, StoreError> {
        let (lane, id, conn) = self.bulk().await?;
        let counts = futures_util::future::try_join_all(space.shards().iter().map(|shard| {
            let mut conn = conn.clone();
            async move {
                self.invalidate_tags_in(&mut conn, shard, tags, ttl)
                    .await
                    .map_err(|e| self.failed(lane, id, e))
            }
        }))
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// Invalidates `tags` in one shard: the first script advances the shard's clock, leaves
    /// every tombstone and removes up to a batch of members; each further script removes one
    /// more batch of a tag with members left (see `lua/tag_step.lua`). Returns the entries
    /// removed.
    async fn invalidate_tags_in(
        &self,
        conn: &mut conn::Conn,
        shard: &Shard,
        tags: &[String],
        ttl: u64,
    ) -> Result<u64, redis::RedisError> {
        let batch = self.inner.invalidation_batch;
        let route = super::ranked::RankedSpace::route(shard);
        let mut inv = scripts().tags.prepare_invoke();
        inv.key(shard.clock()).key(shard.clock_origin());
        ranked::route_index_keys(&mut inv, shard);
        for t in tags {
            inv.key(shard.tag_set(t))
                .key(shard.tag_tombstone(t))
                .key(shard.tag_drain(t));
        }
        inv.arg(ttl).arg(shard.entry_prefix()).arg(batch);
        let first: Vec<u64> = inv.invoke_async(conn).await?;
        let mut removed = first.first().copied().unwrap_or(0);
        for left in first.get(1..).unwrap_or_default().chunks_exact(2) {
            let Some(tag) = (left[0] as usize).checked_sub(1).and_then(|i| tags.get(i)) else {
                continue;
            };
            let mut rename = left[1] == 1;
            loop {
                let mut inv = scripts().drain_tag.prepare_invoke();
                inv.key(&route.index)
                    .key(&route.seq)
                    .key(&route.expiry)
                    .key(shard.tag_set(tag))
                    .key(shard.tag_drain(tag))
                    .arg(shard.entry_prefix())
                    .arg(batch)
                    .arg(u8::from(rename));
                let (n, more, still): (u64, u8, u8) = inv.invoke_async(conn).await?;
                removed += n;
                rename = still == 1;
                if more == 0 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// Invalidates the entries matching `pattern` (relative to the namespace): records the
    /// pattern in every shard (advancing its clock, so fills in flight that it covers are
    /// refused), the shards concurrently, then unlinks what matches.
    async fn invalidate_pattern(
        &self,
        space: &KeySpace,
        pattern: &str,
        ttl: u64,
    ) -> Result<u64, StoreError> {
        let (lane, id, conn) = self.bulk().await?;
        futures_util::future::try_join_all(space.shards().iter().map(|shard| {
            let mut conn = conn.clone();
            let mut inv = scripts().pattern.prepare_invoke();
            inv.key(shard.clock())
                .key(shard.clock_origin())
                .key(shard.patterns())
                .arg(ttl)
                .arg(shard.entry(pattern));
            async move {
                let _clock: u64 = inv
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(lane, id, e))?;
                Ok::<_, StoreError>(())
            }
        }))
        .await?;
        // On a cluster each shard's glob names one slot (Valkey 8 scans only that slot); on one
        // server one glob covers every shard in one pass. Bounded routes keep their entries in
        // shard 0 (KeySpace::bounded): the unlinked entries under its prefix leave their index.
        let globs: Vec<String> = if self.is_cluster() && space.shard_count() > 1 {
            space.shards().iter().map(|s| s.entry(pattern)).collect()
        } else {
            vec![space.entry_glob(pattern)]
        };
        let route = super::ranked::RankedSpace::route(space.shard(0));
        self.scan_unlink(&globs, Some(&route)).await
    }
}

/// `glob_match` (the fill guard's pattern check, a port of `store/glob.rs`) and `now_ms`.
const GLOB: &str = include_str!("lua/glob.lua");
/// `advance`, `clock_state` and `lost`: the invalidation clock and its origin.
const CLOCK: &str = include_str!("lua/clock.lua");
/// `step`: one bounded step of a tag invalidation.
const TAG_STEP: &str = include_str!("lua/tag_step.lua");
const FILL: &str = include_str!("lua/fill.lua");
const FILL_MANY: &str = include_str!("lua/fill_many.lua");
const INVALIDATE_KEYS: &str = include_str!("lua/invalidate_keys.lua");
const INVALIDATE_TAGS: &str = include_str!("lua/invalidate_tags.lua");
const DRAIN_TAG: &str = include_str!("lua/drain_tag.lua");
const RECORD_PATTERN: &str = include_str!("lua/record_pattern.lua");
const UNLOCK: &str = include_str!("lua/unlock.lua");

struct Scripts {
    fill_many: redis::Script,
    unlock: redis::Script,
    fill: redis::Script,
    keys: redis::Script,
    tags: redis::Script,
    drain_tag: redis::Script,
    pattern: redis::Script,
}

fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    let forget = ranked::FORGET;
    S.get_or_init(|| Scripts {
        unlock: redis::Script::new(UNLOCK),
        fill_many: redis::Script::new(&format!("{GLOB}{CLOCK}{FILL_MANY}")),
        fill: redis::Script::new(&format!("{GLOB}{CLOCK}{FILL}")),
        keys: redis::Script::new(&format!("{CLOCK}{forget}{INVALIDATE_KEYS}")),
        tags: redis::Script::new(&format!("{CLOCK}{forget}{TAG_STEP}{INVALIDATE_TAGS}")),
        drain_tag: redis::Script::new(&format!("{forget}{TAG_STEP}{DRAIN_TAG}")),
        pattern: redis::Script::new(&format!("{GLOB}{CLOCK}{RECORD_PATTERN}")),
    })
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Store for ValkeyStore {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        Box::pin(async move {
            let shard = space.shard_for(key);
            let entry = shard.entry(key);
            let clock_key = shard.clock();
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
            let shard = space.shard_for(w.key);
            let entry = shard.entry(w.key);
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
                .key(shard.key_tombstone(w.key))
                .key(shard.patterns())
                .key(shard.clock())
                .key(shard.clock_origin());
            push_write(&mut inv, shard, &w);
            let stored: i64 = self.run(async |c| inv.invoke_async(c).await).await?;
            Ok(written(stored))
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
            // One MGET: the entries, then the clock of each shard they are in (on a cluster the
            // client splits it by slot, and each entry shares its slot with its shard's clock).
            let shard_of: Vec<usize> = keys.iter().map(|k| space.shard_of(k)).collect();
            let mut clock_at = vec![usize::MAX; space.shard_count()];
            let mut clock_keys = Vec::new();
            for &s in &shard_of {
                if clock_at[s] == usize::MAX {
                    clock_at[s] = clock_keys.len();
                    clock_keys.push(space.shard(s).clock());
                }
            }
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(space.entry(k));
            }
            for c in &clock_keys {
                cmd.arg(*c);
            }
            let mut values: Vec<Option<Bytes>> =
                self.run(async |c| cmd.query_async(c).await).await?;
            if values.len() != keys.len() + clock_keys.len() {
                return Err(StoreError::new(
                    StoreErrorKind::Server,
                    format!(
                        "MGET of {} keys answered {} values",
                        keys.len() + clock_keys.len(),
                        values.len()
                    ),
                ));
            }
            let clocks_read: Vec<u64> = values
                .split_off(keys.len())
                .into_iter()
                .map(|v| {
                    v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                        .unwrap_or(0)
                })
                .collect();
            let clocks = shard_of.iter().map(|&s| clocks_read[clock_at[s]]).collect();
            Ok(LookupMany { values, clocks })
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
            // One `fill_many.lua` per shard the writes are in (its keys share the shard's hash
            // tag), the shards concurrently; the answers back in the writes' order.
            let mut groups: Vec<Vec<usize>> = vec![Vec::new(); space.shard_count()];
            for (n, w) in writes.iter().enumerate() {
                groups[space.shard_of(w.key)].push(n);
            }
            let writes = &writes;
            let answers = futures_util::future::try_join_all(
                groups
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| !g.is_empty())
                    .map(|(s, group)| async move {
                        let shard = space.shard(s);
                        let mut inv = scripts().fill_many.prepare_invoke();
                        inv.key(shard.patterns())
                            .key(shard.clock())
                            .key(shard.clock_origin());
                        for &n in group {
                            let w = &writes[n];
                            inv.key(shard.entry(w.key)).key(shard.key_tombstone(w.key));
                            push_write(&mut inv, shard, w);
                        }
                        let out: Vec<i64> = self.run(async |c| inv.invoke_async(c).await).await?;
                        if out.len() != group.len() {
                            return Err(StoreError::new(
                                StoreErrorKind::Server,
                                format!("fill_many of {} answered {}", group.len(), out.len()),
                            ));
                        }
                        Ok(group.iter().copied().zip(out).collect::<Vec<_>>())
                    }),
            )
            .await?;
            let mut out = vec![Written::Superseded; writes.len()];
            for (n, r) in answers.into_iter().flatten() {
                out[n] = written(r);
            }
            Ok(out)
        })
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let ttl = ms(space.tombstone_ttl());
            match target {
                Target::Keys(keys) | Target::Tags(keys) if keys.is_empty() => Ok(0),
                Target::Keys(keys) => {
                    // One `invalidate_keys.lua` per shard the keys are in (and the bounded
                    // routes' shard, KeySpace::invalidation_groups), concurrently.
                    let counts = futures_util::future::try_join_all(
                        space
                            .invalidation_groups(keys)
                            .into_iter()
                            .map(|(s, group)| {
                                let shard = space.shard(s);
                                let mut inv = scripts().keys.prepare_invoke();
                                inv.key(shard.clock()).key(shard.clock_origin());
                                ranked::route_index_keys(&mut inv, shard);
                                for k in &group {
                                    inv.key(shard.entry(k)).key(shard.key_tombstone(k));
                                }
                                inv.arg(ttl).arg(group);
                                async move {
                                    let n: u64 =
                                        self.run(async |c| inv.invoke_async(c).await).await?;
                                    Ok::<_, StoreError>(n)
                                }
                            }),
                    )
                    .await?;
                    Ok(counts.into_iter().sum())
                }
                Target::Tags(tags) => self.invalidate_tags(space, tags, ttl).await,
                Target::Pattern(p) => self.invalidate_pattern(space, p, ttl).await,
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
            let lock = space.shard_for(key).lock(key);
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
            inv.key(space.shard_for(key).lock(key)).arg(token);
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

    /// `SET key layout NX GET`: one command (Valkey 7+), no TTL.
    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            self.run(async |c| {
                redis::cmd("SET")
                    .arg(key)
                    .arg(layout)
                    .arg("NX")
                    .arg("GET")
                    .query_async(c)
                    .await
            })
            .await
        })
    }

    fn needs_hash_tags(&self) -> bool {
        self.is_cluster()
    }

    fn supports_shards(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "valkey"
    }

    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        Some(Arc::new(self.clone()))
    }

    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        Some(Arc::new(self.clone()))
    }
}

/// The part of a guarded write that `fill.lua` and `fill_many.lua` read alike, after the entry's
/// own keys: its tags' tombstones and sets, then value, TTL, the clock it read and the tag count.
fn push_write(inv: &mut redis::ScriptInvocation<'_>, shard: &Shard, w: &Write<'_>) {
    for t in w.tags {
        inv.key(shard.tag_tombstone(t));
    }
    for t in w.tags {
        inv.key(shard.tag_set(t));
    }
    inv.arg(w.value.as_ref())
        .arg(ms(w.ttl))
        .arg(w.since.map_or(-1i64, |s| s as i64))
        .arg(w.tags.len());
}

/// A fill script's answer: 1 stored, anything else superseded.
fn written(answer: i64) -> Written {
    if answer == 1 {
        Written::Stored
    } else {
        Written::Superseded
    }
}
