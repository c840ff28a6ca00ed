//! The server behind `scripts/bench`: one route, `GET /item/{id}`, in one of several modes, so
//! that `wrk` can compare the cache against what it replaces.
//!
//! ```text
//! VALKEY_URL=redis://127.0.0.1:6379 cargo run --release -p tvc-bench --bin bench_server -- MODE PORT
//! ```
//!
//! | mode | the route |
//! |---|---|
//! | `bare` | returns a fixed 1 KiB body (the ceiling: axum + hyper alone) |
//! | `raw-get` | one `GET item:{id}` on one shared `MultiplexedConnection`, body = the value |
//! | `valkey-hit` | `CacheLayer` on a `ValkeyStore` in front of the `bare` handler (hits after warm-up) |
//! | `memory-hit` | `CacheLayer` on a `MemoryStore` in front of the `bare` handler |
//! | `miss` | `CacheLayer` on a `ValkeyStore` in front of a handler that sleeps 50 ms |
//! | `stale-hit` | `valkey-hit` with a 1 ms TTL and a 1 h stale-while-revalidate window: every request is a stale hit (one background refresh per key at a time) |
//! | `revalidate` | `valkey-hit`, requests carry the entry's `If-None-Match` (scripts/bench sends it): `304 Not Modified` from the cache |
//! | `lru-hit` | `valkey-hit` with LRU eviction (capacity 10,000): each hit also touches the entry's rank |
//! | `metrics-hit` | `valkey-hit` recording into an OpenTelemetry SDK meter provider with a Prometheus reader (metrics on) |
//! | `store-read` | diagnostic: `Store::read` on the `ValkeyStore` (lanes, `MGET` entry + clock), no layer |
//! | `valkey-hit-64k` | `valkey-hit` with a 64 KiB JSON body (namespace `bench64`) |
//! | `valkey-hit-64k-compressed` | the same with `CacheBuilder::compression` (feature `compression`; namespace `bench64z`) |
//! | `valkey-hit-64k-sealed` | the same compressed and encrypted (features `compression`, `encryption`; namespace `bench64s`) |
//! | `cluster-hit` | `valkey-hit` on a Valkey Cluster: `ValkeyStore::cluster` over `VALKEY_CLUSTER_URLS` |
//!
//! In `miss` mode every request gets a key of its own (`item:{id}:{n}`, `n` a process-wide
//! counter), so each one is a genuine miss: a store read that finds nothing, the handler, then
//! a store write (entries live 1 s so the run does not fill Valkey). This is a miss, not a
//! bypass: the key strategy returns a key, it is just never seen twice.
//!
//! `VALKEY_URL` (default `redis://127.0.0.1:6379`) picks the server; `item:1` (1 KiB) is seeded
//! at start. `BENCH_LANES=N` sets [`ValkeyConfig::lanes`] (default: the library's), to compare
//! lane counts. `VALKEY_CLUSTER_URLS` (comma-separated node URLs) is the cluster of
//! `cluster-hit`. The server prints `ready` on stdout once it is listening.

use axum::{extract::Path, extract::State, routing::get, Router};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_valkey_cache::eviction::Lru;
use tower_valkey_cache::store::Write;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyConfig, ValkeyStore};

const BODY_LEN: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn body() -> Bytes {
    Bytes::from(vec![b'x'; BODY_LEN])
}

async fn bare(State(body): State<Bytes>) -> Bytes {
    body
}

async fn slow(State(body): State<Bytes>) -> Bytes {
    tokio::time::sleep(Duration::from_millis(50)).await;
    body
}

async fn raw_get(
    State(conn): State<MultiplexedConnection>,
    Path(id): Path<String>,
) -> Result<Bytes, (http::StatusCode, String)> {
    let mut conn = conn;
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("item:{id}"))
        .query_async(&mut conn)
        .await
        .map_err(|e| (http::StatusCode::BAD_GATEWAY, e.to_string()))?;
    value
        .map(Bytes::from)
        .ok_or_else(|| (http::StatusCode::NOT_FOUND, "no such item".to_owned()))
}

async fn store_read(
    State(cache): State<Cache>,
    Path(id): Path<String>,
) -> Result<Bytes, (http::StatusCode, String)> {
    let key = format!("item:{}", tower_valkey_cache::key::escape(&id));
    let lookup = cache
        .store()
        .read(cache.key_space(), &key)
        .await
        .map_err(|e| (http::StatusCode::BAD_GATEWAY, e.to_string()))?;
    lookup
        .value
        .ok_or_else(|| (http::StatusCode::NOT_FOUND, "no such item".to_owned()))
}

fn valkey_store(url: &str) -> Result<ValkeyStore, BoxError> {
    let mut cfg = ValkeyConfig::from_url(url);
    if let Ok(n) = std::env::var("BENCH_LANES") {
        cfg = cfg.lanes(n.parse()?);
    }
    Ok(ValkeyStore::with_config(cfg)?)
}

/// The bare handler (answering `body`) behind a `CacheLayer` keyed `item:{id}`.
fn cached_with(layer: CacheLayer, body: Bytes) -> Router {
    Router::new()
        .route("/item/{id}", get(bare).route_layer(layer.key("item:{id}")))
        .with_state(body)
}

/// [`cached_with`] the 1 KiB body.
fn cached(layer: CacheLayer) -> Router {
    cached_with(layer, body())
}

