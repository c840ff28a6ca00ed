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
//! Each namespace has one clock (`app|clock`). Every invalidation advances it to one more than its
//! last value **and at least the store's time in microseconds**, and stamps its tombstones with
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

/// The names of a namespace's keys in a store.
#[derive(Clone, Debug)]
pub struct KeySpace {
    entry_prefix: String,
    meta_prefix: String,
    clock_key: String,
    origin_key: String,
    tombstone_ttl: Duration,
}

impl KeySpace {
    /// A key space for `namespace`; tombstones live for `tombstone_ttl`.
    pub fn new(namespace: &str, tombstone_ttl: Duration) -> Self {
        Self {
            entry_prefix: format!("{namespace}:"),
            meta_prefix: format!("{namespace}|"),
            clock_key: format!("{namespace}|clock"),
            origin_key: format!("{namespace}|clock:origin"),
            tombstone_ttl,
        }
    }

    /// A key space whose keys all share the hash tag `{namespace}`, so they map to one
    /// Valkey Cluster slot and the cache's multi-key scripts (the fill guard reads the entry, the
    /// clock, tombstones and tag sets together) run on one node. Caches on a store whose
    /// [`Store::needs_hash_tags`] is true use it: `{app}:user:1`, `{app}|clock`, ...
    pub fn hash_tagged(namespace: &str, tombstone_ttl: Duration) -> Self {
        Self::new(&format!("{{{namespace}}}"), tombstone_ttl)
    }

    /// The store key of an entry.
    pub fn entry(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.entry_prefix.len() + key.len());
        s.push_str(&self.entry_prefix);
        s.push_str(key);
        s
    }

    /// The prefix of every entry key (`namespace:`).
    pub fn entry_prefix(&self) -> &str {
        &self.entry_prefix
    }

    /// The invalidation clock (read with every lookup, so computed once).
    pub fn clock(&self) -> &str {
        &self.clock_key
    }

    /// The clock's origin: the clock value this store began counting at, so a fill that read a
    /// clock from before it (the store lost its data meanwhile) is refused. See the
    /// [module docs](self#the-invalidation-clock).
    pub fn clock_origin(&self) -> &str {
        &self.origin_key
    }

    /// The tombstone left by invalidating `key`.
    pub fn key_tombstone(&self, key: &str) -> String {
        format!("{}inv:k:{key}", self.meta_prefix)
    }

    /// The tombstone left by invalidating `tag`.
    pub fn tag_tombstone(&self, tag: &str) -> String {
        format!("{}inv:t:{tag}", self.meta_prefix)
    }

    /// The set of entry keys carrying `tag`.
    pub fn tag_set(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.meta_prefix)
    }

    /// Where an invalidation of `tag` moves its set while it removes the members in steps.
    pub fn tag_drain(&self, tag: &str) -> String {
        format!("{}tag-drain:{tag}", self.meta_prefix)
    }

    /// The fill lock of `key`.
    pub fn lock(&self, key: &str) -> String {
        format!("{}lock:{key}", self.meta_prefix)
    }

    /// The recently invalidated patterns (a sorted set scored by clock).
    pub fn patterns(&self) -> String {
        format!("{}inv:patterns", self.meta_prefix)
    }

    /// How long tombstones live: a fill that takes longer is never stored.
    pub fn tombstone_ttl(&self) -> Duration {
        self.tombstone_ttl
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
    /// The namespace's invalidation clock when the read happened.
    pub clock: u64,
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

    /// Whether every key of a namespace must be in one hash slot (Valkey Cluster): caches on
    /// this store then use [`KeySpace::hash_tagged`]. False by default; a store wrapping
    /// another returns the inner store's.
    fn needs_hash_tags(&self) -> bool {
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

    fn needs_hash_tags(&self) -> bool {
        (**self).needs_hash_tags()
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
