//! `#[cached]` and `#[invalidates]` (feature `macros`) on a real Valkey and on `MemoryStore`:
//! every scenario runs on both (`on_both_stores!` at the bottom), with the cache given as an
//! argument, as `self.cache` and as a static.
//!
//! The "database" is an in-memory table that counts its reads, so each test asserts how often
//! a function's body ran.

use crate::support;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;
use support::{valkey_store, StoreTimeouts, ValkeyServer};
use tower_valkey_cache::key::KeyTemplate;
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{cached, invalidates, Cache, MemoryStore, ValkeyConfig, ValkeyStore};

/// Generous Valkey timeouts: debug builds of parallel tests on a busy machine.
const VALKEY: StoreTimeouts = StoreTimeouts {
    connect: Duration::from_secs(2),
    response: Duration::from_secs(5),
    wait: Duration::from_secs(5),
};

fn cache_on(store: impl Store, ns: &str) -> Cache {
    Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(5))
        .build()
}

// ---------------------------------------------------------------------------------------------
// The application: a table of users behind functions with the attributes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

#[derive(Clone, Debug, PartialEq)]
enum DbError {
    Down,
    NotFound,
}

/// Users by id; counts reads; fails every operation while `down`.
#[derive(Default)]
struct Db {
    rows: Mutex<HashMap<u64, String>>,
    reads: AtomicUsize,
    down: AtomicBool,
}

impl Db {
    fn with(rows: &[(u64, &str)]) -> Self {
        let db = Db::default();
        for (id, name) in rows {
            db.rows.lock().unwrap().insert(*id, (*name).to_owned());
        }
        db
    }

    fn load(&self, id: u64) -> Result<Option<String>, DbError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(DbError::Down);
        }
        Ok(self.rows.lock().unwrap().get(&id).cloned())
    }

    fn save(&self, id: u64, name: &str) -> Result<(), DbError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DbError::Down);
        }
        self.rows.lock().unwrap().insert(id, name.to_owned());
        Ok(())
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// The cache as an argument (`&Cache`); `Err` is not cached.
#[cached(cache = cache, key = "user:{id}", ttl = "1m", tags = ["user:{id}", "users"])]
async fn profile(cache: &Cache, db: &Db, id: u64) -> Result<Profile, DbError> {
    let name = db.load(id)?.ok_or(DbError::NotFound)?;
    Ok(Profile { id, name })
}

#[invalidates(cache = cache, keys = ["user:{id}"])]
async fn rename(cache: &Cache, db: &Db, id: u64, name: &str) -> Result<(), DbError> {
    db.save(id, name)
}

/// The cache as an owned argument, a slow body: for the single-flight test's spawned tasks.
#[cached(cache = cache, key = "slow:{id}")]
async fn slow_profile(cache: Cache, db: Arc<Db>, id: u64) -> Result<Profile, DbError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let name = db.load(id)?.ok_or(DbError::NotFound)?;
    Ok(Profile { id, name })
}

/// `None` returned but not stored.
#[cached(cache = cache, key = "find:{id}", cache_none = false)]
async fn find(cache: &Cache, db: &Db, id: u64) -> Option<String> {
    db.load(id).ok().flatten()
}

