//! Header fields that decide caching, parsed from bytes and failing closed, end to end through
//! `CacheLayer`: the regressions of issue 15 (a `Cache-Control` line with a byte that is not
//! ASCII used to be dropped before parsing; `If-None-Match` was split on every comma;
//! `Cache-Status` replaced an inner cache's; a `206` was stored under a key that ignores
//! `Range`). Each scenario runs on real Valkey and on `MemoryStore`.

use crate::support;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::Router;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{get as get_req, request, send, Backend, StoreTimeouts};
use tower_valkey_cache::entry::{now_ms, Entry};
use tower_valkey_cache::{CacheLayer, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);

/// Raw response header lines: (name, value bytes).
type RawHeaders = &'static [(&'static str, &'static [u8])];

/// A handler answering `body` with these raw response header bytes, counting its calls.
fn origin(calls: &Arc<AtomicUsize>, headers: RawHeaders) -> MethodRouter {
    let calls = calls.clone();
    get(move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(
                    HeaderName::from_static(k),
                    HeaderValue::from_bytes(v).unwrap(),
                );
            }
            (h, "representation").into_response()
        }
    })
}

/// `Cache-Control: private, ext="café"` parses (obs-text is legal in a quoted string) and is
/// private: never stored, never served to the next user. So is every other forbidding line
/// with a byte that is not ASCII, quoted or not.
async fn non_ascii_cache_control_is_never_stored(b: Backend) {
    let cache = b.cache("h_cafe", OP);
    let calls = Arc::new(AtomicUsize::new(0));
    let cases: [(&str, RawHeaders, &str); 5] = [
        (
            "/cafe",
            // "café" in UTF-8.
            &[("cache-control", b"private, ext=\"caf\xc3\xa9\"")],
            "cache-control",
        ),
        (
            "/no-store-quoted",
            &[("cache-control", b"no-store, x=\"\xff\"")],
            "cache-control",
        ),
        (
            "/no-cache-second-line",
            &[
                ("cache-control", b"max-age=60"),
                ("cache-control", b"ext=\"\xc3\xa9\", no-cache"),
            ],
            "cache-control",
        ),
        (
            "/no-store-bare-byte",
            &[("cache-control", b"no-store, caf\xc3\xa9")],
            "unparsable-cache-control",
        ),
        (
            "/unterminated",
            &[("cache-control", b"max-age=60, ext=\"\xe9")],
            "unparsable-cache-control",
        ),
    ];
    let mut app = Router::new();
    for (path, headers, _) in &cases {
        app = app.route(
            path,
            origin(&calls, headers).route_layer(CacheLayer::new(cache.clone())),
        );
    }
    for (path, _, detail) in &cases {
        for _ in 0..2 {
            let r = get_req(&app, path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert_eq!(r.text(), "representation");
            assert_eq!(
                r.cache_status(),
                format!("tower-valkey-cache; fwd=uri-miss; detail={detail}"),
                "{path}"
            );
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2 * cases.len());
    assert_eq!(cache.stats().stores, 0);
    assert_eq!(cache.stats().hits, 0);
    if let Some(keys) = b.keys(&format!("{}:*", b.namespace("h_cafe"))).await {
        assert!(keys.is_empty(), "{keys:?}");
    }

    // The obs-text line that forbids nothing is stored: parsing is not a blanket refusal.
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/ok",
        origin(&calls, &[("cache-control", b"public, ext=\"caf\xc3\xa9\"")])
            .route_layer(CacheLayer::new(cache.clone())),
    );
    assert!(get_req(&app, "/ok")
        .await
        .cache_status()
        .ends_with("stored"));
    assert!(get_req(&app, "/ok").await.is_hit());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A request `Cache-Control` or `Pragma` that does not parse bypasses the cache: it is neither
/// answered from an entry nor stored.
async fn unparsable_request_cache_control_bypasses(b: Backend) {
    let cache = b.cache("h_req", OP);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/r",
        origin(&calls, &[]).route_layer(CacheLayer::new(cache.clone())),
    );
    assert!(get_req(&app, "/r").await.cache_status().ends_with("stored"));
    for (name, value, detail) in [
        (
            "cache-control",
            &b"no-store\xff"[..],
            "unparsable-cache-control",
        ),
        ("cache-control", b"max-age=\"0", "unparsable-cache-control"),
        ("pragma", b"no-cache; x", "unparsable-pragma"),
    ] {
        let mut req = request("GET", "/r", &[]);
        req.headers_mut()
            .insert(name, HeaderValue::from_bytes(value).unwrap());
        let r = send(&app, req).await;
        assert_eq!(r.text(), "representation");
        assert_eq!(
            r.cache_status(),
            format!("tower-valkey-cache; fwd=bypass; detail={detail}")
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(cache.stats().stores, 1);
    // A request line with obs-text in a quoted string parses: an ordinary hit.
    let mut req = request("GET", "/r", &[]);
    req.headers_mut().insert(
        "cache-control",
        HeaderValue::from_bytes(b"max-stale, ext=\"\xe9\"").unwrap(),
    );
    assert!(send(&app, req).await.is_hit());
}

/// `"a,b"` is one entity tag: `If-None-Match: "a,b"` gets a 304, `"a"` or `"b"` does not, and a
/// list that does not parse never does (the full response).
async fn entity_tag_with_a_comma(b: Backend) {
    let cache = b.cache("h_etag", OP);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/t",
        origin(&calls, &[("etag", b"\"a,b\"")]).route_layer(CacheLayer::new(cache.clone())),
    );
    // Miss path.
    let r = send(&app, request("GET", "/t", &[("if-none-match", "\"a,b\"")])).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.cache_status());
    assert!(r.body.is_empty());
    // Hit path, weak comparison and lists.
    for inm in ["\"a,b\"", "W/\"a,b\"", "\"x\", \"a,b\"", "*"] {
        let r = send(&app, request("GET", "/t", &[("if-none-match", inm)])).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
        assert!(r.is_hit(), "{inm}: {}", r.cache_status());
        assert_eq!(r.header("etag"), "\"a,b\"");
    }
    for inm in [
        "\"a\"",
        "\"b\"",
        "\"a",
        "b\"",
        "a,b",
        "\"a,b\" x",
        "*, \"a,b\"",
    ] {
        let r = send(&app, request("GET", "/t", &[("if-none-match", inm)])).await;
        assert_eq!(r.status, StatusCode::OK, "If-None-Match: {inm}");
        assert_eq!(r.text(), "representation");
        assert!(r.is_hit());
    }
    // Two lines are one list.
    let mut req = request("GET", "/t", &[("if-none-match", "\"x\"")]);
    req.headers_mut()
        .append("if-none-match", HeaderValue::from_static("\"a,b\""));
    assert_eq!(send(&app, req).await.status, StatusCode::NOT_MODIFIED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// An inner cache's `Cache-Status` member stays; this cache's is appended last (RFC 9211).
/// Entries never store `Cache-Status`, so a hit carries this cache's member alone.
async fn cache_status_is_appended(b: Backend) {
    let cache = b.cache("h_status", OP);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/s",
        origin(
            &calls,
            &[
                ("cache-status", b"origin-cache; fwd=uri-miss"),
                ("cache-status", b"inner; hit; ttl=5"),
            ],
        )
        .route_layer(CacheLayer::new(cache.clone())),
    );
    let r = get_req(&app, "/s").await;
    let lines: Vec<&str> = r
        .headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        lines,
        ["origin-cache; fwd=uri-miss, inner; hit; ttl=5, tower-valkey-cache; fwd=uri-miss; stored"]
    );
    let r = get_req(&app, "/s").await;
    let lines: Vec<&str> = r
        .headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("tower-valkey-cache; hit; ttl="),
        "{lines:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Bypasses append too.
    let r = send(&app, request("GET", "/s", &[("cache-control", "no-store")])).await;
    assert_eq!(
        r.cache_status(),
        "origin-cache; fwd=uri-miss, inner; hit; ttl=5, tower-valkey-cache; fwd=bypass; detail=no-store"
    );
}

/// A handler that answers `Range: bytes=A-B` with a 206 of those bytes of `0123456789`, and a
/// plain GET with the whole 200; `stray` answers a 206 without being asked for a range.
fn ranged(calls: &Arc<AtomicUsize>) -> MethodRouter {
    let calls = calls.clone();
    get(move |headers: HeaderMap| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let body = "0123456789";
            let range = headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            match range {
                Some((a, b)) if a <= b && b < body.len() => (
                    StatusCode::PARTIAL_CONTENT,
                    [("content-range", format!("bytes {a}-{b}/{}", body.len()))],
                    body[a..=b].to_owned(),
                )
                    .into_response(),
                _ => body.into_response(),
            }
        }
    })
}

