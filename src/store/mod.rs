//! Where entries live: the [`Store`] trait, [`ValkeyStore`] and [`MemoryStore`].
//!
//! A store is not a plain get/set map. The cache needs a few multi-step operations to be atomic,
//! and each is one store operation (one round trip to Valkey, one lock on the memory store):
//!
//! - [`Store::read`] returns the value **and** the namespace's invalidation clock, so a miss knows
//!   when its fill started;
//! - [`Store::write`] stores a fill only if none of its key, tags or matching patterns was
//!   invalidated since that clock value (no stale re-fill), and records tag membership with it;
//! - [`Store::invalidate`] advances the clock, leaves tombstones for in-flight fills and removes
//!   the entries.
//!
//! Both built-in stores implement exactly these semantics, and the crate's tests run the same
//! scenarios against each.
//!
//! # The invalidation clock
//!
//! Each namespace (each shard of a sharded one) has one clock (`app|clock`). Every invalidation
//! advances it to one more than its last value **and at least the store's time in microseconds**, and stamps its tombstones with
//! the new value; every read returns it, and the fill that follows a miss passes it back as
//! [`Write::since`]. Because the clock follows the server's time, a store that restarted empty, or
//! failed over to a replica that had not received the latest invalidations, counts on from past
//! every value it handed out before (unless its time runs behind by more than the outage lasted),
//! so an invalidation after the restart still refuses a fill that read the clock before it.
//!
//! The clock's **origin** (`app|clock:origin`) is the value the clock was created with. A fill is
//! also refused when the store lost its state since the fill's read: when the clock it read is
//! ahead of the store's (restarted empty, failed over to a replica that lagged), or earlier than
//! the origin (the store began counting again since, and the tombstones it forgot might have
//! covered the fill). The first invalidation of a namespace creates both, so fills in flight at
//! that moment are refused once.
//!
//! # Key layout
//!
//! For namespace `app`, an entry for key `user:1` lives at `app:user:1`. Bookkeeping lives beside
//! it under `app|...` (`app|clock`, `app|inv:k:user:1`, `app|tag:...`), which no pattern that the
//! crate builds (always `app:` + pattern) can match.
//!
//! On Valkey Cluster ([`ValkeyStore::cluster`]) the namespace becomes a hash tag: `{app}:user:1`,
//! `{app}|clock`, ... ([`KeySpace::hash_tagged`]), so every key of a namespace is in one slot.
//!
//! A **sharded** namespace ([`KeySpace::sharded`], `CacheBuilder::shards`) has S [`Shard`]s,
//! each with everything above under its own hash tag: `{app|K7q}:user:1`, `{app|K7q}|clock`, ...
//! The clock is then per shard: a key's read returns its shard's clock and its fill is guarded
//! there; a tag or pattern invalidation advances every shard's clock and leaves its tombstones
//! in every shard.

pub mod bus;
mod glob;
mod memory;
pub mod ranked;
pub(crate) mod shard;
mod valkey;

pub use bus::{InvalidationBus, LocalBus};
pub use memory::MemoryStore;
pub use ranked::RankedStore;
pub use valkey::{ValkeyConfig, ValkeyStore};

pub use glob::glob_match;

use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The future a [`Store`] operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store operation that failed (connection, timeout, server error).
#[derive(Clone, Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached (refused, dropped, pool exhausted).
    Unavailable,
    /// The operation did not finish within its timeout.
    Timeout,
    /// The circuit breaker is open: the store was not asked.
    CircuitOpen,
    /// The store answered with an error.
    Server,
}

impl StoreError {
    /// A new error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source` (returned by [`Error::source`](std::error::Error::source)).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache store {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The names of one shard's keys: its entries and the bookkeeping that guards them (the
/// invalidation clock and its origin, tombstones, tag sets, fill locks, recent patterns).
///
/// A namespace has one shard unless it is sharded ([`KeySpace::sharded`]); each shard's keys
/// share one hash tag on a Valkey Cluster, so every script of the cache runs on one shard's keys.
#[derive(Clone, Debug)]
pub struct Shard {
    entry_prefix: String,
    meta_prefix: String,
    clock_key: String,
    origin_key: String,
}

impl Shard {
    /// A shard whose entries are named `{base}:KEY` and bookkeeping `{base}|...`.
    fn new(base: &str) -> Self {
        Self {
            entry_prefix: format!("{base}:"),
            meta_prefix: format!("{base}|"),
            clock_key: format!("{base}|clock"),
            origin_key: format!("{base}|clock:origin"),
        }
    }