/// A 64 KiB JSON array of product records (the `valkey-hit-64k*` modes).
fn json_64k() -> Bytes {
    let mut s = String::from("[");
    let mut n = 0u64;
    while s.len() < 64 * 1024 - 200 {
        if n > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{n},"sku":"SKU-{:06}","name":"Product number {n}","price":{}.{:02},"in_stock":{},"tags":["tag{}","tag{}"],"description":"A fine product with id {n} for the benchmark"}}"#,
            n * 7919 % 1_000_000,
            n % 500,
            n % 100,
            n.is_multiple_of(3),
            n % 17,
            n % 5
        ));
        n += 1;
    }
    s.push(']');
    Bytes::from(s)
}

/// `valkey-hit` with the 64 KiB JSON body: plain, compressed, or compressed and encrypted.
fn hit_64k(url: &str, mode: &str) -> Result<Router, BoxError> {
    let builder = Cache::builder(valkey_store(url)?);
    let cache = match mode {
        "valkey-hit-64k" => builder.namespace("bench64").build(),
        #[cfg(feature = "compression")]
        "valkey-hit-64k-compressed" => builder
            .namespace("bench64z")
            .compression(tower_valkey_cache::Compression::lz4())
            .build(),
        #[cfg(all(feature = "compression", feature = "encryption"))]
        "valkey-hit-64k-sealed" => builder
            .namespace("bench64s")
            .compression(tower_valkey_cache::Compression::lz4())
            .encryption(tower_valkey_cache::Keyring::new(1, &[0x5e; 32])?)
            .build(),
        _ => return Err(format!("{mode} needs --features compression,encryption").into()),
    };
    Ok(cached_with(
        CacheLayer::new(cache).ttl(Duration::from_secs(3600)),
        json_64k(),
    ))
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_server bare|raw-get|valkey-hit|l1-hit|memory-hit|miss|stale-hit|revalidate|\
         lru-hit|metrics-hit|store-read|valkey-hit-64k|valkey-hit-64k-compressed|\
         valkey-hit-64k-sealed|cluster-hit PORT"
    );
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let port: u16 = match args.next().map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => usage(),
    };
    let url = std::env::var("VALKEY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let hour = Duration::from_secs(3600);

    let app = match mode.as_str() {
        "bare" => Router::new()
            .route("/item/{id}", get(bare))
            .with_state(body()),
        "raw-get" => {
            let store = valkey_store(&url)?;
            let mut conn = store.connection().await?;
            let () = redis::cmd("SET")
                .arg("item:1")
                .arg(body().as_ref())
                .query_async(&mut conn)
                .await?;
            Router::new()
                .route("/item/{id}", get(raw_get))
                .with_state(conn)
        }
        "valkey-hit" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench")
                .build();
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "stale-hit" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench_stale")
                .build();
            cached(
                CacheLayer::new(cache)
                    .ttl(Duration::from_millis(1))
                    .stale_while_revalidate(hour),
            )
        }
        "revalidate" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench_304")
                .build();
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "lru-hit" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench_lru")
                .build();
            cached(
                CacheLayer::new(cache)
                    .ttl(hour)
                    .eviction(Lru::with_capacity(10_000)),
            )
        }
        #[cfg(feature = "metrics")]
        "metrics-hit" => {
            use opentelemetry::metrics::MeterProvider as _;
            // A pull reader, as behind a Prometheus endpoint: the recording cost an app pays.
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(prometheus::Registry::new())
                .build()?;
            let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_reader(exporter)
                .build();
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench_metrics")
                .meter(provider.meter("tower-valkey-cache"))
                .build();
            // The provider must outlive the server.
            std::mem::forget(provider);
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "l1-hit" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench_l1")
                .l1(10_000, hour)
                .build();
            // Hits are only served from L1 while its invalidation subscription is up.
            for _ in 0..500 {
                if cache.l1_stats().is_some_and(|s| s.listening) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "cluster-hit" => {
            let urls = std::env::var("VALKEY_CLUSTER_URLS")
                .map_err(|_| "cluster-hit needs VALKEY_CLUSTER_URLS (comma-separated node URLs)")?;
            let mut cfg = ValkeyConfig::cluster(urls.split(',').map(str::trim));
            if let Ok(n) = std::env::var("BENCH_LANES") {
                cfg = cfg.lanes(n.parse()?);
            }
            let cache = Cache::builder(ValkeyStore::with_config(cfg)?)
                .namespace("bench")
                .build();
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "memory-hit" => {
            let cache = Cache::builder(MemoryStore::new())
                .namespace("bench")
                .build();
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "miss" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("benchmiss")
                .build();
            let counter = Arc::new(AtomicU64::new(0));
            let key = move |parts: &http::request::Parts| {
                let id = parts.uri.path().rsplit('/').next().unwrap_or("");
                let n = counter.fetch_add(1, Ordering::Relaxed);
                Some(format!("item:{}:{n}", tower_valkey_cache::key::escape(id)))
            };
            Router::new()
                .route(
                    "/item/{id}",
                    get(slow).route_layer(
                        CacheLayer::new(cache)
                            .key_with(key)
                            .ttl(Duration::from_secs(1)),
                    ),
                )
                .with_state(body())
        }
        "store-read" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("benchstore")
                .build();
            let write = Write {
                key: "item:1",
                value: body(),
                ttl: hour,
                tags: &[],
                since: None,
            };
            cache.store().write(cache.key_space(), write).await?;
            Router::new()
                .route("/item/{id}", get(store_read))
                .with_state(cache)
        }
        "valkey-hit-64k" | "valkey-hit-64k-compressed" | "valkey-hit-64k-sealed" => {
            hit_64k(&url, &mode)?
        }
        _ => usage(),
    };

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    axum::serve(listener, app).await?;
    Ok(())
}
