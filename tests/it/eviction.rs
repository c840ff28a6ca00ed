//! Bounded namespaces (`tower_valkey_cache::eviction`): every policy against a plain reference
//! model ([`model`]: TTLs, deletes, invalidations, overwrites, standalone and route) on real
//! Valkey and on `MemoryStore`, the reported regressions (dead members pinning capacity),
//! concurrency, leftovers, Valkey Cluster and a bounded route.

#[path = "eviction/model.rs"]
mod model;
use crate::support;

use model::{unique, Raw};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{valkey_store, StoreTimeouts, ValkeyServer};
use tower_valkey_cache::eviction::{
    BoundedCache, BoundedStore, Evict, EvictionPolicy, Fifo, Lfu, Lifo, Lru, Mru, Scoring, Touch,
};
use tower_valkey_cache::store::ranked::{RankedSpace, Spec, STAMP_BITS, TRIM_BATCH};
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{MemoryStore, ValkeyStore};

// ---------------------------------------------------------------------------------------------
// Custom policies, as a user would write them.

/// Most frequently used.
#[derive(Clone, Debug)]
struct Mfu(usize);

impl EvictionPolicy for Mfu {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        Scoring {
            on_set: Touch::Count,
            on_get: Touch::Count,
            evict: Evict::Highest,
        }
    }
}

/// FIFO by first insertion: overwrites keep their place.
#[derive(Clone, Debug)]
struct FirstIn(usize);

impl EvictionPolicy for FirstIn {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        Scoring {
            on_set: Touch::Keep,
            on_get: Touch::Keep,
            evict: Evict::Lowest,
        }
    }
}

/// LFU that counts reads only (a set stamps but keeps the count).
#[derive(Clone, Debug)]
struct ReadLfu(usize);

impl EvictionPolicy for ReadLfu {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        Scoring {
            on_set: Touch::Stamp,
            on_get: Touch::Count,
            evict: Evict::Lowest,
        }
    }
}

/// Any scoring, as a policy.
#[derive(Clone, Debug)]
struct Custom(usize, Scoring);

impl EvictionPolicy for Custom {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        self.1
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

/// The Valkey stores' timeouts: generous (debug builds of parallel tests on a busy machine).
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(5));

/// Random cases per model test.
const CASES: u32 = 40;
/// Random cases per route model test (each step is an HTTP request and a few store reads).
const ROUTE_CASES: u32 = 24;

/// Reads `server`'s values around the index.
fn raw(server: &ValkeyServer) -> Raw {
    Some(server.url())
}

/// Every policy and three custom ones against the model ([`model`]): random sets (with and
/// without TTLs, overwrites), reads, deletes, expiry and invalidations, on both paths
/// (`BoundedCache`, a bounded route) and both stores. After every step the live entries,
/// `len()`, the eviction order and the evictions equal the model's, where a dead entry is
/// absent: no set evicts a live entry while a dead one is indexed.
macro_rules! model_tests {
    ($($name:ident: $make:expr;)*) => {
        mod model_valkey {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let server = ValkeyServer::start();
                    let store = valkey_store(&server, VALKEY);
                    model::check_standalone(store.into(), raw(&server), $make, None, CASES);
                }
            )*
        }
        mod model_memory {
            use super::*;
            $(
                #[test]
                fn $name() {
                    model::check_standalone(MemoryStore::new().into(), None, $make, None, CASES);
                }
            )*
        }
        mod route_model_valkey {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let server = ValkeyServer::start();
                    let store = valkey_store(&server, VALKEY);
                    model::check_route(store, "route", None, $make, ROUTE_CASES);
                }
            )*
        }
        mod route_model_memory {
            use super::*;
            $(
                #[test]
                fn $name() {
                    model::check_route(MemoryStore::new(), "route", None, $make, ROUTE_CASES);
                }
            )*
        }
    };
}

model_tests! {
    fifo: Fifo::with_capacity;
    lifo: Lifo::with_capacity;
    lru: Lru::with_capacity;
    mru: Mru::with_capacity;
    lfu: Lfu::with_capacity;
    custom_mfu: Mfu;
    custom_first_in: FirstIn;
    custom_read_lfu: ReadLfu;
}

/// The route model on Valkey Cluster, in a namespace of the cluster's default 128 shards: the
/// route lives in shard 0 (`KeySpace::bounded`), and the invalidation scripts (a key's reaches
/// shard 0 too) and the pattern scan remove index members there.
#[test]
fn route_model_cluster() {
    // A store per run: each run has its own runtime, which the store's connections live on.
    let (_, store, sfx) = support::shared_cluster_store(Duration::from_secs(5));
    model::check_route(store, &format!("rc-lfu{sfx}"), None, Lfu::with_capacity, 8);
    let (_, store, sfx) = support::shared_cluster_store(Duration::from_secs(5));
    model::check_route(
        store,
        &format!("rc-lifo{sfx}"),
        None,
        Lifo::with_capacity,
        8,
    );
}

/// The route model in sharded namespaces on one server and in memory: capacity and order are
/// exact (the route keeps to shard 0), and key, tag and pattern invalidations, each reaching
/// shard 0, remove the route's entries and their members.
#[test]
fn route_model_sharded() {
    model::check_route(
        MemoryStore::new(),
        "rs-lru",
        Some(8),
        Lru::with_capacity,
        ROUTE_CASES,
    );
    model::check_route(
        MemoryStore::new(),
        "rs-lfu",
        Some(8),
        Lfu::with_capacity,
        ROUTE_CASES,
    );
    // A store per run: each run has its own runtime, which the store's connections live on.
    let server = ValkeyServer::start();
    let store = || valkey_store(&server, VALKEY);
    model::check_route(
        store(),
        "rs-lifo",
        Some(8),
        Lifo::with_capacity,
        ROUTE_CASES,
    );
    model::check_route(store(), "rs-lfu", Some(8), Lfu::with_capacity, ROUTE_CASES);
}

/// With 5 stamp bits the counting policies renumber their stamps every ~28 operations: the order
/// must not change.
#[test]
fn stamp_renumbering_keeps_the_order_on_valkey() {
    let server = ValkeyServer::start();
    let store = || BoundedStore::from(valkey_store(&server, VALKEY));
    model::check_standalone(store(), raw(&server), Lfu::with_capacity, Some(5), CASES);
    model::check_standalone(store(), raw(&server), Mfu, Some(5), CASES);
    model::check_standalone(store(), raw(&server), ReadLfu, Some(5), CASES);
}

