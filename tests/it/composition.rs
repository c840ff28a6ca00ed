//! `CacheLayer` and `InvalidateLayer` composed with the tower-http middleware services stack
//! beside them, in both orders where the order matters: what is stored, what the client gets,
//! and why README › Composing with tower-http recommends the order it does.
//!
//! - `CompressionLayer` outside the cache: one identity entry, compressed per response; inside:
//!   one variant per coding (`Vary: accept-encoding` from the compressor), the compressed bytes
//!   stored and replayed.
//! - `TimeoutLayer` / `ResponseBodyTimeoutLayer` above the cache: a fill cut by the timeout stores
//!   nothing and leaves no single-flight behind; an invalidation cut by it still lands (it runs in
//!   a task of its own).
//! - `TraceLayer`: outside, its request span holds the cache's span and it sees hits; inside, it
//!   sees misses only.
//! - `SetRequestIdLayer` / `PropagateRequestIdLayer`: outside, every response carries its own
//!   request's id; propagated under the cache, a hit replays the id of the request that filled it.
//! - `CorsLayer`: a preflight `OPTIONS` is never cached in either order; outside, the allowed
//!   origin is computed per response, inside, each origin gets its own variant.
//! - `ConcurrencyLimitLayer`: above the cache, concurrent misses still run the handler once; under
//!   it on an axum route, it gates misses only; under it in a plain tower stack, hits wait for a
//!   permit too (tower readiness).
//!
//! Scenarios over a [`Backend`] run on Valkey and on `MemoryStore` (modules at the bottom).

use crate::support;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, has_entry, request, send, stored, Backend, Resp, StoreTimeouts};
use tower::ServiceExt as _;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::{ResponseBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use tower_valkey_cache::entry::Entry;
use tower_valkey_cache::testing::{FaultyStore, Op};
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, MemoryStore};

const STORED: &str = "tower-valkey-cache; fwd=uri-miss; stored";
/// A miss whose body streams (no known length): stored in the background once complete.
const STREAMED: &str = "tower-valkey-cache; fwd=uri-miss";
/// Bound of every poll loop.
const POLL: Duration = Duration::from_secs(10);
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
/// Every cache's operation timeout: generous, these scenarios are about behaviour.
const OP: Duration = Duration::from_secs(2);

/// A body the compressor compresses (above its 32-byte threshold, compressible).
fn payload() -> String {
    "a cached document line, long enough to be worth compressing\n".repeat(40)
}

fn gunzip(body: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut out)
        .expect("a gzip body");
    out
}

/// A handler answering [`payload`], counting its calls.
#[derive(Clone, Default)]
struct Handler {
    calls: Arc<AtomicUsize>,
}

impl Handler {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn route(&self) -> axum::routing::MethodRouter {
        let calls = self.calls.clone();
        get(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                payload()
            }
        })
    }
}

fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    request("GET", uri, headers)
}

/// The entry stored at `key`, decoded.
async fn entry(cache: &Cache, key: &str) -> Entry {
    let raw = stored(cache, key).await.expect("an entry");
    Entry::decode(&raw).expect("a decodable entry")
}

fn header_of<'a>(e: &'a Entry, name: &str) -> Option<&'a HeaderValue> {
    e.headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v)
}

fn assert_hit(r: &Resp) {
    assert!(r.is_hit(), "expected a hit, got `{}`", r.cache_status());
}

// ---------------------------------------------------------------------------------------------
// CompressionLayer
// ---------------------------------------------------------------------------------------------

