//! The shared-cache mode (`CacheLayer::http_cache`, issue 18): RFC 9111 freshness with the
//! origin's `Age` and `Date`, heuristic freshness, `must-revalidate` / `no-cache`,
//! `CDN-Cache-Control`, RFC 5861, revalidation with `304` (with single-flight and the
//! invalidation guard), invalidation on unsafe methods, ranges from a stored `200`, streamed
//! misses, validators and `Age` / `Date`. Each scenario runs on real Valkey and on `MemoryStore`.
//!
//! Staleness is made with the origin's `Age` (a response `max-age=60` with `Age: 60` is stale on
//! arrival), never by sleeping, so a loaded machine cannot change an outcome.

use crate::support;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::{request, Backend, StoreTimeouts};
use tower_valkey_cache::entry::{now_ms, Entry};
use tower_valkey_cache::{CacheLayer, MemoryStore, Outcome, PendingStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);

/// What the scripted origin answers: status, headers, body.
type Answer = (u16, Vec<(&'static str, String)>, &'static str);

/// The origin's script: the answer for the `n`th call (1-based) for the request's path, given
/// its method and headers.
type Script = Arc<dyn Fn(usize, &str, &HeaderMap) -> Answer + Send + Sync>;

/// Sends `req` through `app` and collects the response; a miss whose body streamed is waited
/// for until its store ended (its `PendingStore`), so the next request sees what it stored.
async fn send(app: &Router, req: axum::http::Request<Body>) -> support::Resp {
    use tower::ServiceExt;
    let res = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .expect("response within 10 s")
        .unwrap();
    let pending = res.extensions().get::<PendingStore>().cloned();
    let r = support::collect(res).await;
    if let Some(p) = pending {
        tokio::time::timeout(Duration::from_secs(10), p.stored())
            .await
            .expect("the store ends within 10 s");
    }
    r
}

async fn get_req(app: &Router, uri: &str) -> support::Resp {
    send(app, request("GET", uri, &[])).await
}

/// A scripted origin behind the layer: counts its calls (in all, and per path: the script gets
/// the path's count) and keeps each request's headers.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    per_path: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The headers of the origin's `n`th request (1-based).
    fn request(&self, n: usize) -> HeaderMap {
        self.seen.lock().unwrap()[n - 1].1.clone()
    }
}

