#![cfg(feature = "testing")]
//! The `testing` module: `FaultyStore` faults as the cache sees them, `CacheStatus` parsing of
//! every outcome the layer writes, and `StatsDelta`. Mostly on `MemoryStore`; the last test runs
//! the same faults over a real Valkey (tests/support).

use crate::support;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::Router;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{eventually, get as get_req, request, send, Resp, ValkeyServer};
use tower_valkey_cache::entry::Entry;
use tower_valkey_cache::store::{Store, StoreErrorKind};
use tower_valkey_cache::testing::{CacheStatus, Faults, FaultyStore, Op, StatsDelta, GARBAGE};
use tower_valkey_cache::{
    Cache, CacheBuilder, CacheLayer, InvalidateLayer, MemoryStore, ValkeyConfig, ValkeyStore,
};

const POLL: Duration = Duration::from_secs(10);

/// Counts handler runs.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A faulty memory store and a builder over it (namespace `ns`, 1 s operation timeout, a breaker
/// that needs 100 failures: tests that are about the breaker set their own).
fn faulty(ns: &str) -> (Faults, CacheBuilder) {
    let store = FaultyStore::new(MemoryStore::new());
    let faults = store.faults();
    let b = Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(1))
        .circuit_breaker(100, Duration::from_millis(50));
    (faults, b)
}

/// `GET /item` answering `item N` (N = handler runs so far), cached for a minute.
fn app(cache: &Cache, calls: &Calls) -> Router {
    app_with(
        CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60)),
        calls,
    )
}

fn app_with(layer: CacheLayer, calls: &Calls) -> Router {
    let c = calls.clone();
    Router::new().route(
        "/item",
        get(move || {
            let c = c.clone();
            async move { format!("item {}", c.0.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .route_layer(layer),
    )
}

fn status(r: &Resp) -> CacheStatus {
    CacheStatus::from_headers(&r.headers).expect("a Cache-Status header")
}

#[tokio::test]
async fn down_store_is_served_by_the_handler_and_caching_resumes_when_up() {
    let (faults, b) = faulty("t_down");
    let cache = b.build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    assert!(status(&get_req(&app, "/item").await).stored);
    assert!(status(&get_req(&app, "/item").await).is_hit());

    faults.down();
    assert!(faults.is_down());
    let before = cache.stats();
    for n in 1..=3 {
        let r = get_req(&app, "/item").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), format!("item {}", n + 1), "the handler answers");
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=miss; detail=store-unavailable"
        );
        assert!(status(&r).is_store_unavailable());
    }
    let d = StatsDelta::since(&before, &cache.stats());
    assert_eq!((d.store_unavailable, d.hits, d.misses), (3, 0, 0), "{d:?}");
    assert_eq!(d.store_errors, 3);
    assert_eq!(d.requests(), 3);

    faults.up();
    // The entry stored before the outage is still there.
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit(), "{}", r.cache_status());
    assert_eq!(r.text(), "item 1");
    assert_eq!(faults.injected(), 3);
}

#[tokio::test]
async fn the_breaker_stops_calling_a_down_store() {
    let (faults, b) = faulty("t_breaker");
    let cache = b.circuit_breaker(2, Duration::from_secs(600)).build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    faults.down();
    let (_, d) = StatsDelta::measure(&cache, async {
        for _ in 0..5 {
            let r = get_req(&app, "/item").await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(status(&r).is_store_unavailable());
        }
    })
    .await;
    assert_eq!(calls.get(), 5);
    // The first operation of each of the first two requests (the layout claim, which fails
    // like every operation of a down store) trips it.
    let sent: u64 = Op::ALL.iter().map(|&op| faults.calls(op)).sum();
    assert_eq!(
        sent, 2,
        "open after two failures: the store is not asked again"
    );
    assert_eq!((d.breaker_opened, d.store_unavailable), (1, 5), "{d:?}");
    assert!(cache.is_degraded());
}

