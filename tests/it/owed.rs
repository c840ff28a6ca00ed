//! Invalidations owed to the store (issue 16 item 2): an invalidation is never dropped.
//!
//! A store outage longer than the retry queue's capacity in writes, a retry still failing past
//! `give_up_after`, the same key written again and again while the store is down, a store that
//! answers again in the middle of the retry backoff, and a connection that lost its
//! authentication. Each scenario runs on its own Valkey server, on the shared cluster and on
//! `MemoryStore`, through `testing::FaultyStore` (which takes the store down on demand).

use crate::support::{
    eventually, get as get_req, has_entry, request, send, Backend, StoreTimeouts,
};
use crate::support::{Resp, ValkeyServer};
use axum::extract::Path;
use axum::routing::{get, put};
use axum::Router;
use http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_valkey_cache::store::{Store, StoreErrorKind};
use tower_valkey_cache::testing::{Faults, FaultyStore, Op};
use tower_valkey_cache::{
    Cache, CacheBuilder, CacheLayer, InvalidateLayer, Invalidation, MemoryStore, ValkeyConfig,
    ValkeyStore,
};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const CLUSTER: Duration = Duration::from_secs(2);
const OP: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_secs(20);

/// A cache over `b`'s store through a [`FaultyStore`]: the cache, and the switches.
fn faulty(b: &Backend, ns: &str, f: impl FnOnce(CacheBuilder) -> CacheBuilder) -> (Cache, Faults) {
    let store = FaultyStore::new(b.store());
    let faults = store.faults();
    let builder = Cache::builder(store)
        .namespace(b.namespace(ns))
        .shards(b.shards)
        .timeout(OP)
        // Failures in these scenarios are the point; the breaker would only hide the store.
        .circuit_breaker(1_000_000, Duration::from_millis(10));
    (f(builder).build(), faults)
}

/// Versions of items `0..n`, starting at 1; `GET /items/{id}` answers the version (cached under
/// `item:{id}`), `PUT /items/{id}` bumps it and invalidates `item:{id}`.
fn items(cache: &Cache, n: usize) -> (Router, Arc<Vec<AtomicU64>>) {
    tagged_items(cache, n, &[])
}

/// [`items`] whose entries carry the tag templates `tags`.
fn tagged_items(cache: &Cache, n: usize, tags: &[&str]) -> (Router, Arc<Vec<AtomicU64>>) {
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(1)).collect());
    let read = {
        let db = db.clone();
        get(move |Path(id): Path<usize>| async move { db[id].load(Ordering::SeqCst).to_string() })
    };
    let write = {
        let db = db.clone();
        put(move |Path(id): Path<usize>| async move {
            (db[id].fetch_add(1, Ordering::SeqCst) + 1).to_string()
        })
    };
    let app = Router::new().route(
        "/items/{id}",
        read.route_layer(
            CacheLayer::new(cache.clone())
                .ttl(Duration::from_secs(600))
                .key("item:{id}")
                .tags(tags.iter().copied()),
        )
        .merge(write.route_layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"]))),
    );
    (app, db)
}

fn version(r: &Resp) -> u64 {
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.text().parse().expect("a version")
}

async fn put_req(app: &Router, uri: &str) -> Resp {
    send(app, request("PUT", uri, &[])).await
}

/// Fills every item's entry and checks it hits.
async fn warm(app: &Router, n: usize) {
    for id in 0..n {
        get_req(app, &format!("/items/{id}")).await;
        let r = get_req(app, &format!("/items/{id}")).await;
        assert!(r.is_hit(), "item {id} not cached: {}", r.cache_status());
    }
}

/// Readers racing the scenario: each read notes the highest acknowledged version of its item
/// before it starts, and a read that answers an older one is stale.
struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, usize, usize)>>,
}

impl Readers {
    fn start(app: &Router, acked: &Arc<Vec<AtomicU64>>, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|_| {
                let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut reads, mut stale, mut hits) = (0, 0, 0);
                    while !stop.load(Ordering::SeqCst) {
                        let id = fastrand::usize(0..n);
                        let floor = acked[id].load(Ordering::SeqCst);
                        let r = get_req(&app, &format!("/items/{id}")).await;
                        stale += usize::from(version(&r) < floor);
                        hits += usize::from(r.is_hit());
                        reads += 1;
                        tokio::task::yield_now().await;
                    }
                    (reads, stale, hits)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops them: (reads, stale reads, hits).
    async fn stop(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = (0, 0, 0);
        for t in self.tasks {
            let (r, s, h) = t.await.unwrap();
            total = (total.0 + r, total.1 + s, total.2 + h);
        }
        total
    }
}

/// How a store fails during an outage.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Every operation fails (refused connections).
    Down,
    /// Only invalidations fail; reads still find the entries those invalidations are about
    /// (a flaky network, an OOM server refusing writes).
    Invalidations,
}

