//! [`CacheBuilder`]: every setting of a [`Cache`], in one place.

use super::breaker::Breaker;
use super::flight::Flights;
use super::retry::RetryQueue;
use super::{Cache, Inner};
use crate::stats::Counters;
use crate::store::{KeySpace, Store};
use std::sync::Arc;
use std::time::Duration;

/// The default [`CacheBuilder::shards`] on a store that needs hash tags (a Valkey Cluster): 8
/// or more shards per primary from 3 to 16 primaries, each shard's slot in its own 1/128 of the
/// slot range.
pub const DEFAULT_CLUSTER_SHARDS: u16 = 128;

/// Builds a [`Cache`]. See [`Cache::builder`].
#[derive(Debug)]
pub struct CacheBuilder {
    store: Arc<dyn Store>,
    namespace: String,
    /// None: the store's default ([`DEFAULT_CLUSTER_SHARDS`] on a cluster, else 1).
    shards: Option<u16>,
    layout_check: Duration,
    ttl: Duration,
    op_timeout: Duration,
    bulk_timeout: Duration,
    invalidation_wait: Option<Duration>,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    tombstone_ttl: Duration,
    retry_capacity: usize,
    retry_give_up: Duration,
    log_raw_keys: bool,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
    l1: crate::l1::Config,
    sealer: crate::seal::Sealer,
}

