//! POST-keyed caching (`CacheLayer::key_body`) on real Valkey: the same body hits, another body
//! (or another `Content-Type`) misses, the handler always sees the whole body (also when it is
//! over the bound and bypasses, or fails mid-stream), and GET and POST never share an entry.

use crate::support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{send, ValkeyServer};
use tower_valkey_cache::{Cache, CacheLayer, ValkeyConfig, ValkeyStore};

fn valkey_cache(server: &ValkeyServer, ns: &str) -> Cache {
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2)),
    )
    .expect("store");
    Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(2))
        .build()
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A handler that reads the whole body frame by frame and answers
/// `CALL:LEN:SHA256` (or `CALL:error after LEN`), counting its calls.
fn echo(calls: &Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let calls = calls.clone();
    post(move |body: Body| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut body = body;
            let mut got = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            got.extend_from_slice(&d);
                        }
                    }
                    Err(_) => return format!("{n}:error after {}", got.len()),
                }
            }
            format!("{n}:{}:{}", got.len(), hex(&got))
        }
    })
}

fn post_req(uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

/// A body streamed in `chunks` (no Content-Length), optionally failing after them.
fn streamed(chunks: Vec<Bytes>, fail: bool) -> Body {
    let mut items: Vec<Result<Bytes, std::io::Error>> = chunks.into_iter().map(Ok).collect();
    if fail {
        items.push(Err(std::io::Error::other("client went away")));
    }
    Body::from_stream(futures_util::stream::iter(items))
}

fn app(cache: &Cache, calls: &Arc<AtomicUsize>, max: usize) -> Router {
    Router::new().route(
        "/search",
        echo(calls).route_layer(
            CacheLayer::new(cache.clone())
                .methods([Method::POST])
                .key_body(max)
                .tags(["search"]),
        ),
    )
}

#[tokio::test]
async fn same_body_hits_and_another_body_misses() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "post_keys");
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls, 1024);
    let q1 = r#"{"query":"{ user(id: 1) { name } }"}"#;
    let q2 = r#"{"query":"{ user(id: 2) { name } }"}"#;

    let a = send(&app, post_req("/search", "application/json", q1)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.cache_status().contains("stored"), "{}", a.cache_status());
    assert_eq!(a.text(), format!("1:{}:{}", q1.len(), hex(q1.as_bytes())));
    let b = send(&app, post_req("/search", "application/json", q1)).await;
    assert!(b.is_hit(), "{}", b.cache_status());
    assert_eq!(b.text(), a.text());

    let c = send(&app, post_req("/search", "application/json", q2)).await;
    assert!(!c.is_hit(), "{}", c.cache_status());
    assert_eq!(c.text(), format!("2:{}:{}", q2.len(), hex(q2.as_bytes())));
    // The same bytes sent in chunks are the same body.
    let chunked = streamed(vec![Bytes::from(&q2[..5]), Bytes::from(&q2[5..])], false);
    let d = send(&app, post_req("/search", "application/json", chunked)).await;
    assert!(d.is_hit(), "{}", d.cache_status());
    // Another Content-Type is another request.
    let e = send(&app, post_req("/search", "text/plain", q1)).await;
    assert!(!e.is_hit(), "{}", e.cache_status());
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Tags reach the body-keyed entries.
    cache.invalidate_tag("search").await.unwrap();
    let f = send(&app, post_req("/search", "application/json", q1)).await;
    assert!(!f.is_hit(), "{}", f.cache_status());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // Key suffix as documented.
    let keys = server.keys("post_keys:POST:/search#body:*").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn the_handler_sees_the_whole_body_also_when_it_bypasses() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "post_full");
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls, 100);
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();

    // Declared too large: not read by the cache, handed on untouched.
    for _ in 0..2 {
        let r = send(
            &app,
            post_req("/search", "application/octet-stream", big.clone()),
        )
        .await;
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=bypass; detail=body-too-large"
        );
        assert!(
            r.text().ends_with(&format!(":{}:{}", big.len(), hex(&big))),
            "{}",
            r.text()
        );
    }
    // Streamed past the bound: the part read is replayed, then the rest of the stream.
    let chunks: Vec<Bytes> = big.chunks(64).map(Bytes::copy_from_slice).collect();
    for _ in 0..2 {
        let r = send(
            &app,
            post_req(
                "/search",
                "application/octet-stream",
                streamed(chunks.clone(), false),
            ),
        )
        .await;
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=bypass; detail=body-too-large"
        );
        assert!(
            r.text().ends_with(&format!(":{}:{}", big.len(), hex(&big))),
            "{}",
            r.text()
        );
    }
    // A body that fails after 80 bytes: the handler gets those bytes, then the error.
    let r = send(
        &app,
        post_req(
            "/search",
            "application/octet-stream",
            streamed(
                vec![Bytes::from(vec![1u8; 40]), Bytes::from(vec![2u8; 40])],
                true,
            ),
        ),
    )
    .await;
    assert_eq!(
        r.cache_status(),
        "tower-valkey-cache; fwd=bypass; detail=body-error"
    );
    assert!(r.text().ends_with(":error after 80"), "{}", r.text());
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    // Streamed within the bound: keyed, stored, and the handler still saw every byte.
    let small = streamed(
        vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")],
        false,
    );
    let r = send(&app, post_req("/search", "application/octet-stream", small)).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    assert_eq!(r.text(), format!("6:6:{}", hex(b"abcdef")));
    let again = send(
        &app,
        post_req("/search", "application/octet-stream", "abcdef"),
    )
    .await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert!(server.keys("post_full:*").await.len() == 1);
}

#[tokio::test]
async fn get_and_post_on_one_path_do_not_share_entries() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "post_get");
    let calls = Arc::new(AtomicUsize::new(0));
    let gets = Arc::new(AtomicUsize::new(0));
    let getter = {
        let gets = gets.clone();
        get(move || {
            let gets = gets.clone();
            async move {
                gets.fetch_add(1, Ordering::SeqCst);
                "from get"
            }
        })
    };
    // A template without {method}: the body suffix alone keeps POST apart from GET.
    let app = Router::new().route(
        "/search",
        getter.merge(echo(&calls)).route_layer(
            CacheLayer::new(cache.clone())
                .key("search")
                .methods([Method::GET, Method::HEAD, Method::POST])
                .key_body(1024),
        ),
    );
    let g = support::get(&app, "/search").await;
    assert_eq!(g.text(), "from get");
    let p = send(&app, post_req("/search", "text/plain", "")).await;
    assert!(!p.is_hit(), "{}", p.cache_status());
    assert_eq!(p.text(), format!("1:0:{}", hex(b"")));
    let g = support::get(&app, "/search").await;
    assert!(g.is_hit());
    assert_eq!(g.text(), "from get");
    let p = send(&app, post_req("/search", "text/plain", "")).await;
    assert!(p.is_hit(), "{}", p.cache_status());
    assert_eq!(p.text(), format!("1:0:{}", hex(b"")));
    assert_eq!(
        (gets.load(Ordering::SeqCst), calls.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[tokio::test]
async fn post_without_key_body_is_never_cached() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "post_off");
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/search",
        echo(&calls).route_layer(CacheLayer::new(cache.clone()).methods([Method::POST])),
    );
    for n in 1..=2 {
        let r = send(&app, post_req("/search", "text/plain", "q")).await;
        assert_eq!(r.cache_status(), "tower-valkey-cache; fwd=method");
        assert_eq!(r.text(), format!("{n}:1:{}", hex(b"q")));
    }
    assert!(server.keys("post_off:*").await.is_empty());
}
