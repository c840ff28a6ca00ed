//! `CacheLayer` through real axum routers, against a real Valkey and against `MemoryStore`.
//!
//! Every scenario is written once, as a function over a [`Backend`], and run twice (modules
//! `valkey` and `memory` at the bottom, and a subset in `cluster`). Each Valkey test starts its own
//! `valkey-server`; the cluster tests share one local Valkey Cluster, each in its own namespace.
//! Scenarios that need the store to fail (stopped, frozen) only make sense on Valkey.

use crate::support;

#[allow(dead_code)]
#[path = "../../examples/quickstart.rs"]
pub(crate) mod quickstart;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    eventually, get as get_req, has_entry, request, send, stored, Backend, Resp, StoreTimeouts,
};
use tower_valkey_cache::entry::Entry;
use tower_valkey_cache::{
    Cache, CacheLayer, InvalidateLayer, MemoryStore, ValkeyConfig, ValkeyStore,
};

const NAME: &str = "tower-valkey-cache";
const STORED: &str = "tower-valkey-cache; fwd=uri-miss; stored";
/// Bound of every poll loop (fills of streamed bodies land in the background).
const POLL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The single server's store: generous timeouts, since debug builds of parallel tests on a busy
/// machine are slow and these scenarios are about behaviour, not latency. The failure scenarios
/// set their own operation timeout.
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(1));
/// The cluster store's connect and response timeout.
const CLUSTER: Duration = Duration::from_secs(1);
/// Every cache's operation timeout.
const OP: Duration = Duration::from_secs(1);

/// The entry keys of `cache`'s namespace as Valkey lists them (`KEYS` with the glob that
/// covers every shard: `ns:*`, `{ns}:*` on the cluster, `{ns|???}:*` when sharded); None on
/// memory.
async fn entry_keys(b: &Backend, cache: &Cache) -> Option<Vec<String>> {
    b.keys(&cache.key_space().entry_glob("*")).await
}

/// Asserts that exactly these entries exist: through the store on both backends, and by name in
/// Valkey (`KEYS`).
async fn assert_entries(b: &Backend, cache: &Cache, keys: &[&str]) {
    for k in keys {
        assert!(has_entry(cache, k).await, "no entry at `{k}`");
    }
    if let Some(mut listed) = entry_keys(b, cache).await {
        listed.sort();
        let mut want: Vec<String> = keys.iter().map(|k| cache.key_space().entry(k)).collect();
        want.sort();
        assert_eq!(listed, want, "entry keys in Valkey");
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// Counts handler runs.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A GET handler answering `f()`, counted.
fn counted<R: IntoResponse + 'static>(
    calls: &Calls,
    f: impl Fn() -> R + Clone + Send + Sync + 'static,
) -> MethodRouter {
    let c = calls.clone();
    get(move || {
        let (c, f) = (c.clone(), f.clone());
        async move {
            c.inc();
            f()
        }
    })
}

fn layer(cache: &Cache) -> CacheLayer {
    CacheLayer::new(cache.clone()).ttl(Duration::from_secs(30))
}

/// Asserts a response was not stored, with this `detail`.
fn assert_unstored(r: &Resp, detail: &str) {
    assert_eq!(
        r.cache_status(),
        format!("{NAME}; fwd=uri-miss; detail={detail}"),
        "body: {:?}",
        r.body
    );
}

fn assert_hit(r: &Resp) {
    assert!(
        r.cache_status().starts_with(&format!("{NAME}; hit; ttl=")),
        "expected a hit, got `{}`",
        r.cache_status()
    );
    assert!(r.headers.contains_key(header::AGE), "hit without Age");
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

async fn miss_then_hit(b: Backend) {
    let cache = b.cache("t_hit", OP);
    let calls = Calls::default();
    let app = Router::new().route(
        "/hello",
        counted(&calls, || "hello").route_layer(layer(&cache)),
    );

    let first = get_req(&app, "/hello").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache_status(), STORED);
    assert_eq!(first.text(), "hello");
    assert!(
        !first.headers.contains_key(header::AGE),
        "a miss has no Age"
    );

    let second = get_req(&app, "/hello").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_hit(&second);
    let ttl: u64 = second.cache_status()[format!("{NAME}; hit; ttl=").len()..]
        .parse()
        .expect("ttl is a number");
    assert!((1..=30).contains(&ttl), "ttl={ttl}");
    let age: u64 = second.header("age").parse().expect("Age is a number");
    assert!(age <= 5, "age={age}");
    assert_eq!(second.text(), "hello");
    assert_eq!(second.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(second.header("content-length"), "5");

    assert_eq!(calls.get(), 1, "the handler ran once for both requests");
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.stores), (1, 1, 1), "{s:?}");
}