    /// The store key of an entry of this shard.
    pub fn entry(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.entry_prefix.len() + key.len());
        s.push_str(&self.entry_prefix);
        s.push_str(key);
        s
    }

    /// The prefix of every entry key of this shard (`namespace:`, or `{namespace|TAG}:` in a
    /// sharded namespace).
    pub fn entry_prefix(&self) -> &str {
        &self.entry_prefix
    }

    /// The shard's invalidation clock (read with every lookup, so computed once).
    pub fn clock(&self) -> &str {
        &self.clock_key
    }

    /// The clock's origin: the clock value this shard began counting at, so a fill that read a
    /// clock from before it (the store lost its data meanwhile) is refused. See the
    /// [module docs](self#the-invalidation-clock).
    pub fn clock_origin(&self) -> &str {
        &self.origin_key
    }

    /// The tombstone left by invalidating `key`.
    pub fn key_tombstone(&self, key: &str) -> String {
        format!("{}inv:k:{key}", self.meta_prefix)
    }

    /// The tombstone left in this shard by invalidating `tag`.
    pub fn tag_tombstone(&self, tag: &str) -> String {
        format!("{}inv:t:{tag}", self.meta_prefix)
    }

    /// The set of this shard's entry keys carrying `tag`.
    pub fn tag_set(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.meta_prefix)
    }

    /// Where an invalidation of `tag` moves this shard's set while it removes the members in
    /// steps.
    pub fn tag_drain(&self, tag: &str) -> String {
        format!("{}tag-drain:{tag}", self.meta_prefix)
    }

    /// The fill lock of `key`.
    pub fn lock(&self, key: &str) -> String {
        format!("{}lock:{key}", self.meta_prefix)
    }

    /// This shard's recently invalidated patterns (a sorted set scored by clock).
    pub fn patterns(&self) -> String {
        format!("{}inv:patterns", self.meta_prefix)
    }
}

/// The first word of every [`KeySpace::layout`] this version writes.
const LAYOUT_VERSION: &str = "tvc-layout/1";

/// The names of a namespace's keys in a store: one [`Shard`], or S of them in a sharded
/// namespace ([`KeySpace::sharded`]), each with its own clock, tombstones and tag sets.
///
/// An entry's shard follows from its key ([`shard_for`](Self::shard_for)); everything a keyed
/// operation touches (the entry, its tombstone, its lock, the clock that guards its fill) is in
/// that shard. A tag or pattern invalidation applies to every shard
/// ([`shards`](Self::shards)).
#[derive(Clone, Debug)]
pub struct KeySpace {
    shards: Arc<[Shard]>,
    /// `{namespace|` + `?` × the tag suffix length + `}:` (sharded only): a glob prefix that
    /// matches the entries of every shard of this namespace and of no other namespace.
    every_shard: Option<Arc<str>>,
    tombstone_ttl: Duration,
}

impl KeySpace {
    /// A key space for `namespace` with one shard (`namespace:KEY`, `namespace|...`);
    /// tombstones live for `tombstone_ttl`.
    pub fn new(namespace: &str, tombstone_ttl: Duration) -> Self {
        Self {
            shards: Arc::new([Shard::new(namespace)]),
            every_shard: None,
            tombstone_ttl,
        }
    }

    /// A key space whose keys all share the hash tag `{namespace}`, so they map to one
    /// Valkey Cluster slot and the cache's multi-key scripts (the fill guard reads the entry, the
    /// clock, tombstones and tag sets together) run on one node. Caches on a store whose
    /// [`Store::needs_hash_tags`] is true use it when they have one shard: `{app}:user:1`,
    /// `{app}|clock`, ...
    pub fn hash_tagged(namespace: &str, tombstone_ttl: Duration) -> Self {
        Self::new(&format!("{{{namespace}}}"), tombstone_ttl)
    }

