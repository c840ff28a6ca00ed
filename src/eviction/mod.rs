//! Count-bounded namespaces with exact eviction policies: FIFO, LIFO, LRU, MRU and LFU.
//!
//! Valkey's own `maxmemory-policy` evicts by sampled, approximate LRU or LFU over the whole server,
//! and only under memory pressure. A **bounded namespace** instead holds at most *capacity*
//! entries and, to store one more, evicts exactly the entry its [`EvictionPolicy`] names. Two ways
//! to use it:
//!
//! - standalone, typed caches: [`BoundedCache`] (with the aliases [`ValkeyFifoCache`],
//!   [`ValkeyLifoCache`], [`ValkeyLruCache`], [`ValkeyMruCache`], [`ValkeyLfuCache`]) with async
//!   `set`, `get`, `delete`, `len`, `clear` and values serialized with `serde_json`;
//! - per route: [`CacheLayer::eviction`](crate::CacheLayer::eviction) bounds the entries of a
//!   [`CacheLayer`](crate::CacheLayer)'s namespace.
//!
//! ```
//! use tower_valkey_cache::eviction::{Lru, ValkeyLruCache};
//! use tower_valkey_cache::MemoryStore; // or ValkeyStore: same behaviour, shared between processes
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let recent: ValkeyLruCache<String> =
//!     ValkeyLruCache::new(MemoryStore::new(), "recent", Lru::with_capacity(2));
//! recent.set("a", &"A".to_owned()).await?;
//! recent.set("b", &"B".to_owned()).await?;
//! recent.get("a").await?; // "a" is now the most recently used
//! let evicted = recent.set("c", &"C".to_owned()).await?;
//! assert_eq!(evicted, ["b"]);
//! assert_eq!(recent.keys().await?, ["a", "c"]); // next victim first
//! # Ok::<(), tower_valkey_cache::eviction::BoundedError>(())
//! # }).unwrap();
//! ```
//!
//! # Policies
//!
//! Every entry of a bounded namespace has a rank: *(uses, stamp)*, compared uses first. The stamp
//! is a per-namespace sequence number handed out by sets and reads; uses count sets and reads for
//! LFU and stay 1 otherwise. Storing a **new** key into a full namespace first evicts the lowest
//! or highest ranked *other* entry, so a set always stores its value (an MRU or LIFO cache never
//! evicts the entry being written). Overwriting a key evicts nothing.
//!
//! | policy | evicts | a set | a read | good for | inside the get script |
//! |---|---|---|---|---|---|
//! | [`Fifo`] | the oldest written | stamps | nothing | "the last N viewed items", logs, dedup windows | `GET` |
//! | [`Lifo`] | the newest written | stamps | nothing | undo-style stacks, keeping a stable early working set | `GET` |
//! | [`Lru`] | the least recently used | stamps | stamps | general purpose: recency predicts reuse | `GET`, `INCR`, `ZADD XX` |
//! | [`Mru`] | the most recently used | stamps | stamps | cyclic scans larger than the cache, "seen it, won't need it again" (hot/cold separation) | as LRU |
//! | [`Lfu`] | the least frequently used, ties: least recently used | counts + stamps | counts + stamps | popular results with a stable popularity (API responses, catalogues) | `GET`, `ZSCORE`, `INCR`, `ZADD` |
//!
//! Every get and every set is **one round trip**: one Lua script (`EVALSHA`, loaded once and
//! reloaded after a `SCRIPT FLUSH` or a failover). Each is O(log n) in the namespace's size plus
//! O(log n) per evicted entry, atomic, and never lets the index hold more than capacity entries,
//! even with many processes writing at once. A set's script, for every policy: `ZSCORE`, `ZCARD`,
//! one `ZPOPMIN`/`ZPOPMAX` + `UNLINK` per eviction, `SET PX`, `INCR`, `EXISTS`, `ZADD`, and
//! `PTTL`/`PEXPIRE` to keep the index alive as long as its longest-lived entry. The
//! [`MemoryStore`] implements the same rules under one lock.
//!
//! **Cost.** On Valkey 8 running a script has a floor of about 4 µs of server time (a script that
//! only does a `GET`, against about 0.2 µs for the `GET` itself); the bookkeeping adds about 1-2 µs
//! (LRU) to 5 µs (LFU) to a read and a set script takes about 15 µs. Over loopback, where a round
//! trip is 25-40 µs, an LRU hit costs about 1.1-1.3× a plain `GET`; over a real network the
//! difference shrinks with the round trip. Sets are the expensive side (tens of thousands per
//! second per Valkey core), which suits caches, where reads dominate.
//!
//! # Key layout (Valkey)
//!
//! A standalone namespace `recent` keeps everything under the hash tag `{recent}`, so its scripts
//! run on Valkey Cluster (every key in one slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{recent}:KEY` | string | the value of `KEY` (JSON) |
//! | `{recent}\|idx` | sorted set | one member per entry (`KEY`), scored by rank: the stamp, or `uses × 2^33 + stamp` for policies that count |
//! | `{recent}\|seq` | string | the stamp counter |
//!
//! Entries that expire by TTL leave the index lazily: a read that finds the value gone removes the
//! member, and a member that comes up for eviction with its value gone is dropped without
//! counting as an eviction. [`BoundedCache::len`] counts such members until then;
//! [`BoundedCache::keys`] drops them. The index and the counter get the TTL of the longest-lived
//! entry written (refreshed by each set), so an abandoned namespace disappears after its last
//! entry expires; once an entry without a TTL is stored, they persist until the namespace is
//! emptied or [cleared](BoundedCache::clear). LFU use counts saturate at 2^20 - 1; when the stamp
//! counter of a counting policy reaches 2^33, one script renumbers the stamps in rank order
//! (O(n log n), once per 8.6 billion operations).
//!
//! A route's bounded namespace (`CacheLayer::eviction`) indexes the route's entries, which live at
//! `ns:KEY` beside the namespace's other bookkeeping (`ns|...`), in `ns|evict:idx` and
//! `ns|evict:seq`. On Valkey Cluster ([`ValkeyStore::cluster`](crate::ValkeyStore::cluster)) the
//! route cache names its keys under the hash tag `{ns}` (`{ns}:KEY`, `{ns}|evict:idx`, ...), so
//! route eviction runs there too, on the primary serving the namespace's slot.
//!
//! # Your own policy
//!
//! The scripts rank entries inside Valkey, so a policy is not Rust code run per operation but a
//! [`Scoring`]: what a set and a read do to an entry's rank ([`Touch`]) and which end of the
//! ranking is evicted ([`Evict`]). Both stores understand every combination. For example, *most
//! frequently used* eviction, or FIFO where overwriting a key keeps its place:
//!
//! ```
//! use tower_valkey_cache::eviction::{BoundedCache, Evict, EvictionPolicy, Scoring, Touch};
//! use tower_valkey_cache::MemoryStore;
//!
//! /// Evicts the entry used most often: the rest of the working set is what is still to come.
//! #[derive(Clone, Debug)]
//! struct Mfu(usize);
//!
//! impl EvictionPolicy for Mfu {
//!     fn capacity(&self) -> usize {
//!         self.0
//!     }
//!     fn scoring(&self) -> Scoring {
//!         Scoring { on_set: Touch::Count, on_get: Touch::Count, evict: Evict::Highest }
//!     }
//! }
//!
//! /// FIFO by first insertion: rewriting a key does not make it younger.
//! #[derive(Clone, Debug)]
//! struct FirstIn(usize);
//!
//! impl EvictionPolicy for FirstIn {
//!     fn capacity(&self) -> usize {
//!         self.0
//!     }
//!     fn scoring(&self) -> Scoring {
//!         Scoring { on_set: Touch::Keep, on_get: Touch::Keep, evict: Evict::Lowest }
//!     }
//!     fn name(&self) -> &'static str {
//!         "first-in"
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let hot = BoundedCache::<u32, Mfu>::new(MemoryStore::new(), "hot", Mfu(2));
//! hot.set("a", &1).await?;
//! hot.set("b", &2).await?;
//! hot.get("a").await?;
//! assert_eq!(hot.set("c", &3).await?, ["a"]);
//! # Ok::<(), tower_valkey_cache::eviction::BoundedError>(())
//! # }).unwrap();
//! ```
//!
//! On a [`MemoryStore`], a standalone namespace keeps its values beside the store's entries: they
//! count against the namespace's capacity, not against
//! [`MemoryStore::max_entries`](MemoryStore::max_entries).
//!
//! A namespace must keep one policy: its ranks mean what the policy that wrote them says, so
//! [clear](BoundedCache::clear) it (or use a new namespace) when changing policy.
//!
//! # Valkey's `maxmemory-policy`: instead, or as well
//!
//! **Instead**, for most response caches: when "keep what is hot within N GB" is the goal, set
//! `maxmemory` with `allkeys-lru` or `allkeys-lfu` (or `volatile-*` when every key has a TTL) and
//! leave routes unbounded. It costs nothing per request, bounds memory rather than a count, and
//! Valkey's sampled approximations are close to exact for that purpose. Bounded namespaces are for
//! when the count and the victim matter: a fixed-size "recent items" list, per-tenant quotas, a
//! deterministic policy tests can rely on, or a policy Valkey does not offer (FIFO, LIFO, MRU).
//!
//! **As well**, `maxmemory` is the safety net against running out of memory. Then know what its
//! policy may do to a bounded namespace:
//!
//! - `allkeys-*` may evict *any* key, including a namespace's index and counter. `allkeys-lru` and
//!   `allkeys-lfu` are unlikely to pick them (every set, and every read under LRU/MRU/LFU, touches
//!   them, so they are among the hottest keys); `allkeys-random` is as likely to pick them as any
//!   key. When the index goes, the namespace starts over with an empty index: the values already
//!   stored are no longer counted nor evicted by the policy and stay until their TTL (forever
//!   without one), so the namespace can hold up to twice its capacity until they expire.
//! - When Valkey evicts a *value*, its index member is a ghost: dropped at its next read or when it
//!   comes up as the victim, counted by `len` until then. The bound still holds.
//! - `volatile-ttl` evicts the keys closest to expiring first: the index, which lives as long as
//!   the longest-lived entry, goes last. With TTLs on every entry it is the safest companion.
//! - `noeviction` makes sets fail (`OOM` errors, reported as [`StoreError`]s) once memory is full;
//!   reads keep working.

