//! The hit loop behind `scripts/profile`: one `CacheLayer` route (`/item/{id}`, key `item:{id}`,
//! a 1 KiB body) on a current-thread runtime, driven in process by `oneshot` (no HTTP, no
//! sockets but Valkey's), so `valgrind --tool=callgrind --toggle-collect='*measure*'` counts the
//! instructions of exactly `N` requests.
//!
//! ```text
//! hit_loop bare|memory|l1|valkey N
//! ```
//!
//! - `bare`: the handler alone, without the layer;
//! - `memory`: a hit on a `MemoryStore`;
//! - `l1`: a hit on the in-process L1 tier in front of a `ValkeyStore`;
//! - `valkey`: a hit on a `ValkeyStore` (one `MGET` per request, on a valkey-server of its own).
//!
//! Every request of the measured loop is checked to be the scenario's hit before the loop runs.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use std::hint::black_box;
use std::time::Duration;
use tower::ServiceExt;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyStore};
use tvc_harness::ValkeyServer;

fn request() -> Request<Body> {
    Request::get("/item/1").body(Body::empty()).unwrap()
}

fn router(cache: Option<Cache>) -> Router {
    let body = Bytes::from(vec![b'x'; 1024]);
    let handler = get(move || async move { body.clone() });
    let route = match cache {
        None => handler,
        Some(cache) => handler.route_layer(
            CacheLayer::new(cache)
                .key("item:{id}")
                .ttl(Duration::from_secs(3600)),
        ),
    };
    // Finalised as `axum::serve` does.
    Router::new().route("/item/{id}", route).with_state(())
}

/// The measured requests: callgrind collects only while this function runs.
#[inline(never)]
fn measure(rt: &tokio::runtime::Runtime, app: &Router, n: u64) {
    rt.block_on(async {
        for _ in 0..n {
            black_box(app.clone().oneshot(request()).await.unwrap());
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut server = None;
    let mut valkey = || {
        let s = ValkeyServer::start();
        let store = ValkeyStore::new(&s.url()).expect("valkey store");
        server = Some(s);
        store
    };
    let (app, cache) = match scenario.as_str() {
        "bare" => (router(None), None),
        "memory" => {
            let cache = Cache::builder(MemoryStore::new())
                .namespace("profile")
                .build();
            (router(Some(cache.clone())), Some(cache))
        }
        "valkey" => {
            let cache = Cache::builder(valkey()).namespace("profile").build();
            (router(Some(cache.clone())), Some(cache))
        }
        "l1" => {
            let cache = Cache::builder(valkey())
                .namespace("profile_l1")
                .l1(10_000, Duration::from_secs(3600))
                .build();
            (router(Some(cache.clone())), Some(cache))
        }
        other => {
            eprintln!("usage: hit_loop bare|memory|l1|valkey N (not {other:?})");
            std::process::exit(2);
        }
    };
    rt.block_on(async {
        if let Some(cache) = &cache {
            if cache.l1_stats().is_some() {
                // The tier serves once its subscription is up.
                for _ in 0..500 {
                    if cache.l1_stats().is_some_and(|s| s.listening) {
                        break;
                    }
                    let _ = app.clone().oneshot(request()).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let res = app.clone().oneshot(request()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        // Warm: the entry stored, L1 filled, connections and allocator caches hot.
        for _ in 0..200 {
            let res = app.clone().oneshot(request()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        if cache.is_some() {
            let res = app.clone().oneshot(request()).await.unwrap();
            let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
            assert!(status.contains("; hit"), "not a hit: {status}");
        }
    });
    let before = cache.as_ref().map(|c| (c.stats(), c.l1_stats()));
    measure(&rt, &app, n);
    if let (Some(cache), Some((stats, l1))) = (&cache, before) {
        let hits = cache.stats().hits - stats.hits;
        assert_eq!(hits, n, "every measured request is a hit");
        if let (Some(now), Some(then)) = (cache.l1_stats(), l1) {
            assert_eq!(now.hits - then.hits, n, "every measured hit is an L1 hit");
        }
    }
    drop(server);
}