/// Every path and method goes to the origin through `layer`.
fn scripted(
    layer: CacheLayer,
    script: impl Fn(usize, &str, &HeaderMap) -> Answer + Send + Sync + 'static,
) -> (Router, Origin) {
    let origin = Origin {
        calls: Arc::new(AtomicUsize::new(0)),
        per_path: Arc::default(),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let script: Script = Arc::new(script);
    let o = origin.clone();
    let handler = any(move |req: axum::extract::Request| {
        let (o, script) = (o.clone(), script.clone());
        async move {
            o.calls.fetch_add(1, Ordering::SeqCst);
            let n = {
                let mut m = o.per_path.lock().unwrap();
                let c = m.entry(req.uri().path().to_owned()).or_default();
                *c += 1;
                *c
            };
            let method = req.method().as_str().to_owned();
            o.seen
                .lock()
                .unwrap()
                .push((format!("{method} {}", req.uri()), req.headers().clone()));
            let (status, headers, body) = script(n, &method, req.headers());
            let mut res = Response::new(Body::from(body));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                res.headers_mut().append(
                    HeaderName::from_static(k),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            res
        }
    });
    let router = Router::new()
        .route("/", handler.clone())
        .route("/{*path}", handler)
        .layer(layer);
    (router, origin)
}

fn date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn h(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn ok(pairs: &[(&'static str, &str)], body: &'static str) -> Answer {
    (200, h(pairs), body)
}

fn age(r: &support::Resp) -> u64 {
    r.header("age").parse().expect("Age")
}

fn hit_ttl(r: &support::Resp) -> i64 {
    let s = r.cache_status();
    let at = s.find("ttl=").unwrap_or_else(|| panic!("not a hit: {s}")) + 4;
    s[at..].split(';').next().unwrap().trim().parse().unwrap()
}

fn layer(b: &Backend, ns: &str) -> CacheLayer {
    CacheLayer::new(b.cache(ns, OP)).http_cache()
}

/// Freshness counts from the origin's age: `Age`, `Date` and `Expires - Date` (RFC 9111 §4.2),
/// and the `Age` sent is the origin's plus the time stored. A stale-on-arrival response
/// without validators is not stored.
async fn freshness_counts_the_origins_age(b: Backend) {
    let now = SystemTime::now();
    let hour_ago = date(now - Duration::from_secs(3600));
    let in_30_min = date(now - Duration::from_secs(3600) + Duration::from_secs(1800));
    let in_2_h = date(now - Duration::from_secs(3600) + Duration::from_secs(7200));
    let date_sent = hour_ago.clone();
    let (app, origin) = scripted(layer(&b, "sc_age"), move |_, _, req| {
        let path = req
            .get("x-path")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        match path.as_str() {
            "age40" => ok(&[("cache-control", "max-age=100"), ("age", "40")], "a"),
            "age200" => ok(&[("cache-control", "max-age=100"), ("age", "200")], "b"),
            "expired" => ok(&[("date", &date_sent), ("expires", &in_30_min)], "c"),
            "expires" => ok(&[("date", &date_sent), ("expires", &in_2_h)], "d"),
            _ => ok(&[], "?"),
        }
    });
    let get = |p: &'static str| {
        let app = app.clone();
        async move { send(&app, request("GET", &format!("/{p}"), &[("x-path", p)])).await }
    };
    // Fresh for 60 s of its 100: Age 40 on the first hit, the ttl what is left.
    let first = get("age40").await;
    assert_eq!(first.text(), "a");
    let hit = get("age40").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert!((40..45).contains(&age(&hit)), "Age {}", age(&hit));
    assert!((55..=60).contains(&hit_ttl(&hit)), "{}", hit.cache_status());
    // Older than its lifetime: stale on arrival, not stored.
    let r = get("age200").await;
    assert!(
        r.cache_status().contains("detail=stale"),
        "{}",
        r.cache_status()
    );
    assert!(!get("age200").await.is_hit());
    // Expires is measured against Date: 30 min after a Date an hour ago is past.
    let r = get("expired").await;
    assert!(
        r.cache_status().contains("detail=stale"),
        "{}",
        r.cache_status()
    );
    // Two hours after a Date an hour ago: an hour left, and an hour old.
    get("expires").await;
    let hit = get("expires").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert!((3595..3610).contains(&age(&hit)), "Age {}", age(&hit));
    assert!(
        (3590..=3600).contains(&hit_ttl(&hit)),
        "{}",
        hit.cache_status()
    );
    // The origin's Date is replayed unchanged.
    assert_eq!(hit.header("date"), hour_ago);
    assert_eq!(origin.calls(), 5);
}

/// An invalid `max-age` is stale, never the route TTL; a valid one wins over `Expires`; the
/// route's TTL plays no part.
async fn invalid_freshness_is_stale(b: Backend) {
    let in_1_h = date(SystemTime::now() + Duration::from_secs(3600));
    let (app, origin) = scripted(
        layer(&b, "sc_invalid").ttl(Duration::from_secs(3600)),
        move |_, _, req| match req.get("x-case").unwrap().to_str().unwrap() {
            "negative" => ok(&[("cache-control", "max-age=-1")], "n"),
            "word" => ok(
                &[("cache-control", "max-age=soon"), ("expires", &in_1_h)],
                "w",
            ),
            "zero" => ok(&[("cache-control", "max-age=0"), ("expires", &in_1_h)], "z"),
            "expires0" => ok(&[("expires", "0")], "e"),
            _ => ok(&[], "none"),
        },
    );
    for case in ["negative", "word", "zero", "expires0", "none"] {
        for _ in 0..2 {
            let r = send(
                &app,
                request("GET", &format!("/{case}"), &[("x-case", case)]),
            )
            .await;
            assert!(!r.is_hit(), "{case}: {}", r.cache_status());
            assert!(
                r.cache_status().contains("detail=stale"),
                "{case}: {}",
                r.cache_status()
            );
        }
    }
    assert_eq!(origin.calls(), 10);
}

/// Heuristic freshness (RFC 9111 §4.2.2): 10% of `Date - Last-Modified`, capped at a day, for
/// heuristically cacheable statuses (and `public`) only.
async fn heuristic_freshness(b: Backend) {
    let now = SystemTime::now();
    let lm_100s = date(now - Duration::from_secs(1000));
    let lm_year = date(now - Duration::from_secs(365 * 86400));
    let (app, origin) = scripted(layer(&b, "sc_heuristic"), move |_, _, req| {
        match req.get("x-case").unwrap().to_str().unwrap() {
            "recent" => ok(&[("last-modified", &lm_100s)], "r"),
            "old" => ok(&[("last-modified", &lm_year)], "o"),
            "404" => (404, h(&[("last-modified", &lm_year)]), "missing"),
            "302" => (
                302,
                h(&[("last-modified", &lm_year), ("location", "/x")]),
                "",
            ),
            "599" => (
                599,
                h(&[("last-modified", &lm_year), ("cache-control", "public")]),
                "p",
            ),
            _ => (599, h(&[("last-modified", &lm_year)]), "u"),
        }
    });
    let get = |case: &'static str| {
        let app = app.clone();
        async move {
            send(
                &app,
                request("GET", &format!("/{case}"), &[("x-case", case)]),
            )
            .await
        }
    };
    get("recent").await;
    let r = get("recent").await;
    assert!((95..=100).contains(&hit_ttl(&r)), "{}", r.cache_status());
    get("old").await;
    let r = get("old").await;
    assert!(
        (86395..=86400).contains(&hit_ttl(&r)),
        "capped at a day: {}",
        r.cache_status()
    );
    get("404").await;
    assert!(get("404").await.is_hit());
    get("599").await;
    assert!(
        get("599").await.is_hit(),
        "public makes 599 heuristically cacheable"
    );
    for case in ["302", "599-private"] {
        let r = get(case).await;
        assert!(
            r.cache_status().contains("detail=no-freshness"),
            "{case}: {}",
            r.cache_status()
        );
        assert!(!get(case).await.is_hit());
    }
    assert_eq!(origin.calls(), 8);
}

/// `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` are never served stale,
/// whatever the route's windows; the others are, within the response's own
/// `stale-while-revalidate=`, and its `stale-if-error=` stands in for a failing origin.
async fn stale_serving_follows_the_directives(b: Backend) {
    let layer = layer(&b, "sc_stale")
        .stale_while_revalidate(Duration::from_secs(600))
        .stale_if_error(Duration::from_secs(600));
    let (app, origin) = scripted(layer, move |n, _, req| {
        let case = req.get("x-case").unwrap().to_str().unwrap().to_owned();
        let cc = match case.as_str() {
            "plain" => "max-age=60",
            "must" => "max-age=60, must-revalidate",
            "proxy" => "max-age=60, proxy-revalidate",
            "smaxage" => "s-maxage=60",
            _ => "max-age=60, no-cache",
        };
        // The first answer of each path is stale on arrival (Age 120); later ones fresh.
        match n % 2 {
            1 => ok(&[("cache-control", cc), ("age", "120")], "first"),
            _ => ok(&[("cache-control", cc)], "second"),
        }
    });
    let get = |case: &'static str| {
        let app = app.clone();
        async move {
            send(
                &app,
                request("GET", &format!("/{case}"), &[("x-case", case)]),
            )
            .await
        }
    };
    // Served stale, refreshed in the background.
    get("plain").await;
    let r = get("plain").await;
    assert!(r.is_hit() && hit_ttl(&r) < 0, "{}", r.cache_status());
    assert_eq!(r.text(), "first");
    support::eventually(Duration::from_secs(10), "background refresh", || {
        let calls = origin.calls();
        async move { (calls >= 2).then_some(()) }
    })
    .await;
    for case in ["must", "proxy", "smaxage", "no-cache"] {
        let before = origin.calls();
        get(case).await;
        let r = get(case).await;
        assert!(!r.is_hit(), "{case} served stale: {}", r.cache_status());
        assert_eq!(r.text(), "second", "{case}");
        assert_eq!(origin.calls(), before + 2, "{case}");
    }
}

/// RFC 5861 from the response: `stale-while-revalidate=` serves the stale entry while a
/// background refresh revalidates it (a conditional request); `stale-if-error=` stands in for
/// a `5xx`; past the windows, neither.
async fn rfc5861_directives(b: Backend) {
    let (app, origin) = scripted(layer(&b, "sc_5861"), move |n, _, req| {
        let case = req.get("x-case").unwrap().to_str().unwrap().to_owned();
        match (case.as_str(), n) {
            ("swr", _) if req.contains_key("if-none-match") => (
                304,
                h(&[("cache-control", "max-age=600"), ("etag", "\"s1\"")]),
                "",
            ),
            ("swr", _) => ok(
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=600"),
                    ("age", "20"),
                    ("etag", "\"s1\""),
                ],
                "swr body",
            ),
            ("sie", 1) => ok(
                &[
                    ("cache-control", "max-age=10, stale-if-error=600"),
                    ("age", "20"),
                ],
                "sie body",
            ),
            ("sie", _) => (503, h(&[]), "down"),
            ("gone", 1) => ok(
                &[
                    ("cache-control", "max-age=10, stale-if-error=5"),
                    ("age", "20"),
                ],
                "old",
            ),
            _ => (503, h(&[]), "down"),
        }
    });
    let get = |case: &'static str| {
        let app = app.clone();
        async move {
            send(
                &app,
                request("GET", &format!("/{case}"), &[("x-case", case)]),
            )
            .await
        }
    };
    assert_eq!(get("swr").await.text(), "swr body");
    let r = get("swr").await;
    assert!(r.is_hit() && hit_ttl(&r) < 0, "{}", r.cache_status());
    let fresh = support::eventually(Duration::from_secs(10), "revalidated entry", || {
        let app = app.clone();
        async move {
            let r = send(&app, request("GET", "/swr", &[("x-case", "swr")])).await;
            (r.is_hit() && hit_ttl(&r) > 0).then_some(r)
        }
    })
    .await;
    assert_eq!(fresh.text(), "swr body", "the 304 kept the stored body");
    assert_eq!(origin.request(2).get("if-none-match").unwrap(), "\"s1\"");
    assert_eq!(origin.calls(), 2);

    assert_eq!(get("sie").await.text(), "sie body");
    let r = get("sie").await;
    assert_eq!(r.text(), "sie body");
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    // `stale-if-error=5` on a response 10 s past its freshness: outside the window.
    assert_eq!(get("gone").await.text(), "old");
    assert_eq!(get("gone").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A path, the origin's headers for it, and whether its second request is a hit.
type Case = (&'static str, Vec<(&'static str, &'static str)>, bool);

/// `CDN-Cache-Control` (RFC 9213) replaces `Cache-Control` for this cache; an invalid one is
/// ignored; a configured targeted field comes first.
async fn targeted_fields_take_precedence(b: Backend) {
    let run = |layer: CacheLayer, cases: Vec<Case>| async move {
        let table = cases.clone();
        let (app, _) = scripted(layer, move |_, _, req| {
            let case = req.get("x-case").unwrap().to_str().unwrap();
            let (_, headers, _) = table.iter().find(|(c, _, _)| *c == case).unwrap();
            ok(
                &headers.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
                "t",
            )
        });
        for (case, _, cached) in cases {
            let get = || {
                send(
                    &app,
                    request("GET", &format!("/{case}"), &[("x-case", case)]),
                )
            };
            get().await;
            assert_eq!(get().await.is_hit(), cached, "{case}");
        }
    };
    run(
        layer(&b, "sc_cdn"),
        vec![
            (
                "cdn-over-no-store",
                vec![
                    ("cdn-cache-control", "max-age=60"),
                    ("cache-control", "no-store"),
                ],
                true,
            ),
            (
                "cdn-no-store",
                vec![
                    ("cdn-cache-control", "no-store"),
                    ("cache-control", "max-age=60"),
                ],
                false,
            ),
            (
                "cdn-private",
                vec![
                    ("cdn-cache-control", "private"),
                    ("cache-control", "max-age=60"),
                ],
                false,
            ),
            (
                "cdn-zero",
                vec![
                    ("cdn-cache-control", "max-age=0"),
                    ("cache-control", "max-age=60"),
                ],
                false,
            ),
            (
                "cdn-invalid",
                vec![
                    ("cdn-cache-control", "max-age=\"60\""),
                    ("cache-control", "no-store"),
                ],
                false,
            ),
            (
                "cdn-unknown-type",
                vec![
                    ("cdn-cache-control", "max-age=60, &&&"),
                    ("cache-control", "no-store"),
                ],
                false,
            ),
        ],
    )
    .await;
    run(
        layer(&b, "sc_acme").targeted_cache_control(["acme-cache-control", "cdn-cache-control"]),
        vec![
            (
                "acme-first",
                vec![
                    ("acme-cache-control", "max-age=60"),
                    ("cdn-cache-control", "no-store"),
                ],
                true,
            ),
            (
                "acme-no-store",
                vec![
                    ("acme-cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=60"),
                ],
                false,
            ),
            (
                "cdn-next",
                vec![
                    ("cdn-cache-control", "max-age=60"),
                    ("cache-control", "no-store"),
                ],
                true,
            ),
        ],
    )
    .await;
}

/// A stale entry with validators becomes a conditional request; the `304` refreshes the entry's
/// headers and freshness (not `Content-Length`), the client gets the full response, or its own
/// `304`; a client's own conditionals go to the origin unchanged.
async fn revalidation_with_304(b: Backend) {
    let lm = date(SystemTime::now() - Duration::from_secs(86400));
    let lm2 = lm.clone();
    let (app, origin) = scripted(layer(&b, "sc_304"), move |n, _, req| {
        if req.contains_key("if-none-match") || req.contains_key("if-modified-since") {
            return (
                304,
                h(&[
                    ("cache-control", "max-age=600"),
                    ("etag", "\"v1\""),
                    ("x-version", &n.to_string()),
                    ("content-length", "0"),
                ]),
                "",
            );
        }
        ok(
            &[
                ("cache-control", "max-age=60"),
                ("age", "60"),
                ("etag", "\"v1\""),
                ("last-modified", &lm2),
                ("x-version", "1"),
                ("content-length", "9"),
            ],
            "full body",
        )
    });
    let first = get_req(&app, "/doc").await;
    assert_eq!(first.text(), "full body");
    assert!(first.header("etag") == "\"v1\"" && first.header("x-version") == "1");
    // Stale: a conditional request with the stored validators, the full body to the client.
    let r = get_req(&app, "/doc").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "full body");
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        r.header("x-version"),
        "2",
        "the 304's fields replace the stored ones"
    );
    assert_eq!(r.header("content-length"), "9");
    let sent = origin.request(2);
    assert_eq!(sent.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(sent.get("if-modified-since").unwrap().to_str().unwrap(), lm);
    // Refreshed: fresh for the 304's max-age, no origin call.
    let hit = get_req(&app, "/doc").await;
    assert!(
        hit.is_hit() && hit_ttl(&hit) > 590,
        "{}",
        hit.cache_status()
    );
    assert_eq!((hit.text(), hit.header("x-version")), ("full body", "2"));
    assert_eq!(origin.calls(), 2);
    // A client's own conditional on a fresh entry: answered 304 from the cache.
    let own = send(&app, request("GET", "/doc", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(own.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 2);

    // A client's own validators are forwarded as they are, and its 304 reaches it.
    let (app, origin) = scripted(layer(&b, "sc_304_own"), move |_, _, req| {
        if req.get("if-none-match").is_some_and(|v| v == "\"client\"") {
            return (304, h(&[("etag", "\"client\"")]), "");
        }
        ok(
            &[
                ("cache-control", "max-age=60"),
                ("age", "60"),
                ("etag", "\"v1\""),
            ],
            "body",
        )
    });
    get_req(&app, "/own").await;
    let r = send(
        &app,
        request("GET", "/own", &[("if-none-match", "\"client\"")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        origin.request(2).get("if-none-match").unwrap(),
        "\"client\""
    );
    // Not about the stored entry: nothing refreshed; the next request revalidates again.
    let again = get_req(&app, "/own").await;
    assert_eq!(again.text(), "body");
    assert_eq!(origin.calls(), 3);
}

/// Revalidation with single-flight: concurrent requests on a stale entry send one conditional
/// request; every one gets the full body.
async fn revalidation_is_single_flight(b: Backend) {
    let (app, origin) = scripted(layer(&b, "sc_flight"), move |_, _, req| {
        if req.contains_key("if-none-match") {
            return (304, h(&[("cache-control", "max-age=600")]), "");
        }
        ok(
            &[
                ("cache-control", "max-age=60"),
                ("age", "60"),
                ("etag", "\"f\""),
            ],
            "flight body",
        )
    });
    get_req(&app, "/f").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move { get_req(&app, "/f").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text()), (StatusCode::OK, "flight body"));
    }
    // The first request stored the entry; at most a few conditional requests (followers that
    // waited past a flight elect a new leader, and the refreshed entry is fresh for all others).
    let conditional = (2..=origin.calls())
        .filter(|&n| origin.request(n).contains_key("if-none-match"))
        .count();
    assert_eq!(
        conditional,
        origin.calls() - 1,
        "every later request was conditional"
    );
    assert!(
        origin.calls() <= 3,
        "one revalidation for 16 requests, got {}",
        origin.calls() - 1
    );
}

/// The refreshed entry is a guarded write: an invalidation while the conditional request runs
/// wins, and the next request goes to the origin.
async fn revalidation_is_guarded(b: Backend) {
    let cache = b.cache("sc_guard", OP);
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let layer = CacheLayer::new(cache.clone()).http_cache();
    let (s, r) = (started.clone(), release.clone());
    let origin = Origin {
        calls: Arc::new(AtomicUsize::new(0)),
        per_path: Arc::default(),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let o = origin.clone();
    let router = Router::new()
        .route(
            "/{*p}",
            any(move |req: axum::extract::Request| {
                let (s, r, o) = (s.clone(), r.clone(), o.clone());
                async move {
                    o.calls.fetch_add(1, Ordering::SeqCst);
                    let mut res = Response::new(Body::from("guarded"));
                    if req.headers().contains_key("if-none-match") {
                        s.notify_one();
                        r.acquire().await.unwrap().forget();
                        *res.status_mut() = StatusCode::NOT_MODIFIED;
                        res.headers_mut()
                            .insert("cache-control", HeaderValue::from_static("max-age=600"));
                        *res.body_mut() = Body::empty();
                        return res;
                    }
                    res.headers_mut()
                        .insert("cache-control", HeaderValue::from_static("max-age=60"));
                    res.headers_mut()
                        .insert("age", HeaderValue::from_static("60"));
                    res.headers_mut()
                        .insert("etag", HeaderValue::from_static("\"g\""));
                    res
                }
            }),
        )
        .layer(layer);
    get_req(&router, "/g").await;
    let app = router.clone();
    let revalidating = tokio::spawn(async move { get_req(&app, "/g").await });
    started.notified().await;
    cache.invalidate_key("GET:/g").await.unwrap();
    release.add_permits(1);
    let r = revalidating.await.unwrap();
    assert_eq!(r.text(), "guarded", "the client still gets the response");
    assert!(
        !r.cache_status().ends_with("stored"),
        "{}",
        r.cache_status()
    );
    // Not stored over the invalidation: the next request is a plain miss.
    let next = get_req(&router, "/g").await;
    assert!(!next.is_hit(), "{}", next.cache_status());
    assert_eq!(origin.calls(), 3);
}

/// A successful unsafe request invalidates its target and same-origin `Location` /
/// `Content-Location`; a failed one, and another origin's URI, do not.
async fn unsafe_methods_invalidate(b: Backend) {
    let (app, origin) = scripted(layer(&b, "sc_unsafe"), move |_, method, req| {
        let status: u16 = req
            .get("x-status")
            .map_or(200, |v| v.to_str().unwrap().parse().unwrap());
        match method {
            "GET" => ok(&[("cache-control", "max-age=600")], "resource"),
            _ => (
                status,
                h(&[
                    ("location", "/b"),
                    ("content-location", "http://example.com/c"),
                ]),
                "",
            ),
        }
    });
    let warm = |paths: &'static [&'static str]| {
        let app = app.clone();
        async move {
            for p in paths {
                get_req(&app, p).await;
                assert!(get_req(&app, p).await.is_hit(), "{p}");
            }
        }
    };
    let hits = |paths: &'static [&'static str]| {
        let app = app.clone();
        async move {
            let mut v = Vec::new();
            for p in paths {
                v.push(get_req(&app, p).await.is_hit());
            }
            v
        }
    };
    const ALL: &[&str] = &["/a", "/b", "/c", "/d"];
    warm(ALL).await;
    // A failed POST changes nothing.
    send(
        &app,
        request(
            "POST",
            "/a",
            &[("x-status", "500"), ("host", "example.com")],
        ),
    )
    .await;
    assert_eq!(hits(ALL).await, [true, true, true, true]);
    // A successful one: the target, Location and same-origin Content-Location.
    let r = send(&app, request("POST", "/a", &[("host", "example.com")])).await;
    assert!(
        r.cache_status().contains("fwd=method"),
        "{}",
        r.cache_status()
    );
    assert_eq!(hits(ALL).await, [false, false, false, true]);
    // Another origin's Content-Location is left alone; extension methods invalidate too.
    warm(ALL).await;
    send(
        &app,
        request("M-SEARCH", "/d", &[("host", "other.example")]),
    )
    .await;
    assert_eq!(hits(ALL).await, [true, false, true, false]);
    for m in ["PUT", "DELETE", "PATCH"] {
        warm(ALL).await;
        send(&app, request(m, "/d", &[("host", "other.example")])).await;
        assert_eq!(hits(&["/d"]).await, [false], "{m}");
    }
    assert!(origin.calls() > 0);
}

/// A `Range` request on a stored `200` gets a `206` cut from it (`416` past the end, the whole
/// response for several ranges); on a miss it goes to the origin with its `Range`, and the
/// origin's `206` is not stored.
async fn ranges_from_a_stored_200(b: Backend) {
    let (app, origin) = scripted(layer(&b, "sc_range"), move |_, _, req| {
        if req.contains_key("range") {
            return (
                206,
                h(&[
                    ("cache-control", "max-age=600"),
                    ("content-range", "bytes 0-1/10"),
                ]),
                "01",
            );
        }
        ok(
            &[("cache-control", "max-age=600"), ("etag", "\"r\"")],
            "0123456789",
        )
    });
    let range = |spec: &'static str| send(&app, request("GET", "/r", &[("range", spec)]));
    // Cold: the origin's 206 passes through, unstored.
    let cold = range("bytes=0-1").await;
    assert_eq!(
        (cold.status, cold.text()),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
    assert!(
        !cold.cache_status().ends_with("stored"),
        "{}",
        cold.cache_status()
    );
    get_req(&app, "/r").await;
    let calls = origin.calls();
    let r = range("bytes=2-4").await;
    assert_eq!((r.status, r.text()), (StatusCode::PARTIAL_CONTENT, "234"));
    assert_eq!(r.header("content-range"), "bytes 2-4/10");
    assert_eq!(r.header("content-length"), "3");
    assert!(r.is_hit(), "{}", r.cache_status());
    let r = range("bytes=-3").await;
    assert_eq!((r.status, r.text()), (StatusCode::PARTIAL_CONTENT, "789"));
    let r = range("bytes=20-").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), "bytes */10");
    let r = range("bytes=0-1, 4-5").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "0123456789"));
    let r = send(
        &app,
        request(
            "GET",
            "/r",
            &[("range", "bytes=0-1"), ("if-range", "\"other\"")],
        ),
    )
    .await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "0123456789"));
    assert_eq!(origin.calls(), calls, "every range answered from the entry");
}