async fn key_templates(b: Backend) {
    let cache = b.cache("t_tpl", OP);
    let (users, posts, tenants) = (Calls::default(), Calls::default(), Calls::default());
    let (cu, cp, ct) = (users.clone(), posts.clone(), tenants.clone());
    let app = Router::new()
        .route(
            "/users/{id}",
            get(move |Path(id): Path<String>| {
                let c = cu.clone();
                async move {
                    c.inc();
                    format!("user {id}")
                }
            })
            .route_layer(layer(&cache).key("user:{id}")),
        )
        .route(
            "/users/{id}/posts",
            get(move |Path(id): Path<String>, uri: Uri| {
                let c = cp.clone();
                async move {
                    c.inc();
                    format!("posts of {id}, {}", uri.query().unwrap_or(""))
                }
            })
            .route_layer(layer(&cache).key("user_{id}_posts:page_{query.page}")),
        )
        .route(
            "/tenant",
            get(move |headers: HeaderMap| {
                let c = ct.clone();
                async move {
                    c.inc();
                    let t = headers
                        .get("x-tenant")
                        .map_or("none", |v| v.to_str().unwrap());
                    format!("tenant {t}")
                }
            })
            .route_layer(layer(&cache).key("tenant:{header.x-tenant}")),
        );

    // Path parameter.
    for (uri, body) in [("/users/1", "user 1"), ("/users/2", "user 2")] {
        let r = get_req(&app, uri).await;
        assert_eq!((r.cache_status(), r.text()), (STORED, body), "{uri}");
    }
    for (uri, body) in [("/users/1", "user 1"), ("/users/2", "user 2")] {
        let r = get_req(&app, uri).await;
        assert_hit(&r);
        assert_eq!(r.text(), body, "{uri}");
    }
    assert_eq!(users.get(), 2);

    // Path parameter and query parameter; other query parameters are not part of the key.
    for uri in [
        "/users/7/posts?page=1",
        "/users/7/posts?page=2",
        "/users/8/posts?page=1",
        "/users/7/posts",
    ] {
        let r = get_req(&app, uri).await;
        assert_eq!(r.cache_status(), STORED, "{uri}");
    }
    let r = get_req(&app, "/users/7/posts?page=2&utm=x").await;
    assert_hit(&r);
    assert_eq!(r.text(), "posts of 7, page=2");
    let r = get_req(&app, "/users/8/posts?page=1").await;
    assert_hit(&r);
    assert_eq!(r.text(), "posts of 8, page=1");
    assert_eq!(posts.get(), 4);

    // Header.
    let tenant = |t: Option<&str>| {
        let h: Vec<(&str, &str)> = t.map(|t| ("x-tenant", t)).into_iter().collect();
        request("GET", "/tenant", &h)
    };
    for t in [Some("acme"), Some("globex"), None] {
        let r = send(&app, tenant(t)).await;
        assert_eq!(r.cache_status(), STORED, "{t:?}");
    }
    for (t, body) in [
        (Some("globex"), "tenant globex"),
        (Some("acme"), "tenant acme"),
        (None, "tenant none"),
    ] {
        let r = send(&app, tenant(t)).await;
        assert_hit(&r);
        assert_eq!(r.text(), body);
    }
    assert_eq!(tenants.get(), 3);

    assert_entries(
        &b,
        &cache,
        &[
            "user:1",
            "user:2",
            "user_7_posts:page_1",
            "user_7_posts:page_2",
            "user_8_posts:page_1",
            "user_7_posts:page_~",
            "tenant:acme",
            "tenant:globex",
            "tenant:~",
        ],
    )
    .await;
}

async fn key_escaping(b: Backend) {
    let cache = b.cache("t_esc", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/users/{id}",
        get(move |Path(id): Path<String>| {
            let c = c.clone();
            async move {
                c.inc();
                format!("user [{id}]")
            }
        })
        .route_layer(layer(&cache).key("user:{id}")),
    );
    // (request path, decoded parameter)
    let cases = [
        ("/users/*", "*"),
        ("/users/%252A", "%2A"),
        ("/users/a:b", "a:b"),
        ("/users/a", "a"),
        ("/users/%5Bx%5D", "[x]"),
        ("/users/x", "x"),
        ("/users/%3F", "?"),
    ];
    for (uri, param) in cases {
        let r = get_req(&app, uri).await;
        assert_eq!(
            r.cache_status(),
            STORED,
            "{uri} collided with an earlier entry"
        );
        assert_eq!(r.text(), format!("user [{param}]"));
    }
    for (uri, param) in cases {
        let r = get_req(&app, uri).await;
        assert_hit(&r);
        assert_eq!(r.text(), format!("user [{param}]"), "{uri}");
    }
    // The same decoded value reached through another spelling shares the entry.
    let r = get_req(&app, "/users/a%3Ab").await;
    assert_hit(&r);
    assert_eq!(r.text(), "user [a:b]");
    assert_eq!(calls.get(), cases.len());

    assert_entries(
        &b,
        &cache,
        &[
            "user:%2A",
            "user:%252A",
            "user:a%3Ab",
            "user:a",
            "user:%5Bx%5D",
            "user:x",
            "user:%3F",
        ],
    )
    .await;
}