/// Compression outside the cache (the recommended order): the cache stores the handler's
/// identity response once, and the compressor encodes each response for its client, hits too.
async fn compression_outside_stores_identity_once(b: Backend) {
    let cache = b.cache("t_comp_outside", OP);
    let h = Handler::default();
    let app = Router::new()
        .route(
            "/doc",
            h.route()
                .route_layer(CacheLayer::new(cache.clone()).key("doc")),
        )
        .layer(CompressionLayer::new());

    let r = send(&app, get_with("/doc", &[("accept-encoding", "gzip")])).await;
    assert_eq!((r.status, r.cache_status()), (StatusCode::OK, STORED));
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(r.header("vary"), "accept-encoding");
    assert_eq!(gunzip(&r.body), payload());

    // Stored: the identity response, with no `Content-Encoding` and no `Vary` (the compressor
    // added those after the cache), so one entry serves every client.
    let e = entry(&cache, "doc").await;
    assert_eq!(e.status, 200);
    assert_eq!(header_of(&e, "content-encoding"), None);
    assert_eq!(header_of(&e, "vary"), None);
    assert_eq!(e.body, payload().as_bytes());

    // A client that accepts no encoding: a hit of the same entry, sent as it is.
    let r = send(&app, get_with("/doc", &[])).await;
    assert_hit(&r);
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.header("vary"), "accept-encoding");
    assert_eq!(r.text(), payload());
    // A gzip client again: the hit is compressed again (the CPU cost of this order).
    let r = send(&app, get_with("/doc", &[("accept-encoding", "gzip")])).await;
    assert_hit(&r);
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(gunzip(&r.body), payload());
    // A client refusing every coding the compressor has gets its 406, and the entry stays.
    let r = send(
        &app,
        get_with("/doc", &[("accept-encoding", "identity;q=0")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
    assert!(has_entry(&cache, "doc").await);
    assert_eq!(h.calls(), 1, "every response came from one entry");
}

/// Compression inside the cache: the compressor's `Vary: accept-encoding` makes the cache keep
/// one variant per coding, storing (and replaying) the compressed bytes.
async fn compression_inside_stores_a_variant_per_coding(b: Backend) {
    let cache = b.cache("t_comp_inside", OP);
    let h = Handler::default();
    let app = Router::new().route(
        "/doc",
        h.route()
            .route_layer(CompressionLayer::new())
            .route_layer(CacheLayer::new(cache.clone()).key("doc")),
    );

    // A compressed body has no known length: the cache streams it to the client and stores it
    // once complete (`fwd=uri-miss` without `stored`: not known when the head leaves).
    let r = send(&app, get_with("/doc", &[("accept-encoding", "gzip")])).await;
    assert_eq!((r.status, r.cache_status()), (StatusCode::OK, STREAMED));
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(r.header("vary"), "accept-encoding");
    assert_eq!(gunzip(&r.body), payload());
    let stores = |n: u64| {
        let cache = cache.clone();
        async move {
            eventually(POLL, "the fill stored", || {
                let cache = cache.clone();
                async move { (cache.stats().stores >= n).then_some(()) }
            })
            .await
        }
    };
    // The marker and the gzip variant.
    stores(2).await;
    // The route's key holds a variant marker (status 0), not a response.
    assert_eq!(entry(&cache, "doc").await.status, 0, "a variant marker");

    // A client that accepts no encoding is another variant: the handler runs, identity body
    // (the compressor does not touch it: its length is known and it is stored at once).
    let r = send(&app, get_with("/doc", &[])).await;
    assert_eq!(r.cache_status(), STORED);
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.header("vary"), "accept-encoding");
    assert_eq!(r.text(), payload());
    assert_eq!(h.calls(), 2);
    stores(3).await;

    // Each variant is replayed as stored: gzip bytes to gzip clients (also to an equivalent
    // `Accept-Encoding`), the identity body to the client that accepts none.
    for ae in ["gzip", "gzip;q=1.0, identity;q=0.5"] {
        let r = send(&app, get_with("/doc", &[("accept-encoding", ae)])).await;
        assert_hit(&r);
        assert_eq!(r.header("content-encoding"), "gzip", "{ae}");
        assert_eq!(gunzip(&r.body), payload());
    }
    let r = send(&app, get_with("/doc", &[])).await;
    assert_hit(&r);
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.text(), payload());
    assert_eq!(h.calls(), 2, "hits of both variants");

    // The compressor's 406 for a client refusing every coding is never stored.
    for _ in 0..2 {
        let r = send(
            &app,
            get_with("/doc", &[("accept-encoding", "identity;q=0")]),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
        assert!(!r.is_hit());
    }
    assert_eq!(h.calls(), 4);
    if let Some(keys) = b.keys(&format!("{}:doc*", cache.namespace())).await {
        if !b.is_cluster() {
            assert_eq!(keys.len(), 3, "the marker and two variants: {keys:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TimeoutLayer
// ---------------------------------------------------------------------------------------------

/// A timeout above the cache that fires while the handler runs drops the fill: nothing stored,
/// and no single-flight left behind for the next request to wait on.
async fn timeout_above_the_cache_stores_nothing(b: Backend) {
    let cache = b.cache("t_timeout_fill", OP);
    let slow = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (slow.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/doc",
            get(move || {
                let (s, c) = (s.clone(), c.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if s.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    payload()
                }
            })
            .route_layer(CacheLayer::new(cache.clone()).key("doc")),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_millis(200),
        ));

    let r = send(&app, get_with("/doc", &[])).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(!has_entry(&cache, "doc").await, "nothing stored");
    assert_eq!(cache.stats().stores, 0);

    // The next request is a plain miss that stores: the cut fill left no flight to wait on.
    slow.store(false, Ordering::SeqCst);
    let r = send(&app, get_with("/doc", &[])).await;
    assert_eq!((r.status, r.cache_status()), (StatusCode::OK, STORED));
    assert_eq!(r.text(), payload());
    assert_eq!(cache.stats().coalesced, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_hit(&send(&app, get_with("/doc", &[])).await);
}

/// A body timeout that cuts a streamed response halfway: the client gets an error, the cache
/// stores nothing, and the next complete response is stored whole.
async fn body_timeout_above_the_cache_stores_nothing_half(b: Backend) {
    let cache = b.cache("t_timeout_body", OP);
    let stall = Arc::new(AtomicBool::new(true));
    let s = stall.clone();
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let s = s.clone();
                async move {
                    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
                        Bytes::from_static(b"first half;"),
                    )]);
                    let rest: futures_util::stream::BoxStream<'static, _> =
                        if s.load(Ordering::SeqCst) {
                            Box::pin(futures_util::stream::pending())
                        } else {
                            Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(
                                b"second half",
                            ))]))
                        };
                    Body::from_stream(futures_util::StreamExt::chain(first, rest))
                }
            })
            .route_layer(CacheLayer::new(cache.clone()).key("stream")),
        )
        .layer(ResponseBodyTimeoutLayer::new(Duration::from_millis(200)));

    let res = app
        .clone()
        .oneshot(get_with("/stream", &[]))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.into_body().collect().await.is_err(),
        "the body timed out"
    );
    assert!(!has_entry(&cache, "stream").await, "nothing stored half");
    assert_eq!(cache.stats().stores, 0);

    stall.store(false, Ordering::SeqCst);
    let r = send(&app, get_with("/stream", &[])).await;
    assert_eq!(r.text(), "first half;second half");
    // A streamed fill lands once the body is complete, in the background.
    eventually(POLL, "the complete body stored", || {
        let cache = cache.clone();
        async move { has_entry(&cache, "stream").await.then_some(()) }
    })
    .await;
    let r = send(&app, get_with("/stream", &[])).await;
    assert_hit(&r);
    assert_eq!(r.text(), "first half;second half");
}