#[tokio::test]
async fn slow_store_past_the_timeout_is_skipped() {
    let (faults, b) = faulty("t_slow");
    let cache = b.timeout(Duration::from_millis(100)).build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    assert!(status(&get_req(&app, "/item").await).stored);

    // Slower than the operation timeout: the handler answers without waiting for the store.
    faults.slow(Duration::from_secs(30));
    let started = Instant::now();
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_store_unavailable(), "{}", r.cache_status());
    assert_eq!(r.text(), "item 2");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let s = cache.stats();
    assert_eq!(s.store_errors, 1);

    // Slow but within the timeout: still a hit.
    faults.slow(Duration::from_millis(5));
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit(), "{}", r.cache_status());
    faults.slow(Duration::ZERO);
}

#[tokio::test]
async fn failing_writes_are_served_and_not_stored() {
    let (faults, b) = faulty("t_write");
    let cache = b.build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    faults.fail(Op::Write);
    for n in 1..=2 {
        let r = get_req(&app, "/item").await;
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, format!("item {n}").as_str())
        );
        let s = status(&r);
        assert!(s.is_miss() && !s.stored, "{}", r.cache_status());
        assert_eq!(s.detail.as_deref(), Some("store-unavailable"));
    }
    assert_eq!(faults.calls(Op::Write), 2);
    faults.heal(Op::Write);
    assert!(status(&get_req(&app, "/item").await).stored);
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit());
    assert_eq!(r.text(), "item 3");
}

#[tokio::test]
async fn transient_read_failure_then_normal_service() {
    let (faults, b) = faulty("t_transient");
    let cache = b.build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    faults.fail_next(Op::Read, 1);
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_store_unavailable());
    let r = get_req(&app, "/item").await;
    assert!(status(&r).stored, "{}", r.cache_status());
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit());
    assert_eq!(r.text(), "item 2");
    // (A miss reads twice: the lookup, and a double-check once it leads the fill.)
    assert_eq!(faults.injected(), 1);
    assert!(faults.calls(Op::Read) >= 3);
}

#[tokio::test]
async fn chosen_error_kinds_reach_the_caller() {
    let (faults, b) = faulty("t_kind");
    let cache = b.build();
    faults.fail_with(Op::Invalidate, StoreErrorKind::Timeout);
    let e = cache.invalidate_key("k").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Timeout);
    // The failed invalidation is owed to the store, not lost: queued for retry.
    assert_eq!(cache.pending_invalidations(), 1);
    faults.fail(Op::Ping);
    let e = cache.store().ping().await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Server);
    faults.reset();
    assert_eq!(cache.invalidate_key("k").await.unwrap(), 0);
    assert!(cache.store().ping().await.is_ok());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while cache.pending_invalidations() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(cache.pending_invalidations(), 0, "the queued retry landed");
    // The failed attempt, the retry (at least one), and the second call.
    assert!(faults.calls(Op::Invalidate) >= 3);
}

#[tokio::test]
async fn corrupt_reads_are_misses_and_get_overwritten() {
    let store = MemoryStore::new();
    let faulty = FaultyStore::new(store.clone());
    let faults = faulty.faults();
    let cache = Cache::builder(faulty).namespace("t_corrupt").build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    assert!(status(&get_req(&app, "/item").await).stored);

    faults.corrupt_reads(true);
    let before = cache.stats();
    let r = get_req(&app, "/item").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "item 2"));
    assert!(status(&r).stored, "{}", r.cache_status());
    let d = StatsDelta::since(&before, &cache.stats());
    assert_eq!((d.decode_failures, d.misses, d.stores), (1, 1, 1), "{d:?}");

    // A truncated entry is as undecodable as garbage.
    let valid = Entry::new(
        200,
        vec![],
        Bytes::from_static(b"x"),
        1,
        Duration::from_secs(3600),
        Duration::ZERO,
    )
    .encode()
    .unwrap();
    faults.corrupt_reads_with(valid.slice(..valid.len() - 1));
    let r = get_req(&app, "/item").await;
    assert_eq!(r.text(), "item 3");

    faults.corrupt_reads(false);
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit());
    assert_eq!(r.text(), "item 3", "the corrupt reads were overwritten");
    // Missing values stay missing under corruption.
    faults.corrupt_reads(true);
    let raw = cache
        .store()
        .read(cache.key_space(), "nothing")
        .await
        .unwrap();
    assert!(raw.value.is_none());
    let raw = cache
        .store()
        .read(cache.key_space(), "GET:/item")
        .await
        .unwrap();
    assert_eq!(raw.value.as_deref(), Some(GARBAGE));
}