    /// A key space of `shards` shards: shard `i`'s keys live under the hash tag
    /// `{namespace|TAG_i}` (`{app|K7q}:user:1`, `{app|K7q}|clock`, ...), whose Valkey Cluster
    /// slot lies in the `i`-th of `shards` equal slot ranges, so the shards spread evenly over
    /// the primaries. One shard is [`hash_tagged`](Self::hash_tagged)'s layout.
    ///
    /// The tags and the key → shard mapping are a wire format: every process sharing a
    /// namespace must use the same number of shards, or they miss each other's invalidations.
    ///
    /// # Panics
    ///
    /// If `shards` is 0 or more than 1024, or `namespace` holds a brace or `|`.
    pub fn sharded(namespace: &str, shards: u16, tombstone_ttl: Duration) -> Self {
        assert!(
            (1..=shard::MAX_SHARDS).contains(&shards),
            "a namespace has 1..={} shards, not {shards}",
            shard::MAX_SHARDS
        );
        assert!(
            !namespace.contains(['{', '}', '|']),
            "namespace `{namespace}` holds a brace or `|`"
        );
        if shards == 1 {
            return Self::hash_tagged(namespace, tombstone_ttl);
        }
        let tags = shard::shard_tags(namespace, shards);
        let suffix_len = tags[0].len() - namespace.len() - 1;
        let every_shard = format!("{{{namespace}|{}}}:", "?".repeat(suffix_len));
        Self {
            shards: tags
                .iter()
                .map(|t| Shard::new(&format!("{{{t}}}")))
                .collect(),
            every_shard: Some(every_shard.into()),
            tombstone_ttl,
        }
    }

    /// This key space's layout, as caches record it for their namespace
    /// ([`Store::claim_layout`]): the number of shards and the entry prefix of the first one,
    /// so every difference in key names (shards, hash tags) makes a different layout.
    pub fn layout(&self) -> String {
        format!(
            "{LAYOUT_VERSION} shards={} entries={}",
            self.shard_count(),
            self.shards[0].entry_prefix()
        )
    }

    /// The key space a recorded [`layout`](Self::layout) of `namespace` describes; None when
    /// `layout` is not one this version writes (then a cache cannot act in it and fails closed).
    pub fn from_layout(namespace: &str, layout: &str, tombstone_ttl: Duration) -> Option<Self> {
        let rest = layout
            .strip_prefix(LAYOUT_VERSION)?
            .strip_prefix(" shards=")?;
        let (n, entries) = rest.split_once(" entries=")?;
        let n: u16 = n.parse().ok()?;
        let space = if n > 1 && n <= shard::MAX_SHARDS && !namespace.contains(['{', '}', '|']) {
            Self::sharded(namespace, n, tombstone_ttl)
        } else if n == 1 && entries.starts_with('{') {
            Self::hash_tagged(namespace, tombstone_ttl)
        } else if n == 1 {
            Self::new(namespace, tombstone_ttl)
        } else {
            return None;
        };
        (space.layout() == layout).then_some(space)
    }

    /// The key under which `namespace`'s layout is recorded. It carries no hash tag: processes
    /// whose layouts differ (hash-tagged or not, sharded or not) all find the same key.
    pub fn layout_key(namespace: &str) -> String {
        format!("{namespace}|layout")
    }

    /// How many shards the namespace has (1 unless [`sharded`](Self::sharded)).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The index (in [`shards`](Self::shards)) of `key`'s shard: decided by the part of the key
    /// before its first `#`, so the variant and body keys derived from a key share its shard.
    #[inline]
    pub fn shard_of(&self, key: &str) -> usize {
        usize::from(shard::shard_index(key, self.shards.len() as u16))
    }

    /// `key`'s shard.
    #[inline]
    pub fn shard_for(&self, key: &str) -> &Shard {
        &self.shards[self.shard_of(key)]
    }

    /// Shard `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`shard_count`](Self::shard_count).
    pub fn shard(&self, i: usize) -> &Shard {
        &self.shards[i]
    }

    /// Every shard, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The store key of an entry (in its shard).
    pub fn entry(&self, key: &str) -> String {
        self.shard_for(key).entry(key)
    }

    /// A glob over full store keys matching the entries that `pattern` (relative to the
    /// namespace) names in every shard at once: `{app|???}:PAT` when sharded, else the one
    /// shard's `app:PAT`. Exact: the tags have one length, from an alphabet without glob
    /// characters, and `|` never occurs in a namespace.
    pub fn entry_glob(&self, pattern: &str) -> String {
        match &self.every_shard {
            Some(prefix) => format!("{prefix}{pattern}"),
            None => self.shards[0].entry(pattern),
        }
    }

    /// How long tombstones live: a fill that takes longer is never stored.
    pub fn tombstone_ttl(&self) -> Duration {
        self.tombstone_ttl
    }