/// A timeout that fires while `InvalidateLayer` waits on a slow store answers the client, but
/// does not stop the invalidation: it runs in a task of its own and lands.
async fn timeout_above_invalidate_layer_loses_no_invalidation(b: Backend) {
    let faulty = FaultyStore::new(b.store());
    let faults = faulty.faults();
    let ns = b.namespace("t_timeout_inv");
    let cache = Cache::builder(faulty)
        .namespace(ns.clone())
        .timeout(Duration::from_secs(10))
        .build();
    // Reads the same namespace straight from the store, past the faults.
    let probe = b.cache("t_timeout_inv", OP);
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move || {
                let v = v.clone();
                async move { format!("version {}", v.load(Ordering::SeqCst)) }
            })
            .route_layer(CacheLayer::new(cache.clone()).key("item:{id}"))
            .merge(
                axum::routing::put(move || {
                    let version = version.clone();
                    async move {
                        version.fetch_add(1, Ordering::SeqCst);
                        "updated"
                    }
                })
                .route_layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"])),
            ),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_millis(100),
        ));

    let r = send(&app, get_with("/items/1", &[])).await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "version 1"));

    // The store now takes 2 s per operation: the PUT's invalidation outlives the 100 ms timeout.
    faults.slow(Duration::from_secs(2));
    let r = send(&app, request("PUT", "/items/1", &[])).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    faults.slow(Duration::ZERO);
    assert!(
        has_entry(&probe, "item:1").await,
        "the invalidation is still waiting on the store"
    );
    eventually(POLL, "the invalidation to land", || {
        let probe = probe.clone();
        async move { (!has_entry(&probe, "item:1").await).then_some(()) }
    })
    .await;
    assert_eq!(faults.calls(Op::Invalidate), 1);
    assert_eq!(cache.pending_invalidations(), 0, "landed, not queued");
    assert_eq!(cache.stats().invalidated, 1);
    let r = send(&app, get_with("/items/1", &[])).await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "version 2"));
}