mod cache;
mod memory;
mod valkey;

pub use cache::{
    BoundedCache, BoundedError, ValkeyFifoCache, ValkeyLfuCache, ValkeyLifoCache, ValkeyLruCache,
    ValkeyMruCache,
};
pub(crate) use memory::Registry;

use crate::store::{KeySpace, Lookup, MemoryStore, StoreError, ValkeyStore, Write, Written};
use crate::Cache;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A count-bounded eviction strategy: how many entries a namespace holds and how it ranks them.
///
/// Implement it for your own policy by choosing a [`Scoring`] (see the [module docs](self)); the
/// built-in policies are [`Fifo`], [`Lifo`], [`Lru`], [`Mru`] and [`Lfu`].
pub trait EvictionPolicy: Send + Sync + fmt::Debug + 'static {
    /// The most entries the namespace holds (at least 1).
    fn capacity(&self) -> usize;

    /// How sets and reads rank entries, and which end of the ranking is evicted.
    fn scoring(&self) -> Scoring;

    /// A short name, for logs.
    fn name(&self) -> &'static str {
        "custom"
    }
}

/// What a policy does to an entry's rank *(uses, stamp)*, and which end it evicts.
///
/// Ranks compare uses first, then stamps. A new entry starts at one use and a fresh stamp,
/// whatever `on_set` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scoring {
    /// What a set does to an entry that is already there (an overwrite).
    pub on_set: Touch,
    /// What a read that finds the entry does to it.
    pub on_get: Touch,
    /// Which entry a full namespace evicts to make room.
    pub evict: Evict,
}

