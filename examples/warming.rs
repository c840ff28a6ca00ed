//! Start-up cache warming: fill the caches a service needs before it takes traffic, the way a
//! Python service's `warm_critical_caches()` would, then serve.
//!
//! Three kinds of warming, each the natural tool for its data:
//!
//! 1. **Reference data** (countries) that is known up front: `Cache::warm_values`, pipelined in
//!    batches (one round trip per batch);
//! 2. **Active users' data**: `Cache::get_or_set_many`, one batch query for whatever is missing;
//! 3. **Popular pages** (the top products): `Cache::warm`, which drives requests through the
//!    router itself so each route's `CacheLayer` fills exactly as it would under traffic.
//!
//! Run it:
//!
//! ```text
//! cargo run --example warming                                    # warm, then serve on :3001
//! cargo run --example warming -- --once                          # warm, print the report, exit
//! EXIT_AFTER_WARM=1 cargo run --example warming                  # same as --once
//! VALKEY_URL=redis://127.0.0.1:6379 cargo run --example warming  # Valkey instead of memory
//! PORT=8080 cargo run --example warming                          # another port
//! ```
//!
//! Then try (watch the `cache-status` header and the timings):
//!
//! ```text
//! curl -i localhost:3001/products/1        # warmed: a hit from the first request
//! curl -i localhost:3001/products/500      # not in the top 100: a miss (~40 ms), then hits
//! curl -i localhost:3001/countries/FR      # reference data from warm_values, no "database"
//! curl -i localhost:3001/users/7           # an active user warmed by get_or_set_many
//! curl -i localhost:3001/stats             # the cache's counters
//! ```
//!
//! With Valkey, run it twice: the second start-up finds the pages still fresh
//! (`already_fresh=100`) and skips them. Ctrl-C stops it gracefully.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_valkey_cache::function::{Options, WarmOptions};
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyStore};

/// How many "top" product pages are warmed.
const POPULAR_PRODUCTS: u32 = 100;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Country {
    code: String,
    name: String,
    currency: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    plan: String,
}

/// Stands in for the database; counts the queries it answers.
#[derive(Clone, Default)]
struct Db {
    queries: Arc<AtomicUsize>,
}

impl Db {
    fn countries(&self) -> Vec<Country> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        [
            ("FR", "France", "EUR"),
            ("DE", "Germany", "EUR"),
            ("GB", "United Kingdom", "GBP"),
            ("US", "United States", "USD"),
            ("JP", "Japan", "JPY"),
            ("BR", "Brazil", "BRL"),
            ("IN", "India", "INR"),
            ("CH", "Switzerland", "CHF"),
        ]
        .into_iter()
        .map(|(code, name, currency)| Country {
            code: code.into(),
            name: name.into(),
            currency: currency.into(),
        })
        .collect()
    }

    async fn users(&self, ids: Vec<u64>) -> Result<Vec<(u64, User)>, StatusCode> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        // One `SELECT ... WHERE id = ANY($1)`.
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(ids
            .into_iter()
            .map(|id| {
                let user = User {
                    id,
                    name: format!("user-{id}"),
                    plan: if id % 3 == 0 { "pro" } else { "free" }.into(),
                };
                (id, user)
            })
            .collect())
    }

    async fn product(&self, id: u32) -> Value {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(40)).await;
        json!({ "id": id, "name": format!("Product {id}"), "price_cents": 100 + id * 7 })
    }
}

#[derive(Clone)]
struct App {
    cache: Cache,
    db: Db,
}

fn country_key(code: &str) -> String {
    format!("country:{}", tower_valkey_cache::key::escape(code))
}

fn user_key(id: &u64) -> String {
    format!("user:{id}")
}

async fn product(State(app): State<App>, Path(id): Path<u32>) -> Json<Value> {
    Json(app.db.product(id).await)
}

async fn country(
    State(app): State<App>,
    Path(code): Path<String>,
) -> Result<Json<Country>, StatusCode> {
    let db = app.db.clone();
    let code = code.to_ascii_uppercase();
    let c = app
        .cache
        .get_or_set(&country_key(&code), || async move {
            db.countries()
                .into_iter()
                .find(|c| c.code == code)
                .ok_or(StatusCode::NOT_FOUND)
        })
        .await?;
    Ok(Json(c))
}