/// A body whose length is known streams on a miss: the head reaches the client while the origin
/// still holds the rest, the store happens once the body completes (`PendingStore`), and the
/// next request hits.
async fn known_length_misses_stream(b: Backend) {
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let router = Router::new()
        .route(
            "/s",
            any(move || {
                let gate = gate.lock().unwrap().take();
                async move {
                    let body = Gated {
                        first: Some(Bytes::from_static(b"first ")),
                        gate,
                    };
                    let mut res = Response::new(Body::new(body));
                    res.headers_mut()
                        .insert("cache-control", HeaderValue::from_static("max-age=600"));
                    res
                }
            }),
        )
        .layer(layer(&b, "sc_stream"));
    use tower::ServiceExt;
    // The head arrives while the origin still holds the second half of the body.
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        router.clone().oneshot(request("GET", "/s", &[])),
    )
    .await
    .expect("the head arrives before the body completes")
    .unwrap();
    assert_eq!(
        res.extensions().get::<Outcome>(),
        Some(&Outcome::Miss {
            stored: false,
            detail: None
        })
    );
    let cs = res
        .headers()
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cs.ends_with("fwd=uri-miss"), "{cs}");
    let pending = res
        .extensions()
        .get::<PendingStore>()
        .cloned()
        .expect("PendingStore");
    release.send(()).unwrap();
    let body = support::collect(res).await;
    assert_eq!(body.text(), "first second");
    assert!(pending.stored().await, "stored once the body completed");
    let hit = get_req(&router, "/s").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "first second");
}