impl Scoring {
    /// First in, first out: sets stamp, reads do nothing, the lowest stamp goes.
    pub const FIFO: Self = Self {
        on_set: Touch::Stamp,
        on_get: Touch::Keep,
        evict: Evict::Lowest,
    };
    /// Last in, first out: sets stamp, reads do nothing, the highest stamp goes.
    pub const LIFO: Self = Self {
        on_set: Touch::Stamp,
        on_get: Touch::Keep,
        evict: Evict::Highest,
    };
    /// Least recently used: sets and reads stamp, the lowest stamp goes.
    pub const LRU: Self = Self {
        on_set: Touch::Stamp,
        on_get: Touch::Stamp,
        evict: Evict::Lowest,
    };
    /// Most recently used: sets and reads stamp, the highest stamp goes.
    pub const MRU: Self = Self {
        on_set: Touch::Stamp,
        on_get: Touch::Stamp,
        evict: Evict::Highest,
    };
    /// Least frequently used: sets and reads count a use and stamp; the fewest uses go, and among
    /// those the least recently used.
    pub const LFU: Self = Self {
        on_set: Touch::Count,
        on_get: Touch::Count,
        evict: Evict::Lowest,
    };

    /// Whether ranks carry a use count (some touch is [`Touch::Count`]).
    pub fn counts(&self) -> bool {
        self.on_set == Touch::Count || self.on_get == Touch::Count
    }
}

