//! The L1 tier (issue 9): hits without a network call, coherence across instances sharing one
//! Valkey through pub/sub (keys, patterns, tags, and through routes), deaf mode while the
//! subscription is down (revoked, killed, Valkey restarted), stale serving and single-flight with
//! L1 on, and the in-process bus of `MemoryStore`.
//!
//! Every test starts its own `valkey-server`. Cross-instance propagation is polled with a bound,
//! never slept; once the new value is seen, the old one must never come back.

use crate::support;

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::Router;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{eventually, get as get_req, request, send, ValkeyServer};
use tower_valkey_cache::function::Options;
use tower_valkey_cache::store::{
    KeySpace, Lookup, LookupMany, Store, StoreFuture, Target, Write, Written,
};
use tower_valkey_cache::ValkeyStore;
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, MemoryStore, ValkeyConfig};

/// Bound for cross-instance propagation and resubscription.
const POLL: Duration = Duration::from_secs(5);

/// A store with generous timeouts (debug builds of parallel tests on a small machine), for
/// `url` (which may carry ACL credentials).
fn store(url: &str) -> ValkeyStore {
    ValkeyStore::with_config(
        ValkeyConfig::from_url(url)
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2))
            .wait_timeout(Duration::from_secs(1)),
    )
    .expect("valkey store")
}

/// An instance: a cache with L1 on namespace `ns` of the server at `url`.
fn instance(url: &str, ns: &str) -> Cache {
    Cache::builder(store(url))
        .namespace(ns)
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_secs(1))
        .l1(1_000, Duration::from_secs(60))
        .build()
}

async fn listening(cache: &Cache) {
    eventually(POLL, "the L1 subscription", || async {
        cache.l1_stats().expect("L1 on").listening.then_some(())
    })
    .await;
}

/// The "database" every instance loads from: a version number.
#[derive(Clone, Default)]
struct Db(Arc<AtomicU64>);

impl Db {
    fn set(&self, v: u64) {
        self.0.store(v, Ordering::SeqCst);
    }
}

/// `get_or_set` of `key` (tagged `t`) loading the database's version.
async fn read(cache: &Cache, key: &str, db: &Db) -> u64 {
    let opts = Options::new().tags(["t"]);
    let db = db.clone();
    cache
        .get_or_set_with(key, &opts, || async move {
            Ok::<_, Infallible>(db.0.load(Ordering::SeqCst))
        })
        .await
        .unwrap()
}

fn hits(cache: &Cache) -> u64 {
    cache.l1_stats().expect("L1 on").hits
}

/// Reads `key` on `cache` until it shows `want` (bounded), then checks it keeps showing it.
async fn converges(cache: &Cache, key: &str, db: &Db, want: u64) {
    let started = Instant::now();
    eventually(POLL, "the other instance to drop its L1 copy", || async {
        let v = read(cache, key, db).await;
        assert!(v <= want, "read {v}, newer than {want}");
        (v == want).then_some(())
    })
    .await;
    eprintln!(
        "{key}: seen on the other instance after {:?}",
        started.elapsed()
    );
    for _ in 0..50 {
        assert_eq!(read(cache, key, db).await, want, "the old value came back");
    }
}

// ---------------------------------------------------------------------------------------------
// Hits without the network
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hit_makes_no_network_call() {
    let server = ValkeyServer::start();
    let (a, b) = (
        instance(&server.url(), "nonet"),
        instance(&server.url(), "nonet"),
    );
    listening(&a).await;
    listening(&b).await;
    let db = Db::default();
    db.set(1);
    // A fills (its stored write fills its L1); B reads it from Valkey (which fills B's L1).
    assert_eq!(read(&a, "k", &db).await, 1);
    assert_eq!(read(&b, "k", &db).await, 1);
    let before = (hits(&a), hits(&b));

    // Frozen Valkey: any store call would time out (1 s) and the loader would answer 2.
    server.pause();
    db.set(2);
    let started = Instant::now();
    let (va, vb) = (read(&a, "k", &db).await, read(&b, "k", &db).await);
    let took = started.elapsed();
    server.resume();
    assert_eq!((va, vb), (1, 1), "answered from L1, not the loader");
    assert!(
        took < Duration::from_millis(200),
        "two L1 hits took {took:?}"
    );
    assert_eq!((hits(&a), hits(&b)), (before.0 + 1, before.1 + 1));
}

