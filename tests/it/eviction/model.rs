//! The reference model of a bounded namespace (a plain list, linear scans, no cleverness) and the
//! harnesses that hold a store to it with random operation sequences: sets and overwrites with
//! and without TTLs, reads, deletes, key / tag / pattern invalidations, expiry, through
//! [`BoundedCache`] (standalone) and through a bounded route (`CacheLayer::eviction`).
//!
//! **Dead is absent.** In the model an entry whose TTL passed, or that was deleted or
//! invalidated, is gone: it holds no capacity, is never a victim and is not counted. A store
//! must answer exactly so, although it removes such members from its index lazily. After every
//! step the harness compares the live entries (read around the index), `len()`, the eviction
//! order and the evictions with the model's.
//!
//! **Time.** An entry written with [`Life::Short`] lives until the next [`Op::Expire`], which
//! sleeps until every such entry is dead (TTLs of tens of milliseconds, one sleep per
//! `Expire`). When the machine is so slow that a step ended after a short entry could have
//! expired, the attempt is inconclusive and the case runs again with TTLs twice as long, so no
//! case is skipped.

use super::support;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_valkey_cache::eviction::{BoundedCache, BoundedStore, Evict, EvictionPolicy};
use tower_valkey_cache::store::ranked::{RankedSpace, Scoring, Spec, Touch, STAMP_BITS};
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{Cache, CacheLayer};

/// How long a [`Life`] entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// No TTL.
    Forever,
    /// A TTL far longer than a case.
    Long,
    /// A TTL that ends at the next [`Op::Expire`].
    Short,
}

const LONG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The model.

struct Entry {
    key: String,
    uses: u64,
    stamp: u64,
    value: u32,
    short: bool,
}

/// A bounded namespace where dead entries are simply absent.
pub struct Model {
    scoring: Scoring,
    capacity: usize,
    seq: u64,
    entries: Vec<Entry>,
    /// Live entries evicted so far.
    pub evictions: u64,
}

