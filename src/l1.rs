//! The L1 tier: an optional in-process cache in front of the store, kept coherent across
//! instances by announcing every invalidation on Valkey pub/sub.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_valkey_cache::{Cache, ValkeyStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder(ValkeyStore::new("redis://127.0.0.1:6379")?)
//!     .namespace("shop")
//!     .l1(10_000, Duration::from_secs(5)) // up to 10,000 entries, each for at most 5 s
//!     .build();
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! With [`CacheBuilder::l1`](crate::CacheBuilder::l1), every read of the cache ([`CacheLayer`](crate::CacheLayer) routes,
//! [`get_or_set`](crate::Cache::get_or_set), [`get`](crate::Cache::get)) first looks in a
//! bounded in-process cache ([moka]) of **encoded entries**: the same bytes the store would
//! return, so freshness, stale serving, early refresh and single-flight work exactly as without
//! L1. An L1 hit makes no network call. L1 is filled by store reads that find a value and by
//! guarded writes the store accepted (fills after misses and refreshes). It only ever holds
//! *fresh* entries: an entry lives in L1 for `min(l1 ttl, its remaining freshness)`, so stale
//! entries (stale-while-revalidate, stale-if-error) are always served from the store, and the
//! refresh they trigger is guarded by the store's current invalidation clock.
//!
//! # Granularity: one L1 per [`Cache`](crate::Cache)
//!
//! The L1 belongs to the `Cache` (one namespace), not to a route: every layer and the function
//! cache on that `Cache` share it. Coherence is per namespace anyway (one invalidation clock, one
//! pub/sub channel, one subscription), so one tier per `Cache` keeps all of it (fill guards, the
//! subscription, deaf mode, statistics) in one place, and an invalidation made through any route
//! or call drops the entry whichever route filled it. To keep a route out of L1, give it a
//! `Cache` of its own namespace without `l1`.
//!
//! Not served from L1: batch reads ([`get_many`](crate::Cache::get_many),
//! [`get_or_set_many`](crate::Cache::get_or_set_many): one store round trip for the batch), and
//! routes with [`eviction`](crate::CacheLayer::eviction): their reads go to the store, because
//! every read must count as a use for the eviction policy (an L1 would hide the hottest keys from
//! LRU/LFU, which would then evict them first).
//!
//! # Coherence across instances
//!
//! Every invalidation (keys, pattern, tags) run by a cache with L1 is published, after it took
//! effect in the store, on the channel `{namespace}|inv`, and every cache with L1 subscribes to
//! it on a dedicated pub/sub connection and drops what the message names:
//!
//! - **keys**: exactly those keys;
//! - **patterns**: every L1 key the glob matches (the crate's Valkey-compatible matcher);
//! - **tags**: the **whole** L1 of the namespace. Entries do not carry their tags (the store keeps
//!   tag → keys sets, and an instance that filled its L1 from a store read never saw the tags), so
//!   a per-instance tag index would be incomplete, and an incomplete index is a stale read. If
//!   your hot write path invalidates by tag at a high rate, L1 gains little; invalidate by key
//!   there.
//!
//! The instance that runs an invalidation drops its own L1 entries synchronously, before the
//! call returns (and even if the store failed). If the store part succeeds but the announcement
//! cannot be published, the invalidation returns the error, so routes' invalidations are queued
//! and retried (see [`invalidation_retry`](crate::CacheBuilder::invalidation_retry)) and the
//! retry publishes again.
//!
//! **Every process that invalidates a namespace some instance serves from L1 must announce its
//! invalidations**: caches with L1 do; a process without L1 (a worker, an admin tool) sharing the
//! namespace needs [`CacheBuilder::publish_invalidations`](crate::CacheBuilder::publish_invalidations)`(true)`.
//!
//! Fills and invalidations race safely: a fill (a store read that found a value, or a stored
//! write) is put into L1 only if no invalidation of its key, no pattern or tag invalidation and no
//! loss of the subscription happened in this process since before its store operation started,
//! checked atomically with the insertion. An invalidation heard after a fill removes it.
//!
//! ## Deaf mode
//!
//! While the subscription is down (connection lost, Valkey restarting, no pong to the heartbeat
//! `PING` sent every second within 2 s), the instance cannot hear invalidations, so it flushes its
//! L1 and **bypasses** it: every read goes to the store, nothing is filled. A background task
//! reconnects with backoff (50 ms doubling to 2 s); once subscribed again it flushes once more
//! (messages sent during the gap are lost) and serves from L1 again. [`L1Stats::listening`]
//! shows the state. The L1 TTL bounds staleness in any case, including failures no heartbeat can
//! see fast enough (a partition shorter than the heartbeat timeout).
//!
//! What is **not** announced: values changed in place by [`set`](crate::Cache::set),
//! [`set_many`](crate::Cache::set_many) and [`warm_values`](crate::Cache::warm_values) (the local
//! L1 drops those keys at once; other instances see the new value when their L1 copy expires:
//! invalidate the key as well to drop it everywhere now), writes to Valkey by other clients, and
//! route eviction removing an entry (an evicted entry is still a correct one).
//!
//! On a [`MemoryStore`](crate::MemoryStore) (one process) the announcement is a synchronous call
//! to the other caches sharing the store, so L1 there is simply an in-process layer that is never
//! deaf. A custom [`Store`] supports L1 by returning an
//! [`InvalidationBus`] from [`Store::bus`] (one
//! [`LocalBus`](crate::store::LocalBus) if it lives in one process); without one,
//! [`CacheBuilder::l1`](crate::CacheBuilder::l1) panics at `build`.
//!
//! Design records (why pub/sub rather than RESP3 client-side caching, why moka): ARCHITECTURE.md ›
//! The L1 tier.

use crate::entry::{now_ms, Entry};
use crate::store::bus::{BusSink, InvalidationBus, Subscription};
use crate::store::{glob_match, Lookup, Store, StoreError, Target, Written};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

/// Key stripes of the fill guard (a key invalidation only aborts fills of keys in its stripe).
const STRIPES: usize = 64;

/// A snapshot of a cache's L1 tier ([`Cache::l1_stats`](crate::Cache::l1_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct L1Stats {
    /// Reads answered from L1.
    pub hits: u64,
    /// Reads L1 could have answered but did not have (they went to the store).
    pub misses: u64,
    /// Reads that skipped L1 because it was deaf (subscription down).
    pub bypassed: u64,
    /// Entries put into L1.
    pub fills: u64,
    /// Entries in L1 (approximate: expired and dropped entries leave it lazily).
    pub entries: u64,
    /// Whether L1 hears invalidations (and so is used). Always true on an in-process bus.
    pub listening: bool,
    /// Invalidation messages from other instances applied.
    pub messages: u64,
    /// Times the subscription was established (the first time included).
    pub subscriptions: u64,
    /// Times the subscription was lost (each time L1 went deaf and was flushed).
    pub subscriptions_lost: u64,
}