// ---------------------------------------------------------------------------------------------
// Dead members never pin capacity: the reported shapes, and the bounds.

const SHORT: Duration = Duration::from_millis(150);
/// Past `SHORT`, with room for Valkey's millisecond expiry.
const PAST_SHORT: Duration = Duration::from_millis(250);

/// Reported: an LFU namespace whose popular keys expired kept about one live entry (the dead
/// ones, ranked high, were never the victim; every set evicted the one live entry).
async fn lfu_whose_popular_keys_expired_keeps_its_capacity(store: BoundedStore) {
    let lfu = BoundedCache::<u32, Lfu>::new(store, &unique("reg-lfu"), Lfu::with_capacity(4));
    for k in ["p0", "p1", "p2"] {
        lfu.set_with_ttl(k, &1, Some(SHORT)).await.unwrap();
        for _ in 0..5 {
            lfu.get(k).await.unwrap();
        }
    }
    lfu.set("c0", &2).await.unwrap();
    tokio::time::sleep(PAST_SHORT).await;
    for k in ["n0", "n1", "n2"] {
        assert_eq!(lfu.set(k, &3).await.unwrap(), Vec::<String>::new(), "{k}");
    }
    assert_eq!(lfu.len().await.unwrap(), 4);
    assert_eq!(lfu.keys().await.unwrap(), ["c0", "n0", "n1", "n2"]);
    // Full of live entries: now a live one goes, the least frequently (then recently) used.
    assert_eq!(lfu.set("n3", &4).await.unwrap(), ["c0"]);
    assert_eq!(lfu.len().await.unwrap(), 4);
}

/// Reported: a LIFO namespace with TTLs shrank to one or two live entries while `len()` said
/// full (the dead sat at the old end; every set evicted the newest live entry). A long-lived
/// entry keeps the index alive past the short ones.
async fn lifo_with_ttls_keeps_its_capacity(store: BoundedStore) {
    let lifo = BoundedCache::<u32, Lifo>::new(store, &unique("reg-lifo"), Lifo::with_capacity(5));
    lifo.set("keep", &0).await.unwrap();
    for i in 0..4 {
        lifo.set_with_ttl(&format!("a{i}"), &i, Some(SHORT))
            .await
            .unwrap();
    }
    tokio::time::sleep(PAST_SHORT).await;
    for i in 0..10u32 {
        let evicted = lifo.set(&format!("b{i}"), &i).await.unwrap();
        let want: Vec<String> = if i < 4 {
            vec![]
        } else {
            vec![format!("b{}", i - 1)]
        };
        assert_eq!(evicted, want, "b{i}");
    }
    assert_eq!(lifo.keys().await.unwrap(), ["b9", "b2", "b1", "b0", "keep"]);
    assert_eq!(lifo.len().await.unwrap(), 5);
}

/// More dead members than one write trims ([`TRIM_BATCH`]): `len` is exact at once, and no set
/// evicts a live entry while dead ones remain (a set that must make room finds them first).
async fn more_dead_members_than_a_trim_batch(store: BoundedStore) {
    const DEAD: usize = 2 * TRIM_BATCH + 40;
    const CAP: usize = DEAD + 10;
    let cache =
        BoundedCache::<u32, Mru>::new(store.clone(), &unique("batch"), Mru::with_capacity(CAP));
    for i in 0..10u32 {
        cache.set(&format!("live{i}"), &i).await.unwrap();
    }
    // Long enough that the first dead entry is still alive after the last one is written on a
    // loaded machine; the sleep then waits from the last write.
    const DEAD_TTL: Duration = Duration::from_secs(3);
    let started = std::time::Instant::now();
    for i in 0..DEAD as u32 {
        cache
            .set_with_ttl(&format!("dead{i}"), &i, Some(DEAD_TTL))
            .await
            .unwrap();
    }
    let len = cache.len().await.unwrap();
    if started.elapsed() < DEAD_TTL {
        assert_eq!(len, CAP);
    }
    tokio::time::sleep(DEAD_TTL + Duration::from_millis(100)).await;
    assert_eq!(cache.len().await.unwrap(), 10, "exact before any trim");
    for i in 0..DEAD as u32 {
        let evicted = cache.set(&format!("new{i}"), &i).await.unwrap();
        assert_eq!(evicted, Vec::<String>::new(), "new{i}: a live entry went");
    }
    assert_eq!(cache.len().await.unwrap(), CAP);
    // Full of live entries: MRU evicts the most recently used.
    let last = format!("new{}", DEAD - 1);
    assert_eq!(cache.set("one-more", &0).await.unwrap(), [last]);

    // Capacity lowered below what is indexed, with more dead than a batch: the dead go first.
    let ns = unique("shrink-dead");
    let wide = BoundedCache::<u32, Lifo>::new(store.clone(), &ns, Lifo::with_capacity(DEAD + 3));
    for i in 0..3u32 {
        wide.set(&format!("keep{i}"), &i).await.unwrap();
    }
    for i in 0..DEAD as u32 {
        wide.set_with_ttl(&format!("dead{i}"), &i, Some(DEAD_TTL))
            .await
            .unwrap();
    }
    tokio::time::sleep(DEAD_TTL + Duration::from_millis(100)).await;
    let narrow = BoundedCache::<u32, Lifo>::new(store, &ns, Lifo::with_capacity(4));
    assert_eq!(narrow.set("k", &9).await.unwrap(), Vec::<String>::new());
    assert_eq!(
        narrow.keys().await.unwrap(),
        ["k", "keep2", "keep1", "keep0"]
    );
}