/// `None` stored (the default).
#[cached(cache = cache, key = "find-or-none:{id}")]
async fn find_or_none(cache: &Cache, db: &Db, id: u64) -> Option<String> {
    db.load(id).ok().flatten()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Price {
    symbol: String,
    cents: u64,
    /// A quote the feed marks as not final: returned, never cached.
    provisional: bool,
}

impl Price {
    fn is_provisional(&self) -> bool {
        self.provisional
    }
}

/// Quotes the feed will give, in order, and how many it gave.
#[derive(Default)]
struct Feed {
    quotes: Mutex<Vec<(u64, bool)>>,
    calls: AtomicUsize,
}

impl Feed {
    fn next(&self, symbol: &str) -> Price {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (cents, provisional) = self.quotes.lock().unwrap().remove(0);
        Price {
            symbol: symbol.to_owned(),
            cents,
            provisional,
        }
    }
}

/// `unless` as a closure whose argument type is inferred.
#[cached(cache = cache, key = "price:{symbol}", unless = |p| p.provisional)]
async fn price(cache: &Cache, feed: &Feed, symbol: &str) -> Result<Price, DbError> {
    Ok(feed.next(symbol))
}

/// `unless` as a path, on a plain (not `Result`) return type.
#[cached(cache = cache, key = "price-plain:{symbol}", unless = Price::is_provisional)]
async fn price_plain(cache: &Cache, feed: &Feed, symbol: &str) -> Price {
    feed.next(symbol)
}

/// A search with an argument struct and a tuple: `{arg.field}`, `{arg.0}`.
struct Search {
    region: String,
    page: u32,
}

#[cached(cache = cache, key = "search:{q.region}:{q.page}:{owner.0}", tags = ["region:{q.region}"])]
async fn search(cache: &Cache, db: &Db, q: &Search, owner: (u64, &str)) -> Vec<String> {
    let _ = db.load(owner.0);
    vec![format!("{}/{}/{}", q.region, q.page, owner.1)]
}

/// Posts pages, invalidated together by a pattern.
#[cached(cache = cache, key = "user_{id}_posts:page_{page}")]
async fn posts(cache: &Cache, db: &Db, id: &str, page: u32) -> Vec<String> {
    let _ = db.load(0);
    vec![format!("{id}:{page}")]
}

#[invalidates(cache = cache, patterns = ["user_{id}_posts:*"])]
async fn new_post(cache: &Cache, id: &str) -> Result<(), DbError> {
    Ok(())
}

/// The cache as `self.cache`; `{self.tenant}` in a template.
struct Users {
    cache: Cache,
    db: Db,
    tenant: String,
}

impl Users {
    #[cached(cache = self.cache, key = "t:{self.tenant}:user:{id}", tags = ["t:{self.tenant}"])]
    async fn get(&self, id: u64) -> Result<Profile, DbError> {
        let name = self.db.load(id)?.ok_or(DbError::NotFound)?;
        Ok(Profile { id, name })
    }

    #[invalidates(cache = self.cache, keys = ["t:{self.tenant}:user:{id}"])]
    async fn rename(&self, id: u64, name: &str) -> Result<(), DbError> {
        self.db.save(id, name)
    }

    #[invalidates(cache = self.cache, tags = ["t:{self.tenant}"])]
    async fn clear(&self) {}
}

/// Freshness and the stale window from the attribute.
#[cached(cache = cache, key = "short:{id}", ttl = "300ms", stale_if_error = "1m")]
async fn short_lived(cache: &Cache, db: &Db, id: u64) -> Result<Profile, DbError> {
    let name = db.load(id)?.ok_or(DbError::NotFound)?;
    Ok(Profile { id, name })
}

#[cfg(feature = "postcard")]
#[cached(cache = cache, key = "compact:{id}", codec = Postcard)]
async fn compact(cache: &Cache, db: &Db, id: u64) -> Result<Profile, DbError> {
    let name = db.load(id)?.ok_or(DbError::NotFound)?;
    Ok(Profile { id, name })
}

// ---------------------------------------------------------------------------------------------
// Scenarios (each runs on Valkey and on MemoryStore)
// ---------------------------------------------------------------------------------------------

/// 500 concurrent callers of one key: the body runs once, everyone gets its value, one entry.
async fn single_flight_500_callers(cache: Cache) {
    let db = Arc::new(Db::with(&[(1, "Ada")]));
    let calls = (0..500).map(|_| tokio::spawn(slow_profile(cache.clone(), db.clone(), 1)));
    let results = futures_util::future::join_all(calls).await;
    for r in results {
        assert_eq!(
            r.expect("task"),
            Ok(Profile {
                id: 1,
                name: "Ada".into()
            })
        );
    }
    assert_eq!(db.reads(), 1, "the body ran more than once");
    let s = cache.stats();
    assert_eq!(s.coalesced + s.hits, 499, "{s:?}");
    assert_eq!(s.stores, 1, "{s:?}");
}

/// A hit does not run the body; a write through `#[invalidates]` is seen by the next read.
async fn invalidation_is_seen_by_the_next_read(cache: Cache) {
    let db = Db::with(&[(1, "Ada")]);
    assert_eq!(profile(&cache, &db, 1).await.unwrap().name, "Ada");
    assert_eq!(profile(&cache, &db, 1).await.unwrap().name, "Ada");
    assert_eq!(db.reads(), 1, "the second call was not a hit");

    rename(&cache, &db, 1, "Grace").await.unwrap();
    assert_eq!(profile(&cache, &db, 1).await.unwrap().name, "Grace");
    assert_eq!(db.reads(), 2);

    // A write that fails invalidates nothing: the entry stays.
    db.set_down(true);
    assert_eq!(rename(&cache, &db, 1, "Lovelace").await, Err(DbError::Down));
    assert_eq!(profile(&cache, &db, 1).await.unwrap().name, "Grace", "hit");
    assert_eq!(db.reads(), 2);
    assert_eq!(cache.stats().invalidated, 1, "{:?}", cache.stats());
}

/// `Err` is returned and not cached: the body runs again on the next call.
async fn errors_are_not_cached(cache: Cache) {
    let db = Db::with(&[(1, "Ada")]);
    db.set_down(true);
    for n in 1..=2 {
        assert_eq!(profile(&cache, &db, 1).await, Err(DbError::Down));
        assert_eq!(db.reads(), n);
    }
    assert_eq!(profile(&cache, &db, 2).await, Err(DbError::Down));
    assert_eq!(cache.stats().stores, 0);
    db.set_down(false);
    assert_eq!(profile(&cache, &db, 1).await.unwrap().name, "Ada");
    assert_eq!(profile(&cache, &db, 1).await.unwrap().name, "Ada");
    assert_eq!(db.reads(), 4, "stored once it succeeded");
    assert_eq!(cache.stats().stores, 1);
}

/// `cache_none = false`: `None` reaches the caller and is not stored; `Some` is. The default
/// stores `None` too.
async fn none_is_not_cached_with_cache_none_false(cache: Cache) {
    let db = Db::with(&[]);
    assert_eq!(find(&cache, &db, 9).await, None);
    assert_eq!(find(&cache, &db, 9).await, None);
    assert_eq!(db.reads(), 2, "None was cached");
    assert_eq!(cache.get::<Option<String>>("find:9").await.unwrap(), None);

    db.save(9, "Ada").unwrap();
    assert_eq!(find(&cache, &db, 9).await.as_deref(), Some("Ada"));
    assert_eq!(find(&cache, &db, 9).await.as_deref(), Some("Ada"));
    assert_eq!(db.reads(), 3, "Some was not cached");

    assert_eq!(find_or_none(&cache, &db, 10).await, None);
    assert_eq!(find_or_none(&cache, &db, 10).await, None);
    assert_eq!(db.reads(), 4, "the default caches None");
    assert_eq!(
        cache
            .get::<Option<String>>("find-or-none:10")
            .await
            .unwrap(),
        Some(None)
    );
}

/// `unless`: a provisional quote is returned and not stored; the next final one is stored.
async fn unless_skips_storing(cache: Cache) {
    let feed = Feed::default();
    feed.quotes
        .lock()
        .unwrap()
        .extend([(100, true), (101, true), (102, false), (999, false)]);
    let got: Vec<(u64, bool)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let p = price(&cache, &feed, "EUR").await.unwrap();
            v.push((p.cents, p.provisional));
        }
        v
    };
    assert_eq!(got, [(100, true), (101, true), (102, false), (102, false)]);
    assert_eq!(feed.calls.load(Ordering::SeqCst), 3);

    let feed = Feed::default();
    feed.quotes
        .lock()
        .unwrap()
        .extend([(7, true), (8, false), (9, false)]);
    let cents: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(price_plain(&cache, &feed, "USD").await.cents);
        }
        v
    };
    assert_eq!(cents, [7, 8, 8]);
    assert_eq!(cache.stats().stores, 2);
}

