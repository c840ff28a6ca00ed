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
//! ## The bound across instances
//!
//! An announcement reaches another instance some time after the invalidation returned (the
//! `PUBLISH` is acknowledged when Valkey has queued it to the subscribers; each of them still has
//! to read its socket and run the message). Until it arrives, that instance's L1 may serve the
//! entry the invalidation removed. Measured with `tools/bench`'s `l1_lag` (BENCHMARKS.md,
//! "L1 announcement delay"), from the moment `invalidate_key` returned to the moment another
//! instance's subscription ran the message, on 2 shared cores: p50 0.12 ms, p99 0.3 ms, max 8 ms
//! idle; p50 0.06 ms, p99 23 ms, **max 414 ms** under load (reader tasks and spinning threads on
//! the same cores). No fixed delay can be promised, so the guarantee of
//! [`crate::invalidate`] holds in the invalidating process at once and in the others within a
//! bound you choose:
//!
//! - **[`l1_max_lag`](crate::CacheBuilder::l1_max_lag)** (default 1 s): a read served from L1
//!   at time `t` has applied every invalidation any instance acknowledged before `t - max_lag`.
//!   The tier checks it, it does not assume it: it publishes a *probe* on the invalidation
//!   channel (every `max_lag / 4` while it serves reads and for 10 s after the last one: one
//!   small `PUBLISH` per period and instance, which every instance receives and skips) and,
//!   since Valkey delivers a
//!   channel's messages to each subscriber in the order it received them, its probe coming back
//!   means every announcement acknowledged before the probe was sent has been applied. While no
//!   probe came back within `max_lag` (an overloaded instance, a slow Valkey, a frozen
//!   connection the heartbeat has not caught yet), reads skip L1 and go to the store
//!   ([`L1Stats::lagging`]): a lagging instance fails closed, it does not serve older data.
//!   So the window in which another instance may serve a removed entry is at most `max_lag`,
//!   whatever the load, and in practice the delay above.
//! - **[`l1_strict`](crate::CacheBuilder::l1_strict)**: an announced invalidation returns only
//!   `max_lag` after its announcement was acknowledged. Then no read that starts after it
//!   returned, in any process with the same `l1_max_lag`, is served an older entry from L1: the
//!   promise of [`crate::invalidate`] without a window, for `max_lag` of latency on every
//!   invalidation (pair it with a short `l1_max_lag`, 100 to 250 ms).
//!
//! On a [`MemoryStore`](crate::MemoryStore) the bound is zero (announcements are applied before
//! `publish` returns). A custom bus that does not promise order
//! ([`InvalidationBus::ordered`]) gets no probes: there the bound is the L1 TTL. The order
//! holds on one Valkey server and on a cluster (every `PUBLISH` of a channel is routed to the
//! primary of the channel's slot, which forwards messages to the other nodes over one link each,
//! in order); during a failover of that primary it may not, and the subscription loss that
//! usually comes with it makes the instance deaf (below) instead.
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
    /// Reads that skipped L1 because its announcements were not confirmed within
    /// [`l1_max_lag`](crate::CacheBuilder::l1_max_lag) (they went to the store; see
    /// [the bound](self#the-bound-across-instances)).
    pub lagging: u64,
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

/// The default [`CacheBuilder::l1_max_lag`](crate::CacheBuilder::l1_max_lag).
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);

/// The longest [`CacheBuilder::l1_max_lag`](crate::CacheBuilder::l1_max_lag) that
/// [`l1_strict`](crate::CacheBuilder::l1_strict) accepts (each announced invalidation waits it).
pub const MAX_STRICT_LAG: Duration = Duration::from_secs(60);

/// L1 settings collected by the builder.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Capacity and TTL of the tier, if on.
    pub(crate) tier: Option<(u64, Duration)>,
    /// Whether to announce invalidations (default: with a tier).
    pub(crate) publish: Option<bool>,
    /// How far behind the announcements a tier may be and still serve ([`Lag`]).
    pub(crate) max_lag: Duration,
    /// Whether invalidations wait `max_lag` after their announcement before they return.
    pub(crate) strict: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tier: None,
            publish: None,
            max_lag: DEFAULT_MAX_LAG,
            strict: false,
        }
    }
}