/// The same two shapes through a bounded route (`CacheLayer::eviction`), where entries also
/// leave by invalidation.
async fn route_lfu_whose_popular_keys_expired_keeps_its_capacity(
    store: impl Store,
    shards: Shards,
) {
    let cache = sharded_route_cache(store, &unique("reg-route-lfu"), shards);
    let app = model::bounded_router(&cache, || Lfu::with_capacity(4), SHORT);
    let ranked = cache.store().ranked().unwrap();
    let index = RankedSpace::route(cache.key_space().bounded().shard(0));
    for id in 0..3 {
        assert!(!support::get(&app, &format!("/short/{id}")).await.is_hit());
        for _ in 0..5 {
            assert!(support::get(&app, &format!("/short/{id}")).await.is_hit());
        }
    }
    assert!(!support::get(&app, "/long/3").await.is_hit());
    // One popular entry invalidated, the others expired.
    assert_eq!(cache.invalidate_key("item:0").await.unwrap(), 1);
    tokio::time::sleep(PAST_SHORT).await;
    for id in 10..13 {
        assert!(!support::get(&app, &format!("/long/{id}")).await.is_hit());
    }
    assert_eq!(cache.stats().evictions, 0, "no live entry went");
    for id in [3, 10, 11, 12] {
        let key = format!("item:{id}");
        assert!(
            support::has_bounded_entry(&cache, &key).await,
            "{key} was evicted"
        );
    }
    assert_eq!(ranked.len(&index).await.unwrap(), 4);
}

async fn route_lifo_with_ttls_keeps_its_capacity(store: impl Store, shards: Shards) {
    let cache = sharded_route_cache(store, &unique("reg-route-lifo"), shards);
    let app = model::bounded_router(&cache, || Lifo::with_capacity(5), SHORT);
    let ranked = cache.store().ranked().unwrap();
    let index = RankedSpace::route(cache.key_space().bounded().shard(0));
    assert!(!support::get(&app, "/long/100").await.is_hit());
    for id in 0..4 {
        assert!(!support::get(&app, &format!("/short/{id}")).await.is_hit());
    }
    tokio::time::sleep(PAST_SHORT).await;
    for id in 10..20 {
        assert!(!support::get(&app, &format!("/long/{id}")).await.is_hit());
    }
    // 10..13 filled the room the dead left; 14..19 each evicted the newest.
    assert_eq!(cache.stats().evictions, 6);
    for id in [100, 10, 11, 12, 19] {
        let key = format!("item:{id}");
        assert!(
            support::has_bounded_entry(&cache, &key).await,
            "{key} was evicted"
        );
    }
    assert_eq!(ranked.len(&index).await.unwrap(), 5);
}

/// Every invalidation (key, tag, pattern; `Cache::invalidate_*` and `InvalidateLayer`) removes
/// the members of the entries it deletes, so they never pin capacity.
async fn invalidation_removes_index_members(store: impl Store, shards: Shards) {
    use tower_valkey_cache::InvalidateLayer;
    let cache = sharded_route_cache(store, &unique("inv-members"), shards);
    let app = model::bounded_router(&cache, || Fifo::with_capacity(6), SHORT).route(
        "/write/{id}",
        axum::routing::put(|| async { "ok" })
            .layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"])),
    );
    let ranked = cache.store().ranked().unwrap();
    let index = RankedSpace::route(cache.key_space().bounded().shard(0));
    let spec = Spec::new(Scoring::FIFO, 6, STAMP_BITS);
    let fill = async |ids: std::ops::Range<u32>| {
        for id in ids {
            assert!(!support::get(&app, &format!("/long/{id}")).await.is_hit());
        }
    };
    fill(0..6).await;
    assert_eq!(ranked.keys(&index, spec).await.unwrap().len(), 6);

    assert_eq!(cache.invalidate_key("item:0").await.unwrap(), 1);
    let put = support::send(&app, support::request("PUT", "/write/1", &[])).await;
    assert_eq!(put.text(), "ok");
    assert_eq!(cache.invalidate_tag("even").await.unwrap(), 2); // item:2, item:4
    assert_eq!(cache.invalidate_pattern("item:[35]").await.unwrap(), 2);
    assert_eq!(ranked.len(&index).await.unwrap(), 0);
    assert_eq!(
        ranked.keys(&index, spec).await.unwrap(),
        Vec::<String>::new()
    );

    // A full namespace again, then one more: one eviction, and only then.
    fill(10..16).await;
    assert_eq!(cache.stats().evictions, 0);
    fill(16..17).await;
    assert_eq!(cache.stats().evictions, 1);
    assert!(!support::has_bounded_entry(&cache, "item:10").await);
}

/// A value removed behind the index's back (Valkey's `maxmemory` eviction, a stray `DEL`) is a
/// ghost: counted by `len` until its TTL would have ended, never evicted in place of a live entry
/// once that has passed, and dropped silently whenever it comes up as the victim.
#[tokio::test]
async fn ghosts_of_values_removed_behind_the_index_are_bounded_by_their_ttl() {
    let server = ValkeyServer::start();
    let store = valkey_store(&server, VALKEY);
    let lifo = BoundedCache::<u32, Lifo>::new(store, "ghosts", Lifo::with_capacity(3));
    lifo.set_with_ttl("a", &1, Some(SHORT)).await.unwrap();
    lifo.set("b", &2).await.unwrap();
    lifo.set("c", &3).await.unwrap();
    let _: u64 = server.cli(&["DEL", "{ghosts}|val:a"]).await;
    assert_eq!(lifo.len().await.unwrap(), 3, "a ghost counts until its TTL");
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(lifo.len().await.unwrap(), 2);
    assert_eq!(lifo.set("d", &4).await.unwrap(), Vec::<String>::new());
    // Without a TTL: a ghost at the victim end is dropped without counting as an eviction.
    let _: u64 = server.cli(&["DEL", "{ghosts}|val:d"]).await;
    assert_eq!(lifo.set("e", &5).await.unwrap(), Vec::<String>::new());
    assert_eq!(lifo.keys().await.unwrap(), ["e", "c", "b"]);
}