    /// The key (relative to the namespace) of a full entry key of this namespace, or None if
    /// `full` is not one (another namespace's, a bookkeeping key, or in the wrong shard).
    pub fn relative<'f>(&self, full: &'f str) -> Option<&'f str> {
        let prefix_len = match &self.every_shard {
            Some(glob) => glob.len(),
            None => self.shards[0].entry_prefix.len(),
        };
        let key = full.get(prefix_len..)?;
        (full.as_bytes()[..prefix_len] == *self.shard_for(key).entry_prefix.as_bytes())
            .then_some(key)
    }

    /// The key space of this namespace's bounded routes ([`ranked::RankedSpace::route`]): its first
    /// shard alone. A bounded route keeps every entry and its index on one shard, so its
    /// capacity and eviction order are exact and each of its operations stays one atomic script
    /// in one slot; a key invalidation reaches that shard as well as the key's own
    /// ([`invalidation_groups`](Self::invalidation_groups)). The same space when unsharded.
    pub fn bounded(&self) -> KeySpace {
        Self {
            shards: Arc::new([self.shards[0].clone()]),
            every_shard: None,
            tombstone_ttl: self.tombstone_ttl,
        }
    }

    /// Groups `keys` as a key invalidation applies them: [`by_shard`](Self::by_shard), and in a
    /// sharded namespace every key also in shard 0, where a [bounded](Self::bounded) route
    /// would hold it (its tombstone there refuses such a route's fills in flight).
    pub fn invalidation_groups<'k>(&self, keys: &'k [String]) -> Vec<(usize, Vec<&'k String>)> {
        let mut groups = self.by_shard(keys);
        if self.shards.len() == 1 || keys.is_empty() {
            return groups;
        }
        if groups.first().is_none_or(|(s, _)| *s != 0) {
            groups.insert(0, (0, Vec::new()));
        }
        let home = &mut groups[0].1;
        home.clear();
        home.extend(keys.iter());
        groups
    }

    /// Groups `keys` by shard: `(shard index, the keys in it)` for each shard holding any, in
    /// shard order, each group in the keys' order.
    pub fn by_shard<'k>(&self, keys: &'k [String]) -> Vec<(usize, Vec<&'k String>)> {
        if self.shards.len() == 1 {
            return if keys.is_empty() {
                Vec::new()
            } else {
                vec![(0, keys.iter().collect())]
            };
        }
        let mut groups: Vec<Vec<&String>> = vec![Vec::new(); self.shards.len()];
        for k in keys {
            groups[self.shard_of(k)].push(k);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }
}

/// The result of [`Store::read`].
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// The encoded entry, if present.
    pub value: Option<Bytes>,
    /// The namespace's invalidation clock when the read happened; pass it to
    /// [`Write::since`] to guard the fill that follows a miss.
    pub clock: u64,
}

/// The result of [`Store::read_many`].
#[derive(Clone, Debug, Default)]
pub struct LookupMany {
    /// One value per key, in order.
    pub values: Vec<Option<Bytes>>,
    /// One invalidation clock per key, in order: the clock of the key's shard when the read
    /// happened (every key's is the same in a namespace of one shard); the fill of key `n`
    /// passes `clocks[n]` as its [`Write::since`].
    pub clocks: Vec<u64>,
}

/// A write to a store.
#[derive(Clone, Debug)]
pub struct Write<'a> {
    /// The entry's key, relative to the namespace.
    pub key: &'a str,
    /// The encoded entry.
    pub value: Bytes,
    /// How long the store keeps it.
    pub ttl: Duration,
    /// Tags (surrogate keys) the entry carries.
    pub tags: &'a [String],
    /// `Some(clock)`: store only if nothing covering this entry was invalidated after `clock`
    /// and the store did not lose its state since (see the
    /// [module docs](self#the-invalidation-clock)).
    pub since: Option<u64>,
}

/// The result of [`Store::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Written {
    /// The entry was stored.
    Stored,
    /// Not stored: its key, a tag or a matching pattern was invalidated after the fill began.
    Superseded,
}