/// A cache's L1 machinery: its tier (if on) and how it announces invalidations.
pub(crate) struct State {
    tier: Option<Arc<Tier>>,
    bus: Option<Arc<dyn InvalidationBus>>,
    publish: bool,
    /// `l1_strict`: what an announcing invalidation waits before it returns.
    strict_wait: Option<Duration>,
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
    /// If L1 is on and the store has no [`InvalidationBus`], or with `l1_strict` and an
    /// `l1_max_lag` above [`MAX_STRICT_LAG`].
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
            Tier::new(capacity, ttl, id, namespace, &channel, bus.clone(), cfg.max_lag)
        });
        let publish = match &bus {
            // Free: every cache on an in-process bus announces.
            Some(b) if b.is_local() => true,
            Some(_) => cfg.publish.unwrap_or(tier.is_some()),
            None => false,
        };
        assert!(
            !cfg.strict || cfg.max_lag <= MAX_STRICT_LAG,
            "CacheBuilder::l1_strict needs an l1_max_lag of at most {MAX_STRICT_LAG:?} (each announced invalidation waits it), not {:?}",
            cfg.max_lag
        );
        // A local bus delivers before `publish` returns: nothing to wait for.
        let strict_wait = (cfg.strict && publish && bus.as_ref().is_some_and(|b| !b.is_local()))
            .then_some(cfg.max_lag);
        Self {
            tier,
            bus,
            publish,
            strict_wait,
            id,
            channel,
        }
    }

    /// With [`CacheBuilder::l1_strict`](crate::CacheBuilder::l1_strict): how long an
    /// invalidation that was announced waits before it returns, so that every instance's L1 has
    /// applied it or stopped serving ([`Lag`]).
    pub(crate) fn strict_wait(&self) -> Option<Duration> {
        self.strict_wait
    }

    /// Whether the tier is on.
    pub(crate) fn is_enabled(&self) -> bool {
        self.tier.is_some()
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
            probe: None,
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
    lagging: AtomicU64,
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
    /// The bus and channel (probes are published on it).
    bus: Arc<dyn InvalidationBus>,
    channel: String,
    /// How far behind the announcements this tier is; None on a bus that gives no order to go
    /// by (a custom one) or that delivers before `publish` returns (a local one).
    lag: Option<Lag>,
    /// This tier, for its background prober.
    me: std::sync::Weak<Tier>,
}

/// How long a probe's `PUBLISH` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How far behind the announcements a tier is: what [`CacheBuilder::l1_max_lag`] bounds.
///
/// On an ordered bus ([`InvalidationBus::ordered`]: on Valkey, one server puts every `PUBLISH` of
/// a channel in one order, and on a cluster every `PUBLISH` of the channel goes to the primary
/// of its slot, which forwards them to the other nodes over one link each, in order), a tier
/// publishes a *probe* on the invalidation channel itself, carrying the instant it sent it. When
/// its probe comes back, every announcement whose `PUBLISH` was acknowledged before the probe was
/// sent has been delivered, and applied, before it. `confirmed` is the send instant of the
/// latest probe back: every invalidation announced before it has been applied here. A lookup
/// serves from L1 only while `now - confirmed <= max_lag`; otherwise it reads the store. Probes
/// are sent at most every `max_lag / 4`: by a lookup when one is due, and by a background task
/// of the tier while it had a lookup in the last [`KEEP_PROBING`] (so a tier read now and then
/// is still confirmed when the next read comes; an idle tier sends nothing). A subscription
/// that (re)starts counts as confirmed (L1 was flushed). Nothing here is needed for
/// correctness but the check in [`Tier::caught_up`]: a probe lost or late only makes lookups
/// read the store.
///
/// [`CacheBuilder::l1_max_lag`]: crate::CacheBuilder::l1_max_lag
struct Lag {
    base: std::time::Instant,
    max_ns: u64,
    every_ns: u64,
    /// Nanoseconds from `base` to the send instant of the latest probe back (or the latest
    /// subscription).
    confirmed: AtomicU64,
    /// Nanoseconds from `base` to the latest probe sent.
    last_probe: AtomicU64,
    /// Nanoseconds from `base` to the latest lookup.
    last_lookup: AtomicU64,
    /// Whether the background probing task runs.
    keeper: AtomicBool,
}

/// How long after its latest lookup a tier keeps sending probes in the background.
const KEEP_PROBING: Duration = Duration::from_secs(10);