/// L1 settings collected by the builder.
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    /// Capacity and TTL of the tier, if on.
    pub(crate) tier: Option<(u64, Duration)>,
    /// Whether to announce invalidations (default: with a tier).
    pub(crate) publish: Option<bool>,
}

/// A cache's L1 machinery: its tier (if on) and how it announces invalidations.
pub(crate) struct State {
    tier: Option<Arc<Tier>>,
    bus: Option<Arc<dyn InvalidationBus>>,
    publish: bool,
    id: u64,
    channel: String,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("on", &self.tier.is_some())
            .field("publish", &self.publish)
            .finish_non_exhaustive()
    }
}

impl State {
    /// # Panics
    ///
    /// If L1 is on and the store has no [`InvalidationBus`].
    pub(crate) fn new(cfg: &Config, store: &dyn Store, namespace: &str) -> Self {
        let bus = store.bus();
        let id = fastrand::u64(..);
        let channel = format!("{namespace}|inv");
        let tier = cfg.tier.map(|(capacity, ttl)| {
            let bus = bus.as_ref().unwrap_or_else(|| {
                panic!(
                    "CacheBuilder::l1 needs a store that supports an L1 tier (ValkeyStore, MemoryStore, or one returning Store::bus), not {}",
                    store.name()
                )
            });
            Tier::new(capacity, ttl, id, namespace, &channel, bus.as_ref())
        });
        let publish = match &bus {
            // Free: every cache on an in-process bus announces.
            Some(b) if b.is_local() => true,
            Some(_) => cfg.publish.unwrap_or(tier.is_some()),
            None => false,
        };
        Self {
            tier,
            bus,
            publish,
            id,
            channel,
        }
    }

