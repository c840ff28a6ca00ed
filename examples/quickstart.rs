//! A small user service with cached reads and invalidating writes.
//!
//! Run it:
//!
//! ```text
//! cargo run --example quickstart                                  # embedded MemoryStore
//! VALKEY_URL=redis://127.0.0.1:6379 cargo run --example quickstart # Valkey
//! PORT=8080 cargo run --example quickstart                        # another port
//! ```
//!
//! Then try (watch the `cache-status` header):
//!
//! ```text
//! curl -i localhost:3000/users/1                 # fwd=uri-miss; stored (about 50 ms)
//! curl -i localhost:3000/users/1                 # hit (fast)
//! curl -i --compressed localhost:3000/users/1    # the same hit, gzipped, with its own x-request-id
//! curl -i -X PUT localhost:3000/users/1 -H 'content-type: application/json' -d '{"name":"Ada L."}'
//! curl -i localhost:3000/users/1                 # miss with version 2, then hits
//! curl -i 'localhost:3000/users/1/posts?page=2'  # cached per user and page
//! curl -i 'localhost:3000/users/01/posts?page=02' # the same entry: keys name values, not spellings
//! curl -i 'localhost:3000/users/1/posts?page=0'  # 400: pages start at 1 (never cached)
//! curl -i 'localhost:3000/users/1/posts?page=1&page=2'  # 400: one page at a time
//! curl -i localhost:3000/me -H 'authorization: Bearer alice'   # cached per caller only
//! ```
//!
//! The keys are built from what the handlers see: `key_from(Path<u64>)` for users and typed
//! holes (`{id:u64}`, `{query.page:u32}`) for posts, so `/users/1`, `/users/01` and `/users/+1`
//! share one entry that a write through any of them invalidates. A request a handler rejects
//! (`page=0`, `page=x`, `page` twice) is answered by the handler every time: its 400 is not
//! stored, and a typed hole that does not parse serves it uncached (`detail=key-rejected`).
//!
//! Around the routes sit the tower-http middleware a real service runs, in the order README ›
//! Composing with tower-http explains: a request id (set, then copied to the response), a
//! request span with the cache's span inside it, a timeout, and compression outside the cache
//! (entries are stored once, uncompressed; `curl --compressed` gets them gzipped). Only the
//! `CacheLayer`s sit on the routes.
//!
//! Ctrl-C stops it gracefully.

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, put},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, MemoryStore, ValkeyStore};

/// The example's database: users by id, with a version bumped by every write.
#[derive(Clone, Default)]
pub struct Db {
    users: Arc<Mutex<HashMap<u64, (String, u64)>>>,
}

impl Db {
    /// Three users, at version 1.
    pub fn seeded() -> Self {
        let db = Db::default();
        {
            let mut users = db.users.lock().expect("fresh lock");
            for (id, name) in [(1, "Ada"), (2, "Grace"), (3, "Linus")] {
                users.insert(id, (name.to_string(), 1));
            }
        }
        db
    }
}

async fn get_user(State(db): State<Db>, Path(id): Path<u64>) -> Result<Json<Value>, StatusCode> {
    // A simulated database round trip.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let users = db
        .users
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let (name, version) = users.get(&id).ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(json!({ "id": id, "name": name, "version": version })))
}

#[derive(Deserialize)]
struct UserUpdate {
    name: String,
}

async fn put_user(
    State(db): State<Db>,
    Path(id): Path<u64>,
    Json(update): Json<UserUpdate>,
) -> Result<Json<Value>, StatusCode> {
    let mut users = db
        .users
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let entry = users.entry(id).or_insert_with(|| (String::new(), 0));
    entry.0 = update.name;
    entry.1 += 1;
    Ok(Json(
        json!({ "id": id, "name": entry.0, "version": entry.1 }),
    ))
}

