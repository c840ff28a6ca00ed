//! Invalidation (issue 3): `InvalidateLayer` keys, patterns and tags through real axum routes,
//! the programmatic API on `Cache`, glob injection, pattern invalidation over a large keyspace,
//! the no-stale-refill guard (deterministic and randomized), and invalidations queued while the
//! store is unreachable.
//!
//! Scenarios written once over a [`Backend`] run twice (modules `valkey` and `memory` at the
//! bottom). Each Valkey test starts its own `valkey-server`.

use crate::support;

use axum::extract::{Path, Query};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::Router;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    eventually, get as get_req, has_entry, request, send, Backend, Kind, Resp, StoreTimeouts,
    ValkeyServer,
};
use tower_valkey_cache::key::glob_escape;
use tower_valkey_cache::store::{
    KeySpace, Lookup, LookupMany, Store, StoreError, StoreErrorKind, StoreFuture, Target, Write,
    Written,
};
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, MemoryStore};
use tower_valkey_cache::{ValkeyConfig, ValkeyStore};

const NAME: &str = "tower-valkey-cache";
const STORED: &str = "tower-valkey-cache; fwd=uri-miss; stored";
const POLL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The single server's store: generous timeouts, since debug builds of parallel tests on a 2-core
/// machine are slow and these scenarios are about behaviour, not latency.
const VALKEY: StoreTimeouts = StoreTimeouts {
    connect: Duration::from_secs(1),
    response: Duration::from_secs(2),
    wait: Duration::from_secs(1),
};
/// The cluster store's connect and response timeout.
const CLUSTER: Duration = Duration::from_secs(2);
/// Every cache's operation timeout.
const OP: Duration = Duration::from_secs(2);

/// The memory backend: room for the large-pattern scenario's keyspace.
fn memory() -> MemoryStore {
    MemoryStore::new().max_entries(500_000)
}

/// Writes a raw value at `key` through the store (unguarded), with tags.
async fn put(cache: &Cache, key: &str, tags: &[&str], ttl: Duration) {
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    let w = Write {
        key,
        value: Bytes::from_static(b"raw"),
        ttl,
        tags: &tags,
        since: None,
    };
    let written = cache
        .store()
        .write(cache.key_space(), w)
        .await
        .expect("store write");
    assert_eq!(written, Written::Stored);
}

/// Asserts which of `keys` have an entry (through the store, on both backends).
async fn assert_present(cache: &Cache, present: &[&str], absent: &[&str]) {
    for k in present {
        assert!(has_entry(cache, k).await, "expected an entry at `{k}`");
    }
    for k in absent {
        assert!(!has_entry(cache, k).await, "expected no entry at `{k}`");
    }
}

/// On Valkey, the entry keys of the cache's namespace (`KEYS ns:*`, without the prefix).
async fn valkey_entries(b: &Backend, cache: &Cache) -> Option<BTreeSet<String>> {
    // Every shard's entries (one glob covers them all), named relative to the namespace.
    let space = cache.key_space();
    let keys = b.keys(&space.entry_glob("*")).await?;
    Some(
        keys.into_iter()
            .map(|k| {
                space
                    .relative(&k)
                    .expect("an entry of this namespace")
                    .to_owned()
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Test stores
// ---------------------------------------------------------------------------------------------

/// Forwards to a real store, optionally dropping the no-stale-refill guard (`Write::since =
/// None`: an unguarded fill) or failing every invalidation (the store "unreachable" for them).
#[derive(Debug)]
struct TestStore {
    inner: Arc<dyn Store>,
    unguarded: bool,
    fail_invalidations: Arc<AtomicBool>,
}

impl TestStore {
    fn unguarded(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            unguarded: true,
            fail_invalidations: Arc::default(),
        }
    }

    fn flaky(inner: Arc<dyn Store>, fail: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            unguarded: false,
            fail_invalidations: fail,
        }
    }
}

impl Store for TestStore {
    fn needs_hash_tags(&self) -> bool {
        self.inner.needs_hash_tags()
    }
    fn supports_shards(&self) -> bool {
        self.inner.supports_shards()
    }

    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        self.inner.read(space, key)
    }

    fn write<'a>(&'a self, space: &'a KeySpace, mut write: Write<'a>) -> StoreFuture<'a, Written> {
        if self.unguarded {
            write.since = None;
        }
        self.inner.write(space, write)
    }

    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        self.inner.read_many(space, keys)
    }

    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        mut writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        if self.unguarded {
            for w in &mut writes {
                w.since = None;
            }
        }
        self.inner.write_many(space, writes)
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        if self.fail_invalidations.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "test: invalidations fail",
            ))));
        }
        self.inner.invalidate(space, target)
    }

    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.try_lock(space, key, token, lease)
    }

    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.inner.unlock(space, key, token)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }

    fn name(&self) -> &'static str {
        "test"
    }
}

// ---------------------------------------------------------------------------------------------
// A versioned database and its handlers
// ---------------------------------------------------------------------------------------------

/// Versions of resources (`family:id`), starting at 1.
#[derive(Clone, Default)]
struct Db(Arc<Mutex<HashMap<String, u64>>>);

impl Db {
    fn version(&self, resource: &str) -> u64 {
        *self.0.lock().unwrap().get(resource).unwrap_or(&1)
    }

    fn bump(&self, resource: &str) -> u64 {
        let mut m = self.0.lock().unwrap();
        let v = m.entry(resource.to_owned()).or_insert(1);
        *v += 1;
        *v
    }
}

#[derive(Clone, Copy)]
enum TagHeader {
    None,
    /// `Surrogate-Key: item:{id} grp:{odd|even}` (space-separated).
    SurrogateKey,
    /// `Cache-Tag: item:{id}, grp:{odd|even}` (comma-separated).
    CacheTag,
}

fn parity(id: &str) -> &'static str {
    match id.parse::<u64>() {
        Ok(n) if n % 2 == 1 => "odd",
        _ => "even",
    }
}

/// A GET handler answering `"{path?query} v{version of family:id}"`, optionally with tag headers.
fn reader(db: &Db, family: &'static str, tags: TagHeader) -> MethodRouter {
    let db = db.clone();
    get(
        move |Path(p): Path<HashMap<String, String>>, uri: Uri| async move {
            let id = p.get("id").cloned().unwrap_or_default();
            let v = db.version(&format!("{family}:{id}"));
            let pq = uri.path_and_query().map_or("", |pq| pq.as_str());
            let mut res = format!("{pq} v{v}").into_response();
            let h = res.headers_mut();
            match tags {
                TagHeader::None => {}
                TagHeader::SurrogateKey => {
                    let v = format!("item:{id} grp:{}", parity(&id));
                    h.insert("surrogate-key", v.parse().unwrap());
                }
                TagHeader::CacheTag => {
                    let v = format!("item:{id}, grp:{}", parity(&id));
                    h.insert("cache-tag", v.parse().unwrap());
                }
            }
            res
        },
    )
}

