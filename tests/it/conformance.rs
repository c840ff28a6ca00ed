//! The `Store` contract (`tower_valkey_cache::testing::conformance`, its one home) on every store
//! the crate ships: one Valkey server, the shared Valkey Cluster, `MemoryStore`, and the wrappers
//! that must forward every capability (`FaultyStore`, `Arc<dyn Store>`). Then the checks
//! themselves: each one fails on a store broken in the way it is about (a check that cannot fail
//! would prove nothing), and only the checks that look at that behaviour fail.

use crate::support::{self, StoreTimeouts, ValkeyServer};

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tower_valkey_cache::store::bus::{BusSink, Subscription};
use tower_valkey_cache::store::ranked::{RankedSpace, Scoring, Spec};
use tower_valkey_cache::store::{
    InvalidationBus, KeySpace, Lookup, LookupMany, RankedStore, Store, StoreError, StoreFuture,
    Target, Write, Written,
};
use tower_valkey_cache::testing::conformance::{self, Conformance, Failure, Passed, CHECKS};
use tower_valkey_cache::testing::FaultyStore;
use tower_valkey_cache::MemoryStore;

/// Generous: debug builds of parallel tests on a loaded 2-core machine.
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(5));

/// Every check ran and held, none skipped.
fn all_ran(r: Result<Passed, Vec<Failure>>, store: &str) {
    let passed = r.unwrap_or_else(|f| {
        let lines: Vec<String> = f.iter().map(Failure::to_string).collect();
        panic!("{store} breaks the Store contract:\n{}", lines.join("\n"))
    });
    assert_eq!(passed.ran, CHECKS, "{store}");
    assert!(passed.skipped.is_empty(), "{store}: {:?}", passed.skipped);
}

// ---------------------------------------------------------------------------------------------
// The crate's stores pass

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_store_keeps_the_contract() {
    let server = ValkeyServer::start();
    let store = support::valkey_store(&server, VALKEY);
    all_ran(conformance::check(store).await, "ValkeyStore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cluster_store_keeps_the_contract() {
    let (_, store, suffix) = support::shared_cluster_store(Duration::from_secs(5));
    assert!(store.needs_hash_tags());
    let checks = Conformance::new(store).namespace(format!("conformance{suffix}-"));
    all_ran(checks.run().await, "ValkeyStore::cluster");
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    all_ran(conformance::check(MemoryStore::new()).await, "MemoryStore");
}

/// The wrappers forward every operation and capability (bounded namespaces, the bus).
#[tokio::test]
async fn wrappers_keep_the_contract() {
    let faulty = FaultyStore::new(MemoryStore::new());
    all_ran(conformance::check(faulty).await, "FaultyStore<MemoryStore>");
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    all_ran(conformance::check(shared).await, "Arc<dyn Store>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_store_over_valkey_keeps_the_contract() {
    let server = ValkeyServer::start();
    let store = FaultyStore::new(support::valkey_store(&server, VALKEY));
    all_ran(conformance::check(store).await, "FaultyStore<ValkeyStore>");
}

// ---------------------------------------------------------------------------------------------
// Each check fails on the store it is about

/// What is wrong with a [`Broken`] store (a `MemoryStore` underneath).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Nothing: it forwards everything.
    None,
    /// Every entry lives long, whatever its TTL.
    IgnoresTtl,
    /// Every namespace is one.
    OneNamespace,
    /// Writes drop their guard (`since`).
    Unguarded,
    /// Writes drop their tags.
    Tagless,
    /// `read_many` answers in reverse order.
    ReversedBatch,
    /// A key invalidation counts every key listed, present or not.
    CountsListedKeys,
    /// `unlock` releases whatever the token.
    UnlockAnyToken,
    /// Bounded namespaces always evict first in, first out.
    FifoOnly,
    /// Guarded writes trust a clock ahead of the store's (as if it could not lose its state).
    TrustsAheadClock,
    /// A bounded route's read reports clock 0.
    RouteReadNoClock,
    /// The bus accepts publications and delivers none.
    DeafBus,
    /// No bounded namespaces and no bus.
    NoCapabilities,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryStore,
    fault: Fault,
    shared: KeySpace,
    /// The token that last took each lock (full lock key).
    holders: Mutex<HashMap<String, String>>,
}

impl Broken {
    fn new(fault: Fault) -> Self {
        Self {
            inner: MemoryStore::new(),
            fault,
            shared: KeySpace::new("one-namespace", Duration::from_secs(120)),
            holders: Mutex::default(),
        }
    }

    fn space<'a>(&'a self, space: &'a KeySpace) -> &'a KeySpace {
        if self.fault == Fault::OneNamespace {
            &self.shared
        } else {
            space
        }
    }

    fn broken<'a>(&self, mut w: Write<'a>) -> Write<'a> {
        match self.fault {
            Fault::IgnoresTtl => w.ttl = Duration::from_secs(120),
            Fault::Unguarded => w.since = None,
            Fault::Tagless => w.tags = &[],
            _ => {}
        }
        w
    }
}

