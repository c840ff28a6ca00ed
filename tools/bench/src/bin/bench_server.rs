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
//!
//! # Sweeps (`scripts/bench --sweep`)
//!
//! Two environment variables size the run; unset, the server behaves exactly as described above:
//!
//! - `BENCH_BODY=BYTES` (default 1024): the body the `bare` handler returns (so every cached
//!   mode stores and serves that many bytes) and the value `raw-get` seeds.
//! - `BENCH_KEYS=N` (default 1): the number of distinct ids wrk asks for (`/item/1` ..
//!   `/item/N`, `tools/bench/random-ids.lua`). When it is set, `bare`, `raw-get`,
//!   `valkey-hit`, `l1-hit` and `memory-hit` **preload** all N entries before printing `ready`,
//!   so every measured request is a hit: `raw-get` with pipelined `SET item:{id}` (batches of
//!   1,000, 8 in flight); the cached modes with the crate's own [`Cache::warm`], driving
//!   `GET /item/{id}` through the router in 4 tasks of 64 requests in flight each, so the
//!   entries are exactly what the layer stores on a miss. `memory-hit`'s `MemoryStore` is
//!   bounded to `max(10,000, N)` entries and `l1-hit`'s L1 holds `max(10,000, N)` entries, so
//!   both hold every key (no eviction during the run). Progress goes to stderr. A Valkey-backed
//!   preload leaves the marker key `benchsweep:{mode}:{N}:{BYTES}`; a later server of the same
//!   mode and size finds it and skips the writes (`l1-hit` still reads every key once, which
//!   fills its L1), so the rounds of a sweep pay the preload once (scripts/bench `FLUSHALL`s
//!   between points). With `BENCH_KEYS` set the cached modes also serve
//!   `GET /__bench/stats` (`hits H misses M stale S l1_hits A l1_misses B l1_entries E`),
//!   which scripts/bench reads before and after a run to report the hit ratio of the measured
//!   requests. Other modes ignore `BENCH_KEYS` (they warn).

use axum::{extract::Path, extract::State, routing::get, Router};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tower_valkey_cache::eviction::Lru;
use tower_valkey_cache::function::WarmOptions;
use tower_valkey_cache::store::Write;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyConfig, ValkeyStore};

/// The body size when `BENCH_BODY` is not set.
const BODY_LEN: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `BENCH_KEYS` and `BENCH_BODY` (see the module docs, *Sweeps*).
#[derive(Clone, Copy, Debug)]
struct Sweep {
    /// Distinct ids; preloaded when `preload`.
    keys: u64,
    /// Body bytes.
    body: usize,
    /// `BENCH_KEYS` was set: preload the store and serve `/__bench/stats`.
    preload: bool,
}

fn sweep() -> &'static Sweep {
    static SWEEP: OnceLock<Sweep> = OnceLock::new();
    SWEEP.get_or_init(|| {
        let num = |name: &str| -> Option<u64> {
            let v = std::env::var(name).ok()?;
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    eprintln!("bench_server: {name} must be a positive integer, not {v:?}");
                    std::process::exit(2);
                }
            }
        };
        let keys = num("BENCH_KEYS");
        Sweep {
            keys: keys.unwrap_or(1),
            body: num("BENCH_BODY").map_or(BODY_LEN, |b| b as usize),
            preload: keys.is_some(),
        }
    })
}

