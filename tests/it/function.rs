//! The function cache (`get_or_set`, batches, warming) against a real Valkey, with wiremock
//! standing in for upstream APIs. The basic hit/miss and single-flight scenarios also run against
//! `MemoryStore`.
//!
//! Each Valkey test starts its own `valkey-server` (tests/support).

use crate::support;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    eventually, http_client, http_get, valkey_store, HttpClient, StoreTimeouts, ValkeyServer,
};
use tower_valkey_cache::function::{Options, WarmOptions};
use tower_valkey_cache::store::{
    KeySpace, Lookup, LookupMany, Store, StoreFuture, Target, Write, Written,
};
use tower_valkey_cache::{Cache, CacheBuilder, CacheLayer, MemoryStore, ValkeyConfig, ValkeyStore};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long the mocked upstream takes to answer.
const UPSTREAM_DELAY: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The Valkey stores' timeouts: generous (debug builds of parallel tests on a busy machine).
const VALKEY: StoreTimeouts = StoreTimeouts {
    connect: Duration::from_secs(2),
    response: Duration::from_secs(5),
    wait: Duration::from_secs(2),
};

/// A cache builder in namespace `ns` with a 5 s operation timeout.
fn builder(store: impl Store, ns: &str) -> CacheBuilder {
    Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(5))
}

/// What the mocked exchange-rate API answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Rate {
    base: String,
    quote: String,
    rate: f64,
}

/// The error of a loader calling the upstream.
#[derive(Clone, Debug, PartialEq)]
struct UpstreamError(u16);

/// The loader: `GET {base}/rates/eur-usd` on the mock, parsed as JSON.
async fn fetch_rate(client: &HttpClient, base: &str) -> Result<Rate, UpstreamError> {
    let res = http_get(client, &format!("{base}/rates/eur-usd")).await;
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    if !status.is_success() {
        return Err(UpstreamError(status.as_u16()));
    }
    Ok(serde_json::from_slice(&body).expect("JSON rate"))
}

fn eur_usd() -> Rate {
    Rate {
        base: "EUR".into(),
        quote: "USD".into(),
        rate: 1.08,
    }
}

/// Mounts `GET /rates/eur-usd` answering `status` (with the rate on 200) after `UPSTREAM_DELAY`.
async fn mount_rate(upstream: &MockServer, status: u16) {
    let mut res = ResponseTemplate::new(status).set_delay(UPSTREAM_DELAY);
    if status == 200 {
        res = res.set_body_json(eur_usd());
    }
    Mock::given(method("GET"))
        .and(path("/rates/eur-usd"))
        .respond_with(res)
        .mount(upstream)
        .await;
}

async fn upstream_requests(upstream: &MockServer) -> usize {
    upstream
        .received_requests()
        .await
        .expect("request recording is on")
        .len()
}

/// Sums `calls` (and failed/rejected calls) per command from `INFO commandstats`.
async fn commandstats(server: &ValkeyServer) -> HashMap<String, u64> {
    let info: String = server.cli(&["INFO", "commandstats"]).await;
    let mut out = HashMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = fields
            .split(',')
            .filter_map(|f| f.split_once('='))
            .find(|(k, _)| *k == "calls")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        out.insert(name.to_owned(), calls);
    }
    out
}

/// A `Store` that counts `write_many` calls (and their sizes) and forwards everything.
#[derive(Debug)]
struct CountingStore<S> {
    inner: S,
    write_many: Arc<Mutex<Vec<usize>>>,
}