/// A body of exactly 12 bytes (`first second`) whose second half waits for `gate`.
struct Gated {
    first: Option<Bytes>,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl http_body::Body for Gated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(f))));
        }
        let Some(gate) = self.gate.as_mut() else {
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(gate).poll(cx) {
            Poll::Ready(_) => {
                self.gate = None;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b"second",
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.gate.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let left = match (&self.first, &self.gate) {
            (Some(_), _) => 12,
            (None, Some(_)) => 6,
            (None, None) => 0,
        };
        http_body::SizeHint::with_exact(left)
    }
}

use std::future::Future as _;

/// No invented `ETag` in the shared mode (the app mode keeps its content hash); `Date` added
/// when the origin sent none, the origin's kept otherwise; `Age` on every hit.
async fn validators_age_and_date(b: Backend) {
    let (app, _) = scripted(layer(&b, "sc_validators"), move |_, _, req| {
        match req.get("x-case").unwrap().to_str().unwrap() {
            "no-date" => ok(&[("cache-control", "max-age=600")], "n"),
            _ => ok(
                &[
                    ("cache-control", "max-age=600"),
                    ("date", "Sun, 06 Nov 2022 08:49:37 GMT"),
                    ("age", "5"),
                ],
                "d",
            ),
        }
    });
    let get = |case: &'static str| {
        send(
            &app,
            request("GET", &format!("/{case}"), &[("x-case", case)]),
        )
    };
    let miss = get("no-date").await;
    assert!(
        miss.header("etag").is_empty(),
        "no invented ETag on the miss"
    );
    let hit = get("no-date").await;
    assert!(
        hit.is_hit() && hit.header("etag").is_empty(),
        "nor on the hit"
    );
    let stored_date = httpdate::parse_http_date(hit.header("date")).expect("a Date on the hit");
    let skew = SystemTime::now()
        .duration_since(stored_date)
        .unwrap_or_default();
    assert!(skew < Duration::from_secs(30), "{skew:?}");
    assert!(age(&hit) < 30);
    // An origin Date years ago with max-age=600: stale on arrival (the apparent age).
    let r = get("old-date").await;
    assert!(
        r.cache_status().contains("detail=stale"),
        "{}",
        r.cache_status()
    );

    // The app-cache defaults still add their content-hash ETag.
    let (app, _) = scripted(
        CacheLayer::new(b.cache("sc_validators_app", OP)),
        |_, _, _| ok(&[], "app"),
    );
    let r = get_req(&app, "/x").await;
    assert_eq!(r.header("etag").len(), 34, "{}", r.header("etag"));
}