async fn user(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<User>, StatusCode> {
    let db = app.db.clone();
    let mut users = app
        .cache
        .get_or_set_many(&[id], user_key, &Options::new(), |ids| async move {
            db.users(ids).await
        })
        .await?;
    users.pop().flatten().map(Json).ok_or(StatusCode::NOT_FOUND)
}

async fn stats(State(app): State<App>) -> Json<Value> {
    let s = app.cache.stats();
    Json(json!({
        "hits": s.hits,
        "misses": s.misses,
        "stores": s.stores,
        "coalesced": s.coalesced,
        "store_unavailable": s.store_unavailable,
        "db_queries": app.db.queries.load(Ordering::Relaxed),
    }))
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/products/{id}",
            get(product).route_layer(
                CacheLayer::new(app.cache.clone())
                    .key("product:{id}")
                    .ttl(Duration::from_secs(300)),
            ),
        )
        .route("/countries/{code}", get(country))
        .route("/users/{id}", get(user))
        .route("/stats", get(stats))
        .with_state(app)
}

/// Fills the caches the service needs before it serves. Best effort: a store that is down or a
/// failing query is reported, and the service starts anyway (requests then fill the caches).
async fn warm_critical_caches(app: &App, router: &Router) {
    let started = Instant::now();

    // 1. Reference data, known up front: pipelined writes, 100 per round trip.
    let t = Instant::now();
    let countries = app
        .db
        .countries()
        .into_iter()
        .map(|c| (country_key(&c.code), c));
    match app
        .cache
        .warm_values(
            countries,
            100,
            &Options::new().ttl(Duration::from_secs(3600)),
        )
        .await
    {
        Ok(n) => println!(
            "  reference data : {n} countries stored in {:?}",
            t.elapsed()
        ),
        Err(e) => println!("  reference data : not warmed ({e})"),
    }

    // 2. Active users: one batch query for the ones not cached yet.
    let t = Instant::now();
    let active: Vec<u64> = (1..=50).collect();
    let db = app.db.clone();
    let queries_before = app.db.queries.load(Ordering::Relaxed);
    match app
        .cache
        .get_or_set_many(&active, user_key, &Options::new(), |missing| async move {
            println!(
                "  active users   : loading {} missing of 50 in one query",
                missing.len()
            );
            db.users(missing).await
        })
        .await
    {
        Ok(users) => println!(
            "  active users   : {} ready in {:?} ({} database queries)",
            users.iter().flatten().count(),
            t.elapsed(),
            app.db.queries.load(Ordering::Relaxed) - queries_before
        ),
        Err(status) => println!("  active users   : not warmed (query failed: {status})"),
    }

    // 3. Popular pages: through the router, so each route's CacheLayer fills as in traffic.
    let requests = (1..=POPULAR_PRODUCTS).map(|id| {
        axum::http::Request::get(format!("/products/{id}"))
            .body(axum::body::Body::empty())
            .expect("valid request")
    });
    let opts = WarmOptions::new().concurrency(16).on_progress(|r| {
        let done = r.warmed + r.already_fresh + r.failed;
        if done % 25 == 0 {
            println!("  popular pages  : {done}/{POPULAR_PRODUCTS} ...");
        }
    });
    let report = app.cache.warm(router.clone(), requests, opts).await;
    println!(
        "  popular pages  : warmed={} already_fresh={} failed={} in {:?}",
        report.warmed, report.already_fresh, report.failed, report.elapsed
    );

    let s = app.cache.stats();
    println!(
        "warming done in {:?}: {} entries stored, {} database queries, {} store errors",
        started.elapsed(),
        s.stores,
        app.db.queries.load(Ordering::Relaxed),
        s.store_errors
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let once = std::env::args().skip(1).any(|a| a == "--once")
        || std::env::var("EXIT_AFTER_WARM").is_ok_and(|v| v == "1");

    let (cache, store_name) = match std::env::var("VALKEY_URL") {
        Ok(url) => (
            Cache::builder(ValkeyStore::new(&url)?)
                .namespace("warming")
                .build(),
            format!("Valkey at {url}"),
        ),
        Err(_) => (
            Cache::builder(MemoryStore::new())
                .namespace("warming")
                .build(),
            "the embedded MemoryStore (set VALKEY_URL to use Valkey)".to_string(),
        ),
    };
    let app = App {
        cache,
        db: Db::default(),
    };
    let router = router(app.clone());

    // Connect before warming: the first connection can take longer than the 100 ms operation
    // timeout. A store that is down is not fatal: the service starts and serves without it.
    if let Err(e) = app.cache.store().ping().await {
        println!("cache store not reachable ({e}); warming will be skipped where it needs it");
    }
    println!("warming caches in {store_name} ...");
    warm_critical_caches(&app, &router).await;
    if once {
        return Ok(());
    }

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("serving on http://127.0.0.1:{port} (Ctrl-C to stop); try:");
    println!("  curl -i localhost:{port}/products/1     # warmed: a hit");
    println!("  curl -i localhost:{port}/products/500   # a miss, then hits");
    println!("  curl -i localhost:{port}/countries/FR");
    println!("  curl -i localhost:{port}/users/7");
    println!("  curl -s localhost:{port}/stats");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("shutting down");
        })
        .await?;
    Ok(())
}