async fn query_normalisation(b: Backend) {
    let cache = b.cache("t_query", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/items",
        get(move |uri: Uri| {
            let c = c.clone();
            async move {
                c.inc();
                format!("items {}", uri.query().unwrap_or(""))
            }
        })
        .route_layer(layer(&cache)),
    );
    let r = get_req(&app, "/items?a=1&b=2").await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "items a=1&b=2"));
    let r = get_req(&app, "/items?b=2&a=1").await;
    assert_hit(&r);
    assert_eq!(r.text(), "items a=1&b=2");
    let r = get_req(&app, "/items?a=1&b=3").await;
    assert_eq!(r.cache_status(), STORED);
    let r = get_req(&app, "/items").await;
    assert_eq!(r.cache_status(), STORED);
    assert_eq!(calls.get(), 3);
    assert_entries(
        &b,
        &cache,
        &["GET:/items?a=1&b=2", "GET:/items?a=1&b=3", "GET:/items"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Scenarios: keys name what the handler sees (issue 15)
// ---------------------------------------------------------------------------------------------

/// `post_{user}_{id}` used to render one key for `/p/a/b_c` and `/p/a_b/c` (`_` was left
/// unescaped), so the second request was answered with the first one's body; adjacent holes
/// (`{a}{b}`) collided the same way.
async fn separator_values_keep_entries_apart(b: Backend) {
    let cache = b.cache("t_sep", OP);
    let calls = Calls::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/p/{user}/{id}",
            get(move |Path((user, id)): Path<(String, String)>| {
                c1.inc();
                async move { format!("post of {user}: {id}") }
            })
            .route_layer(layer(&cache).key("post_{user}_{id}")),
        )
        .route(
            "/q/{a}/{b}",
            get(move |Path((a, b)): Path<(String, String)>| {
                c2.inc();
                async move { format!("{a}|{b}") }
            })
            .route_layer(layer(&cache).key("q{a}{b}")),
        );
    let cases = [
        ("/p/a/b_c", "post of a: b_c"),
        ("/p/a_b/c", "post of a_b: c"),
        ("/p/a/b%5Fc", "post of a: b_c"),
        ("/q/ab/c", "ab|c"),
        ("/q/a/bc", "a|bc"),
    ];
    for (uri, body) in cases {
        let r = get_req(&app, uri).await;
        assert_eq!(r.text(), body, "{uri}");
        if uri != "/p/a/b%5Fc" {
            assert_eq!(
                r.cache_status(),
                STORED,
                "{uri} was answered from another entry"
            );
        } else {
            // The same value as `/p/a/b_c`, percent-encoded: the handler sees `b_c`.
            assert_hit(&r);
        }
    }
    for (uri, body) in cases {
        let r = get_req(&app, uri).await;
        assert_hit(&r);
        assert_eq!(r.text(), body, "{uri}");
    }
    assert_eq!(calls.get(), 4);
    assert_entries(
        &b,
        &cache,
        &["post_a_b%5Fc", "post_a%5Fb_c", "qab:c", "qa:bc"],
    )
    .await;
}

/// `?%71=evil` is `q=evil` to the handler's `Query`, but the key used to compare raw names and
/// see no `q`, so the evil body was served to `/s2`; `?q=a&q=b` was keyed by its first value
/// only.
async fn query_keys_see_what_the_handler_sees(b: Backend) {
    let cache = b.cache("t_qkey", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/s2",
        get(move |Query(q): Query<Vec<(String, String)>>| {
            c.inc();
            let values: Vec<String> = q
                .into_iter()
                .filter(|(k, _)| k == "q")
                .map(|(_, v)| v)
                .collect();
            async move {
                if values.is_empty() {
                    "no q".to_owned()
                } else {
                    format!("q={}", values.join("|"))
                }
            }
        })
        .route_layer(layer(&cache).key("s2:{query.q}")),
    );
    // (request, body, whether an earlier request presented the same values)
    let cases = [
        ("/s2?%71=evil", "q=evil", false),
        ("/s2", "no q", false),
        ("/s2?q=evil", "q=evil", true),
        ("/s2?q=a&q=b", "q=a|b", false),
        ("/s2?q=b", "q=b", false),
        ("/s2?q=a", "q=a", false),
        ("/s2?q=b&q=a", "q=b|a", false),
        ("/s2?q=%61&%71=b", "q=a|b", true),
        ("/s2?q=a+b", "q=a b", false),
        ("/s2?q=a%20b", "q=a b", true),
        ("/s2?q=a,b", "q=a,b", false),
    ];
    for (uri, body, same) in cases {
        let r = get_req(&app, uri).await;
        assert_eq!(r.text(), body, "{uri}");
        if same {
            assert_hit(&r);
        } else {
            assert_eq!(
                r.cache_status(),
                STORED,
                "{uri} was answered from another entry"
            );
        }
    }
    assert_eq!(calls.get(), cases.iter().filter(|c| !c.2).count());
    assert_entries(
        &b,
        &cache,
        &[
            "s2:evil", "s2:~", "s2:a,b", "s2:b", "s2:a", "s2:b,a", "s2:a%20b", "s2:a%2Cb",
        ],
    )
    .await;
}

/// `/users/0501`, `/users/+501` and `/users/501` are one `Path<u64>` to the handler: with a
/// typed hole (`user:{id:u64}`) or a key from the extractor (`key_from(Path<u64>)`) they share
/// one entry, a write through any spelling invalidates it, and a spelling the handler rejects
/// (`/users/abc`) is served uncached with the handler's own answer.
async fn numeric_spellings_share_one_entry(b: Backend) {
    use std::sync::atomic::AtomicU64;
    let cache = b.cache("t_num", OP);
    let version = Arc::new(AtomicU64::new(1));
    let calls = Calls::default();
    let read = {
        let (version, calls) = (version.clone(), calls.clone());
        move |Path(id): Path<u64>| {
            calls.inc();
            let v = version.load(Ordering::SeqCst);
            async move { format!("user {id} v{v}") }
        }
    };
    let write = {
        let version = version.clone();
        move |Path(id): Path<u64>| {
            let v = version.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("user {id} now v{v}") }
        }
    };
    let app = Router::new()
        .route(
            "/typed/{id}",
            get(read.clone())
                .route_layer(layer(&cache).key("user:{id:u64}"))
                .merge(
                    axum::routing::put(write.clone())
                        .route_layer(InvalidateLayer::new(cache.clone()).keys(["user:{id:u64}"])),
                ),
        )
        .route(
            "/extracted/{id}",
            get(read)
                .route_layer(layer(&cache).key_from(|Path(id): Path<u64>| format!("xuser:{id}")))
                .merge(
                    axum::routing::put(write)
                        .route_layer(InvalidateLayer::new(cache.clone()).keys(["xuser:{id:u64}"])),
                ),
        );
    let mut runs = 0;
    for route in ["typed", "extracted"] {
        let v = version.load(Ordering::SeqCst);
        let r = get_req(&app, &format!("/{route}/0501")).await;
        assert_eq!(
            (r.cache_status(), r.text()),
            (STORED, &*format!("user 501 v{v}"))
        );
        runs += 1;
        for spelling in ["%2B501", "501", "00501", "%35%30%31"] {
            let r = get_req(&app, &format!("/{route}/{spelling}")).await;
            assert_hit(&r);
            assert_eq!(r.text(), format!("user 501 v{v}"), "{route}/{spelling}");
        }
        assert_eq!(
            calls.get(),
            runs,
            "{route}: one handler run for every spelling"
        );
        // A write through another spelling invalidates the one entry.
        let r = send(&app, request("PUT", &format!("/{route}/+501"), &[])).await;
        assert_eq!(r.status, StatusCode::OK, "{route}");
        let r = get_req(&app, &format!("/{route}/501")).await;
        assert_eq!(
            (r.cache_status(), r.text()),
            (STORED, &*format!("user 501 v{}", v + 1))
        );
        runs += 1;
        // What the handler rejects is never cached, and answered by the handler.
        // `%FF`: not UTF-8 once decoded, which `Path` rejects too.
        for bad in ["abc", "-1", "5%200", "%FF"] {
            for _ in 0..2 {
                let r = get_req(&app, &format!("/{route}/{bad}")).await;
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{route}/{bad}");
                assert_eq!(
                    r.cache_status(),
                    format!("{NAME}; fwd=bypass; detail=key-rejected"),
                    "{route}/{bad}"
                );
            }
        }
        assert_eq!(calls.get(), runs);
    }
    assert_entries(&b, &cache, &["user:501", "xuser:501"]).await;
}

/// An entry written by an older version of the crate (entry format 1, whose keys meant
/// something else) is a plain miss: served fresh, overwritten, not counted as corrupt; the
/// function cache treats it the same way.
async fn outdated_entries_are_plain_misses(b: Backend) {
    let cache = b.cache("t_old", OP);
    let calls = Calls::default();
    let app = Router::new().route(
        "/o/{n}",
        counted(&calls, || "fresh").route_layer(layer(&cache).key("o:{n}")),
    );
    let old = |body: &'static [u8]| {
        let mut raw = Entry::new(
            200,
            vec![],
            Bytes::from_static(body),
            tower_valkey_cache::entry::now_ms(),
            Duration::from_secs(3600),
            Duration::ZERO,
        )
        .encode()
        .unwrap()
        .to_vec();
        assert_eq!(raw[3], 4, "the current entry version");
        raw[3] = 1;
        raw
    };
    b.put_raw(&cache.key_space().entry("o:1"), &old(b"from another key"))
        .await;
    let r = get_req(&app, "/o/1").await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "fresh"));
    assert_hit(&get_req(&app, "/o/1").await);
    let s = cache.stats();
    assert_eq!((s.decode_failures, s.misses, s.hits), (0, 1, 1), "{s:?}");

    b.put_raw(&cache.key_space().entry("f:1"), &old(b"\"old\""))
        .await;
    let v: Result<String, Infallible> = cache
        .get_or_set("f:1", || async { Ok("new".to_owned()) })
        .await;
    assert_eq!(v.unwrap(), "new");
    assert_eq!(cache.stats().decode_failures, 0);
}

