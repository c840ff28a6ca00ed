//! The ranked-index capability of a store: what bounded namespaces need.
//!
//! A store that can hold count-bounded namespaces implements [`RankedStore`] and returns itself
//! from [`Store::ranked`](super::Store::ranked). The policy is data ([`Spec`]: a [`Scoring`] and a
//! capacity), so a store applies any policy atomically on its side: Valkey in one Lua script per
//! operation, [`MemoryStore`](super::MemoryStore) under one lock. Both implement exactly the
//! same rules, step by step; the crate's eviction tests run every scenario on both.

use super::{KeySpace, Lookup, Shard, StoreFuture};
use bytes::Bytes;
use std::fmt;
use std::time::Duration;

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
    /// A scoring: what a set and a read do to an existing entry's rank, and which end goes.
    pub const fn new(on_set: Touch, on_get: Touch, evict: Evict) -> Self {
        Self {
            on_set,
            on_get,
            evict,
        }
    }

    /// First in, first out: sets stamp, reads do nothing, the lowest stamp goes.
    pub const FIFO: Self = Self::new(Touch::Stamp, Touch::Keep, Evict::Lowest);
    /// Last in, first out: sets stamp, reads do nothing, the highest stamp goes.
    pub const LIFO: Self = Self::new(Touch::Stamp, Touch::Keep, Evict::Highest);
    /// Least recently used: sets and reads stamp, the lowest stamp goes.
    pub const LRU: Self = Self::new(Touch::Stamp, Touch::Stamp, Evict::Lowest);
    /// Most recently used: sets and reads stamp, the highest stamp goes.
    pub const MRU: Self = Self::new(Touch::Stamp, Touch::Stamp, Evict::Highest);
    /// Least frequently used: sets and reads count a use and stamp; the fewest uses go, and among
    /// those the least recently used.
    pub const LFU: Self = Self::new(Touch::Count, Touch::Count, Evict::Lowest);

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
    /// One more use (saturating) and a fresh stamp.
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

/// Bits of a counting rank that hold the stamp by default (the rest hold the use count).
pub const STAMP_BITS: u8 = 33;

/// The most expired members one write (a set, a route record) removes from a namespace's
/// indexes before doing its own work (one `ZRANGEBYSCORE` and two `ZREM`s of at most this many
/// members); a write that must make room then looks for up to as many more, one at a time,
/// before evicting a live entry.
pub const TRIM_BATCH: usize = 100;

/// Everything a store needs to apply a policy to one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// How sets and reads rank entries, and which end is evicted.
    pub scoring: Scoring,
    /// The most entries the namespace holds (at least 1).
    pub capacity: usize,
    /// How many bits of a counting rank hold the stamp ([`STAMP_BITS`] unless testing the
    /// renumbering).
    pub stamp_bits: u8,
}

impl Spec {
    /// A spec for `scoring` and `capacity` (at least 1).
    pub fn new(scoring: Scoring, capacity: usize, stamp_bits: u8) -> Self {
        Self {
            scoring,
            capacity: capacity.max(1),
            stamp_bits,
        }
    }

    /// The largest use count a rank holds.
    pub fn max_uses(&self) -> u64 {
        (1u64 << (53 - u32::from(self.stamp_bits))) - 1
    }
}

/// The names of a bounded namespace's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankedSpace {
    /// Prepended to a key to name its value.
    pub value_prefix: String,
    /// The index (a sorted set on Valkey); also names the namespace in the memory registry.
    pub index: String,
    /// The stamp counter.
    pub seq: String,
    /// The expiry index (a sorted set of the members whose values have a TTL, scored by when
    /// they expire).
    pub expiry: String,
}