fn body() -> Bytes {
    Bytes::from(vec![b'x'; sweep().body])
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

/// The marker a Valkey-backed preload leaves (see the module docs, *Sweeps*).
fn marker(mode: &str) -> String {
    let sw = sweep();
    format!("benchsweep:{mode}:{}:{}", sw.keys, sw.body)
}

async fn marker_conn(url: &str) -> Result<MultiplexedConnection, BoxError> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn has_marker(conn: &mut MultiplexedConnection, mode: &str) -> Result<bool, BoxError> {
    let n: u64 = redis::cmd("EXISTS")
        .arg(marker(mode))
        .query_async(conn)
        .await?;
    Ok(n == 1)
}

async fn set_marker(conn: &mut MultiplexedConnection, mode: &str) -> Result<(), BoxError> {
    let () = redis::cmd("SET")
        .arg(marker(mode))
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Prints preload progress on stderr about every 10% (and at most every 100,000 entries).
fn progress(what: &'static str, n: u64) -> impl Fn(u64) + Send + Sync + Clone + 'static {
    let started = Instant::now();
    let every = (n / 10).clamp(1, 100_000);
    move |done: u64| {
        if done.is_multiple_of(every) || done == n {
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            eprintln!(
                "preload {what}: {done}/{n} ({:.0}/s, {secs:.1} s)",
                done as f64 / secs
            );
        }
    }
}

/// `raw-get`'s preload: `SET item:{id}` for every id, pipelined in batches of 1,000 with 8
/// batches in flight on the shared connection.
async fn preload_raw(conn: &MultiplexedConnection, value: Bytes, n: u64) -> Result<(), BoxError> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    const BATCH: u64 = 1000;
    let report = progress("raw-get SET", n);
    let done = Arc::new(AtomicU64::new(0));
    futures_util::stream::iter((0..n.div_ceil(BATCH)).map(|b| {
        let mut conn = conn.clone();
        let value = value.clone();
        let (done, report) = (done.clone(), report.clone());
        async move {
            let ids = b * BATCH + 1..=((b + 1) * BATCH).min(n);
            let count = ids.clone().count() as u64;
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.cmd("SET")
                    .arg(format!("item:{id}"))
                    .arg(value.as_ref())
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
            // One report per batch, at the batch's end.
            let d = done.fetch_add(count, Ordering::Relaxed) + count;
            if d.is_multiple_of((n / 10).clamp(1, 100_000).div_ceil(BATCH) * BATCH) || d == n {
                report(d);
            }
            Ok::<(), BoxError>(())
        }
    }))
    .buffer_unordered(8)
    .try_collect::<()>()
    .await
}

/// The cached modes' preload: `GET /item/{id}` for every id through `app` with
/// [`Cache::warm`] (4 tasks, 64 requests in flight each), so the store holds exactly what the
/// layer stores on a miss. An entry already fresh (a marker's rerun for `l1-hit`) counts as
/// loaded: reading it filled the L1.
async fn preload_layer(cache: &Cache, app: &Router, what: &'static str) -> Result<(), BoxError> {
    const TASKS: u64 = 4;
    let n = sweep().keys;
    let report = progress(what, n);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (cache, app) = (cache.clone(), app.clone());
        let (done, report) = (done.clone(), report.clone());
        let requests = (1 + t..=n).step_by(TASKS as usize).map(|id| {
            http::Request::get(format!("/item/{id}"))
                .body(axum::body::Body::empty())
                .expect("a valid request")
        });
        let opts = WarmOptions::new()
            .concurrency(64)
            .on_progress(move |_| report(done.fetch_add(1, Ordering::Relaxed) + 1));
        tasks.push(tokio::spawn(async move {
            cache.warm(app, requests, opts).await
        }));
    }
    let (mut loaded, mut failed) = (0u64, 0u64);
    for t in tasks {
        let r = t.await?;
        loaded += (r.warmed + r.already_fresh) as u64;
        failed += r.failed as u64;
    }
    if failed > 0 || loaded != n {
        return Err(
            format!("preload {what}: {loaded} of {n} entries loaded, {failed} failed").into(),
        );
    }
    if let Some(l1) = cache.l1_stats() {
        eprintln!("preload {what}: L1 holds ~{} entries", l1.entries);
    }
    Ok(())
}

/// A cached mode under a sweep: preloads `app`'s cache (unless a Valkey marker says it is
/// already loaded; `l1-hit` reloads its L1 from Valkey either way) and adds `/__bench/stats`.
/// Without `BENCH_KEYS`, `app` unchanged.
async fn swept(
    mode: &'static str,
    url: Option<&str>,
    cache: Cache,
    app: Router,
) -> Result<Router, BoxError> {
    if !sweep().preload {
        return Ok(app);
    }
    let mut conn = match url {
        Some(u) => Some(marker_conn(u).await?),
        None => None,
    };
    let loaded = match &mut conn {
        Some(c) => has_marker(c, mode).await?,
        None => false,
    };
    if !loaded || cache.l1_stats().is_some() {
        preload_layer(&cache, &app, mode).await?;
    } else {
        eprintln!("preload {mode}: {} found, nothing to write", marker(mode));
    }
    if let Some(c) = &mut conn {
        set_marker(c, mode).await?;
    }
    Ok(app.route(
        "/__bench/stats",
        get(move || {
            let cache = cache.clone();
            async move {
                let s = cache.stats();
                let l1 = cache.l1_stats().unwrap_or_default();
                format!(
                    "hits {} misses {} stale {} l1_hits {} l1_misses {} l1_entries {}\n",
                    s.hits, s.misses, s.stale_hits, l1.hits, l1.misses, l1.entries
                )
            }
        }),
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
    if sweep().preload
        && !matches!(
            mode.as_str(),
            "bare" | "raw-get" | "valkey-hit" | "l1-hit" | "memory-hit"
        )
    {
        eprintln!("bench_server: BENCH_KEYS applies to bare, raw-get, valkey-hit, l1-hit and memory-hit; {mode} ignores it");
    }

    let app = match mode.as_str() {
        "bare" => Router::new()
            .route("/item/{id}", get(bare))
            .with_state(body()),
        "raw-get" => {
            let store = valkey_store(&url)?;
            let mut conn = store.connection().await?;
            let sw = sweep();
            if !sw.preload {
                let () = redis::cmd("SET")
                    .arg("item:1")
                    .arg(body().as_ref())
                    .query_async(&mut conn)
                    .await?;
            } else if has_marker(&mut conn, "raw-get").await? {
                eprintln!(
                    "preload raw-get: {} found, nothing to write",
                    marker("raw-get")
                );
            } else {
                preload_raw(&conn, body(), sw.keys).await?;
                set_marker(&mut conn, "raw-get").await?;
            }
            Router::new()
                .route("/item/{id}", get(raw_get))
                .with_state(conn)
        }
        "valkey-hit" => {
            let cache = Cache::builder(valkey_store(&url)?)
                .namespace("bench")
                .build();
            let app = cached(CacheLayer::new(cache.clone()).ttl(hour));
            swept("valkey-hit", Some(&url), cache, app).await?
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
                // Every key of a sweep fits (the default run: 10,000).
                .l1(sweep().keys.max(10_000), hour)
                .build();
            // Hits are only served from L1 while its invalidation subscription is up.
            for _ in 0..500 {
                if cache.l1_stats().is_some_and(|s| s.listening) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let app = cached(CacheLayer::new(cache.clone()).ttl(hour));
            swept("l1-hit", Some(&url), cache, app).await?
        }
        "cluster-hit" => {
            let urls = std::env::var("VALKEY_CLUSTER_URLS")
                .map_err(|_| "cluster-hit needs VALKEY_CLUSTER_URLS (comma-separated node URLs)")?;
            let mut cfg = ValkeyConfig::cluster(urls.split(',').map(str::trim));
            if let Ok(n) = std::env::var("BENCH_LANES") {
                cfg = cfg.lanes(n.parse()?);
            }
            // The one-slot layout BENCHMARKS.md was measured with (a sharded namespace, the
            // default on a cluster, serves a hit from one shard the same way).
            let cache = Cache::builder(ValkeyStore::with_config(cfg)?)
                .namespace("bench")
                .shards(1)
                .build();
            cached(CacheLayer::new(cache).ttl(hour))
        }
        "memory-hit" => {
            let sw = sweep();
            let store = if sw.preload {
                // Room for every key of the sweep (values: the body plus the entry's headers).
                let n = usize::try_from(sw.keys)?;
                MemoryStore::new()
                    .max_entries(n.max(10_000))
                    .max_bytes((n.saturating_mul(sw.body + 4096)).max(64 << 20))
            } else {
                MemoryStore::new()
            };
            let cache = Cache::builder(store).namespace("bench").build();
            let app = cached(CacheLayer::new(cache.clone()).ttl(hour));
            swept("memory-hit", None, cache, app).await?
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