/// Entries of the previous format (version 3) are plain misses, not corrupt: the fill
/// overwrites them.
async fn older_entries_are_plain_misses(b: Backend) {
    let cache = b.cache("sc_v3", OP);
    let (app, _) = scripted(CacheLayer::new(cache.clone()).http_cache(), |_, _, _| {
        ok(&[("cache-control", "max-age=600")], "fresh")
    });
    let mut raw = Entry::new(
        200,
        Vec::new(),
        Bytes::from_static(b"old"),
        now_ms(),
        Duration::from_secs(600),
        Duration::ZERO,
    )
    .encode()
    .unwrap()
    .to_vec();
    assert_eq!(raw[3], 4);
    raw[3] = 3;
    b.put_raw(&cache.key_space().entry("GET:/o"), &raw).await;
    let r = get_req(&app, "/o").await;
    assert_eq!(r.text(), "fresh");
    assert_eq!(cache.stats().decode_failures, 0);
    assert!(get_req(&app, "/o").await.is_hit());
}

/// What the app-cache defaults never store or share, the shared-cache mode does not either:
/// `private`, `no-store`, `Set-Cookie`, `Vary: *`, a `Cache-Control` that does not parse; a
/// credentialed request (`Authorization`, `Cookie`) neither reads a stored entry nor stores
/// its response for others.
async fn never_stored_or_shared(b: Backend) {
    let (app, origin) = scripted(layer(&b, "sc_never"), move |_, _, req| {
        let case = req
            .get("x-case")
            .map_or("public", |v| v.to_str().unwrap())
            .to_owned();
        match case.as_str() {
            "private" => ok(&[("cache-control", "private, max-age=60")], "p"),
            "no-store" => ok(&[("cache-control", "no-store, max-age=60")], "p"),
            "set-cookie" => ok(
                &[
                    ("cache-control", "public, max-age=60"),
                    ("set-cookie", "a=b"),
                ],
                "p",
            ),
            "vary-star" => ok(&[("cache-control", "max-age=60"), ("vary", "*")], "p"),
            "unparsable" => ok(&[("cache-control", "max-age=60, ext=\"open")], "p"),
            _ => ok(&[("cache-control", "public, max-age=60")], "p"),
        }
    });
    for case in [
        "private",
        "no-store",
        "set-cookie",
        "vary-star",
        "unparsable",
    ] {
        let before = origin.calls();
        for _ in 0..2 {
            let r = send(
                &app,
                request("GET", &format!("/{case}"), &[("x-case", case)]),
            )
            .await;
            assert!(!r.is_hit(), "{case}: {}", r.cache_status());
        }
        assert_eq!(origin.calls(), before + 2, "{case}");
    }
    // A stored public entry is not served to credentialed requests.
    assert!(!get_req(&app, "/pub").await.is_hit());
    assert!(get_req(&app, "/pub").await.is_hit());
    for cred in [("authorization", "Bearer a"), ("cookie", "s=1")] {
        let before = origin.calls();
        let r = send(&app, request("GET", "/pub", &[cred])).await;
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{}",
            r.cache_status()
        );
        assert_eq!(origin.calls(), before + 1, "{cred:?}");
        // Nor is a credentialed request's response stored for others.
        let path = format!("/cred-{}", cred.0);
        send(&app, request("GET", &path, &[cred])).await;
        assert!(!get_req(&app, &path).await.is_hit(), "{cred:?}");
    }
}