/// What to invalidate.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Target<'a> {
    /// Exact keys (relative to the namespace).
    Keys(&'a [String]),
    /// Every entry carrying one of these tags.
    Tags(&'a [String]),
    /// Every key matching this glob (relative to the namespace; already escaped as needed), as
    /// [`glob_match`] reads it.
    Pattern(&'a str),
}

/// A backend for `Cache`. See the [module docs](self) for the contract.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Reads an entry together with the namespace's invalidation clock.
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup>;

    /// [`Self::read`] for a store whose reads complete without waiting (it lives in this
    /// process): the same answer, returned at once. `None` (the default) means "ask
    /// [`Self::read`]"; a store that returns `Some` here must return exactly what `read` would.
    /// The cache tries it first, so an in-process hit is served without a future.
    fn read_now(&self, space: &KeySpace, key: &str) -> Option<Result<Lookup, StoreError>> {
        let _ = (space, key);
        None
    }

    /// Writes an entry, guarded by [`Write::since`], recording its tags.
    fn write<'a>(&'a self, space: &'a KeySpace, write: Write<'a>) -> StoreFuture<'a, Written>;

    /// Reads many entries (and the clock) in one operation, in the order of `keys`.
    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany>;

    /// Writes many entries in one operation, each guarded by its [`Write::since`] and recording
    /// its tags exactly as [`write`](Self::write) does; returns one [`Written`] per write, in
    /// order.
    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>>;

    /// Invalidates keys, tags or a pattern; returns how many entries were removed.
    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64>;

    /// Takes the fill lock of `key` for `lease` if nobody holds it (`SET NX PX`); true if taken.
    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Releases the fill lock of `key` if `token` still holds it (a lease that expired and was
    /// taken by another filler is left alone).
    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()>;

    /// Checks that the store answers.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Records `layout` (a namespace's key layout: [`KeySpace::layout`]) under `key` unless a
    /// layout is recorded there already, and returns the one recorded before (`None` when this
    /// call recorded it). The record has no TTL. Caches claim their layout before their first
    /// operation and then periodically, so processes whose layouts disagree (different numbers
    /// of shards) never miss each other's invalidations silently: the one that finds another layout reads around the cache and applies its
    /// invalidations in the recorded layout.
    ///
    /// The default keeps no record and returns `Ok(None)` (every layout is accepted); a store
    /// shared between processes should implement it, and a store wrapping another forwards it.
    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        let _ = (key, layout);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether every key of a namespace must be in one hash slot (Valkey Cluster): caches on
    /// this store then use [`KeySpace::hash_tagged`]. False by default; a store wrapping
    /// another returns the inner store's.
    fn needs_hash_tags(&self) -> bool {
        false
    }

    /// Whether this store implements sharded namespaces ([`KeySpace::sharded`]): every keyed
    /// operation in the key's [`Shard`], tag and pattern invalidations applied to every shard,
    /// batches split by shard. False by default (a cache with more than one shard then refuses
    /// to build); a store wrapping another returns the inner store's.
    fn supports_shards(&self) -> bool {
        false
    }

    /// A short name for logs and metrics (`valkey`, `memory`).
    fn name(&self) -> &'static str;

    /// The store's ranked-index capability, if it can hold count-bounded namespaces
    /// (`eviction`); `None` by default. A store wrapping another returns the
    /// inner store's (wrapped too, if the wrapper changes how operations behave).
    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        None
    }

    /// How caches on this store with an L1 tier hear each other's invalidations;
    /// `None` by default (such a store cannot back an L1 tier). A store that lives in one
    /// process returns clones of one [`LocalBus`]; a store wrapping another returns the inner
    /// store's.
    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        None
    }
}

/// A shared store is a store: every operation and capability is the inner store's.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        (**self).read(space, key)
    }

    fn read_now(&self, space: &KeySpace, key: &str) -> Option<Result<Lookup, StoreError>> {
        (**self).read_now(space, key)
    }

    fn write<'a>(&'a self, space: &'a KeySpace, write: Write<'a>) -> StoreFuture<'a, Written> {
        (**self).write(space, write)
    }

    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        (**self).read_many(space, keys)
    }

    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        (**self).write_many(space, writes)
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        (**self).invalidate(space, target)
    }

    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).try_lock(space, key, token, lease)
    }

    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        (**self).unlock(space, key, token)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        (**self).ping()
    }

    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        (**self).claim_layout(key, layout)
    }

    fn needs_hash_tags(&self) -> bool {
        (**self).needs_hash_tags()
    }

    fn supports_shards(&self) -> bool {
        (**self).supports_shards()
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        (**self).ranked()
    }

    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        (**self).bus()
    }
}