/// The quickstart example: `?page=0` used to underflow (`(page - 1) * 5`), and
/// `?page=1&page=2` was a 400 on a miss but the cached `?page=1` on a hit. The handler now
/// rejects both with a clear 400, and the cache never answers them with a stored success.
async fn quickstart_rejects_bad_pages_on_every_request(b: Backend) {
    let cache = b.cache("t_quickstart", OP);
    let app = quickstart::app(cache.clone(), quickstart::Db::seeded());
    let r = get_req(&app, "/users/1/posts?page=1").await;
    assert_eq!((r.status, r.cache_status()), (StatusCode::OK, STORED));
    let page1 = r.text().to_owned();
    assert!(page1.contains("\"page\":1"), "{page1}");
    for uri in [
        "/users/1/posts?page=01",
        "/users/1/posts?page=%2B1",
        "/users/01/posts?page=1",
    ] {
        let r = get_req(&app, uri).await;
        assert_hit(&r);
        assert_eq!(r.text(), page1, "{uri}");
    }
    for _ in 0..2 {
        for (uri, detail) in [
            ("/users/1/posts?page=0", None),
            ("/users/1/posts?page=1&page=2", Some("key-rejected")),
            ("/users/1/posts?page=2&page=1", Some("key-rejected")),
            ("/users/1/posts?page=x", Some("key-rejected")),
            ("/users/1/posts?page=4294967296", Some("key-rejected")),
        ] {
            let r = get_req(&app, uri).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.text());
            assert!(r.text().contains("page"), "{uri}: {}", r.text());
            if let Some(d) = detail {
                assert_eq!(
                    r.cache_status(),
                    format!("{NAME}; fwd=bypass; detail={d}"),
                    "{uri}"
                );
            } else {
                assert!(!r.is_hit(), "{uri}");
            }
        }
    }
    // Users: every spelling of an id is one entry, and a write through any of them invalidates.
    let r = get_req(&app, "/users/1").await;
    assert_eq!(r.cache_status(), STORED);
    assert_hit(&get_req(&app, "/users/0001").await);
    let r = send(
        &app,
        axum::http::Request::put("/users/01")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name":"Ada L."}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_req(&app, "/users/+1").await;
    assert_eq!(r.cache_status(), STORED);
    assert!(r.text().contains("\"version\":2"), "{}", r.text());
    let r = get_req(&app, "/users/1/posts?page=1").await;
    assert_eq!(
        r.cache_status(),
        STORED,
        "the write invalidated the user's posts"
    );
}

type Headers = &'static [(&'static str, &'static str)];

/// A handler answering `status` with `headers` and the body `body`.
fn respond(status: StatusCode, headers: Headers) -> impl Fn() -> axum::response::Response + Clone {
    move || {
        let mut res = (status, "body").into_response();
        for (k, v) in headers {
            res.headers_mut().append(*k, v.parse().unwrap());
        }
        res
    }
}

async fn never_cached_responses(b: Backend) {
    let cache = b.cache("t_never", OP);
    // (path, status, response headers, Cache-Status detail)
    let cases: [(&str, StatusCode, Headers, &str); 8] = [
        (
            "/cookie",
            StatusCode::OK,
            &[("set-cookie", "session=1")],
            "set-cookie",
        ),
        (
            "/private",
            StatusCode::OK,
            &[("cache-control", "private, max-age=60")],
            "cache-control",
        ),
        (
            "/no-store",
            StatusCode::OK,
            &[("cache-control", "No-Store")],
            "cache-control",
        ),
        (
            "/no-cache",
            StatusCode::OK,
            &[("cache-control", "max-age=5, no-cache")],
            "cache-control",
        ),
        (
            "/vary",
            StatusCode::OK,
            // A list of names is stored per variant (tests/vary.rs); `*` never is.
            &[("vary", "accept-language, *")],
            "vary",
        ),
        ("/missing", StatusCode::NOT_FOUND, &[], "status"),
        ("/error", StatusCode::INTERNAL_SERVER_ERROR, &[], "status"),
        ("/created", StatusCode::CREATED, &[], "status"),
    ];
    let calls: Vec<Calls> = cases.iter().map(|_| Calls::default()).collect();
    let opted_in = Calls::default();
    let mut app = Router::new().route(
        "/missing-cached",
        counted(&opted_in, respond(StatusCode::NOT_FOUND, &[]))
            .route_layer(layer(&cache).statuses([StatusCode::OK, StatusCode::NOT_FOUND])),
    );
    for ((path, status, headers, _), calls) in cases.iter().zip(&calls) {
        app = app.route(
            path,
            counted(calls, respond(*status, headers)).route_layer(layer(&cache)),
        );
    }

    for ((uri, status, headers, detail), calls) in cases.iter().zip(&calls) {
        for n in 1..=3 {
            let r = get_req(&app, uri).await;
            assert_eq!(r.status, *status, "{uri}");
            assert_eq!(r.text(), "body");
            assert_unstored(&r, detail);
            for (k, v) in *headers {
                assert_eq!(r.header(k), *v, "{uri}: {k} reaches the client");
            }
            assert_eq!(calls.get(), n, "{uri}: the handler runs every time");
        }
    }

    // Opting in to 404.
    let r = get_req(&app, "/missing-cached").await;
    assert_eq!(
        (r.status, r.cache_status()),
        (StatusCode::NOT_FOUND, STORED)
    );
    let r = get_req(&app, "/missing-cached").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_hit(&r);
    assert_eq!(opted_in.get(), 1);

    assert_entries(&b, &cache, &["GET:/missing-cached"]).await;
}