/// Invalidating a namespace that is not bounded leaves no trace of the route index's keys.
#[tokio::test]
async fn invalidating_an_unbounded_namespace_creates_no_index_keys() {
    let server = ValkeyServer::start();
    let cache = route_cache(valkey_store(&server, VALKEY), "plain");
    let app = axum::Router::new().route(
        "/item/{id}",
        axum::routing::get(|| async { ([("surrogate-key", "t")], "x") })
            .route_layer(tower_valkey_cache::CacheLayer::new(cache.clone()).key("item:{id}")),
    );
    for id in 0..3 {
        support::get(&app, &format!("/item/{id}")).await;
    }
    assert_eq!(cache.invalidate_key("item:0").await.unwrap(), 1);
    assert_eq!(cache.invalidate_tag("t").await.unwrap(), 2);
    support::get(&app, "/item/5").await;
    assert_eq!(cache.invalidate_pattern("item:*").await.unwrap(), 1);
    assert_eq!(server.keys("*evict*").await, Vec::<String>::new());
}

/// A standalone scenario on Valkey and on a `MemoryStore`.
macro_rules! on_both_stores {
    ($($name:ident => $body:ident;)*) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn valkey() {
                    let server = ValkeyServer::start();
                    $body(valkey_store(&server, VALKEY).into()).await;
                }

                #[tokio::test]
                async fn memory() {
                    $body(MemoryStore::new().into()).await;
                }
            }
        )*
    };
}

on_both_stores! {
    lfu_whose_popular_keys_expired => lfu_whose_popular_keys_expired_keeps_its_capacity;
    lifo_with_ttls => lifo_with_ttls_keeps_its_capacity;
    dead_beyond_a_trim_batch => more_dead_members_than_a_trim_batch;
    ttl => expired_entries_leave_the_index_before_live_ones;
}

/// A route scenario on Valkey, a `MemoryStore` and Valkey Cluster.
macro_rules! on_every_route_store {
    ($($name:ident => $body:ident;)*) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn valkey() {
                    let server = ValkeyServer::start();
                    $body(valkey_store(&server, VALKEY), None).await;
                }

                #[tokio::test]
                async fn valkey_sharded() {
                    let server = ValkeyServer::start();
                    $body(valkey_store(&server, VALKEY), Some(8)).await;
                }

                #[tokio::test]
                async fn memory() {
                    $body(MemoryStore::new(), None).await;
                }

                #[tokio::test]
                async fn memory_sharded() {
                    $body(MemoryStore::new(), Some(8)).await;
                }

                /// The cluster's default: 128 shards.
                #[tokio::test]
                async fn cluster() {
                    let (_, store, _) = support::shared_cluster_store(Duration::from_secs(5));
                    $body(store, None).await;
                }
            }
        )*
    };
}

on_every_route_store! {
    route_lfu_whose_popular_keys_expired => route_lfu_whose_popular_keys_expired_keeps_its_capacity;
    route_lifo_with_ttls => route_lifo_with_ttls_keeps_its_capacity;
    route_invalidation => invalidation_removes_index_members;
}

// ---------------------------------------------------------------------------------------------
// TTLs, leftovers.