#[cfg(test)]
mod tests {
    use super::shard::{key_slot, shard_range};
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    /// Every name a shard gives out for `key` and tag `t` (the strings stores use).
    fn names(s: &Shard, key: &str) -> Vec<String> {
        vec![
            s.entry(key),
            s.clock().to_owned(),
            s.clock_origin().to_owned(),
            s.key_tombstone(key),
            s.tag_tombstone("t"),
            s.tag_set("t"),
            s.tag_drain("t"),
            s.lock(key),
            s.patterns(),
        ]
    }

    /// A namespace of one shard keeps the layout of every release before sharding, byte for
    /// byte (stored data and other processes depend on it).
    #[test]
    fn one_shard_keeps_the_layout() {
        let want = |ns: &str| {
            vec![
                format!("{ns}:user:1"),
                format!("{ns}|clock"),
                format!("{ns}|clock:origin"),
                format!("{ns}|inv:k:user:1"),
                format!("{ns}|inv:t:t"),
                format!("{ns}|tag:t"),
                format!("{ns}|tag-drain:t"),
                format!("{ns}|lock:user:1"),
                format!("{ns}|inv:patterns"),
            ]
        };
        for (space, ns) in [
            (KeySpace::new("app", TTL), "app"),
            (KeySpace::hash_tagged("app", TTL), "{app}"),
            (KeySpace::sharded("app", 1, TTL), "{app}"),
        ] {
            assert_eq!(space.shard_count(), 1);
            assert_eq!(space.shard_of("user:1"), 0);
            assert_eq!(names(space.shard_for("user:1"), "user:1"), want(ns));
            assert_eq!(space.entry("user:1"), format!("{ns}:user:1"));
            assert_eq!(space.entry_glob("user:*"), format!("{ns}:user:*"));
            assert_eq!(space.relative(&format!("{ns}:user:1")), Some("user:1"));
            assert_eq!(space.relative(&format!("{ns}|clock")), None);
        }
    }

    fn keys(n: usize) -> Vec<String> {
        // Plain, derived (`#`), long, multibyte and empty keys.
        let mut out: Vec<String> = (0..n).map(|i| format!("user:{i}")).collect();
        out.extend([
            "user:1#vary:3:abc".to_owned(),
            "user:1#body:ff".to_owned(),
            "é:ü:ß".to_owned(),
            String::new(),
            "x".repeat(300),
        ]);
        out
    }

    /// Every name of shard i of a sharded namespace is in the i-th slot range (so a shard's
    /// scripts run on one node and the shards spread over the primaries); a key's names are in
    /// its shard; derived keys share their key's shard; `relative` inverts `entry`; the glob of
    /// every shard matches each shard's entries and nothing else.
    #[test]
    fn sharded_names_stay_in_their_shard_and_slot_range() {
        for shards in [2u16, 3, 8, 128, 1000] {
            let space = KeySpace::sharded("app", shards, TTL);
            assert_eq!(space.shard_count(), usize::from(shards));
            for (i, shard) in space.shards().iter().enumerate() {
                let range = shard_range(i as u16, shards);
                for name in names(shard, "k") {
                    assert!(
                        range.contains(&key_slot(name.as_bytes())),
                        "{name} of shard {i}/{shards}: slot {} outside {range:?}",
                        key_slot(name.as_bytes())
                    );
                }
            }
            let other = KeySpace::sharded("app2", shards, TTL);
            let glob = space.entry_glob("user:*");
            for k in keys(500) {
                let i = space.shard_of(&k);
                let shard = space.shard_for(&k);
                assert_eq!(space.entry(&k), shard.entry(&k));
                assert_eq!(space.relative(&space.entry(&k)), Some(k.as_str()), "{k}");
                // The same key named in another shard is not this namespace's entry of it.
                let wrong = space.shard((i + 1) % space.shard_count()).entry(&k);
                assert_eq!(space.relative(&wrong), None, "{wrong}");
                assert_eq!(space.relative(&other.entry(&k)), None);
                assert_eq!(space.relative(shard.clock()), None);
                let derived = format!("{k}#vary:1:ab");
                if !k.contains('#') {
                    assert_eq!(space.shard_of(&derived), i, "{derived}");
                }
                let matches = glob_match(glob.as_bytes(), space.entry(&k).as_bytes());
                assert_eq!(matches, k.starts_with("user:"), "{glob} vs {k}");
                assert!(!glob_match(glob.as_bytes(), other.entry(&k).as_bytes()));
                for name in &names(shard, &k)[1..] {
                    assert!(!glob_match(glob.as_bytes(), name.as_bytes()), "{name}");
                }
            }
        }
    }

