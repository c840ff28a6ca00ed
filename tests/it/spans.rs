//! The `tracing` spans: one per cached request and one per store operation, with keys hashed
//! unless the cache opts in to raw keys.
//!
//! The capture is `support::LogCapture`, which is safe beside the other tests of the binary.

use crate::support;

use axum::routing::get;
use axum::Router;
use support::get as get_req;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};

/// What the request and store spans of one miss and one hit on `/items/42` log.
async fn span_log(raw_keys: bool) -> String {
    let capture = support::LogCapture::start();
    let cache = Cache::builder(MemoryStore::new())
        .namespace("spans")
        .log_raw_keys(raw_keys)
        .build();
    let app = Router::new().route(
        "/items/{id}",
        get(|| async { "item" }).route_layer(CacheLayer::new(cache).key("item:{id}")),
    );
    get_req(&app, "/items/42").await;
    get_req(&app, "/items/42").await;
    capture.text()
}

#[tokio::test(flavor = "current_thread")]
async fn spans_hash_keys_unless_raw_keys_are_enabled() {
    let log = span_log(false).await;
    let closed = |target: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(&format!("{target}: close")))
            .map(str::to_owned)
            .collect()
    };
    // One `cache` span per request, with the route template, the outcome and the hashed key.
    let requests = closed("tower_valkey_cache::layer::service");
    assert_eq!(requests.len(), 2, "{log}");
    for (l, outcome) in requests.iter().zip(["miss", "hit"]) {
        assert!(l.contains("http.route=\"/items/{id}\""), "{l}");
        assert!(l.contains("key_hash=\""), "{l}");
        assert!(l.contains(&format!("outcome=\"{outcome}\"")), "{l}");
    }
    assert!(
        !log.contains("item:42"),
        "no raw key without opt-in:\n{log}"
    );
    // One `cache.store` span per store operation, inside the request's span: the miss reads
    // (the lookup, and any double-check before running the handler) and writes; the hit reads.
    // The cache claims its namespace's key layout once, before its first operation.
    let store_spans = closed("tower_valkey_cache::cache::ops");
    let (claims, store_spans): (Vec<String>, Vec<String>) = store_spans
        .into_iter()
        .partition(|l| l.contains("db.operation.name=\"layout\""));
    assert_eq!(claims.len(), 1, "{log}");
    let ops: Vec<&str> = store_spans
        .iter()
        .map(|l| {
            assert!(
                l.contains("}:cache.store{"),
                "nested in the request span: {l}"
            );
            assert!(l.contains("db.system.name=\"memory\""), "{l}");
            assert!(l.contains("outcome=\"ok\""), "{l}");
            assert!(l.contains("duration_us="), "{l}");
            ["read", "write"]
                .into_iter()
                .find(|op| l.contains(&format!("db.operation.name=\"{op}\"")))
                .unwrap_or_else(|| panic!("a read or a write: {l}"))
        })
        .collect();
    assert!(ops.len() >= 3, "{log}");
    assert_eq!(ops[0], "read", "{log}");
    assert_eq!(ops.iter().filter(|op| **op == "write").count(), 1, "{log}");
    assert_eq!(
        ops[ops.len() - 2..],
        ["write", "read"],
        "the hit reads once: {log}"
    );

    let log = span_log(true).await;
    assert!(log.contains("key=\"item:42\""), "{log}");
}