/// A write handler for `method`: bumps `family:{the route's one path parameter}` and answers
/// `200 v{new}`; with `?fail` it changes nothing and answers 409.
fn writer(db: &Db, family: &'static str, method: MethodFilter) -> MethodRouter {
    let db = db.clone();
    on(
        method,
        move |Path(p): Path<HashMap<String, String>>, Query(q): Query<HashMap<String, String>>| async move {
            if q.contains_key("fail") {
                return (StatusCode::CONFLICT, "conflict".to_owned());
            }
            let id = p.values().next().cloned().unwrap_or_default();
            let v = db.bump(&format!("{family}:{id}"));
            (StatusCode::OK, format!("v{v}"))
        },
    )
}

fn layer(cache: &Cache) -> CacheLayer {
    CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60))
}

fn inv(cache: &Cache) -> InvalidateLayer {
    InvalidateLayer::new(cache.clone())
}

async fn put_req(app: &Router, uri: &str) -> Resp {
    send(app, request("PUT", uri, &[])).await
}

async fn delete_req(app: &Router, uri: &str) -> Resp {
    send(app, request("DELETE", uri, &[])).await
}

/// Asserts a GET answered `body` as a fresh miss that was stored.
fn assert_stored(r: &Resp, body: &str) {
    assert_eq!(
        (r.status, r.text(), r.cache_status()),
        (StatusCode::OK, body, STORED),
    );
    assert_no_tag_headers(r);
}

/// Asserts a GET answered `body` from the cache.
fn assert_hit(r: &Resp, body: &str) {
    assert_eq!((r.status, r.text()), (StatusCode::OK, body));
    assert!(
        r.cache_status().starts_with(&format!("{NAME}; hit; ttl=")),
        "expected a hit for {body:?}, got `{}`",
        r.cache_status()
    );
    assert_no_tag_headers(r);
}

fn assert_no_tag_headers(r: &Resp) {
    for h in ["surrogate-key", "cache-tag"] {
        assert!(
            !r.headers.contains_key(h),
            "`{h}` reached the client: {:?}",
            r.headers
        );
    }
}

/// Asserts a write answered the handler's response unchanged.
fn assert_written(r: &Resp, body: &str) {
    assert_eq!((r.status, r.text()), (StatusCode::OK, body));
    assert!(!r.headers.contains_key("cache-status"));
}

/// Entries removed by invalidation since the last call.
struct Removed {
    cache: Cache,
    last: u64,
}

impl Removed {
    fn new(cache: &Cache) -> Self {
        Self {
            cache: cache.clone(),
            last: cache.stats().invalidated,
        }
    }