/// What an operation does to the rank of an entry that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Touch {
    /// Nothing: the entry keeps its place.
    Keep,
    /// A fresh stamp: the entry becomes the newest among those with as many uses.
    Stamp,
    /// One more use (saturating at 2^20 - 1) and a fresh stamp.
    Count,
}

/// Which end of the ranking a full namespace evicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Evict {
    /// The lowest rank: fewest uses, then oldest stamp.
    Lowest,
    /// The highest rank: most uses, then newest stamp.
    Highest,
}

macro_rules! policy {
    ($(#[$doc:meta])* $name:ident, $scoring:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            capacity: usize,
        }

        impl $name {
            #[doc = concat!("A ", $label, " policy holding at most `capacity` entries.")]
            ///
            /// # Panics
            ///
            /// If `capacity` is 0.
            pub fn with_capacity(capacity: usize) -> Self {
                assert!(capacity > 0, "a bounded namespace holds at least one entry");
                Self { capacity }
            }
        }

        impl EvictionPolicy for $name {
            fn capacity(&self) -> usize {
                self.capacity
            }

            fn scoring(&self) -> Scoring {
                Scoring::$scoring
            }

            fn name(&self) -> &'static str {
                $label
            }
        }
    };
}

policy!(
    /// First in, first out: evicts the entry written longest ago ([`Scoring::FIFO`]).
    Fifo,
    FIFO,
    "fifo"
);
policy!(
    /// Last in, first out: evicts the entry written most recently ([`Scoring::LIFO`]).
    Lifo,
    LIFO,
    "lifo"
);
policy!(
    /// Least recently used: evicts the entry read or written longest ago ([`Scoring::LRU`]).
    Lru,
    LRU,
    "lru"
);
policy!(
    /// Most recently used: evicts the entry read or written most recently ([`Scoring::MRU`]).
    Mru,
    MRU,
    "mru"
);
policy!(
    /// Least frequently used, ties broken by recency: evicts the entry with the fewest sets and
    /// reads, and among those the least recently used ([`Scoring::LFU`]).
    Lfu,
    LFU,
    "lfu"
);

/// A store that can hold bounded namespaces: a [`ValkeyStore`] or a [`MemoryStore`] (convert
/// either with `.into()`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BoundedStore(Backend);

#[derive(Clone, Debug)]
enum Backend {
    Valkey(ValkeyStore),
    Memory(MemoryStore),
}

impl From<ValkeyStore> for BoundedStore {
    fn from(s: ValkeyStore) -> Self {
        Self(Backend::Valkey(s))
    }
}

impl From<MemoryStore> for BoundedStore {
    fn from(s: MemoryStore) -> Self {
        Self(Backend::Memory(s))
    }
}

impl From<&ValkeyStore> for BoundedStore {
    fn from(s: &ValkeyStore) -> Self {
        Self(Backend::Valkey(s.clone()))
    }
}

impl From<&MemoryStore> for BoundedStore {
    fn from(s: &MemoryStore) -> Self {
        Self(Backend::Memory(s.clone()))
    }
}

/// Bits of a counting rank that hold the stamp (the rest hold the use count).
pub(crate) const STAMP_BITS: u8 = 33;