impl Lag {
    fn new(max_lag: Duration) -> Self {
        let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        Self {
            base: std::time::Instant::now(),
            max_ns: ns(max_lag),
            every_ns: ns((max_lag / 4).max(Duration::from_millis(5))),
            confirmed: AtomicU64::new(0),
            last_probe: AtomicU64::new(0),
            last_lookup: AtomicU64::new(0),
            keeper: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }

    /// Every announcement made before `at` (nanoseconds from `base`) has been applied.
    fn confirm(&self, at: u64) {
        self.confirmed.fetch_max(at, Ordering::AcqRel);
    }

    /// Claims the probe due at `now`, if one is (at most one per `every_ns`, across threads).
    fn probe_due(&self, now: u64) -> bool {
        let last = self.last_probe.load(Ordering::Acquire);
        now.saturating_sub(last) >= self.every_ns
            && self
                .last_probe
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and unit values only: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An invalidation as announced on the bus.
///
/// A **probe** (see [`Lag`]) is a message whose `probe` is set (the instant its sender sent it)
/// and whose `op` is an empty key list: versions of the crate that do not know probes apply it
/// as a no-op (serde skips the unknown field).
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    from: u64,
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probe: Option<u64>,
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
        bus: Arc<dyn InvalidationBus>,
        max_lag: Duration,
    ) -> Arc<Self> {
        let lag = (bus.ordered() && !bus.is_local()).then(|| Lag::new(max_lag));
        let tier = Arc::new_cyclic(|me| Tier {
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
            bus: bus.clone(),
            channel: channel.to_owned(),
            lag,
            me: me.clone(),
        });
        let sink: Arc<dyn BusSink> = tier.clone();
        let subscription = bus.subscribe(channel, Arc::downgrade(&sink));
        let _ = tier.subscription.set(subscription);
        tier
    }

    /// Whether this tier's announcements are confirmed within `max_lag` (always, without a
    /// [`Lag`]); sends a probe if one is due, and starts the background prober if it is not
    /// running.
    fn caught_up(&self) -> bool {
        let Some(lag) = &self.lag else {
            return true;
        };
        let now = lag.now();
        lag.last_lookup.fetch_max(now, Ordering::Relaxed);
        if lag.probe_due(now) {
            self.probe(now);
        }
        if !lag.keeper.swap(true, Ordering::AcqRel) {
            self.keep_probing(lag);
        }
        now.saturating_sub(lag.confirmed.load(Ordering::Acquire)) <= lag.max_ns
    }

    /// The background prober: sends the probes due while the tier had a lookup in the last
    /// [`KEEP_PROBING`], then stops (the next lookup starts it again). It holds the tier only
    /// weakly, so it ends with it. Without a Tokio runtime, none runs.
    fn keep_probing(&self, lag: &Lag) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            lag.keeper.store(false, Ordering::Release);
            return;
        };
        let me = self.me.clone();
        let every = Duration::from_nanos(lag.every_ns);
        let keep = KEEP_PROBING.as_nanos() as u64;
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tier) = me.upgrade() else { return };
                let Some(lag) = &tier.lag else { return };
                let now = lag.now();
                if now.saturating_sub(lag.last_lookup.load(Ordering::Relaxed)) > keep {
                    // A lookup racing this may find it still running and start none: the one
                    // after it will (and lookups probe by themselves meanwhile).
                    lag.keeper.store(false, Ordering::Release);
                    return;
                }
                if tier.listening.load(Ordering::SeqCst) && lag.probe_due(now) {
                    tier.probe(now);
                }
            }
        });
    }

    /// Publishes a probe sent at `at` (see [`Lag`]), from a task of its own (a lookup never
    /// waits for it). Without a Tokio runtime, none is sent.
    fn probe(&self, at: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let message = Message {
            from: self.id,
            op: Op::Keys(Vec::new()),
            probe: Some(at),
        };
        // A message of strings and numbers always serializes.
        let Ok(payload) = serde_json::to_vec(&message) else {
            return;
        };
        let (bus, channel) = (self.bus.clone(), self.channel.clone());
        rt.spawn(async move {
            let _ = tokio::time::timeout(PROBE_TIMEOUT, bus.publish(&channel, &payload)).await;
        });
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
        if !self.caught_up() {
            // Announcements may be missing: read the store (its value may still fill L1: a
            // message that arrives later removes it, and hits wait for the next confirmation).
            self.counters.lagging.fetch_add(1, Ordering::Relaxed);
            return Err(Some(self.ticket(key)));
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
            // Flushed: nothing here predates the subscription, which delivers every
            // announcement from now on.
            if let Some(lag) = &self.lag {
                lag.confirm(lag.now());
            }
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
            // Our own probe, back: every announcement published before it was applied.
            Ok(Message {
                from,
                probe: Some(at),
                ..
            }) if from == self.id => {
                if let Some(lag) = &self.lag {
                    lag.confirm(at);
                }
            }
            // Another instance's probe (a no-op), or our own announcement (applied already).
            Ok(m) if m.probe.is_some() || m.from == self.id => {}
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
            lagging: c.lagging.load(Ordering::Relaxed),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The message layout of versions that do not know probes.
    #[derive(Deserialize)]
    struct OldMessage {
        #[allow(dead_code)]
        from: u64,
        op: Op,
    }

    #[test]
    fn a_probe_is_a_no_op_for_versions_that_do_not_know_probes() {
        let probe = Message {
            from: 7,
            op: Op::Keys(Vec::new()),
            probe: Some(42),
        };
        let bytes = serde_json::to_vec(&probe).unwrap();
        let old: OldMessage = serde_json::from_slice(&bytes).unwrap();
        assert!(matches!(old.op, Op::Keys(k) if k.is_empty()));
        // And an announcement of theirs is one here (no probe field).
        let theirs = br#"{"from":9,"op":{"keys":["a"]}}"#;
        let m: Message = serde_json::from_slice(theirs).unwrap();
        assert!(m.probe.is_none());
        assert!(matches!(m.op, Op::Keys(k) if k == ["a"]));
    }

    #[test]
    fn lag_confirms_monotonically_and_claims_one_probe_per_period() {
        let lag = Lag::new(Duration::from_millis(400));
        assert_eq!(lag.every_ns, 100_000_000);
        lag.confirm(500);
        lag.confirm(300);
        assert_eq!(lag.confirmed.load(Ordering::Acquire), 500);
        let t = 1_000_000_000;
        assert!(lag.probe_due(t));
        assert!(!lag.probe_due(t), "claimed once");
        assert!(!lag.probe_due(t + 99_999_999));
        assert!(lag.probe_due(t + 100_000_000));
    }
}