impl CacheBuilder {
    /// A builder over a store shared with other caches (other namespaces).
    pub(super) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            namespace: "cache".into(),
            shards: None,
            layout_check: Duration::from_secs(60),
            ttl: Duration::from_secs(60),
            op_timeout: Duration::from_millis(100),
            bulk_timeout: Duration::from_secs(30),
            invalidation_wait: None,
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(60),
            retry_capacity: 1024,
            retry_give_up: Duration::from_secs(600),
            log_raw_keys: false,
            #[cfg(feature = "opentelemetry")]
            meter: None,
            l1: Default::default(),
            sealer: Default::default(),
        }
    }

    /// The namespace: every key is stored as `namespace:key`. Default `cache`.
    ///
    /// # Panics
    ///
    /// If the namespace is empty or contains `:`, `|`, white space or glob metacharacters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let ns = namespace.into();
        assert!(
            !ns.is_empty()
                && !ns
                    .chars()
                    .any(|c| c.is_whitespace() || ":|*?[]\\{}".contains(c)),
            "cache namespace `{ns}` must be non-empty, without `:`, `|`, braces, white space or glob characters"
        );
        self.namespace = ns;
        self
    }

    /// Splits the namespace into `n` shards (1..=1024; default 128 on a store that needs hash
    /// tags (a Valkey Cluster: [`Store::needs_hash_tags`]) and implements shards, else 1): each
    /// shard has its own hash
    /// tag, invalidation clock, tombstones and tag sets, and an entry's shard follows from its
    /// key. On a Valkey Cluster the shards' tags are chosen so that they land in evenly spaced
    /// slots, so one namespace spreads over every primary instead of living in one slot (use at
    /// least 8 shards per primary for an even spread: 128 suits 3 to 16 primaries).
    ///
    /// A read, a fill and a fill lock stay one operation on one shard (a key invalidation also
    /// reaches shard 0, below); a
    /// tag or pattern invalidation is applied to every shard (concurrently) and acknowledged when
    /// all of them applied it, so the no-stale guarantee holds per shard and so for the
    /// namespace. The cost: a tag or pattern invalidation writes a tombstone and advances a
    /// clock in each shard. Batches (`get_many`, `set_many`, warming) are split by shard.
    ///
    /// Every process sharing a namespace must use the same number of shards (the layout is
    /// part of the key names). The layout is recorded in the store: a cache that finds another
    /// one recorded serves without the store and invalidates in the recorded layout
    /// ([`layout_check`](Self::layout_check)). To change it, move to a new namespace name.
    ///
    /// A bounded route ([`CacheLayer::eviction`](crate::CacheLayer::eviction)) keeps all its
    /// entries and their index on shard 0 ([`KeySpace::bounded`](crate::store::KeySpace::bounded)),
    /// so its capacity and eviction order stay exact; a key invalidation in a sharded namespace
    /// therefore also writes its tombstone in shard 0 (one more script, concurrent with the
    /// key's own shard).
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, MemoryStore};
    /// let cache = Cache::builder(MemoryStore::new()).namespace("products").shards(8).build();
    /// assert_eq!(cache.shard_count(), 8);
    /// ```
    ///
    /// # Panics
    ///
    /// If `n` is 0 or above 1024. [`build`](Self::build) panics if `n` is above 1 and the store
    /// does not implement sharded namespaces ([`Store::supports_shards`]).
    pub fn shards(mut self, n: u16) -> Self {
        assert!(
            (1..=1024).contains(&n),
            "CacheBuilder::shards({n}): a namespace has 1..=1024 shards"
        );
        self.shards = Some(n);
        self
    }

    /// How often the cache checks that the namespace's key layout recorded in the store is its
    /// own (default 60 s; the first check is made before the first store operation).
    ///
    /// Every process sharing a namespace must name its keys the same way: the same
    /// [`shards`](Self::shards), on the same kind of store. Each cache records its layout under
    /// `NAMESPACE|layout` if none is recorded (`SET NX`, no TTL). A cache that finds another
    /// layout recorded fails closed: its reads, fills and locks fail (requests are served by
    /// the handler, uncached), it reports [`is_degraded`](Cache::is_degraded), an error is
    /// logged, and its invalidations are applied in the recorded layout so the processes using
    /// it still see them. The periodic check notices a record that changed, and re-creates one
    /// lost to a flush; until then, processes built with different layouts after a flush can
    /// disagree for up to one interval.
    ///
    /// # Panics
    ///
    /// If `every` is zero.
    pub fn layout_check(mut self, every: Duration) -> Self {
        assert!(
            !every.is_zero(),
            "CacheBuilder::layout_check: zero interval"
        );
        self.layout_check = every;
        self
    }

    /// Default time to live of entries (routes may override). Default 60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Timeout of one store operation; past it the request is served without the cache.
    /// Default 100 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Timeout of multi-step operations: tag and pattern invalidations, which run in bounded
    /// steps on the store's bulk connection (each step a batch of a tag's members, or a `SCAN`
    /// step), and batch reads and writes. Default 30 s.
    pub fn bulk_timeout(mut self, timeout: Duration) -> Self {
        self.bulk_timeout = timeout;
        self
    }

    /// Bounds how long [`Cache::invalidate`] (and so an
    /// [`InvalidateLayer`](crate::InvalidateLayer) request) waits for its invalidation. By
    /// default the caller waits for the whole invalidation (within
    /// [`bulk_timeout`](Self::bulk_timeout) for tags and patterns).
    ///
    /// Key invalidations take one store operation (bounded by [`timeout`](Self::timeout)); a
    /// large tag or a pattern scan may take many, and a slow store makes every step slow. With
    /// a wait, an invalidation still running past it is **not cancelled**: it keeps running in
    /// its own task and is owed like a failed one (this process reads around the cache until it
    /// lands, or until the retry it falls back to lands; see
    /// [`invalidation_retry`](Self::invalidation_retry)), and the caller gets a
    /// [`Timeout`](crate::store::StoreErrorKind::Timeout) error meaning "owed".
    ///
    /// At most 64 invalidations are late at once; the callers of further ones wait for them in
    /// full, so late work cannot pile up on a slow store. Without a Tokio runtime the caller
    /// always waits in full. A zero wait makes every invalidation that does not complete at its
    /// first poll late.
    ///
    /// **The trade-off**: write latency bounded, but the guarantee across processes weakened
    /// for that window. This process never serves what the late invalidation removes; *other*
    /// processes sharing the store do not know it is owed and may read entries it has not yet
    /// removed until it lands. Use it for a single instance, or where a bounded write latency
    /// matters more than other instances being exact during a slow multi-step invalidation.
    pub fn invalidation_wait(mut self, wait: Duration) -> Self {
        self.invalidation_wait = Some(wait);
        self
    }

    /// The circuit breaker: after `failures` consecutive store failures, skip the store for
    /// `cool_down`, then probe it with one operation. Default 5 failures, 1 s.
    pub fn circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cool_down = cool_down;
        self
    }

    /// How long invalidations are remembered for fills in flight. A fill (a handler run after a
    /// miss) that takes longer than this is not stored. Default 60 s.
    pub fn invalidation_window(mut self, window: Duration) -> Self {
        self.tombstone_ttl = window;
        self
    }

    /// Invalidations that fail (store unreachable, slow, breaker open) are owed to the store and
    /// retried in the background until they land; while any is owed, this process serves
    /// requests from the handler, not from the cache. Default 1024, 10 minutes.
    ///
    /// They are owed by target: a key, tag or pattern is owed once however many failed
    /// invalidations named it. When more than `capacity` targets would be owed, or one is still
    /// failing `give_up_after` after it was queued, they are replaced by one **namespace-wide
    /// invalidation** (every entry of the namespace removed, every fill in flight refused; counted
    /// in [`Stats::invalidation_floors`](crate::Stats::invalidation_floors)), held until it lands
    /// however long the store takes to come back. Nothing is dropped; the price of an outage
    /// longer than the queue is a cold namespace afterwards. Retries back off up to 1 s, and start
    /// again at once when the store answers another operation.
    pub fn invalidation_retry(mut self, capacity: usize, give_up_after: Duration) -> Self {
        self.retry_capacity = capacity;
        self.retry_give_up = give_up_after;
        self
    }

    /// Whether logs and spans show cache keys as they are (`key` field) instead of only a short
    /// hash of them (`key_hash`). Keys may hold user data (ids, query values, hashed
    /// credentials): keep this off in production. Default off.
    pub fn log_raw_keys(mut self, enable: bool) -> Self {
        self.log_raw_keys = enable;
        self
    }

    /// The OpenTelemetry meter the cache's instruments are created from (see
    /// [`metrics`](crate::metrics) for the list). Default: the global meter provider's meter
    /// for scope `tower-valkey-cache`, taken when [`build`](Self::build) runs, so install the
    /// global provider before building caches.
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, MemoryStore};
    ///
    /// let meter = opentelemetry::global::meter("tower-valkey-cache"); // or provider.meter(...)
    /// let cache = Cache::builder(MemoryStore::new()).meter(meter).build();
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Stores entries whose encoding reaches the threshold LZ4-compressed (feature
    /// `compression`). Default off. Reads decompress whatever is compressed, whether or not
    /// this is set, up to [`Compression::max_size`](crate::seal::Compression::max_size). See
    /// [`seal`](crate::seal).
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, Compression, MemoryStore};
    ///
    /// let cache = Cache::builder(MemoryStore::new())
    ///     .compression(Compression::lz4().threshold(2048))
    ///     .build();
    /// ```
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compression(mut self, compression: crate::seal::Compression) -> Self {
        self.sealer.compression = Some(compression);
        self
    }

    /// Seals every entry with AES-256-GCM under the keyring's current key, bound to its store
    /// key (feature `encryption`). Reads accept only entries that authenticate under a key of
    /// the ring; anything else is a miss. Default off. See [`seal`](crate::seal).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_valkey_cache::{Cache, Keyring, MemoryStore};
    ///
    /// let key: [u8; 32] = [7; 32]; // from the application's secret store
    /// let cache = Cache::builder(MemoryStore::new())
    ///     .namespace("sessions")
    ///     .encryption(Keyring::new(1, &key)?)
    ///     .build();
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn encryption(mut self, keyring: crate::seal::Keyring) -> Self {
        self.sealer.keyring = Some(keyring);
        self
    }

    /// Turns on the [L1 tier](crate::l1): an in-process cache of up to `capacity` entries in
    /// front of the store, each kept at most `ttl` (and never past its freshness). Every
    /// invalidation this cache runs is then announced to the other instances, and this cache
    /// listens for theirs. Default off.
    ///
    /// The store must support it ([`ValkeyStore`](crate::ValkeyStore),
    /// [`MemoryStore`](crate::MemoryStore), or a store returning an
    /// [`InvalidationBus`](crate::store::InvalidationBus) from [`Store::bus`]); otherwise
    /// [`build`](Self::build) panics. On a `ValkeyStore`, the cache opens one more connection
    /// (its subscription) once a Tokio runtime runs it.
    pub fn l1(mut self, capacity: u64, ttl: Duration) -> Self {
        self.l1.tier = Some((capacity.max(1), ttl));
        self
    }

    /// How far behind the invalidation announcements this cache's L1 may be and still serve:
    /// a read answered from L1 at time `t` has applied every invalidation any instance
    /// acknowledged before `t - max_lag`. Default 1 s
    /// ([`DEFAULT_MAX_LAG`](crate::l1::DEFAULT_MAX_LAG)).
    ///
    /// The tier checks it by sending itself a probe on the invalidation channel (every
    /// `max_lag / 4` while it serves reads, and for 10 s after): announcements on Valkey reach
    /// each subscriber in order, so when its probe is back every earlier announcement has been
    /// applied. While no probe came back within `max_lag` (a slow subscriber, a slow or frozen
    /// Valkey), reads skip L1 and go to the store
    /// ([`L1Stats::lagging`](crate::l1::L1Stats::lagging)). See
    /// [the bound](crate::l1#the-bound-across-instances). `Duration::MAX` turns the bound off
    /// (then only the heartbeat and the L1 TTL bound it).
    pub fn l1_max_lag(mut self, max_lag: Duration) -> Self {
        self.l1.max_lag = max_lag;
        self
    }

    /// Strict invalidations across instances: an invalidation this cache announces returns only
    /// once [`l1_max_lag`](Self::l1_max_lag) has passed since its announcement was published.
    /// Then **no read that starts after it returns, in any instance, is served an older entry
    /// from L1**: every instance has either applied the announcement or stopped serving from
    /// L1 until it has. Costs every announced invalidation (a write through `InvalidateLayer`,
    /// `Cache::invalidate*`) `max_lag` of latency: pair it with a short `l1_max_lag` (100-250
    /// ms), and give every instance sharing the namespace the same `l1_max_lag`. Default off.
    /// Needs a store whose bus is ordered ([`ValkeyStore`](crate::ValkeyStore)); on a
    /// `MemoryStore` announcements are applied before the call returns anyway.
    ///
    /// # Panics
    ///
    /// At [`build`](Self::build), if `l1_max_lag` is longer than 60 s
    /// ([`MAX_STRICT_LAG`](crate::l1::MAX_STRICT_LAG)): every announced invalidation would wait
    /// that long (and with the bound off, forever).
    pub fn l1_strict(mut self, strict: bool) -> Self {
        self.l1.strict = strict;
        self
    }

    /// Whether this cache announces its invalidations to the L1 tiers of other instances.
    /// Default: on with [`l1`](Self::l1), off without. Turn it on in every process without L1
    /// that invalidates a namespace other instances serve from L1 (workers, admin tools). Each
    /// announcement is one `PUBLISH` on Valkey. Turning it off with L1 on is only correct when no
    /// other process serves this namespace from L1. (Caches on a `MemoryStore` always announce:
    /// it is a function call.)
    pub fn publish_invalidations(mut self, enable: bool) -> Self {
        self.l1.publish = Some(enable);
        self
    }

    /// Builds the cache.
    ///
    /// # Panics
    ///
    /// With [`l1`](Self::l1) on a store that has no invalidation bus, and with
    /// [`l1_strict`](Self::l1_strict) and an [`l1_max_lag`](Self::l1_max_lag) above
    /// [`MAX_STRICT_LAG`](crate::l1::MAX_STRICT_LAG), and with `l1_strict` and an
    /// [`invalidation_wait`](Self::invalidation_wait) no longer than `l1_max_lag` (the strict
    /// wait is part of every announced invalidation, so each would end late).
    pub fn build(self) -> Cache {
        if let (true, Some(wait)) = (self.l1.strict, self.invalidation_wait) {
            assert!(
                wait > self.l1.max_lag,
                "CacheBuilder::invalidation_wait ({wait:?}) must be longer than l1_max_lag ({:?}) with l1_strict: every announced invalidation waits l1_max_lag",
                self.l1.max_lag
            );
        }
        let l1 = crate::l1::State::new(&self.l1, self.store.as_ref(), &self.namespace);
        #[cfg(feature = "opentelemetry")]
        let counters = {
            let meter = self.meter.unwrap_or_else(crate::metrics::default_meter);
            let metrics = crate::metrics::Metrics::new(&meter, &self.namespace, self.store.name());
            if let Some(source) = l1.stats_source() {
                metrics.observe_l1(&meter, move || {
                    source().map(|s| crate::metrics::L1Reading {
                        hits: s.hits,
                        misses: s.misses,
                        bypassed: s.bypassed,
                        entries: s.entries,
                        listening: s.listening,
                    })
                });
            }
            Counters::with_metrics(metrics)
        };
        #[cfg(not(feature = "opentelemetry"))]
        let counters = Counters::default();
        let shards = self.shards.unwrap_or(
            if self.store.needs_hash_tags() && self.store.supports_shards() {
                DEFAULT_CLUSTER_SHARDS
            } else {
                1
            },
        );
        assert!(
            shards == 1 || self.store.supports_shards(),
            "CacheBuilder::shards({shards}): the store `{}` does not implement sharded namespaces \
             (Store::supports_shards)",
            self.store.name()
        );
        let space = if shards > 1 {
            KeySpace::sharded(&self.namespace, shards, self.tombstone_ttl)
        } else if self.store.needs_hash_tags() {
            KeySpace::hash_tagged(&self.namespace, self.tombstone_ttl)
        } else {
            KeySpace::new(&self.namespace, self.tombstone_ttl)
        };
        // Whether a read may be answered without waiting (crate::layer::service::start): with an
        // L1 tier, or on a store that answers `read_now` (asked once; a store answers it always
        // or never, and a `None` later is still handled).
        let answers_now = l1.is_enabled() || self.store.read_now(&space, "").is_some();
        Cache {
            inner: Arc::new(Inner {
                layout: super::layout::LayoutGuard::new(&self.namespace, &space, self.layout_check),
                space,
                answers_now,
                store: self.store,
                namespace: self.namespace,
                ttl: self.ttl,
                op_timeout: self.op_timeout,
                bulk_timeout: self.bulk_timeout,
                invalidation_wait: self.invalidation_wait,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cool_down),
                counters,
                retry: RetryQueue::new(self.retry_capacity, self.retry_give_up),
                flights: Flights::default(),
                failures: Default::default(),
                log_raw_keys: self.log_raw_keys,
                epoch: std::sync::atomic::AtomicU64::new(0),
                l1,
                sealer: self.sealer,
            }),
        }
    }
}