// ---------------------------------------------------------------------------------------------
// Coherence: an invalidation on A reaches B's L1
// ---------------------------------------------------------------------------------------------

enum Kind {
    Key,
    Pattern,
    Tag,
}

async fn invalidation_reaches_the_other_instance(kind: Kind) {
    let server = ValkeyServer::start();
    let (a, b) = (
        instance(&server.url(), "coh"),
        instance(&server.url(), "coh"),
    );
    listening(&a).await;
    listening(&b).await;
    let db = Db::default();
    db.set(1);
    for key in ["item:1", "item:2"] {
        assert_eq!(read(&a, key, &db).await, 1);
        assert_eq!(read(&b, key, &db).await, 1); // from Valkey, fills B's L1
        let h = hits(&b);
        assert_eq!(read(&b, key, &db).await, 1);
        assert_eq!(hits(&b), h + 1, "B answers {key} from L1");
    }
    let heard = b.l1_stats().unwrap().messages;

    db.set(2);
    match kind {
        Kind::Key => {
            a.invalidate_keys(&["item:1".into(), "item:2".into()])
                .await
                .unwrap();
        }
        Kind::Pattern => {
            a.invalidate_pattern("item:*").await.unwrap();
        }
        Kind::Tag => {
            a.invalidate_tag("t").await.unwrap();
        }
    }
    // The instance that invalidated dropped its own copies before returning.
    assert_eq!(read(&a, "item:1", &db).await, 2);
    converges(&b, "item:1", &db, 2).await;
    converges(&b, "item:2", &db, 2).await;
    assert!(b.l1_stats().unwrap().messages > heard);
    // And B serves the new value from L1 again.
    let h = hits(&b);
    assert_eq!(read(&b, "item:1", &db).await, 2);
    assert_eq!(hits(&b), h + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_invalidation_reaches_the_other_instance() {
    invalidation_reaches_the_other_instance(Kind::Key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_invalidation_reaches_the_other_instance() {
    invalidation_reaches_the_other_instance(Kind::Pattern).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_reaches_the_other_instance() {
    invalidation_reaches_the_other_instance(Kind::Tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_are_not_touched() {
    let server = ValkeyServer::start();
    let a = instance(&server.url(), "ns_a");
    let b = instance(&server.url(), "ns_b");
    listening(&a).await;
    listening(&b).await;
    let db = Db::default();
    db.set(1);
    assert_eq!(read(&b, "k", &db).await, 1);
    a.invalidate_tag("t").await.unwrap();
    a.invalidate_key("k").await.unwrap();
    // Give a wrongly routed message every chance to arrive: a message B does hear, after them.
    let c = instance(&server.url(), "ns_b");
    listening(&c).await;
    let heard = b.l1_stats().unwrap().messages;
    c.invalidate_key("other").await.unwrap();
    eventually(POLL, "B hears its own namespace", || async {
        (b.l1_stats().unwrap().messages > heard).then_some(())
    })
    .await;
    assert_eq!(b.l1_stats().unwrap().messages, heard + 1);
    let h = hits(&b);
    db.set(2);
    assert_eq!(read(&b, "k", &db).await, 1, "still cached in B's namespace");
    assert_eq!(hits(&b), h + 1);
}

// ---------------------------------------------------------------------------------------------
// Deaf mode
// ---------------------------------------------------------------------------------------------

/// B's subscription is revoked (ACL: its connection is closed and SUBSCRIBE refused), so it is
/// deaf for as long as the test wants; an invalidation on A meanwhile must not leave B serving
/// its old L1 copy; once allowed again, B resubscribes, flushes and uses L1 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_instance_bypasses_l1_until_it_resubscribes() {
    let server = ValkeyServer::start();
    let () = server
        .cli(&["ACL", "SETUSER", "b", "on", ">pw", "~*", "&*", "+@all"])
        .await;
    let b_url = format!("redis://b:pw@127.0.0.1:{}/", server.port());
    let a = instance(&server.url(), "deaf");
    let b = instance(&b_url, "deaf");
    listening(&a).await;
    listening(&b).await;
    let db = Db::default();
    db.set(1);
    assert_eq!(read(&a, "k", &db).await, 1);
    assert_eq!(read(&b, "k", &db).await, 1);
    let h = hits(&b);
    assert_eq!(read(&b, "k", &db).await, 1);
    assert_eq!(hits(&b), h + 1);

    // Valkey closes the subscriptions of a user whose channel permissions are revoked.
    let () = server.cli(&["ACL", "SETUSER", "b", "resetchannels"]).await;
    eventually(POLL, "B to notice it lost its subscription", || async {
        (!b.l1_stats().unwrap().listening).then_some(())
    })
    .await;
    assert_eq!(b.l1_stats().unwrap().subscriptions_lost, 1);

    db.set(2);
    a.invalidate_key("k").await.unwrap();
    let bypassed = b.l1_stats().unwrap().bypassed;
    for _ in 0..20 {
        assert_eq!(
            read(&b, "k", &db).await,
            2,
            "a deaf instance served its L1 copy"
        );
    }
    let st = b.l1_stats().unwrap();
    assert!(!st.listening);
    assert!(st.bypassed >= bypassed + 20, "{st:?}");
    assert_eq!(st.hits, h + 1, "no L1 hit while deaf");

    let () = server.cli(&["ACL", "SETUSER", "b", "allchannels"]).await;
    listening(&b).await;
    assert_eq!(read(&b, "k", &db).await, 2);
    let h = hits(&b);
    assert_eq!(read(&b, "k", &db).await, 2);
    assert_eq!(hits(&b), h + 1, "L1 back on after resubscribing");
}

/// `CLIENT KILL TYPE pubsub`: B notices at once, resubscribes on its own; an invalidation made
/// once B noticed is never answered by B's old copy, whether B is still deaf or back already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscription_never_serves_a_stale_l1_hit() {
    let server = ValkeyServer::start();
    let (a, b) = (
        instance(&server.url(), "kill"),
        instance(&server.url(), "kill"),
    );
    listening(&a).await;
    listening(&b).await;
    let db = Db::default();
    db.set(1);
    assert_eq!(read(&a, "k", &db).await, 1);
    assert_eq!(read(&b, "k", &db).await, 1);
    let h = hits(&b);
    assert_eq!(read(&b, "k", &db).await, 1);
    assert_eq!(hits(&b), h + 1);

    let killed: i64 = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, 2, "A's and B's subscriptions");
    eventually(POLL, "B to notice the kill", || async {
        (b.l1_stats().unwrap().subscriptions_lost >= 1).then_some(())
    })
    .await;
    db.set(2);
    a.invalidate_key("k").await.unwrap();
    for _ in 0..20 {
        assert_eq!(read(&b, "k", &db).await, 2, "stale L1 hit after the kill");
    }
    listening(&b).await;
    assert!(b.l1_stats().unwrap().subscriptions >= 2);
    assert_eq!(read(&b, "k", &db).await, 2);
    let h = hits(&b);
    assert_eq!(read(&b, "k", &db).await, 2);
    assert_eq!(hits(&b), h + 1);
}

/// Valkey restarts (its data lost): both instances go deaf while it is down, an invalidation
/// attempted meanwhile fails but drops A's copy, B answers from its loader rather than from its
/// L1, and once Valkey is back both resubscribe with an empty L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_restart_makes_instances_deaf_then_flushes_them() {
    let mut server = ValkeyServer::start();
    let (a, b) = (
        instance(&server.url(), "restart"),
        instance(&server.url(), "restart"),
    );
    listening(&a).await;
    listening(&b).await;
    let db = Db::default();
    db.set(1);
    assert_eq!(read(&a, "k", &db).await, 1);
    assert_eq!(read(&b, "k", &db).await, 1);
    assert_eq!(read(&b, "k", &db).await, 1);

    server.stop();
    eventually(POLL, "both instances to go deaf", || async {
        (!a.l1_stats().unwrap().listening && !b.l1_stats().unwrap().listening).then_some(())
    })
    .await;
    db.set(2);
    assert!(a.invalidate_key("k").await.is_err(), "Valkey is down");
    assert_eq!(read(&a, "k", &db).await, 2, "A dropped its own copy");
    assert_eq!(read(&b, "k", &db).await, 2, "B is deaf: no L1 hit");

    server.restart();
    listening(&a).await;
    listening(&b).await;
    db.set(3);
    // (The store's first commands after the restart may fail on connections that died with the
    // old server: poll until L1 is filled and used again.)
    eventually(POLL, "B to answer from L1 again", || async {
        let h = hits(&b);
        assert_eq!(read(&b, "k", &db).await, 3, "flushed on resubscribing");
        (hits(&b) > h).then_some(())
    })
    .await;
}

/// A frozen Valkey (SIGSTOP: connections stay open, nothing answers) is what a network partition
/// looks like: the heartbeat `PING` goes unanswered, the instance goes deaf; once Valkey answers
/// again it resubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_heartbeat_makes_the_instance_deaf() {
    let server = ValkeyServer::start();
    let a = instance(&server.url(), "heartbeat");
    listening(&a).await;
    // A few heartbeats answered: no spurious deafness on a live server.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let st = a.l1_stats().unwrap();
    assert_eq!((st.subscriptions, st.subscriptions_lost), (1, 0), "{st:?}");
    server.pause();
    let paused = Instant::now();
    let deaf = tokio::time::timeout(POLL, async {
        while a.l1_stats().unwrap().listening {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.resume();
    assert!(deaf.is_ok(), "still listening {POLL:?} after Valkey froze");
    let took = paused.elapsed();
    eprintln!("deaf {took:?} after Valkey froze");
    // Heartbeat every 1 s, 2 s to answer.
    assert!(
        took >= Duration::from_millis(1500),
        "deaf after only {took:?}"
    );
    listening(&a).await;
    let st = a.l1_stats().unwrap();
    assert_eq!((st.subscriptions, st.subscriptions_lost), (2, 1), "{st:?}");
}

// ---------------------------------------------------------------------------------------------
// Local races: reads racing invalidations on one instance never go back in time
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reads_racing_invalidations_never_see_an_older_value() {
    let server = ValkeyServer::start();
    let a = instance(&server.url(), "race");
    listening(&a).await;
    let db = Db::default();
    db.set(1);
    // The version acknowledged: after invalidate returns for version v, reads started later
    // must see >= v.
    let acked = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (a, db, acked, stop) = (a.clone(), db.clone(), acked.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let floor = acked.load(Ordering::SeqCst);
                let v = read(&a, "hot", &db).await;
                assert!(
                    v >= floor,
                    "read {v} after version {floor} was acknowledged"
                );
                n += 1;
                // An L1 hit completes without ever being pending: let the other tasks run.
                tokio::task::yield_now().await;
            }
            n
        }));
    }
    for v in 2..=60 {
        db.set(v);
        if v % 3 == 0 {
            a.invalidate_pattern("ho*").await.unwrap();
        } else {
            a.invalidate_key("hot").await.unwrap();
        }
        acked.store(v, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    let st = a.l1_stats().unwrap();
    eprintln!("{reads} reads, {st:?}");
    assert!(st.hits > 0, "L1 was used: {st:?}");
}

// ---------------------------------------------------------------------------------------------
// Through routes
// ---------------------------------------------------------------------------------------------

type Items = Arc<Mutex<HashMap<u64, u64>>>;

/// One app instance: `GET /items/{id}` cached (key `item:{id}`), `PUT /items/{id}` bumping the
/// item's version in the shared database and invalidating the key.
fn app(cache: &Cache, db: &Items, handler_runs: &Arc<AtomicUsize>) -> Router {
    let read = {
        let runs = handler_runs.clone();
        move |Path(id): Path<u64>, State(db): State<Items>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                let v = *db.lock().unwrap().entry(id).or_insert(1);
                format!("item {id} version {v}")
            }
        }
    };
    let write = |Path(id): Path<u64>, State(db): State<Items>| async move {
        *db.lock().unwrap().entry(id).or_insert(1) += 1;
        "updated"
    };
    Router::new()
        .route(
            "/items/{id}",
            get(read)
                .route_layer(
                    CacheLayer::new(cache.clone())
                        .key("item:{id}")
                        .stale_while_revalidate(Duration::from_secs(30)),
                )
                .merge(
                    put(write).route_layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"])),
                ),
        )
        .with_state(db.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_instance_is_seen_by_the_other() {
    let server = ValkeyServer::start();
    let (ca, cb) = (
        instance(&server.url(), "routes"),
        instance(&server.url(), "routes"),
    );
    listening(&ca).await;
    listening(&cb).await;
    let db = Items::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, b) = (app(&ca, &db, &runs), app(&cb, &db, &runs));

    let r = get_req(&a, "/items/1").await;
    assert_eq!(r.text(), "item 1 version 1");
    assert!(!r.is_hit());
    let r = get_req(&b, "/items/1").await; // a Valkey hit, fills B's L1
    assert!(r.is_hit(), "{}", r.cache_status());
    let h = hits(&cb);
    let r = get_req(&b, "/items/1").await;
    assert!(r.is_hit());
    assert_eq!(hits(&cb), h + 1, "B answers from L1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let r = send(&a, request("PUT", "/items/1", &[])).await;
    assert_eq!(r.status, 200);
    let started = Instant::now();
    eventually(POLL, "B to serve version 2", || async {
        let r = get_req(&b, "/items/1").await;
        (r.text() == "item 1 version 2").then_some(())
    })
    .await;
    eprintln!(
        "B served the new version {:?} after the PUT",
        started.elapsed()
    );
    for _ in 0..20 {
        assert_eq!(get_req(&b, "/items/1").await.text(), "item 1 version 2");
        assert_eq!(get_req(&a, "/items/1").await.text(), "item 1 version 2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_and_stale_serving_work_with_l1() {
    let server = ValkeyServer::start();
    let cache = instance(&server.url(), "sf");
    listening(&cache).await;
    let db = Items::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let route = |ttl: Duration| {
        let runs = runs.clone();
        let handler = move |State(db): State<Items>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let v = *db.lock().unwrap().entry(7).or_insert(1);
                format!("version {v}")
            }
        };
        Router::new()
            .route(
                "/x",
                get(handler).route_layer(
                    CacheLayer::new(cache.clone())
                        .ttl(ttl)
                        .stale_while_revalidate(Duration::from_secs(30)),
                ),
            )
            .with_state(db.clone())
    };
    let app = route(Duration::from_millis(600));

    // Single-flight: concurrent misses run the handler once.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move { get_req(&app, "/x").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().text(), "version 1");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one handler run");
    let h = hits(&cache);
    assert!(get_req(&app, "/x").await.is_hit());
    assert_eq!(hits(&cache), h + 1, "fresh hit from L1");

    // Past its freshness the entry has left L1; the store serves it stale and one background
    // refresh replaces it.
    db.lock().unwrap().insert(7, 2);
    let stale = eventually(POLL, "the entry to go stale", || async {
        let r = get_req(&app, "/x").await;
        r.cache_status().contains("ttl=-").then_some(r)
    })
    .await;
    assert_eq!(stale.text(), "version 1", "{}", stale.cache_status());
    eventually(POLL, "the refresh to land", || async {
        let r = get_req(&app, "/x").await;
        (r.text() == "version 2" && r.is_hit()).then_some(())
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one refresh");
    let h = hits(&cache);
    assert_eq!(get_req(&app, "/x").await.text(), "version 2");
    assert_eq!(hits(&cache), h + 1, "the refreshed entry is in L1");
}

// ---------------------------------------------------------------------------------------------
// MemoryStore: the in-process bus
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_store_caches_share_invalidations_synchronously() {
    let store = MemoryStore::new();
    let build = |s: MemoryStore| {
        Cache::builder(s)
            .namespace("mem")
            .l1(100, Duration::from_secs(60))
            .build()
    };
    let (a, b) = (build(store.clone()), build(store.clone()));
    // Without L1, but announcing: every cache on a MemoryStore does.
    let c = Cache::builder(store.clone()).namespace("mem").build();
    assert!(a.l1_stats().unwrap().listening);
    let db = Db::default();
    db.set(1);
    assert_eq!(read(&a, "k", &db).await, 1);
    assert_eq!(read(&b, "k", &db).await, 1);
    let h = hits(&b);
    assert_eq!(read(&b, "k", &db).await, 1);
    assert_eq!(hits(&b), h + 1);
    db.set(2);
    a.invalidate_key("k").await.unwrap();
    assert_eq!(read(&b, "k", &db).await, 2, "synchronous on one process");
    db.set(3);
    c.invalidate_pattern("*").await.unwrap();
    assert_eq!(read(&b, "k", &db).await, 3);
    assert_eq!(read(&a, "k", &db).await, 3);
}

#[test]
#[should_panic(expected = "CacheBuilder::l1 needs a store")]
fn a_store_without_a_bus_cannot_have_l1() {
    #[derive(Debug)]
    struct Plain(MemoryStore);
    impl Store for Plain {
        fn read<'a>(&'a self, s: &'a KeySpace, k: &'a str) -> StoreFuture<'a, Lookup> {
            self.0.read(s, k)
        }
        fn write<'a>(&'a self, s: &'a KeySpace, w: Write<'a>) -> StoreFuture<'a, Written> {
            self.0.write(s, w)
        }
        fn read_many<'a>(
            &'a self,
            s: &'a KeySpace,
            k: &'a [String],
        ) -> StoreFuture<'a, LookupMany> {
            self.0.read_many(s, k)
        }
        fn write_many<'a>(
            &'a self,
            s: &'a KeySpace,
            w: Vec<Write<'a>>,
        ) -> StoreFuture<'a, Vec<Written>> {
            self.0.write_many(s, w)
        }
        fn invalidate<'a>(&'a self, s: &'a KeySpace, t: Target<'a>) -> StoreFuture<'a, u64> {
            self.0.invalidate(s, t)
        }
        fn try_lock<'a>(
            &'a self,
            s: &'a KeySpace,
            k: &'a str,
            t: &'a str,
            l: Duration,
        ) -> StoreFuture<'a, bool> {
            self.0.try_lock(s, k, t, l)
        }
        fn unlock<'a>(&'a self, s: &'a KeySpace, k: &'a str, t: &'a str) -> StoreFuture<'a, ()> {
            self.0.unlock(s, k, t)
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            self.0.ping()
        }
        fn name(&self) -> &'static str {
            "plain"
        }
    }
    let _ = Cache::builder(Plain(MemoryStore::new()))
        .l1(10, Duration::from_secs(1))
        .build();
}