async fn credentials_bypass(b: Backend) {
    let cache = b.cache("t_cred", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/page",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                c.inc();
                let who = headers
                    .get("authorization")
                    .or(headers.get("cookie"))
                    .map_or("anonymous", |v| v.to_str().unwrap());
                format!("page for {who}")
            }
        })
        .route_layer(layer(&cache)),
    );
    // Fill the entry anonymously first: credentialed requests must not be served from it.
    let r = get_req(&app, "/page").await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "page for anonymous"));

    let mut expected_calls = 1;
    for (h, v, detail) in [
        ("authorization", "Bearer alice", "authorization"),
        ("cookie", "session=alice", "cookie"),
    ] {
        for _ in 0..2 {
            let r = send(&app, request("GET", "/page", &[(h, v)])).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(
                r.cache_status(),
                format!("{NAME}; fwd=bypass; detail={detail}")
            );
            assert_eq!(r.text(), format!("page for {v}"));
            expected_calls += 1;
            assert_eq!(calls.get(), expected_calls);
        }
    }
    // Still only the anonymous entry, still a hit for anonymous callers.
    let r = get_req(&app, "/page").await;
    assert_hit(&r);
    assert_eq!(r.text(), "page for anonymous");
    assert_eq!(cache.stats().bypasses, 4);
    assert_entries(&b, &cache, &["GET:/page"]).await;
}

async fn keyed_by_caller(b: Backend) {
    let cache = b.cache("t_me", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/me",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                c.inc();
                let who = headers
                    .get("authorization")
                    .map_or("anonymous", |v| v.to_str().unwrap());
                format!("me: {who}")
            }
        })
        .route_layer(layer(&cache).key("me:{header.authorization}")),
    );
    let as_ = |who: &str| request("GET", "/me", &[("authorization", who)]);

    let r = send(&app, as_("Bearer alice")).await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "me: Bearer alice"));
    let r = send(&app, as_("Bearer bob")).await;
    assert_eq!(r.cache_status(), STORED, "bob must not hit alice's entry");
    assert_eq!(r.text(), "me: Bearer bob");
    for _ in 0..2 {
        for who in ["Bearer alice", "Bearer bob"] {
            let r = send(&app, as_(who)).await;
            assert_hit(&r);
            assert_eq!(r.text(), format!("me: {who}"));
        }
    }
    let r = get_req(&app, "/me").await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "me: anonymous"));
    assert_eq!(calls.get(), 3);

    if let Some(keys) = entry_keys(&b, &cache).await {
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(
            keys.iter()
                .all(|k| !k.contains("alice") && !k.contains("bob")),
            "credentials are hashed in keys: {keys:?}"
        );
    }
}

/// A route keyed by `Authorization` only must still bypass requests identified by a `Cookie`:
/// otherwise two cookie-authenticated callers (no Authorization header) share the entry `me:~`.
async fn keyed_by_authorization_still_bypasses_cookies(b: Backend) {
    let cache = b.cache("t_me_cookie", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/me",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                c.inc();
                let who = headers
                    .get("cookie")
                    .map_or("anonymous", |v| v.to_str().unwrap());
                format!("me: {who}")
            }
        })
        .route_layer(layer(&cache).key("me:{header.authorization}")),
    );
    let r = send(&app, request("GET", "/me", &[("cookie", "session=alice")])).await;
    assert_eq!(r.text(), "me: session=alice");
    let r = send(&app, request("GET", "/me", &[("cookie", "session=bob")])).await;
    assert_eq!(
        r.text(),
        "me: session=bob",
        "bob was served alice's response"
    );
    assert_eq!(
        r.cache_status(),
        format!("{NAME}; fwd=bypass; detail=cookie")
    );
}

async fn request_no_store(b: Backend) {
    let cache = b.cache("t_reqns", OP);
    let calls = Calls::default();
    let app = Router::new().route("/r", counted(&calls, || "r").route_layer(layer(&cache)));
    let no_store = || request("GET", "/r", &[("cache-control", "no-store")]);
    let r = send(&app, no_store()).await;
    assert_eq!(
        r.cache_status(),
        format!("{NAME}; fwd=bypass; detail=no-store")
    );
    assert!(
        !has_entry(&cache, "GET:/r").await,
        "a no-store request stored its response"
    );
    // Fill, then a no-store request still goes to the handler.
    assert_eq!(get_req(&app, "/r").await.cache_status(), STORED);
    let r = send(&app, no_store()).await;
    assert_eq!(
        r.cache_status(),
        format!("{NAME}; fwd=bypass; detail=no-store")
    );
    assert_eq!(calls.get(), 3);
    assert_hit(&get_req(&app, "/r").await);
    assert_eq!(calls.get(), 3);
}

async fn post_passes_through(b: Backend) {
    let cache = b.cache("t_post", OP);
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/p",
        counted(&calls, || "got")
            .post(move || {
                let c = c.clone();
                async move {
                    c.inc();
                    "posted"
                }
            })
            .route_layer(layer(&cache)),
    );
    for n in 1..=2 {
        let r = send(&app, request("POST", "/p", &[])).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "posted"));
        assert_eq!(r.cache_status(), format!("{NAME}; fwd=method"));
        assert_eq!(calls.get(), n);
    }
    assert_eq!(get_req(&app, "/p").await.cache_status(), STORED);
    let r = send(&app, request("POST", "/p", &[])).await;
    assert_eq!(
        (r.text(), r.cache_status()),
        ("posted", "tower-valkey-cache; fwd=method")
    );
    assert_hit(&get_req(&app, "/p").await);
    assert_eq!(calls.get(), 4);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.stores), (1, 1, 1), "{s:?}");
}