// ---------------------------------------------------------------------------------------------
// SetRequestIdLayer / PropagateRequestIdLayer
// ---------------------------------------------------------------------------------------------

/// Request ids `1`, `2`, ...
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Some(RequestId::new(HeaderValue::from(n)))
    }
}

/// Set and propagated outside the cache: every response, hits included, carries the id of its
/// own request, and the stored entry holds none.
async fn request_ids_outside_the_cache_are_per_response(b: Backend) {
    let cache = b.cache("t_request_id", OP);
    let h = Handler::default();
    let app = Router::new()
        .route(
            "/doc",
            h.route()
                .route_layer(CacheLayer::new(cache.clone()).key("doc")),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(Counter::default()));

    let r = send(&app, get_with("/doc", &[])).await;
    assert_eq!((r.cache_status(), r.header("x-request-id")), (STORED, "1"));
    assert_eq!(header_of(&entry(&cache, "doc").await, "x-request-id"), None);
    let r = send(&app, get_with("/doc", &[])).await;
    assert_hit(&r);
    assert_eq!(r.header("x-request-id"), "2");
    // A caller's own id is kept (and not part of the key: still a hit).
    let r = send(&app, get_with("/doc", &[("x-request-id", "caller-7")])).await;
    assert_hit(&r);
    assert_eq!(r.header("x-request-id"), "caller-7");
    assert_eq!(h.calls(), 1);
}

/// Propagated under the cache, the id becomes part of the stored response: a hit answers with
/// the id of the request that filled the entry. This is why README puts both layers outside.
async fn request_ids_propagated_under_the_cache_are_replayed(b: Backend) {
    let cache = b.cache("t_request_id_inside", OP);
    let h = Handler::default();
    let app = Router::new()
        .route(
            "/doc",
            h.route()
                .route_layer(PropagateRequestIdLayer::x_request_id())
                .route_layer(CacheLayer::new(cache.clone()).key("doc")),
        )
        .layer(SetRequestIdLayer::x_request_id(Counter::default()));

    let r = send(&app, get_with("/doc", &[])).await;
    assert_eq!((r.cache_status(), r.header("x-request-id")), (STORED, "1"));
    let r = send(&app, get_with("/doc", &[])).await;
    assert_hit(&r);
    assert_eq!(
        r.header("x-request-id"),
        "1",
        "request 2 got request 1's id"
    );
}

// ---------------------------------------------------------------------------------------------
// CorsLayer
// ---------------------------------------------------------------------------------------------

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([axum::http::Method::GET])
}

fn preflight(origin: &str) -> Request<Body> {
    request(
        "OPTIONS",
        "/doc",
        &[("origin", origin), ("access-control-request-method", "GET")],
    )
}

/// CORS outside the cache (the recommended order): preflights never reach the cache, and each
/// response, hits included, allows its own request's origin.
async fn cors_outside_the_cache(b: Backend) {
    let cache = b.cache("t_cors_outside", OP);
    let h = Handler::default();
    let app = Router::new()
        .route(
            "/doc",
            h.route()
                .route_layer(CacheLayer::new(cache.clone()).key("doc")),
        )
        .layer(cors());

    for origin in ["https://a.example", "https://b.example"] {
        let r = send(&app, preflight(origin)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("access-control-allow-origin"), origin);
        assert_eq!(r.cache_status(), "", "the cache never saw the preflight");
    }
    assert_eq!(cache.stats().requests(), 0);
    assert!(!has_entry(&cache, "doc").await);

    let r = send(&app, get_with("/doc", &[("origin", "https://a.example")])).await;
    assert_eq!(r.cache_status(), STORED);
    assert_eq!(r.header("access-control-allow-origin"), "https://a.example");
    let e = entry(&cache, "doc").await;
    assert!(
        e.headers
            .iter()
            .all(|(n, _)| !n.as_str().starts_with("access-control-")),
        "no CORS header stored: {:?}",
        e.headers
    );
    let r = send(&app, get_with("/doc", &[("origin", "https://b.example")])).await;
    assert_hit(&r);
    assert_eq!(r.header("access-control-allow-origin"), "https://b.example");
    assert_eq!(h.calls(), 1);
}

