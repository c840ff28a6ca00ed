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
//! **Dead entries hold no capacity**, whatever the policy (built-in or
//! [your own](#your-own-policy)): an entry whose TTL passed, that was
//! [deleted](BoundedCache::delete) or, on a route, invalidated (by key, tag or pattern, through
//! [`Cache::invalidate`](crate::Cache::invalidate) or an [`InvalidateLayer`](crate::InvalidateLayer))
//! is never evicted in place of a live one, is not counted by [`BoundedCache::len`], and frees its
//! place for the next new key. Invalidations remove the index members of the entries they delete;
//! expired members are found in an expiry index (ARCHITECTURE.md › Bounded namespaces).
//!
//! | policy | evicts | a set | a read | good for | inside the get script |
//! |---|---|---|---|---|---|
//! | [`Fifo`] | the oldest written | stamps | nothing | "the last N viewed items", logs, dedup windows | `GET` |
//! | [`Lifo`] | the newest written | stamps | nothing | undo-style stacks, keeping a stable early working set | `GET` |
//! | [`Lru`] | the least recently used | stamps | stamps | general purpose: recency predicts reuse | `GET`, `INCR`, `ZADD XX` |
//! | [`Mru`] | the most recently used | stamps | stamps | cyclic scans larger than the cache, "seen it, won't need it again" (hot/cold separation) | as LRU |
//! | [`Lfu`] | the least frequently used, ties: least recently used | counts + stamps | counts + stamps | popular results with a stable popularity (API responses, catalogues) | `GET`, `ZSCORE`, `INCR`, `ZADD` |
//!
//! Every get and every set is **one round trip** (one Lua script), O(log n) in the namespace's
//! size, atomic, and never lets the index hold more than capacity entries, even with many
//! processes writing at once; [`MemoryStore`] applies the same rules under one lock. What each
//! script runs: ARCHITECTURE.md › Bounded namespaces.
//!
//! **Cost**: a hit on a bounded route is one script instead of a `GET`, about 1.1-1.3× a plain
//! `GET` over loopback; sets cost more (BENCHMARKS.md › Eviction scripts).
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
//! - When Valkey evicts a *value*, its index member is a ghost: dropped at its next read, when it
//!   comes up as the victim, or once the value's TTL would have ended (the expiry index still
//!   holds it), whichever comes first; `len` counts it until then. Until then it holds a place:
//!   the namespace may keep fewer live entries than its capacity, by at most the number of such
//!   ghosts, each for at most its entry's TTL (a value without TTL: until read or evicted). The
//!   bound (never more than capacity entries) still holds. The same goes for a route's entries
//!   removed by anything else behind the index's back (a `DEL`, a [`MemoryStore`]'s own
//!   [`max_entries`](MemoryStore::max_entries) bound), and for members whose expiry index Valkey
//!   evicted (they leave lazily, as ghosts do).
//! - `volatile-ttl` evicts the keys closest to expiring first: the index, which lives as long as
//!   the longest-lived entry, goes last. With TTLs on every entry it is the safest companion.
//! - `noeviction` makes sets fail (`OOM` errors, reported as
//!   [`StoreError`](crate::store::StoreError)s) once memory is full; reads keep working.
//!
//! Design records (the key layout on Valkey, expiry bookkeeping): ARCHITECTURE.md › Bounded
//! namespaces; the scripts' measured cost: BENCHMARKS.md › Eviction scripts.

mod cache;

pub use crate::store::ranked::{Evict, Scoring, Touch};
pub use cache::{
    BoundedCache, BoundedError, ValkeyFifoCache, ValkeyLfuCache, ValkeyLifoCache, ValkeyLruCache,
    ValkeyMruCache,
};

use crate::store::ranked::{RankedSpace, Spec, STAMP_BITS};
use crate::store::{KeySpace, MemoryStore, RankedStore, Store, ValkeyStore};
use std::fmt;
use std::sync::Arc;

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

/// A store that can hold bounded namespaces: a [`ValkeyStore`], a [`MemoryStore`] (convert
/// either with `.into()`), or any [`Store`] with a [ranked capability](Store::ranked)
/// ([`BoundedStore::of`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BoundedStore(pub(crate) Arc<dyn RankedStore>);

impl BoundedStore {
    /// The bounded-namespace capability of `store`, if it has one.
    pub fn of(store: &dyn Store) -> Option<Self> {
        store.ranked().map(Self)
    }
}

impl From<ValkeyStore> for BoundedStore {
    fn from(s: ValkeyStore) -> Self {
        Self(Arc::new(s))
    }
}

impl From<MemoryStore> for BoundedStore {
    fn from(s: MemoryStore) -> Self {
        Self(Arc::new(s))
    }
}

impl From<&ValkeyStore> for BoundedStore {
    fn from(s: &ValkeyStore) -> Self {
        Self(Arc::new(s.clone()))
    }
}

impl From<&MemoryStore> for BoundedStore {
    fn from(s: &MemoryStore) -> Self {
        Self(Arc::new(s.clone()))
    }
}

/// A route's eviction: the policy, and where the route's entries and their index live. Built
/// by [`CacheLayer::eviction`](crate::CacheLayer::eviction); the cache's operations
/// ([`crate::cache`]) read and record through it.
#[derive(Debug)]
pub(crate) struct RouteEviction {
    pub(crate) store: Arc<dyn RankedStore>,
    pub(crate) policy: Arc<dyn EvictionPolicy>,
    /// Where the route's entries live: the namespace's bounded shard ([`KeySpace::bounded`]),
    /// for its reads and writes alike.
    pub(crate) keys: KeySpace,
    /// The route's index, in that shard.
    pub(crate) space: RankedSpace,
}

impl RouteEviction {
    /// Eviction for the routes of a cache over `store` whose keys are `keys`; None when the store
    /// cannot hold bounded namespaces.
    pub(crate) fn new(
        store: &dyn Store,
        keys: &KeySpace,
        policy: Arc<dyn EvictionPolicy>,
    ) -> Option<Self> {
        let keys = keys.bounded();
        Some(Self {
            store: store.ranked()?,
            space: RankedSpace::route(keys.shard(0)),
            keys,
            policy,
        })
    }

    pub(crate) fn spec(&self) -> Spec {
        Spec::new(self.policy.scoring(), self.policy.capacity(), STAMP_BITS)
    }
}