/// `no-cache` (RFC 9111 §5.2.2.4) is stored but never served without the origin: every use is
/// a conditional request, answered from the entry on `304`, and a changed resource replaces
/// it.
async fn no_cache_is_revalidated_on_every_use(b: Backend) {
    let (app, origin) = scripted(layer(&b, "sc_nocache"), move |n, _, req| {
        let tag = if n < 4 { "\"v1\"" } else { "\"v2\"" };
        if req.get("if-none-match").is_some_and(|v| v == tag) {
            return (304, h(&[("etag", tag), ("cache-control", "no-cache")]), "");
        }
        let body = if n < 4 { "one" } else { "two" };
        ok(&[("etag", tag), ("cache-control", "no-cache")], body)
    });
    let r = get_req(&app, "/nc").await;
    assert_eq!(r.text(), "one");
    for n in 2..=3 {
        let r = get_req(&app, "/nc").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "one");
        assert!(
            r.cache_status().contains("fwd-status=304"),
            "{}",
            r.cache_status()
        );
        assert_eq!(origin.calls(), n);
        assert_eq!(origin.request(n)["if-none-match"], "\"v1\"");
    }
    // The resource changed: the conditional request gets the new one, which replaces the entry.
    assert_eq!(get_req(&app, "/nc").await.text(), "two");
    let r = get_req(&app, "/nc").await;
    assert_eq!(r.text(), "two");
    assert_eq!(origin.request(5)["if-none-match"], "\"v2\"");
    assert_eq!(origin.calls(), 5);
}