/// CORS inside a cache that wraps the whole router: a preflight passes through the cache
/// (`fwd=method`, never stored), and the `Vary: origin` CORS adds keeps one variant per origin.
async fn cors_inside_the_cache(b: Backend) {
    let cache = b.cache("t_cors_inside", OP);
    let h = Handler::default();
    let app = Router::new()
        .route("/doc", h.route())
        .layer(cors())
        .layer(CacheLayer::new(cache.clone()).key("doc"));

    for _ in 0..2 {
        let r = send(&app, preflight("https://a.example")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.cache_status(), "tower-valkey-cache; fwd=method");
        assert_eq!(r.header("access-control-allow-origin"), "https://a.example");
    }
    assert!(!has_entry(&cache, "doc").await, "no preflight stored");

    for origin in ["https://a.example", "https://b.example"] {
        let r = send(&app, get_with("/doc", &[("origin", origin)])).await;
        assert_eq!(r.cache_status(), STORED, "{origin}: its own variant");
        assert_eq!(r.header("access-control-allow-origin"), origin);
        let r = send(&app, get_with("/doc", &[("origin", origin)])).await;
        assert_hit(&r);
        assert_eq!(r.header("access-control-allow-origin"), origin);
    }
    assert_eq!(h.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// ConcurrencyLimitLayer
// ---------------------------------------------------------------------------------------------

/// A concurrency limit above the cache bounds everything the service does; concurrent misses
/// for one key still run the handler once.
async fn concurrency_limit_above_the_cache(b: Backend) {
    let cache = b.cache("t_limit_above", OP);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // Requests inside the cache layer right now, and the most there ever were.
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (i, m) = (in_flight.clone(), most.clone());
    let count =
        axum::middleware::from_fn(move |req: Request<Body>, next: axum::middleware::Next| {
            let (i, m) = (i.clone(), m.clone());
            async move {
                m.fetch_max(i.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let res = next.run(req).await;
                i.fetch_sub(1, Ordering::SeqCst);
                res
            }
        });
    let app = Router::new()
        .route(
            "/doc",
            get(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    payload()
                }
            })
            .route_layer(CacheLayer::new(cache.clone()).key("doc"))
            .route_layer(count),
        )
        // Routes built once, so the limit's semaphore is one for every request (axum applies
        // layers to routes that are still handlers anew each time it builds them: per request
        // through `oneshot`, per connection in `axum::serve`).
        .with_state(())
        .layer(tower::limit::ConcurrencyLimitLayer::new(2));

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, get_with("/doc", &[])).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), payload());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one fill for 16 requests");
    assert!(most.load(Ordering::SeqCst) <= 2, "the limit held");
    let s = cache.stats();
    assert_eq!(s.requests(), 16, "{s:?}");
    assert_eq!(s.stores, 1, "{s:?}");
}