// ---------------------------------------------------------------------------------------------
// Measurement (not a check): L1 hits against Valkey hits, in process
// ---------------------------------------------------------------------------------------------

/// `cargo test --release --test l1 -- --ignored --nocapture measure`: 50,000 `oneshot` requests
/// per mode through a `Router` (1 KiB body), 32 at a time, side by side in one run: the bare
/// handler (the in-process ceiling), a `CacheLayer` hit from Valkey, and the same hit from L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
async fn measure_l1_hits_against_valkey_hits() {
    use tower::ServiceExt;
    const N: usize = 50_000;
    const CONCURRENCY: usize = 32;
    let server = ValkeyServer::start();
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let handler = move || {
        let body = body.clone();
        async move { body }
    };
    let bare: Router = Router::new().route("/item/1", get(handler.clone()));
    let routed = |cache: Cache| -> Router {
        Router::new().route(
            "/item/1",
            get(handler.clone()).route_layer(CacheLayer::new(cache).ttl(Duration::from_secs(600))),
        )
    };
    let valkey = routed(
        Cache::builder(store(&server.url()))
            .namespace("bench_valkey")
            .build(),
    );
    let l1_cache = instance(&server.url(), "bench_l1");
    listening(&l1_cache).await;
    let l1 = routed(l1_cache.clone());
    for app in [&valkey, &l1] {
        get_req(app, "/item/1").await;
        assert!(get_req(app, "/item/1").await.is_hit());
    }

    async fn run(app: &Router) -> f64 {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..N / CONCURRENCY {
                    let req = http::Request::get("/item/1")
                        .body(axum::body::Body::empty())
                        .unwrap();
                    let res = app.clone().oneshot(req).await.unwrap();
                    let body = http_body_util::BodyExt::collect(res.into_body())
                        .await
                        .unwrap();
                    assert_eq!(body.to_bytes().len(), 1024);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (N / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
    }

    let memory = routed(
        Cache::builder(MemoryStore::new())
            .namespace("bench_mem")
            .build(),
    );
    get_req(&memory, "/item/1").await;
    let modes: [(&str, &Router); 4] = [
        ("bare", &bare),
        ("valkey-hit", &valkey),
        ("memory-hit", &memory),
        ("l1-hit", &l1),
    ];
    let mut best = [0f64; 4];
    for _round in 0..3 {
        for (n, (_, app)) in modes.iter().enumerate() {
            best[n] = best[n].max(run(app).await);
        }
    }
    let hits = l1_cache.l1_stats().unwrap().hits;
    println!("\n| mode | req/s (best of 3 x {N}) | vs bare |\n|---|---|---|");
    for (n, (name, _)) in modes.iter().enumerate() {
        println!("| {name} | {:.0} | {:.2}x |", best[n], best[n] / best[0]);
    }
    println!(
        "\nL1 hit / Valkey hit: {:.2}x  (L1 hits counted: {hits})",
        best[3] / best[1]
    );
}
