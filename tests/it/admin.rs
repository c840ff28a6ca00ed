//! The operator's admin API (`admin::router`, feature `admin`): purges by key, tag and pattern
//! through `PURGE` URLs and a JSON `POST`, their counts, `GET /stats`, the authorizer in front of
//! everything, and bad input: always a 4xx with a message, never a 5xx, never a purge of more
//! than asked (a refused request purges nothing, whatever part of it was fine).
//!
//! Scenarios over a [`Backend`] run on Valkey and on `MemoryStore` (modules at the bottom).

use crate::support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use std::time::Duration;
use support::{eventually, send, Backend, Resp, StoreTimeouts};
use tower::ServiceExt as _;
use tower_valkey_cache::admin::{self, BearerToken};
use tower_valkey_cache::function::Options;
use tower_valkey_cache::testing::{FaultyStore, Op};
use tower_valkey_cache::{Cache, MemoryStore};

const TOKEN: &str = "an admin token long enough to be a secret";
const AUTH: (&str, &str) = (
    "authorization",
    "Bearer an admin token long enough to be a secret",
);
const OP: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_secs(10);
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));

/// Every seeded key, with its tags.
const SEEDED: &[(&str, &[&str])] = &[
    ("user:1", &["user:1"]),
    ("user:1:posts", &["user:1", "posts"]),
    ("user:2", &["user:2"]),
    ("page:/items/42?x", &[]),
    ("other", &[]),
];

async fn seed(cache: &Cache) {
    for (key, tags) in SEEDED {
        let opts = Options::new()
            .ttl(Duration::from_secs(60))
            .tags(tags.iter().copied());
        cache.set(key, &key.to_string(), &opts).await.expect("seed");
    }
}

/// The seeded keys still present, in `SEEDED` order.
async fn present(cache: &Cache) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (key, _) in SEEDED {
        if cache.get::<String>(key).await.expect("read").is_some() {
            out.push(*key);
        }
    }
    out
}

fn all() -> Vec<&'static str> {
    SEEDED.iter().map(|(k, _)| *k).collect()
}