/// With 206 among the statuses: a request with `Range` bypasses a key that ignores it
/// (`detail=range`), a 206 is never stored under such a key (also one the handler sends
/// unasked), and a plain GET never receives a partial body. A key over `{header.range}` caches
/// each range on its own.
async fn partial_content_needs_a_range_key(b: Backend) {
    let cache = b.cache("h_range", OP);
    let statuses = [StatusCode::OK, StatusCode::PARTIAL_CONTENT];
    let calls = Arc::new(AtomicUsize::new(0));
    let stray_calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/f",
            ranged(&calls).route_layer(CacheLayer::new(cache.clone()).statuses(statuses)),
        )
        .route(
            "/stray",
            get({
                let stray_calls = stray_calls.clone();
                move || async move {
                    stray_calls.fetch_add(1, Ordering::SeqCst);
                    (
                        StatusCode::PARTIAL_CONTENT,
                        [("content-range", "bytes 0-1/10")],
                        "01",
                    )
                }
            })
            .route_layer(CacheLayer::new(cache.clone()).statuses(statuses)),
        )
        .route(
            "/keyed",
            ranged(&calls).route_layer(
                CacheLayer::new(cache.clone())
                    .key("keyed:{path}:{header.range}")
                    .statuses(statuses),
            ),
        );

    for _ in 0..2 {
        let r = send(&app, request("GET", "/f", &[("range", "bytes=0-1")])).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.text(), "01");
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=bypass; detail=range"
        );
    }
    for _ in 0..2 {
        let r = get_req(&app, "/f").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "0123456789");
    }
    assert!(get_req(&app, "/f").await.is_hit());
    // The stored 200 is not served to a range request either (ranges from a stored 200 are not
    // implemented): it bypasses.
    let r = send(&app, request("GET", "/f", &[("range", "bytes=2-3")])).await;
    assert_eq!((r.status, r.text()), (StatusCode::PARTIAL_CONTENT, "23"));
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    for _ in 0..2 {
        let r = get_req(&app, "/stray").await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=uri-miss; detail=partial-content"
        );
    }
    assert_eq!(stray_calls.load(Ordering::SeqCst), 2);

    // Keyed by Range: each range is an entry of its own, and the plain GET another.
    let before = calls.load(Ordering::SeqCst);
    for (range, status, body) in [
        (Some("bytes=0-1"), StatusCode::PARTIAL_CONTENT, "01"),
        (Some("bytes=2-3"), StatusCode::PARTIAL_CONTENT, "23"),
        (None, StatusCode::OK, "0123456789"),
    ] {
        let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
        let first = send(&app, request("GET", "/keyed", &headers)).await;
        assert!(
            first.cache_status().ends_with("stored"),
            "{range:?}: {}",
            first.cache_status()
        );
        let again = send(&app, request("GET", "/keyed", &headers)).await;
        assert!(again.is_hit(), "{range:?}: {}", again.cache_status());
        for r in [first, again] {
            assert_eq!((r.status, r.text()), (status, body), "{range:?}");
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), before + 3);
}

