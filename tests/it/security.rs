//! The claims of SECURITY.md that no other test file backs: a least-privilege Valkey ACL user runs
//! every feature, TLS (`rediss://`) verifies the server, credentials never show in `Debug`,
//! namespaces and patterns cannot reach other keys, and what someone who can write to Valkey can
//! (serve forged entries) and cannot (break requests) do.

use crate::support;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::Router;
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{get as get_req, request, send, ValkeyServer};
use tower_valkey_cache::entry::{now_ms, Entry};
use tower_valkey_cache::eviction::{Lru, ValkeyLruCache};
use tower_valkey_cache::function::Options;
use tower_valkey_cache::{
    Cache, CacheLayer, InvalidateLayer, MemoryStore, ValkeyConfig, ValkeyStore,
};

/// Every command the crate sends, directly or from its Lua scripts, for namespace `app`, the
/// standalone bounded cache `recent` and L1 (the rule SECURITY.md documents).
const ACL_RULE: &str = "on >s3cret resetkeys ~app:* ~app|* ~{recent}* resetchannels &app|inv \
    -@all +ping +unwatch +client|setinfo \
    +get +mget +set +del +unlink +exists +incr +pttl +pexpire +persist +rename +scan \
    +sadd +srem +smembers +srandmember +spop \
    +zadd +zcard +zcount +zrange +zrangebyscore +zrevrange +zrem +zscore +zpopmin +zpopmax \
    +time +evalsha +script|load +publish +subscribe";

fn store(url: &str) -> ValkeyStore {
    ValkeyStore::with_config(
        ValkeyConfig::from_url(url)
            .connect_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .wait_timeout(Duration::from_secs(2)),
    )
    .unwrap()
}

async fn commandstats(server: &ValkeyServer) -> BTreeSet<String> {
    let info: String = server.cli(&["INFO", "commandstats"]).await;
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split(':').next())
        .map(str::to_owned)
        .collect()
}

