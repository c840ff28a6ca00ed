//! The core: the [`Cache`] handle and the machinery every layer and the function cache go through.
//!
//! - `mod.rs`: the handle (cheap to clone) and its public accessors;
//! - `builder.rs`: [`CacheBuilder`], every setting;
//! - `ops.rs`: the store operations (read, batch read, write, batch write, invalidate, locks):
//!   the **only** code that calls the store, applies the circuit breaker and timeouts, seals
//!   and opens entries, consults and fills L1, counts, reads around owed invalidations and runs
//!   the eviction hooks. Everything above (`layer`, `invalidate`, `function`) calls these.
//! - `flight.rs` (single-flight), `breaker.rs` (circuit breaker), `retry.rs` (the queue of
//!   invalidations owed to the store).

mod breaker;
mod builder;
pub(crate) mod flight;
mod invalidation;
mod layout;
mod ops;
pub(crate) mod retry;

pub use builder::{CacheBuilder, DEFAULT_CLUSTER_SHARDS};
pub use invalidation::Invalidation;
pub(crate) use ops::{BatchWrite, Later, ReadNow};

use crate::stats::{Counters, Stats};
use crate::store::{KeySpace, Store};
use breaker::Breaker;
use flight::{Failures, Flights};
use retry::RetryQueue;
use std::sync::Arc;
use std::time::Duration;

/// A cheap-to-clone handle on a cache: a [`Store`], a namespace and defaults.
///
/// Build one per namespace and share it between routes, layers and background jobs.
///
/// ```
/// use std::time::Duration;
/// use tower_valkey_cache::{Cache, MemoryStore};
///
/// let cache = Cache::builder(MemoryStore::new())
///     .namespace("shop")
///     .ttl(Duration::from_secs(30))
///     .build();
/// assert_eq!(cache.namespace(), "shop");
/// ```
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    space: KeySpace,
    /// Whether reads may be answered without waiting ([`Cache::answers_now`]).
    answers_now: bool,
    namespace: String,
    ttl: Duration,
    op_timeout: Duration,
    bulk_timeout: Duration,
    /// How long a caller of [`Cache::invalidate`] waits at most
    /// ([`CacheBuilder::invalidation_wait`]); None: for the whole invalidation.
    invalidation_wait: Option<Duration>,
    breaker: Breaker,
    counters: Counters,
    retry: RetryQueue,
    flights: Flights,
    /// The short error cache (`error_ttl`), in this process.
    failures: Failures,
    log_raw_keys: bool,
    /// Invalidations started by this process (successful or not).
    epoch: std::sync::atomic::AtomicU64,
    /// The L1 tier and invalidation announcements ([`crate::l1`]).
    l1: crate::l1::State,
    /// Compression and encryption of stored entries ([`crate::seal`]).
    sealer: crate::seal::Sealer,
    /// Whether the namespace's recorded key layout is this cache's ([`layout`]).
    layout: layout::LayoutGuard,
}

impl Cache {
    /// A cache over `store` with default settings (namespace `cache`, TTL 60 s, 100 ms timeout).
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).build()
    }

    /// A cache over a fresh `MemoryStore`, for the unit tests of modules that may not name a
    /// store themselves (`src/layer/`, scripts/check-layering).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new(crate::MemoryStore::new())
    }

    /// A builder over `store`.
    pub fn builder(store: impl Store) -> CacheBuilder {
        Self::builder_shared(Arc::new(store))
    }

    /// A builder over a store shared with other caches (other namespaces).
    pub fn builder_shared(store: Arc<dyn Store>) -> CacheBuilder {
        CacheBuilder::new(store)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The default TTL.
    pub fn default_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The key space (store key names) of this cache's namespace (feature `unstable`: the key
    /// layout is outside semver).
    #[cfg(feature = "unstable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "unstable")))]
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.space
    }

    /// How many shards the namespace is split into ([`CacheBuilder::shards`]; 1 by default).
    pub fn shard_count(&self) -> usize {
        self.inner.space.shard_count()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Whether the cache currently serves without the store: its circuit breaker is open, or
    /// the namespace is recorded in the store with another key layout (another number of
    /// [`shards`](CacheBuilder::shards); see [`CacheBuilder::layout_check`]).
    pub fn is_degraded(&self) -> bool {
        self.inner.breaker.is_open() || self.inner.layout.is_mismatched()
    }

    /// Invalidations this process owes the store: keys, tags and patterns whose invalidation
    /// failed and is queued or being retried, plus one for a namespace-wide invalidation (see
    /// [`CacheBuilder::invalidation_retry`]), plus one per invalidation still running past its
    /// caller's [`invalidation_wait`](CacheBuilder::invalidation_wait). While this is not 0,
    /// reads go around the cache.
    pub fn pending_invalidations(&self) -> usize {
        self.inner.retry.pending()
    }

    /// Fills in progress in this process: keys whose single-flight leader (a miss, a background
    /// refresh, a `get_or_set` load) has not landed yet. Bounded by the keys being filled at once;
    /// 0 when the process is idle (a leader removes its key on every exit, cancellation included).
    pub fn flights_in_progress(&self) -> usize {
        self.inner.flights.len()
    }

    /// Statistics and state of the [L1 tier](crate::l1); None when it is off.
    pub fn l1_stats(&self) -> Option<crate::l1::L1Stats> {
        self.inner.l1.stats()
    }

    /// Drops every entry of this cache's L1 (this process only).
    pub fn l1_flush(&self) {
        self.inner.l1.flush();
    }

    /// The short error cache of this process (`error_ttl`; see [`flight::Failures`]).
    pub(crate) fn failures(&self) -> &Failures {
        &self.inner.failures
    }
}