    /// Statistics of the tier, if on.
    pub(crate) fn stats(&self) -> Option<L1Stats> {
        self.tier.as_ref().map(|t| t.stats())
    }

    /// What the L1 instruments read at each collection, when the tier is on. It holds the tier
    /// weakly: a dropped cache's tier is freed, and then observed no more.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn stats_source(
        &self,
    ) -> Option<impl Fn() -> Option<L1Stats> + Send + Sync + 'static> {
        let tier = Arc::downgrade(self.tier.as_ref()?);
        Some(move || tier.upgrade().map(|t| t.stats()))
    }

    /// Drops every entry of the tier (this process only).
    pub(crate) fn flush(&self) {
        if let Some(t) = &self.tier {
            t.flush();
        }
    }

    /// An L1 hit, or what a fill from the store read needs (None: no L1, or deaf).
    pub(crate) fn lookup(&self, key: &str) -> Result<Lookup, Option<Ticket>> {
        match &self.tier {
            Some(t) => t.lookup(key),
            None => Err(None),
        }
    }

    /// After a store read that was an L1 miss: fill L1 with what it found.
    pub(crate) fn fill(&self, ticket: Ticket, key: &str, lookup: &Lookup) {
        if let (Some(t), Some(v)) = (&self.tier, &lookup.value) {
            t.fill(ticket, key, v, lookup.clock);
        }
    }

    /// Taken before a store write.
    pub(crate) fn ticket(&self, key: &str) -> Option<Ticket> {
        self.tier.as_ref().map(|t| t.ticket(key))
    }

    /// After a store write: a guarded write that was stored goes into L1; anything else that may
    /// have changed the value drops the local copy.
    pub(crate) fn after_write(
        &self,
        ticket: Option<Ticket>,
        key: &str,
        value: &Bytes,
        since: Option<u64>,
        result: &Result<Written, StoreError>,
    ) {
        let Some(t) = &self.tier else {
            return;
        };
        match (result, since, ticket) {
            (Ok(Written::Stored), Some(clock), Some(ticket)) => t.fill(ticket, key, value, clock),
            (Ok(Written::Superseded), Some(_), _) => {}
            _ => t.forget_keys([key]),
        }
    }

    /// Drops the local L1 copies of `keys` (values written in place).
    pub(crate) fn forget_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        if let Some(t) = &self.tier {
            t.forget_keys(keys);
        }
    }

    /// After an invalidation reached the store (or failed to): drops the local L1 entries it
    /// names.
    pub(crate) fn forget(&self, target: Target<'_>) {
        if let Some(t) = &self.tier {
            t.forget_target(target);
        }
    }

    /// The announcement of an invalidation that took effect in the store, and the bus and channel
    /// to publish it on; None when this cache does not announce (or there is nothing to say).
    pub(crate) fn announcement(
        &self,
        target: Target<'_>,
    ) -> Option<(&dyn InvalidationBus, &str, Vec<u8>)> {
        if !self.publish {
            return None;
        }
        if matches!(target, Target::Keys(k) | Target::Tags(k) if k.is_empty()) {
            return None;
        }
        let bus = self.bus.as_deref()?;
        let message = Message {
            from: self.id,
            op: Op::of(target),
        };
        // A message of strings and a number always serializes.
        let payload = serde_json::to_vec(&message).ok()?;
        Some((bus, self.channel.as_str(), payload))
    }
}