/// The documented ACL rule is enough for every feature (layer with fill lock, tags, eviction and
/// L1; invalidation by key, tag and pattern; the function cache and batches; a standalone bounded
/// cache) and the user it defines can do nothing else: no other keys, no other commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_acl_user_runs_every_feature() {
    let server = ValkeyServer::start();
    let mut setuser = vec!["ACL", "SETUSER", "cache"];
    setuser.extend(ACL_RULE.split_whitespace());
    let () = server.cli(&setuser).await;
    let () = server.cli(&["SET", "other:secret", "x"]).await;
    let () = server.cli(&["CONFIG", "RESETSTAT"]).await;
    let url = format!("redis://cache:s3cret@127.0.0.1:{}/", server.port());

    let cache = Cache::builder(store(&url))
        .namespace("app")
        .timeout(Duration::from_secs(2))
        .l1(100, Duration::from_secs(5))
        .build();
    let bounded = Cache::builder(store(&url))
        .namespace("app")
        .timeout(Duration::from_secs(2))
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<String>| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    format!("item {id}")
                }
            })
            .route_layer(
                CacheLayer::new(cache.clone())
                    .key("item:{id}")
                    .tags(["items"])
                    .lock(Duration::from_secs(2))
                    .stale_while_revalidate(Duration::from_secs(5)),
            ),
        )
        .route(
            "/items/{id}",
            put(|| async { "ok" }).route_layer(
                InvalidateLayer::new(cache.clone())
                    .keys(["item:{id}"])
                    .patterns(["item:{id}*"])
                    .tags(["items"]),
            ),
        )
        .route(
            "/lru/{id}",
            get(|Path(id): Path<String>| async move { id }).route_layer(
                CacheLayer::new(bounded.clone())
                    .key("lru:{id}")
                    .eviction(Lru::with_capacity(2)),
            ),
        );

    for id in ["1", "2"] {
        let uri = format!("/items/{id}");
        assert!(get_req(&app, &uri).await.cache_status().ends_with("stored"));
        assert!(get_req(&app, &uri).await.is_hit());
        let r = send(&app, request("PUT", &uri, &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(get_req(&app, &uri).await.cache_status().ends_with("stored"));
    }
    for id in ["a", "b", "c", "a"] {
        let r = get_req(&app, &format!("/lru/{id}")).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, id));
    }
    assert!(cache.invalidate_tag("items").await.unwrap() >= 1);
    // Pattern invalidation twice: the second SCAN reuses a pooled connection (UNWATCH + PING).
    cache.invalidate_pattern("item:*").await.unwrap();
    cache.invalidate_pattern("item:*").await.unwrap();

    let v: Result<u32, ()> = cache.get_or_set("fn:1", || async { Ok(1) }).await;
    assert_eq!(v, Ok(1));
    let opts = Options::new().ttl(Duration::from_secs(60));
    cache.set_many([("fn:2", &2u32)], &opts).await.unwrap();
    let got: Vec<Option<u32>> = cache
        .get_many(&["fn:1".to_owned(), "fn:2".to_owned()])
        .await
        .unwrap();
    assert_eq!(got, [Some(1), Some(2)]);
    cache.store().ping().await.unwrap();

    let recent: ValkeyLruCache<u32> =
        ValkeyLruCache::new(store(&url), "recent", Lru::with_capacity(2));
    for (k, v) in [("x", 1), ("y", 2), ("z", 3)] {
        recent.set(k, &v).await.unwrap();
    }
    assert_eq!(recent.get("z").await.unwrap(), Some(3));
    assert!(recent.delete("y").await.unwrap());
    // A TTL: the expiry index, the exact `len`, and a set that trims the expired entry.
    recent
        .set_with_ttl("t", &4, Some(Duration::from_millis(50)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(recent.len().await.unwrap(), 1);
    assert_eq!(recent.set("w", &5).await.unwrap(), Vec::<String>::new());
    assert_eq!(recent.keys().await.unwrap(), ["z", "w"]);
    recent.clear().await.unwrap();

    for c in [&cache, &bounded] {
        let s = c.stats();
        assert_eq!(s.store_errors, 0, "a command was refused: {s:?}");
    }
    assert!(
        cache.l1_stats().is_some_and(|s| s.listening),
        "L1 subscribed"
    );
    let denied: Vec<redis::Value> = server.cli(&["ACL", "LOG"]).await;
    assert!(denied.is_empty(), "ACL denials: {denied:?}");

    // Every command Valkey ran for the crate is in the rule.
    let allowed: BTreeSet<String> = ACL_RULE
        .split_whitespace()
        .filter_map(|t| t.strip_prefix('+'))
        .map(str::to_owned)
        .collect();
    let ran: BTreeSet<String> = commandstats(&server)
        .await
        .into_iter()
        .filter(|c| {
            !matches!(
                c.as_str(),
                "acl|setuser" | "acl|log" | "config|resetstat" | "info" | "auth"
            )
        })
        .collect();
    println!("commands run for the crate: {ran:?}");
    let unlisted: Vec<&String> = ran.difference(&allowed).collect();
    assert!(unlisted.is_empty(), "ran but not in the rule: {unlisted:?}");

    // And nothing beyond it.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for cmd in [
        redis::cmd("GET").arg("other:secret").clone(),
        redis::cmd("SET").arg("other:x").arg(1).clone(),
        redis::cmd("FLUSHALL").clone(),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("CONFIG").arg("GET").arg("*").clone(),
        redis::cmd("EVAL").arg("return 1").arg(0).clone(),
        redis::cmd("PUBLISH").arg("other|inv").arg("x").clone(),
    ] {
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        let e = r.expect_err("refused");
        assert!(e.to_string().to_lowercase().contains("noperm"), "{e}");
    }
    // A limit of ACLs, documented in SECURITY.md: `SCAN` (needed by pattern invalidation) lists
    // key names outside the user's key patterns. Their values stay unreadable.
    let (_, names): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("other:*")
        .arg("COUNT")
        .arg(1000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(names, ["other:secret"]);
}

/// A custom key strategy does not make credentialed requests cacheable unless the route opts in
/// with `allow_credentials` (its key must then identify the caller); and `Cache-Status` can be
/// turned off so clients cannot probe what others requested.
#[tokio::test]
async fn custom_strategies_need_an_opt_in_for_credentials() {
    let cache = Cache::new(MemoryStore::new());
    let key = |p: &http::request::Parts| {
        let who = p.headers.get("authorization")?.to_str().ok()?;
        Some(format!("me:{}", tower_valkey_cache::key::escape(who)))
    };
    let route = |layer: CacheLayer| {
        Router::new().route(
            "/me",
            get(|h: http::HeaderMap| async move { format!("{:?}", h.get("authorization")) })
                .route_layer(layer),
        )
    };
    let alice = || request("GET", "/me", &[("authorization", "Bearer alice")]);
    let plain = route(CacheLayer::new(cache.clone()).key_with(key));
    let r = send(&plain, alice()).await;
    assert_eq!(
        r.cache_status(),
        "tower-valkey-cache; fwd=bypass; detail=authorization"
    );
    let opted_in = route(
        CacheLayer::new(cache.clone())
            .key_with(key)
            .allow_credentials(true)
            .cache_status_header(false),
    );
    send(&opted_in, alice()).await;
    let r = send(&opted_in, alice()).await;
    assert_eq!(r.cache_status(), "", "no Cache-Status when turned off");
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().bypasses, 1);
}

