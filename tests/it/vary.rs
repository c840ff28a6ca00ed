//! `Vary`: one entry per variant, learned from the response, on real Valkey. Each client gets
//! its own variant, equivalent `Accept-Encoding` fields share one, `Vary: *` is never stored,
//! invalidating the route's key (by key, pattern or tag) removes every variant, and fills racing
//! invalidations never bring a pre-invalidation variant back.

use crate::support;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{request, send, ValkeyServer};
use tower_valkey_cache::{Cache, CacheLayer, ValkeyConfig, ValkeyStore};

fn valkey_cache(server: &ValkeyServer, ns: &str) -> Cache {
    valkey_builder(server, ns).build()
}

fn valkey_builder(server: &ValkeyServer, ns: &str) -> tower_valkey_cache::CacheBuilder {
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2)),
    )
    .expect("store");
    Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(2))
}

/// A handler answering `VERSION:HEADER-VALUE` with `Vary: vary`, counting its calls; the version
/// is read from `version` (bumped by the tests before they invalidate).
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    version: Arc<AtomicU64>,
}

impl Origin {
    fn new() -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            version: Arc::new(AtomicU64::new(1)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn route(&self, vary: &'static str, header: &'static str) -> axum::routing::MethodRouter {
        let o = self.clone();
        get(move |headers: HeaderMap| {
            let o = o.clone();
            async move {
                o.calls.fetch_add(1, Ordering::SeqCst);
                let v = o.version.load(Ordering::SeqCst);
                let value = headers
                    .get(header)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "-".into());
                ([("vary", vary)], format!("{v}:{value}")).into_response()
            }
        })
    }
}

async fn get_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> support::Resp {
    let res = send(app, request("GET", uri, headers)).await;
    assert_eq!(res.status, StatusCode::OK);
    res
}

#[tokio::test]
async fn accept_language_clients_get_their_own_variants() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_lang");
    let origin = Origin::new();
    let app = Router::new().route(
        "/page",
        origin
            .route("Accept-Language", "accept-language")
            .route_layer(CacheLayer::new(cache.clone()).tags(["page"])),
    );
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];

    let a = get_with(&app, "/page", &en).await;
    assert_eq!(a.text(), "1:en");
    assert!(a.cache_status().contains("stored"), "{}", a.cache_status());
    assert_eq!(
        a.header("vary"),
        "Accept-Language",
        "Vary is kept for clients"
    );
    let b = get_with(&app, "/page", &fr).await;
    assert_eq!(b.text(), "1:fr");
    assert!(
        !b.is_hit(),
        "fr must not get the en variant: {}",
        b.cache_status()
    );
    assert_eq!(origin.calls(), 2);

    for _ in 0..3 {
        let a = get_with(&app, "/page", &en).await;
        assert!(a.is_hit(), "{}", a.cache_status());
        assert_eq!(a.text(), "1:en");
        let b = get_with(&app, "/page", &fr).await;
        assert!(b.is_hit(), "{}", b.cache_status());
        assert_eq!(b.text(), "1:fr");
    }
    // Whitespace and case of the header name do not make a new variant.
    let a = get_with(&app, "/page", &[("Accept-Language", " en ")]).await;
    assert!(a.is_hit());
    assert_eq!(a.text(), "1:en");
    assert_eq!(origin.calls(), 2);

    // An absent header is its own variant, distinct from an empty one.
    let none = get_with(&app, "/page", &[]).await;
    assert_eq!(none.text(), "1:-");
    let empty = get_with(&app, "/page", &[("accept-language", "")]).await;
    assert_eq!(empty.text(), "1:");
    assert_eq!(origin.calls(), 4);
    assert!(get_with(&app, "/page", &[]).await.is_hit());
    assert!(get_with(&app, "/page", &[("accept-language", "")])
        .await
        .is_hit());
    assert_eq!(origin.calls(), 4);

    // HEAD is answered from the requester's variant.
    let head = send(&app, request("HEAD", "/page", &fr)).await;
    assert!(head.is_hit(), "{}", head.cache_status());
    assert_eq!(head.header("content-length"), "4");

    // One marker at the route's key and one entry per variant.
    let keys = server.keys("vary_lang:*").await;
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| !k.contains("#vary:")).count(),
        1,
        "{keys:?}"
    );
}