impl<S: Store> Store for CountingStore<S> {
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
        self.write_many.lock().unwrap().push(writes.len());
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
    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        self.inner.claim_layout(key, layout)
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios run on both stores
// ---------------------------------------------------------------------------------------------

/// A miss runs the loader and stores its value; the next call is a hit without the loader.
async fn hit_and_miss(cache: Cache) {
    let upstream = MockServer::start().await;
    mount_rate(&upstream, 200).await;
    let client = http_client();
    let base = upstream.uri();

    let t = Instant::now();
    let first: Rate = cache
        .get_or_set("rate:eur-usd", || fetch_rate(&client, &base))
        .await
        .expect("first call");
    let miss_took = t.elapsed();
    let t = Instant::now();
    let second: Rate = cache
        // A loader that fails: a hit must not run it.
        .get_or_set("rate:eur-usd", || async {
            Err::<Rate, _>(UpstreamError(0))
        })
        .await
        .expect("second call is a hit");
    let hit_took = t.elapsed();

    assert_eq!(first, eur_usd());
    assert_eq!(second, eur_usd());
    assert_eq!(upstream_requests(&upstream).await, 1);
    assert!(miss_took >= UPSTREAM_DELAY, "miss took {miss_took:?}");
    assert!(hit_took < UPSTREAM_DELAY, "hit took {hit_took:?}");
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.stores), (1, 1, 1), "{s:?}");
    // The plain getter sees the same value.
    assert_eq!(
        cache.get::<Rate>("rate:eur-usd").await.expect("get"),
        Some(eur_usd())
    );
    assert_eq!(cache.get::<Rate>("rate:other").await.expect("get"), None);
}

/// 100 concurrent calls for one key: the upstream sees exactly one request, everyone gets the value.
async fn single_flight(cache: Cache) {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/rates/eur-usd"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(eur_usd())
                .set_delay(UPSTREAM_DELAY),
        )
        .expect(1)
        .mount(&upstream)
        .await;
    let client = http_client();
    let base = upstream.uri();
    let loader_runs = Arc::new(AtomicUsize::new(0));

    let calls = (0..100).map(|_| {
        let (cache, client, base, runs) = (
            cache.clone(),
            client.clone(),
            base.clone(),
            loader_runs.clone(),
        );
        tokio::spawn(async move {
            cache
                .get_or_set("rate:eur-usd", || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    fetch_rate(&client, &base).await
                })
                .await
        })
    });
    let results = futures_util::future::join_all(calls).await;

    assert_eq!(results.len(), 100);
    for r in results {
        assert_eq!(r.expect("task").expect("value"), eur_usd());
    }
    assert_eq!(loader_runs.load(Ordering::SeqCst), 1);
    assert_eq!(upstream_requests(&upstream).await, 1);
    upstream.verify().await;
    let s = cache.stats();
    eprintln!("single flight ({}): {s:?}", cache.store().name());
    // One caller ran the loader; the other 99 waited for it (or, if late, hit its stored value).
    assert_eq!(s.coalesced + s.hits, 99, "{s:?}");
    assert_eq!(s.stores, 1, "{s:?}");
}