#[tokio::test]
async fn lock_failures_do_not_fail_requests() {
    let (faults, b) = faulty("t_lock");
    let cache = b.build();
    let calls = Calls::default();
    let app = app_with(
        CacheLayer::new(cache.clone())
            .ttl(Duration::from_secs(60))
            .lock(Duration::from_secs(1)),
        &calls,
    );
    faults.fail(Op::Lock);
    let r = get_req(&app, "/item").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        status(&r).stored,
        "without the lock the fill is still stored"
    );
    assert_eq!(faults.calls(Op::Lock), 1);
    assert!(status(&get_req(&app, "/item").await).is_hit());
}

#[tokio::test]
async fn failed_invalidations_are_queued_until_the_store_heals() {
    let (faults, b) = faulty("t_inv");
    let cache = b.build();
    let calls = Calls::default();
    let app = app(&cache, &calls).route(
        "/item",
        put(|| async { "written" })
            .route_layer(InvalidateLayer::new(cache.clone()).keys(["GET:/item"])),
    );
    assert!(status(&get_req(&app, "/item").await).stored);

    faults.fail(Op::Invalidate);
    let r = send(&app, request("PUT", "/item", &[])).await;
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, "written"),
        "a failed invalidation does not fail the write"
    );
    assert_eq!(cache.pending_invalidations(), 1);
    // While it is pending this process does not serve from the cache.
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_store_unavailable(), "{}", r.cache_status());

    faults.heal(Op::Invalidate);
    eventually(POLL, "the queued invalidation to succeed", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    let s = cache.stats();
    assert_eq!((s.invalidations_queued, s.invalidations_retried), (1, 1));
    let r = get_req(&app, "/item").await;
    assert!(status(&r).stored, "{}", r.cache_status());
}

#[tokio::test]
async fn function_cache_falls_back_to_the_loader() {
    let (faults, b) = faulty("t_fn");
    let cache = b.build();
    let v: Result<u32, ()> = cache.get_or_set("answer", || async { Ok(42) }).await;
    assert_eq!(v, Ok(42));
    faults.down();
    let (v, d) = StatsDelta::measure(&cache, async {
        let v: Result<u32, ()> = cache.get_or_set("answer", || async { Ok(7) }).await;
        v
    })
    .await;
    assert_eq!(v, Ok(7), "the loader answers while the store is down");
    assert_eq!((d.store_unavailable, d.hits), (1, 0));
    faults.up();

    // A value that does not decode is a miss: the loader answers and its value replaces it.
    faults.corrupt_reads(true);
    let v: Result<u32, ()> = cache.get_or_set("answer", || async { Ok(9) }).await;
    assert_eq!(v, Ok(9));
    faults.corrupt_reads(false);
    let v: Result<u32, ()> = cache.get_or_set("answer", || async { Ok(0) }).await;
    assert_eq!(v, Ok(9));
    assert_eq!(cache.stats().decode_failures, 1);

    // Batch reads: corrupt values are absent, failures are errors.
    let opts = tower_valkey_cache::function::Options::new();
    cache
        .set_many([("a", &1u32), ("b", &2)], &opts)
        .await
        .unwrap();
    let keys = ["a".to_string(), "b".to_string(), "c".to_string()];
    let got: Vec<Option<u32>> = cache.get_many(&keys).await.unwrap();
    assert_eq!(got, [Some(1), Some(2), None]);
    faults.corrupt_reads(true);
    let got: Vec<Option<u32>> = cache.get_many(&keys).await.unwrap();
    assert_eq!(got, [None, None, None]);
    faults.corrupt_reads(false);
    faults.fail(Op::ReadMany);
    assert!(cache.get_many::<u32>(&keys).await.is_err());
    faults.fail(Op::WriteMany);
    assert!(cache.set_many([("a", &1u32)], &opts).await.is_err());
    assert_eq!(
        (faults.calls(Op::ReadMany), faults.calls(Op::WriteMany)),
        (3, 2)
    );
}