/// Everything a store needs to apply a policy to one operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub(crate) scoring: Scoring,
    pub(crate) capacity: usize,
    pub(crate) stamp_bits: u8,
}

impl Spec {
    pub(crate) fn new(policy: &dyn EvictionPolicy, stamp_bits: u8) -> Self {
        Self {
            scoring: policy.scoring(),
            capacity: policy.capacity().max(1),
            stamp_bits,
        }
    }

    /// The largest use count a rank holds.
    pub(crate) fn max_uses(&self) -> u64 {
        (1u64 << (53 - u32::from(self.stamp_bits))) - 1
    }
}

/// The names of a bounded namespace's keys.
#[derive(Clone, Debug)]
pub(crate) struct Space {
    /// Prepended to a key to name its value.
    pub(crate) value_prefix: String,
    /// The index (a sorted set on Valkey); also names the namespace in the memory registry.
    pub(crate) index: String,
    /// The stamp counter.
    pub(crate) seq: String,
}

impl Space {
    /// A standalone namespace, all under the hash tag `{namespace}`.
    pub(crate) fn standalone(namespace: &str) -> Self {
        Self {
            value_prefix: format!("{{{namespace}}}:"),
            index: format!("{{{namespace}}}|idx"),
            seq: format!("{{{namespace}}}|seq"),
        }
    }

    /// The bounded entries of a route cache's namespace.
    pub(crate) fn route(space: &KeySpace) -> Self {
        let prefix = space.entry_prefix();
        let ns = prefix.strip_suffix(':').unwrap_or(prefix);
        Self {
            value_prefix: prefix.to_owned(),
            index: format!("{ns}|evict:idx"),
            seq: format!("{ns}|evict:seq"),
        }
    }

    pub(crate) fn value(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.value_prefix.len() + key.len());
        s.push_str(&self.value_prefix);
        s.push_str(key);
        s
    }
}

impl BoundedStore {
    pub(crate) async fn get(
        &self,
        space: &Space,
        key: &str,
        spec: Spec,
    ) -> Result<Option<Bytes>, StoreError> {
        match &self.0 {
            Backend::Valkey(s) => valkey::get(s, space, key, spec).await,
            Backend::Memory(s) => Ok(s.bounded_registry().get(space, key, spec)),
        }
    }

    pub(crate) async fn set(
        &self,
        space: &Space,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> Result<Vec<String>, StoreError> {
        match &self.0 {
            Backend::Valkey(s) => valkey::set(s, space, key, value, ttl, spec).await,
            Backend::Memory(s) => Ok(s.bounded_registry().set(space, key, value, ttl, spec)),
        }
    }

    pub(crate) async fn delete(&self, space: &Space, key: &str) -> Result<bool, StoreError> {
        match &self.0 {
            Backend::Valkey(s) => valkey::delete(s, space, key).await,
            Backend::Memory(s) => Ok(s.bounded_registry().delete(space, key)),
        }
    }

    pub(crate) async fn len(&self, space: &Space) -> Result<usize, StoreError> {
        match &self.0 {
            Backend::Valkey(s) => valkey::len(s, space).await,
            Backend::Memory(s) => Ok(s.bounded_registry().len(space)),
        }
    }

    pub(crate) async fn keys(&self, space: &Space, spec: Spec) -> Result<Vec<String>, StoreError> {
        match &self.0 {
            Backend::Valkey(s) => valkey::keys(s, space, spec).await,
            Backend::Memory(s) => Ok(s.bounded_registry().keys(space, spec)),
        }
    }

    pub(crate) async fn clear(&self, space: &Space) -> Result<u64, StoreError> {
        match &self.0 {
            Backend::Valkey(s) => valkey::clear(s, space).await,
            Backend::Memory(s) => Ok(s.bounded_registry().clear(space)),
        }
    }
}

/// A route's eviction: the policy, and where the route's entries and their index live.
///
/// Built by [`CacheLayer::eviction`](crate::CacheLayer::eviction); the cache layer calls
/// [`read`](Self::read) instead of its plain read and [`write`](Self::write) instead of its
/// plain write.
#[derive(Debug)]
pub(crate) struct RouteEviction {
    store: BoundedStore,
    policy: Arc<dyn EvictionPolicy>,
    space: Space,
}

impl RouteEviction {
    /// Eviction for the routes of `cache`.
    ///
    /// # Panics
    ///
    /// If the cache's store is neither a `ValkeyStore` nor a `MemoryStore`.
    pub(crate) fn new(cache: &Cache, policy: Arc<dyn EvictionPolicy>) -> Self {
        let store = cache.store().bounded().unwrap_or_else(|| {
            panic!(
                "CacheLayer::eviction needs a store with bounded namespaces (ValkeyStore or MemoryStore), not {}",
                cache.store().name()
            )
        });
        Self {
            store,
            space: Space::route(cache.key_space()),
            policy,
        }
    }