    fn take(&mut self) -> u64 {
        let now = self.cache.stats().invalidated;
        let before = std::mem::replace(&mut self.last, now);
        now - before
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: every invalidation kind through axum routes
// ---------------------------------------------------------------------------------------------

fn kinds_app(cache: &Cache, db: &Db) -> Router {
    use MethodFilter as M;
    let c = cache;
    Router::new()
        // Keys: the resource key, and extra keys on DELETE.
        .route(
            "/k/{id}",
            reader(db, "k", TagHeader::None)
                .route_layer(layer(c).key("k:{id}"))
                .merge(writer(db, "k", M::PUT).route_layer(inv(c).keys(["k:{id}"])))
                .merge(
                    writer(db, "k", M::DELETE).route_layer(inv(c).keys(["k:{id}", "k_meta:{id}"])),
                ),
        )
        .route(
            "/k/{id}/meta",
            reader(db, "k", TagHeader::None).route_layer(layer(c).key("k_meta:{id}")),
        )
        // Patterns: every page of a user's posts.
        .route(
            "/p/{id}",
            writer(db, "p", M::PUT).route_layer(inv(c).patterns(["posts_{id}:*"])),
        )
        .route(
            "/p/{id}/posts",
            reader(db, "p", TagHeader::None)
                .route_layer(layer(c).key("posts_{id}:page_{query.page}")),
        )
        // Tags from `CacheLayer::tags` templates (also on a route keyed by the default key).
        .route(
            "/t/{id}",
            reader(db, "t", TagHeader::None)
                .route_layer(layer(c).key("t:{id}").tags(["owner:{id}"]))
                .merge(writer(db, "t", M::PUT).route_layer(inv(c).tags(["owner:{id}"]))),
        )
        .route(
            "/t/{id}/summary",
            reader(db, "t", TagHeader::None)
                .route_layer(layer(c).key("t_sum:{id}").tags(["owner:{id}"])),
        )
        .route(
            "/d/{id}",
            reader(db, "t", TagHeader::None).route_layer(layer(c).tags(["owner:{id}"])),
        )
        // Tags from response headers.
        .route(
            "/h/{id}",
            reader(db, "item", TagHeader::SurrogateKey)
                .route_layer(layer(c).key("h:{id}"))
                .merge(writer(db, "item", M::PUT).route_layer(inv(c).tags(["item:{id}"]))),
        )
        .route(
            "/c/{id}",
            reader(db, "item", TagHeader::CacheTag).route_layer(layer(c).key("c:{id}")),
        )
        .route(
            "/grp/{g}",
            writer(db, "grp", M::PUT).route_layer(inv(c).tags(["grp:{g}"])),
        )
}

async fn invalidation_kinds(b: Backend) {
    let cache = b.cache("t_kinds", OP);
    let db = Db::default();
    let app = kinds_app(&cache, &db);
    let mut removed = Removed::new(&cache);

    // --- keys ---
    assert_stored(&get_req(&app, "/k/1").await, "/k/1 v1");
    assert_hit(&get_req(&app, "/k/1").await, "/k/1 v1");
    assert_stored(&get_req(&app, "/k/2").await, "/k/2 v1");
    assert_stored(&get_req(&app, "/k/1/meta").await, "/k/1/meta v1");
    // A failed write invalidates nothing.
    let r = put_req(&app, "/k/1?fail").await;
    assert_eq!((r.status, r.text()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(removed.take(), 0);
    assert_hit(&get_req(&app, "/k/1").await, "/k/1 v1");
    // PUT names the resource key only.
    assert_written(&put_req(&app, "/k/1").await, "v2");
    assert_eq!(removed.take(), 1);
    assert_stored(&get_req(&app, "/k/1").await, "/k/1 v2");
    assert_hit(&get_req(&app, "/k/1").await, "/k/1 v2");
    assert_hit(&get_req(&app, "/k/2").await, "/k/2 v1");
    assert_hit(&get_req(&app, "/k/1/meta").await, "/k/1/meta v1");
    // DELETE names the resource key and an extra key.
    assert_written(&delete_req(&app, "/k/1").await, "v3");
    assert_eq!(removed.take(), 2);
    assert_stored(&get_req(&app, "/k/1").await, "/k/1 v3");
    assert_stored(&get_req(&app, "/k/1/meta").await, "/k/1/meta v3");
    assert_hit(&get_req(&app, "/k/2").await, "/k/2 v1");

    // --- patterns ---
    let user1 = ["/p/1/posts?page=1", "/p/1/posts?page=2", "/p/1/posts"];
    let others = ["/p/10/posts?page=1", "/p/2/posts?page=1"];
    for u in user1.iter().chain(&others) {
        assert_stored(&get_req(&app, u).await, &format!("{u} v1"));
    }
    assert_written(&put_req(&app, "/p/1").await, "v2");
    assert_eq!(
        removed.take(),
        3,
        "the pattern removes user 1's three pages"
    );
    for u in user1 {
        assert_stored(&get_req(&app, u).await, &format!("{u} v2"));
    }
    for u in others {
        assert_hit(&get_req(&app, u).await, &format!("{u} v1"));
    }

    // --- tags from templates ---
    for u in [
        "/t/1",
        "/t/1/summary",
        "/d/1",
        "/t/2",
        "/t/2/summary",
        "/d/2",
    ] {
        assert_stored(&get_req(&app, u).await, &format!("{u} v1"));
    }
    assert_written(&put_req(&app, "/t/1").await, "v2");
    assert_eq!(removed.take(), 3, "tag owner:1 carries three entries");
    for u in ["/t/1", "/t/1/summary", "/d/1"] {
        assert_stored(&get_req(&app, u).await, &format!("{u} v2"));
    }
    for u in ["/t/2", "/t/2/summary", "/d/2"] {
        assert_hit(&get_req(&app, u).await, &format!("{u} v1"));
    }
    assert_hit(&get_req(&app, "/t/1").await, "/t/1 v2");

    // --- tags from Surrogate-Key / Cache-Tag response headers (removed before the client) ---
    let tagged = ["/h/1", "/h/2", "/h/3", "/c/1", "/c/2"];
    for u in tagged {
        assert_stored(&get_req(&app, u).await, &format!("{u} v1"));
        assert_hit(&get_req(&app, u).await, &format!("{u} v1"));
    }
    // item:1 is on /h/1 (Surrogate-Key) and /c/1 (Cache-Tag).
    assert_written(&put_req(&app, "/h/1").await, "v2");
    assert_eq!(removed.take(), 2);
    for u in ["/h/1", "/c/1"] {
        assert_stored(&get_req(&app, u).await, &format!("{u} v2"));
    }
    for u in ["/h/2", "/h/3", "/c/2"] {
        assert_hit(&get_req(&app, u).await, &format!("{u} v1"));
    }
    // grp:odd is on /h/1, /h/3 and /c/1; grp:even on /h/2 and /c/2.
    assert_written(&put_req(&app, "/grp/odd").await, "v2");
    assert_eq!(removed.take(), 3);
    for (u, v) in [("/h/1", 2), ("/h/3", 1), ("/c/1", 2)] {
        assert_stored(&get_req(&app, u).await, &format!("{u} v{v}"));
    }
    for u in ["/h/2", "/c/2"] {
        assert_hit(&get_req(&app, u).await, &format!("{u} v1"));
    }
    assert_written(&put_req(&app, "/grp/even").await, "v2");
    assert_eq!(removed.take(), 2);
    for u in ["/h/2", "/c/2"] {
        assert_stored(&get_req(&app, u).await, &format!("{u} v1"));
    }

    // Every entry is back, and nothing else is in the namespace.
    let want: BTreeSet<String> = [
        "k:1",
        "k:2",
        "k_meta:1",
        "posts_1:page_1",
        "posts_1:page_2",
        "posts_1:page_~",
        "posts_10:page_1",
        "posts_2:page_1",
        "t:1",
        "t:2",
        "t_sum:1",
        "t_sum:2",
        "GET:/d/1",
        "GET:/d/2",
        "h:1",
        "h:2",
        "h:3",
        "c:1",
        "c:2",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for k in &want {
        assert!(has_entry(&cache, k).await, "no entry at `{k}`");
    }
    if let Some(listed) = valkey_entries(&b, &cache).await {
        assert_eq!(listed, want, "entry keys in Valkey");
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: the programmatic API returns the store's counts
// ---------------------------------------------------------------------------------------------

/// Each `Cache::invalidate_*` returns what the store removed and the `invalidated` counter sums
/// it, per cache. How a store counts (a key listed twice, an entry carrying two of the tags,
/// expired entries, `*`) is the store contract's, checked on every backend by
/// `testing::conformance` (check `invalidate_counts`, tests/it/conformance.rs).
async fn programmatic_counts(b: Backend) {
    let cache = b.cache("t_api", OP);
    let other = b.cache("t_api2", OP);
    let ttl = Duration::from_secs(60);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    for k in ["a:1", "a:2", "a:3", "p:1", "p:2", "pp:1"] {
        put(&cache, k, &[], ttl).await;
    }
    put(&cache, "x:1", &["t1"], ttl).await;
    put(&cache, "x:2", &["t1", "t2"], ttl).await;
    put(&cache, "x:3", &["t2"], ttl).await;
    put(&other, "a:1", &["t1"], ttl).await;
    assert_eq!(cache.invalidate_key("a:1").await.unwrap(), 1);
    assert_eq!(
        cache
            .invalidate_keys(&s(&["a:2", "a:3", "zz"]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(cache.invalidate_tag("t1").await.unwrap(), 2);
    assert_eq!(cache.invalidate_tags(&s(&["t2", "none"])).await.unwrap(), 1);
    assert_eq!(cache.invalidate_pattern("p*:1").await.unwrap(), 2);
    // `*` is the whole namespace, and only it.
    assert_eq!(cache.invalidate_pattern("*").await.unwrap(), 1);
    assert_present(&other, &["a:1"], &[]).await;
    if let Some(listed) = valkey_entries(&b, &cache).await {
        assert!(listed.is_empty(), "{listed:?}");
    }

    // The counter sums what the calls returned.
    assert_eq!(cache.stats().invalidated, 1 + 2 + 2 + 1 + 2 + 1);
    assert_eq!(other.stats().invalidated, 0);

    // Tag sets expire with their entries (Valkey keeps them for the longest entry's TTL).
    if let Some(server) = b.server() {
        put(&cache, "ts:1", &["short"], Duration::from_millis(100)).await;
        let set = cache.key_space().shard_for("ts:1").tag_set("short");
        assert_eq!(server.cli::<i64>(&["EXISTS", &set]).await, 1);
        eventually(POLL, "the tag set to expire", || async {
            (server.cli::<i64>(&["EXISTS", &set]).await == 0).then_some(())
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: glob injection
// ---------------------------------------------------------------------------------------------

/// Percent-encodes every byte outside `[A-Za-z0-9]` (a path segment axum decodes back).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn glob_injection(b: Backend) {
    let cache = b.cache("t_glob", OP);
    let db = Db::default();
    let app = Router::new()
        .route(
            "/u/{id}",
            writer(&db, "u", MethodFilter::PUT).route_layer(inv(&cache).patterns(["user_{id}_*"])),
        )
        .route(
            "/u/{id}/posts",
            reader(&db, "u", TagHeader::None).route_layer(layer(&cache).key("user_{id}_posts")),
        )
        .route(
            "/u/{id}/likes",
            reader(&db, "u", TagHeader::None).route_layer(layer(&cache).key("user_{id}_likes")),
        );
    let attackers = ["*", "?", "[a-z]", "\\"];
    // Neighbours a raw glob would match (`user_*_*`, `user_?_*`, `user_[a-z]_*`), and values
    // whose escaped form looks like another's (`%2A` is not `*`).
    let neighbours = ["1", "a", "z", "ab", "%2A", "%3F", "%5C", "[a-z]x", "**"];
    let all: Vec<&str> = attackers.iter().chain(&neighbours).copied().collect();
    let mut removed = Removed::new(&cache);
    let mut versions: HashMap<&str, u64> = all.iter().map(|id| (*id, 1)).collect();

    for id in &all {
        for page in ["posts", "likes"] {
            let r = get_req(&app, &format!("/u/{}/{page}", encode(id))).await;
            assert_eq!(r.cache_status(), STORED, "{id}");
        }
    }
    if let Some(server) = b.server() {
        // The neighbours are real targets: the unescaped pattern would take them.
        for raw in ["*", "?", "[a-z]"] {
            let hit = server
                .keys(&cache.key_space().entry_glob(&format!("user_{raw}_*")))
                .await;
            assert!(hit.len() > 2, "raw `{raw}` matches {hit:?}");
        }
    }

    for attacker in attackers {
        let r = put_req(&app, &format!("/u/{}", encode(attacker))).await;
        assert_eq!(r.status, StatusCode::OK, "{attacker}");
        assert_eq!(
            removed.take(),
            2,
            "PUT /u/{attacker} removes exactly its own two entries"
        );
        *versions.get_mut(attacker).unwrap() += 1;
        for id in &all {
            for page in ["posts", "likes"] {
                let uri = format!("/u/{}/{page}", encode(id));
                let r = get_req(&app, &uri).await;
                assert!(r.text().ends_with(&format!(" v{}", versions[id])), "{id}");
                if *id == attacker {
                    assert_eq!(r.cache_status(), STORED, "{id} after PUT {attacker}");
                } else {
                    assert!(r.is_hit(), "{id} was invalidated by PUT {attacker}");
                }
            }
        }
    }

    // The programmatic API with `glob_escape` on raw keys holding metacharacters.
    let ttl = Duration::from_secs(60);
    let raw = [
        "*", "?", "[a-z]", "\\", "a", "b", "ab", "-", "\\*", "[", "]",
    ];
    for k in raw {
        put(&cache, &format!("raw:{k}"), &[], ttl).await;
    }
    let mut gone = Vec::new();
    for k in ["*", "?", "[a-z]", "\\"] {
        let n = cache
            .invalidate_pattern(&format!("raw:{}", glob_escape(k)))
            .await
            .unwrap();
        assert_eq!(n, 1, "raw:{k}");
        gone.push(format!("raw:{k}"));
        for other in raw {
            let key = format!("raw:{other}");
            assert_eq!(has_entry(&cache, &key).await, !gone.contains(&key), "{key}");
        }
    }
}

/// Issue 15: separators in values. `user_{id}_*` for id `1` used to match the entries of id
/// `1_x` too (`_` was left unescaped, so `1_x` rendered `user_1_x_posts`); now `PUT /u/1`
/// removes exactly the entries of user `1`, whatever the other ids hold.
async fn separator_injection(b: Backend) {
    let cache = b.cache("t_sep", OP);
    let db = Db::default();
    let app = Router::new()
        .route(
            "/u/{id}",
            writer(&db, "u", MethodFilter::PUT).route_layer(inv(&cache).patterns(["user_{id}_*"])),
        )
        .route(
            "/u/{id}/posts",
            reader(&db, "u", TagHeader::None).route_layer(layer(&cache).key("user_{id}_posts")),
        )
        .route(
            "/u/{id}/likes",
            reader(&db, "u", TagHeader::None).route_layer(layer(&cache).key("user_{id}_likes")),
        );
    let ids = [
        "1", "1_x", "1_posts", "1_x_y", "1.x", "1-x", "1~", "1,2", "1%5Fx", "1:x", "_", "1_",
    ];
    let mut removed = Removed::new(&cache);
    let mut versions: HashMap<&str, u64> = ids.iter().map(|id| (*id, 1)).collect();
    for id in &ids {
        for page in ["posts", "likes"] {
            let r = get_req(&app, &format!("/u/{}/{page}", encode(id))).await;
            assert_eq!(
                r.cache_status(),
                STORED,
                "{id} {page} collided with another entry"
            );
        }
    }
    if let Some(server) = b.server() {
        // Every id has entries of its own: 2 per id.
        let space = cache.key_space();
        assert_eq!(
            server.keys(&space.entry_glob("user_*")).await.len(),
            2 * ids.len()
        );
        assert_eq!(
            server.keys(&space.entry_glob("user_1_*")).await.len(),
            2,
            "the pattern of id 1 names only its own entries"
        );
    }
    for writer_id in ids {
        let r = put_req(&app, &format!("/u/{}", encode(writer_id))).await;
        assert_eq!(r.status, StatusCode::OK, "{writer_id}");
        assert_eq!(
            removed.take(),
            2,
            "PUT /u/{writer_id} removes exactly its own two entries"
        );
        *versions.get_mut(writer_id).unwrap() += 1;
        for id in &ids {
            for page in ["posts", "likes"] {
                let r = get_req(&app, &format!("/u/{}/{page}", encode(id))).await;
                assert!(
                    r.text().ends_with(&format!(" v{}", versions[id])),
                    "{id}: {}",
                    r.text()
                );
                if *id == writer_id {
                    assert_eq!(r.cache_status(), STORED, "{id} after PUT {writer_id}");
                } else {
                    assert!(r.is_hit(), "{id} was invalidated by PUT {writer_id}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: no stale re-fill, for each kind (deterministic)
// ---------------------------------------------------------------------------------------------

/// Holds a handler between reading the database and answering.
struct Gate {
    entered: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

async fn no_stale_refill(b: Backend) {
    use MethodFilter as M;
    let cache = b.cache("t_refill", OP);
    let db = Db::default();
    let gate = Arc::new(Gate {
        entered: tokio::sync::Notify::new(),
        open: tokio::sync::Semaphore::new(0),
    });
    let slow = {
        let (db, gate) = (db.clone(), gate.clone());
        get(move |Path(id): Path<String>| async move {
            let v = db.version(&format!("s:{id}"));
            gate.entered.notify_one();
            gate.open.acquire().await.unwrap().forget();
            ([("surrogate-key", format!("sh:{id}"))], format!("v{v}"))
        })
    };
    let app = Router::new()
        .route(
            "/s/{id}",
            slow.route_layer(layer(&cache).key("s:{id}:main").tags(["so:{id}"])),
        )
        .route(
            "/s/{id}/key",
            writer(&db, "s", M::PUT).route_layer(inv(&cache).keys(["s:{id}:main"])),
        )
        .route(
            "/s/{id}/pattern",
            writer(&db, "s", M::PUT).route_layer(inv(&cache).patterns(["s:{id}:*"])),
        )
        .route(
            "/s/{id}/tag",
            writer(&db, "s", M::PUT).route_layer(inv(&cache).tags(["so:{id}"])),
        )
        .route(
            "/s/{id}/header-tag",
            writer(&db, "s", M::PUT).route_layer(inv(&cache).tags(["sh:{id}"])),
        );

    let mut v = 1;
    for kind in ["key", "pattern", "tag", "header-tag"] {
        cache.invalidate_key("s:1:main").await.unwrap();
        // A GET misses and reads version v, then a write lands while it is held.
        let reading = tokio::spawn({
            let app = app.clone();
            async move { get_req(&app, "/s/1").await }
        });
        tokio::time::timeout(POLL, gate.entered.notified())
            .await
            .expect("the handler to run");
        v += 1;
        assert_written(
            &put_req(&app, &format!("/s/1/{kind}")).await,
            &format!("v{v}"),
        );
        gate.open.add_permits(1);
        let r = reading.await.unwrap();
        assert_eq!(r.text(), format!("v{}", v - 1), "{kind}");
        assert_eq!(
            r.cache_status(),
            format!("{NAME}; fwd=uri-miss; detail=invalidated"),
            "{kind}: the old version must not be stored"
        );
        assert_no_tag_headers(&r);
        assert!(!has_entry(&cache, "s:1:main").await, "{kind}");
        // The next read fills the new version, then hits.
        gate.open.add_permits(1);
        assert_stored(&get_req(&app, "/s/1").await, &format!("v{v}"));
        gate.entered.notified().await; // the permit that handler run left
        assert_hit(&get_req(&app, "/s/1").await, &format!("v{v}"));
    }
    assert_eq!(cache.stats().superseded, 4);
}

// ---------------------------------------------------------------------------------------------
// Scenario: invalidation fails, is queued, and reads skip the cache until it lands
// ---------------------------------------------------------------------------------------------

fn item_app(cache: &Cache, db: &Db) -> Router {
    Router::new().route(
        "/items/{id}",
        reader(db, "i", TagHeader::None)
            .route_layer(layer(cache).key("item:{id}"))
            .merge(writer(db, "i", MethodFilter::PUT).route_layer(inv(cache).keys(["item:{id}"]))),
    )
}

async fn queued_while_failing(b: Backend) {
    let fail = Arc::new(AtomicBool::new(false));
    let cache = Cache::builder(TestStore::flaky(b.store(), fail.clone()))
        // This test's own namespace on the shared cluster (the plain and the sharded runs of it
        // run at once there), in the backend's shards.
        .namespace(b.namespace("t_queue"))
        .shards(b.shards)
        .timeout(Duration::from_secs(2))
        .circuit_breaker(1000, Duration::from_millis(10))
        .build();
    let db = Db::default();
    let app = item_app(&cache, &db);
    assert_stored(&get_req(&app, "/items/1").await, "/items/1 v1");
    assert_hit(&get_req(&app, "/items/1").await, "/items/1 v1");

    fail.store(true, Ordering::SeqCst);
    assert_written(&put_req(&app, "/items/1").await, "v2");
    assert_eq!(cache.pending_invalidations(), 1);
    assert_eq!(cache.stats().invalidations_queued, 1);
    // The store holds the stale entry and answers reads, but while the invalidation is owed
    // this process serves from the handler.
    assert!(has_entry(&cache, "item:1").await);
    for _ in 0..3 {
        let r = get_req(&app, "/items/1").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "/items/1 v2"));
        assert_eq!(
            r.cache_status(),
            format!("{NAME}; fwd=miss; detail=store-unavailable")
        );
    }

    fail.store(false, Ordering::SeqCst);
    eventually(POLL, "the queued invalidation to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    let s = cache.stats();
    assert_eq!((s.invalidations_retried, s.invalidations_dropped), (1, 0));
    assert!(!has_entry(&cache, "item:1").await, "stale entry survived");
    assert_stored(&get_req(&app, "/items/1").await, "/items/1 v2");
    assert_hit(&get_req(&app, "/items/1").await, "/items/1 v2");
}

/// Valkey killed before a write: the write answers success, the invalidation is queued, reads
/// are served by the handler; the server comes back with its data (AOF), the queued invalidation
/// runs and removes the stale entry.
#[tokio::test]
async fn valkey_stopped_during_write() {
    let mut server =
        ValkeyServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(Duration::from_millis(300))
            .response_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    let cache = Cache::builder(store)
        .namespace("t_down")
        .timeout(Duration::from_millis(500))
        .circuit_breaker(3, Duration::from_millis(100))
        .build();
    let db = Db::default();
    let app = item_app(&cache, &db);
    assert_stored(&get_req(&app, "/items/1").await, "/items/1 v1");
    assert_hit(&get_req(&app, "/items/1").await, "/items/1 v1");
    let entry = cache.key_space().entry("item:1");
    let () = server.cli(&["SET", "sentinel", "1"]).await;

    server.stop();
    let started = Instant::now();
    assert_written(&put_req(&app, "/items/1").await, "v2");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(cache.pending_invalidations() > 0);
    assert_eq!(cache.stats().invalidations_queued, 1);
    for _ in 0..3 {
        let r = get_req(&app, "/items/1").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "/items/1 v2"));
        assert_eq!(
            r.cache_status(),
            format!("{NAME}; fwd=miss; detail=store-unavailable")
        );
    }

    server.restart();
    // The data survived the restart (the stale entry was written before the sentinel).
    assert_eq!(server.cli::<i64>(&["EXISTS", "sentinel"]).await, 1);
    eventually(POLL, "the queued invalidation to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    let s = cache.stats();
    assert_eq!(
        (s.invalidations_retried, s.invalidations_dropped),
        (1, 0),
        "{s:?}"
    );
    assert_eq!(
        server.cli::<i64>(&["EXISTS", &entry]).await,
        0,
        "the stale entry survived"
    );
    assert_eq!(server.cli::<i64>(&["EXISTS", "sentinel"]).await, 1);
    let r = eventually(POLL, "caching to resume", || async {
        let r = get_req(&app, "/items/1").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "/items/1 v2"));
        r.is_hit().then_some(r)
    })
    .await;
    assert_hit(&r, "/items/1 v2");
}

// ---------------------------------------------------------------------------------------------
// Pattern invalidation over a large namespace
// ---------------------------------------------------------------------------------------------

const BULK_UNRELATED: usize = 100_000;
const BULK_MATCHED: usize = 20_000;

async fn large_pattern(b: Backend) {
    let cache = b
        .builder("big", OP)
        .bulk_timeout(Duration::from_secs(60))
        .build();
    let other = b.cache("bigother", OP);
    let setup = Instant::now();
    match &b.kind {
        Kind::Valkey { server, .. } => {
            // Written server-side by a script: 120k SETs in well under a second.
            let script = "for i = tonumber(ARGV[2]), tonumber(ARGV[3]) - 1 do \
                            redis.call('SET', ARGV[1] .. i, 'x', 'EX', 600) end";
            for (prefix, n) in [
                ("big:other:", BULK_UNRELATED),
                ("big:user_7_posts:", BULK_MATCHED),
                ("bigother:user_7_posts:", 10),
                ("big:user_77_posts:", 10),
            ] {
                // In steps of 10k keys, each well within the client's response timeout.
                for from in (0..n).step_by(10_000) {
                    let to = (from + 10_000).min(n);
                    let () = server
                        .cli(&[
                            "EVAL",
                            script,
                            "0",
                            prefix,
                            &from.to_string(),
                            &to.to_string(),
                        ])
                        .await;
                }
            }
        }
        Kind::Memory(_) | Kind::Cluster { .. } => {
            let ttl = Duration::from_secs(600);
            for i in 0..BULK_UNRELATED {
                put(&cache, &format!("other:{i}"), &[], ttl).await;
            }
            for i in 0..BULK_MATCHED {
                put(&cache, &format!("user_7_posts:{i}"), &[], ttl).await;
            }
            for i in 0..10 {
                put(&other, &format!("user_7_posts:{i}"), &[], ttl).await;
                put(&cache, &format!("user_77_posts:{i}"), &[], ttl).await;
            }
        }
    }
    let setup = setup.elapsed();
    let before = match b.server() {
        Some(s) => s.cli::<usize>(&["DBSIZE"]).await,
        None => 0,
    };
    assert!(has_entry(&cache, "user_7_posts:1").await);
    if let Some(server) = b.server() {
        // Log every command that runs 50 ms or longer on the server (setup excluded).
        let () = server
            .cli(&["CONFIG", "SET", "slowlog-log-slower-than", "50000"])
            .await;
        let () = server.cli(&["SLOWLOG", "RESET"]).await;
    }

    // Meanwhile, a client keeps reading: pattern invalidation must not block the server.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn({
        let (cache, stop) = (cache.clone(), stop.clone());
        async move {
            let mut worst = Duration::ZERO;
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                cache
                    .store()
                    .read(cache.key_space(), "other:1")
                    .await
                    .expect("read during the scan");
                worst = worst.max(t.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (worst, n)
        }
    });
    let started = Instant::now();
    let n = cache.invalidate_pattern("user_7_posts:*").await.unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (worst, probes) = prober.await.unwrap();
    let probed = match b.server() {
        Some(_) => format!("; {probes} concurrent reads, slowest {worst:?}"),
        None => String::new(), // the memory store holds its lock for the whole invalidation
    };
    println!(
        "{}: pattern over {} keys removed {n} in {took:?} (setup {setup:?}){probed}",
        cache.store().name(),
        BULK_UNRELATED + BULK_MATCHED + 10,
    );
    assert_eq!(n, BULK_MATCHED as u64);
    assert!(took < Duration::from_secs(30), "{took:?}");
    if let Some(server) = b.server() {
        // Not blocking: no single command of the invalidation held the server for 50 ms (a
        // `KEYS` over this namespace does).
        let slow: usize = server.cli(&["SLOWLOG", "LEN"]).await;
        assert_eq!(slow, 0, "commands over 50 ms: {:?}", {
            let log: redis::Value = server.cli(&["SLOWLOG", "GET"]).await;
            log
        });
    }

    assert!(!has_entry(&cache, "user_7_posts:1").await);
    assert!(!has_entry(&cache, &format!("user_7_posts:{}", BULK_MATCHED - 1)).await);
    assert!(has_entry(&cache, "user_77_posts:1").await);
    assert!(has_entry(&cache, "other:1").await);
    assert!(has_entry(&cache, &format!("other:{}", BULK_UNRELATED - 1)).await);
    assert!(has_entry(&other, "user_7_posts:1").await);
    if let Some(server) = b.server() {
        // Counted server-side: no 100k-key reply to parse.
        let count = |pattern: &'static str| async move {
            let script = "return #redis.call('KEYS', ARGV[1])";
            server.cli::<usize>(&["EVAL", script, "0", pattern]).await
        };
        assert_eq!(count("big:user_7_posts:*").await, 0);
        assert_eq!(count("big:user_77_posts:*").await, 10);
        assert_eq!(count("big:other:*").await, BULK_UNRELATED);
        assert_eq!(count("bigother:*").await, 10);
        // Only the matched keys went; the invalidation added its clock, the clock's origin, its
        // pattern record and (the cache's first operation: the setup wrote around it) the
        // namespace's layout record.
        let after = server.cli::<usize>(&["DBSIZE"]).await;
        assert_eq!(after + BULK_MATCHED, before + 4, "{before} -> {after}");
    }
}

// ---------------------------------------------------------------------------------------------
// Randomized consistency: concurrent readers and writers on real Valkey
// ---------------------------------------------------------------------------------------------

const IDS: usize = 8;
const READERS: usize = 16;
const WRITERS: usize = 4;
const OPS: usize = 12_000;

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) reads: usize,
    pub(crate) writes: usize,
    pub(crate) hits: usize,
    pub(crate) violations: usize,
}

/// 16 readers and 4 writers on ids 0..8 through one router until `OPS` operations are done;
/// each write invalidates by key, tag or pattern (chosen at random). A violation is a read that started after the acknowledgement of version v of its id and
/// answered a version older than v.
pub(crate) async fn consistency_workload(cache: Cache) -> Report {
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..IDS).map(|_| AtomicU64::new(1)).collect());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..IDS).map(|_| AtomicU64::new(1)).collect());
    let read = {
        let db = db.clone();
        get(move |Path(id): Path<usize>| async move {
            let v = db[id].load(Ordering::SeqCst);
            // The read is slow after it reads the database, so writes land in the gap.
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..5_000))).await;
            v.to_string()
        })
    };
    let write = {
        let db = db.clone();
        axum::routing::put(move |Path(id): Path<usize>| async move {
            (db[id].fetch_add(1, Ordering::SeqCst) + 1).to_string()
        })
    };
    // A write invalidates the id's entry by key, by a tag every entry of the id carries, or by
    // a pattern naming it: in a sharded namespace the key goes to one shard, the tag and the
    // pattern to every shard.
    let app = Router::new()
        .route(
            "/items/{id}",
            read.route_layer(layer(&cache).key("item:{id}").tags(["id:{id}"]))
                .merge(write.clone().route_layer(inv(&cache).keys(["item:{id}"]))),
        )
        .route(
            "/by-tag/{id}",
            write.clone().route_layer(inv(&cache).tags(["id:{id}"])),
        )
        .route(
            "/by-pattern/{id}",
            write.route_layer(inv(&cache).patterns(["item:{id}"])),
        );

    let ops = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..READERS + WRITERS {
        let (app, ops, acked) = (app.clone(), ops.clone(), acked.clone());
        let writer = n < WRITERS;
        tasks.push(tokio::spawn(async move {
            let mut r = Report::default();
            while ops.fetch_add(1, Ordering::SeqCst) < OPS {
                let id = fastrand::usize(0..IDS);
                if writer {
                    let by = ["items", "by-tag", "by-pattern"][fastrand::usize(0..3)];
                    let res = put_req(&app, &format!("/{by}/{id}")).await;
                    assert_eq!(res.status, StatusCode::OK);
                    let v: u64 = res.text().parse().unwrap();
                    acked[id].fetch_max(v, Ordering::SeqCst);
                    r.writes += 1;
                    // Frequent writes, but mostly reads (so reads also hit).
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3_000))).await;
                } else {
                    let floor = acked[id].load(Ordering::SeqCst);
                    let res = get_req(&app, &format!("/items/{id}")).await;
                    assert_eq!(res.status, StatusCode::OK);
                    let v: u64 = res.text().parse().unwrap();
                    r.violations += usize::from(v < floor);
                    r.hits += usize::from(res.is_hit());
                    r.reads += 1;
                }
            }
            r
        }));
    }
    let mut total = Report::default();
    for t in tasks {
        let r = t.await.unwrap();
        total.reads += r.reads;
        total.writes += r.writes;
        total.hits += r.hits;
        total.violations += r.violations;
    }
    total
}

async fn consistency(b: Backend, guarded: bool) -> Report {
    let store = b.store();
    let builder = if guarded {
        Cache::builder_shared(store)
    } else {
        Cache::builder(TestStore::unguarded(store))
    };
    let cache = builder
        .namespace(b.namespace("t_consistency"))
        .shards(b.shards)
        .timeout(OP)
        .build();
    let started = Instant::now();
    let r = consistency_workload(cache.clone()).await;
    println!(
        "{}guard {}: {} ops ({} reads, {} hits, {} writes) in {:?}: {} violations; {:?}",
        if b.is_cluster() { "cluster, " } else { "" },
        if guarded { "on" } else { "off" },
        r.reads + r.writes,
        r.reads,
        r.hits,
        r.writes,
        started.elapsed(),
        r.violations,
        cache.stats(),
    );
    assert!(r.reads + r.writes >= 10_000);
    assert!(r.hits > 0 && r.writes > 100, "{r:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_guarded_no_violations() {
    let r = consistency(Backend::valkey(VALKEY), true).await;
    assert_eq!(r.violations, 0, "{r:?}");
}

/// The same workload with the guard switched off (fills unguarded) must record violations:
/// proof that the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_unguarded_detects_stale_fills() {
    let r = consistency(Backend::valkey(VALKEY), false).await;
    assert!(r.violations > 0, "{r:?}");
}

/// The consistency workload in a namespace of 8 shards on one server: keys guarded in their
/// shard, tags and patterns in every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_consistency_guarded_no_violations() {
    let r = consistency(Backend::valkey(VALKEY).sharded(8), true).await;
    assert_eq!(r.violations, 0, "{r:?}");
}

/// The same, unguarded: it must record violations (the sharded runs can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_consistency_unguarded_detects_stale_fills() {
    let r = consistency(Backend::valkey(VALKEY).sharded(8), false).await;
    assert!(r.violations > 0, "{r:?}");
}