async fn head(b: Backend) {
    let cache = b.cache("t_head", OP);
    let (filled, fresh) = (Calls::default(), Calls::default());
    let app = Router::new()
        .route(
            "/filled",
            counted(&filled, || "hello head").route_layer(layer(&cache)),
        )
        .route(
            "/fresh",
            counted(&fresh, || "fresh body").route_layer(layer(&cache)),
        );

    assert_eq!(get_req(&app, "/filled").await.cache_status(), STORED);
    let r = send(&app, request("HEAD", "/filled", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_hit(&r);
    assert!(r.body.is_empty(), "HEAD hit with a body");
    assert_eq!(r.header("content-length"), "10");
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(filled.get(), 1);

    // A HEAD miss answers from the handler and stores nothing.
    let r = send(&app, request("HEAD", "/fresh", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_unstored(&r, "head");
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), "10");
    assert!(!has_entry(&cache, "GET:/fresh").await);
    let r = get_req(&app, "/fresh").await;
    assert_eq!((r.cache_status(), r.text()), (STORED, "fresh body"));
    assert_eq!(fresh.get(), 2);
    let r = send(&app, request("HEAD", "/fresh", &[])).await;
    assert_hit(&r);
    assert_eq!(fresh.get(), 2);
}

async fn too_large_exact_length(b: Backend) {
    let cache = b.cache("t_big", OP);
    let (big, edge) = (Calls::default(), Calls::default());
    let limit = 1000;
    let app = Router::new()
        .route(
            "/big",
            counted(&big, move || vec![b'x'; limit + 1])
                .route_layer(layer(&cache).max_body_bytes(limit)),
        )
        .route(
            "/edge",
            counted(&edge, move || vec![b'y'; limit])
                .route_layer(layer(&cache).max_body_bytes(limit)),
        );
    for n in 1..=3 {
        let r = get_req(&app, "/big").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_unstored(&r, "too-large");
        assert_eq!(r.body.len(), limit + 1);
        assert!(r.body.iter().all(|&c| c == b'x'));
        assert_eq!(big.get(), n);
    }
    let r = get_req(&app, "/edge").await;
    assert_eq!((r.cache_status(), r.body.len()), (STORED, limit));
    let r = get_req(&app, "/edge").await;
    assert_hit(&r);
    assert_eq!(r.body, vec![b'y'; limit]);
    assert_eq!(edge.get(), 1);
    assert_entries(&b, &cache, &["GET:/edge"]).await;
}

/// A body of unknown length (`Body::from_stream`) of `chunks` chunks of `size` bytes each.
fn chunked(chunks: usize, size: usize) -> Body {
    let parts: Vec<Result<Bytes, Infallible>> = (0..chunks)
        .map(|i| Ok(Bytes::from(vec![b'a' + (i % 26) as u8; size])))
        .collect();
    Body::from_stream(futures_util::stream::iter(parts))
}

fn chunked_bytes(chunks: usize, size: usize) -> Vec<u8> {
    (0..chunks)
        .flat_map(|i| std::iter::repeat_n(b'a' + (i % 26) as u8, size))
        .collect()
}

async fn streaming_unknown_length(b: Backend) {
    let cache = b.cache("t_stream", OP);
    let (big, small) = (Calls::default(), Calls::default());
    let app = Router::new()
        .route(
            "/big",
            counted(&big, || chunked(10, 1000))
                .route_layer(layer(&cache).key("big").max_body_bytes(4096)),
        )
        .route(
            "/small",
            counted(&small, || chunked(3, 100))
                .route_layer(layer(&cache).key("small").max_body_bytes(4096)),
        );

    // Grows past the limit: streamed through intact, not stored.
    let r = get_req(&app, "/big").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.cache_status(), format!("{NAME}; fwd=uri-miss"));
    assert_eq!(r.body, chunked_bytes(10, 1000));

    // Small: streamed, then stored in the background once complete.
    let r = get_req(&app, "/small").await;
    assert_eq!(r.cache_status(), format!("{NAME}; fwd=uri-miss"));
    assert_eq!(r.body, chunked_bytes(3, 100));
    eventually(POLL, "the streamed body to be stored", || async {
        has_entry(&cache, "small").await.then_some(())
    })
    .await;
    let r = get_req(&app, "/small").await;
    assert_hit(&r);
    assert_eq!(r.body, chunked_bytes(3, 100));
    assert_eq!(small.get(), 1);

    // By now a fill of the big body would have landed too: it did not.
    let r = get_req(&app, "/big").await;
    assert_eq!(r.cache_status(), format!("{NAME}; fwd=uri-miss"));
    assert_eq!(r.body, chunked_bytes(10, 1000));
    assert_eq!(big.get(), 2);
    assert!(!has_entry(&cache, "big").await);
    assert_eq!(cache.stats().stores, 1);
    assert_entries(&b, &cache, &["small"]).await;
}

/// Over real TCP: a body of unknown length reaches the client chunk by chunk while the handler is
/// still producing it (the cache does not buffer it), and is stored once complete.
async fn streaming_first_byte_over_tcp(b: Backend) {
    let cache = b.cache("t_tcp", OP);
    let calls = Calls::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let app = Router::new().route(
        "/live",
        get(move || {
            let (c, g) = (c.clone(), g.clone());
            async move {
                c.inc();
                let stream = futures_util::stream::unfold(0u8, move |step| {
                    let g = g.clone();
                    async move {
                        match step {
                            0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"first,")), 1)),
                            1 => {
                                g.acquire().await.expect("gate").forget();
                                Some((Ok(Bytes::from_static(b"second")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Body::from_stream(stream)
            }
        })
        .route_layer(layer(&cache).key("live")),
    );
    let server = support::HttpServer::start(app).await;
    let client = support::http_client();

    let res = support::http_get(&client, &server.url("/live")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["cache-status"],
        "tower-valkey-cache; fwd=uri-miss"
    );
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrives while the handler is blocked")
        .expect("a frame")
        .expect("no error")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"first,");
    assert!(!has_entry(&cache, "live").await, "stored before complete");
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("rest of the body")
        .expect("body")
        .to_bytes();
    assert_eq!(&rest[..], b"second");

    eventually(POLL, "the streamed body to be stored", || async {
        has_entry(&cache, "live").await.then_some(())
    })
    .await;
    let r = support::collect(support::http_get(&client, &server.url("/live")).await).await;
    assert_hit(&r);
    assert_eq!(r.text(), "first,second");
    assert_eq!(calls.get(), 1);
}

async fn missing_path_param(b: Backend) {
    let cache = b.cache("t_keyerr", OP);
    let (plain, other) = (Calls::default(), Calls::default());
    let app = Router::new()
        .route(
            "/plain",
            counted(&plain, || "plain").route_layer(layer(&cache).key("user:{id}")),
        )
        .route(
            "/things/{thing}",
            counted(&other, || "thing").route_layer(layer(&cache).key("user:{id}")),
        );
    for n in 1..=2 {
        for (uri, calls, body) in [("/plain", &plain, "plain"), ("/things/1", &other, "thing")] {
            let r = get_req(&app, uri).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}");
            assert_eq!(r.text(), body);
            assert_eq!(
                r.cache_status(),
                format!("{NAME}; fwd=bypass; detail=key-error")
            );
            assert_eq!(calls.get(), n);
        }
    }
    assert_entries(&b, &cache, &[]).await;
}

async fn corrupt_entry(b: Backend) {
    let cache = b.cache("t_corrupt", OP);
    let calls = Calls::default();
    let app = Router::new().route(
        "/c/{n}",
        counted(&calls, || "fresh").route_layer(layer(&cache).key("c:{n}")),
    );
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
    let mut other_version = valid.to_vec();
    other_version[3] = 99;
    let corrupt: [&[u8]; 5] = [
        b"not an entry",
        b"",
        b"{\"json\":true}",
        &valid[..valid.len() - 1],
        &other_version,
    ];
    for (i, raw) in corrupt.iter().enumerate() {
        let key = format!("c:{i}");
        b.put_raw(&cache.key_space().entry(&key), raw).await;
        let before = cache.stats().decode_failures;
        let r = get_req(&app, &format!("/c/{i}")).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "fresh"), "case {i}");
        assert_eq!(
            r.cache_status(),
            STORED,
            "case {i}: the corrupt value is overwritten"
        );
        assert_eq!(cache.stats().decode_failures, before + 1, "case {i}");
        let now = stored(&cache, &key).await.expect("overwritten entry");
        assert_eq!(Entry::decode(&now).expect("decodes").body, "fresh");
        let r = get_req(&app, &format!("/c/{i}")).await;
        assert_hit(&r);
        assert_eq!(r.text(), "fresh");
        assert_eq!(calls.get(), i + 1);
    }
    assert_eq!(cache.stats().decode_failures, corrupt.len() as u64);
}

/// Valkey killed mid-test: requests are served by the handler; once it is back, caching resumes.
async fn valkey_stopped_and_restarted(mut b: Backend) {
    let cache = b
        .builder("t_down", OP)
        .timeout(Duration::from_millis(500))
        .circuit_breaker(2, Duration::from_millis(100))
        .build();
    let calls = Calls::default();
    let app = Router::new().route("/d", counted(&calls, || "up").route_layer(layer(&cache)));
    assert_eq!(get_req(&app, "/d").await.cache_status(), STORED);
    assert_hit(&get_req(&app, "/d").await);

    b.server_mut().stop();
    for n in 1..=5 {
        let r = get_req(&app, "/d").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "up"));
        assert_eq!(
            r.cache_status(),
            format!("{NAME}; fwd=miss; detail=store-unavailable")
        );
        assert_eq!(calls.get(), 1 + n);
    }
    let s = cache.stats();
    assert_eq!(s.store_unavailable, 5, "{s:?}");
    assert!(s.breaker_opened >= 1, "{s:?}");
    assert!(cache.is_degraded());

    b.server_mut().restart();
    // The restarted server is empty: the next lookups miss, one stores, then hits follow.
    let r = eventually(POLL, "caching to resume after the restart", || async {
        let r = get_req(&app, "/d").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "up"));
        r.is_hit().then_some(r)
    })
    .await;
    assert_hit(&r);
    assert!(!cache.is_degraded());
    assert!(cache.stats().breaker_closed >= 1);
    assert_entries(&b, &cache, &["GET:/d"]).await;
}