impl RankedSpace {
    /// A standalone namespace (`BoundedCache`), all under the hash tag `{namespace}`. Its
    /// values are `{namespace}|val:KEY`, a name no route cache uses: a route cache of the same
    /// namespace in the one-slot layout names its entries `{namespace}:KEY` (and its
    /// bookkeeping `{namespace}|clock`, `|inv:...`, `|tag:...`, `|lock:...`, `|evict:...`), so
    /// the two never read or overwrite each other's values.
    pub fn standalone(namespace: &str) -> Self {
        Self {
            value_prefix: format!("{{{namespace}}}|val:"),
            index: format!("{{{namespace}}}|idx"),
            seq: format!("{{{namespace}}}|seq"),
            expiry: format!("{{{namespace}}}|exp"),
        }
    }

    /// The bounded entries of a route cache's namespace (they are the namespace's entries; a
    /// bounded namespace has one shard, so `shard` is [`KeySpace::shard`]`(0)`). Its names
    /// derive from the shard alone, so a store's invalidation finds the index of the entries it
    /// removes (and removes their members: a no-op when the namespace is not bounded).
    pub fn route(shard: &Shard) -> Self {
        let prefix = shard.entry_prefix();
        let ns = prefix.strip_suffix(':').unwrap_or(prefix);
        Self {
            value_prefix: prefix.to_owned(),
            index: format!("{ns}|evict:idx"),
            seq: format!("{ns}|evict:seq"),
            expiry: format!("{ns}|evict:exp"),
        }
    }

    /// The store key of `key`'s value.
    pub fn value(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.value_prefix.len() + key.len());
        s.push_str(&self.value_prefix);
        s.push_str(key);
        s
    }
}

/// A store that can hold count-bounded namespaces (see the [module docs](self)). Every operation
/// is atomic on the store's side.
///
/// **Dead members never pin capacity.** A member whose value expired (its TTL, recorded in the
/// expiry index) or was removed ([`delete`](Self::delete), or an invalidation through
/// [`Store::invalidate`](super::Store::invalidate), which removes the members of the entries it
/// deletes from [`RankedSpace::route`]) is never evicted in place of a live one: every write
/// first drops up to [`TRIM_BATCH`] expired members, and a write that must make room drops
/// expired members before it evicts a live one. [`len`](Self::len) counts live entries only. A
/// value removed behind the index's back (Valkey's `maxmemory`) is a ghost until it is read,
/// comes up as the victim or its TTL would have ended.
pub trait RankedStore: Send + Sync + fmt::Debug + 'static {
    /// The value of `key`, touching its rank ([`Scoring::on_get`]); a member whose value is gone
    /// leaves the index.
    fn get<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Option<Bytes>>;

    /// Stores `value` (with `ttl`, or none), evicting what the policy names if `key` is new and
    /// the namespace is full; returns the evicted keys.
    fn set<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>>;

    /// Removes `key`; true if a live value was removed.
    fn delete<'a>(&'a self, space: &'a RankedSpace, key: &'a str) -> StoreFuture<'a, bool>;

    /// How many live entries the index holds: expired members are not counted. Read-only.
    fn len<'a>(&'a self, space: &'a RankedSpace) -> StoreFuture<'a, usize>;

    /// The live keys in eviction order, next victim first, without touching them.
    fn keys<'a>(&'a self, space: &'a RankedSpace, spec: Spec) -> StoreFuture<'a, Vec<String>>;

    /// Removes every entry and the index; returns how many live values were removed.
    fn clear<'a>(&'a self, space: &'a RankedSpace) -> StoreFuture<'a, u64>;

    /// A route cache's read: the entry at `keys.entry(key)` and the namespace's clock (as
    /// [`Store::read`](super::Store::read)), touching its rank in the same operation.
    fn route_read<'a>(
        &'a self,
        keys: &'a KeySpace,
        space: &'a RankedSpace,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Lookup>;

    /// After a route write stored `key`: ranks it and evicts to stay within capacity; returns
    /// the evicted keys. The expiry index records the entry's remaining lifetime, which both
    /// stores read from the entry itself (`ttl` is what it was written with).
    fn route_record<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        ttl: Duration,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>>;
}