/// Credentials in the URL never show in `Debug` output (logs of the store or the cache).
#[test]
fn url_credentials_are_redacted() {
    let s = ValkeyStore::new("redis://cache:hunter2@valkey.internal:6379/0").unwrap();
    let shown = format!("{s:?} {:?}", Cache::new(s.clone()));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("valkey.internal:6379"), "{shown}");
}

/// Namespaces cannot carry separators or glob characters, so one namespace's keys and patterns
/// can never name another's (`a` + `:*` never matches `ab:...`).
#[test]
fn namespaces_reject_separators_and_globs() {
    for ns in ["", "a:b", "a|b", "a*", "a?", "a[b]", "a\\b", "a b", "{a}"] {
        let r = std::panic::catch_unwind(|| Cache::builder(MemoryStore::new()).namespace(ns));
        assert!(r.is_err(), "namespace {ns:?} was accepted");
    }
    Cache::builder(MemoryStore::new()).namespace("shop-v2.eu_1");
}

/// Pattern invalidation is confined to the namespace's entries: `*` removes every entry of
/// namespace `a` but no key of namespace `ab`, and none of `a`'s bookkeeping (`a|...`).
#[tokio::test]
async fn patterns_stay_inside_the_namespace() {
    let server = ValkeyServer::start();
    let s = store(&server.url());
    let a = Cache::builder(s.clone()).namespace("a").build();
    let ab = Cache::builder(s).namespace("ab").build();
    let opts = Options::new();
    for c in [&a, &ab] {
        c.set("k", &1u8, &opts.clone().tags(["t"])).await.unwrap();
    }
    a.invalidate_key("gone").await.unwrap(); // leaves a clock and a tombstone
    assert_eq!(a.invalidate_pattern("*").await.unwrap(), 1);
    assert_eq!(server.keys("a:*").await, Vec::<String>::new());
    assert_eq!(server.keys("ab:*").await, ["ab:k"]);
    let meta = server.keys("a|*").await;
    assert!(meta.contains(&"a|clock".to_owned()), "{meta:?}");
}