/// The sharded workload on MemoryStore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_memory_consistency_guarded_no_violations() {
    let r = consistency(Backend::memory(memory()).sharded(8), true).await;
    assert_eq!(r.violations, 0, "{r:?}");
}

/// A namespace of 128 shards on the shared cluster: its shards sit on every primary, and a tag
/// or pattern invalidation is applied on all of them before it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sharded_consistency_guarded_no_violations() {
    let r = consistency(Backend::cluster(CLUSTER).sharded(128), true).await;
    assert_eq!(r.violations, 0, "{r:?}");
}

/// The consistency workload on a Valkey Cluster: the guard's script runs on the namespace's
/// primary, and no read after an acknowledged write sees the older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_consistency_guarded_no_violations() {
    let r = consistency(Backend::cluster(CLUSTER), true).await;
    assert_eq!(r.violations, 0, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        invalidation_kinds,
        programmatic_counts,
        glob_injection,
        separator_injection,
        no_stale_refill,
        queued_while_failing,
        large_pattern,
    );
}

/// The same scenarios on a Valkey Cluster (shared by this binary's cluster tests).
mod cluster {
    crate::support::on!(super::Backend::cluster(super::CLUSTER) =>
        invalidation_kinds,
        programmatic_counts,
        glob_injection,
        separator_injection,
        no_stale_refill,
        queued_while_failing,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::memory()) =>
        invalidation_kinds,
        programmatic_counts,
        glob_injection,
        separator_injection,
        no_stale_refill,
        queued_while_failing,
        large_pattern,
    );
}