/// Tags from the attribute: `Cache::invalidate_tag` drops the entries carrying them.
async fn tags_are_invalidated_by_invalidate_tag(cache: Cache) {
    let db = Db::with(&[(1, "Ada"), (2, "Grace")]);
    profile(&cache, &db, 1).await.unwrap();
    profile(&cache, &db, 2).await.unwrap();
    assert_eq!(db.reads(), 2);

    assert_eq!(cache.invalidate_tag("user:1").await.unwrap(), 1);
    profile(&cache, &db, 1).await.unwrap();
    profile(&cache, &db, 2).await.unwrap();
    assert_eq!(db.reads(), 3, "only user 1 was reloaded");

    assert_eq!(cache.invalidate_tag("users").await.unwrap(), 2);
    profile(&cache, &db, 1).await.unwrap();
    profile(&cache, &db, 2).await.unwrap();
    assert_eq!(db.reads(), 5);
}

/// `{arg.field}` and `{arg.0}` templates render exactly as the crate's `KeyTemplate` renders
/// the same values (escaping included); different field values are different entries.
async fn field_templates_render_like_key_templates(cache: Cache) -> String {
    let db = Db::default();
    let q = Search {
        region: "eu west*:1".into(),
        page: 2,
    };
    let found = search(&cache, &db, &q, (7, "ada")).await;
    assert_eq!(found, ["eu west*:1/2/ada"]);
    let expected = KeyTemplate::parse("search:{r}:{p}:{o}")
        .unwrap()
        .render_with(|name| {
            Some(match name {
                "r" => "eu west*:1".to_owned(),
                "p" => "2".to_owned(),
                _ => "7".to_owned(),
            })
        })
        .unwrap();
    assert_eq!(
        cache.get::<Vec<String>>(&expected).await.unwrap(),
        Some(found.clone()),
        "no entry at {expected}"
    );
    search(&cache, &db, &q, (7, "other name, same key")).await;
    assert_eq!(db.reads(), 1, "same fields, same key: a hit");
    let q2 = Search {
        region: "eu west*:1".into(),
        page: 3,
    };
    search(&cache, &db, &q2, (7, "ada")).await;
    assert_eq!(db.reads(), 2, "another page, another key");
    // The tag template renders with the same escaping.
    let tag = KeyTemplate::parse("region:{r}")
        .unwrap()
        .render_with(|_| Some("eu west*:1".to_owned()))
        .unwrap();
    assert_eq!(cache.invalidate_tag(&tag).await.unwrap(), 2);
    expected
}