/// A concurrency limit under the cache, on an axum route (`route_layer` below the cache): it
/// bounds what reaches the handler (misses) and never holds back a hit, since axum's `Route`
/// between the two layers is always ready and takes the permit when it is called.
async fn concurrency_limit_under_the_cache_gates_misses_only(b: Backend) {
    let cache = b.cache("t_limit_under", OP);
    let gate = Arc::new(tokio::sync::Notify::new());
    let (entered, g) = (Arc::new(tokio::sync::Notify::new()), gate.clone());
    let e = entered.clone();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move |axum::extract::Path(id): axum::extract::Path<u32>| {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    if id == 2 {
                        e.notify_one();
                        g.notified().await; // holds the only permit until released
                    }
                    format!("item {id}")
                }
            })
            .route_layer(tower::limit::ConcurrencyLimitLayer::new(1))
            .route_layer(CacheLayer::new(cache.clone()).key("item:{id}")),
        )
        // Built once: one semaphore for every request (see `concurrency_limit_above_the_cache`).
        .with_state(());
    assert_eq!(
        send(&app, get_with("/items/1", &[])).await.cache_status(),
        STORED
    );

    let blocked = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, get_with("/items/2", &[])).await })
    };
    entered.notified().await; // item 2's handler holds the permit
    let released = Arc::new(AtomicBool::new(false));
    let waiting_miss = {
        let (app, released) = (app.clone(), released.clone());
        tokio::spawn(async move {
            let r = send(&app, get_with("/items/3", &[])).await;
            (r, released.load(Ordering::SeqCst))
        })
    };
    // A hit is answered while the permit is held (`send` gives up after 10 s).
    let r = send(&app, get_with("/items/1", &[])).await;
    assert_hit(&r);
    released.store(true, Ordering::SeqCst);
    gate.notify_one();
    assert_eq!(blocked.await.expect("miss task").cache_status(), STORED);
    let (r, after_release) = waiting_miss.await.expect("miss task");
    assert_eq!(r.cache_status(), STORED);
    assert!(after_release, "the other miss waited for the permit");
}