/// The same scenarios in a namespace of 8 shards (keys in their shard, tags and patterns in
/// every shard), on one server and on MemoryStore, and of 128 shards on the cluster.
// (large_pattern writes its 120,000 keys server-side in the one-shard layout; on a sharded
// namespace it runs on MemoryStore.)
mod valkey_sharded {
    crate::support::on!(super::Backend::valkey(super::VALKEY).sharded(8) =>
        invalidation_kinds,
        programmatic_counts,
        glob_injection,
        separator_injection,
        no_stale_refill,
        queued_while_failing,
    );
}

mod memory_sharded {
    crate::support::on!(super::Backend::memory(super::memory()).sharded(8) =>
        invalidation_kinds,
        programmatic_counts,
        glob_injection,
        separator_injection,
        no_stale_refill,
        queued_while_failing,
        large_pattern,
    );
}

mod cluster_sharded {
    crate::support::on!(super::Backend::cluster(super::CLUSTER).sharded(128) =>
        invalidation_kinds,
        programmatic_counts,
        glob_injection,
        separator_injection,
        no_stale_refill,
        queued_while_failing,
    );
}

// ---------------------------------------------------------------------------------------------
// Long names: every way a key or a tag reaches the store names what an invalidation of the same
// string names
// ---------------------------------------------------------------------------------------------