/// Valkey frozen (SIGSTOP): requests answer from the handler within the operation timeout instead
/// of hanging; once it resumes, entries are served again.
async fn valkey_paused(b: Backend) {
    let server = b
        .server()
        .expect("this scenario needs a single Valkey server");
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .response_timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let op_timeout = Duration::from_millis(200);
    let cache = Cache::builder(store)
        .namespace("t_pause")
        .timeout(op_timeout)
        .circuit_breaker(3, Duration::from_millis(100))
        .build();
    let calls = Calls::default();
    let app = Router::new().route("/s", counted(&calls, || "slow").route_layer(layer(&cache)));
    assert_eq!(get_req(&app, "/s").await.cache_status(), STORED);
    assert_hit(&get_req(&app, "/s").await);

    server.pause();
    for n in 1..=4 {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), get_req(&app, "/s"))
            .await
            .expect("a request hung on a frozen Valkey");
        assert_eq!((r.status, r.text()), (StatusCode::OK, "slow"));
        assert_eq!(
            r.cache_status(),
            format!("{NAME}; fwd=miss; detail=store-unavailable")
        );
        assert_eq!(calls.get(), 1 + n);
        // Generous guard: one operation timeout plus scheduling slack on a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(cache.stats().store_errors >= 1);
    server.resume();

    // The entry survived the freeze: once the breaker lets a probe through, it hits again.
    let r = eventually(POLL, "hits after the server resumed", || async {
        let r = get_req(&app, "/s").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "slow"));
        r.is_hit().then_some(r)
    })
    .await;
    assert_eq!(r.text(), "slow");
    assert!(!cache.is_degraded());
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        miss_then_hit,
        key_templates,
        key_escaping,
        query_normalisation,
        separator_values_keep_entries_apart,
        query_keys_see_what_the_handler_sees,
        numeric_spellings_share_one_entry,
        outdated_entries_are_plain_misses,
        quickstart_rejects_bad_pages_on_every_request,
        never_cached_responses,
        credentials_bypass,
        keyed_by_caller,
        request_no_store,
        post_passes_through,
        head,
        too_large_exact_length,
        streaming_unknown_length,
        streaming_first_byte_over_tcp,
        missing_path_param,
        corrupt_entry,
        valkey_stopped_and_restarted,
        valkey_paused,
    );
}

/// The same scenarios on a Valkey Cluster (shared by this binary's cluster tests).
mod cluster {
    crate::support::on!(super::Backend::cluster(super::CLUSTER) =>
        miss_then_hit,
        key_templates,
        key_escaping,
        query_normalisation,
        never_cached_responses,
        credentials_bypass,
        keyed_by_caller,
        request_no_store,
        head,
        streaming_unknown_length,
        missing_path_param,
        corrupt_entry,
    );
}

/// The layer's scenarios in a namespace of 8 shards (one server, MemoryStore) and of 128 on
/// the cluster.
mod valkey_sharded {
    crate::support::on!(super::Backend::valkey(super::VALKEY).sharded(8) =>
        miss_then_hit,
        key_templates,
        key_escaping,
        query_normalisation,
        separator_values_keep_entries_apart,
        never_cached_responses,
        credentials_bypass,
        keyed_by_caller,
        head,
        corrupt_entry,
    );
}