#[tokio::test]
async fn equivalent_accept_encodings_share_a_variant() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_enc");
    let origin = Origin::new();
    let app = Router::new().route(
        "/asset",
        origin
            .route("accept-encoding", "accept-encoding")
            .route_layer(CacheLayer::new(cache.clone()).served_encodings(["gzip", "br"])),
    );
    let first = get_with(&app, "/asset", &[("accept-encoding", "gzip, deflate, br")]).await;
    assert!(!first.is_hit());
    for same in [
        "br;q=1, gzip",
        "BR, gzip;q=0.5, zstd",
        "*",
        "gzip,br, compress",
    ] {
        let r = get_with(&app, "/asset", &[("accept-encoding", same)]).await;
        assert!(r.is_hit(), "{same}: {}", r.cache_status());
        assert_eq!(r.text(), "1:gzip, deflate, br", "{same}");
    }
    assert_eq!(origin.calls(), 1);

    // gzip only is another variant; `br` refused with q=0 is the same one.
    let gzip = get_with(&app, "/asset", &[("accept-encoding", "gzip")]).await;
    assert!(!gzip.is_hit());
    let gzip2 = get_with(&app, "/asset", &[("accept-encoding", "br;q=0, x-gzip")]).await;
    assert!(gzip2.is_hit(), "{}", gzip2.cache_status());
    assert_eq!(gzip2.text(), "1:gzip");
    // Nothing served accepted: identity, shared by every such client.
    let id = get_with(&app, "/asset", &[("accept-encoding", "identity")]).await;
    assert!(!id.is_hit());
    let id2 = get_with(&app, "/asset", &[("accept-encoding", "deflate, *;q=0")]).await;
    assert!(id2.is_hit(), "{}", id2.cache_status());
    assert_eq!(id2.text(), "1:identity");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_star");
    let origin = Origin::new();
    let app = Router::new().route(
        "/any",
        origin
            .route("*", "accept-language")
            .route_layer(CacheLayer::new(cache.clone())),
    );
    for _ in 0..3 {
        let r = get_with(&app, "/any", &[("accept-language", "en")]).await;
        assert!(
            r.cache_status().contains("detail=vary") && !r.cache_status().contains("stored"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(origin.calls(), 3);
    assert!(server.keys("vary_star:*").await.is_empty());
}

/// Fills `en` and `fr` variants, checks both hit, runs `invalidate`, and checks that both clients
/// miss next and get the new version.
async fn invalidation_removes_every_variant(how: &str) {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_inv");
    let origin = Origin::new();
    let app = Router::new().route(
        "/items/{id}",
        origin
            .route("accept-language", "accept-language")
            .route_layer(
                CacheLayer::new(cache.clone())
                    .key("item:{id}")
                    .tags(["item:{id}"]),
            ),
    );
    let clients = [[("accept-language", "en")], [("accept-language", "fr")]];
    for c in &clients {
        get_with(&app, "/items/1", c).await;
        get_with(&app, "/items/2", c).await;
    }
    for c in &clients {
        assert!(get_with(&app, "/items/1", c).await.is_hit());
    }
    assert_eq!(origin.calls(), 4);

    origin.version.fetch_add(1, Ordering::SeqCst);
    match how {
        "key" => cache.invalidate_key("item:1").await.map(|_| ()),
        "pattern" => cache.invalidate_pattern("item:1*").await.map(|_| ()),
        "tag" => cache.invalidate_tag("item:1").await.map(|_| ()),
        _ => unreachable!(),
    }
    .expect("invalidate");

    for (c, lang) in clients.iter().zip(["en", "fr"]) {
        let r = get_with(&app, "/items/1", c).await;
        assert!(
            !r.is_hit(),
            "{how}: {lang} after invalidation: {}",
            r.cache_status()
        );
        assert_eq!(r.text(), format!("2:{lang}"), "{how}");
    }
    for (c, lang) in clients.iter().zip(["en", "fr"]) {
        let r = get_with(&app, "/items/1", c).await;
        assert!(r.is_hit(), "{how}: refilled {lang}: {}", r.cache_status());
        assert_eq!(r.text(), format!("2:{lang}"));
        // The other resource's variants were not touched.
        let other = get_with(&app, "/items/2", c).await;
        assert!(other.is_hit(), "{how}: {}", other.cache_status());
        assert_eq!(other.text(), format!("1:{lang}"));
    }
    assert_eq!(origin.calls(), 6, "{how}");
}

#[tokio::test]
async fn invalidating_the_key_removes_every_variant() {
    invalidation_removes_every_variant("key").await;
}

#[tokio::test]
async fn invalidating_a_pattern_removes_every_variant() {
    invalidation_removes_every_variant("pattern").await;
}

#[tokio::test]
async fn invalidating_a_tag_removes_every_variant() {
    invalidation_removes_every_variant("tag").await;
}

/// Concurrent first requests of different variants on a cold key: single-flight must not hand
/// one language's body to a follower asking for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_variants_never_share_a_body() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_flight");
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        get(move |headers: HeaderMap| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let lang = headers["accept-language"].to_str().unwrap().to_owned();
                ([("vary", "accept-language")], lang).into_response()
            }
        })
    };
    let app = Router::new().route(
        "/hot",
        handler.route_layer(CacheLayer::new(cache.clone()).lock(Duration::from_secs(2))),
    );
    let mut wrong = 0;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for n in 0..24 {
            let app = app.clone();
            let lang = ["en", "fr", "de"][n % 3];
            tasks.push(tokio::spawn(async move {
                let r = get_with(&app, "/hot", &[("accept-language", lang)]).await;
                usize::from(r.text() != lang)
            }));
        }
        for t in tasks {
            wrong += t.await.unwrap();
        }
        cache.invalidate_key("GET:/hot").await.unwrap();
        assert!(calls.load(Ordering::SeqCst) >= 3 * (round + 1));
    }
    assert_eq!(wrong, 0, "responses carrying another variant's body");
}