/// A pattern from `#[invalidates]` drops every page of one user, not another user's, and a
/// value with glob characters matches only itself.
async fn patterns_invalidate_every_page(cache: Cache) {
    let db = Db::default();
    for id in ["1", "11", "*"] {
        for page in 1..=3 {
            posts(&cache, &db, id, page).await;
        }
    }
    assert_eq!(db.reads(), 9);
    new_post(&cache, "1").await.unwrap();
    for id in ["1", "11", "*"] {
        for page in 1..=3 {
            posts(&cache, &db, id, page).await;
        }
    }
    assert_eq!(
        db.reads(),
        12,
        "user 1's three pages reloaded, nothing else"
    );
    new_post(&cache, "*").await.unwrap();
    posts(&cache, &db, "11", 1).await;
    assert_eq!(db.reads(), 12, "`*` as a value is not a glob");
    posts(&cache, &db, "*", 1).await;
    assert_eq!(db.reads(), 13);
}

/// A method with `cache = self.cache`: cached, invalidated by key and by a tag over `self`.
async fn methods_use_self_cache(cache: Cache) {
    let users = Users {
        cache: cache.clone(),
        db: Db::with(&[(1, "Ada")]),
        tenant: "acme".into(),
    };
    assert_eq!(users.get(1).await.unwrap().name, "Ada");
    assert_eq!(users.get(1).await.unwrap().name, "Ada");
    assert_eq!(users.db.reads(), 1);
    assert_eq!(
        cache.get::<Profile>("t:acme:user:1").await.unwrap(),
        Some(Profile {
            id: 1,
            name: "Ada".into()
        })
    );
    users.rename(1, "Grace").await.unwrap();
    assert_eq!(users.get(1).await.unwrap().name, "Grace");
    assert_eq!(users.db.reads(), 2);
    users.clear().await;
    users.get(1).await.unwrap();
    assert_eq!(users.db.reads(), 3, "the tenant tag was invalidated");
    // The generated bypass runs the body and leaves the cache alone.
    assert_eq!(users.get_uncached(1).await.unwrap().name, "Grace");
    assert_eq!(users.db.reads(), 4);
    users.get(1).await.unwrap();
    assert_eq!(users.db.reads(), 4, "still cached");
}