/// An in-process cache entry: the encoded entry, the clock of the store operation that produced
/// it (the guard of a fill that follows a hit), and how long L1 keeps it.
#[derive(Clone)]
struct Slot {
    value: Bytes,
    clock: u64,
    ttl: Duration,
}

struct PerEntry;

impl moka::Expiry<String, Slot> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Slot,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Slot,
        _updated_at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// What a fill must find unchanged to go into L1: taken before its store operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    global: u64,
    stripe: u64,
    idx: usize,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    fills: AtomicU64,
    messages: AtomicU64,
    subscriptions: AtomicU64,
    lost: AtomicU64,
}

/// One cache's L1.
pub(crate) struct Tier {
    entries: moka::sync::Cache<String, Slot>,
    ttl: Duration,
    id: u64,
    namespace: String,
    /// Fills hold it shared; pattern, tag and state changes exclusively.
    gate: RwLock<()>,
    /// Per key stripe: bumped (under its lock) by key invalidations.
    stripes: Box<[Mutex<u64>]>,
    /// Bumped by pattern and tag invalidations, flushes and listening state changes.
    global: AtomicU64,
    listening: AtomicBool,
    counters: Counters,
    /// The bus subscription (set once, right after the tier is created).
    subscription: OnceLock<Subscription>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and unit values only: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An invalidation as announced on the bus.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    from: u64,
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Keys(Vec<String>),
    Pattern(String),
    Tags(Vec<String>),
}

impl Op {
    fn of(target: Target<'_>) -> Self {
        match target {
            Target::Keys(k) => Op::Keys(k.to_vec()),
            Target::Pattern(p) => Op::Pattern(p.to_owned()),
            Target::Tags(t) => Op::Tags(t.to_vec()),
        }
    }
}