impl Model {
    pub fn new(scoring: Scoring, capacity: usize) -> Self {
        Self {
            scoring,
            capacity,
            seq: 0,
            entries: Vec::new(),
            evictions: 0,
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    fn touch(&mut self, i: usize, touch: Touch) {
        match touch {
            Touch::Keep => {}
            Touch::Stamp => {
                self.seq += 1;
                self.entries[i].stamp = self.seq;
            }
            Touch::Count => {
                self.seq += 1;
                self.entries[i].uses += 1;
                self.entries[i].stamp = self.seq;
            }
        }
    }

    fn victim(&self) -> usize {
        let ranks = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.uses, e.stamp), i));
        match self.scoring.evict {
            Evict::Lowest => ranks.min().unwrap().1,
            Evict::Highest => ranks.max().unwrap().1,
        }
    }

    /// Stores `key`; returns the evicted keys.
    pub fn set(&mut self, key: &str, value: u32, short: bool) -> Vec<String> {
        if let Some(i) = self.position(key) {
            self.entries[i].value = value;
            self.entries[i].short = short;
            self.touch(i, self.scoring.on_set);
            return Vec::new();
        }
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let i = self.victim();
            evicted.push(self.entries.remove(i).key);
        }
        self.evictions += evicted.len() as u64;
        self.seq += 1;
        self.entries.push(Entry {
            key: key.to_owned(),
            uses: 1,
            stamp: self.seq,
            value,
            short,
        });
        evicted
    }

    pub fn get(&mut self, key: &str) -> Option<u32> {
        let i = self.position(key)?;
        self.touch(i, self.scoring.on_get);
        Some(self.entries[i].value)
    }

    /// Removes `key`; true if it was live.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.position(key) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Removes every live entry whose key satisfies `f`; returns how many.
    pub fn remove_where(&mut self, f: impl Fn(&str) -> bool) -> u64 {
        let before = self.entries.len();
        self.entries.retain(|e| !f(&e.key));
        (before - self.entries.len()) as u64
    }

    /// Every short entry dies; returns how many.
    pub fn expire(&mut self) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !e.short);
        before - self.entries.len()
    }

    pub fn live(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Live keys in eviction order, next victim first.
    pub fn keys(&self) -> Vec<String> {
        let mut ranked: Vec<_> = self
            .entries
            .iter()
            .map(|e| ((e.uses, e.stamp), e.key.clone()))
            .collect();
        ranked.sort();
        if self.scoring.evict == Evict::Highest {
            ranked.reverse();
        }
        ranked.into_iter().map(|(_, k)| k).collect()
    }

    pub fn live_set(&self) -> BTreeSet<String> {
        self.entries.iter().map(|e| e.key.clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Time.

/// Short entries' deadlines in one attempt.
struct Clock {
    short: Duration,
    /// The earliest instant a short entry written since the last `Expire` may die.
    deadline: Option<Instant>,
    /// The instant by which every short entry written since the last `Expire` is dead.
    all_dead: Option<Instant>,
}

/// Valkey's expiry has millisecond resolution.
const SLACK: Duration = Duration::from_millis(3);

impl Clock {
    fn new(short: Duration) -> Self {
        Self {
            short,
            deadline: None,
            all_dead: None,
        }
    }

    /// After a write with a short TTL sent at `sent`.
    fn wrote_short(&mut self, sent: Instant) {
        let d = sent + self.short;
        self.deadline = Some(self.deadline.map_or(d, |x| x.min(d)));
        let a = Instant::now() + self.short;
        self.all_dead = Some(self.all_dead.map_or(a, |x| x.max(a)));
    }

    /// Whether every short entry is surely still live: the last step ended in time.
    fn in_time(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() + SLACK < d)
    }

    /// Sleeps until every short entry is dead.
    async fn expire(&mut self) {
        if let Some(t) = self.all_dead.take() {
            tokio::time::sleep_until((t + SLACK).into()).await;
        }
        self.deadline = None;
    }
}

/// Runs `attempt` with short TTLs from 40 ms, doubling while it reports an inconclusive run
/// (`Ok(false)`).
async fn with_short_ttls(
    mut attempt: impl AsyncFnMut(Duration) -> Result<bool, TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut short = Duration::from_millis(40);
    loop {
        if attempt(short).await? {
            return Ok(());
        }
        INCONCLUSIVE.fetch_add(1, Ordering::Relaxed);
        if short >= Duration::from_millis(2_560) {
            return Err(TestCaseError::fail(format!(
                "every attempt was too slow for its short TTLs (last {short:?})"
            )));
        }
        short *= 2;
    }
}

/// Attempts that were too slow for their short TTLs (reported by [`run_cases`]).
static INCONCLUSIVE: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `cases` random cases of `strategy` through `case` on a fresh runtime.
fn run_cases<S: Strategy>(
    cases: u32,
    strategy: S,
    case: impl Fn(&tokio::runtime::Runtime, S::Value) -> Result<(), TestCaseError>,
) {
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |v| case(&rt, v)) {
        panic!("{e}");
    }
    let slow = INCONCLUSIVE.load(Ordering::Relaxed);
    if slow > 0 {
        eprintln!("{slow} attempts in this binary ran again with longer TTLs (a slow machine)");
    }
}

const KEYS: u8 = 6;

fn life() -> impl Strategy<Value = Life> {
    prop_oneof![Just(Life::Forever), Just(Life::Long), Just(Life::Short)]
}

// ---------------------------------------------------------------------------------------------
// Standalone: `BoundedCache`.

/// A step of a standalone case.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Set(u8, Life),
    Get(u8),
    Delete(u8),
    /// Compares the eviction order (`keys()`, which also drops dead members from the index).
    Keys,
    /// Every short entry dies (their members stay indexed until a write or `keys` meets them).
    Expire,
}

fn standalone_ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (0..KEYS, life()).prop_map(|(k, l)| Op::Set(k, l)),
        4 => (0..KEYS).prop_map(Op::Get),
        1 => (0..KEYS).prop_map(Op::Delete),
        2 => Just(Op::Keys),
        2 => Just(Op::Expire),
    ];
    prop::collection::vec(op, 1..50)
}

/// Where a harness reads a standalone namespace's live values around its index: the URL of the
/// Valkey server (`KEYS {ns}|val:*`), or nothing (a `MemoryStore` keeps them inside).
pub type Raw = Option<String>;