/// The `page` query parameter: absent means 1; otherwise given once, a whole number from 1.
/// The handler decides what it accepts; the cache key (`{query.page:u32}`) parses the same way,
/// so a request this rejects is never answered from the cache.
fn page(query: &[(String, String)]) -> Result<u32, (StatusCode, String)> {
    let bad = |msg: &str| (StatusCode::BAD_REQUEST, msg.to_owned());
    let mut pages = query.iter().filter(|(k, _)| k == "page").map(|(_, v)| v);
    match (pages.next(), pages.next()) {
        (None, _) => Ok(1),
        (Some(_), Some(_)) => Err(bad("give `page` once")),
        (Some(p), None) => match p.parse::<u32>() {
            Ok(p) if p >= 1 => Ok(p),
            _ => Err(bad("`page` must be a whole number from 1")),
        },
    }
}

async fn user_posts(
    Path(id): Path<u64>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let page = page(&query)?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let first = (u64::from(page) - 1) * 5 + 1;
    let posts: Vec<Value> = (first..first + 5)
        .map(|n| json!({ "id": n, "title": format!("Post {n} by user {id}") }))
        .collect();
    Ok(Json(json!({ "user": id, "page": page, "posts": posts })))
}

async fn me(headers: HeaderMap) -> Result<Json<Value>, StatusCode> {
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(Json(json!({ "caller": caller })))
}

/// The example's router (also driven by `tests/layer.rs`).
pub fn app(cache: Cache, db: Db) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(get_user)
                .route_layer(
                    CacheLayer::new(cache.clone())
                        // Keyed by the id the handler's `Path<u64>` sees: `/users/01` is user 1.
                        .key_from(|Path(id): Path<u64>| format!("user:{id}"))
                        .tags(["user:{id:u64}"])
                        .ttl(Duration::from_secs(60)),
                )
                // `merge` keeps each method's layers to itself: the PUT invalidates, the GET caches.
                .merge(
                    put(put_user).route_layer(
                        InvalidateLayer::new(cache.clone())
                            .keys(["user:{id:u64}"])
                            .patterns(["user_{id:u64}_posts:*"])
                            .tags(["user:{id:u64}"]),
                    ),
                ),
        )
        .route(
            "/users/{id}/posts",
            get(user_posts).route_layer(
                CacheLayer::new(cache.clone())
                    // Typed holes: `page=02` is page 2; `page=x` or `page` twice is rejected by
                    // the key as by the handler, and served uncached.
                    .key("user_{id:u64}_posts:page_{query.page:u32}")
                    .tags(["user:{id:u64}"])
                    .ttl(Duration::from_secs(60)),
            ),
        )
        .route(
            "/me",
            // The key includes the caller's (hashed) credentials: never shared between callers.
            get(me).route_layer(
                CacheLayer::new(cache)
                    .key("me:{header.authorization}")
                    .ttl(Duration::from_secs(30)),
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(db)
        // Outermost first. Everything here wraps the cache, so it applies to hits too: each
        // response gets its own request id, span and timeout, and is compressed for its client.
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Duration::from_secs(10),
                ))
                .layer(CompressionLayer::new()),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=debug,tower_valkey_cache=info".into()),
        )
        .init();

    let (cache, store_name) = match std::env::var("VALKEY_URL") {
        Ok(url) => {
            let store = ValkeyStore::new(&url)?;
            (
                Cache::builder(store).namespace("quickstart").build(),
                format!("Valkey at {url}"),
            )
        }
        Err(_) => (
            Cache::builder(MemoryStore::new())
                .namespace("quickstart")
                .build(),
            "the embedded MemoryStore (set VALKEY_URL=redis://127.0.0.1:6379 to use Valkey)"
                .to_string(),
        ),
    };

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("quickstart listening on http://127.0.0.1:{port}, caching in {store_name}");
    println!("try:");
    println!("  curl -i localhost:{port}/users/1          # twice: fwd=uri-miss; stored, then hit");
    println!("  curl -i -X PUT localhost:{port}/users/1 -H 'content-type: application/json' -d '{{\"name\":\"Ada L.\"}}'");
    println!("  curl -i 'localhost:{port}/users/1/posts?page=2'");
    println!("  curl -i localhost:{port}/me -H 'authorization: Bearer alice'");

    axum::serve(listener, app(cache, Db::seeded()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("shutting down");
        })
        .await?;
    Ok(())
}