impl Tier {
    fn new(
        capacity: u64,
        ttl: Duration,
        id: u64,
        namespace: &str,
        channel: &str,
        bus: &dyn InvalidationBus,
    ) -> Arc<Self> {
        let tier = Arc::new(Tier {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntry)
                .build(),
            ttl,
            id,
            namespace: namespace.to_owned(),
            gate: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            global: AtomicU64::new(0),
            // Deaf until the bus says the subscription is up (a local bus says so at once).
            listening: AtomicBool::new(false),
            counters: Counters::default(),
            subscription: OnceLock::new(),
        });
        let sink: Arc<dyn BusSink> = tier.clone();
        let subscription = bus.subscribe(channel, Arc::downgrade(&sink));
        let _ = tier.subscription.set(subscription);
        tier
    }

    fn ensure_listener(&self) {
        if let Some(s) = self.subscription.get() {
            s.ensure_started();
        }
    }

    fn stripe_of(key: &str) -> usize {
        // FNV-1a: cheap, and only needs to spread keys over the stripes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h % STRIPES as u64) as usize
    }

    fn ticket(&self, key: &str) -> Ticket {
        let idx = Self::stripe_of(key);
        let stripe = *lock(&self.stripes[idx]);
        Ticket {
            global: self.global.load(Ordering::SeqCst),
            stripe,
            idx,
        }
    }

    /// An L1 hit, or the ticket a fill from the store needs (None: deaf, do not fill).
    fn lookup(&self, key: &str) -> Result<Lookup, Option<Ticket>> {
        self.ensure_listener();
        if !self.listening.load(Ordering::SeqCst) {
            self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return Err(None);
        }
        match self.entries.get(key) {
            Some(slot) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Lookup {
                    value: Some(slot.value),
                    clock: slot.clock,
                })
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                // Taken after the listening check: a state change since bumps `global`, and
                // `fill` checks both again.
                Err(Some(self.ticket(key)))
            }
        }
    }

    /// Puts a value the store returned or accepted into L1, unless something that could make it
    /// wrong happened since `ticket` was taken.
    fn fill(&self, ticket: Ticket, key: &str, value: &Bytes, clock: u64) {
        // Only fresh entries, for at most their remaining freshness.
        let Ok(entry) = Entry::decode(value) else {
            return;
        };
        let fresh_for = Duration::from_millis(entry.fresh_until_ms.saturating_sub(now_ms()));
        let ttl = fresh_for.min(self.ttl);
        if ttl.is_zero() {
            return;
        }
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let stripe = lock(&self.stripes[ticket.idx]);
        if !self.listening.load(Ordering::SeqCst)
            || self.global.load(Ordering::SeqCst) != ticket.global
            || *stripe != ticket.stripe
        {
            return;
        }
        self.entries.insert(
            key.to_owned(),
            Slot {
                value: value.clone(),
                clock,
                ttl,
            },
        );
        self.counters.fills.fetch_add(1, Ordering::Relaxed);
    }

    fn forget_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        for key in keys {
            let mut stripe = lock(&self.stripes[Self::stripe_of(key)]);
            *stripe += 1;
            self.entries.invalidate(key);
        }
    }

    /// Runs `f` with fills excluded, after invalidating every ticket taken so far.
    fn exclusive(&self, f: impl FnOnce()) {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        self.global.fetch_add(1, Ordering::SeqCst);
        f();
    }

    fn forget_pattern(&self, pattern: &str) {
        self.exclusive(|| {
            for (key, _) in self.entries.iter() {
                if glob_match(pattern.as_bytes(), key.as_bytes()) {
                    self.entries.invalidate(key.as_str());
                }
            }
        });
    }

    fn flush(&self) {
        self.exclusive(|| self.entries.invalidate_all());
    }

    fn forget(&self, op: &Op) {
        match op {
            Op::Keys(keys) => self.forget_keys(keys.iter().map(String::as_str)),
            Op::Pattern(p) => self.forget_pattern(p),
            // Entries do not carry their tags: see the module docs.
            Op::Tags(_) => self.flush(),
        }
    }

    fn forget_target(&self, target: Target<'_>) {
        match target {
            Target::Keys(keys) => self.forget_keys(keys.iter().map(String::as_str)),
            Target::Pattern(p) => self.forget_pattern(p),
            Target::Tags(_) => self.flush(),
        }
    }

    /// Subscribed: flush what may have been missed, then serve from L1 again.
    fn hear(&self) {
        self.exclusive(|| {
            self.entries.invalidate_all();
            self.listening.store(true, Ordering::SeqCst);
        });
        self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscription lost: stop serving and filling, and flush.
    fn deafen(&self) {
        self.exclusive(|| {
            self.listening.store(false, Ordering::SeqCst);
            self.entries.invalidate_all();
        });
        self.counters.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies a message from the channel.
    fn apply(&self, payload: &[u8]) {
        match serde_json::from_slice::<Message>(payload) {
            Ok(m) if m.from == self.id => {}
            Ok(m) => {
                self.counters.messages.fetch_add(1, Ordering::Relaxed);
                self.forget(&m.op);
            }
            Err(e) => {
                tracing::warn!(namespace = %self.namespace, error = %e, "unreadable L1 invalidation message; flushing L1");
                self.counters.messages.fetch_add(1, Ordering::Relaxed);
                self.flush();
            }
        }
    }

    fn stats(&self) -> L1Stats {
        // Applies pending inserts and removals, so `entries` is current.
        self.entries.run_pending_tasks();
        let c = &self.counters;
        L1Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            fills: c.fills.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            listening: self.listening.load(Ordering::SeqCst),
            messages: c.messages.load(Ordering::Relaxed),
            subscriptions: c.subscriptions.load(Ordering::Relaxed),
            subscriptions_lost: c.lost.load(Ordering::Relaxed),
        }
    }
}

impl BusSink for Tier {
    fn message(&self, payload: &[u8]) {
        self.apply(payload);
    }

    fn subscribed(&self) {
        self.hear();
    }

    fn lost(&self) {
        if self.listening.load(Ordering::SeqCst) {
            self.deafen();
        }
    }
}