/// `NAME_uncached` runs the body every time and never stores.
async fn uncached_twin_bypasses(cache: Cache) {
    let db = Db::with(&[(1, "Ada")]);
    for n in 1..=2 {
        assert_eq!(profile_uncached(&cache, &db, 1).await.unwrap().name, "Ada");
        assert_eq!(db.reads(), n);
    }
    assert_eq!(cache.get::<Profile>("user:1").await.unwrap(), None);
    assert_eq!(cache.stats().misses + cache.stats().hits, 0);
}

/// `ttl` and `stale_if_error` from the attribute: the value expires after 300 ms; past it, a
/// failing body gets the stale value.
async fn ttl_and_stale_if_error_apply(cache: Cache) {
    let db = Db::with(&[(1, "Ada")]);
    short_lived(&cache, &db, 1).await.unwrap();
    short_lived(&cache, &db, 1).await.unwrap();
    assert_eq!(db.reads(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cache.get::<Profile>("short:1").await.unwrap(),
        None,
        "expired"
    );
    db.set_down(true);
    assert_eq!(
        short_lived(&cache, &db, 1).await.unwrap().name,
        "Ada",
        "stale-if-error"
    );
    assert_eq!(db.reads(), 2, "the body ran");
    assert_eq!(cache.stats().stale_if_error, 1);
    // The default TTL (1 min on `profile`) is not a 300 ms one.
    db.set_down(false);
    profile(&cache, &db, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    profile(&cache, &db, 1).await.unwrap();
    assert_eq!(db.reads(), 3);
}

/// `codec = Postcard`: the value round-trips, and is not JSON (the JSON getter cannot read it).
#[cfg(feature = "postcard")]
async fn postcard_codec_applies(cache: Cache) {
    let db = Db::with(&[(1, "Ada")]);
    assert_eq!(compact(&cache, &db, 1).await.unwrap().name, "Ada");
    assert_eq!(compact(&cache, &db, 1).await.unwrap().name, "Ada");
    assert_eq!(db.reads(), 1, "a hit");
    // The entry records its codec: `get` reads the postcard value (it used to assume JSON and
    // read `None`).
    assert_eq!(
        cache
            .get::<Profile>("compact:1")
            .await
            .unwrap()
            .map(|p| p.name),
        Some("Ada".to_owned())
    );
}

// ---------------------------------------------------------------------------------------------
// Static caches: `cache = PATH` to a `static LazyLock<Cache>`
// ---------------------------------------------------------------------------------------------

static MEMORY_CACHE: LazyLock<Cache> = LazyLock::new(|| cache_on(MemoryStore::new(), "static"));

/// Set by the Valkey static test (its own server) before first use of `VALKEY_CACHE`.
static VALKEY_URL: OnceLock<String> = OnceLock::new();
static VALKEY_CACHE: LazyLock<Cache> = LazyLock::new(|| {
    let url = VALKEY_URL.get().expect("the test sets VALKEY_URL first");
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(url.as_str())
            .connect_timeout(VALKEY.connect)
            .response_timeout(VALKEY.response)
            .wait_timeout(VALKEY.wait),
    )
    .expect("valkey store");
    cache_on(store, "static")
});

/// A cached read and an invalidating write on a static cache.
macro_rules! static_scenario {
    ($test:ident, $cache:ident, $setup:expr) => {
        #[tokio::test]
        async fn $test() {
            #[cached(cache = $cache, key = "user:{id}")]
            async fn get(db: &Db, id: u64) -> Result<Profile, DbError> {
                let name = db.load(id)?.ok_or(DbError::NotFound)?;
                Ok(Profile { id, name })
            }

            #[invalidates(cache = $cache, keys = ["user:{id}"])]
            async fn set(db: &Db, id: u64, name: &str) -> Result<(), DbError> {
                db.save(id, name)
            }

            let _server = $setup;
            let db = Db::with(&[(1, "Ada")]);
            assert_eq!(get(&db, 1).await.unwrap().name, "Ada");
            assert_eq!(get(&db, 1).await.unwrap().name, "Ada");
            assert_eq!(db.reads(), 1);
            set(&db, 1, "Grace").await.unwrap();
            assert_eq!(get(&db, 1).await.unwrap().name, "Grace");
            assert_eq!(db.reads(), 2);
            assert_eq!(
                $cache
                    .get::<Profile>("user:1")
                    .await
                    .unwrap()
                    .map(|p| p.name),
                Some("Grace".to_owned())
            );
        }
    };
}

static_scenario!(static_cache_on_memory, MEMORY_CACHE, ());
static_scenario!(static_cache_on_valkey, VALKEY_CACHE, {
    let server = ValkeyServer::start();
    VALKEY_URL.set(server.url()).expect("set once");
    server
});

// ---------------------------------------------------------------------------------------------
// Every scenario on both stores
// ---------------------------------------------------------------------------------------------

macro_rules! on_both_stores {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod valkey {
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = ValkeyServer::start();
                    let ns = stringify!($name);
                    super::$name(cache_on(valkey_store(&server, VALKEY), ns)).await;
                    // Nothing outside the namespace.
                    let all = server.keys("*").await;
                    assert!(all.iter().all(|k| k.starts_with(ns)), "{all:?}");
                }
            )*
        }

        mod memory {
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let _ = super::$name(cache_on(MemoryStore::new(), stringify!($name))).await;
                }
            )*
        }
    };
}