/// Every outcome the layer writes parses to what it means.
#[tokio::test]
async fn cache_status_parses_every_outcome_of_the_layer() {
    let (faults, b) = faulty("t_status");
    let cache = b.build();
    let layer = || CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60));
    let app = Router::new()
        .route(
            "/a",
            get(|| async { "a" })
                .post(|| async { "posted" })
                .route_layer(layer()),
        )
        .route(
            "/private",
            get(|| async { ([("cache-control", "private")], "p") }).route_layer(layer()),
        )
        .route(
            "/me",
            get(|h: HeaderMap| async move { format!("{:?}", h.get("authorization")) })
                .route_layer(layer().key("me:{header.authorization}")),
        );

    let s = status(&get_req(&app, "/a").await);
    assert_eq!(s.cache, "tower-valkey-cache");
    assert!(s.is_miss() && s.stored && !s.hit && !s.collapsed && s.detail.is_none());

    let s = status(&get_req(&app, "/a").await);
    assert!(s.is_hit() && !s.is_stale() && !s.is_miss() && !s.is_bypass());
    assert!(matches!(s.ttl, Some(t) if (1..=60).contains(&t)), "{s:?}");
    assert_eq!(s.fwd, None);

    let s = status(&send(&app, request("POST", "/a", &[])).await);
    assert!(s.is_bypass() && !s.hit);
    assert_eq!(s.fwd.as_deref(), Some("method"));

    let s = status(&send(&app, request("GET", "/a", &[("cookie", "s=1")])).await);
    assert!(s.is_bypass());
    assert_eq!(
        (s.fwd.as_deref(), s.detail.as_deref()),
        (Some("bypass"), Some("cookie"))
    );

    let s = status(&get_req(&app, "/private").await);
    assert!(s.is_miss() && !s.stored);
    assert_eq!(s.detail.as_deref(), Some("cache-control"));

    let s = status(
        &send(
            &app,
            request("GET", "/me", &[("authorization", "Bearer x")]),
        )
        .await,
    );
    assert!(s.stored, "keyed by the credential: cached per caller");

    faults.down();
    let s = status(&get_req(&app, "/a").await);
    assert!(s.is_store_unavailable() && !s.is_miss() && !s.hit);
}

/// The same faults over a real Valkey: the entries survive an outage of the cache's view of the
/// server, and corrupt reads are overwritten in Valkey.
#[tokio::test]
async fn valkey_faults_through_the_harness() {
    let server = ValkeyServer::start();
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let faulty = FaultyStore::new(store);
    let faults = faulty.faults();
    assert_eq!(faulty.name(), "valkey");
    let cache = Cache::builder(faulty.clone())
        .namespace("t_vk")
        .timeout(Duration::from_millis(500))
        .circuit_breaker(100, Duration::from_millis(50))
        .build();
    let calls = Calls::default();
    let app = app(&cache, &calls);
    assert!(status(&get_req(&app, "/item").await).stored);
    assert!(status(&get_req(&app, "/item").await).is_hit());

    faults.down();
    let r = get_req(&app, "/item").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "item 2"));
    assert!(status(&r).is_store_unavailable());
    faults.slow(Duration::from_secs(10));
    faults.up();
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_store_unavailable(), "slow past the timeout");
    faults.slow(Duration::ZERO);
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit(), "the entry outlived the outage");
    assert_eq!(r.text(), "item 1");

    faults.corrupt_reads(true);
    let r = get_req(&app, "/item").await;
    assert_eq!(r.text(), "item 4");
    assert!(status(&r).stored, "{}", r.cache_status());
    faults.corrupt_reads(false);
    let raw: Vec<u8> = server.cli(&["GET", "t_vk:GET:/item"]).await;
    let entry = Entry::decode(&Bytes::from(raw)).expect("Valkey holds a valid entry");
    assert_eq!(entry.body, "item 4");
    let r = get_req(&app, "/item").await;
    assert!(status(&r).is_hit());
    assert_eq!(r.text(), "item 4");
    assert_eq!(cache.stats().decode_failures, 1);
}
