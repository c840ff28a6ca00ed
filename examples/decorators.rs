//! The Python services' caching decorators, in Rust: `#[cached]` and `#[invalidates]` on async
//! functions (feature `macros`), one seed pattern at a time.
//!
//! | seed (Python) | here |
//! |---|---|
//! | `@get_or_set_cache(key_fn=lambda user_id: f"user:{user_id}", ttl=300)` | `#[cached(key = "user:{user_id}", ttl = "5m")]` |
//! | weather with `stale_ttl=3600` | `#[cached(key = "weather:{city}", ttl = .., stale_if_error = "1h")]` |
//! | external price, "don't cache delayed quotes" | `#[cached(key = "price:{symbol}", unless = \|p\| p.delayed)]` |
//! | `@cache(key_prefix="user", resource_id_name="user_id", to_invalidate_extra=.., pattern_to_invalidate_extra=["user_{user_id}_posts:*"])` | `#[invalidates(keys = [..], patterns = ["user_{user_id}_posts:*"])]` |
//!
//! The "database", the weather API and the price feed are in-process stand-ins that sleep to
//! look remote and count their calls, so the example runs offline and exits by itself.
//!
//! Run it:
//!
//! ```text
//! cargo run --example decorators --features macros                                    # MemoryStore
//! VALKEY_URL=redis://127.0.0.1:6380 cargo run --example decorators --features macros  # Valkey
//! ```
//!
//! What to look for: the first call of each function pays the backend's latency and the next
//! ones do not; 50 concurrent price lookups make one feed call; a failing weather API past the
//! TTL still answers (stale-if-error); after `update_user`, the profile, the user list and every
//! page of that user's posts are read again, and another user's posts are not.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tower_valkey_cache::{cached, invalidates, Cache, MemoryStore, ValkeyStore};

/// One cache for the whole service: Valkey when `VALKEY_URL` is set, otherwise in memory.
static CACHE: LazyLock<Cache> = LazyLock::new(|| match std::env::var("VALKEY_URL") {
    Ok(url) => Cache::builder(ValkeyStore::new(&url).expect("VALKEY_URL is a valid URL"))
        .namespace("decorators")
        .build(),
    Err(_) => Cache::builder(MemoryStore::new())
        .namespace("decorators")
        .build(),
});

/// A stand-in backend: sleeps `LATENCY` per call, counts calls, fails while `down`.
#[derive(Default)]
struct Backend {
    calls: AtomicUsize,
    down: AtomicBool,
}

const LATENCY: Duration = Duration::from_millis(100);

impl Backend {
    async fn call(&self) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(LATENCY).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError);
        }
        Ok(())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Debug)]
struct BackendError;

static DB: LazyLock<Backend> = LazyLock::new(Backend::default);
static USERS: LazyLock<Mutex<BTreeMap<u64, String>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::from([(1, "Ada".into()), (2, "Grace".into())])));

// ---------------------------------------------------------------------------------------------
// 1. User profile: a database read, cached 5 minutes, tagged by user.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

#[cached(cache = CACHE, key = "user:{user_id}", ttl = "5m", tags = ["user:{user_id}"])]
async fn user_profile(user_id: u64) -> Result<Option<Profile>, BackendError> {
    DB.call().await?;
    let name = USERS.lock().unwrap().get(&user_id).cloned();
    Ok(name.map(|name| Profile { id: user_id, name }))
}

// ---------------------------------------------------------------------------------------------
// 2. Weather: an external API; past the TTL, a failure serves the last forecast for an hour.
// ---------------------------------------------------------------------------------------------

static WEATHER_API: LazyLock<Backend> = LazyLock::new(Backend::default);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Forecast {
    city: String,
    celsius: i32,
}