/// Revalidation across instances with the fill lock: two instances (their own flights and
/// counters, one store), a burst of requests on a stale entry held until every other request
/// waits (on its instance's flight or on the other instance's fill lock): one conditional
/// request in all, and every request gets the full body from the refreshed entry.
async fn revalidation_with_the_fill_lock(b: Backend) {
    const BURST: usize = 8;
    let caches = [b.cache("sc_lock", OP), b.cache("sc_lock", OP)];
    let calls = Arc::new(AtomicUsize::new(0));
    let conditional = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let waiting = {
        let caches = caches.clone();
        move || caches.iter().map(|c| c.stats().waiting).sum::<u64>()
    };
    let apps: Vec<Router> = caches
        .iter()
        .map(|c| {
            let (calls, conditional, target, waiting) = (
                calls.clone(),
                conditional.clone(),
                target.clone(),
                waiting.clone(),
            );
            let handler = any(move |req: axum::extract::Request| {
                let (calls, conditional, target, waiting) = (
                    calls.clone(),
                    conditional.clone(),
                    target.clone(),
                    waiting.clone(),
                );
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let mut res = Response::new(Body::from("lock body"));
                    let h = res.headers_mut();
                    h.insert("etag", HeaderValue::from_static("\"l\""));
                    if req.headers().contains_key("if-none-match") {
                        conditional.fetch_add(1, Ordering::SeqCst);
                        // Held (bounded) until the rest of the burst waits for this fill.
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                        while waiting() < target.load(Ordering::SeqCst)
                            && tokio::time::Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        h.insert("cache-control", HeaderValue::from_static("max-age=600"));
                        *res.body_mut() = Body::empty();
                        *res.status_mut() = StatusCode::NOT_MODIFIED;
                        return res;
                    }
                    // Stale on arrival: stored (it has a validator) to be revalidated.
                    h.insert("cache-control", HeaderValue::from_static("max-age=60"));
                    h.insert("age", HeaderValue::from_static("60"));
                    res
                }
            });
            Router::new().route("/{*path}", handler).layer(
                CacheLayer::new(c.clone())
                    .http_cache()
                    .lock(Duration::from_secs(10)),
            )
        })
        .collect();
    assert_eq!(get_req(&apps[0], "/l").await.text(), "lock body");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    target.store(BURST as u64 - 1, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..BURST {
        let app = apps[i % 2].clone();
        tasks.push(tokio::spawn(async move { get_req(&app, "/l").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text()), (StatusCode::OK, "lock body"));
    }
    assert_eq!(conditional.load(Ordering::SeqCst), 1, "one revalidation");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The instance that lost the lock race waited on it rather than revalidating, and nobody
    // gave up waiting. (How many of its requests count a lock wait depends on whether they
    // were still following their leader when its wait ended: 1 to BURST / 2.)
    let sum = |f: fn(&tower_valkey_cache::Stats) -> u64| -> u64 {
        caches.iter().map(|c| f(&c.stats())).sum()
    };
    assert!((1..=BURST as u64 / 2).contains(&sum(|s| s.lock_waits)));
    assert_eq!(sum(|s| s.lock_timeouts), 0);
    // The refreshed entry is fresh for both instances.
    for app in &apps {
        assert!(get_req(app, "/l").await.is_hit());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        freshness_counts_the_origins_age,
        invalid_freshness_is_stale,
        heuristic_freshness,
        stale_serving_follows_the_directives,
        rfc5861_directives,
        targeted_fields_take_precedence,
        revalidation_with_304,
        revalidation_is_single_flight,
        revalidation_is_guarded,
        unsafe_methods_invalidate,
        ranges_from_a_stored_200,
        known_length_misses_stream,
        validators_age_and_date,
        older_entries_are_plain_misses,
        never_stored_or_shared,
        no_cache_is_revalidated_on_every_use,
        revalidation_with_the_fill_lock,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        freshness_counts_the_origins_age,
        invalid_freshness_is_stale,
        heuristic_freshness,
        stale_serving_follows_the_directives,
        rfc5861_directives,
        targeted_fields_take_precedence,
        revalidation_with_304,
        revalidation_is_single_flight,
        revalidation_is_guarded,
        unsafe_methods_invalidate,
        ranges_from_a_stored_200,
        known_length_misses_stream,
        validators_age_and_date,
        older_entries_are_plain_misses,
        never_stored_or_shared,
        no_cache_is_revalidated_on_every_use,
        revalidation_with_the_fill_lock,
    );
}
