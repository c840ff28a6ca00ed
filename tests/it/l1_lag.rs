//! The bound across instances with L1 (issue 16 item 9), on a real Valkey and on `MemoryStore`.
//!
//! Two instances A and B share a namespace, each with an L1 tier. B hears the invalidation
//! announcements through a bus that delivers them (and everything else on the channel, B's own
//! probes included) a fixed delay late, in order: a subscriber that is slow to read its socket,
//! as a loaded instance is.
//!
//! - `l1_max_lag`: B, whose announcements lag more than its bound, stops serving from L1 (reads
//!   go to the store), so a read on B right after A's invalidation returned gets the new value;
//!   without the bound B served its old L1 copy until the late announcement arrived.
//! - `l1_strict`: B lags less than its bound and keeps serving from L1, but A's invalidations
//!   return only once the bound has passed: no read on B that starts after one returned sees
//!   the old value.

use crate::support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use support::{eventually, Backend, StoreTimeouts};
use tokio::time::Instant;
use tower_valkey_cache::function::Options;
use tower_valkey_cache::store::bus::{BusSink, Subscription, SubscriptionHandle};
use tower_valkey_cache::store::{
    InvalidationBus, KeySpace, Lookup, LookupMany, RankedStore, Store, StoreFuture, Target, Write,
    Written,
};
use tower_valkey_cache::{Cache, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A bus that delivers late, in order
// ---------------------------------------------------------------------------------------------

enum Event {
    Message(Vec<u8>),
    Subscribed,
    Lost,
}

/// Receives from the real bus and hands everything to the real sink `delay` later, in order.
struct Late {
    queue: Mutex<VecDeque<(Instant, Event)>>,
    wake: tokio::sync::Notify,
}

impl Late {
    fn push(&self, e: Event) {
        self.queue.lock().unwrap().push_back((Instant::now(), e));
        self.wake.notify_one();
    }
}

impl BusSink for Late {
    fn message(&self, payload: &[u8]) {
        self.push(Event::Message(payload.to_vec()));
    }
    fn subscribed(&self) {
        self.push(Event::Subscribed);
    }
    fn lost(&self) {
        self.push(Event::Lost);
    }
}

struct LateSubscription {
    inner: Subscription,
    _late: Arc<Late>,
    task: tokio::task::JoinHandle<()>,
}

impl SubscriptionHandle for LateSubscription {
    fn ensure_started(&self) {
        self.inner.ensure_started();
    }
}

impl Drop for LateSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct LateBus {
    inner: Arc<dyn InvalidationBus>,
    delay: Duration,
}

impl InvalidationBus for LateBus {
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, ()> {
        self.inner.publish(channel, payload)
    }
    fn subscribe(&self, channel: &str, sink: Weak<dyn BusSink>) -> Subscription {
        let late = Arc::new(Late {
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
        });
        let delay = self.delay;
        let forward = late.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = forward.queue.lock().unwrap().pop_front();
                let Some((at, event)) = next else {
                    forward.wake.notified().await;
                    continue;
                };
                tokio::time::sleep_until(at + delay).await;
                let Some(s) = sink.upgrade() else { return };
                match event {
                    Event::Message(p) => s.message(&p),
                    Event::Subscribed => s.subscribed(),
                    Event::Lost => s.lost(),
                }
            }
        });
        let as_sink: Arc<dyn BusSink> = late.clone();
        let inner = self.inner.subscribe(channel, Arc::downgrade(&as_sink));
        Subscription::new(LateSubscription {
            inner,
            _late: late,
            task,
        })
    }
    fn ordered(&self) -> bool {
        true
    }
}

/// A store whose bus is a [`LateBus`]; everything else is the inner store's.
#[derive(Debug)]
struct LateStore {
    inner: Arc<dyn Store>,
    delay: Duration,
}