    /// Every layout this version builds reads back as the same key space (the same names), and
    /// layouts differ whenever names differ; anything else is not understood.
    #[test]
    fn layouts_round_trip_and_tell_layouts_apart() {
        let ttl = Duration::from_secs(60);
        let spaces = [
            KeySpace::new("app", ttl),
            KeySpace::hash_tagged("app", ttl),
            KeySpace::sharded("app", 2, ttl),
            KeySpace::sharded("app", 8, ttl),
            KeySpace::sharded("app", 128, ttl),
            KeySpace::sharded("app", 1024, ttl),
        ];
        let mut seen = std::collections::HashSet::new();
        for space in &spaces {
            let layout = space.layout();
            assert!(seen.insert(layout.clone()), "distinct: {layout}");
            // A test assertion (in #[cfg(test)]): a layout this version writes must parse back.
            let back = KeySpace::from_layout("app", &layout, ttl).expect(&layout);
            assert_eq!(back.layout(), layout);
            assert_eq!(back.shard_count(), space.shard_count());
            for key in ["", "user:1", "a#vary:x", "ü"] {
                assert_eq!(back.entry(key), space.entry(key), "{layout} {key}");
                assert_eq!(
                    names(back.shard_for(key), key),
                    names(space.shard_for(key), key)
                );
            }
            // Another namespace's layout is not this one's.
            assert!(
                KeySpace::from_layout("other", &layout, ttl).is_none(),
                "{layout}"
            );
        }
        assert_eq!(
            KeySpace::new("app", ttl).layout(),
            "tvc-layout/1 shards=1 entries=app:"
        );
        for bad in [
            "",
            "garbage",
            "tvc-layout/1 shards=0 entries=app:",
            "tvc-layout/1 shards=1025 entries={app|x}:",
            "tvc-layout/1 shards=x entries=app:",
            "tvc-layout/2 shards=1 entries=app:",
            "tvc-layout/1 shards=8 entries={app|zz}:",
            "tvc-layout/1 shards=1 entries=app",
        ] {
            assert!(KeySpace::from_layout("app", bad, ttl).is_none(), "{bad:?}");
        }
        assert_eq!(KeySpace::layout_key("app"), "app|layout");
    }

    /// `by_shard` partitions the keys: each key once, in its shard's group, in order.
    #[test]
    fn by_shard_partitions_keys_in_order() {
        for shards in [1u16, 2, 16] {
            let space = KeySpace::sharded("app", shards, TTL);
            let ks = keys(200);
            let groups = space.by_shard(&ks);
            let mut seen = 0;
            let mut last_shard = None;
            for (s, group) in &groups {
                assert!(last_shard < Some(*s), "shard order");
                last_shard = Some(*s);
                assert!(!group.is_empty());
                let want: Vec<&String> = ks.iter().filter(|k| space.shard_of(k) == *s).collect();
                assert_eq!(group, &want);
                seen += group.len();
            }
            assert_eq!(seen, ks.len());
            assert!(space.by_shard(&[]).is_empty());
        }
    }

    /// A key invalidation's groups: `by_shard`'s, and (sharded) every key in shard 0 too, where
    /// the bounded routes live; the bounded space is shard 0 alone.
    #[test]
    fn key_invalidations_also_reach_the_bounded_shard() {
        for shards in [1u16, 2, 16] {
            let space = KeySpace::sharded("app", shards, TTL);
            let bounded = space.bounded();
            assert_eq!(bounded.shard_count(), 1);
            assert_eq!(
                bounded.shard(0).entry_prefix(),
                space.shard(0).entry_prefix()
            );
            assert!(space.invalidation_groups(&[]).is_empty());
            for n in [0, 1, 5, 200] {
                let ks = keys(n);
                let groups = space.invalidation_groups(&ks);
                let own = space.by_shard(&ks);
                if shards == 1 {
                    assert_eq!(groups, own);
                    continue;
                }
                let all: Vec<&String> = ks.iter().collect();
                assert_eq!(groups[0], (0, all), "every key in shard 0");
                let rest: Vec<_> = own.iter().filter(|(s, _)| *s != 0).cloned().collect();
                assert_eq!(groups[1..], rest[..], "and each in its own shard");
                for k in &ks {
                    assert_eq!(bounded.entry(k), space.shard(0).entry(k));
                }
            }
        }
    }
}