/// Someone who can write to Valkey can serve any well-formed entry for a key of the namespace:
/// the store is trusted with the responses (the trust boundary of SECURITY.md).
#[tokio::test]
async fn forged_entries_are_served_within_the_namespace() {
    let store = MemoryStore::new();
    let cache = Cache::builder(store.clone()).namespace("app").build();
    let app = Router::new().route(
        "/p",
        get(|| async { "genuine" }).route_layer(CacheLayer::new(cache.clone())),
    );
    let forged = Entry::new(
        200,
        vec![("x-forged".parse().unwrap(), "1".parse().unwrap())],
        Bytes::from_static(b"forged"),
        now_ms(),
        Duration::from_secs(60),
        Duration::ZERO,
    );
    store.put_raw(
        "app:GET:/p",
        forged.encode().unwrap(),
        Duration::from_secs(60),
    );
    let r = get_req(&app, "/p").await;
    assert!(r.is_hit());
    assert_eq!((r.text(), r.header("x-forged")), ("forged", "1"));
    // The same bytes under another namespace are never read.
    let other = Cache::builder(store.clone()).namespace("other").build();
    let app = Router::new().route(
        "/p",
        get(|| async { "genuine" }).route_layer(CacheLayer::new(other)),
    );
    assert_eq!(get_req(&app, "/p").await.text(), "genuine");
}

/// A well-formed entry the route could never have stored (a status it does not cache, or a
/// `Set-Cookie` header) is refused: a miss, the handler answers, and the value is overwritten.
#[tokio::test]
async fn forged_5xx_or_cookie_entries_are_not_replayed() {
    let store = MemoryStore::new();
    let cache = Cache::builder(store.clone()).namespace("app").build();
    let app = Router::new().route(
        "/p",
        get(|| async { "genuine" }).route_layer(CacheLayer::new(cache.clone())),
    );
    let forged_500 = Entry::new(
        500,
        vec![],
        Bytes::from_static(b"boom"),
        now_ms(),
        Duration::from_secs(60),
        Duration::ZERO,
    );
    let forged_cookie = Entry::new(
        200,
        vec![(
            "set-cookie".parse().unwrap(),
            "session=attacker".parse().unwrap(),
        )],
        Bytes::from_static(b"forged"),
        now_ms(),
        Duration::from_secs(60),
        Duration::ZERO,
    );
    for (n, forged) in [forged_500, forged_cookie].into_iter().enumerate() {
        store.put_raw(
            "app:GET:/p",
            forged.encode().unwrap(),
            Duration::from_secs(60),
        );
        let r = get_req(&app, "/p").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "genuine"));
        assert_eq!(r.header("set-cookie"), "");
        assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
        assert_eq!(cache.stats().decode_failures, n as u64 + 1);
        assert!(get_req(&app, "/p").await.is_hit());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes at an entry's key (random, or a valid entry damaged) never fail a request:
    /// the handler answers, and the value is overwritten with a valid entry.
    #[test]
    fn garbage_values_are_misses(raw in prop::collection::vec(any::<u8>(), 0..64), cut in any::<usize>()) {
        runtime().block_on(async {
            let store = MemoryStore::new();
            let cache = Cache::builder(store.clone()).namespace("app").build();
            let app = Router::new().route(
                "/p",
                get(|| async { "genuine" }).route_layer(CacheLayer::new(cache.clone())),
            );
            let valid = Entry::new(200, vec![], Bytes::from_static(b"v"), now_ms(), Duration::from_secs(60), Duration::ZERO)
                .encode()
                .unwrap();
            for value in [Bytes::from(raw.clone()), valid.slice(..cut % valid.len())] {
                store.put_raw("app:GET:/p", value, Duration::from_secs(60));
                let r = get_req(&app, "/p").await;
                prop_assert_eq!((r.status, r.text()), (StatusCode::OK, "genuine"));
                prop_assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
            }
            prop_assert_eq!(cache.stats().decode_failures, 2);
            Ok(())
        })?;
    }
}