impl Outage {
    fn start(self, faults: &Faults) {
        match self {
            Outage::Down => faults.down(),
            Outage::Invalidations => faults.fail_with(Op::Invalidate, StoreErrorKind::Unavailable),
        }
    }

    fn end(self, faults: &Faults) {
        faults.up();
        faults.heal(Op::Invalidate);
    }
}

/// An outage during which four times the retry queue's capacity of distinct items are written,
/// while readers race: the queue overflows into a namespace-wide invalidation, and after the
/// store heals no read answers an item older than its acknowledged write (before: every
/// invalidation past the capacity was dropped, and those items were served stale until their
/// TTL).
async fn outage_longer_than_the_queue(b: Backend, outage: Outage) {
    const N: usize = 64;
    const CAPACITY: usize = 16;
    let (cache, faults) = faulty(&b, "t_owed_overflow", |c| {
        c.invalidation_retry(CAPACITY, Duration::from_secs(600))
    });
    let (app, _db) = items(&cache, N);
    warm(&app, N).await;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| AtomicU64::new(1)).collect());
    let readers = Readers::start(&app, &acked, N);

    outage.start(&faults);
    for id in 0..N {
        let v = version(&put_req(&app, &format!("/items/{id}")).await);
        acked[id].fetch_max(v, Ordering::SeqCst);
    }
    let s = cache.stats();
    assert_eq!(s.invalidations_queued, N as u64, "{s:?}");
    assert!(s.invalidation_floors >= 1, "the queue overflowed: {s:?}");
    assert_eq!(
        cache.pending_invalidations(),
        1,
        "one floor owed instead of the queue"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    outage.end(&faults);
    eventually(POLL, "the namespace-wide invalidation to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    // Caching resumes: every item is filled again with its new version, then hits.
    for id in 0..N {
        let want = acked[id].load(Ordering::SeqCst);
        let r = eventually(POLL, "a hit", || async {
            let r = get_req(&app, &format!("/items/{id}")).await;
            r.is_hit().then_some(r)
        })
        .await;
        assert_eq!(version(&r), want, "item {id}");
    }
    let (reads, stale, hits) = readers.stop().await;
    let s = cache.stats();
    println!(
        "{} ({outage:?}): {reads} racing reads, {hits} hits, {stale} stale; {s:?}",
        cache.store().name()
    );
    assert_eq!(stale, 0, "stale reads after acknowledged writes");
    assert_eq!(s.invalidations_dropped, 0);
    assert!(reads > 0);
}

async fn outage_down_longer_than_the_queue(b: Backend) {
    outage_longer_than_the_queue(b, Outage::Down).await
}

async fn outage_of_invalidations_longer_than_the_queue(b: Backend) {
    outage_longer_than_the_queue(b, Outage::Invalidations).await
}

/// A retry still failing `give_up_after` after it was queued is not dropped: a namespace-wide
/// invalidation replaces it and is held until the store answers (before: given up, and the item
/// was served stale).
async fn a_retry_past_give_up_after_becomes_a_floor(b: Backend) {
    let (cache, faults) = faulty(&b, "t_owed_give_up", |c| {
        c.invalidation_retry(1024, Duration::from_millis(300))
    });
    let (app, _db) = items(&cache, 2);
    warm(&app, 2).await;
    faults.fail_with(Op::Invalidate, StoreErrorKind::Unavailable);
    assert_eq!(version(&put_req(&app, "/items/0").await), 2);
    assert_eq!(cache.pending_invalidations(), 1);
    eventually(POLL, "the retry to give up for a floor", || async {
        (cache.stats().invalidation_floors == 1).then_some(())
    })
    .await;
    // Held: still owed, and reads still go around the cache (the store holds v1).
    assert_eq!(cache.pending_invalidations(), 1);
    let r = get_req(&app, "/items/0").await;
    assert_eq!((version(&r), r.is_hit()), (2, false));

    faults.heal(Op::Invalidate);
    eventually(POLL, "the floor to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    // Every entry of the namespace went (item 1's too), and fills start over.
    for (id, v) in [(0, 2), (1, 1)] {
        let r = get_req(&app, &format!("/items/{id}")).await;
        assert_eq!(
            (version(&r), r.is_hit()),
            (v, false),
            "item {id} after the floor"
        );
        let r = get_req(&app, &format!("/items/{id}")).await;
        assert_eq!(
            (version(&r), r.is_hit()),
            (v, true),
            "item {id} cached again"
        );
    }
    let s = cache.stats();
    assert_eq!(
        (s.invalidation_floors, s.invalidations_dropped),
        (1, 0),
        "{s:?}"
    );
}

/// The same target failing again and again is owed once: 50 writes of one item while the store
/// is down fit a queue of 4, and merged targets of every kind are owed once each.
async fn duplicates_are_owed_once(b: Backend) {
    let (cache, faults) = faulty(&b, "t_owed_dup", |c| {
        c.invalidation_retry(4, Duration::from_secs(600))
    });
    let (app, _db) = items(&cache, 1);
    warm(&app, 1).await;
    faults.fail_with(Op::Invalidate, StoreErrorKind::Unavailable);
    for v in 2..52 {
        assert_eq!(version(&put_req(&app, "/items/0").await), v);
    }
    assert_eq!(cache.pending_invalidations(), 1);
    let every_kind = || Invalidation::new().key("item:0").tag("t").pattern("item:*");
    for _ in 0..10 {
        assert!(cache.invalidate(every_kind()).await.is_err());
    }
    assert_eq!(
        cache.pending_invalidations(),
        3,
        "item:0, tag t, pattern item:*"
    );
    let s = cache.stats();
    assert_eq!(
        (s.invalidations_queued, s.invalidation_floors),
        (50 + 30, 0),
        "{s:?}"
    );

    faults.heal(Op::Invalidate);
    eventually(POLL, "the owed invalidations to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    let s = cache.stats();
    assert!(
        (1..=3).contains(&s.invalidations_retried),
        "one retry per target at most: {s:?}"
    );
    let r = get_req(&app, "/items/0").await;
    assert_eq!((version(&r), r.is_hit()), (51, false));
}

/// The retry backoff ends as soon as the store answers again: with time frozen, the worker's
/// backoff (up to 1 s) never ends by itself, yet the owed invalidation lands right after a
/// successful operation closes the circuit breaker.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_store_that_answers_again_ends_the_retry_backoff() {
    let store = FaultyStore::new(MemoryStore::new());
    let faults = store.faults();
    let cache = Cache::builder(store)
        .circuit_breaker(1, Duration::from_millis(1))
        .build();
    faults.down();
    assert!(cache.invalidate_key("a").await.is_err());
    assert_eq!(cache.pending_invalidations(), 1);
    // Long enough (in paused time) for the backoff to reach its longest.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cache.pending_invalidations(), 1);
    assert!(cache.is_degraded());
    faults.up();
    // The breaker's cool-down is in real time.
    std::thread::sleep(Duration::from_millis(5));
    // From here on time stands still (the task never yields to the timer): only a wake-up can
    // make the worker retry.
    cache.invalidate_key("b").await.unwrap();
    assert!(!cache.is_degraded());
    let mut turns = 0;
    while cache.pending_invalidations() > 0 && turns < 10_000 {
        tokio::task::yield_now().await;
        turns += 1;
    }
    assert_eq!(
        cache.pending_invalidations(),
        0,
        "still backing off after {turns} turns"
    );
    assert_eq!(cache.stats().invalidations_retried, 1);
}

/// A lane whose connection is no longer authenticated (`NOAUTH`: here its session was `RESET`, as
/// after a restart with `requirepass` or an ACL change) is dropped and reconnects with the URL's
/// password; the failure counts as the store being unavailable (before: a server error, and the
/// lane kept failing forever).
#[tokio::test]
async fn a_connection_that_lost_its_authentication_reconnects() {
    let server = ValkeyServer::start();
    let () = server
        .cli(&["CONFIG", "SET", "requirepass", "s3cret"])
        .await;
    let url = format!("redis://:s3cret@127.0.0.1:{}/", server.port());
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(url).response_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let cache = Cache::builder(store.clone())
        .namespace("t_auth")
        .timeout(OP)
        .build();
    let space = cache.key_space().clone();
    cache.invalidate_key("warm").await.unwrap();
    assert!(store.read(&space, "k").await.unwrap().value.is_none());

    let mut conn = store.connection().await.unwrap();
    let reset: String = redis::cmd("RESET").query_async(&mut conn).await.unwrap();
    assert_eq!(reset, "RESET");
    let e = store.read(&space, "k").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    // The next operation connects again and authenticates.
    let lookup = store.read(&space, "k").await.unwrap();
    assert!(lookup.value.is_none());
    assert_eq!(cache.invalidate_key("k").await.unwrap(), 0);
}

/// The invalidation of `item:1` ([`tagged_items`] with the tag template `item-{id}`) by key, by
/// tag and by pattern, each removing that one entry.
fn each_kind_of_item_1() -> [(&'static str, Invalidation); 3] {
    [
        ("key", Invalidation::new().key("item:1")),
        ("tag", Invalidation::new().tag("item-1")),
        ("pattern", Invalidation::new().pattern("item:1*")),
    ]
}

/// Without `invalidation_wait` a caller waits for the whole invalidation, however slow the store:
/// when it returns, the entries are gone from the store, so no process sharing it (which does not
/// know what this one owes) can read them afterwards.
async fn by_default_a_caller_waits_for_the_whole_invalidation(b: Backend) {
    // Past any wait a default could plausibly bound (the key kind); the rest shorter, to keep
    // the test short (a tag or a pattern takes several slowed operations).
    const SLOWEST: Duration = Duration::from_millis(2500);
    const SLOW: Duration = Duration::from_millis(400);
    let (cache, faults) = faulty(&b, "whole", |c| c.timeout(Duration::from_secs(10)));
    let (app, db) = tagged_items(&cache, 3, &["item-{id}"]);
    for (kind, invalidation) in each_kind_of_item_1() {
        warm(&app, 3).await;
        let written = db[1].fetch_add(1, Ordering::SeqCst) + 1;
        let slow = if kind == "key" { SLOWEST } else { SLOW };
        faults.slow(slow);
        let started = std::time::Instant::now();
        let removed = cache.invalidate(invalidation).await;
        let waited = started.elapsed();
        faults.slow(Duration::ZERO);
        assert_eq!(removed.map_err(|e| e.to_string()), Ok(1), "{kind}");
        assert!(waited >= slow, "{kind}: returned after {waited:?}");
        assert_eq!(cache.pending_invalidations(), 0, "{kind}: nothing owed");
        assert!(!has_entry(&cache, "item:1").await, "{kind}: still stored");
        let r = get_req(&app, "/items/1").await;
        assert_eq!((version(&r), r.is_hit()), (written, false), "{kind}");
    }
}

/// A caller waits `invalidation_wait` at most for its invalidation, whatever its kind and however
/// slow the store (issue 22: a pattern invalidation request took over 5 s under a slow Valkey).
/// Past the wait the invalidation is not cancelled: it lands later, and until it has, it is owed
/// (this process reads around the cache), so no read in between serves the entry it removes.
async fn a_slow_invalidation_is_owed_past_the_callers_wait(b: Backend) {
    const WAIT: Duration = Duration::from_millis(200);
    const SLOW: Duration = Duration::from_millis(1500);
    let (cache, faults) = faulty(&b, "late", |c| {
        c.invalidation_wait(WAIT)
            .timeout(Duration::from_secs(10))
            .bulk_timeout(Duration::from_secs(30))
    });
    let (app, db) = tagged_items(&cache, 3, &["item-{id}"]);
    for (kind, invalidation) in each_kind_of_item_1() {
        warm(&app, 3).await;
        let written = db[1].fetch_add(1, Ordering::SeqCst) + 1;
        faults.slow(SLOW);
        let started = std::time::Instant::now();
        let e = cache
            .invalidate(invalidation)
            .await
            .expect_err("still running past the wait");
        let waited = started.elapsed();
        faults.slow(Duration::ZERO);
        assert_eq!(e.kind(), StoreErrorKind::Timeout, "{kind}: {e}");
        assert!(
            waited < SLOW,
            "{kind}: the caller waited {waited:?}, past its {WAIT:?} wait"
        );
        // Owed from the moment the caller stops waiting until the invalidation has landed: every
        // read in between goes around the cache and answers what was written (a guard dropped
        // before the removal landed would let the read after the loop hit the old entry; one
        // never taken would leave nothing owed here).
        assert!(cache.pending_invalidations() > 0, "{kind}: not owed");
        assert!(has_entry(&cache, "item:1").await, "{kind}: already removed");
        let mut reads = 0;
        let deadline = std::time::Instant::now() + POLL;
        while cache.pending_invalidations() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind}: still owed after {POLL:?}"
            );
            let r = get_req(&app, "/items/1").await;
            assert_eq!((version(&r), r.is_hit()), (written, false), "{kind}");
            reads += 1;
            // Lets the invalidation's task run on a current-thread runtime (MemoryStore
            // answers without yielding).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(reads > 0, "{kind}: nothing was read while owed");
        let r = get_req(&app, "/items/1").await;
        assert_eq!(version(&r), written, "{kind}");
        assert_eq!(cache.stats().invalidations_queued, 0, "{kind}: it landed");
    }
}

/// A late invalidation that then fails hands itself to the retry queue with no moment where
/// nothing is owed: from the caller's return until the healed retry lands, this process reads
/// around the cache, and the retry lands what the late attempt could not.
async fn a_late_invalidation_that_fails_is_queued_without_a_gap(b: Backend) {
    const WAIT: Duration = Duration::from_millis(100);
    let (cache, faults) = faulty(&b, "late-fail", |c| {
        c.invalidation_wait(WAIT).timeout(Duration::from_secs(10))
    });
    let (app, db) = items(&cache, 3);
    warm(&app, 3).await;
    let written = db[1].fetch_add(1, Ordering::SeqCst) + 1;
    faults.slow(Duration::from_millis(600));
    faults.fail(Op::Invalidate);
    let e = cache.invalidate_key("item:1").await.expect_err("late");
    faults.slow(Duration::ZERO);
    assert_eq!(e.kind(), StoreErrorKind::Timeout, "{e}");
    assert_eq!(cache.stats().invalidations_late, 1);
    // Late, then failed and queued: owed at every read in between.
    let deadline = std::time::Instant::now() + POLL;
    while cache.stats().invalidations_queued == 0 {
        assert!(std::time::Instant::now() < deadline, "never queued");
        assert!(
            cache.pending_invalidations() > 0,
            "a gap between late and queued"
        );
        let r = get_req(&app, "/items/1").await;
        assert_eq!((version(&r), r.is_hit()), (written, false));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(cache.pending_invalidations() > 0, "queued, so owed");
    assert!(
        has_entry(&cache, "item:1").await,
        "the failed attempt removed nothing"
    );
    faults.heal(Op::Invalidate);
    eventually(POLL, "the retry to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    assert!(!has_entry(&cache, "item:1").await, "the retry removed it");
    let r = get_req(&app, "/items/1").await;
    assert_eq!(version(&r), written);
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        a_late_invalidation_that_fails_is_queued_without_a_gap,
        by_default_a_caller_waits_for_the_whole_invalidation,
        a_slow_invalidation_is_owed_past_the_callers_wait,
        outage_down_longer_than_the_queue,
        outage_of_invalidations_longer_than_the_queue,
        a_retry_past_give_up_after_becomes_a_floor,
        duplicates_are_owed_once,
    );
}

mod cluster {
    crate::support::on!(super::Backend::cluster(super::CLUSTER) =>
        a_late_invalidation_that_fails_is_queued_without_a_gap,
        by_default_a_caller_waits_for_the_whole_invalidation,
        a_slow_invalidation_is_owed_past_the_callers_wait,
        outage_of_invalidations_longer_than_the_queue,
        a_retry_past_give_up_after_becomes_a_floor,
    );
}

/// The same scenarios in a namespace of 8 shards (one server, MemoryStore).
mod valkey_sharded {
    crate::support::on!(super::Backend::valkey(super::VALKEY).sharded(8) =>
        a_late_invalidation_that_fails_is_queued_without_a_gap,
        by_default_a_caller_waits_for_the_whole_invalidation,
        a_slow_invalidation_is_owed_past_the_callers_wait,
        outage_down_longer_than_the_queue,
        outage_of_invalidations_longer_than_the_queue,
        a_retry_past_give_up_after_becomes_a_floor,
        duplicates_are_owed_once,
    );
}

mod memory_sharded {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()).sharded(8) =>
        a_late_invalidation_that_fails_is_queued_without_a_gap,
        by_default_a_caller_waits_for_the_whole_invalidation,
        a_slow_invalidation_is_owed_past_the_callers_wait,
        outage_down_longer_than_the_queue,
        outage_of_invalidations_longer_than_the_queue,
        a_retry_past_give_up_after_becomes_a_floor,
        duplicates_are_owed_once,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        a_late_invalidation_that_fails_is_queued_without_a_gap,
        by_default_a_caller_waits_for_the_whole_invalidation,
        a_slow_invalidation_is_owed_past_the_callers_wait,
        outage_down_longer_than_the_queue,
        outage_of_invalidations_longer_than_the_queue,
        a_retry_past_give_up_after_becomes_a_floor,
        duplicates_are_owed_once,
    );
}