async fn raw_live(
    raw: &Option<redis::aio::MultiplexedConnection>,
    ns: &str,
) -> Option<BTreeSet<String>> {
    let mut conn = raw.clone()?;
    let prefix = RankedSpace::standalone(ns).value_prefix;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    Some(
        keys.iter()
            .map(|k| k.strip_prefix(&prefix).unwrap().to_owned())
            .collect(),
    )
}

/// Random standalone cases under `make(capacity)` on `store`.
pub fn check_standalone<P>(
    store: BoundedStore,
    raw: Raw,
    make: fn(usize) -> P,
    stamp_bits: Option<u8>,
    cases: u32,
) where
    P: EvictionPolicy + Clone,
{
    run_cases(
        cases,
        (1usize..=4, standalone_ops()),
        |rt, (capacity, ops)| {
            rt.block_on(with_short_ttls(async |short| {
                standalone_attempt(&store, &raw, make(capacity), stamp_bits, &ops, short).await
            }))
        },
    );
}

async fn standalone_attempt<P: EvictionPolicy + Clone>(
    store: &BoundedStore,
    raw: &Raw,
    policy: P,
    stamp_bits: Option<u8>,
    ops: &[Op],
    short: Duration,
) -> Result<bool, TestCaseError> {
    let ns = unique(policy.name());
    let mut model = Model::new(policy.scoring(), policy.capacity());
    let mut cache = BoundedCache::<u32, P>::new(store.clone(), &ns, policy);
    if let Some(bits) = stamp_bits {
        cache = cache.stamp_bits(bits);
    }
    let raw = match raw {
        Some(url) => Some(
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        ),
        None => None,
    };
    let mut clock = Clock::new(short);
    // Dead entries the store may still index (since the last `keys`).
    let mut dead_indexed = 0usize;
    for (n, op) in ops.iter().enumerate() {
        let value = n as u32;
        match *op {
            Op::Set(k, life) => {
                let key = format!("k{k}");
                let ttl = match life {
                    Life::Forever => None,
                    Life::Long => Some(LONG),
                    Life::Short => Some(short),
                };
                let sent = Instant::now();
                let evicted = cache.set_with_ttl(&key, &value, ttl).await.unwrap();
                if life == Life::Short {
                    clock.wrote_short(sent);
                }
                if !clock.in_time() {
                    return Ok(false);
                }
                let want = model.set(&key, value, life == Life::Short);
                prop_assert!(
                    !(dead_indexed > 0 && want.is_empty() && !evicted.is_empty()),
                    "op {n} {op:?} evicted live entries {evicted:?} while {dead_indexed} dead \
                     ones were indexed"
                );
                prop_assert_eq!(evicted, want, "evicted by op {}: {:?}", n, op);
            }
            Op::Get(k) => {
                let key = format!("k{k}");
                let got = cache.get(&key).await.unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                prop_assert_eq!(got, model.get(&key), "value read by op {}: {:?}", n, op);
            }
            Op::Delete(k) => {
                let key = format!("k{k}");
                let gone = cache.delete(&key).await.unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                prop_assert_eq!(gone, model.remove(&key), "deleted by op {}: {:?}", n, op);
            }
            Op::Keys => {
                let keys = cache.keys().await.unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                prop_assert_eq!(keys, model.keys(), "keys after op {}: {:?}", n, op);
                dead_indexed = 0;
            }
            Op::Expire => {
                clock.expire().await;
                dead_indexed += model.expire();
            }
        }
        // After every step: the live values (read around the index, on Valkey) and `len`.
        let live = raw_live(&raw, &ns).await;
        let len = cache.len().await.unwrap();
        if !clock.in_time() {
            return Ok(false);
        }
        if let Some(live) = live {
            prop_assert_eq!(
                live,
                model.live_set(),
                "live values after op {}: {:?}",
                n,
                op
            );
        }
        prop_assert_eq!(len, model.len(), "len after op {}: {:?}", n, op);
    }
    prop_assert_eq!(cache.keys().await.unwrap(), model.keys(), "keys at the end");
    let cleared = cache.clear().await.unwrap();
    if !clock.in_time() {
        return Ok(false);
    }
    prop_assert_eq!(cleared, model.len() as u64, "clear");
    prop_assert_eq!(cache.len().await.unwrap(), 0);
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// A bounded route: `CacheLayer::eviction`.

/// A step of a route case. Keys are `item:0` to `item:5`; even ones carry the tag `even`, odd
/// ones `odd` (from the handler's `Surrogate-Key`).
#[derive(Clone, Copy, Debug)]
pub enum RouteOp {
    /// `GET` on the route whose TTL is `Life` (`Long` or `Short`): a hit, or a fill.
    Read(u8, Life),
    /// `GET` with `Cache-Control: no-cache`: the entry found is read (a use) but not served, and
    /// the response is stored (an overwrite when the entry is live).
    Revalidate(u8, Life),
    InvalidateKey(u8),
    /// `even` (true) or `odd`.
    InvalidateTag(bool),
    /// An index into [`PATTERNS`].
    InvalidatePattern(u8),
    /// Compares the index's eviction order (`RankedStore::keys`, which drops dead members).
    Keys,
    Expire,
}

const PATTERNS: [&str; 3] = ["item:[0-2]", "item:[3-5]", "item:*"];

fn route_life() -> impl Strategy<Value = Life> {
    prop_oneof![Just(Life::Long), Just(Life::Short)]
}

fn route_ops() -> impl Strategy<Value = Vec<RouteOp>> {
    let op = prop_oneof![
        6 => (0..KEYS, route_life()).prop_map(|(k, l)| RouteOp::Read(k, l)),
        2 => (0..KEYS, route_life()).prop_map(|(k, l)| RouteOp::Revalidate(k, l)),
        1 => (0..KEYS).prop_map(RouteOp::InvalidateKey),
        1 => any::<bool>().prop_map(RouteOp::InvalidateTag),
        1 => (0..PATTERNS.len() as u8).prop_map(RouteOp::InvalidatePattern),
        1 => Just(RouteOp::Keys),
        2 => Just(RouteOp::Expire),
    ];
    prop::collection::vec(op, 1..40)
}

fn glob(pattern: &str, key: &str) -> bool {
    match pattern {
        "item:*" => key.starts_with("item:"),
        "item:[0-2]" => ["item:0", "item:1", "item:2"].contains(&key),
        "item:[3-5]" => ["item:3", "item:4", "item:5"].contains(&key),
        _ => unreachable!("{pattern}"),
    }
}

fn is_even(key: &str) -> bool {
    let id: u8 = key.strip_prefix("item:").unwrap().parse().unwrap();
    id.is_multiple_of(2)
}

/// A router over `cache` with `/long/{id}` and `/short/{id}`, both keyed `item:{id}` and bounded
/// by `make(capacity)`; the handler answers `v{n}`, `n` counting its calls.
pub fn bounded_router<P: EvictionPolicy>(
    cache: &Cache,
    make: impl Fn() -> P,
    short: Duration,
) -> Router {
    let calls = Arc::new(AtomicU32::new(0));
    let handler = move |Path(id): Path<u8>| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let tag = if id % 2 == 0 { "even" } else { "odd" };
            ([("surrogate-key", tag)], format!("v{n}"))
        }
    };
    let layer = |ttl: Duration| {
        CacheLayer::new(cache.clone())
            .key("item:{id}")
            .ttl(ttl)
            .eviction(make())
    };
    Router::new()
        .route("/long/{id}", get(handler.clone()).route_layer(layer(LONG)))
        .route("/short/{id}", get(handler).route_layer(layer(short)))
}