impl Broken {
    /// [`Fault::TrustsAheadClock`]: a guard ahead of the store's clock is lowered to it.
    async fn trusting<'a>(
        &self,
        space: &KeySpace,
        mut writes: Vec<Write<'a>>,
    ) -> Result<Vec<Write<'a>>, StoreError> {
        if self.fault == Fault::TrustsAheadClock {
            let clock = self
                .inner
                .read(self.space(space), "clock-probe")
                .await?
                .clock;
            for w in &mut writes {
                w.since = w.since.map(|s| s.min(clock));
            }
        }
        Ok(writes)
    }
}

impl Store for Broken {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        self.inner.read(self.space(space), key)
    }

    fn write<'a>(&'a self, space: &'a KeySpace, w: Write<'a>) -> StoreFuture<'a, Written> {
        Box::pin(async move {
            let w = self.trusting(space, vec![self.broken(w)]).await?.remove(0);
            self.inner.write(self.space(space), w).await
        })
    }

    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        Box::pin(async move {
            let mut found = self.inner.read_many(self.space(space), keys).await?;
            if self.fault == Fault::ReversedBatch {
                found.values.reverse();
            }
            Ok(found)
        })
    }

    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        Box::pin(async move {
            let writes = writes.into_iter().map(|w| self.broken(w)).collect();
            let writes = self.trusting(space, writes).await?;
            self.inner.write_many(self.space(space), writes).await
        })
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let removed = self.inner.invalidate(self.space(space), target).await?;
            Ok(match (self.fault, target) {
                (Fault::CountsListedKeys, Target::Keys(keys)) => keys.len() as u64,
                _ => removed,
            })
        })
    }

    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let space = self.space(space);
            let taken = self.inner.try_lock(space, key, token, lease).await?;
            if taken {
                let mut holders = self.holders.lock().unwrap();
                holders.insert(space.shard_for(key).lock(key), token.to_owned());
            }
            Ok(taken)
        })
    }

    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        let space = self.space(space);
        if self.fault == Fault::UnlockAnyToken {
            // Releases as whoever took the lock last.
            let holder = self
                .holders
                .lock()
                .unwrap()
                .get(&space.shard_for(key).lock(key))
                .cloned();
            if let Some(holder) = holder {
                return Box::pin(async move { self.inner.unlock(space, key, &holder).await });
            }
        }
        self.inner.unlock(space, key, token)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }

    fn name(&self) -> &'static str {
        "broken"
    }

    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        if self.fault == Fault::NoCapabilities {
            return None;
        }
        Some(Arc::new(BrokenRanked {
            inner: self.inner.ranked()?,
            fault: self.fault,
        }))
    }

    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        match self.fault {
            Fault::NoCapabilities => None,
            Fault::DeafBus => Some(Arc::new(DeafBus(self.inner.bus()?))),
            _ => self.inner.bus(),
        }
    }
}

#[derive(Debug)]
struct BrokenRanked {
    inner: Arc<dyn RankedStore>,
    fault: Fault,
}

impl BrokenRanked {
    fn spec(&self, spec: Spec) -> Spec {
        match self.fault {
            Fault::FifoOnly => Spec::new(Scoring::FIFO, spec.capacity, spec.stamp_bits),
            _ => spec,
        }
    }
}

impl RankedStore for BrokenRanked {
    fn get<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Option<Bytes>> {
        self.inner.get(space, key, self.spec(spec))
    }