/// Readers of three variants and writers that bump the version and invalidate (by key, pattern
/// or tag) race on real Valkey. A violation is a read that started after an
/// invalidation was acknowledged and answered a version older than the one it covered.
async fn race(how: &'static str) {
    const IDS: usize = 4;
    const READERS: usize = 12;
    const WRITERS: usize = 3;
    const OPS: usize = 6_000;
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, &format!("vary_race_{how}"));
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..IDS).map(|_| AtomicU64::new(1)).collect());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..IDS).map(|_| AtomicU64::new(1)).collect());
    let read = {
        let db = db.clone();
        get(
            move |Path(id): Path<usize>, headers: HeaderMap| async move {
                let v = db[id].load(Ordering::SeqCst);
                // Slow after reading the database, so invalidations land in the gap.
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..4_000))).await;
                let lang = headers["accept-language"].to_str().unwrap().to_owned();
                ([("vary", "accept-language")], format!("{v}:{lang}")).into_response()
            },
        )
    };
    let app = Router::new().route(
        "/items/{id}",
        read.route_layer(
            CacheLayer::new(cache.clone())
                .key("item:{id}")
                .tags(["item:{id}"]),
        ),
    );
    let ops = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..READERS + WRITERS {
        let (app, ops, acked, db, cache) = (
            app.clone(),
            ops.clone(),
            acked.clone(),
            db.clone(),
            cache.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut violations, mut hits, mut reads, mut writes, mut wrong) = (0, 0, 0, 0, 0);
            while ops.fetch_add(1, Ordering::SeqCst) < OPS {
                let id = fastrand::usize(0..IDS);
                if n < WRITERS {
                    let v = db[id].fetch_add(1, Ordering::SeqCst) + 1;
                    match how {
                        "key" => cache.invalidate_key(&format!("item:{id}")).await,
                        "pattern" => cache.invalidate_pattern(&format!("item:{id}")).await,
                        _ => cache.invalidate_tag(&format!("item:{id}")).await,
                    }
                    .expect("invalidate");
                    acked[id].fetch_max(v, Ordering::SeqCst);
                    writes += 1;
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3_000))).await;
                } else {
                    let lang = ["en", "fr", "de"][fastrand::usize(0..3)];
                    let floor = acked[id].load(Ordering::SeqCst);
                    let r =
                        get_with(&app, &format!("/items/{id}"), &[("accept-language", lang)]).await;
                    let (v, l) = r.text().split_once(':').unwrap();
                    violations += usize::from(v.parse::<u64>().unwrap() < floor);
                    wrong += usize::from(l != lang);
                    hits += usize::from(r.is_hit());
                    reads += 1;
                }
            }
            (violations, hits, reads, writes, wrong)
        }));
    }
    let (mut violations, mut hits, mut reads, mut writes, mut wrong) = (0, 0, 0, 0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        violations += r.0;
        hits += r.1;
        reads += r.2;
        writes += r.3;
        wrong += r.4;
    }
    println!(
        "{how}: {reads} reads ({hits} hits), {writes} invalidations: {violations} violations, {wrong} wrong variants; {:?}",
        cache.stats()
    );
    assert!(
        hits > 0 && writes > 100,
        "the race exercised hits and invalidations"
    );
    assert_eq!(wrong, 0, "a client got another variant");
    assert_eq!(
        violations, 0,
        "a pre-invalidation body was served after the invalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_fills_racing_key_invalidations_never_serve_old_bodies() {
    race("key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_fills_racing_pattern_invalidations_never_serve_old_bodies() {
    race("pattern").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_fills_racing_tag_invalidations_never_serve_old_bodies() {
    race("tag").await;
}

/// The L1 tier holds markers and variants like any entry; invalidation reaches both.
#[tokio::test]
async fn variants_through_the_l1_tier() {
    let server = ValkeyServer::start();
    let cache = valkey_builder(&server, "vary_l1")
        .l1(1_000, Duration::from_secs(60))
        .build();
    let origin = Origin::new();
    let app = Router::new().route(
        "/page",
        origin
            .route("accept-language", "accept-language")
            .route_layer(CacheLayer::new(cache.clone()).key("page")),
    );
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    for _ in 0..3 {
        assert_eq!(get_with(&app, "/page", &en).await.text(), "1:en");
        assert_eq!(get_with(&app, "/page", &fr).await.text(), "1:fr");
    }
    assert_eq!(origin.calls(), 2);
    let l1 = cache.l1_stats().expect("l1 on");
    assert!(l1.hits > 0, "{l1:?}");
    origin.version.fetch_add(1, Ordering::SeqCst);
    cache.invalidate_key("page").await.unwrap();
    assert_eq!(get_with(&app, "/page", &en).await.text(), "2:en");
    assert_eq!(get_with(&app, "/page", &fr).await.text(), "2:fr");
    assert_eq!(origin.calls(), 4);
}

/// A stale variant is served to its own clients while one background refresh per variant runs,
/// and the refresh stores that variant (not another).
#[tokio::test]
async fn stale_while_revalidate_refreshes_each_variant() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_swr");
    let origin = Origin::new();
    let app = Router::new().route(
        "/page",
        origin
            .route("accept-language", "accept-language")
            .route_layer(
                CacheLayer::new(cache.clone())
                    .ttl(Duration::from_millis(300))
                    .stale_while_revalidate(Duration::from_secs(30)),
            ),
    );
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    get_with(&app, "/page", &en).await;
    get_with(&app, "/page", &fr).await;
    origin.version.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = get_with(&app, "/page", &en).await;
    assert!(a.cache_status().contains("ttl=-"), "{}", a.cache_status());
    assert_eq!(a.text(), "1:en");
    let b = get_with(&app, "/page", &fr).await;
    assert_eq!(b.text(), "1:fr");
    let en2 = support::eventually(Duration::from_secs(5), "en refreshed", || {
        let app = app.clone();
        async move {
            let r = get_with(&app, "/page", &en).await;
            (r.text() == "2:en").then_some(r)
        }
    })
    .await;
    assert!(en2.is_hit());
    let fr2 = support::eventually(Duration::from_secs(5), "fr refreshed", || {
        let app = app.clone();
        async move {
            let r = get_with(&app, "/page", &fr).await;
            (r.text() == "2:fr").then_some(r)
        }
    })
    .await;
    assert!(fr2.is_hit());
    assert_eq!(origin.calls(), 4);
}

/// In a count-bounded namespace markers and variants are entries like any other: evicting a
/// marker only makes its variants unreachable. Whatever is evicted, every answer is the
/// requester's own variant of the requested resource, never a marker.
#[tokio::test]
async fn variants_in_a_bounded_namespace_never_serve_a_marker_or_another_variant() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_evict");
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        get(move |Path(id): Path<u32>, headers: HeaderMap| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let lang = headers["accept-language"].to_str().unwrap().to_owned();
                ([("vary", "accept-language")], format!("{id}:{lang}")).into_response()
            }
        })
    };
    let app = Router::new().route(
        "/p/{id}",
        handler.route_layer(
            CacheLayer::new(cache.clone())
                .key("p:{id}")
                .eviction(tower_valkey_cache::eviction::Lru::with_capacity(5)),
        ),
    );
    let mut hits = 0;
    for _ in 0..200 {
        let id = fastrand::u32(0..4);
        let lang = ["en", "fr"][fastrand::usize(0..2)];
        let r = get_with(&app, &format!("/p/{id}"), &[("accept-language", lang)]).await;
        assert_eq!(r.text(), format!("{id}:{lang}"), "{}", r.cache_status());
        hits += usize::from(r.is_hit());
    }
    assert!(hits > 0, "some requests hit");
    assert!(
        calls.load(Ordering::SeqCst) > 8,
        "the bound evicted entries"
    );
    assert!(server.keys("vary_evict:*").await.len() <= 5);
}

/// Conditional requests are answered per variant: one language's validator does not match
/// another's representation.
#[tokio::test]
async fn conditional_requests_per_variant() {
    let server = ValkeyServer::start();
    let cache = valkey_cache(&server, "vary_304");
    let origin = Origin::new();
    let app = Router::new().route(
        "/page",
        origin
            .route("accept-language", "accept-language")
            .route_layer(CacheLayer::new(cache.clone())),
    );
    let en = get_with(&app, "/page", &[("accept-language", "en")]).await;
    let fr = get_with(&app, "/page", &[("accept-language", "fr")]).await;
    let (en_tag, fr_tag) = (en.header("etag").to_owned(), fr.header("etag").to_owned());
    assert_ne!(en_tag, fr_tag);
    let r = send(
        &app,
        request(
            "GET",
            "/page",
            &[("accept-language", "en"), ("if-none-match", &en_tag)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get_with(
        &app,
        "/page",
        &[("accept-language", "fr"), ("if-none-match", &en_tag)],
    )
    .await;
    assert!(r.is_hit());
    assert_eq!(r.text(), "1:fr");
    assert_eq!(origin.calls(), 2);
}