mod cluster_sharded {
    crate::support::on!(super::Backend::cluster(super::CLUSTER).sharded(128) =>
        miss_then_hit,
        key_templates,
        key_escaping,
        keyed_by_caller,
        corrupt_entry,
    );
}

mod memory_sharded {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()).sharded(8) =>
        miss_then_hit,
        key_templates,
        key_escaping,
        query_normalisation,
        separator_values_keep_entries_apart,
        never_cached_responses,
        credentials_bypass,
        keyed_by_caller,
        head,
        corrupt_entry,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        miss_then_hit,
        key_templates,
        key_escaping,
        query_normalisation,
        separator_values_keep_entries_apart,
        query_keys_see_what_the_handler_sees,
        numeric_spellings_share_one_entry,
        outdated_entries_are_plain_misses,
        quickstart_rejects_bad_pages_on_every_request,
        never_cached_responses,
        credentials_bypass,
        keyed_by_caller,
        request_no_store,
        post_passes_through,
        head,
        too_large_exact_length,
        streaming_unknown_length,
        streaming_first_byte_over_tcp,
        missing_path_param,
        corrupt_entry,
    );
}

// A key that includes *one* credential header (`{header.authorization}`) must not let requests
// carrying *another* (`Cookie`) use the cache: they would share the entry `me:~`.
#[tokio::test]
async fn valkey_keyed_by_authorization_still_bypasses_cookies() {
    keyed_by_authorization_still_bypasses_cookies(Backend::valkey(VALKEY)).await
}

#[tokio::test]
async fn memory_keyed_by_authorization_still_bypasses_cookies() {
    keyed_by_authorization_still_bypasses_cookies(Backend::memory(MemoryStore::new())).await
}

// ---------------------------------------------------------------------------------------------
// Hits answered without waiting

/// Polls `fut` once with a waker that does nothing, on whatever thread calls this (no runtime).
fn poll_once<F: std::future::Future>(fut: F) -> std::task::Poll<F::Output> {
    let mut fut = std::pin::pin!(fut);
    fut.as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// A hit on an in-process store is answered inside the service's `call` (`start`): its future
/// is ready on the first poll, also on a thread with no runtime. One whose
/// stale-while-revalidate refresh is due is served the same way, without starting the refresh
/// (which needs a runtime) rather than panicking; a request on the runtime then refreshes it.
#[test]
fn in_process_hits_are_ready_at_once_even_without_a_runtime() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        get(move |Path(id): Path<String>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("item {id} v{n}") }
        })
    };
    let cache = Cache::builder(MemoryStore::new())
        .namespace("ready")
        .build();
    let app = Router::new().route(
        "/item/{id}",
        handler.route_layer(
            CacheLayer::new(cache)
                .key("item:{id}")
                .ttl(Duration::from_millis(300))
                .stale_while_revalidate(Duration::from_secs(60)),
        ),
    );
    let first = rt.block_on(get_req(&app, "/item/1"));
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "item 1 v1");

    let off_runtime = |app: Router| {
        std::thread::spawn(move || {
            use tower::Service;
            let mut app = app;
            let fut = app.call(request("GET", "/item/1", &[]));
            match poll_once(fut) {
                std::task::Poll::Ready(Ok(res)) => res,
                std::task::Poll::Ready(Err(e)) => match e {},
                std::task::Poll::Pending => panic!("an in-process hit was not ready at once"),
            }
        })
        .join()
        .expect("no panic off the runtime")
    };
    let fresh = off_runtime(app.clone());
    assert_eq!(fresh.status(), StatusCode::OK);
    let status = fresh.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(status.contains("; hit"), "{status}");
    let body = rt.block_on(fresh.into_body().collect()).unwrap().to_bytes();
    assert_eq!(body, "item 1 v1");

    std::thread::sleep(Duration::from_millis(400));
    let stale = off_runtime(app.clone());
    let status = stale.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status.contains("; hit") && status.contains("ttl=-"),
        "a stale hit: {status}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no refresh started off the runtime"
    );

    // On the runtime the stale hit starts its refresh.
    let again = rt.block_on(get_req(&app, "/item/1"));
    assert_eq!(again.body, "item 1 v1");
    rt.block_on(eventually(POLL, "the refresh", || {
        let calls = calls.clone();
        async move { (calls.load(Ordering::SeqCst) == 2).then_some(()) }
    }));
}

/// A bounded route on a sharded namespace keeps its entries and index on shard 0
/// (`KeySpace::bounded`): it holds exactly its capacity, and a key invalidation from another
/// cache of the namespace that has no bounded route (another process) still removes its entries.
#[tokio::test]
async fn a_bounded_route_on_a_sharded_namespace_keeps_its_bound_and_sees_invalidations() {
    let store = MemoryStore::new();
    let cache = Cache::builder(store.clone())
        .namespace("t_bounded_sharded")
        .shards(4)
        .build();
    let other = Cache::builder(store)
        .namespace("t_bounded_sharded")
        .shards(4)
        .build();
    let app = axum::Router::new().route(
        "/item/{id}",
        axum::routing::get(
            |axum::extract::Path(id): axum::extract::Path<u32>| async move { format!("item {id}") },
        )
        .route_layer(
            CacheLayer::new(cache.clone())
                .key("item:{id}")
                .eviction(tower_valkey_cache::eviction::Lru::with_capacity(3)),
        ),
    );
    for id in 0..10 {
        let uri = format!("/item/{id}");
        assert!(!support::get(&app, &uri).await.is_hit(), "{uri}");
        assert!(support::get(&app, &uri).await.is_hit(), "{uri}");
    }
    assert_eq!(cache.stats().evictions, 7);
    let mut live = Vec::new();
    for id in 0..10 {
        if support::has_bounded_entry(&cache, &format!("item:{id}")).await {
            live.push(id);
        }
    }
    assert_eq!(
        live,
        [7, 8, 9],
        "the three most recently used, all in shard 0"
    );
    // Keys of several shards: each invalidation reaches shard 0 as well as the key's own.
    for id in [7, 8, 9] {
        assert_eq!(
            other.invalidate_key(&format!("item:{id}")).await.unwrap(),
            1
        );
        assert!(!support::get(&app, &format!("/item/{id}")).await.is_hit());
    }
    let shards: std::collections::BTreeSet<usize> = [7, 8, 9]
        .iter()
        .map(|id| cache.key_space().shard_of(&format!("item:{id}")))
        .collect();
    assert!(
        shards.iter().any(|&s| s != 0),
        "{shards:?}: no key outside shard 0"
    );
}