    fn set<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        self.inner.set(space, key, value, ttl, self.spec(spec))
    }

    fn delete<'a>(&'a self, space: &'a RankedSpace, key: &'a str) -> StoreFuture<'a, bool> {
        self.inner.delete(space, key)
    }

    fn len<'a>(&'a self, space: &'a RankedSpace) -> StoreFuture<'a, usize> {
        self.inner.len(space)
    }

    fn keys<'a>(&'a self, space: &'a RankedSpace, spec: Spec) -> StoreFuture<'a, Vec<String>> {
        self.inner.keys(space, self.spec(spec))
    }

    fn clear<'a>(&'a self, space: &'a RankedSpace) -> StoreFuture<'a, u64> {
        self.inner.clear(space)
    }

    fn route_read<'a>(
        &'a self,
        keys: &'a KeySpace,
        space: &'a RankedSpace,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Lookup> {
        Box::pin(async move {
            let mut found = self
                .inner
                .route_read(keys, space, key, self.spec(spec))
                .await?;
            if self.fault == Fault::RouteReadNoClock {
                found.clock = 0;
            }
            Ok(found)
        })
    }

    fn route_record<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        ttl: Duration,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        self.inner.route_record(space, key, ttl, self.spec(spec))
    }
}

/// Subscribes through the real bus, publishes nowhere.
#[derive(Debug)]
struct DeafBus(Arc<dyn InvalidationBus>);

impl InvalidationBus for DeafBus {
    fn publish<'a>(&'a self, _channel: &'a str, _payload: &'a [u8]) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(&self, channel: &str, sink: Weak<dyn BusSink>) -> Subscription {
        self.0.subscribe(channel, sink)
    }

    // Not local: the check waits for deliveries (that never come).
}

/// The checks that fail on a store with `fault`.
async fn failing(fault: Fault) -> BTreeSet<&'static str> {
    let checks = Conformance::new(Broken::new(fault)).wait(Duration::from_millis(300));
    match checks.run().await {
        Ok(_) => BTreeSet::new(),
        Err(failures) => {
            for f in &failures {
                eprintln!("{fault:?}: {f}");
            }
            failures.iter().map(|f| f.check).collect()
        }
    }
}

fn set(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

/// Each fault is caught by the checks about it, and only by them; every check catches one.
#[tokio::test]
async fn every_check_fails_on_a_store_broken_its_way() {
    let cases: [(Fault, &[&str]); 12] = [
        (Fault::IgnoresTtl, &["read_write", "invalidate_counts"]),
        // (`tags` too: entries an earlier check left carry its tag.)
        (
            Fault::OneNamespace,
            &[
                "namespaces",
                "tags",
                "invalidate_counts",
                "fill_locks",
                "ranked_route",
            ],
        ),
        (Fault::Unguarded, &["lost_state", "guarded_writes", "batch"]),
        (Fault::TrustsAheadClock, &["lost_state"]),
        (
            Fault::Tagless,
            &[
                "namespaces",
                "guarded_writes",
                "tags",
                "batch",
                "invalidate_counts",
            ],
        ),
        (Fault::ReversedBatch, &["batch"]),
        (Fault::CountsListedKeys, &["invalidate_counts"]),
        (Fault::UnlockAnyToken, &["fill_locks"]),
        (Fault::FifoOnly, &["ranked_policies"]),
        (Fault::RouteReadNoClock, &["ranked_route"]),
        (Fault::DeafBus, &["bus"]),
        (Fault::None, &[]),
    ];
    let mut caught = BTreeSet::new();
    for (fault, want) in cases {
        let got = failing(fault).await;
        assert_eq!(got, set(want), "{fault:?}");
        caught.extend(got);
    }
    assert_eq!(caught, set(CHECKS), "a check that no broken store fails");
}

/// Without bounded namespaces or a bus, their checks are skipped, and the rest still run.
#[tokio::test]
async fn missing_capabilities_are_skipped() {
    let passed = conformance::check(Broken::new(Fault::NoCapabilities))
        .await
        .expect("the core contract holds");
    assert_eq!(passed.skipped, ["ranked_policies", "ranked_route", "bus"]);
    let ran: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|c| !passed.skipped.contains(c))
        .collect();
    assert_eq!(passed.ran, ran);
}
