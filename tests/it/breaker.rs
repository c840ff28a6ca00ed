//! The circuit breaker against a real Valkey: what counts as a failure when one multiplexed
//! connection carries every request (found by `scripts/chaos`, scenario `client-kill`).

use crate::support;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, get as get_req, ValkeyServer};
use tower_valkey_cache::{Cache, CacheLayer, ValkeyConfig, ValkeyStore};

const UNAVAILABLE: &str = "tower-valkey-cache; fwd=miss; detail=store-unavailable";
const IN_FLIGHT: usize = 32;

/// A route over `server` whose store operations wait up to 5 s (so reads queue on a frozen
/// server), with a breaker that opens after 5 failures and stays open for 10 minutes (so an
/// opening cannot go unnoticed). Returns the app, its cache and a handler-call counter.
fn app(server: &ValkeyServer, ns: &str) -> (Router, Cache, Arc<AtomicUsize>) {
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .response_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_millis(500)),
    )
    .expect("valkey store");
    let cache = Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(5))
        .circuit_breaker(5, Duration::from_secs(600))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        move |Path(id): Path<u32>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                format!("item {id}")
            }
        }
    };
    let app = Router::new().route(
        "/items/{id}",
        get(handler).route_layer(
            CacheLayer::new(cache.clone())
                .key("item:{id}")
                .ttl(Duration::from_secs(60)),
        ),
    );
    (app, cache, calls)
}

/// Sends `IN_FLIGHT` requests at once and waits for all; every one must be the handler's 200.
async fn burst(app: &Router) {
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { get_req(&app, &format!("/items/{i}")).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request task");
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, format!("item {i}").as_str())
        );
    }
}

/// One dropped connection fails every command pipelined on it at the same moment. That is one
/// failure: before the fix each of the 32 reads counted, so a single cut (a `CLIENT KILL`, a
/// proxy restart, a failover) opened the breaker and the route ran without its cache for a
/// whole cool-down although the very next request could reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_with_many_reads_in_flight_does_not_open_the_breaker() {
    let mut server = ValkeyServer::start();
    let (app, cache, calls) = app(&server, "brk_cut");
    burst(&app).await; // fills 32 entries
    assert_eq!(calls.load(Ordering::SeqCst), IN_FLIGHT);

    // Freeze the server so the next 32 reads wait on the one connection, then kill it: the
    // connection drops with all of them in flight.
    server.pause();
    let before = cache.stats();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { get_req(&app, &format!("/items/{i}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "the reads should be waiting on the frozen server"
    );
    server.stop();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request task");
        assert_eq!(
            (r.status, r.text(), r.cache_status()),
            (StatusCode::OK, format!("item {i}").as_str(), UNAVAILABLE)
        );
    }
    let s = cache.stats();
    assert_eq!(
        s.store_errors - before.store_errors,
        IN_FLIGHT as u64,
        "{s:?}"
    );
    assert_eq!(
        s.breaker_opened, 0,
        "one lost connection opened the breaker: {s:?}"
    );
    assert!(!cache.is_degraded());

    // The next request reconnects (the restarted server is empty: it stores, then hits).
    server.restart();
    eventually(
        Duration::from_secs(10),
        "hits after reconnecting",
        || async { get_req(&app, "/items/1").await.is_hit().then_some(()) },
    )
    .await;
    assert_eq!(cache.stats().breaker_opened, 0);
}

/// The other side of the rule: a server that stays down fails every new attempt, and those
/// attempts (each sent after the previous counted failure) still open the breaker under
/// concurrent load; then requests skip the store without trying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_down_still_opens_the_breaker_under_concurrent_load() {
    let mut server = ValkeyServer::start();
    let (app, cache, _calls) = app(&server, "brk_down");
    burst(&app).await;
    server.stop();
    // Waves of concurrent requests: each wave's attempts were sent after the previous wave's
    // failures, so each wave counts at least once; the breaker needs 5.
    for _ in 0..8 {
        burst(&app).await;
    }
    let s = cache.stats();
    assert_eq!(s.breaker_opened, 1, "{s:?}");
    assert!(cache.is_degraded());
    let errors = s.store_errors;
    burst(&app).await;
    assert_eq!(
        cache.stats().store_errors,
        errors,
        "the open breaker skips the store"
    );
}