fn app(cache: &Cache) -> Router {
    Router::new().nest(
        "/admin",
        admin::router(cache.clone(), BearerToken::new(TOKEN)),
    )
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn post(body: &str) -> Request<Body> {
    req(
        "POST",
        "/admin/purge",
        &[AUTH, ("content-type", "application/json")],
        body,
    )
}

fn json(res: &Resp) -> serde_json::Value {
    assert_eq!(res.header("content-type"), "application/json");
    serde_json::from_slice(&res.body).expect("a JSON body")
}

fn removed(res: &Resp) -> [u64; 4] {
    let v = json(res);
    let r = &v["removed"];
    ["keys", "tags", "patterns", "total"].map(|k| r[k].as_u64().expect("a count"))
}

async fn purge_by_url(backend: Backend) {
    let cache = backend.cache("adm_url", OP);
    let app = app(&cache);
    seed(&cache).await;

    let res = send(&app, req("PURGE", "/admin/keys/user:1", &[AUTH], "")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(removed(&res), [1, 0, 0, 1]);
    assert_eq!(res.header("cache-control"), "no-store");
    assert_eq!(
        present(&cache).await,
        ["user:1:posts", "user:2", "page:/items/42?x", "other"]
    );

    // A key with '/' and '?' (percent-encoded '?'): the rest of the path, decoded.
    let res = send(
        &app,
        req("PURGE", "/admin/keys/page:/items/42%3Fx", &[AUTH], ""),
    )
    .await;
    assert_eq!(removed(&res), [1, 0, 0, 1], "{}", res.text());

    let res = send(&app, req("PURGE", "/admin/tags/posts", &[AUTH], "")).await;
    assert_eq!(removed(&res), [0, 1, 0, 1], "{}", res.text());
    assert_eq!(present(&cache).await, ["user:2", "other"]);

    let res = send(&app, req("PURGE", "/admin/patterns/user:*", &[AUTH], "")).await;
    assert_eq!(removed(&res), [0, 0, 1, 1], "{}", res.text());
    assert_eq!(present(&cache).await, ["other"]);

    // Purging what is not there is a success that removed nothing (tags are not registered,
    // so an unknown tag is one no entry carries).
    let res = send(&app, req("PURGE", "/admin/tags/nobody", &[AUTH], "")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(removed(&res), [0, 0, 0, 0]);
    assert_eq!(present(&cache).await, ["other"]);
}

async fn purge_by_json_counts_each_kind(backend: Backend) {
    let cache = backend.cache("adm_json", OP);
    let app = app(&cache);
    seed(&cache).await;
    let res = send(
        &app,
        post(r#"{"keys": ["other", "absent"], "tags": ["user:2"], "patterns": ["user:1*"]}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(removed(&res), [1, 1, 2, 4]);
    assert_eq!(present(&cache).await, ["page:/items/42?x"]);
    // Every field is optional; a charset parameter is fine.
    let res = send(
        &app,
        req(
            "POST",
            "/admin/purge",
            &[AUTH, ("content-type", "application/json; charset=utf-8")],
            r#"{"keys": ["page:/items/42?x"]}"#,
        ),
    )
    .await;
    assert_eq!(removed(&res), [1, 0, 0, 1], "{}", res.text());
    assert!(present(&cache).await.is_empty());
}

async fn allow_all_purges_the_namespace_only(backend: Backend) {
    let cache = backend.cache("adm_all", OP);
    let neighbour = Cache::builder_shared(cache.store().clone())
        .namespace(backend.namespace("adm_all_other"))
        .timeout(OP)
        .build();
    let app = app(&cache);
    seed(&cache).await;
    seed(&neighbour).await;

    let res = send(&app, post(r#"{"patterns": ["*"], "allow_all": true}"#)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(removed(&res)[3], SEEDED.len() as u64);
    assert!(present(&cache).await.is_empty());
    assert_eq!(
        present(&neighbour).await,
        all(),
        "another namespace is not this API's"
    );

    seed(&cache).await;
    let res = send(
        &app,
        req("PURGE", "/admin/patterns/*?allow_all=true", &[AUTH], ""),
    )
    .await;
    assert_eq!(removed(&res)[3], SEEDED.len() as u64, "{}", res.text());
    assert!(present(&cache).await.is_empty());
}

async fn unauthorized_gets_401_and_purges_nothing(backend: Backend) {
    let cache = backend.cache("adm_auth", OP);
    let app = app(&cache);
    seed(&cache).await;
    let wrong: &[&[(&str, &str)]] = &[
        &[],
        &[("authorization", "Bearer wrong")],
        &[(
            "authorization",
            "Bearer an admin token long enough to be a secreT",
        )],
        &[(
            "authorization",
            "Bearer an admin token long enough to be a secret ",
        )],
        &[("authorization", "Basic YWRtaW46YWRtaW4=")],
        &[("authorization", TOKEN)],
        // Two Authorization headers, one right: ambiguous, refused.
        &[AUTH, ("authorization", "Bearer wrong")],
    ];
    for headers in wrong {
        for (method, uri, body) in [
            ("PURGE", "/admin/keys/user:1", ""),
            ("PURGE", "/admin/tags/user:1", ""),
            ("PURGE", "/admin/patterns/*?allow_all=true", ""),
            (
                "POST",
                "/admin/purge",
                r#"{"patterns": ["*"], "allow_all": true}"#,
            ),
            ("POST", "/admin/purge", "not even json"),
            ("GET", "/admin/stats", ""),
            ("GET", "/admin/nowhere", ""),
        ] {
            let mut h = headers.to_vec();
            h.push(("content-type", "application/json"));
            let res = send(&app, req(method, uri, &h, body)).await;
            assert_eq!(
                res.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {headers:?}"
            );
            assert!(res.header("www-authenticate").starts_with("Bearer"));
            assert!(json(&res)["error"].is_string());
        }
    }
    assert_eq!(present(&cache).await, all());
    assert_eq!(cache.stats().invalidated, 0);

    // A caller-supplied authorizer replaces the token.
    let custom = Router::new().nest(
        "/admin",
        admin::router(cache.clone(), |req: &http::request::Parts| {
            req.headers
                .get("x-admin-identity")
                .is_some_and(|v| v == "ops")
        }),
    );
    let res = send(&custom, req("PURGE", "/admin/keys/user:1", &[AUTH], "")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let res = send(
        &custom,
        req(
            "PURGE",
            "/admin/keys/user:1",
            &[("x-admin-identity", "ops")],
            "",
        ),
    )
    .await;
    assert_eq!(removed(&res), [1, 0, 0, 1], "{}", res.text());

    // An empty token (an unset variable) lets nobody in.
    let closed = Router::new().nest("/admin", admin::router(cache.clone(), BearerToken::new("")));
    for auth in [("authorization", "Bearer "), ("authorization", "Bearer")] {
        let res = send(&closed, req("GET", "/admin/stats", &[auth], "")).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
}

/// Each bad request: its status, a word its message must contain. The first ones mix a valid
/// part with an invalid one: the valid part must not run either.
fn bad_requests() -> Vec<(Request<Body>, StatusCode, &'static str)> {
    let json_ct = ("content-type", "application/json");
    vec![
        (
            post(r#"{"keys": ["user:1"], "patterns": ["*"]}"#),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            post(r#"{"keys": ["user:1"], "patterns": ["**"]}"#),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            post(r#"{"tags": ["user:1"], "patterns": ["?*"]}"#),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            post(r#"{"patterns": ["user:*", "[a-z]*"]}"#),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            post(r#"{"patterns": ["*"], "allow_all": false}"#),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            post(r#"{"keys": ["user:1"], "tag": ["user:2"]}"#),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            post(r#"{"keys": ["user:1"], "allow_all": "yes"}"#),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            post(r#"{"keys": "user:1"}"#),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            post(r#"{"keys": ["user:1"]"#),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            post(r#"{"keys": ["user:1"]} trailing"#),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (post(r#"["user:1"]"#), StatusCode::BAD_REQUEST, "invalid"),
        (post(""), StatusCode::BAD_REQUEST, "invalid"),
        (post("{}"), StatusCode::BAD_REQUEST, "nothing to purge"),
        (
            post(r#"{"keys": ["user:1", ""]}"#),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            post(&format!(
                r#"{{"keys": ["user:1", "{}"]}}"#,
                "k".repeat(5000)
            )),
            StatusCode::BAD_REQUEST,
            "bytes",
        ),
        (
            post(&serde_json::json!({ "keys": vec!["user:1"; 1001] }).to_string()),
            StatusCode::BAD_REQUEST,
            "at most",
        ),
        (
            post(&format!(
                r#"{{"keys": ["user:1"], "pad": "{}"}}"#,
                "x".repeat(70 * 1024)
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most",
        ),
        (
            req("POST", "/admin/purge", &[AUTH], r#"{"keys": ["user:1"]}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            req(
                "POST",
                "/admin/purge",
                &[AUTH, ("content-type", "text/plain")],
                r#"{"keys": ["user:1"]}"#,
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            req(
                "POST",
                "/admin/purge?allow_all=true",
                &[AUTH, json_ct],
                r#"{"patterns": ["*"]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            req("GET", "/admin/purge", &[AUTH], ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST",
        ),
        (
            req("DELETE", "/admin/keys/user:1", &[AUTH], ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "PURGE",
        ),
        (
            req("GET", "/admin/tags/user:1", &[AUTH], ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "PURGE",
        ),
        (
            req("PURGE", "/admin/patterns/*", &[AUTH], ""),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            req("PURGE", "/admin/patterns/[a-z]*", &[AUTH], ""),
            StatusCode::BAD_REQUEST,
            "allow_all",
        ),
        (
            req("PURGE", "/admin/patterns/*?allow_all=1", &[AUTH], ""),
            StatusCode::BAD_REQUEST,
            "allow_all=true",
        ),
        (
            req("PURGE", "/admin/keys/user:1?x=1", &[AUTH], ""),
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            req("PURGE", "/admin/tags/user:1?allow_all=true", &[AUTH], ""),
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            req("PURGE", "/admin/keys", &[AUTH], ""),
            StatusCode::NOT_FOUND,
            "no such admin route",
        ),
        (
            req("PURGE", "/admin/user:1", &[AUTH], ""),
            StatusCode::NOT_FOUND,
            "no such admin route",
        ),
        (
            req("POST", "/admin/stats", &[AUTH], ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET",
        ),
    ]
}

async fn bad_input_is_4xx_and_purges_nothing(backend: Backend) {
    let cache = backend.cache("adm_bad", OP);
    let app = app(&cache);
    seed(&cache).await;
    for (request, status, message) in bad_requests() {
        let what = format!("{} {}", request.method(), request.uri());
        let res = send(&app, request).await;
        assert_eq!(res.status, status, "{what}: {}", res.text());
        if !message.is_empty() {
            let error = json(&res)["error"]
                .as_str()
                .expect("an error message")
                .to_owned();
            assert!(
                error.contains(message),
                "{what}: {error:?} lacks {message:?}"
            );
        }
        assert_eq!(present(&cache).await, all(), "{what} purged something");
    }
    assert_eq!(cache.stats().invalidated, 0);
    assert_eq!(cache.pending_invalidations(), 0);
}

/// Random damage to valid purge bodies: whatever the bytes, the answer is never a 5xx, and a
/// refused body purges nothing.
async fn mangled_bodies_never_5xx(backend: Backend) {
    let cache = backend.cache("adm_fuzz", OP);
    let app = app(&cache);
    seed(&cache).await;
    let valid = [
        r#"{"keys": ["user:1"], "tags": ["posts"], "patterns": ["user:2*"]}"#,
        r#"{"patterns": ["*"], "allow_all": false}"#,
        r#"{"keys": ["other"]}"#,
    ];
    let mut rng = fastrand::Rng::with_seed(20);
    let mut refused = 0;
    for round in 0..300 {
        let mut body = valid[round % valid.len()].as_bytes().to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..body.len());
            match rng.u8(..3) {
                0 => body[at] = rng.u8(..),
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, b"{}[]\",:*\\"[rng.usize(..9)]),
            }
        }
        let request = Request::post("/admin/purge")
            .header(AUTH.0, AUTH.1)
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .unwrap();
        let res = send(&app, request).await;
        assert!(
            res.status.is_client_error() || res.status == StatusCode::OK,
            "{:?}: {}",
            String::from_utf8_lossy(&body),
            res.status
        );
        if res.status.is_client_error() {
            refused += 1;
            assert_eq!(
                present(&cache).await,
                all(),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        } else {
            seed(&cache).await;
        }
    }
    assert!(refused > 100, "the damage refused only {refused} bodies");
}

async fn stats_show_counters_and_breaker(backend: Backend) {
    let faulty = FaultyStore::new(backend.store());
    let faults = faulty.faults();
    let cache = Cache::builder(faulty)
        .namespace(backend.namespace("adm_stats"))
        .timeout(OP)
        .circuit_breaker(1, Duration::from_secs(600))
        .build();
    let app = app(&cache);
    let opts = Options::new().ttl(Duration::from_secs(60));
    for _ in 0..2 {
        let v: Result<u32, std::sync::Arc<std::io::Error>> =
            cache.get_or_set_with("n", &opts, || async { Ok(7) }).await;
        assert_eq!(v.unwrap(), 7);
    }
    let res = send(&app, req("GET", "/admin/stats", &[AUTH], "")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let v = json(&res);
    assert_eq!(v["namespace"], cache.namespace());
    assert_eq!(v["degraded"], false);
    assert_eq!(v["stats"]["hits"], 1);
    assert_eq!(v["stats"]["misses"], 1);
    assert_eq!(v["stats"]["stores"], 1);
    assert_eq!(v["requests"], 2);
    assert_eq!(v["hit_ratio"], 0.5);
    assert_eq!(v["pending_invalidations"], 0);
    assert!(v["l1"].is_null(), "no L1 configured");
    assert_eq!(res.header("cache-control"), "no-store");

    // The store fails: one failure opens the breaker; the purge is owed, not lost, and the
    // answer says so (202, never a 5xx).
    faults.fail(Op::Invalidate);
    let res = send(&app, req("PURGE", "/admin/keys/n", &[AUTH], "")).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text());
    let body = json(&res);
    assert_eq!(body["queued"], true);
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    let v = json(&send(&app, req("GET", "/admin/stats", &[AUTH], "")).await);
    assert_eq!(v["degraded"], true);
    assert_eq!(v["degraded"], cache.is_degraded());
    assert!(v["pending_invalidations"].as_u64() >= Some(1));
    assert!(v["stats"]["invalidations_queued"].as_u64() >= Some(1));
    // While the invalidation is owed, this process reads around the cache.
    let v: Result<u32, std::sync::Arc<std::io::Error>> =
        cache.get_or_set_with("n", &opts, || async { Ok(8) }).await;
    assert_eq!(v.unwrap(), 8);
}

/// A purge whose client goes away (a disconnect, a timeout above the router) still lands: it
/// runs in a task of its own.
async fn purge_cut_short_still_lands(backend: Backend) {
    let faulty = FaultyStore::new(backend.store());
    let faults = faulty.faults();
    let cache = Cache::builder(faulty)
        .namespace(backend.namespace("adm_cut"))
        .timeout(Duration::from_secs(5))
        .build();
    let app = app(&cache);
    seed(&cache).await;
    faults.slow(Duration::from_millis(300));
    let cut = tokio::time::timeout(
        Duration::from_millis(20),
        app.clone()
            .oneshot(post(r#"{"keys": ["user:1"], "tags": ["posts"]}"#)),
    )
    .await;
    assert!(
        cut.is_err(),
        "the request was cut before the store answered"
    );
    faults.reset();
    eventually(POLL, "the cut purge to land", || {
        let cache = cache.clone();
        async move {
            let left = present(&cache).await;
            (left == ["user:2", "page:/items/42?x", "other"]).then_some(())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        purge_by_url,
        purge_by_json_counts_each_kind,
        allow_all_purges_the_namespace_only,
        unauthorized_gets_401_and_purges_nothing,
        bad_input_is_4xx_and_purges_nothing,
        stats_show_counters_and_breaker,
        purge_cut_short_still_lands,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        purge_by_url,
        purge_by_json_counts_each_kind,
        allow_all_purges_the_namespace_only,
        unauthorized_gets_401_and_purges_nothing,
        bad_input_is_4xx_and_purges_nothing,
        mangled_bodies_never_5xx,
        stats_show_counters_and_breaker,
        purge_cut_short_still_lands,
    );
}