/// The value a route response carries (`v{n}`).
pub fn served(res: &support::Resp) -> u32 {
    res.text().strip_prefix('v').unwrap().parse().unwrap()
}

/// Random route cases under `make(capacity)` on caches over `store`, in namespaces starting
/// with `ns`.
/// The route model on `store`, in namespaces of `shards` shards (None: the store's default).
pub fn check_route<S, P>(store: S, ns: &str, shards: Option<u16>, make: fn(usize) -> P, cases: u32)
where
    S: Store + Clone,
    P: EvictionPolicy + Clone,
{
    run_cases(cases, (1usize..=4, route_ops()), |rt, (capacity, ops)| {
        rt.block_on(with_short_ttls(async |short| {
            route_attempt(store.clone(), ns, shards, || make(capacity), &ops, short).await
        }))
    });
}

async fn route_attempt<S: Store, P: EvictionPolicy>(
    store: S,
    ns: &str,
    shards: Option<u16>,
    make: impl Fn() -> P,
    ops: &[RouteOp],
    short: Duration,
) -> Result<bool, TestCaseError> {
    let policy = make();
    let spec = Spec::new(policy.scoring(), policy.capacity(), STAMP_BITS);
    let mut model = Model::new(policy.scoring(), policy.capacity());
    let mut builder = Cache::builder(store)
        .namespace(unique(ns))
        .timeout(Duration::from_secs(5));
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    let cache = builder.build();
    let app = bounded_router(&cache, make, short);
    let ranked = cache.store().ranked().unwrap();
    let index = RankedSpace::route(cache.key_space().bounded().shard(0));
    let mut clock = Clock::new(short);
    for (n, op) in ops.iter().enumerate() {
        match *op {
            RouteOp::Read(k, life) | RouteOp::Revalidate(k, life) => {
                let key = format!("item:{k}");
                let path = match life {
                    Life::Short => "short",
                    _ => "long",
                };
                let uri = format!("/{path}/{k}");
                let revalidate = matches!(op, RouteOp::Revalidate(..));
                let headers: &[(&str, &str)] = if revalidate {
                    &[("cache-control", "no-cache")]
                } else {
                    &[]
                };
                let sent = Instant::now();
                let res = support::send(&app, support::request("GET", &uri, headers)).await;
                let filled = !res.is_hit();
                if filled && life == Life::Short {
                    clock.wrote_short(sent);
                }
                if !clock.in_time() {
                    return Ok(false);
                }
                if revalidate || !model.live(&key) {
                    prop_assert!(filled, "op {n} {op:?} hit: {}", res.cache_status());
                    // A revalidating request still reads the entry (a use), then stores.
                    model.get(&key);
                    model.set(&key, served(&res), life == Life::Short);
                } else {
                    prop_assert!(!filled, "op {n} {op:?} missed: {}", res.cache_status());
                    prop_assert_eq!(Some(served(&res)), model.get(&key), "op {} {:?}", n, op);
                }
            }
            RouteOp::InvalidateKey(k) => {
                let key = format!("item:{k}");
                let removed = cache.invalidate_key(&key).await.unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                prop_assert_eq!(removed, u64::from(model.remove(&key)), "op {} {:?}", n, op);
            }
            RouteOp::InvalidateTag(even) => {
                let removed = cache
                    .invalidate_tag(if even { "even" } else { "odd" })
                    .await
                    .unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                let want = model.remove_where(|k| is_even(k) == even);
                prop_assert_eq!(removed, want, "op {} {:?}", n, op);
            }
            RouteOp::InvalidatePattern(p) => {
                let pattern = PATTERNS[usize::from(p)];
                let removed = cache.invalidate_pattern(pattern).await.unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                let want = model.remove_where(|k| glob(pattern, k));
                prop_assert_eq!(removed, want, "op {} {:?}", n, op);
            }
            RouteOp::Keys => {
                let keys = ranked.keys(&index, spec).await.unwrap();
                if !clock.in_time() {
                    return Ok(false);
                }
                prop_assert_eq!(keys, model.keys(), "index after op {}: {:?}", n, op);
            }
            RouteOp::Expire => {
                clock.expire().await;
                model.expire();
            }
        }
        // The live entries, read around the index.
        let mut live = BTreeSet::new();
        for k in 0..KEYS {
            let key = format!("item:{k}");
            if support::has_bounded_entry(&cache, &key).await {
                live.insert(key);
            }
        }
        let evictions = cache.stats().evictions;
        let len = ranked.len(&index).await.unwrap();
        if !clock.in_time() {
            return Ok(false);
        }
        prop_assert_eq!(
            live,
            model.live_set(),
            "live entries after op {}: {:?}",
            n,
            op
        );
        prop_assert_eq!(
            evictions,
            model.evictions,
            "evictions after op {}: {:?}",
            n,
            op
        );
        prop_assert_eq!(len, model.len(), "len after op {}: {:?}", n, op);
    }
    prop_assert_eq!(
        ranked.keys(&index, spec).await.unwrap(),
        model.keys(),
        "index at the end"
    );
    Ok(true)
}