async fn expired_entries_leave_the_index_before_live_ones(store: BoundedStore) {
    let cache = BoundedCache::<u32, Lru>::new(store.clone(), &unique("ttl"), Lru::with_capacity(3));
    cache
        .set_with_ttl("short", &1, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    cache.set("b", &2).await.unwrap();
    cache.set("c", &3).await.unwrap();
    assert_eq!(cache.len().await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Not counted once expired, although nothing has removed it yet.
    assert_eq!(cache.len().await.unwrap(), 2);
    // The set removes it first: no eviction.
    assert_eq!(cache.set("d", &4).await.unwrap(), Vec::<String>::new());
    assert_eq!(cache.keys().await.unwrap(), ["b", "c", "d"]);
    // The next eviction evicts a live entry.
    assert_eq!(cache.set("e", &5).await.unwrap(), ["b"]);

    // A read of an expired entry removes it from the index.
    cache
        .set_with_ttl("c", &30, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.len().await.unwrap(), 2);
    assert_eq!(cache.get("c").await.unwrap(), None);
    assert_eq!(cache.len().await.unwrap(), 2);

    // Rewriting an expired LFU entry starts its count over.
    let lfu = BoundedCache::<u32, Lfu>::new(store, &unique("ttl-lfu"), Lfu::with_capacity(2));
    lfu.set_with_ttl("hot", &1, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    for _ in 0..5 {
        lfu.get("hot").await.unwrap();
    }
    lfu.set("cold", &2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    lfu.set("hot", &3).await.unwrap(); // one use again, newer than "cold"
    assert_eq!(lfu.keys().await.unwrap(), ["cold", "hot"]);
    assert_eq!(lfu.set("new", &4).await.unwrap(), ["cold"]);
}

async fn pttl(server: &ValkeyServer, key: &str) -> i64 {
    server.cli(&["PTTL", key]).await
}

#[tokio::test]
async fn index_keys_live_as_long_as_the_longest_entry_and_no_longer() {
    let server = ValkeyServer::start();
    let store = valkey_store(&server, VALKEY);
    let cache = BoundedCache::<u32, Lfu>::new(store.clone(), "abandoned", Lfu::with_capacity(10));
    cache
        .set_with_ttl("a", &1, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    cache
        .set_with_ttl("b", &2, Some(Duration::from_millis(600)))
        .await
        .unwrap();
    cache
        .set_with_ttl("c", &3, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    cache.get("a").await.unwrap();
    for key in ["{abandoned}|idx", "{abandoned}|seq"] {
        let t = pttl(&server, key).await;
        assert!((400..=600).contains(&t), "{key} PTTL {t}");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.keys("*").await,
        Vec::<String>::new(),
        "an abandoned namespace leaves nothing"
    );

    // An entry without TTL makes the index persistent; emptying the namespace removes it.
    let cache = BoundedCache::<u32, Lru>::new(store, "forever", Lru::with_capacity(2));
    cache
        .set_with_ttl("a", &1, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    cache.set("b", &2).await.unwrap();
    assert_eq!(pttl(&server, "{forever}|idx").await, -1);
    assert_eq!(pttl(&server, "{forever}|seq").await, -1);
    assert!(cache.delete("a").await.unwrap());
    assert!(cache.delete("b").await.unwrap());
    assert!(!cache.delete("b").await.unwrap());
    assert_eq!(server.keys("*").await, Vec::<String>::new());

    // clear() removes values, index and counter, in batches.
    let big = BoundedCache::<u32, Fifo>::new(
        valkey_store(&server, VALKEY),
        "big",
        Fifo::with_capacity(2_500),
    );
    for i in 0..2_600u32 {
        big.set(&i.to_string(), &i).await.unwrap();
    }
    assert_eq!(big.len().await.unwrap(), 2_500);
    assert_eq!(server.keys("{big}|val:*").await.len(), 2_500);
    assert_eq!(big.clear().await.unwrap(), 2_500);
    assert_eq!(server.keys("*").await, Vec::<String>::new());
}

#[tokio::test]
async fn lowering_the_capacity_evicts_down_to_it() {
    let server = ValkeyServer::start();
    for store in [
        BoundedStore::from(MemoryStore::new()),
        valkey_store(&server, VALKEY).into(),
    ] {
        let wide = BoundedCache::<u32, Fifo>::new(store.clone(), "shrink", Fifo::with_capacity(5));
        for i in 0..5u32 {
            wide.set(&format!("k{i}"), &i).await.unwrap();
        }
        let narrow = BoundedCache::<u32, Fifo>::new(store, "shrink", Fifo::with_capacity(2));
        assert_eq!(
            narrow.set("k9", &9).await.unwrap(),
            ["k0", "k1", "k2", "k3"]
        );
        assert_eq!(narrow.keys().await.unwrap(), ["k4", "k9"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn hammer<P: EvictionPolicy + Clone>(server: &ValkeyServer, policy: P) {
    const CAPACITY: usize = 40;
    let ns = unique(&format!("hammer-{}", policy.name()));
    let store = valkey_store(server, VALKEY);
    let cache = BoundedCache::<u64, P>::new(store, &ns, policy);
    let index = format!("{{{ns}}}|idx");
    let prefix = RankedSpace::standalone(&ns).value_prefix;
    let values = format!("{prefix}*");
    let done = Arc::new(AtomicBool::new(false));

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let monitor = {
        let done = done.clone();
        let (index, values) = (index.clone(), values.clone());
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !done.load(Ordering::Relaxed) {
                let (card, keys): (usize, Vec<String>) = redis::pipe()
                    .cmd("ZCARD")
                    .arg(&index)
                    .cmd("KEYS")
                    .arg(&values)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(card <= CAPACITY, "index holds {card} > {CAPACITY}");
                assert!(keys.len() <= CAPACITY, "{} values > {CAPACITY}", keys.len());
                samples += 1;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut evicted = 0usize;
            for i in 0..600u64 {
                let key = format!("k{}", rng.next() % 120);
                match rng.next() % 10 {
                    0..=4 => evicted += cache.set(&key, &i).await.unwrap().len(),
                    5..=8 => {
                        cache.get(&key).await.unwrap();
                    }
                    _ => {
                        cache.delete(&key).await.unwrap();
                    }
                }
            }
            evicted
        }));
    }
    let mut evicted = 0;
    for t in tasks {
        evicted += t.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let samples = monitor.await.unwrap();
    assert!(samples > 0);
    assert!(evicted > 0, "the namespace was never full");

    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&values)
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored: BTreeSet<String> = keys
        .iter()
        .map(|k| k.strip_prefix(&prefix).unwrap().to_owned())
        .collect();
    let indexed: BTreeSet<String> = members.into_iter().collect();
    assert_eq!(indexed, stored, "the index matches the stored entries");
    assert!(indexed.len() <= CAPACITY);
    assert_eq!(cache.len().await.unwrap(), indexed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_on_one_namespace_never_exceed_capacity() {
    let server = ValkeyServer::start();
    hammer(&server, Lru::with_capacity(40)).await;
    hammer(&server, Lfu::with_capacity(40)).await;
    hammer(&server, Fifo::with_capacity(40)).await;
    hammer(&server, Mru::with_capacity(40)).await;
    hammer(&server, Lifo::with_capacity(40)).await;
}

// ---------------------------------------------------------------------------------------------
// Valkey Cluster: every policy, and every key of a namespace in its slot.

async fn exercise<P: EvictionPolicy + Clone>(store: &ValkeyStore, ns: &str, policy: P) {
    let cache = BoundedCache::<u32, P>::new(store.clone(), ns, policy).ttl(Duration::from_secs(60));
    let mut evicted = 0;
    for i in 0..12u32 {
        evicted += cache.set(&format!("k{}", i % 7), &i).await.unwrap().len();
        cache.get(&format!("k{}", (i * 3) % 7)).await.unwrap();
        cache
            .set_with_ttl("short", &i, Some(Duration::from_millis(1)))
            .await
            .unwrap();
    }
    assert!(evicted > 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    cache.keys().await.unwrap();
    cache.delete("k1").await.unwrap();
    assert!(cache.len().await.unwrap() <= 3);
}

/// Every policy on a real Valkey Cluster (3 primaries, 3 replicas), through a cluster store.
#[tokio::test]
async fn bounded_namespaces_run_on_valkey_cluster() {
    let (cluster, store, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    assert!(store.is_cluster());
    exercise(&store, &format!("c-fifo{sfx}"), Fifo::with_capacity(3)).await;
    exercise(&store, &format!("c-lifo{sfx}"), Lifo::with_capacity(3)).await;
    exercise(&store, &format!("c-lru{sfx}"), Lru::with_capacity(3)).await;
    exercise(&store, &format!("c-mru{sfx}"), Mru::with_capacity(3)).await;
    exercise(&store, &format!("c-lfu{sfx}"), Lfu::with_capacity(3)).await;

    // Every key a namespace's scripts created (declared or not) is in the namespace's slot.
    let keys = cluster.keys(&format!("{{c-*{sfx}}}*"));
    assert!(keys.len() > 10, "{keys:?}");
    for key in &keys {
        let tag = &key[..key.find('}').unwrap() + 1];
        assert_eq!(
            cluster.slot(key),
            cluster.slot(tag),
            "{key} is outside its namespace's slot"
        );
    }
    // The namespaces are spread over more than one slot, and the nodes do enforce slots: keys
    // of two slots in one command are refused.
    let (lru, lfu) = (format!("{{c-lru{sfx}}}:k0"), format!("{{c-lfu{sfx}}}:k0"));
    assert_ne!(cluster.slot(&lru), cluster.slot(&lfu));
    let mut cmd = redis::cmd("MGET");
    cmd.arg(&lru).arg(&lfu);
    let client = redis::Client::open(cluster.urls()[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let crossed: redis::RedisResult<Vec<Option<String>>> = cmd.query_async(&mut conn).await;
    let err = crossed.unwrap_err();
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "{err}"
    );

    // clear() in batches, on the cluster too.
    let big =
        BoundedCache::<u32, Lru>::new(store, &format!("c-big{sfx}"), Lru::with_capacity(1_500));
    for i in 0..1_600u32 {
        big.set(&i.to_string(), &i).await.unwrap();
    }
    assert_eq!(big.clear().await.unwrap(), 1_500);
}

// ---------------------------------------------------------------------------------------------
// A bounded route.

async fn lru_route_evicts_the_least_recently_read(cache: tower_valkey_cache::Cache) {
    use axum::{extract::Path, routing::get, Router};
    use tower_valkey_cache::CacheLayer;

    let calls: Arc<[AtomicUsize; 8]> = Arc::new(Default::default());
    let counted = calls.clone();
    let app: Router = Router::new().route(
        "/item/{id}",
        get(move |Path(id): Path<usize>| {
            let calls = counted.clone();
            async move {
                calls[id].fetch_add(1, Ordering::SeqCst);
                format!("item {id}")
            }
        })
        .route_layer(
            CacheLayer::new(cache)
                .key("item:{id}")
                .eviction(Lru::with_capacity(3)),
        ),
    );
    let hit = |id: usize| {
        let app = app.clone();
        async move {
            let res = support::get(&app, &format!("/item/{id}")).await;
            assert_eq!(res.text(), format!("item {id}"));
            res.is_hit()
        }
    };
    let calls_of = |id: usize| calls[id].load(Ordering::SeqCst);

    for id in 1..=3 {
        assert!(!hit(id).await, "first read of {id} is a miss");
    }
    assert!(hit(1).await, "1 is cached"); // recency now 2, 3, 1
    assert!(!hit(4).await); // stores 4, evicts 2: the least recently read
    assert!(hit(3).await, "3 survived"); // recency now 1, 4, 3
    assert!(!hit(2).await, "2 was evicted");
    assert_eq!(calls_of(2), 2);
    // Storing 2 again evicted 1.
    assert!(hit(4).await);
    assert!(hit(3).await);
    assert!(hit(2).await);
    assert!(!hit(1).await, "1 was evicted");
    assert_eq!(calls_of(1), 2);
    assert_eq!([calls_of(3), calls_of(4)], [1, 1]);
}

fn route_cache(
    store: impl tower_valkey_cache::store::Store,
    ns: &str,
) -> tower_valkey_cache::Cache {
    sharded_route_cache(store, ns, None)
}

/// How many shards a test namespace has (None: the store's default).
type Shards = Option<u16>;

fn sharded_route_cache(
    store: impl tower_valkey_cache::store::Store,
    ns: &str,
    shards: Shards,
) -> tower_valkey_cache::Cache {
    let builder = tower_valkey_cache::Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(5));
    match shards {
        Some(n) => builder.shards(n),
        None => builder,
    }
    .build()
}

#[tokio::test]
async fn router_lru_memory() {
    lru_route_evicts_the_least_recently_read(route_cache(MemoryStore::new(), "route")).await;
}

/// A bounded route on a Valkey Cluster (whose namespace has 128 shards by default): the route's
/// entries and index live in shard 0's slot (`KeySpace::bounded`, `{ns|TAG}|evict:idx`), so the
/// read and record scripts run there, and no entry of the route is in any other shard.
#[tokio::test]
async fn router_lru_cluster() {
    let (cluster, store, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    let ns = format!("route{sfx}");
    let cache = route_cache(store, &ns);
    assert_eq!(
        cache.shard_count(),
        tower_valkey_cache::DEFAULT_CLUSTER_SHARDS as usize
    );
    let home = cache.key_space().bounded();
    let route = RankedSpace::route(home.shard(0));
    lru_route_evicts_the_least_recently_read(cache.clone()).await;
    let members: Vec<String> = cluster.cli(&["ZRANGE", &route.index, "0", "-1"]).await;
    assert_eq!(members, ["item:3", "item:2", "item:1"]);
    let mut entries = cluster.keys(&cache.key_space().entry_glob("*"));
    entries.sort();
    let want: Vec<String> = (1..=3).map(|i| home.entry(&format!("item:{i}"))).collect();
    assert_eq!(entries, want);
}

#[tokio::test]
async fn router_lru_valkey() {
    let server = ValkeyServer::start();
    lru_route_evicts_the_least_recently_read(route_cache(valkey_store(&server, VALKEY), "route"))
        .await;
    let members: Vec<String> = server.cli(&["ZRANGE", "route|evict:idx", "0", "-1"]).await;
    assert_eq!(members, ["item:3", "item:2", "item:1"]);
    let mut entries = server.keys("route:*").await;
    entries.sort();
    assert_eq!(entries, ["route:item:1", "route:item:2", "route:item:3"]);
}

// ---------------------------------------------------------------------------------------------
// A quick measurement (not a benchmark): `cargo test --release --test eviction -- --ignored
// --nocapture measure`.

async fn time<F, Fut>(n: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        f(i).await;
    }
    start.elapsed()
}

async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// `usec_per_call` of `cmd` in `INFO commandstats`.
async fn server_usec(conn: &mut redis::aio::MultiplexedConnection, cmd: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .unwrap_or_else(|| panic!("no stats for {cmd}: {info}"));
    let v = line.split("usec_per_call=").nth(1).unwrap();
    v.split(',').next().unwrap().parse().unwrap()
}

async fn cache_get<P: EvictionPolicy>(cache: &BoundedCache<String, P>, key: &str) {
    cache.get(key).await.unwrap().unwrap();
}

#[tokio::test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn measure_bookkeeping_cost() {
    const N: usize = 20_000;
    let server = ValkeyServer::start();
    let store = valkey_store(&server, VALKEY);
    let value = "x".repeat(1024);
    let lru = BoundedCache::<String, Lru>::new(store.clone(), "m-lru", Lru::with_capacity(10));
    let fifo = BoundedCache::<String, Fifo>::new(store.clone(), "m-fifo", Fifo::with_capacity(10));
    let lfu = BoundedCache::<String, Lfu>::new(store.clone(), "m-lfu", Lfu::with_capacity(10));
    lru.set("k", &value).await.unwrap();
    fifo.set("k", &value).await.unwrap();
    lfu.set("k", &value).await.unwrap();
    let mut conn = store.connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("plain:k")
        .arg(serde_json::to_vec(&value).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();

    // Best of 5 rounds, interleaved: the machine this runs on is rarely quiet.
    let mut best = [Duration::MAX; 4];
    for _round in 0..5 {
        let t = time(N, |_| {
            let mut conn = conn.clone();
            async move {
                let raw: Vec<u8> = redis::cmd("GET")
                    .arg("plain:k")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let _: String = serde_json::from_slice(&raw).unwrap();
            }
        })
        .await;
        best[0] = best[0].min(t);
        let t = time(N, |_| async {
            lru.get("k").await.unwrap().unwrap();
        })
        .await;
        best[1] = best[1].min(t);
        let t = time(N, |_| async {
            fifo.get("k").await.unwrap().unwrap();
        })
        .await;
        best[2] = best[2].min(t);
        let t = time(N, |_| async {
            lfu.get("k").await.unwrap().unwrap();
        })
        .await;
        best[3] = best[3].min(t);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    println!("sequential reads of a 1 KiB value, best of 5 rounds of {N}, one connection:");
    println!("  plain GET + decode          {:6.1} us", per(best[0]));
    for (i, name) in [(1, "LRU get"), (2, "FIFO get"), (3, "LFU get")] {
        println!(
            "  {name:<27} {:6.1} us  ({:.3}x plain)",
            per(best[i]),
            per(best[i]) / per(best[0])
        );
    }

    // Server time per call (INFO commandstats), which the noise of a busy client machine does
    // not inflate as much.
    let mut admin = conn.clone();
    let plain_us = {
        reset_stats(&mut admin).await;
        time(5_000, |_| {
            let mut conn = conn.clone();
            async move {
                let _: Vec<u8> = redis::cmd("GET")
                    .arg("plain:k")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
        .await;
        server_usec(&mut admin, "get").await
    };
    println!("server time per call: GET {plain_us:.2} us");
    macro_rules! script_cost {
        ($name:literal, $cache:expr) => {
            reset_stats(&mut admin).await;
            time(5_000, |_| async {
                cache_get($cache, "k").await;
            })
            .await;
            println!(
                "  {} get script {:.2} us",
                $name,
                server_usec(&mut admin, "evalsha").await
            );
        };
    }
    script_cost!("LRU", &lru);
    script_cost!("FIFO", &fifo);
    script_cost!("LFU", &lfu);

    // Through a router: a hit on a plain route vs a hit on a route with LRU eviction.
    {
        use axum::{routing::get, Router};
        use tower_valkey_cache::CacheLayer;
        let body = value.clone();
        let route = |ns: &str, lru: bool| {
            let cache = route_cache(store.clone(), ns);
            let mut layer = CacheLayer::new(cache);
            if lru {
                layer = layer.eviction(Lru::with_capacity(1000));
            }
            let body = body.clone();
            Router::<()>::new().route(
                "/item",
                get(move || {
                    let body = body.clone();
                    async move { body }
                })
                .route_layer(layer),
            )
        };
        let plain = route("m-route-plain", false);
        let bounded = route("m-route-lru", true);
        assert!(!support::get(&plain, "/item").await.is_hit());
        assert!(!support::get(&bounded, "/item").await.is_hit());
        let mut best = [Duration::MAX; 2];
        for _round in 0..5 {
            let t = time(N / 2, |_| async {
                assert!(support::get(&plain, "/item").await.is_hit());
            })
            .await;
            best[0] = best[0].min(t);
            let t = time(N / 2, |_| async {
                assert!(support::get(&bounded, "/item").await.is_hit());
            })
            .await;
            best[1] = best[1].min(t);
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / (N / 2) as f64;
        println!(
            "sequential route hits (in-process router, 1 KiB body), best of 5 rounds of {}:",
            N / 2
        );
        println!("  plain hit                   {:6.1} us", per(best[0]));
        println!(
            "  hit with LRU bookkeeping    {:6.1} us  ({:.3}x plain)",
            per(best[1]),
            per(best[1]) / per(best[0])
        );
    }

    // Sets that evict: capacity 1,000, 20,000 distinct keys (19,000 evictions), without and with
    // a TTL (a TTL also maintains the expiry index).
    println!("sets with eviction (capacity 1000, {N} distinct keys, 64-byte value):");
    let small = "y".repeat(62);
    /// ops/s, and server time per set script.
    async fn sets<P: EvictionPolicy + Clone>(
        store: &ValkeyStore,
        admin: &mut redis::aio::MultiplexedConnection,
        policy: P,
        value: &str,
        concurrency: usize,
        ttl: Option<Duration>,
    ) -> (f64, f64) {
        let mut cache = BoundedCache::<String, P>::new(store.clone(), &unique("m-set"), policy);
        if let Some(ttl) = ttl {
            cache = cache.ttl(ttl);
        }
        reset_stats(admin).await;
        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut evicted = 0;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (cache, next, value) = (cache.clone(), next.clone(), value.to_owned());
                tokio::spawn(async move {
                    let mut evicted = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= N {
                            return evicted;
                        }
                        evicted += cache.set(&format!("key:{i}"), &value).await.unwrap().len();
                    }
                })
            })
            .collect();
        for t in tasks {
            evicted += t.await.unwrap();
        }
        let took = start.elapsed();
        let usec = server_usec(admin, "evalsha").await;
        assert_eq!(evicted, N - 1000);
        assert_eq!(cache.len().await.unwrap(), 1000);
        cache.clear().await.unwrap();
        (N as f64 / took.as_secs_f64(), usec)
    }
    for (concurrency, ttl) in [
        (1, None),
        (32, None),
        (1, Some(Duration::from_secs(600))),
        (32, Some(Duration::from_secs(600))),
    ] {
        let mut r = Vec::new();
        for (name, scoring) in [
            ("fifo", Scoring::FIFO),
            ("lifo", Scoring::LIFO),
            ("lru", Scoring::LRU),
            ("mru", Scoring::MRU),
            ("lfu", Scoring::LFU),
        ] {
            let policy = Custom(1000, scoring);
            r.push((
                name,
                sets(&store, &mut admin, policy, &small, concurrency, ttl).await,
            ));
        }
        reset_stats(&mut admin).await;
        let plain = {
            let start = Instant::now();
            let next = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (mut conn, next, value) = (conn.clone(), next.clone(), small.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= N {
                                return;
                            }
                            let _: () = redis::cmd("SET")
                                .arg(format!("plain:{i}"))
                                .arg(&value)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            N as f64 / start.elapsed().as_secs_f64()
        };
        let plain_us = server_usec(&mut admin, "set").await;
        let line: Vec<String> = r
            .iter()
            .map(|(n, (ops, us))| format!("{n} {ops:.0}/s ({us:.1} us)"))
            .collect();
        let ttl = if ttl.is_some() { "ttl" } else { "no ttl" };
        println!(
            "  {concurrency:>2} in flight, {ttl:>6}: plain SET {plain:.0}/s ({plain_us:.1} us) \
             | {}",
            line.join(" | ")
        );
    }
}

/// Entries stored by a route without eviction, then read by a bounded route of the same
/// namespace, are indexed by the read (and evict to make room), on both stores.
async fn bounded_reads_index_entries_they_find(cache: tower_valkey_cache::Cache) {
    use axum::{extract::Path, routing::get, Router};
    use tower_valkey_cache::CacheLayer;

    let app = |layer: CacheLayer| -> Router {
        Router::new().route(
            "/item/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}") })
                .route_layer(layer.key("item:{id}")),
        )
    };
    let plain = app(CacheLayer::new(cache.clone()));
    let bounded = app(CacheLayer::new(cache).eviction(Fifo::with_capacity(2)));
    for id in 1..=3 {
        assert!(!support::get(&plain, &format!("/item/{id}")).await.is_hit());
    }
    for id in 1..=3 {
        assert!(support::get(&bounded, &format!("/item/{id}"))
            .await
            .is_hit());
    }
    // Indexing 3 evicted 1 (first in); 2 and 3 stay.
    assert!(!support::get(&plain, "/item/1").await.is_hit());
    assert!(support::get(&plain, "/item/2").await.is_hit());
    assert!(support::get(&plain, "/item/3").await.is_hit());
}

#[tokio::test]
async fn bounded_reads_index_unindexed_entries_memory() {
    bounded_reads_index_entries_they_find(route_cache(MemoryStore::new(), "heal")).await;
}

#[tokio::test]
async fn bounded_reads_index_unindexed_entries_cluster() {
    let (cluster, store, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    let ns = format!("heal{sfx}");
    // The plain route stands for writes that were never indexed: it shares the bounded route's
    // entries only in a one-shard namespace (in a sharded one a bounded route lives in shard 0,
    // a plain route's entry in its key's shard).
    let cache = tower_valkey_cache::Cache::builder(store)
        .namespace(&ns)
        .timeout(Duration::from_secs(5))
        .shards(1)
        .build();
    let route = RankedSpace::route(cache.key_space().bounded().shard(0));
    bounded_reads_index_entries_they_find(cache).await;
    let members: Vec<String> = cluster.cli(&["ZRANGE", &route.index, "0", "-1"]).await;
    assert_eq!(members, ["item:2", "item:3"]);
}

#[tokio::test]
async fn bounded_reads_index_unindexed_entries_valkey() {
    let server = ValkeyServer::start();
    bounded_reads_index_entries_they_find(route_cache(valkey_store(&server, VALKEY), "heal")).await;
    let members: Vec<String> = server.cli(&["ZRANGE", "heal|evict:idx", "0", "-1"]).await;
    assert_eq!(members, ["item:2", "item:3"]);
}

/// A standalone bounded cache and a route cache of one namespace, on a cluster in the one-slot
/// layout (`shards(1)`: both under the hash tag `{ns}`) and in the default sharded one: neither
/// reads, overwrites, invalidates nor clears the other's values.
#[tokio::test]
async fn a_bounded_cache_and_a_route_cache_of_one_namespace_share_no_value() {
    use axum::{extract::Path, routing::get, Router};
    use tower_valkey_cache::CacheLayer;

    for shards in [Some(1), None] {
        let (_, store, sfx) = support::shared_cluster_store(Duration::from_secs(5));
        let ns = format!("twins{}{sfx}", shards.unwrap_or(0));
        let cache = sharded_route_cache(store.clone(), &ns, shards);
        let bounded = BoundedCache::<String, Lru>::new(store, &ns, Lru::with_capacity(10));
        let app = Router::new().route(
            "/item/{id}",
            get(|Path(id): Path<u32>| async move { format!("route {id}") })
                .route_layer(CacheLayer::new(cache.clone()).key("item:{id}")),
        );
        bounded
            .set("item:1", &"bounded 1".to_owned())
            .await
            .unwrap();
        let r = support::get(&app, "/item/1").await;
        assert!(!r.is_hit(), "{shards:?}: the route found the bounded value");
        assert_eq!(r.text(), "route 1");
        let r = support::get(&app, "/item/1").await;
        assert!(r.is_hit());
        assert_eq!(r.text(), "route 1");
        assert_eq!(
            bounded.get("item:1").await.unwrap().as_deref(),
            Some("bounded 1")
        );
        // The other way round: a bounded set after the route's fill.
        assert!(!support::get(&app, "/item/2").await.is_hit());
        bounded
            .set("item:2", &"bounded 2".to_owned())
            .await
            .unwrap();
        let r = support::get(&app, "/item/2").await;
        assert!(
            r.is_hit(),
            "{shards:?}: the bounded set overwrote the route's entry"
        );
        assert_eq!(r.text(), "route 2");
        // The route cache's invalidation leaves the bounded value; the bounded clear the entry.
        assert_eq!(cache.invalidate_key("item:1").await.unwrap(), 1);
        assert_eq!(
            bounded.get("item:1").await.unwrap().as_deref(),
            Some("bounded 1")
        );
        assert_eq!(bounded.clear().await.unwrap(), 2);
        assert!(support::get(&app, "/item/2").await.is_hit());
    }
}
