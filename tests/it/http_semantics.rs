//! HTTP semantics of `CacheLayer`: conditional requests (`If-None-Match`, `If-Modified-Since`),
//! `Cache-Control` freshness from the handler, `Age`. Each scenario runs on real Valkey and on
//! `MemoryStore`.

use crate::support;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{get as get_req, request, send, ValkeyServer};
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyConfig, ValkeyStore};

fn valkey_cache(server: &ValkeyServer, ns: &str) -> Cache {
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1)),
    )
    .expect("store");
    Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(1))
        .build()
}

fn counted(
    calls: &Arc<AtomicUsize>,
    headers: &'static [(&'static str, &'static str)],
) -> axum::routing::MethodRouter {
    let calls = calls.clone();
    get(move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, v.parse().unwrap());
            }
            (h, "representation").into_response()
        }
    })
}

async fn conditional_requests(cache: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/gen",
            counted(&calls, &[]).route_layer(CacheLayer::new(cache.clone())),
        )
        .route(
            "/own",
            counted(
                &calls,
                &[
                    ("etag", "W/\"v7\""),
                    ("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
                ],
            )
            .route_layer(CacheLayer::new(cache.clone())),
        );

    // Miss path: the response carries a content-hash ETag, and a matching If-None-Match on a
    // miss already gets a 304.
    let first = get_req(&app, "/gen").await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").to_string();
    assert!(
        etag.starts_with('"') && etag.len() == 34,
        "strong hash etag: {etag}"
    );
    let again = get_req(&app, "/gen").await;
    assert!(again.is_hit());
    assert_eq!(again.header("etag"), etag, "hits keep the same validator");

    // Hit path: exact, weak, list and * all match; another tag does not.
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_string(),
    ] {
        let r = send(&app, request("GET", "/gen", &[("if-none-match", &inm)])).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "If-None-Match: {inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), etag);
        assert!(r.is_hit(), "answered from the cache: {}", r.cache_status());
    }
    let r = send(
        &app,
        request("GET", "/gen", &[("if-none-match", "\"nope\"")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "representation");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "all answered from one fill"
    );

    // The handler's own validators are kept and used.
    let r = send(&app, request("GET", "/own", &[("if-none-match", "\"v7\"")])).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_MODIFIED,
        "miss path, weak comparison"
    );
    let r = send(
        &app,
        request(
            "GET",
            "/own",
            &[("if-modified-since", "Sat, 21 Nov 2026 11:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_MODIFIED,
        "Last-Modified before IMS"
    );
    assert!(r.is_hit());
    let r = send(
        &app,
        request(
            "GET",
            "/own",
            &[("if-modified-since", "Sat, 21 Nov 2026 09:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "modified since");
    assert_eq!(r.text(), "representation");
    // If-None-Match wins over If-Modified-Since.
    let r = send(
        &app,
        request(
            "GET",
            "/own",
            &[
                ("if-none-match", "\"other\""),
                ("if-modified-since", "Sat, 21 Nov 2026 11:00:00 GMT"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn cache_control_from_handler(cache: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = || {
        CacheLayer::new(cache.clone())
            .ttl(Duration::from_secs(300))
            .respect_cache_control(true)
    };
    let app = Router::new()
        .route(
            "/s",
            counted(&calls, &[("cache-control", "max-age=1000, s-maxage=40")]).route_layer(layer()),
        )
        .route(
            "/m",
            counted(&calls, &[("cache-control", "public, max-age=20")]).route_layer(layer()),
        )
        .route(
            "/zero",
            counted(&calls, &[("cache-control", "max-age=0")]).route_layer(layer()),
        )
        .route(
            "/expired",
            counted(&calls, &[("expires", "0")]).route_layer(layer()),
        )
        .route("/none", counted(&calls, &[]).route_layer(layer()));

    for (path, lo, hi) in [("/s", 38, 40), ("/m", 18, 20), ("/none", 298, 300)] {
        assert!(get_req(&app, path).await.cache_status().ends_with("stored"));
        let hit = get_req(&app, path).await;
        let ttl: i64 = hit
            .cache_status()
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{path}: {}", hit.cache_status()));
        assert!((lo..=hi).contains(&ttl), "{path}: ttl={ttl}");
    }
    for path in ["/zero", "/expired"] {
        let r = get_req(&app, path).await;
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=uri-miss; detail=cache-control",
            "{path}"
        );
        assert!(!get_req(&app, path).await.is_hit());
    }
}

async fn age_increases(cache: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/a",
        counted(&calls, &[]).route_layer(CacheLayer::new(cache)),
    );
    get_req(&app, "/a").await;
    let first: u64 = get_req(&app, "/a").await.header("age").parse().unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later: u64 = get_req(&app, "/a").await.header("age").parse().unwrap();
    assert!(later >= first + 2, "age {first} then {later}");
    let _ = header::AGE;
}

mod valkey {
    use super::*;

    #[tokio::test]
    async fn conditional_requests_answer_304() {
        let s = ValkeyServer::start();
        conditional_requests(valkey_cache(&s, "cond")).await;
    }

    #[tokio::test]
    async fn handler_cache_control_sets_freshness() {
        let s = ValkeyServer::start();
        cache_control_from_handler(valkey_cache(&s, "cc")).await;
    }

    #[tokio::test]
    async fn age_header_increases() {
        let s = ValkeyServer::start();
        age_increases(valkey_cache(&s, "age")).await;
    }
}

mod memory {
    use super::*;

    #[tokio::test]
    async fn conditional_requests_answer_304() {
        conditional_requests(Cache::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn handler_cache_control_sets_freshness() {
        cache_control_from_handler(Cache::new(MemoryStore::new())).await;
    }
}