/// The same limit under the cache in a plain tower stack (no axum `Route` between them):
/// `CacheService` is ready only when the service it wraps is (tower readiness), so a hit waits
/// for a permit like a miss.
#[tokio::test]
async fn concurrency_limit_under_the_cache_in_a_tower_stack_holds_back_hits() {
    use tower::Service as _;
    let cache = Cache::new(MemoryStore::new());
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (g, e) = (gate.clone(), entered.clone());
    let svc = tower::ServiceBuilder::new()
        .layer(CacheLayer::new(cache).key("{path}"))
        .layer(tower::limit::ConcurrencyLimitLayer::new(1))
        .service_fn(move |req: Request<_>| {
            let (g, e) = (g.clone(), e.clone());
            async move {
                if req.uri().path() == "/slow" {
                    e.notify_one();
                    g.notified().await;
                }
                Ok::<_, std::convert::Infallible>(axum::http::Response::new(Body::from("ok")))
            }
        });
    let call = |svc: &_, uri: &'static str| {
        let mut svc: tower::util::BoxCloneSyncService<_, _, _> = Clone::clone(svc);
        async move {
            let res = svc
                .ready()
                .await
                .unwrap()
                .call(get_with(uri, &[]))
                .await
                .unwrap();
            support::collect(res).await
        }
    };
    let svc = tower::util::BoxCloneSyncService::new(svc);
    assert_eq!(call(&svc, "/fast").await.cache_status(), STORED);
    let slow = tokio::spawn(call(&svc, "/slow"));
    entered.notified().await;
    let released = Arc::new(AtomicBool::new(false));
    let hit = {
        let (fut, released) = (call(&svc, "/fast"), released.clone());
        tokio::spawn(async move { (fut.await, released.load(Ordering::SeqCst)) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    released.store(true, Ordering::SeqCst);
    gate.notify_one();
    let (r, after_release) = hit.await.expect("hit task");
    assert_hit(&r);
    assert!(after_release, "the hit waited for the permit");
    assert_eq!(slow.await.expect("slow task").cache_status(), STORED);
}

// ---------------------------------------------------------------------------------------------
// TraceLayer (tracing output: a capture per test thread, `support::LogCapture`)
// ---------------------------------------------------------------------------------------------

/// What a miss and a hit on `/items/42` log, with `TraceLayer` outside the cache or under it.
async fn trace_log(trace_outside: bool) -> String {
    let capture = support::LogCapture::start();
    let cache = Cache::builder(MemoryStore::new())
        .namespace("trace")
        .build();
    let cached = CacheLayer::new(cache).key("item:{id}");
    let route = get(|| async { "item" });
    let app = if trace_outside {
        Router::new()
            .route("/items/{id}", route.route_layer(cached))
            .layer(TraceLayer::new_for_http())
    } else {
        Router::new().route(
            "/items/{id}",
            route
                .route_layer(TraceLayer::new_for_http())
                .route_layer(cached),
        )
    };
    for _ in 0..2 {
        assert_eq!(
            send(&app, get_with("/items/42", &[])).await.status,
            StatusCode::OK
        );
    }
    capture.text()
}

#[tokio::test(flavor = "current_thread")]
async fn trace_layer_outside_the_cache_sees_hits_and_holds_the_cache_span() {
    let log = trace_log(true).await;
    let finished: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("finished processing request"))
        .collect();
    assert_eq!(finished.len(), 2, "the miss and the hit: {log}");
    assert!(finished.iter().all(|l| l.contains("status=200")), "{log}");
    // The cache's span is a child of the request span: its outcome is in the request's trace.
    let cache_spans: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tower_valkey_cache::layer::service: close"))
        .collect();
    assert_eq!(cache_spans.len(), 2, "{log}");
    for (l, outcome) in cache_spans.iter().zip(["miss", "hit"]) {
        assert!(l.contains("request{method=GET uri=/items/42"), "{l}");
        assert!(l.contains("}:cache{"), "{l}");
        assert!(l.contains(&format!("outcome=\"{outcome}\"")), "{l}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn trace_layer_under_the_cache_sees_misses_only() {
    let log = trace_log(false).await;
    let finished = log
        .lines()
        .filter(|l| l.contains("finished processing request"))
        .count();
    assert_eq!(finished, 1, "the hit never reached it: {log}");
}

// ---------------------------------------------------------------------------------------------
// The quickstart's stack
// ---------------------------------------------------------------------------------------------

// The example, compiled once for the binary (in `layer`).
use crate::layer::quickstart;

/// The quickstart wraps its routes in the recommended order: a hit gets its own request id and
/// is compressed for a client that asks, from one identity entry.
async fn quickstart_stack_wraps_hits(b: Backend) {
    let cache = b.cache("t_quickstart_stack", OP);
    let app = quickstart::app(cache.clone(), quickstart::Db::seeded());
    let gzip = [("accept-encoding", "gzip")];
    let first = send(&app, get_with("/users/1", &gzip)).await;
    assert_eq!(first.cache_status(), STORED);
    let second = send(&app, get_with("/users/1", &gzip)).await;
    assert_hit(&second);
    for r in [&first, &second] {
        assert_eq!(r.header("content-encoding"), "gzip");
        assert!(gunzip(&r.body).contains("\"name\":\"Ada\""));
        assert_eq!(r.header("x-request-id").len(), 36, "a UUID");
    }
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
    let e = entry(&cache, "user:1").await;
    assert_eq!(
        header_of(&e, "content-encoding"),
        None,
        "stored uncompressed"
    );
    assert_eq!(header_of(&e, "x-request-id"), None, "no request id stored");
    let plain = send(&app, get_with("/users/1", &[])).await;
    assert_hit(&plain);
    assert!(plain.text().contains("\"name\":\"Ada\""));
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        compression_outside_stores_identity_once,
        compression_inside_stores_a_variant_per_coding,
        timeout_above_the_cache_stores_nothing,
        body_timeout_above_the_cache_stores_nothing_half,
        timeout_above_invalidate_layer_loses_no_invalidation,
        request_ids_outside_the_cache_are_per_response,
        request_ids_propagated_under_the_cache_are_replayed,
        cors_outside_the_cache,
        cors_inside_the_cache,
        concurrency_limit_above_the_cache,
        concurrency_limit_under_the_cache_gates_misses_only,
        quickstart_stack_wraps_hits,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        compression_outside_stores_identity_once,
        compression_inside_stores_a_variant_per_coding,
        timeout_above_the_cache_stores_nothing,
        body_timeout_above_the_cache_stores_nothing_half,
        timeout_above_invalidate_layer_loses_no_invalidation,
        request_ids_outside_the_cache_are_per_response,
        request_ids_propagated_under_the_cache_are_replayed,
        cors_outside_the_cache,
        cors_inside_the_cache,
        concurrency_limit_above_the_cache,
        concurrency_limit_under_the_cache_gates_misses_only,
        quickstart_stack_wraps_hits,
    );
}