/// A `Surrogate-Key` or `Cache-Tag` line that is not visible ASCII: the response is not stored
/// (an entry missing that tag would escape its invalidation), and the header never reaches the
/// client.
async fn unparsable_tags_are_never_stored(b: Backend) {
    let cache = b.cache("h_tags", OP);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/bad",
            origin(
                &calls,
                &[
                    ("surrogate-key", b"posts"),
                    ("cache-tag", b"caf\xc3\xa9, posts"),
                ],
            )
            .route_layer(CacheLayer::new(cache.clone())),
        )
        .route(
            "/good",
            origin(
                &calls,
                &[("surrogate-key", b"posts  users"), ("cache-tag", b"a, b")],
            )
            .route_layer(CacheLayer::new(cache.clone())),
        );
    for _ in 0..2 {
        let r = get_req(&app, "/bad").await;
        assert_eq!(
            r.cache_status(),
            "tower-valkey-cache; fwd=uri-miss; detail=unparsable-tags"
        );
        assert!(r.headers.get("surrogate-key").is_none() && r.headers.get("cache-tag").is_none());
    }
    assert!(get_req(&app, "/good")
        .await
        .cache_status()
        .ends_with("stored"));
    let r = get_req(&app, "/good").await;
    assert!(r.is_hit());
    assert!(r.headers.get("surrogate-key").is_none() && r.headers.get("cache-tag").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The good response's tags were all recorded: invalidating one removes it.
    cache.invalidate_tag("users").await.unwrap();
    assert!(!get_req(&app, "/good").await.is_hit());
}

/// A 206 entry under a key that does not include `Range` (written by someone else, or by an
/// older version) is refused like a foreign entry: a miss, overwritten by the genuine 200.
async fn stored_partial_entries_are_refused(b: Backend) {
    let cache = b.cache("h_forged", OP);
    let app = Router::new().route(
        "/p",
        get(|| async { "genuine" }).route_layer(
            CacheLayer::new(cache.clone())
                .key("p206")
                .statuses([StatusCode::OK, StatusCode::PARTIAL_CONTENT]),
        ),
    );
    let partial = Entry::new(
        206,
        vec![(
            HeaderName::from_static("content-range"),
            HeaderValue::from_static("bytes 0-1/7"),
        )],
        Bytes::from_static(b"ge"),
        now_ms(),
        Duration::from_secs(60),
        Duration::ZERO,
    );
    b.put_raw(
        &format!("{}:p206", b.namespace("h_forged")),
        &partial.encode().unwrap(),
    )
    .await;
    let r = get_req(&app, "/p").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "genuine"));
    assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
    assert_eq!(cache.stats().decode_failures, 1);
    assert!(get_req(&app, "/p").await.is_hit());
}

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        non_ascii_cache_control_is_never_stored,
        unparsable_request_cache_control_bypasses,
        entity_tag_with_a_comma,
        cache_status_is_appended,
        partial_content_needs_a_range_key,
        unparsable_tags_are_never_stored,
        stored_partial_entries_are_refused,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        non_ascii_cache_control_is_never_stored,
        unparsable_request_cache_control_bypasses,
        entity_tag_with_a_comma,
        cache_status_is_appended,
        partial_content_needs_a_range_key,
        unparsable_tags_are_never_stored,
        stored_partial_entries_are_refused,
    );
}