/// 1,000 ids, 100 cached: the batch loader gets exactly the 900 others, once; results come
/// back in the caller's order; a second call is served entirely from the cache.
async fn get_or_set_many_loads_only_missing(cache: Cache) {
    let key = |id: &u32| format!("product:{id}");
    // A permutation of 0..1000, so "the caller's order" is not sorted order.
    let ids: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 1000).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 1000);

    // Pre-cache every 10th id with a value the loader would not produce.
    let cached: Vec<(String, String)> = (0..1000u32)
        .filter(|id| id % 10 == 0)
        .map(|id| (key(&id), format!("cached-{id}")))
        .collect();
    let stored = cache
        .set_many(cached.iter().map(|(k, v)| (k.as_str(), v)), &Options::new())
        .await
        .expect("set_many");
    assert_eq!(stored, 100);

    let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let loader = |batches: Arc<Mutex<Vec<Vec<u32>>>>| {
        move |missing: Vec<u32>| async move {
            batches.lock().unwrap().push(missing.clone());
            // Answer in reverse: the result order must come from the caller's ids.
            Ok::<_, UpstreamError>(
                missing
                    .into_iter()
                    .rev()
                    .map(|id| (id, format!("loaded-{id}")))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let expected: Vec<Option<String>> = ids
        .iter()
        .map(|id| {
            Some(if id % 10 == 0 {
                format!("cached-{id}")
            } else {
                format!("loaded-{id}")
            })
        })
        .collect();

    let out = cache
        .get_or_set_many(&ids, key, &Options::new(), loader(batches.clone()))
        .await
        .expect("first call");
    {
        let b = batches.lock().unwrap();
        assert_eq!(b.len(), 1, "the batch loader runs once");
        assert_eq!(b[0].len(), 900);
        let got: BTreeSet<u32> = b[0].iter().copied().collect();
        let want: BTreeSet<u32> = (0..1000).filter(|id| id % 10 != 0).collect();
        assert_eq!(got, want, "exactly the missing ids");
    }
    assert_eq!(out, expected, "caller's order");
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (100, 900), "{s:?}");

    let again = cache
        .get_or_set_many(&ids, key, &Options::new(), loader(batches.clone()))
        .await
        .expect("second call");
    assert_eq!(batches.lock().unwrap().len(), 1, "no loader on a full hit");
    assert_eq!(again, expected);
    assert_eq!(cache.stats().hits, 1100);
}

// ---------------------------------------------------------------------------------------------
// Valkey
// ---------------------------------------------------------------------------------------------

mod valkey {
    use super::*;

    #[tokio::test]
    async fn get_or_set_hit_and_miss() {
        let server = ValkeyServer::start();
        hit_and_miss(builder(valkey_store(&server, VALKEY), "fn_hit").build()).await;
        assert_eq!(server.keys("fn_hit:*").await, ["fn_hit:rate:eur-usd"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_or_set_single_flight_100_callers() {
        let server = ValkeyServer::start();
        single_flight(builder(valkey_store(&server, VALKEY), "fn_flight").build()).await;
    }

    /// A loader error reaches the caller and is not cached; with a stale value and
    /// stale-if-error, the stale value is returned instead.
    #[tokio::test]
    async fn loader_error_propagates_then_stale_if_error() {
        let server = ValkeyServer::start();
        let cache = builder(valkey_store(&server, VALKEY), "fn_err").build();
        let upstream = MockServer::start().await;
        let client = http_client();
        let base = upstream.uri();

        // 1. Upstream fails, nothing cached: the error comes back, each call runs the loader.
        mount_rate(&upstream, 503).await;
        let opts = Options::new()
            .ttl(Duration::from_millis(300))
            .stale_if_error(Duration::from_secs(60));
        for n in 1..=2 {
            let r = cache
                .get_or_set_with("rate:eur-usd", &opts, || fetch_rate(&client, &base))
                .await;
            assert_eq!(r, Err(UpstreamError(503)));
            assert_eq!(upstream_requests(&upstream).await, n, "call {n}");
        }
        assert!(
            server.keys("fn_err:*").await.is_empty(),
            "an error was stored"
        );
        assert_eq!(cache.stats().stores, 0);

        // 2. Upstream recovers: the value is stored (fresh for 300 ms, then stale for 60 s).
        upstream.reset().await;
        mount_rate(&upstream, 200).await;
        let v = cache
            .get_or_set_with("rate:eur-usd", &opts, || fetch_rate(&client, &base))
            .await
            .expect("value");
        assert_eq!(v, eur_usd());
        assert_eq!(upstream_requests(&upstream).await, 1);

        // 3. Past its freshness, the upstream fails again: the stale value is returned.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(cache.get::<Rate>("rate:eur-usd").await.expect("get"), None);
        upstream.reset().await;
        mount_rate(&upstream, 503).await;
        let v = cache
            .get_or_set_with("rate:eur-usd", &opts, || fetch_rate(&client, &base))
            .await;
        assert_eq!(v, Ok(eur_usd()), "stale-if-error");
        assert_eq!(upstream_requests(&upstream).await, 1, "the loader ran");
        assert_eq!(cache.stats().stale_if_error, 1);

        // Without stale-if-error on the call, the same stale value is not used.
        let v = cache
            .get_or_set_with(
                "rate:eur-usd",
                &Options::new().ttl(Duration::from_millis(300)),
                || fetch_rate(&client, &base),
            )
            .await;
        assert_eq!(v, Err(UpstreamError(503)));
        assert_eq!(upstream_requests(&upstream).await, 2);
    }

    /// 1,000 ids, 100 cached: the batch loader gets exactly the 900 others, once.
    #[tokio::test]
    async fn get_or_set_many_loads_only_missing() {
        let server = ValkeyServer::start();
        super::get_or_set_many_loads_only_missing(
            builder(valkey_store(&server, VALKEY), "fn_many").build(),
        )
        .await;
        assert_eq!(server.keys("fn_many:product:*").await.len(), 1000);
    }

    /// `warm_values` of 10,000 entries in batches of 500 takes 20 round trips (counted by Valkey
    /// and by a wrapper around the store), and every value is readable afterwards.
    #[tokio::test]
    async fn warm_values_10k_in_20_round_trips() {
        const N: usize = 10_000;
        const BATCH: usize = 500;
        let server = ValkeyServer::start();
        let counted = Arc::new(Mutex::new(Vec::new()));
        let store = CountingStore {
            inner: valkey_store(&server, VALKEY),
            write_many: counted.clone(),
        };
        let cache = builder(store, "fn_warm").build();
        let opts = Options::new().ttl(Duration::from_secs(300));

        // Load the batch-write script once (a fresh server answers the first EVALSHA with
        // NOSCRIPT, then the client loads it: a one-off per server, not per warming).
        cache
            .set_many([("primer", &0u32)], &opts)
            .await
            .expect("primer");
        counted.lock().unwrap().clear();
        let () = server.cli(&["CONFIG", "RESETSTAT"]).await;

        let values = (0..N).map(|i| {
            (
                format!("country:{i:05}"),
                serde_json::json!({ "id": i, "name": format!("Country {i}") }),
            )
        });
        let stored = cache.warm_values(values, BATCH, &opts).await.expect("warm");
        let stats = commandstats(&server).await;
        assert_eq!(stored, N);

        // Round trips, as Valkey counts them: every top-level command. Not counted: commands
        // run inside the batch script (`SET`, `GET`, `ZRANGE`, `TIME`, counted under their own
        // names), this test's own `CONFIG RESETSTAT`/`INFO`, and connection handshakes
        // (`CLIENT SETINFO`, `HELLO`: the test's connection, and a store lane connecting).
        let not_round_trips = [
            "set",
            "get",
            "zrange",
            "time",
            "info",
            "config|resetstat",
            "client|setinfo",
            "hello",
        ];
        let round_trips: u64 = stats
            .iter()
            .filter(|(c, _)| !not_round_trips.contains(&c.as_str()))
            .map(|(_, n)| n)
            .sum();
        let limit = N.div_ceil(BATCH) as u64;
        eprintln!("commandstats after warm_values: {stats:?}");
        assert!(
            round_trips <= limit,
            "{round_trips} round trips > {limit}: {stats:?}"
        );
        assert_eq!(stats.get("evalsha").copied(), Some(limit), "{stats:?}");
        assert_eq!(
            stats.get("set").copied(),
            Some(N as u64),
            "one SET per entry"
        );
        let batches = counted.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![BATCH; N / BATCH],
            "write_many calls and sizes"
        );

        // All readable, in one batch read.
        let keys: Vec<String> = (0..N).map(|i| format!("country:{i:05}")).collect();
        let got: Vec<Option<serde_json::Value>> = cache.get_many(&keys).await.expect("get_many");
        assert_eq!(got.len(), N);
        for (i, v) in got.into_iter().enumerate() {
            let v = v.unwrap_or_else(|| panic!("country:{i:05} missing"));
            assert_eq!(v["id"], i);
        }
    }

    /// `warm` drives 1,000 URIs through a router: all stored, then all fresh, then (forced) all
    /// stored again; the progress callback sees every request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_router_1000_uris() {
        let server = ValkeyServer::start();
        let cache = builder(valkey_store(&server, VALKEY), "fn_router").build();
        let handler_runs = Arc::new(AtomicUsize::new(0));
        let runs = handler_runs.clone();
        let app = Router::new().route(
            "/items/{id}",
            get(move |Path(id): Path<u32>| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    format!("item {id}")
                }
            })
            .route_layer(CacheLayer::new(cache.clone()).ttl(Duration::from_secs(300))),
        );
        let requests = || {
            (0..1000).map(|i| {
                Request::get(format!("/items/{i}"))
                    .body(Body::empty())
                    .unwrap()
            })
        };
        let run = |opts: WarmOptions| {
            let (cache, app) = (cache.clone(), app.clone());
            let progress = Arc::new(AtomicUsize::new(0));
            let p = progress.clone();
            let opts = opts.concurrency(16).on_progress(move |_| {
                p.fetch_add(1, Ordering::SeqCst);
            });
            async move {
                let report = cache.warm(app, requests(), opts).await;
                (report, progress.load(Ordering::SeqCst))
            }
        };

        let (first, progress) = run(WarmOptions::new()).await;
        eprintln!("first warm: {first:?}");
        assert_eq!(
            (first.warmed, first.already_fresh, first.failed),
            (1000, 0, 0)
        );
        assert_eq!(progress, 1000, "progress callback calls");
        assert_eq!(handler_runs.load(Ordering::SeqCst), 1000);
        assert_eq!(server.keys("fn_router:*").await.len(), 1000);

        let (second, progress) = run(WarmOptions::new()).await;
        eprintln!("second warm: {second:?}");
        assert_eq!(
            (second.warmed, second.already_fresh, second.failed),
            (0, 1000, 0)
        );
        assert_eq!(progress, 1000);
        assert_eq!(
            handler_runs.load(Ordering::SeqCst),
            1000,
            "nothing re-rendered"
        );

        let (forced, progress) = run(WarmOptions::new().force(true)).await;
        eprintln!("forced warm: {forced:?}");
        assert_eq!(
            (forced.warmed, forced.already_fresh, forced.failed),
            (1000, 0, 0)
        );
        assert_eq!(progress, 1000);
        assert_eq!(handler_runs.load(Ordering::SeqCst), 2000);
        assert_eq!(server.keys("fn_router:*").await.len(), 1000);
    }

    /// Valkey down: `get_or_set` runs the loader and returns its value, counted as
    /// `store_unavailable`; once Valkey is back, values are cached again.
    #[tokio::test]
    async fn valkey_down_calls_loader() {
        let mut server = ValkeyServer::start();
        let store = ValkeyStore::with_config(
            ValkeyConfig::from_url(server.url())
                .connect_timeout(Duration::from_millis(300))
                .response_timeout(Duration::from_millis(300))
                .wait_timeout(Duration::from_millis(300)),
        )
        .expect("valkey store");
        let cache = Cache::builder(store)
            .namespace("fn_down")
            .timeout(Duration::from_millis(500))
            .circuit_breaker(5, Duration::from_millis(200))
            .build();
        let runs = Arc::new(AtomicUsize::new(0));
        let load = |n: u32| {
            let runs = runs.clone();
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, UpstreamError>(n)
            }
        };

        assert_eq!(cache.get_or_set("answer", load(1)).await, Ok(1));
        assert_eq!(cache.get_or_set("answer", load(2)).await, Ok(1), "cached");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().store_unavailable, 0);

        server.stop();
        // More calls than the breaker threshold: failing calls, then calls the open breaker skips.
        for n in 0..8 {
            let t = Instant::now();
            assert_eq!(cache.get_or_set("answer", load(100 + n)).await, Ok(100 + n));
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "call {n} took {:?}",
                t.elapsed()
            );
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            9,
            "the loader ran for every call"
        );
        let s = cache.stats();
        eprintln!("valkey down: {s:?}");
        assert_eq!(s.store_unavailable, 8, "{s:?}");
        assert_eq!(s.breaker_opened, 1, "{s:?}");

        server.restart();
        // The data is gone (no persistence); the next successful call stores again.
        let v = eventually(Duration::from_secs(10), "values cached again", || {
            let cache = cache.clone();
            let load = load(7);
            async move {
                let before = cache.stats().stores;
                let v = cache.get_or_set("answer", load).await.ok()?;
                (cache.stats().stores > before).then_some(v)
            }
        })
        .await;
        assert_eq!(v, 7);
        assert_eq!(cache.get_or_set("answer", load(8)).await, Ok(7), "cached");
    }
}

