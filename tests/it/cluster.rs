//! What only a Valkey Cluster does: a primary killed under load (failover), a slot migrated
//! between primaries while it is used (resharding), and L1 invalidations announced on one node
//! and heard on another.
//!
//! The rest of the suite runs on a cluster too: `layer`, `invalidate`, `stampede`, `function` and
//! `eviction` each run a named subset of their scenarios against the shared local cluster
//! (`support::ValkeyCluster::shared`). These tests start clusters of their own, since they kill
//! or reconfigure nodes; only the check of the shard tags' slots reads the shared cluster.

use crate::support;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{eventually, get as get_req, ValkeyCluster};
use tower_valkey_cache::function::Options;
use tower_valkey_cache::{Cache, CacheLayer, ValkeyConfig, ValkeyStore};

/// Bound of every wait for the cluster to change (failover, subscription, convergence).
const POLL: Duration = Duration::from_secs(30);

/// A route whose handler counts its runs and answers `item {id}`.
fn app(cache: &Cache, calls: &Arc<AtomicUsize>) -> Router {
    let calls = calls.clone();
    Router::new().route(
        "/item/{id}",
        get(move |Path(id): Path<u32>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                format!("item {id}")
            }
        })
        .route_layer(CacheLayer::new(cache.clone()).key("item:{id}")),
    )
}

/// Runs `f` on a blocking thread (the cluster helpers shell out to `valkey-cli`).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

// ---------------------------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Load {
    requests: AtomicU64,
    not_ok: AtomicU64,
    /// Answered by the handler because the store failed (no primary for the slot).
    degraded: AtomicU64,
    /// Hits after the slot's new primary was seen.
    hits_after_failover: AtomicU64,
    failed_over: AtomicBool,
    stop: AtomicBool,
}

/// A `CacheLayer` service with the default store settings (100 ms operation timeout, circuit
/// breaker) under steady load from 8 tasks; the primary owning the namespace's slot is killed.
/// Every response is a 200 throughout: while the slot has no primary the cache degrades to the
/// handler; once the replica is promoted, hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load_every_request_is_200_and_hits_resume_after_failover() {
    let cluster = Arc::new(std::sync::Mutex::new(
        blocking(|| ValkeyCluster::start(3, 1)).await,
    ));
    let urls = cluster.lock().unwrap().urls();
    let store = ValkeyStore::cluster(urls).expect("cluster store");
    let cache = Cache::builder(store)
        .namespace("failover")
        // One shard: the scenario kills the primary of the namespace's one slot.
        .shards(1)
        .ttl(Duration::from_secs(300))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    const IDS: u32 = 16;
    for id in 0..IDS {
        let uri = format!("/item/{id}");
        eventually(POLL, "the entry to be cached", || async {
            get_req(&app, &uri).await.is_hit().then_some(())
        })
        .await;
    }

    let (slot, primary) = {
        let c = cluster.clone();
        blocking(move || {
            let c = c.lock().unwrap();
            let slot = c.slot("{failover}");
            (slot, c.primary_of_slot(slot).expect("a primary"))
        })
        .await
    };
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let (app, load) = (app.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = t;
            let deadline = Instant::now() + Duration::from_secs(90);
            while !load.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = get_req(&app, &format!("/item/{}", n % IDS)).await;
                n += 1;
                load.requests.fetch_add(1, Ordering::Relaxed);
                if r.status != StatusCode::OK || r.text() != format!("item {}", (n - 1) % IDS) {
                    load.not_ok.fetch_add(1, Ordering::Relaxed);
                }
                if r.cache_status().contains("detail=store-unavailable") {
                    load.degraded.fetch_add(1, Ordering::Relaxed);
                }
                if r.is_hit() && load.failed_over.load(Ordering::SeqCst) {
                    load.hits_after_failover.fetch_add(1, Ordering::Relaxed);
                }
                // Steady, not saturating: about 8 × 500 requests/s.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kill = load.requests.load(Ordering::Relaxed);
    assert!(before_kill > 0);
    let killed_at = Instant::now();
    {
        let c = cluster.clone();
        blocking(move || c.lock().unwrap().kill(primary)).await;
    }

    // The replica takes over (cluster-node-timeout 1000 ms): the slot has a new primary.
    let new_primary = eventually(POLL, "a replica to take over the slot", || {
        let c = cluster.clone();
        async move {
            blocking(move || c.lock().unwrap().primary_of_slot(slot))
                .await
                .filter(|p| *p != primary)
        }
    })
    .await;
    let promoted_after = killed_at.elapsed();
    load.failed_over.store(true, Ordering::SeqCst);
    eventually(POLL, "hits to resume on the new primary", || async {
        (load.hits_after_failover.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .await;
    let resumed_after = killed_at.elapsed();
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let s = cache.stats();
    eprintln!(
        "failover: {} requests, {} degraded, slot {slot} moved from node {primary} to {new_primary} \
         after {promoted_after:?}, hits resumed by {resumed_after:?}; handler runs {}; {s:?}",
        load.requests.load(Ordering::Relaxed),
        load.degraded.load(Ordering::Relaxed),
        calls.load(Ordering::Relaxed),
    );
    assert_eq!(
        load.not_ok.load(Ordering::Relaxed),
        0,
        "every request answered 200 with its body"
    );
    assert!(
        load.degraded.load(Ordering::Relaxed) > 0,
        "the outage was seen: some requests were served by the handler"
    );
    assert!(load.hits_after_failover.load(Ordering::Relaxed) >= 50);
}

// ---------------------------------------------------------------------------------------------
// L1 over cluster pub/sub
// ---------------------------------------------------------------------------------------------

fn l1_instance(seeds: Vec<String>, ns: &str) -> Cache {
    let store = ValkeyStore::with_config(
        ValkeyConfig::cluster(seeds)
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2)),
    )
    .expect("cluster store");
    Cache::builder(store)
        .namespace(ns)
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_secs(2))
        .l1(1_000, Duration::from_secs(60))
        .build()
}