    fn spec(&self) -> Spec {
        Spec::new(&*self.policy, STAMP_BITS)
    }

    /// Reads `key` like the cache's plain read (value and invalidation clock) and, in the same
    /// round trip, touches its rank ([`Scoring::on_get`]). A value that is gone leaves the index.
    pub(crate) async fn read(&self, cache: &Cache, key: &str) -> Result<Lookup, StoreError> {
        if cache.pending_invalidations() > 0 {
            // As `Cache::read`: the store may hold entries a pending invalidation will remove.
            return Err(StoreError::new(
                crate::store::StoreErrorKind::Unavailable,
                "invalidation pending; cache reads suspended",
            ));
        }
        let spec = self.spec();
        let fut = async move {
            match &self.store.0 {
                Backend::Valkey(s) => {
                    valkey::route_read(s, cache.key_space(), &self.space, key, spec).await
                }
                Backend::Memory(s) => {
                    let lookup = crate::store::Store::read(s, cache.key_space(), key).await?;
                    s.bounded_registry().route_touch(
                        s,
                        &self.space,
                        key,
                        lookup.value.is_some(),
                        spec,
                    );
                    Ok(lookup)
                }
            }
        };
        cache
            .guarded("read", cache.inner.op_timeout, Box::pin(fut))
            .await
            .map(|lookup| cache.opened(key, lookup))
    }

    /// Writes like the cache's plain write; when the entry is stored, ranks it and evicts what the
    /// policy says (one more round trip, one script). Returns the write's outcome.
    pub(crate) async fn write(&self, cache: &Cache, w: Write<'_>) -> Result<Written, StoreError> {
        let key = w.key;
        let ttl = w.ttl;
        let written = cache.write(w).await?;
        if written == Written::Stored {
            let spec = self.spec();
            let fut = async move {
                match &self.store.0 {
                    Backend::Valkey(s) => {
                        valkey::route_record(s, &self.space, key, ttl, spec).await
                    }
                    Backend::Memory(s) => {
                        Ok(s.bounded_registry()
                            .route_record(s, &self.space, key, ttl, spec))
                    }
                }
            };
            // A failed record leaves the entry unindexed until its next read indexes it (the
            // read script heals the index); the failure is logged and counted by `guarded`.
            if let Ok(evicted) = cache
                .guarded("evict", cache.inner.op_timeout, Box::pin(fut))
                .await
            {
                if !evicted.is_empty() {
                    cache
                        .counters()
                        .evicted(self.policy.name(), evicted.len() as u64);
                    tracing::debug!(
                        namespace = %cache.namespace(),
                        policy = self.policy.name(),
                        evicted = evicted.len(),
                        "evicted entries to stay within capacity"
                    );
                }
            }
        }
        Ok(written)
    }
}

/// The route cache's read of `key`: with eviction, [`RouteEviction::read`] (value, clock and the
/// touch in one round trip); without, the plain read.
pub(crate) async fn read(
    cache: &Cache,
    eviction: Option<&RouteEviction>,
    key: &str,
) -> Result<Lookup, StoreError> {
    match eviction {
        Some(e) => e.read(cache, key).await,
        None => cache.read(key).await,
    }
}

/// The route cache's write: with eviction, [`RouteEviction::write`] (the write, then rank and
/// evict); without, the plain write.
pub(crate) async fn write(
    cache: &Cache,
    eviction: Option<&RouteEviction>,
    w: Write<'_>,
) -> Result<Written, StoreError> {
    match eviction {
        Some(e) => e.write(cache, w).await,
        None => cache.write(w).await,
    }
}