impl Store for LateStore {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        self.inner.read(space, key)
    }
    fn write<'a>(&'a self, space: &'a KeySpace, write: Write<'a>) -> StoreFuture<'a, Written> {
        self.inner.write(space, write)
    }
    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        self.inner.read_many(space, keys)
    }
    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        self.inner.write_many(space, writes)
    }
    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        self.inner.invalidate(space, target)
    }
    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.try_lock(space, key, token, lease)
    }
    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.inner.unlock(space, key, token)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn needs_hash_tags(&self) -> bool {
        self.inner.needs_hash_tags()
    }
    fn supports_shards(&self) -> bool {
        self.inner.supports_shards()
    }
    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        self.inner.ranked()
    }
    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        Some(Arc::new(LateBus {
            inner: self.inner.bus()?,
            delay: self.delay,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Db(Arc<AtomicU64>);

async fn read(cache: &Cache, db: &Db) -> u64 {
    let db = db.clone();
    cache
        .get_or_set_with("k", &Options::new(), || async move {
            Ok::<_, Infallible>(db.0.load(Ordering::SeqCst))
        })
        .await
        .unwrap()
}

/// A (announcing, `strict` or not, with `a_lag`) and B (hearing `delay` late, bound `b_lag`).
fn instances(
    b: &Backend,
    ns: &str,
    delay: Duration,
    b_lag: Duration,
    strict: bool,
    a_lag: Duration,
) -> (Cache, Cache) {
    let ns = b.namespace(ns);
    // A hears in time, over a bus that is not local either (on a `MemoryStore` a local bus
    // needs no wait: every subscriber applies an announcement before `publish` returns; B's
    // late one is this test's doing).
    let on_time = LateStore {
        inner: b.store(),
        delay: Duration::ZERO,
    };
    let a = Cache::builder(on_time)
        .namespace(&ns)
        .timeout(Duration::from_secs(2))
        .l1(100, Duration::from_secs(60))
        .l1_max_lag(a_lag)
        .l1_strict(strict)
        .build();
    let late = LateStore {
        inner: b.store(),
        delay,
    };
    let b = Cache::builder(late)
        .namespace(&ns)
        .timeout(Duration::from_secs(2))
        .l1(100, Duration::from_secs(60))
        .l1_max_lag(b_lag)
        .build();
    (a, b)
}

async fn listening(c: &Cache) {
    eventually(LIMIT, "the L1 subscription", || async {
        c.l1_stats().unwrap().listening.then_some(())
    })
    .await;
}

/// Rounds of: B reads (from L1 when it may), A writes the source of truth and invalidates, B
/// reads again at once. Returns the reads on B that started after A's invalidation returned and
/// were served the old value, and B's L1 statistics.
async fn rounds(a: &Cache, b: &Cache, n: u64) -> (Vec<String>, tower_valkey_cache::l1::L1Stats) {
    let db = Db::default();
    let mut stale = Vec::new();
    for round in 0..n {
        assert_eq!(read(b, &db).await, round);
        let before = b.l1_stats().unwrap().messages;
        db.0.store(round + 1, Ordering::SeqCst);
        a.invalidate_key("k").await.unwrap();
        let v = read(b, &db).await;
        if v != round + 1 {
            stale.push(format!(
                "round {round}: B read {v} after the invalidation returned"
            ));
        }
        // Let B's late announcement land before the next round reads (and refills) B's L1.
        eventually(LIMIT, "B to apply the announcement", || async {
            (b.l1_stats().unwrap().messages > before).then_some(())
        })
        .await;
    }
    (stale, b.l1_stats().unwrap())
}

/// B's announcements arrive 1.5 s late; its bound is 300 ms: it reads the store instead of L1,
/// so nothing stale. (Without the bound, each read right after an invalidation was stale.)
async fn a_lagging_instance_reads_around_its_l1(backend: Backend) {
    let delay = Duration::from_millis(1500);
    let lag = Duration::from_millis(300);
    let (a, b) = instances(&backend, "l1-lagging", delay, lag, false, lag);
    listening(&a).await;
    listening(&b).await;
    // Once subscribed, B counts as caught up for its bound (its L1 was flushed); after that,
    // with every probe 1.5 s late, it lags.
    eventually(LIMIT, "B to lag", || async {
        b.get::<u64>("nothing").await.unwrap();
        (b.l1_stats().unwrap().lagging > 0).then_some(())
    })
    .await;
    let (stale, stats) = rounds(&a, &b, 3).await;
    assert!(stale.is_empty(), "{stale:#?}");
    assert!(stats.lagging > 0, "B read around its L1: {stats:?}");
}

/// B's announcements arrive 100 ms late, within its 700 ms bound: it serves from L1. A's
/// invalidations are strict (they return 700 ms after their announcement): no read on B that
/// starts after one returned is stale.
async fn strict_invalidations_are_seen_everywhere_when_they_return(backend: Backend) {
    let delay = Duration::from_millis(100);
    let lag = Duration::from_millis(700);
    let (a, b) = instances(&backend, "l1-strict", delay, lag, true, lag);
    listening(&a).await;
    listening(&b).await;
    let started = Instant::now();
    let (stale, stats) = rounds(&a, &b, 8).await;
    assert!(stale.is_empty(), "{stale:#?}");
    assert!(stats.hits > 0, "B served from L1 meanwhile: {stats:?}");
    // Each strict invalidation waited out the bound.
    assert!(started.elapsed() >= lag * 8);
}

mod valkey {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_whose_announcements_lag_past_its_bound_reads_around_l1() {
        a_lagging_instance_reads_around_its_l1(Backend::valkey(VALKEY)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_strict_invalidation_is_seen_by_every_instance_once_it_returns() {
        strict_invalidations_are_seen_everywhere_when_they_return(Backend::valkey(VALKEY)).await
    }
}

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_whose_announcements_lag_past_its_bound_reads_around_l1() {
        a_lagging_instance_reads_around_its_l1(Backend::memory(MemoryStore::new())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_strict_invalidation_is_seen_by_every_instance_once_it_returns() {
        strict_invalidations_are_seen_everywhere_when_they_return(Backend::memory(
            MemoryStore::new(),
        ))
        .await
    }
}

#[test]
#[should_panic(expected = "l1_strict needs an l1_max_lag of at most")]
fn strict_invalidations_need_a_finite_bound() {
    let _ = Cache::builder(MemoryStore::new())
        .l1(10, Duration::from_secs(1))
        .l1_max_lag(Duration::MAX)
        .l1_strict(true)
        .build();
}