/// Garbage in the bookkeeping keys (the clock, the pattern list, tag sets, a lock held forever)
/// makes the cache less useful, never a request fail: the handler answers.
#[tokio::test]
async fn garbage_bookkeeping_never_fails_a_request() {
    let server = ValkeyServer::start();
    let cache = Cache::builder(store(&server.url()))
        .namespace("app")
        .timeout(Duration::from_secs(2))
        .circuit_breaker(1000, Duration::from_millis(10))
        .build();
    let app = Router::new().route(
        "/t/{id}",
        get(|Path(id): Path<String>| async move { format!("t {id}") }).route_layer(
            CacheLayer::new(cache.clone())
                .key("t:{id}")
                .tags(["tag"])
                .lock(Duration::from_millis(300)),
        ),
    );
    let () = server.cli(&["SET", "app|clock", "not a number"]).await;
    let () = server.cli(&["SET", "app|inv:patterns", "not a zset"]).await;
    let () = server.cli(&["SET", "app|tag:tag", "not a set"]).await;
    let () = server
        .cli(&["SET", "app|lock:t:2", "someone", "EX", "60"])
        .await;
    for id in ["1", "2", "3"] {
        for _ in 0..2 {
            let r = get_req(&app, &format!("/t/{id}")).await;
            assert_eq!(
                (r.status, r.text()),
                (StatusCode::OK, format!("t {id}").as_str())
            );
        }
    }
    // Invalidation over garbage fails (and is reported), it does not panic.
    let _ = cache.invalidate_tag("tag").await;
    let _ = cache.invalidate_pattern("t:*").await;
    let r = get_req(&app, "/t/1").await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tls-rustls")]
mod tls {
    use super::*;
    use std::process::Command;

    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA and a server certificate for 127.0.0.1 (IP only: `localhost` does not match it).
    fn certificates(dir: &std::path::Path) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=tvc-test-ca"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(dir, &ca);
        let mut csr = vec!["req", "-subj", "/CN=tvc-test-server"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(dir, &csr);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
        );
    }

    /// `rediss://` works with the `tls-rustls` feature, and the server's certificate is verified: a
    /// name it was not issued for is refused (the cache then serves without the store).
    ///
    /// The checks run in a child test process (`tls_child`) so that the CA can be trusted through
    /// `SSL_CERT_FILE` without changing this process's environment.
    #[test]
    fn rediss_verifies_the_server_certificate() {
        let dir = std::env::temp_dir().join(format!("tvc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        certificates(&dir);
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
        let _server = ValkeyServer::start_with_args(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]);
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "security::tls::tls_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SSL_CERT_FILE", &ca)
            .env("TVC_TLS_PORT", &tls_port)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test]
    #[ignore = "run by rediss_verifies_the_server_certificate"]
    async fn tls_child() {
        let Ok(port) = std::env::var("TVC_TLS_PORT") else {
            return;
        };
        let cache = |host: &str| {
            Cache::builder(store(&format!("rediss://{host}:{port}/")))
                .timeout(Duration::from_secs(2))
                .build()
        };
        let good = cache("127.0.0.1");
        for _ in 0..2 {
            let v: Result<u32, ()> = good.get_or_set("k", || async { Ok(7) }).await;
            assert_eq!(v, Ok(7));
        }
        let s = good.stats();
        assert_eq!(
            (s.misses, s.hits, s.stores, s.store_errors),
            (1, 1, 1, 0),
            "{s:?}"
        );

        let wrong_name = cache("localhost");
        let v: Result<u32, ()> = wrong_name.get_or_set("k", || async { Ok(8) }).await;
        assert_eq!(v, Ok(8), "served by the loader");
        let s = wrong_name.stats();
        assert_eq!((s.hits, s.store_unavailable), (0, 1), "{s:?}");
        assert!(s.store_errors >= 1);

        // Verification cannot be turned off from the URL (redis-rs's `#insecure` needs a feature
        // the crate does not enable).
        if let Ok(store) = ValkeyStore::new(&format!("rediss://localhost:{port}/#insecure")) {
            let insecure = Cache::builder(store)
                .timeout(Duration::from_secs(2))
                .build();
            let v: Result<u32, ()> = insecure.get_or_set("k", || async { Ok(9) }).await;
            assert_eq!(v, Ok(9));
            let s = insecure.stats();
            assert_eq!((s.hits, s.store_unavailable), (0, 1), "{s:?}");
        }
    }
}