#[cached(cache = CACHE, key = "weather:{city}", ttl = "1s", stale_if_error = "1h")]
async fn weather(city: &str) -> Result<Forecast, BackendError> {
    WEATHER_API.call().await?;
    Ok(Forecast {
        city: city.to_owned(),
        celsius: 21,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. External price: single-flight under a burst; delayed quotes are returned, never cached.
// ---------------------------------------------------------------------------------------------

static FEED: LazyLock<Backend> = LazyLock::new(Backend::default);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Price {
    symbol: String,
    cents: u64,
    /// The feed's quote is late (market closed, feed lagging): do not keep it.
    delayed: bool,
}

#[cached(cache = CACHE, key = "price:{symbol}", ttl = "30s", unless = |p| p.delayed)]
async fn price(symbol: &str) -> Result<Price, BackendError> {
    FEED.call().await?;
    Ok(Price {
        symbol: symbol.to_owned(),
        cents: 10_842,
        delayed: symbol == "LATE",
    })
}

// ---------------------------------------------------------------------------------------------
// 4. DB queries invalidated on update: the profile, an extra key (the user list) and a pattern
//    (every page of the user's posts).
// ---------------------------------------------------------------------------------------------

#[cached(cache = CACHE, key = "users:list", ttl = "5m")]
async fn user_list() -> Result<Vec<String>, BackendError> {
    DB.call().await?;
    Ok(USERS.lock().unwrap().values().cloned().collect())
}

#[cached(cache = CACHE, key = "user_{user_id}_posts:page_{page}", ttl = "5m")]
async fn user_posts(user_id: u64, page: u32) -> Result<Vec<String>, BackendError> {
    DB.call().await?;
    let name = USERS
        .lock()
        .unwrap()
        .get(&user_id)
        .cloned()
        .unwrap_or_default();
    Ok(vec![format!("{name}'s post {}", page * 10)])
}

#[invalidates(
    cache = CACHE,
    keys = ["user:{user_id}", "users:list"],
    patterns = ["user_{user_id}_posts:*"]
)]
async fn update_user(user_id: u64, name: &str) -> Result<(), BackendError> {
    DB.call().await?;
    USERS.lock().unwrap().insert(user_id, name.to_owned());
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Runs `f`, printing how long it took and what it returned.
async fn timed<T: std::fmt::Debug>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let v = f.await;
    println!("  {what:<34} {:>9.1?}  {v:?}", t.elapsed());
    v
}

#[tokio::main]
async fn main() -> Result<(), BackendError> {
    let store = CACHE.store().name();
    println!("store: {store}");
    // Start from an empty namespace (a previous run on Valkey left entries behind).
    let _ = CACHE.invalidate_pattern("*").await;

    println!("1. user profile");
    timed("user_profile(1)  miss", user_profile(1)).await?;
    timed("user_profile(1)  hit", user_profile(1)).await?;
    timed(
        "user_profile(1)  bypass (_uncached)",
        user_profile_uncached(1),
    )
    .await?;
    println!("  database calls: {}", DB.calls());

    println!("2. weather, stale-if-error");
    timed("weather(Lyon)  miss", weather("Lyon")).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    WEATHER_API.down.store(true, Ordering::SeqCst);
    timed("weather(Lyon)  expired, API down", weather("Lyon")).await?;
    println!("  API calls: {} (the second failed)", WEATHER_API.calls());

    println!("3. external price");
    let t = Instant::now();
    let burst = (0..50).map(|_| tokio::spawn(price("ACME")));
    for r in futures_util::future::join_all(burst).await {
        r.expect("task")?;
    }
    println!(
        "  50 concurrent price(ACME)  {:>9.1?}  feed calls: {}",
        t.elapsed(),
        FEED.calls()
    );
    timed("price(LATE)  delayed quote", price("LATE")).await?;
    timed("price(LATE)  not cached: runs again", price("LATE")).await?;
    println!("  feed calls: {}", FEED.calls());

    println!("4. invalidation on update");
    let before = DB.calls();
    for page in 1..=3 {
        user_posts(1, page).await?;
    }
    user_posts(2, 1).await?;
    user_list().await?;
    user_profile(1).await?;
    println!("  warmed: {} database calls", DB.calls() - before);
    timed("update_user(1, \"Ada L.\")", update_user(1, "Ada L.")).await?;
    let before = DB.calls();
    timed("user_profile(1)", user_profile(1)).await?;
    timed("user_list()", user_list()).await?;
    timed("user_posts(1, 2)", user_posts(1, 2)).await?;
    timed("user_posts(2, 1)  untouched: a hit", user_posts(2, 1)).await?;
    println!(
        "  database calls after the update: {} (profile, list, one page of user 1)",
        DB.calls() - before
    );

    let s = CACHE.stats();
    println!(
        "cache: {} hits, {} misses, {} coalesced, {} stale-if-error, {} stored, {} invalidated",
        s.hits, s.misses, s.coalesced, s.stale_if_error, s.stores, s.invalidated
    );
    Ok(())
}