// ---------------------------------------------------------------------------------------------
// MemoryStore
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Valkey Cluster (one local cluster shared by these tests)
// ---------------------------------------------------------------------------------------------

mod cluster {
    use super::*;

    fn store() -> (&'static support::ValkeyCluster, ValkeyStore, String) {
        support::shared_cluster_store(Duration::from_secs(2))
    }

    #[tokio::test]
    async fn get_or_set_hit_and_miss() {
        let (cluster, store, sfx) = store();
        let cache = builder(store, &format!("fn_hit{sfx}")).build();
        let space = cache.key_space().clone();
        hit_and_miss(cache).await;
        // In its shard of the namespace's 128 (the cluster's default).
        assert_eq!(space.shard_count(), 128);
        assert_eq!(
            cluster.keys(&space.entry_glob("*")),
            [space.entry("rate:eur-usd")]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_or_set_single_flight_100_callers() {
        let (_, store, sfx) = store();
        single_flight(builder(store, &format!("fn_flight{sfx}")).build()).await;
    }

    /// The batch read and write of 1,000 keys, split by shard (one `MGET` and one script per
    /// shard of 128): no `CROSSSLOT`.
    #[tokio::test]
    async fn get_or_set_many_loads_only_missing() {
        let (cluster, store, sfx) = store();
        let cache = builder(store, &format!("fn_many{sfx}")).build();
        let space = cache.key_space().clone();
        super::get_or_set_many_loads_only_missing(cache).await;
        assert_eq!(cluster.keys(&space.entry_glob("product:*")).len(), 1000);
    }
}

mod memory {
    use super::*;

    #[tokio::test]
    async fn get_or_set_hit_and_miss() {
        hit_and_miss(builder(MemoryStore::new(), "fn_hit").build()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_or_set_single_flight_100_callers() {
        single_flight(builder(MemoryStore::new(), "fn_flight").build()).await;
    }

    #[tokio::test]
    async fn get_or_set_many_loads_only_missing() {
        super::get_or_set_many_loads_only_missing(builder(MemoryStore::new(), "fn_many").build())
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// warm: judged by each response's Outcome (both stores)
// ---------------------------------------------------------------------------------------------

/// `warm` judges each request by its response's `Outcome`: a streamed response (unknown length)
/// it stored counts as warmed once its body is complete and stored, and a duplicate URI
/// (collapsed onto the concurrent fill of the same key, or a fresh hit after it) is already
/// fresh, never a failure. 10 streamed and 10 plain URIs, each sent 3 times, 16 at a time.
async fn warm_judges_by_outcome(cache: Cache) {
    let runs = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (runs.clone(), runs.clone());
    let layer = CacheLayer::new(cache.clone()).ttl(Duration::from_secs(300));
    let app = Router::new()
        .route(
            "/stream/{id}",
            get(move |Path(id): Path<u32>| {
                let runs = r1.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let chunks = (0..4).map(move |i| {
                        Ok::<_, std::io::Error>(bytes::Bytes::from(format!("item {id} part {i};")))
                    });
                    Body::from_stream(futures_util::stream::iter(chunks))
                }
            })
            .route_layer(layer.clone()),
        )
        .route(
            "/items/{id}",
            get(move |Path(id): Path<u32>| {
                let runs = r2.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    format!("item {id}")
                }
            })
            .route_layer(layer),
        );
    let uris: Vec<String> = (0..10)
        .flat_map(|i| [format!("/stream/{i}"), format!("/items/{i}")])
        .collect();
    let requests = uris
        .iter()
        .flat_map(|u| std::iter::repeat_n(u.clone(), 3))
        .map(|u| Request::get(u).body(Body::empty()).unwrap());
    let report = cache
        .warm(app.clone(), requests, WarmOptions::new().concurrency(16))
        .await;
    assert_eq!(
        (report.warmed, report.already_fresh, report.failed),
        (20, 40, 0),
        "{report:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 20, "one handler run per URI");
    for u in &uris {
        assert!(support::get(&app, u).await.is_hit(), "{u} is warm");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_counts_streamed_stores_and_duplicates_on_valkey() {
    let server = ValkeyServer::start();
    warm_judges_by_outcome(builder(valkey_store(&server, VALKEY), "warm_outcome").build()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_counts_streamed_stores_and_duplicates_on_memory() {
    warm_judges_by_outcome(builder(MemoryStore::new(), "warm_outcome").build()).await
}

/// The postcard codec stores values smaller than JSON and reads them back; both codecs coexist.
#[cfg(feature = "postcard")]
#[tokio::test]
async fn postcard_codec_round_trips_on_valkey() {
    use tower_valkey_cache::entry::Entry;
    use tower_valkey_cache::function::Codec;
    let server = ValkeyServer::start();
    let cache = builder(valkey_store(&server, VALKEY), "pc").build();
    let json = Options::new();
    let bin = Options::new().codec(Codec::Postcard);
    let loads = AtomicUsize::new(0);
    for opts in [&json, &bin] {
        let key = format!("rate:{:?}", std::ptr::eq(opts, &bin));
        for _ in 0..2 {
            let v: Result<Rate, UpstreamError> = cache
                .get_or_set_with(&key, opts, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(eur_usd())
                })
                .await;
            assert_eq!(v.unwrap(), eur_usd());
        }
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "one load per codec, then hits"
    );
    let size = |key: &'static str| {
        let server = &server;
        async move {
            let raw: Vec<u8> = server.cli(&["GET", key]).await;
            Entry::decode(&raw.into()).unwrap().body.len()
        }
    };
    let (j, b) = (size("pc:rate:false").await, size("pc:rate:true").await);
    assert!(b < j, "postcard {b} bytes vs JSON {j} bytes");
}

/// Every read decodes a value with the codec it was written with: `get`, `get_many`,
/// `get_or_set_many` and `get_or_set` with other options read postcard values (`get` and
/// `get_many` assumed JSON, so a postcard value read as `None`), and JSON values still read.
#[cfg(feature = "postcard")]
async fn reads_use_the_codec_of_the_entry(cache: Cache) {
    use tower_valkey_cache::function::Codec;
    let bin = Options::new().codec(Codec::Postcard);
    cache.set("bin", &eur_usd(), &bin).await.unwrap();
    cache
        .set("json", &eur_usd(), &Options::new())
        .await
        .unwrap();
    let v: Result<Rate, UpstreamError> = cache
        .get_or_set_with("loaded", &bin, || async { Ok(eur_usd()) })
        .await;
    assert_eq!(v.unwrap(), eur_usd());

    for key in ["bin", "json", "loaded"] {
        assert_eq!(
            cache.get::<Rate>(key).await.unwrap(),
            Some(eur_usd()),
            "get {key}"
        );
    }
    let keys: Vec<String> = ["bin", "json", "loaded"].map(String::from).to_vec();
    assert_eq!(
        cache.get_many::<Rate>(&keys).await.unwrap(),
        vec![Some(eur_usd()); 3]
    );
    // Read with JSON options: still the postcard value, the loader does not run.
    let many = cache
        .get_or_set_many(
            &["bin", "loaded"],
            |k| k.to_string(),
            &Options::new(),
            |_| async { Err::<Vec<(&str, Rate)>, _>(UpstreamError(0)) },
        )
        .await
        .unwrap();
    assert_eq!(many, vec![Some(eur_usd()); 2]);
    let one: Result<Rate, UpstreamError> = cache
        .get_or_set("bin", || async { Err(UpstreamError(0)) })
        .await;
    assert_eq!(one.unwrap(), eur_usd());
    // A value of another type is still None, not a wrong value.
    assert_eq!(cache.get::<Vec<String>>("bin").await.unwrap(), None);
}

#[cfg(feature = "postcard")]
#[tokio::test]
async fn reads_use_the_codec_of_the_entry_on_valkey() {
    let server = ValkeyServer::start();
    reads_use_the_codec_of_the_entry(builder(valkey_store(&server, VALKEY), "codec").build()).await
}

#[cfg(feature = "postcard")]
#[tokio::test]
async fn reads_use_the_codec_of_the_entry_on_memory() {
    reads_use_the_codec_of_the_entry(builder(MemoryStore::new(), "codec").build()).await
}

// ---------------------------------------------------------------------------------------------
// get_or_set_if: values returned but not stored (both stores)
// ---------------------------------------------------------------------------------------------

/// A value `store_if` declines is returned, not stored, and never replaced by a stale value
/// (stale-if-error is for loader errors only); an accepted one is stored as by `get_or_set_with`.
async fn declined_values_are_returned_not_stored(cache: Cache) {
    let opts = Options::new()
        .ttl(Duration::from_millis(300))
        .stale_if_error(Duration::from_secs(60));
    let runs = AtomicUsize::new(0);
    let load = |v: &'static str| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<String, UpstreamError>(v.to_owned())
        }
    };
    let declined = |v: &String| !v.starts_with("partial");

    // 1. Declined on a cold key: returned, not stored, the next call loads again.
    for n in 1..=2 {
        let v = cache
            .get_or_set_if("k", &opts, declined, load("partial-1"))
            .await;
        assert_eq!(v.as_deref(), Ok("partial-1"));
        assert_eq!(runs.load(Ordering::SeqCst), n, "call {n} ran the loader");
    }
    assert_eq!(cache.get::<String>("k").await.expect("get"), None);
    assert_eq!(cache.stats().stores, 0, "a declined value was stored");

    // 2. Accepted: stored; a hit does not run the loader.
    let v = cache.get_or_set_if("k", &opts, declined, load("v1")).await;
    assert_eq!(v.as_deref(), Ok("v1"));
    let v = cache.get_or_set_if("k", &opts, declined, load("v2")).await;
    assert_eq!(v.as_deref(), Ok("v1"), "hit");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(cache.stats().stores, 1);

    // 3. Past its freshness, with the stale window open: a declined value is still what the
    //    caller gets (not the stale `v1`), and `v1` stays the stored entry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = cache
        .get_or_set_if("k", &opts, declined, load("partial-2"))
        .await;
    assert_eq!(
        v.as_deref(),
        Ok("partial-2"),
        "declined value replaced by stale"
    );
    assert_eq!(cache.stats().stale_if_error, 0);
    assert_eq!(cache.stats().stores, 1);
    let failing = || async { Err::<String, _>(UpstreamError(503)) };
    let v = cache.get_or_set_with("k", &opts, failing).await;
    assert_eq!(
        v.as_deref(),
        Ok("v1"),
        "the stored entry is still v1 (stale-if-error)"
    );
    assert_eq!(cache.stats().stale_if_error, 1);
}

/// 50 concurrent callers on a cold key, the loader's value declined: the loader runs once (it
/// waits until every caller has looked up and joined the flight), every caller gets the value,
/// nothing is stored.
async fn declined_values_are_shared_with_waiting_callers(cache: Cache) {
    const N: u64 = 50;
    let runs = Arc::new(AtomicUsize::new(0));
    let calls = (0..N).map(|_| {
        let (cache, runs) = (cache.clone(), runs.clone());
        tokio::spawn(async move {
            let probe = cache.clone();
            cache
                .get_or_set_if("absent", &Options::new(), Option::is_some, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Every other caller has looked up and waits on this flight (the `waiting`
                    // gauge counts them).
                    eventually(Duration::from_secs(10), "every caller waiting", || {
                        let probe = probe.clone();
                        async move { (probe.stats().waiting == N - 1).then_some(()) }
                    })
                    .await;
                    Ok::<Option<u32>, UpstreamError>(None)
                })
                .await
        })
    });
    let results = futures_util::future::join_all(calls).await;
    for r in results {
        assert_eq!(r.expect("task"), Ok(None));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.coalesced, s.stores), (N - 1, 0), "{s:?}");
    assert_eq!(cache.get::<Option<u32>>("absent").await.expect("get"), None);
}

mod store_if {
    use super::*;

    #[tokio::test]
    async fn declined_values_are_returned_not_stored_on_valkey() {
        let server = ValkeyServer::start();
        declined_values_are_returned_not_stored(
            builder(valkey_store(&server, VALKEY), "fn_if").build(),
        )
        .await;
        assert_eq!(server.keys("fn_if:*").await, ["fn_if:k"]);
    }

    #[tokio::test]
    async fn declined_values_are_returned_not_stored_on_memory() {
        declined_values_are_returned_not_stored(builder(MemoryStore::new(), "fn_if").build()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declined_values_are_shared_with_waiting_callers_on_valkey() {
        let server = ValkeyServer::start();
        declined_values_are_shared_with_waiting_callers(
            builder(valkey_store(&server, VALKEY), "fn_if_flight").build(),
        )
        .await;
        assert!(server.keys("fn_if_flight:*").await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declined_values_are_shared_with_waiting_callers_on_memory() {
        declined_values_are_shared_with_waiting_callers(
            builder(MemoryStore::new(), "fn_if_flight").build(),
        )
        .await;
    }
}