/// A hand-written key strategy: the request's `x-key` header as the key, as it is.
struct HeaderKey;

impl tower_valkey_cache::key::KeyStrategy for HeaderKey {
    fn key(
        &self,
        ctx: &tower_valkey_cache::key::KeyContext<'_>,
    ) -> Result<String, tower_valkey_cache::key::KeyError> {
        ctx.parts()
            .headers
            .get("x-key")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned)
            .ok_or(tower_valkey_cache::key::KeyError::Declined)
    }
}

/// Names straddling the bound where keys and tags are shortened (`KEEP_LEN`, 223 bytes, and the
/// shortened form's 253 to 256), in ASCII and with a multi-byte character at the cut.
fn long_names(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for len in [200, 222, 223, 224, 225, 253, 256, 300, 600] {
        out.push(format!("{prefix}{}", "a".repeat(len - prefix.len())));
    }
    for len in [221, 222, 223, 224] {
        let mut s = format!("{prefix}{}", "b".repeat(len - prefix.len()));
        s.push('é'); // 2 bytes across the cut
        s.push_str("tail");
        out.push(s);
    }
    out
}

/// Each entry point of a key (a hand-written strategy, a template, the function cache) and of a
/// tag (a tag template, response headers, the function cache's options) stores under a name that
/// `invalidate_key` / `invalidate_tag` of the same string reaches, for names around the bound:
/// after the invalidation the next request is a miss (the handler runs again) and the function
/// cache loads again.
async fn long_names_are_invalidated_by_the_same_string(backend: Backend) {
    use tower_valkey_cache::function::Options;
    let cache = backend.builder("longnames", OP).build();
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = runs.clone();
        move |headers: http::HeaderMap| {
            let runs = runs.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                let tag = headers
                    .get("x-tag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                ([("cache-tag", tag)], format!("v{n}"))
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/strategy",
            get(handler.clone()).route_layer(
                CacheLayer::new(cache.clone())
                    .key_with(HeaderKey)
                    .ttl(Duration::from_secs(60)),
            ),
        )
        .route(
            "/template/{id}",
            get(handler.clone()).route_layer(
                CacheLayer::new(cache.clone())
                    .key("t:{id}")
                    .tags(["tt:{id}"])
                    .ttl(Duration::from_secs(60)),
            ),
        )
        .route(
            "/headers/{id}",
            get(handler).route_layer(
                CacheLayer::new(cache.clone())
                    .key("h:{id}")
                    .tags_from_headers(true)
                    .ttl(Duration::from_secs(60)),
            ),
        );
    // Served twice: the second is a hit (the handler ran once).
    let twice = |req: fn(&str) -> http::Request<axum::body::Body>, name: String| {
        let (app, runs) = (app.clone(), runs.clone());
        async move {
            let before = runs.load(Ordering::SeqCst);
            for _ in 0..2 {
                let r = send(&app, req(&name)).await;
                assert_eq!(r.status, http::StatusCode::OK, "{name:?}");
            }
            assert_eq!(
                runs.load(Ordering::SeqCst),
                before + 1,
                "{} bytes: a hit",
                name.len()
            );
        }
    };
    let again = |req: fn(&str) -> http::Request<axum::body::Body>, name: String, what: String| {
        let (app, runs) = (app.clone(), runs.clone());
        async move {
            let before = runs.load(Ordering::SeqCst);
            send(&app, req(&name)).await;
            assert_eq!(
                runs.load(Ordering::SeqCst),
                before + 1,
                "{what} of {} bytes: the next request misses",
                name.len()
            );
        }
    };
    fn strategy(name: &str) -> http::Request<axum::body::Body> {
        request("GET", "/strategy", &[("x-key", name)])
    }
    fn template(name: &str) -> http::Request<axum::body::Body> {
        request("GET", &format!("/template/{name}"), &[])
    }
    fn headers(name: &str) -> http::Request<axum::body::Body> {
        request(
            "GET",
            &format!("/headers/{}", name.len()),
            &[("x-tag", name)],
        )
    }
    for name in long_names("s") {
        twice(strategy, name.clone()).await;
        cache.invalidate_key(&name).await.unwrap();
        again(
            strategy,
            name,
            "invalidate_key (hand-written strategy)".into(),
        )
        .await;
    }
    // Path segments are ASCII here: the template renders them as they are.
    for name in long_names("p").into_iter().filter(|n| n.is_ascii()) {
        twice(template, name.clone()).await;
        cache.invalidate_key(&format!("t:{name}")).await.unwrap();
        again(template, name.clone(), "invalidate_key (template)".into()).await;
        cache.invalidate_tag(&format!("tt:{name}")).await.unwrap();
        again(template, name, "invalidate_tag (tag template)".into()).await;
    }
    for name in long_names("h").into_iter().filter(|n| n.is_ascii()) {
        twice(headers, name.clone()).await;
        cache.invalidate_tag(&name).await.unwrap();
        again(headers, name, "invalidate_tag (Cache-Tag header)".into()).await;
    }
    for name in long_names("f") {
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(1u32)
        };
        let opts = Options::new().tags([name.clone()]);
        cache.get_or_set_with(&name, &opts, load).await.unwrap();
        cache.get_or_set_with(&name, &opts, load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "{} bytes: a hit",
            name.len()
        );
        cache.invalidate_key(&name).await.unwrap();
        cache.get_or_set_with(&name, &opts, load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "invalidate_key of {} bytes",
            name.len()
        );
        cache.invalidate_tag(&name).await.unwrap();
        cache.get_or_set_with(&name, &opts, load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            3,
            "invalidate_tag of {} bytes",
            name.len()
        );
    }
}

mod long_names_valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        long_names_are_invalidated_by_the_same_string,
    );
}

mod long_names_memory {
    crate::support::on!(super::Backend::memory(super::memory()) =>
        long_names_are_invalidated_by_the_same_string,
    );
}