on_both_stores!(
    single_flight_500_callers,
    invalidation_is_seen_by_the_next_read,
    errors_are_not_cached,
    none_is_not_cached_with_cache_none_false,
    unless_skips_storing,
    tags_are_invalidated_by_invalidate_tag,
    patterns_invalidate_every_page,
    methods_use_self_cache,
    uncached_twin_bypasses,
    ttl_and_stale_if_error_apply,
    #[cfg(feature = "postcard")]
    postcard_codec_applies,
);

/// On Valkey, the key the store holds is the namespace plus exactly `KeyTemplate`'s rendering.
#[tokio::test]
async fn field_template_key_as_valkey_stores_it() {
    let server = ValkeyServer::start();
    let cache = cache_on(valkey_store(&server, VALKEY), "fields");
    let key = field_templates_render_like_key_templates(cache.clone()).await;
    let db = Db::default();
    search(
        &cache,
        &db,
        &Search {
            region: "eu west*:1".into(),
            page: 2,
        },
        (7, "x"),
    )
    .await;
    assert!(
        server
            .keys("fields:*")
            .await
            .contains(&format!("fields:{key}")),
        "{:?}",
        server.keys("*").await
    );
}

#[tokio::test]
async fn field_templates_render_like_key_templates_on_memory() {
    field_templates_render_like_key_templates(cache_on(MemoryStore::new(), "fields")).await;
}