/// Two instances subscribed on different nodes (their seed lists start at different nodes):
/// a key, a tag and a pattern invalidated on one are dropped from the other's L1, since a
/// `PUBLISH` on any node reaches subscribers on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_invalidations_reach_an_instance_subscribed_on_another_node() {
    let (cluster, _, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    let ns = format!("l1{sfx}");
    let mut seeds = cluster.urls();
    let a = l1_instance(seeds.clone(), &ns);
    seeds.rotate_left(3);
    let b = l1_instance(seeds, &ns);
    for c in [&a, &b] {
        // The first lookup starts the subscription.
        let _ = c.get::<u64>("warm").await;
        eventually(POLL, "the L1 subscription", || async {
            c.l1_stats().expect("L1 on").listening.then_some(())
        })
        .await;
    }
    let db = Arc::new(AtomicU64::new(1));
    let read = |cache: &Cache, key: &'static str| {
        let (cache, db) = (cache.clone(), db.clone());
        async move {
            cache
                .get_or_set_with(key, &Options::new().tags(["t"]), || async move {
                    Ok::<_, Infallible>(db.load(Ordering::SeqCst))
                })
                .await
                .unwrap()
        }
    };
    let converges = |key: &'static str, want: u64| {
        let b = b.clone();
        async move {
            eventually(POLL, "B to drop its L1 copy", || async {
                let v = read(&b, key).await;
                (v == want).then_some(())
            })
            .await;
        }
    };

    for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        let v = db.load(Ordering::SeqCst);
        assert_eq!(read(&a, key).await, v);
        assert_eq!(read(&b, key).await, v);
        let hits = b.l1_stats().unwrap().hits;
        assert_eq!(read(&b, key).await, v);
        assert_eq!(
            b.l1_stats().unwrap().hits,
            hits + 1,
            "B serves {key} from L1"
        );
        let next = db.fetch_add(1, Ordering::SeqCst) + 1;
        match i {
            0 => assert_eq!(a.invalidate_key(key).await.unwrap(), 1),
            1 => assert!(a.invalidate_tag("t").await.unwrap() >= 1),
            _ => assert!(a.invalidate_pattern("k*").await.unwrap() >= 1),
        }
        converges(key, next).await;
    }
    assert!(b.l1_stats().unwrap().messages >= 3);
}

// ---------------------------------------------------------------------------------------------
// Resharding
// ---------------------------------------------------------------------------------------------

/// Moves `keys` of `slot` from node `src` to node `dst` (`MIGRATE`, 100 at a time).
fn migrate(cluster: &ValkeyCluster, src: usize, dst: usize, keys: &[String]) {
    let port = cluster.nodes()[dst].port().to_string();
    for chunk in keys.chunks(100) {
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(chunk.iter().map(String::as_str));
        let out = cluster.node_cli(src, &args);
        assert!(
            out.trim() == "OK" || out.trim() == "NOKEY",
            "MIGRATE: {out}"
        );
    }
}

/// The namespace's slot moves to another primary (`CLUSTER SETSLOT ... MIGRATING/IMPORTING`,
/// `MIGRATE`, `SETSLOT ... NODE`) while 8 tasks read through a `CacheLayer` with the default
/// settings. Half-way, with the entries split between the two primaries, a pattern invalidation
/// finds and removes matching entries on both (it scans every primary; `ASK` is followed). Every
/// response is a 200 throughout (a command whose keys the migration split answers `TRYAGAIN` and
/// the request is served by the handler), and once the slot has moved hits resume on the new
/// primary (`MOVED` followed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migrated_under_load_every_request_is_200_and_patterns_reach_both_sides() {
    let cluster = Arc::new(blocking(|| ValkeyCluster::start(3, 0)).await);
    let store = ValkeyStore::cluster(cluster.urls()).expect("cluster store");
    let cache = Cache::builder(store.clone())
        .namespace("moving")
        // One shard: the scenario migrates the namespace's one slot.
        .shards(1)
        .ttl(Duration::from_secs(300))
        .build();
    // An administrative handle on the same namespace: its own circuit breaker (the service's
    // opens while the migration splits its commands) and generous timeouts.
    let admin = Cache::builder(store)
        .namespace("moving")
        // One shard: the scenario migrates the namespace's one slot.
        .shards(1)
        .timeout(Duration::from_secs(5))
        .bulk_timeout(Duration::from_secs(5))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    const IDS: u32 = 16;
    const PAGES: usize = 60;
    for id in 0..IDS {
        let uri = format!("/item/{id}");
        eventually(POLL, "the entry to be cached", || async {
            get_req(&app, &uri).await.is_hit().then_some(())
        })
        .await;
    }
    let pages: Vec<(String, String)> = (0..PAGES)
        .map(|i| (format!("page:{i}"), format!("page {i}")))
        .collect();
    let stored = cache
        .set_many(pages.iter().map(|(k, v)| (k.as_str(), v)), &Options::new())
        .await
        .expect("set_many");
    assert_eq!(stored, PAGES);
    // The namespace's clock and pattern record exist before the migration starts (they stay on
    // the source primary until the end).
    admin
        .invalidate_pattern("none:*")
        .await
        .expect("invalidate");

    let (slot, src, dst) = {
        let c = cluster.clone();
        blocking(move || {
            let slot = c.slot("{moving}");
            let src = c.primary_of_slot(slot).expect("a primary");
            let dst = *c
                .primaries()
                .iter()
                .find(|&&p| p != src)
                .expect("another primary");
            (slot, src, dst)
        })
        .await
    };

    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let (app, load) = (app.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = t;
            let deadline = Instant::now() + Duration::from_secs(90);
            while !load.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let id = n % IDS;
                n += 1;
                let r = get_req(&app, &format!("/item/{id}")).await;
                load.requests.fetch_add(1, Ordering::Relaxed);
                if r.status != StatusCode::OK || r.text() != format!("item {id}") {
                    load.not_ok.fetch_add(1, Ordering::Relaxed);
                }
                if r.cache_status().contains("detail=store-unavailable") {
                    load.degraded.fetch_add(1, Ordering::Relaxed);
                }
                if r.is_hit() && load.failed_over.load(Ordering::SeqCst) {
                    load.hits_after_failover.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Half the entries move; the namespace's bookkeeping (`{moving}|...`) stays behind for now.
    let moved_half = {
        let c = cluster.clone();
        blocking(move || {
            let slot_s = slot.to_string();
            let (src_id, dst_id) = (c.node_id(src), c.node_id(dst));
            let ok = c.node_cli(dst, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &src_id]);
            assert_eq!(ok.trim(), "OK");
            let ok = c.node_cli(src, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &dst_id]);
            assert_eq!(ok.trim(), "OK");
            let keys: Vec<String> = c
                .node_cli(src, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100000"])
                .lines()
                .filter(|k| k.starts_with("{moving}:"))
                .map(str::to_owned)
                .collect();
            let half: Vec<String> = keys.iter().step_by(2).cloned().collect();
            migrate(&c, src, dst, &half);
            half
        })
        .await
    };
    assert!(moved_half.iter().any(|k| k.contains(":page:")));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Mid-migration: the pattern's entries are on both primaries; all of them go.
    let removed = admin
        .invalidate_pattern("page:*")
        .await
        .expect("invalidate");
    assert_eq!(removed, PAGES as u64);
    let left = {
        let c = cluster.clone();
        blocking(move || c.keys("{moving}:page:*")).await
    };
    assert!(left.is_empty(), "left behind: {left:?}");

    // The rest moves, and the slot is assigned to its new primary everywhere.
    {
        let c = cluster.clone();
        blocking(move || {
            let slot_s = slot.to_string();
            let rest: Vec<String> = c
                .node_cli(src, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100000"])
                .lines()
                .map(str::to_owned)
                .collect();
            migrate(&c, src, dst, &rest);
            let dst_id = c.node_id(dst);
            for i in c.primaries() {
                let ok = c.node_cli(i, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id]);
                assert_eq!(ok.trim(), "OK", "SETSLOT NODE on node {i}");
            }
        })
        .await
    };
    let moved_at = Instant::now();
    load.failed_over.store(true, Ordering::SeqCst);
    eventually(POLL, "hits on the new primary", || async {
        (load.hits_after_failover.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .await;
    let resumed_after = moved_at.elapsed();
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let owner = {
        let c = cluster.clone();
        blocking(move || c.primary_of_slot(slot)).await
    };
    assert_eq!(owner, Some(dst));
    eprintln!(
        "migration: {} requests, {} degraded, slot {slot} moved from node {src} to {dst}, hits \
         resumed {resumed_after:?} after; {:?}",
        load.requests.load(Ordering::Relaxed),
        load.degraded.load(Ordering::Relaxed),
        cache.stats(),
    );
    assert_eq!(
        load.not_ok.load(Ordering::Relaxed),
        0,
        "every request answered 200 with its body"
    );
    // The pattern's tombstone still guards the moved namespace: a page filled now is stored
    // (the fill began after the invalidation), and reads see it.
    cache
        .set("page:1", &"page 1 again".to_owned(), &Options::new())
        .await
        .expect("set");
    assert_eq!(
        cache.get::<String>("page:1").await.expect("get"),
        Some("page 1 again".to_owned())
    );
}

// ---------------------------------------------------------------------------------------------
// Shard tags (issue 17)
// ---------------------------------------------------------------------------------------------

/// The suffixes of the 128 shard tags of namespace `app` (`app|0TI`, ...), the list the unit
/// test `store::shard::tests::golden_tags_of_app_over_128_shards` pins (by this digest) against
/// the crate's `shard_tags("app", 128)`: a wire format, changed only deliberately, in both places.
const APP_128_TAG_SUFFIXES: [&str; 128] = [
    "0TI", "4AO", "03U", "56r", "0Vi", "4Co", "01u", "54R", "24C", "6eM", "2S_", "522", "26c",
    "6gm", "055", "6Dy", "4XD", "0MB", "5kq", "0nV", "4Zd", "0Ob", "4yp", "0lv", "68N", "2-H",
    "5o1", "1z7", "7nG", "D19", "498", "0h6", "0EK", "4PM", "0f_", "47Q", "0Gk", "4Rm", "10V",
    "45q", "2aI", "60G", "166", "5g8", "2ci", "4V-", "GnO", "411", "4IF", "1La", "4jR", "1ou",
    "4Kf", "1NA", "4hr", "1mU", "6mD", "2xB", "6NP", "1k5", "6od", "2zb", "4l2", "0y4", "02E",
    "4cK", "0UY", "744", "00e", "4ak", "0Wy", "AlM", "2RO", "6GI", "1A8", "70t", "0p-", "6Ei",
    "0S9", "72T", "5ja", "0oF", "4YT", "0LR", "5hA", "0mf", "5KU", "0Nr", "7Nc", "2KD", "5M5",
    "1X3", "7LC", "2Id", "4_4", "0J2", "0gO", "46A", "1Tz", "C_-", "0eo", "44a", "1VZ", "677",
    "2CM", "6VK", "34p", "61W", "2Am", "6Tk", "2by", "63w", "4kB", "1ne", "4HV", "1Mq", "4ib",
    "08l", "4Jv", "0_p", "7_a", "2ZF", "6lT", "1I1", "Bss", "2Xf", "4N6", "3kS",
];

/// The server agrees with the crate's slot maths on the shard tags: `CLUSTER KEYSLOT` of every
/// key name built on tag `i` of `app` over 128 shards is `128·i + 21` (the start of shard `i`'s
/// range, 128 slots wide, plus `crc16("app") mod 128` = 21), the slot `key_slot` gives it in the
/// unit tests. Only reads the shared cluster.
#[test]
fn cluster_keyslot_of_the_shard_tags_is_their_target_slot() {
    let cluster = ValkeyCluster::shared();
    let mut joined = String::new();
    for (i, suffix) in APP_128_TAG_SUFFIXES.iter().enumerate() {
        let tag = format!("app|{suffix}");
        joined.push_str(&tag);
        joined.push('\n');
        let want = 128 * i as u16 + 21;
        // The bare content hashes whole; the key names hash their `{tag}`.
        for key in [
            tag.clone(),
            format!("{{{tag}}}:GET:/users/1"),
            format!("{{{tag}}}|clock"),
            format!("{{{tag}}}|inv:k:x{{y}}"),
        ] {
            assert_eq!(cluster.slot(&key), want, "{key}");
        }
    }
    // 64-bit FNV-1a of the tags, each followed by `\n` (the unit test's digest).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in joined.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    assert_eq!(h, 0x0129_afc0_d956_f3b0);
    // Valkey Cluster's own examples and brace rules, as `key_slot` implements them.
    assert_eq!(cluster.slot("foo"), 12182);
    assert_eq!(cluster.slot("123456789"), 0x31C3);
    assert_eq!(
        cluster.slot("{user1000}.following"),
        cluster.slot("{user1000}.followers")
    );
    assert_eq!(cluster.slot("foo{bar}{zap}"), cluster.slot("bar"));
    assert_eq!(cluster.slot("foo{{bar}}zap"), cluster.slot("{bar"));
    assert_ne!(cluster.slot("foo{}{bar}"), cluster.slot("bar"));
}

/// Issue 17: one namespace of 128 shards spreads over every primary of the shared cluster
/// (3 primaries): 100,000 entries written by `warm_values` (each batch split by shard), then
/// every primary holds the mean ±10%; a pattern invalidation of `*` (fanned out to every shard,
/// each shard's scan visiting its slot) removes every one of them and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_namespace_spreads_over_every_primary() {
    const ENTRIES: usize = 100_000;
    let b = support::Backend::cluster(Duration::from_secs(5)).sharded(128);
    let cache = b
        .builder("t_spread", Duration::from_secs(5))
        .bulk_timeout(Duration::from_secs(60))
        .build();
    let other = b.cache("t_spread_other", Duration::from_secs(5));
    other.set("kept", &1u32, &Options::default()).await.unwrap();
    let values = (0..ENTRIES).map(|i| (format!("item:{i}"), i as u64));
    let stored = cache
        .warm_values(values, 1000, &Options::default())
        .await
        .unwrap();
    assert_eq!(stored, ENTRIES);
    let cluster = ValkeyCluster::shared();
    let glob = cache.key_space().entry_glob("*");
    let per_primary = keys_per_primary(cluster, &cluster.primaries(), &glob);
    assert_eq!(per_primary.len(), 3, "{per_primary:?}");
    assert_eq!(
        per_primary.iter().sum::<usize>(),
        ENTRIES,
        "{per_primary:?}"
    );
    assert_even("keys per primary", &per_primary, 0.10);
    // A batch read spans every shard (so every primary): one value per key, in order.
    let keys: Vec<String> = (0..2000).map(|i| format!("item:{i}")).collect();
    let found = cache.get_many::<u64>(&keys).await.unwrap();
    assert_eq!(found, (0..2000).map(Some).collect::<Vec<_>>());
    let removed = cache.invalidate_pattern("*").await.unwrap();
    assert_eq!(removed, ENTRIES as u64);
    assert!(cluster.keys(&glob).is_empty());
    assert_eq!(other.get::<u32>("kept").await.unwrap(), Some(1));
}

/// Asserts that every count is within `tolerance` (a fraction) of their mean.
fn assert_even(what: &str, counts: &[usize], tolerance: f64) {
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    for n in counts {
        let off = (*n as f64 - mean).abs() / mean;
        assert!(
            off <= tolerance,
            "{what} {counts:?}: {n} is {off:.3} off the mean"
        );
    }
    println!("{what}: {counts:?} (mean {mean:.0})");
}

/// How many keys matching `glob` each of `primaries` holds (`KEYS` on each node).
fn keys_per_primary(cluster: &ValkeyCluster, primaries: &[usize], glob: &str) -> Vec<usize> {
    primaries
        .iter()
        .map(|&i| {
            cluster
                .node_cli(i, &["KEYS", glob])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .collect()
}

/// Every command a node has run (`INFO commandstats`, summed over commands).
fn commands_run(cluster: &ValkeyCluster, node: usize) -> usize {
    cluster
        .node_cli(node, &["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            l.split_once(":calls=")?
                .1
                .split(',')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// Issue 17 on 6 primaries, with the builder's default (128 shards on a cluster): 100,000
/// entries of one namespace sit within ±10% of the mean on every primary, and a uniform hit load
/// gives every primary its share of the commands within ±15% (`INFO commandstats`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_layout_spreads_keys_and_hits_over_six_primaries() {
    const ENTRIES: usize = 100_000;
    const HITS: usize = 24_000;
    const TASKS: usize = 8;
    let cluster = tokio::task::spawn_blocking(|| ValkeyCluster::start(6, 0))
        .await
        .unwrap();
    let store = ValkeyStore::with_config(
        ValkeyConfig::cluster(cluster.urls())
            .connect_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let cache = Cache::builder(store)
        .namespace("t_spread6")
        .timeout(Duration::from_secs(5))
        .bulk_timeout(Duration::from_secs(60))
        .build();
    assert_eq!(
        cache.shard_count(),
        usize::from(tower_valkey_cache::DEFAULT_CLUSTER_SHARDS)
    );
    let values = (0..ENTRIES).map(|i| (format!("item:{i}"), i as u64));
    let stored = cache
        .warm_values(values, 1000, &Options::default())
        .await
        .unwrap();
    assert_eq!(stored, ENTRIES);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 6);
    let keys = keys_per_primary(&cluster, &primaries, &cache.key_space().entry_glob("*"));
    assert_eq!(keys.iter().sum::<usize>(), ENTRIES, "{keys:?}");
    assert_even("keys per primary (6)", &keys, 0.10);

    let before: Vec<usize> = primaries
        .iter()
        .map(|&i| commands_run(&cluster, i))
        .collect();
    let hits = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, hits) = (cache.clone(), hits.clone());
            tokio::spawn(async move {
                for _ in 0..HITS / TASKS {
                    let i = fastrand::usize(0..ENTRIES);
                    let v = cache.get::<u64>(&format!("item:{i}")).await.unwrap();
                    assert_eq!(v, Some(i as u64));
                    hits.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(hits.load(Ordering::Relaxed), HITS);
    let commands: Vec<usize> = primaries
        .iter()
        .zip(&before)
        .map(|(&i, b)| commands_run(&cluster, i) - b)
        .collect();
    assert!(
        commands.iter().sum::<usize>() >= HITS,
        "every hit is a command: {commands:?}"
    );
    assert_even("commands per primary under hits (6)", &commands, 0.15);
}
