//! Hours under load and faults with every resource flat: the program behind `scripts/soak`.
//!
//! ```text
//! cargo run --release -p tvc-bench --bin soak -- [--minutes N | --quick] [--fault-every SECS]
//!     [--concurrency N] [--out DIR]
//! ```
//!
//! It owns the whole experiment, on 127.0.0.1 only:
//!
//! - a standalone `valkey-server` behind a delaying TCP proxy (`tvc_harness::DelayProxy`), and a
//!   local Valkey Cluster of 3 primaries + 3 replicas;
//! - an axum application configured as a production user would, in a process of its own (this
//!   program run as `soak --app`, [`app_main`]), so the RSS, descriptors, heap and tasks sampled
//!   are the application's alone: not the load generator's, the fault injectors' or the
//!   sampler's, whose allocations would otherwise share its allocator's arenas:
//!   - `GET /items/{id}`: `CacheLayer` on a `Cache` with the L1 tier (1,000 entries) in front of
//!     the standalone Valkey, stale-while-revalidate and stale-if-error, tags `items` and
//!     `group:G` (from the handler's `Surrogate-Key`);
//!   - `GET /v/{id}`: the same cache, a response that varies on `Accept-Language` (variant
//!     markers and generations);
//!   - `GET /recent/{id}`: the same cache, bounded by `Lru::with_capacity(100)`;
//!   - `GET /fn/{id}`: a handler calling `Cache::get_or_set_with` (the function cache);
//!   - `GET /c/items/{id}`: a `CacheLayer` on a second `Cache` over the cluster;
//!   - writes: `PUT /items/{id}` (InvalidateLayer: the id's key on every route, both caches),
//!     `POST /groups/{g}` (tag `group:G`) and `POST /prefix/{d}` (pattern `*:D??`, ids D00-D99).
//!     Each bumps the ids' versions in the "database" first, then invalidates. Both caches set
//!     `invalidation_wait(2 s)` (the app is one process), so a write answers within it.
//! - a closed-loop load: `--concurrency` readers over 1,000 ids with Zipf(1) popularity across
//!   the routes, two writers (a key write every 20 ms, a tag write every 500 ms, a pattern write
//!   every 2 s, each followed by a read of what it wrote), and a client sending bad requests.
//!
//! Every read checks its body: the id it asked for, the language it asked for, and a version at
//! least the highest one acknowledged for that id before the read was sent (a **stale read**). A
//! writer's own read-after-write that finds an older version is a **read-after-write violation**.
//! Bad requests must answer 4xx; every other request must answer 2xx within 5 s.
//!
//! Faults, one every `--fault-every` seconds (90; `--quick` 25), round-robin, 10 s each: the
//! standalone Valkey killed and restarted empty, paused (SIGSTOP), `maxmemory` at its usage with
//! `noeviction` while another tenant writes, `CLIENT KILL` every 250-750 ms, every reply delayed
//! 250 ms by the proxy; on the cluster, the primary of the cluster namespace's slot killed (its
//! replica takes over; the old primary comes back as a replica) and that slot migrated to
//! another primary (`CLUSTER SETSLOT` + `MIGRATE`, under load).
//!
//! Every 10 s it samples (CSV in `--out`, `samples.csv`) the app process's RSS, live heap,
//! glibc malloc's held and free bytes, open descriptors, threads and alive tokio tasks, the
//! caches' single-flight entries, owed invalidations and L1 entries (all from the app's
//! `GET /__soak/stats`), Valkey `used_memory`, connections and key counts by kind, and the
//! request figures of the last 10 s. At the end it checks the goals (see `goals`): growth is the
//! trend of per-fault-cycle means after the warm-up cycle (`cycle_means`), bounds hold at every
//! sample. It prints a Markdown report and exits 1 when a goal is missed.
//! `--out DIR` also gets `report.md` and the SVG plots (`scripts/soak --write` copies them into
//! the repository).

use axum::extract::{Path, State};
use axum::http::HeaderMap as AxumHeaders;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_valkey_cache::eviction::Lru;
use tower_valkey_cache::function::Options;
use tower_valkey_cache::testing::CacheStatus;
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, Invalidation, ValkeyStore};
use tvc_harness::{info_field, memory_pressure, DelayProxy, Tenant, ValkeyCluster, ValkeyServer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const IDS: usize = 1000;
const GROUPS: usize = 20;
const LANGS: [&str; 3] = ["en", "fr", "de"];
const BODY_LEN: usize = 512;
const NS: &str = "soak";
const CLUSTER_NS: &str = "soakc";
const TTL: Duration = Duration::from_secs(5);
const SWR: Duration = Duration::from_secs(30);
const SIE: Duration = Duration::from_secs(300);
const L1_CAPACITY: u64 = 1000;
const BOUNDED: usize = 100;
const RETRY_CAPACITY: usize = 1024;
/// Invalidations late at once at most (ARCHITECTURE.md, "Bounds").
const LATE_MAX: u64 = 64;
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Writes answer within this (`CacheBuilder::invalidation_wait`): the app is one process, so
/// an invalidation past it is owed here, where every read-after-write check runs.
const INVALIDATION_WAIT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const SAMPLE: Duration = Duration::from_secs(10);
const FAULT_LEN: Duration = Duration::from_secs(10);
/// Keys a `PUT` invalidates on the standalone cache: `item:`, `v:`, `recent:`, `fn:`.
const KEYS_PER_PUT: u64 = 4;
/// `ValkeyConfig::pool_size`'s default (the hot-path lanes are checked out of it; the bulk lane
/// is a connection of its own).
const POOL_SIZE: u64 = 8;
/// The app's connections to the standalone Valkey may number at most this: the pool (the
/// hot-path lanes are checked out of it), the bulk lane (a connection of its own) and the L1
/// subscription. Pooled connections open on demand (a fault's reconnect storm opens more than
/// the start needed), so the idle check allows tasks for the connections open at the end.
const STANDALONE_CONNECTIONS: u64 = POOL_SIZE + 2;
/// Tasks per standalone connection in the app's process: the redis driver (the delay proxy's
/// copier runs in the soak's own process).
const TASKS_PER_STANDALONE_CONNECTION: u64 = 1;
/// One retry worker per `Cache` (the standalone and the cluster one), spawned the first time it
/// owes an invalidation and then idle until the cache is dropped (ARCHITECTURE.md, *Bounds*).
const RETRY_WORKERS: u64 = 2;

// ---------------------------------------------------------------------------------- args

struct Args {
    duration: Duration,
    fault_every: Duration,
    concurrency: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        // A warm-up of one fault cycle and one fault (8 x 90 s), then three full cycles judged
        // (31.5 min).
        duration: Duration::from_secs(45 * 60),
        fault_every: Duration::from_secs(90),
        concurrency: 32,
        out: PathBuf::from("bench-results/soak"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--quick" => {
                args.duration = Duration::from_secs(180);
                args.fault_every = Duration::from_secs(25);
            }
            "--minutes" => {
                let v = value("--minutes")?;
                args.duration = Duration::from_secs(num("--minutes", v)? * 60);
            }
            "--seconds" => {
                let v = value("--seconds")?;
                args.duration = Duration::from_secs(num("--seconds", v)?);
            }
            "--fault-every" => {
                let v = value("--fault-every")?;
                args.fault_every = Duration::from_secs(num("--fault-every", v)?.max(12));
            }
            "--concurrency" => {
                let v = value("--concurrency")?;
                args.concurrency = num("--concurrency", v)?.max(1) as usize;
            }
            "--out" => args.out = PathBuf::from(value("--out")?),
            _ => return Err(format!("unknown argument `{a}`")),
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------- the app

/// The "database": every id's current version.
struct Db {
    versions: Vec<AtomicU64>,
    /// The highest version of each id whose write was acknowledged (its response received).
    acked: Vec<AtomicU64>,
    /// Targets invalidated on the standalone cache, per second since start (tombstone bound).
    targets: Mutex<Vec<u64>>,
    t0: Instant,
}

impl Db {
    fn new() -> Arc<Self> {
        Arc::new(Db {
            versions: (0..IDS).map(|_| AtomicU64::new(1)).collect(),
            acked: (0..IDS).map(|_| AtomicU64::new(1)).collect(),
            targets: Mutex::new(Vec::new()),
            t0: Instant::now(),
        })
    }

    fn bump(&self, id: usize) -> u64 {
        self.versions[id].fetch_add(1, Ordering::SeqCst) + 1
    }

    fn version(&self, id: usize) -> u64 {
        self.versions[id].load(Ordering::SeqCst)
    }

    fn ack(&self, id: usize, v: u64) {
        self.acked[id].fetch_max(v, Ordering::SeqCst);
    }

    fn count_targets(&self, n: u64) {
        let sec = self.t0.elapsed().as_secs() as usize;
        let mut t = self.targets.lock().unwrap();
        if t.len() <= sec {
            t.resize(sec + 1, 0);
        }
        t[sec] += n;
    }

    /// Targets invalidated in the `window` before now.
    fn targets_within(&self, window: Duration) -> u64 {
        let now = self.t0.elapsed().as_secs() as usize;
        let from = now.saturating_sub(window.as_secs() as usize);
        let t = self.targets.lock().unwrap();
        t.iter().skip(from).sum()
    }
}

fn body(id: usize, version: u64, lang: &str) -> Bytes {
    let mut s = format!("{id}:{version}:{lang}:");
    while s.len() < BODY_LEN {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    Bytes::from(s)
}

#[derive(Clone)]
struct AppState {
    db: Arc<Db>,
    cache: Cache,
}

fn id_of(raw: &str) -> Result<usize, StatusCode> {
    raw.parse::<usize>()
        .ok()
        .filter(|&id| id < IDS)
        .ok_or(StatusCode::BAD_REQUEST)
}

async fn db_call() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn item(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, StatusCode> {
    let id = id_of(&raw)?;
    db_call().await;
    let tag = HeaderValue::from_str(&format!("items group:{}", id % GROUPS)).unwrap();
    Ok(([("surrogate-key", tag)], body(id, s.db.version(id), "-")))
}

async fn varied(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: AxumHeaders,
) -> Result<impl IntoResponse, StatusCode> {
    let id = id_of(&raw)?;
    db_call().await;
    let lang = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .filter(|l| LANGS.contains(l))
        .unwrap_or("en")
        .to_owned();
    let tag = HeaderValue::from_str(&format!("items group:{}", id % GROUPS)).unwrap();
    Ok((
        [
            (header::VARY, HeaderValue::from_static("accept-language")),
            (HeaderName::from_static("surrogate-key"), tag),
        ],
        body(id, s.db.version(id), &lang),
    ))
}

async fn function(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, StatusCode> {
    let id = id_of(&raw)?;
    let opts = Options::new()
        .ttl(TTL)
        .stale_if_error(SIE)
        .tags(["items".to_owned(), format!("group:{}", id % GROUPS)]);
    let db = s.db.clone();
    let v: u64 = s
        .cache
        .get_or_set_with(&format!("fn:{id}"), &opts, || async move {
            db_call().await;
            Ok::<_, Arc<std::io::Error>>(db.version(id))
        })
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(body(id, v, "-"))
}

async fn put_item(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<String, StatusCode> {
    let id = id_of(&raw)?;
    let v = s.db.bump(id);
    s.db.count_targets(KEYS_PER_PUT);
    Ok(v.to_string())
}

/// Bumps a group's ids, then invalidates its tag (both caches: the cluster route carries no
/// tags, so its keys are named).
async fn post_group(
    State((s, cluster)): State<(AppState, Cache)>,
    Path(g): Path<usize>,
) -> Result<String, StatusCode> {
    if g >= GROUPS {
        return Err(StatusCode::BAD_REQUEST);
    }
    let ids: Vec<usize> = (g..IDS).step_by(GROUPS).collect();
    let vs: Vec<u64> = ids.iter().map(|&id| s.db.bump(id)).collect();
    s.db.count_targets(1);
    let keys: Vec<String> = ids.iter().map(|id| format!("item:{id}")).collect();
    let tag = format!("group:{g}");
    let (a, b) = tokio::join!(
        s.cache.invalidate_tag(&tag),
        cluster.invalidate(Invalidation::new().keys(keys))
    );
    // A failed invalidation is owed and retried; until it lands, reads go around the cache, so
    // the write is acknowledged either way (what InvalidateLayer does too).
    let _ = (a, b);
    Ok(vs.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

/// Bumps ids D00-D99, then invalidates the pattern `*:D??` (both caches).
async fn post_prefix(
    State((s, cluster)): State<(AppState, Cache)>,
    Path(d): Path<usize>,
) -> Result<String, StatusCode> {
    if !(1..=9).contains(&d) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let ids: Vec<usize> = (d * 100..d * 100 + 100).collect();
    let vs: Vec<u64> = ids.iter().map(|&id| s.db.bump(id)).collect();
    s.db.count_targets(1);
    let pattern = format!("*:{d}??");
    let (a, b) = tokio::join!(
        s.cache.invalidate_pattern(&pattern),
        cluster.invalidate_pattern(&pattern)
    );
    let _ = (a, b);
    Ok(vs.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

/// The application, as its own process runs it ([`app_main`]).
struct App {
    port: u16,
}

/// The figures the application process reports about itself (`GET /__soak/stats`): the
/// process's resources and the caches' internal structures.
#[derive(Clone, Copy, Debug, Default)]
struct AppFigures {
    rss_kib: u64,
    /// Bytes live on the heap ([`Counting`]), in KiB.
    heap_kib: u64,
    fds: u64,
    /// OS threads of the process (tokio workers and blocking threads).
    threads: u64,
    /// glibc malloc: bytes its arenas hold from the system (sbrk and mmap), in KiB (0 elsewhere).
    malloc_held_kib: u64,
    /// glibc malloc: free bytes its arenas keep (fragmentation and retention), in KiB.
    malloc_free_kib: u64,
    tasks: u64,
    flights: u64,
    owed: u64,
    l1_entries: u64,
    /// The bound on tombstones at this time: targets invalidated within the tombstone TTL (plus
    /// the 10 s between samples).
    tombstone_bound: u64,
}

impl AppFigures {
    /// This process's figures (in the application's process).
    fn own(cache: &Cache, cluster: &Cache, db: &Db) -> Self {
        let (malloc_held_kib, malloc_free_kib) = malloc_kib();
        AppFigures {
            rss_kib: proc_status_number("VmRSS"),
            heap_kib: HEAP_LIVE.load(Ordering::Relaxed) / 1024,
            fds: open_fds(),
            threads: proc_status_number("Threads"),
            malloc_held_kib,
            malloc_free_kib,
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as u64,
            flights: (cache.flights_in_progress() + cluster.flights_in_progress()) as u64,
            owed: cache
                .pending_invalidations()
                .max(cluster.pending_invalidations()) as u64,
            l1_entries: cache.l1_stats().map(|l| l.entries).unwrap_or(0),
            tombstone_bound: db.targets_within(TOMBSTONE_TTL + SAMPLE) + 1,
        }
    }

    fn fields(&mut self) -> [&mut u64; 11] {
        [
            &mut self.rss_kib,
            &mut self.heap_kib,
            &mut self.fds,
            &mut self.threads,
            &mut self.malloc_held_kib,
            &mut self.malloc_free_kib,
            &mut self.tasks,
            &mut self.flights,
            &mut self.owed,
            &mut self.l1_entries,
            &mut self.tombstone_bound,
        ]
    }

    /// Space-separated, in [`AppFigures::fields`] order.
    fn encode(mut self) -> String {
        self.fields()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn decode(text: &str) -> Option<Self> {
        let mut f = AppFigures::default();
        let mut values = text.split_whitespace();
        for field in f.fields() {
            *field = values.next()?.parse().ok()?;
        }
        values.next().is_none().then_some(f)
    }
}

async fn start_app(
    valkey_port: u16,
    cluster_urls: Vec<String>,
    db: Arc<Db>,
) -> Result<App, BoxError> {
    let store = ValkeyStore::new(&format!("redis://127.0.0.1:{valkey_port}/"))?;
    let cache = Cache::builder(store)
        .namespace(NS)
        .l1(L1_CAPACITY, Duration::from_secs(60))
        .invalidation_window(TOMBSTONE_TTL)
        .invalidation_retry(RETRY_CAPACITY, Duration::from_secs(600))
        .invalidation_wait(INVALIDATION_WAIT)
        .build();
    let cluster = Cache::builder(ValkeyStore::cluster(cluster_urls)?)
        .namespace(CLUSTER_NS)
        // One shard: the soak migrates the namespace's one slot (`{soakc}`).
        .shards(1)
        .invalidation_wait(INVALIDATION_WAIT)
        .build();
    let state = AppState {
        db: db.clone(),
        cache: cache.clone(),
    };
    let route = |c: &Cache| {
        CacheLayer::new(c.clone())
            .ttl(TTL)
            .stale_while_revalidate(SWR)
            .stale_if_error(SIE)
            .handler_timeout(Duration::from_secs(1))
    };
    let put_keys =
        InvalidateLayer::new(cache.clone()).keys(["item:{id}", "v:{id}", "recent:{id}", "fn:{id}"]);
    let put_cluster = InvalidateLayer::new(cluster.clone()).keys(["item:{id}"]);
    let reads = Router::new()
        .route(
            "/items/{id}",
            get(item).route_layer(route(&cache).key("item:{id}")),
        )
        .route(
            "/v/{id}",
            get(varied).route_layer(route(&cache).key("v:{id}")),
        )
        .route(
            "/recent/{id}",
            get(item).route_layer(
                route(&cache)
                    .key("recent:{id}")
                    .eviction(Lru::with_capacity(BOUNDED)),
            ),
        )
        .route(
            "/c/items/{id}",
            get(item).route_layer(route(&cluster).key("item:{id}")),
        )
        .route("/fn/{id}", get(function))
        .route(
            "/items/{id}/write",
            put(put_item).route_layer(put_keys).route_layer(put_cluster),
        )
        .with_state(state.clone());
    let writes = Router::new()
        .route("/groups/{g}", post(post_group))
        .route("/prefix/{d}", post(post_prefix))
        .with_state((state, cluster.clone()));
    let stats = Router::new().route(
        "/__soak/stats",
        get(move || {
            let figures = AppFigures::own(&cache, &cluster, &db);
            async move { figures.encode() }
        }),
    );
    let router = reads.merge(writes).merge(stats);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(App { port })
}

/// The application's own process (`soak --app VALKEY_PORT CLUSTER_URL...`): the app alone, so
/// the RSS, descriptors, heap and tasks sampled are its own and not the load generator's, the
/// fault injectors' or the sampler's (their allocations would share its allocator's arenas).
/// It prints its port on stdout and exits when its stdin closes (the soak ended, or died).
async fn app_main(mut argv: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let valkey_port: u16 = argv.next().ok_or("--app needs a Valkey port")?.parse()?;
    let cluster_urls: Vec<String> = argv.collect();
    let app = start_app(valkey_port, cluster_urls, Db::new()).await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", app.port)?;
        out.flush()?;
    }
    tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    })
    .await?;
    Ok(())
}

/// Starts [`app_main`] as a child process of this program; its stdin stays open until the
/// returned child is dropped (or this process ends).
fn spawn_app(
    valkey_port: u16,
    cluster_urls: &[String],
) -> Result<(App, std::process::Child), BoxError> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--app")
        .arg(valkey_port.to_string())
        .args(cluster_urls)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let port = line
        .trim()
        .parse()
        .map_err(|_| format!("the app process printed `{}`, not its port", line.trim()))?;
    Ok((App { port }, child))
}

/// The application process's figures, asked over HTTP.
async fn app_figures(client: &HttpClient, app: &App) -> Result<AppFigures, BoxError> {
    let req = Request::builder()
        .uri(format!("http://127.0.0.1:{}/__soak/stats", app.port))
        .body(Empty::new())?;
    let res = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await??;
    let body = res.into_body().collect().await?.to_bytes();
    let text = std::str::from_utf8(&body)?;
    AppFigures::decode(text).ok_or_else(|| format!("unreadable app figures: `{text}`").into())
}

// ---------------------------------------------------------------------------------- load

/// Latency histogram buckets: 50 µs × 1.2^i.
const HIST: usize = 64;

fn bucket_of(us: u64) -> usize {
    let mut b = 0;
    let mut edge = 50.0f64;
    while (us as f64) > edge && b < HIST - 1 {
        edge *= 1.2;
        b += 1;
    }
    b
}

fn bucket_upper_us(b: usize) -> f64 {
    50.0 * 1.2f64.powi(b as i32)
}

/// The request figures, shared by every client task; [`Figures::take`] reads and resets the
/// per-sample part.
#[derive(Default)]
struct Figures {
    requests: AtomicU64,
    hits: AtomicU64,
    /// A read or write that answered non-2xx (bad requests excluded).
    non2xx: AtomicU64,
    /// No answer within [`REQUEST_TIMEOUT`] or a connection error.
    errors: AtomicU64,
    /// A body for another id or language, or a `Set-Cookie`.
    wrong: AtomicU64,
    stale: AtomicU64,
    raw_violations: AtomicU64,
    bad_requests: AtomicU64,
    /// A bad request that did not answer 4xx.
    bad_not_4xx: AtomicU64,
    hist: Hist,
    samples: Mutex<Vec<String>>,
}

struct Hist([AtomicU64; HIST]);

impl Default for Hist {
    fn default() -> Self {
        Hist(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl std::ops::Deref for Hist {
    type Target = [AtomicU64; HIST];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

struct Taken {
    requests: u64,
    hits: u64,
    p99_us: f64,
}

impl Figures {
    fn note(&self, what: String) {
        let mut s = self.samples.lock().unwrap();
        if s.len() < 20 {
            s.push(what);
        }
    }

    fn take(&self) -> Taken {
        let hist: Vec<u64> = self
            .hist
            .iter()
            .map(|h| h.swap(0, Ordering::Relaxed))
            .collect();
        let n: u64 = hist.iter().sum();
        let mut acc = 0;
        let mut p99 = 0.0;
        for (b, c) in hist.iter().enumerate() {
            acc += c;
            if n > 0 && acc * 100 >= n * 99 {
                p99 = bucket_upper_us(b);
                break;
            }
        }
        Taken {
            requests: self.requests.swap(0, Ordering::Relaxed),
            hits: self.hits.swap(0, Ordering::Relaxed),
            p99_us: p99,
        }
    }

    fn failures(&self) -> u64 {
        self.non2xx.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
            + self.wrong.load(Ordering::Relaxed)
            + self.stale.load(Ordering::Relaxed)
            + self.raw_violations.load(Ordering::Relaxed)
            + self.bad_not_4xx.load(Ordering::Relaxed)
    }
}

/// Totals that are never reset (the report's).
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    hits: AtomicU64,
    writes: AtomicU64,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Load {
    client: HttpClient,
    port: u16,
    db: Arc<Db>,
    figures: Arc<Figures>,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
}

/// One request; Ok((status, hit, body)) or Err(why).
async fn send(
    load: &Load,
    method: Method,
    path: &str,
    lang: Option<&str>,
) -> Result<(StatusCode, bool, Bytes, bool), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{}{path}", load.port));
    if let Some(l) = lang {
        req = req.header(header::ACCEPT_LANGUAGE, l);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let res = load.client.request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, BoxError>((parts, body))
    })
    .await;
    let us = started.elapsed().as_micros() as u64;
    load.figures.hist[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    load.figures.requests.fetch_add(1, Ordering::Relaxed);
    load.totals.requests.fetch_add(1, Ordering::Relaxed);
    match res {
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("request error: {e}")),
        Ok(Ok((parts, body))) => {
            let hit = CacheStatus::from_headers(&parts.headers).is_some_and(|s| s.hit);
            if hit {
                load.figures.hits.fetch_add(1, Ordering::Relaxed);
                load.totals.hits.fetch_add(1, Ordering::Relaxed);
            }
            let cookie = parts.headers.contains_key(header::SET_COOKIE);
            Ok((parts.status, hit, body, cookie))
        }
    }
}

/// Checks a read of `id` (in `lang`) sent when `floor` was the acknowledged version; returns the
/// version read.
fn check_read(
    load: &Load,
    at: &str,
    res: Result<(StatusCode, bool, Bytes, bool), String>,
    id: usize,
    lang: &str,
    floor: u64,
    own_write: bool,
) -> Option<u64> {
    let f = &load.figures;
    let (status, hit, body, cookie) = match res {
        Ok(r) => r,
        Err(why) => {
            f.errors.fetch_add(1, Ordering::Relaxed);
            f.note(format!("{at}: {why}"));
            return None;
        }
    };
    if !status.is_success() {
        f.non2xx.fetch_add(1, Ordering::Relaxed);
        f.note(format!("{at}: status {status}"));
        return None;
    }
    let text = std::str::from_utf8(&body).unwrap_or("");
    let mut parts = text.splitn(4, ':');
    let (got_id, got_v, got_lang) = (parts.next(), parts.next(), parts.next());
    let got_v: Option<u64> = got_v.and_then(|v| v.parse().ok());
    if cookie || got_id != Some(&id.to_string()) || got_lang != Some(lang) || got_v.is_none() {
        f.wrong.fetch_add(1, Ordering::Relaxed);
        f.note(format!(
            "{at}: wrong body {:?} (hit {hit})",
            &text[..text.len().min(40)]
        ));
        return None;
    }
    let v = got_v?;
    if v < floor {
        if own_write {
            f.raw_violations.fetch_add(1, Ordering::Relaxed);
        } else {
            f.stale.fetch_add(1, Ordering::Relaxed);
        }
        f.note(format!(
            "{at}: version {v} < acknowledged {floor} (hit {hit}, own write {own_write})"
        ));
    }
    Some(v)
}

/// A read route, drawn for each request.
#[derive(Clone, Copy)]
enum Route {
    Item,
    Varied,
    Recent,
    Function,
    ClusterItem,
}

impl Route {
    fn path(self, id: usize) -> String {
        match self {
            Route::Item => format!("/items/{id}"),
            Route::Varied => format!("/v/{id}"),
            Route::Recent => format!("/recent/{id}"),
            Route::Function => format!("/fn/{id}"),
            Route::ClusterItem => format!("/c/items/{id}"),
        }
    }

    fn draw(rng: &mut fastrand::Rng) -> Self {
        match rng.u32(0..100) {
            0..=44 => Route::Item,
            45..=59 => Route::Varied,
            60..=69 => Route::Recent,
            70..=79 => Route::Function,
            _ => Route::ClusterItem,
        }
    }
}

fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / k as f64;
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

async fn read(load: &Load, route: Route, id: usize, lang: &str, own_write: bool) -> Option<u64> {
    let floor = load.db.acked[id].load(Ordering::SeqCst);
    let path = route.path(id);
    let varied = matches!(route, Route::Varied);
    let res = send(load, Method::GET, &path, varied.then_some(lang)).await;
    check_read(
        load,
        &path,
        res,
        id,
        if varied { lang } else { "-" },
        floor,
        own_write,
    )
}

async fn reader(load: Arc<Load>, cdf: Arc<Vec<f64>>) {
    let mut rng = fastrand::Rng::new();
    while !load.stop.load(Ordering::Relaxed) {
        // Popular ids are the low ones; spread them over the id space so that every group and
        // prefix has popular members.
        let rank = cdf.partition_point(|&c| c < rng.f64()).min(IDS - 1);
        let id = (rank * 7919) % IDS;
        let lang = LANGS[rng.usize(0..LANGS.len())];
        read(&load, Route::draw(&mut rng), id, lang, false).await;
    }
}

/// Sends a write; on 2xx marks the versions it returned acknowledged and returns them.
async fn write(load: &Load, method: Method, path: &str, ids: &[usize]) -> Option<Vec<u64>> {
    load.totals.writes.fetch_add(1, Ordering::Relaxed);
    match send(load, method, path, None).await {
        Ok((status, _, body, _)) if status.is_success() => {
            let vs: Vec<u64> = std::str::from_utf8(&body)
                .unwrap_or("")
                .split(',')
                .filter_map(|v| v.parse().ok())
                .collect();
            if vs.len() != ids.len() {
                load.figures.wrong.fetch_add(1, Ordering::Relaxed);
                load.figures
                    .note(format!("{path}: write answered {} versions", vs.len()));
                return None;
            }
            for (&id, &v) in ids.iter().zip(&vs) {
                load.db.ack(id, v);
            }
            Some(vs)
        }
        Ok((status, ..)) => {
            load.figures.non2xx.fetch_add(1, Ordering::Relaxed);
            load.figures.note(format!("{path}: write status {status}"));
            None
        }
        Err(why) => {
            load.figures.errors.fetch_add(1, Ordering::Relaxed);
            load.figures.note(format!("{path}: {why}"));
            None
        }
    }
}

/// Key writes every 20 ms, each followed by a read of the written id on a random route.
async fn key_writer(load: Arc<Load>) {
    let mut rng = fastrand::Rng::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let id = rng.usize(0..IDS);
        if write(&load, Method::PUT, &format!("/items/{id}/write"), &[id])
            .await
            .is_some()
        {
            let lang = LANGS[rng.usize(0..LANGS.len())];
            read(&load, Route::draw(&mut rng), id, lang, true).await;
        }
    }
}

/// A tag write every 500 ms and a pattern write every 2 s, each followed by reads of some of
/// the ids written.
async fn bulk_writer(load: Arc<Load>) {
    let mut rng = fastrand::Rng::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let (path, ids): (String, Vec<usize>) = if n.is_multiple_of(4) {
            let d = rng.usize(1..=9);
            (format!("/prefix/{d}"), (d * 100..d * 100 + 100).collect())
        } else {
            let g = rng.usize(0..GROUPS);
            (format!("/groups/{g}"), (g..IDS).step_by(GROUPS).collect())
        };
        if write(&load, Method::POST, &path, &ids).await.is_some() {
            for _ in 0..4 {
                let id = ids[rng.usize(0..ids.len())];
                let lang = LANGS[rng.usize(0..LANGS.len())];
                read(&load, Route::draw(&mut rng), id, lang, true).await;
            }
        }
    }
}

/// A few bad requests: ids that do not parse or are out of range, unknown groups.
async fn bad_client(load: Arc<Load>) {
    let mut rng = fastrand::Rng::new();
    let bad = [
        "/items/abc",
        "/items/99999999999999999999",
        "/v/-1",
        "/recent/%ff",
        "/fn/1e3",
        "/groups/999",
    ];
    while !load.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let path = bad[rng.usize(0..bad.len())];
        let method = if path.starts_with("/groups") {
            Method::POST
        } else {
            Method::GET
        };
        load.figures.bad_requests.fetch_add(1, Ordering::Relaxed);
        match send(&load, method, path, None).await {
            Ok((s, ..)) if s.is_client_error() => {}
            Ok((s, ..)) => {
                load.figures.bad_not_4xx.fetch_add(1, Ordering::Relaxed);
                load.figures
                    .note(format!("{path}: bad request answered {s}"));
            }
            Err(why) => {
                load.figures.errors.fetch_add(1, Ordering::Relaxed);
                load.figures.note(format!("{path}: {why}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------- faults

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Pause,
    Maxmemory,
    ClientKill,
    Slow,
    Failover,
    Migrate,
}

const FAULTS: [Fault; 7] = [
    Fault::Kill,
    Fault::Failover,
    Fault::Pause,
    Fault::Maxmemory,
    Fault::Migrate,
    Fault::ClientKill,
    Fault::Slow,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "sigstop",
            Fault::Maxmemory => "maxmemory",
            Fault::ClientKill => "client-kill",
            Fault::Slow => "slow",
            Fault::Failover => "cluster-failover",
            Fault::Migrate => "slot-migration",
        }
    }
}

struct Env {
    valkey: ValkeyServer,
    proxy: DelayProxy,
    cluster: Arc<Mutex<ValkeyCluster>>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn valkey_cmd<T: redis::FromRedisValue>(
    env: &Env,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut c = env.valkey.connection().await?;
    cmd.query_async(&mut c).await
}

async fn fault(f: Fault, env: &mut Env) -> Result<String, BoxError> {
    let until = Instant::now() + FAULT_LEN;
    let mut detail = String::new();
    match f {
        Fault::Kill => {
            tokio::task::block_in_place(|| env.valkey.stop());
            tokio::time::sleep_until(until).await;
            tokio::task::block_in_place(|| env.valkey.restart());
        }
        Fault::Pause => {
            env.valkey.pause();
            tokio::time::sleep(Duration::from_secs(3)).await;
            env.valkey.resume();
            tokio::time::sleep_until(until).await;
        }
        Fault::Maxmemory => {
            let mut control = env.valkey.connection().await?;
            let filler = env.valkey.connection().await?;
            let tenant = Tenant {
                per_tick: 50,
                keys: Some(2000),
                ttl: Some(Duration::from_secs(30)),
            };
            memory_pressure(&mut control, filler, "noeviction", tenant, until).await?;
        }
        Fault::ClientKill => {
            while Instant::now() < until {
                let _: redis::RedisResult<i64> = valkey_cmd(
                    env,
                    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
                )
                .await;
                let pause = Duration::from_millis(fastrand::u64(250..=750));
                tokio::time::sleep(pause.min(until.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
        Fault::Slow => {
            env.proxy.set_delay(Duration::from_millis(250));
            tokio::time::sleep_until(until).await;
            env.proxy.set_delay(Duration::ZERO);
        }
        Fault::Failover => {
            let cluster = env.cluster.clone();
            detail = blocking(move || {
                let mut c = cluster.lock().unwrap();
                let slot = c.slot(&format!("{{{CLUSTER_NS}}}"));
                let Some(victim) = c.primary_of_slot(slot) else {
                    return "no primary for the slot".to_owned();
                };
                c.kill(victim);
                // The replica takes over within cluster-node-timeout (1 s) plus an election.
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(200));
                    if c.primary_of_slot(slot).is_some_and(|p| p != victim) {
                        break;
                    }
                }
                let took = t.elapsed();
                let new = c.primary_of_slot(slot);
                std::thread::sleep(FAULT_LEN.saturating_sub(took));
                // The old primary comes back (its nodes.conf kept) and rejoins as a replica.
                c.restart(victim);
                format!(
                    "node {victim} killed; node {new:?} took over in {:.1} s",
                    took.as_secs_f64()
                )
            })
            .await;
        }
        Fault::Migrate => {
            let cluster = env.cluster.clone();
            detail = blocking(move || {
                let c = cluster.lock().unwrap();
                migrate_slot(&c, c.slot(&format!("{{{CLUSTER_NS}}}")))
            })
            .await?;
            tokio::time::sleep_until(until).await;
        }
    }
    Ok(detail)
}

/// Moves `slot` to another primary under load: IMPORTING on the target, MIGRATING on the
/// source, `MIGRATE` in batches of 100 keys, then `SETSLOT NODE` on every primary.
fn migrate_slot(c: &ValkeyCluster, slot: u16) -> Result<String, BoxError> {
    let from = c.primary_of_slot(slot).ok_or("no primary for the slot")?;
    let primaries = c.primaries();
    let to = *primaries
        .iter()
        .find(|&&p| p != from)
        .ok_or("no other primary")?;
    let (from_id, to_id) = (c.node_id(from), c.node_id(to));
    let s = slot.to_string();
    let ok = |out: String, what: &str| -> Result<(), BoxError> {
        if out.trim() == "OK" {
            Ok(())
        } else {
            Err(format!("{what}: {}", out.trim()).into())
        }
    };
    ok(
        c.node_cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
        "IMPORTING",
    )?;
    ok(
        c.node_cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
        "MIGRATING",
    )?;
    let to_port = c.nodes()[to].port().to_string();
    let mut moved = 0;
    loop {
        let keys: Vec<String> = c
            .node_cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec![
            "MIGRATE",
            "127.0.0.1",
            &to_port,
            "",
            "0",
            "5000",
            "REPLACE",
            "KEYS",
        ];
        args.extend(keys.iter().map(String::as_str));
        let out = c.node_cli(from, &args);
        if !(out.trim() == "OK" || out.trim() == "NOKEY") {
            return Err(format!("MIGRATE: {}", out.trim()).into());
        }
        moved += keys.len();
    }
    ok(
        c.node_cli(to, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]),
        "SETSLOT NODE (target)",
    )?;
    ok(
        c.node_cli(from, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]),
        "SETSLOT NODE (source)",
    )?;
    for p in primaries.into_iter().filter(|&p| p != from && p != to) {
        let _ = c.node_cli(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
    }
    Ok(format!(
        "slot {slot}: {moved} keys from node {from} to node {to}"
    ))
}

// ---------------------------------------------------------------------------------- samples

/// The allocator under [`Counting`]: the system's (glibc malloc), as a service has by default,
/// or mimalloc (feature `mimalloc`, `scripts/soak --mimalloc`) for comparison. Measured while
/// the load and the faults still ran in the app's process: on glibc RSS stepped up at some fault
/// bursts (arenas keep their high-water marks); on mimalloc RSS was higher (26 MiB against 16)
/// and rose by 19 MiB within 30 s between faults, both with the live heap flat at about 4 MiB.
#[cfg(feature = "mimalloc")]
const INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
const INNER: std::alloc::System = std::alloc::System;
/// [`INNER`]'s name, for the report.
const ALLOCATOR_NAME: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "the system allocator (glibc malloc)"
};

/// [`INNER`], counting the bytes live: RSS also moves with the allocator's own retention, so
/// a leak shows in the live heap first, whatever the allocator.
struct Counting;

static HEAP_LIVE: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `INNER` unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() {
            HEAP_LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { INNER.dealloc(ptr, layout) };
        HEAP_LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() {
            HEAP_LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let p = unsafe { INNER.realloc(ptr, layout, new) };
        if !p.is_null() {
            HEAP_LIVE.fetch_add(new as u64, Ordering::Relaxed);
            HEAP_LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Debug, Default)]
struct Sample {
    t_s: f64,
    /// What the app's process reported about itself.
    app: AppFigures,
    used_memory: u64,
    connections: u64,
    entries: u64,
    markers: u64,
    variants: u64,
    key_tombstones: u64,
    tag_tombstones: u64,
    tag_sets: u64,
    tag_members: u64,
    eviction_index: u64,
    other_meta: u64,
    cluster_keys: u64,
    requests: u64,
    hit_ratio: f64,
    p99_ms: f64,
    failures: u64,
    /// The fault that began in the 10 s before this sample, if any (with a note when the
    /// store's key count failed).
    fault: String,
    /// Whether the store's figures (key counts, used_memory, connections) were taken: not
    /// while a fault holds the environment, nor when the count failed.
    store_counted: bool,
}

const COLUMNS: &str = "t_s,rss_kib,heap_kib,fds,threads,malloc_held_kib,malloc_free_kib,tasks,flights,owed,l1_entries,used_memory,connections,entries,markers,variants,key_tombstones,tag_tombstones,tag_sets,tag_members,eviction_index,other_meta,cluster_keys,tombstone_bound,requests,hit_ratio,p99_ms,failures,fault";

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.2},{},{}",
            self.t_s,
            self.app.rss_kib,
            self.app.heap_kib,
            self.app.fds,
            self.app.threads,
            self.app.malloc_held_kib,
            self.app.malloc_free_kib,
            self.app.tasks,
            self.app.flights,
            self.app.owed,
            self.app.l1_entries,
            self.used_memory,
            self.connections,
            self.entries,
            self.markers,
            self.variants,
            self.key_tombstones,
            self.tag_tombstones,
            self.tag_sets,
            self.tag_members,
            self.eviction_index,
            self.other_meta,
            self.cluster_keys,
            self.app.tombstone_bound,
            self.requests,
            self.hit_ratio,
            self.p99_ms,
            self.failures,
            self.fault
        )
    }
}

fn proc_status_number(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| info_field(&s, field).and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

/// glibc malloc's own figures ([`AppFigures::malloc_held_kib`],
/// [`AppFigures::malloc_free_kib`]): what separates the allocator's retention from memory the
/// program holds.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn malloc_kib() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (
        ((m.arena + m.hblkhd) / 1024) as u64,
        (m.fordblks / 1024) as u64,
    )
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn malloc_kib() -> (u64, u64) {
    (0, 0)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Key counts of the standalone Valkey by kind (SCAN; a few thousand keys).
async fn count_keys(env: &Env, s: &mut Sample) -> redis::RedisResult<()> {
    let mut c = env.valkey.connection().await?;
    let info: String = redis::cmd("INFO").query_async(&mut c).await?;
    s.used_memory = info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    s.connections = info_field(&info, "connected_clients")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut cursor = 0u64;
    let mut tag_sets = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        for k in keys {
            if let Some(rest) = k.strip_prefix(&format!("{NS}:")) {
                if rest.contains("#vary:") {
                    s.variants += 1;
                } else if rest.starts_with("v:") {
                    s.markers += 1;
                } else {
                    s.entries += 1;
                }
            } else if let Some(meta) = k.strip_prefix(&format!("{NS}|")) {
                if meta.starts_with("inv:k:") {
                    s.key_tombstones += 1;
                } else if meta.starts_with("inv:t:") {
                    s.tag_tombstones += 1;
                } else if meta.starts_with("tag:") {
                    s.tag_sets += 1;
                    tag_sets.push(k.clone());
                } else if meta == "evict:idx" {
                    s.eviction_index = redis::cmd("ZCARD").arg(&k).query_async(&mut c).await?;
                } else {
                    s.other_meta += 1;
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for k in tag_sets {
        let n: u64 = redis::cmd("SCARD").arg(&k).query_async(&mut c).await?;
        s.tag_members += n;
    }
    Ok(())
}

async fn sample(t0: Instant, app: AppFigures, env: &Env, figures: &Figures, fault: &str) -> Sample {
    // The application's figures, then the store's.
    let mut s = process_sample(t0, app, figures, fault);
    match tokio::time::timeout(Duration::from_secs(5), count_keys(env, &mut s))
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(()) => s.store_counted = true,
        Err(e) => s.fault.push_str(&format!(" (key count failed: {e})")),
    }
    let cluster = env.cluster.clone();
    s.cluster_keys = blocking(move || {
        cluster
            .lock()
            .unwrap()
            .keys(&format!("{{{CLUSTER_NS}}}*"))
            .len() as u64
    })
    .await;
    s
}

// ---------------------------------------------------------------------------------- goals

/// Client connections the servers see from the app (the sampler's own one excluded).
#[derive(Clone, Copy, Default)]
struct Clients {
    /// On the standalone Valkey (each one through the delay proxy).
    standalone: u64,
    /// Summed over the cluster's live nodes.
    cluster: u64,
}

impl Clients {
    async fn count(env: &Env) -> Self {
        let mut info = redis::cmd("INFO");
        info.arg("clients");
        let standalone = valkey_cmd::<String>(env, &info);
        let standalone = tokio::time::timeout(Duration::from_secs(5), standalone)
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|info| info_field(&info, "connected_clients")?.parse::<u64>().ok())
            .unwrap_or(1)
            .saturating_sub(1);
        let cluster = env.cluster.clone();
        let cluster = blocking(move || {
            let c = cluster.lock().unwrap();
            (0..c.nodes().len())
                .filter(|&i| c.nodes()[i].is_running())
                .map(|i| {
                    info_field(&c.node_cli(i, &["INFO", "clients"]), "connected_clients")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1)
                        .saturating_sub(1)
                })
                .sum()
        })
        .await;
        Clients {
            standalone,
            cluster,
        }
    }
}

impl std::fmt::Display for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} standalone + {} cluster connections",
            self.standalone, self.cluster
        )
    }
}

/// The idle check's baseline (at start, once every route and write kind has been used) and the
/// connections open at the end.
struct Idle {
    start_tasks: u64,
    start: Clients,
    end: Clients,
}

impl Idle {
    /// Tasks allowed at the end: the baseline's, plus a retry worker per cache, a driver per
    /// standalone or cluster connection opened since
    /// (pooled connections open on demand and stay open while idle).
    fn allowed(&self) -> u64 {
        self.start_tasks
            + RETRY_WORKERS
            + TASKS_PER_STANDALONE_CONNECTION
                * self.end.standalone.saturating_sub(self.start.standalone)
            + self.end.cluster.saturating_sub(self.start.cluster)
    }
}

/// Growth per half hour of a series of `(time s, value)` points, relative to their mean
/// (least-squares slope).
fn growth_per_half_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 || my == 0.0 {
        return 0.0;
    }
    sxy / sxx * 1800.0 / my
}

/// One fault cycle: every fault once.
fn cycle(args: &Args) -> Duration {
    args.fault_every * FAULTS.len() as u32
}

/// The mean of `f` over each full fault cycle after the warm-up, over the samples `keep` accepts:
/// `(cycle's middle in s, mean)`. Fault `i` begins at `(i + 1) x F` (`F` = `fault_every`), so
/// the warm-up `[0, F + C)` holds every fault once (every high-water mark a fault sets, such as
/// a reconnect's buffers, is reached in it), and every cycle `[F + k C, F + (k + 1) C)`, `k >= 1`,
/// holds each fault once at the same offsets, beginning with the restart: their means compare
/// like with like. A trend over the raw samples instead measures where the window's ends fall
/// in the fault pattern (a restart empties the store, a burst raises RSS). A cycle counts when
/// its last sample (at its end minus [`SAMPLE`]) was taken.
fn cycle_means(
    samples: &[Sample],
    args: &Args,
    keep: impl Fn(&Sample) -> bool,
    f: impl Fn(&Sample) -> f64,
) -> Vec<(f64, f64)> {
    let (c, f0, step) = (
        cycle(args).as_secs_f64(),
        args.fault_every.as_secs_f64(),
        SAMPLE.as_secs_f64(),
    );
    let end = samples.last().map(|s| s.t_s).unwrap_or(0.0);
    (1..)
        .map(|k| f0 + k as f64 * c)
        .take_while(|start| start + c - step <= end + step / 2.0)
        .filter_map(|start| {
            let vs: Vec<f64> = samples
                .iter()
                .filter(|s| s.t_s >= start && s.t_s < start + c && keep(s))
                .map(&f)
                .collect();
            (!vs.is_empty()).then(|| (start + c / 2.0, vs.iter().sum::<f64>() / vs.len() as f64))
        })
        .collect()
}

/// Full fault cycles after the warm-up that a growth rate needs to be judged (fewer: reported).
const JUDGED_CYCLES: usize = 3;

struct Goal {
    name: String,
    value: String,
    met: bool,
}

fn goals(
    samples: &[Sample],
    stats_missed: u64,
    figures: &Figures,
    end: &Sample,
    idle: &Idle,
    args: &Args,
) -> Vec<Goal> {
    let mut g = Vec::new();
    let mut push = |name: &str, value: String, met: bool| {
        g.push(Goal {
            name: name.to_owned(),
            value,
            met,
        })
    };
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    push(
        "samples the app's figures missed (its stats route not answering in 5 s)",
        stats_missed.to_string(),
        stats_missed == 0,
    );
    push(
        "non-2xx answers (bad requests excluded)",
        count(&figures.non2xx).to_string(),
        count(&figures.non2xx) == 0,
    );
    push(
        "errors (no answer in 5 s, connection errors)",
        count(&figures.errors).to_string(),
        count(&figures.errors) == 0,
    );
    push(
        "wrong bodies (other id or language, Set-Cookie)",
        count(&figures.wrong).to_string(),
        count(&figures.wrong) == 0,
    );
    push(
        "stale reads after acknowledged writes",
        count(&figures.stale).to_string(),
        count(&figures.stale) == 0,
    );
    push(
        "read-after-write violations",
        count(&figures.raw_violations).to_string(),
        count(&figures.raw_violations) == 0,
    );
    push(
        "bad requests answered 4xx",
        format!(
            "{} of {}",
            count(&figures.bad_requests) - count(&figures.bad_not_4xx),
            count(&figures.bad_requests)
        ),
        count(&figures.bad_not_4xx) == 0 && count(&figures.bad_requests) > 0,
    );
    // Growth: the trend of per-cycle means ([`cycle_means`]); the store's figures from the
    // samples that have them (not while a fault holds the environment).
    let mut trend = |name: &str, store: bool, f: fn(&Sample) -> f64| {
        let means = cycle_means(samples, args, |s| !store || s.store_counted, f);
        let gr = growth_per_half_hour(&means);
        let judged = means.len() >= JUDGED_CYCLES;
        let value = format!(
            "{:+.1}% (means of {} cycles: {}){}",
            gr * 100.0,
            means.len(),
            means
                .iter()
                .map(|m| format!("{:.0}", m.1))
                .collect::<Vec<_>>()
                .join(", "),
            if judged {
                String::new()
            } else {
                format!(
                    " (fewer than {JUDGED_CYCLES} full cycles after warm-up: reported, not judged)"
                )
            }
        );
        push(name, value, !judged || gr < 0.05);
    };
    trend("RSS growth per half hour", false, |s| s.app.rss_kib as f64);
    trend("live heap growth per half hour", false, |s| {
        s.app.heap_kib as f64
    });
    trend("open descriptors growth per half hour", false, |s| {
        s.app.fds as f64
    });
    trend(
        "Valkey entries + variants growth per half hour",
        true,
        |s| (s.entries + s.markers + s.variants) as f64,
    );
    trend("Valkey tag set members growth per half hour", true, |s| {
        s.tag_members as f64
    });
    trend("Valkey used_memory growth per half hour", true, |s| {
        s.used_memory as f64
    });
    let max = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    push(
        "owed invalidations <= retry capacity + 1 + 64 late (every sample)",
        format!("max {}", max(|s| s.app.owed)),
        max(|s| s.app.owed) <= RETRY_CAPACITY as u64 + 1 + LATE_MAX,
    );
    // moka counts lazily: allow 5% over capacity at a sample.
    push(
        "L1 entries <= capacity (every sample)",
        format!("max {} of {L1_CAPACITY}", max(|s| s.app.l1_entries)),
        max(|s| s.app.l1_entries) <= L1_CAPACITY + L1_CAPACITY / 20,
    );
    push(
        "eviction index <= capacity (every sample)",
        format!("max {} of {BOUNDED}", max(|s| s.eviction_index)),
        max(|s| s.eviction_index) <= BOUNDED as u64,
    );
    let over = samples
        .iter()
        .filter(|s| s.key_tombstones + s.tag_tombstones > s.app.tombstone_bound)
        .count();
    push(
        "tombstones <= targets invalidated within the tombstone TTL (every sample)",
        format!(
            "max {} (bound at that sample {}), {over} samples over",
            max(|s| s.key_tombstones + s.tag_tombstones),
            samples
                .iter()
                .max_by_key(|s| s.key_tombstones + s.tag_tombstones)
                .map(|s| s.app.tombstone_bound)
                .unwrap_or(0)
        ),
        over == 0,
    );
    push(
        "tag sets <= distinct tags (every sample)",
        format!("max {} of {}", max(|s| s.tag_sets), GROUPS + 1),
        max(|s| s.tag_sets) <= GROUPS as u64 + 1,
    );
    // Every entry carries 2 tags (items, group:G); a set also holds members whose entries are
    // gone until a fill prunes them or the set expires: at most the keys the tagged routes can
    // have (4 routes × IDS, variants: 3 per generation).
    let key_universe = (IDS * (3 + LANGS.len())) as u64 * 2;
    push(
        "tag set members <= 2 x keys of the tagged routes (every sample)",
        format!("max {} of {key_universe}", max(|s| s.tag_members)),
        max(|s| s.tag_members) <= key_universe,
    );
    push(
        "idle at the end: fills in flight",
        end.app.flights.to_string(),
        end.app.flights == 0,
    );
    push(
        "idle at the end: owed invalidations",
        end.app.owed.to_string(),
        end.app.owed == 0,
    );
    push(
        "idle at the end: app connections to Valkey <= pool + bulk lane + L1 subscription",
        format!("{} (bound {STANDALONE_CONNECTIONS})", idle.end.standalone),
        idle.end.standalone <= STANDALONE_CONNECTIONS,
    );
    push(
        "idle at the end: tokio tasks <= at start + retry workers + those of connections opened since",
        format!(
            "{} (at start: {} with {}; allowed {})",
            end.app.tasks,
            idle.start_tasks,
            idle.start,
            idle.allowed()
        ),
        end.app.tasks <= idle.allowed(),
    );
    g
}

// ---------------------------------------------------------------------------------- plots

/// A named line of a plot: its label and what it reads off a sample.
type Series = (&'static str, fn(&Sample) -> f64);

/// A small SVG line plot: one or more series over time, faults marked as vertical lines.
fn svg_plot(title: &str, unit: &str, samples: &[Sample], series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (720.0, 260.0, 70.0, 20.0, 30.0, 40.0);
    let tmax = samples.last().map(|s| s.t_s).unwrap_or(1.0).max(1.0);
    let ymax = series
        .iter()
        .flat_map(|(_, f)| samples.iter().map(f))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |ts: f64| l + (w - l - r) * ts / tmax;
    let y = |v: f64| t + (h - t - b) * (1.0 - v / ymax);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{l}\" y=\"18\" font-size=\"13\">{title}</text>\n"
    );
    for f in samples
        .iter()
        .filter(|s| !s.fault.is_empty() && !s.fault.starts_with(' '))
    {
        let fx = x(f.t_s);
        let _ = writeln!(s, "<line x1=\"{fx:.1}\" y1=\"{t}\" x2=\"{fx:.1}\" y2=\"{}\" stroke=\"#e88\" stroke-dasharray=\"3,3\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#c44\" font-size=\"9\" transform=\"rotate(-90 {:.1} {})\">{}</text>", h - b, fx + 3.0, t + 60.0, fx + 3.0, t + 60.0, f.fault.split(' ').next().unwrap_or(""));
    }
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let _ = writeln!(s, "<line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", y(v), w - r, y(v), l - 5.0, y(v) + 4.0, fmt_num(v));
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time (min); {unit}</text>",
        (l + w - r) / 2.0,
        h - 8.0
    );
    for i in 0..=6 {
        let ts = tmax * i as f64 / 6.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0}</text>",
            x(ts),
            h - b + 14.0,
            ts / 60.0
        );
    }
    let colours = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    for (i, (name, f)) in series.iter().enumerate() {
        let pts: Vec<String> = samples
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t_s), y(f(p))))
            .collect();
        let c = colours[i % colours.len()];
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\" text-anchor=\"end\">{name}</text>",
            w - r,
            t + 12.0 + 13.0 * i as f64
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn plots(samples: &[Sample]) -> Vec<(&'static str, String)> {
    vec![
        (
            "soak-memory.svg",
            svg_plot(
                "Memory: application RSS, live heap, malloc's free bytes and Valkey used_memory",
                "MiB",
                samples,
                &[
                    ("app RSS", |s| s.app.rss_kib as f64 / 1024.0),
                    ("app live heap", |s| s.app.heap_kib as f64 / 1024.0),
                    ("app malloc free (kept)", |s| {
                        s.app.malloc_free_kib as f64 / 1024.0
                    }),
                    ("Valkey used_memory", |s| s.used_memory as f64 / 1048576.0),
                ],
            ),
        ),
        (
            "soak-fds.svg",
            svg_plot(
                "Open descriptors, tokio tasks, Valkey connections",
                "count",
                samples,
                &[
                    ("fds", |s| s.app.fds as f64),
                    ("threads", |s| s.app.threads as f64),
                    ("tokio tasks", |s| s.app.tasks as f64),
                    ("Valkey clients", |s| s.connections as f64),
                ],
            ),
        ),
        (
            "soak-queues.svg",
            svg_plot(
                "Owed invalidations and fills in flight",
                "count",
                samples,
                &[
                    ("owed invalidations", |s| s.app.owed as f64),
                    ("fills in flight", |s| s.app.flights as f64),
                ],
            ),
        ),
        (
            "soak-keys.svg",
            svg_plot(
                "Valkey keys by kind (standalone namespace)",
                "count",
                samples,
                &[
                    ("entries", |s| s.entries as f64),
                    ("variants", |s| s.variants as f64),
                    ("tombstones", |s| {
                        (s.key_tombstones + s.tag_tombstones) as f64
                    }),
                    ("tag set members", |s| s.tag_members as f64),
                    ("L1 entries", |s| s.app.l1_entries as f64),
                ],
            ),
        ),
        (
            "soak-requests.svg",
            svg_plot(
                "Hit ratio and p99 latency per 10 s",
                "hit ratio x100, p99 ms",
                samples,
                &[
                    ("hit ratio x100", |s| s.hit_ratio * 100.0),
                    ("p99 ms", |s| s.p99_ms),
                ],
            ),
        ),
    ]
}

// ---------------------------------------------------------------------------------- main

/// The runtime both processes run on (the soak's and the app's, `--app`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--app") {
        return match runtime().block_on(app_main(argv)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soak app: {e}");
                ExitCode::from(2)
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime().block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, BoxError> {
    std::fs::create_dir_all(&args.out)?;
    eprintln!("soak: starting valkey-server and a 3+3 cluster");
    let valkey = tokio::task::block_in_place(|| {
        ValkeyServer::start_with_args(&["--loglevel", "warning", "--save", ""])
    });
    let proxy = DelayProxy::start(valkey.port()).await?;
    let cluster = tokio::task::block_in_place(|| ValkeyCluster::start(3, 1));
    let urls = cluster.urls();
    let env = Env {
        valkey,
        proxy,
        cluster: Arc::new(Mutex::new(cluster)),
    };
    // The load's half of the "database" (acknowledged versions); the app's process has its own
    // (current versions, targets invalidated).
    let db = Db::new();
    // (It blocks until the child prints its port: not on a runtime worker the proxy needs.)
    let (app, app_process) = tokio::task::block_in_place(|| spawn_app(env.proxy.port(), &urls))?;
    let stats_client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // The baseline for the idle check: the app's background tasks (L1 subscription, cluster
    // connections) exist once every route and write kind has been used, by a client then dropped.
    {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        for (m, path) in [
            (Method::GET, "/items/1"),
            (Method::GET, "/v/1"),
            (Method::GET, "/recent/1"),
            (Method::GET, "/fn/1"),
            (Method::GET, "/c/items/1"),
            (Method::PUT, "/items/1/write"),
            (Method::POST, "/groups/1"),
            (Method::POST, "/prefix/1"),
        ] {
            let req = Request::builder()
                .method(m)
                .uri(format!("http://127.0.0.1:{}{path}", app.port))
                .body(Empty::new())?;
            let res = client.request(req).await?;
            let _ = res.into_body().collect().await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut idle = Idle {
        start_tasks: app_figures(&stats_client, &app).await?.tasks,
        start: Clients::count(&env).await,
        end: Clients::default(),
    };
    let figures = Arc::new(Figures::default());
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let load = Arc::new(Load {
        client,
        port: app.port,
        db: db.clone(),
        figures: figures.clone(),
        totals: totals.clone(),
        stop: stop.clone(),
    });
    let cdf = Arc::new(zipf_cdf(IDS));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        tasks.push(tokio::spawn(reader(load.clone(), cdf.clone())));
    }
    tasks.push(tokio::spawn(key_writer(load.clone())));
    tasks.push(tokio::spawn(bulk_writer(load.clone())));
    tasks.push(tokio::spawn(bad_client(load.clone())));

    let t0 = Instant::now();
    let end = t0 + args.duration;
    let csv_path = args.out.join("samples.csv");
    let mut csv = format!("{COLUMNS}\n");
    let mut samples: Vec<Sample> = Vec::new();
    let mut faults_run: Vec<String> = Vec::new();
    let mut next_sample = t0 + SAMPLE;
    let mut next_fault = t0 + args.fault_every;
    let mut fault_i = 0usize;
    let pending_fault: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let mut fault_task: Option<tokio::task::JoinHandle<(Env, Result<String, BoxError>)>> = None;
    let mut env_slot: Option<Env> = Some(env);
    let mut stats_missed = 0u64;
    eprintln!(
        "soak: running for {} s, a fault every {} s, {} readers",
        args.duration.as_secs(),
        args.fault_every.as_secs(),
        args.concurrency
    );
    while Instant::now() < end {
        let now = Instant::now();
        // Start a fault (it runs in a task of its own, holding the environment).
        if now >= next_fault && fault_task.is_none() && now + FAULT_LEN + SAMPLE < end {
            if let Some(mut e) = env_slot.take() {
                let f = FAULTS[fault_i % FAULTS.len()];
                fault_i += 1;
                *pending_fault.lock().unwrap() = f.name().to_owned();
                eprintln!(
                    "soak: t={:.0}s fault {}",
                    t0.elapsed().as_secs_f64(),
                    f.name()
                );
                fault_task = Some(tokio::spawn(async move {
                    let r = fault(f, &mut e).await.map(|d| format!("{}: {d}", f.name()));
                    (e, r)
                }));
            }
            next_fault += args.fault_every;
        }
        if fault_task.as_ref().is_some_and(|t| t.is_finished()) {
            let (e, r) = fault_task.take().unwrap().await?;
            env_slot = Some(e);
            match r {
                Ok(d) => faults_run.push(format!("t={:.0}s {d}", t0.elapsed().as_secs_f64())),
                Err(err) => faults_run.push(format!(
                    "t={:.0}s fault failed: {err}",
                    t0.elapsed().as_secs_f64()
                )),
            }
        }
        if now >= next_sample {
            next_sample += SAMPLE;
            let own = match app_figures(&stats_client, &app).await {
                Ok(own) => own,
                Err(e) => {
                    // The sample is missed (and the run fails its goal): keep the fault mark
                    // for the next one.
                    stats_missed += 1;
                    eprintln!(
                        "soak: t={:.0}s the app's figures: {e}",
                        t0.elapsed().as_secs_f64()
                    );
                    continue;
                }
            };
            let mark = std::mem::take(&mut *pending_fault.lock().unwrap());
            let s = match &env_slot {
                Some(e) => sample(t0, own, e, &figures, &mark).await,
                // During a fault the environment is with the fault task: sample the app only.
                None => process_sample(t0, own, &figures, &mark),
            };
            eprintln!(
                "soak: t={:>5.0}s rss={}KiB heap={}KiB fds={} tasks={} flights={} owed={} l1={} keys={}/{}v/{}t/{}m req={} hit={:.2} p99={:.1}ms fail={} {}",
                s.t_s, s.app.rss_kib, s.app.heap_kib, s.app.fds, s.app.tasks, s.app.flights, s.app.owed, s.app.l1_entries, s.entries, s.variants, s.key_tombstones + s.tag_tombstones, s.tag_members, s.requests, s.hit_ratio, s.p99_ms, s.failures, s.fault
            );
            csv.push_str(&s.csv());
            csv.push('\n');
            std::fs::write(&csv_path, &csv)?;
            samples.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(t) = fault_task.take() {
        let (e, r) = t.await?;
        env_slot = Some(e);
        if let Ok(d) = r {
            faults_run.push(d);
        }
    }
    let env = env_slot.take().expect("the environment is back");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, t).await;
    }
    drop(load);
    // Quiescence: owed invalidations land, fills finish, tasks end.
    let quiet_by = Instant::now() + Duration::from_secs(30);
    let mut end_sample;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let own = match app_figures(&stats_client, &app).await {
            Ok(own) => own,
            Err(e) if Instant::now() < quiet_by => {
                eprintln!("soak: the app's figures at the end: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        end_sample = process_sample(t0, own, &figures, "end");
        idle.end = Clients::count(&env).await;
        if (end_sample.app.flights == 0
            && end_sample.app.owed == 0
            && end_sample.app.tasks <= idle.allowed())
            || Instant::now() >= quiet_by
        {
            break;
        }
    }
    let gs = goals(&samples, stats_missed, &figures, &end_sample, &idle, &args);
    let ok = gs.iter().all(|g| g.met);
    let report = report(&args, &samples, &gs, &faults_run, &figures, &totals, &env).await;
    println!("{report}");
    std::fs::write(args.out.join("report.md"), &report)?;
    for (name, svg) in plots(&samples) {
        std::fs::write(args.out.join(name), svg)?;
    }
    eprintln!("soak: samples, report and plots in {}", args.out.display());
    // Closing its stdin ends the app's process (killed if it has not ended within 10 s).
    let mut app_process = app_process;
    drop(app_process.stdin.take());
    let gone_by = Instant::now() + Duration::from_secs(10);
    while matches!(app_process.try_wait(), Ok(None)) && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if matches!(app_process.try_wait(), Ok(None)) {
        let _ = app_process.kill();
        let _ = app_process.wait();
    }
    Ok(ok)
}

fn process_sample(t0: Instant, app: AppFigures, figures: &Figures, fault: &str) -> Sample {
    let taken = figures.take();
    Sample {
        t_s: t0.elapsed().as_secs_f64(),
        app,
        requests: taken.requests,
        hit_ratio: if taken.requests > 0 {
            taken.hits as f64 / taken.requests as f64
        } else {
            0.0
        },
        p99_ms: taken.p99_us / 1000.0,
        failures: figures.failures(),
        fault: fault.to_owned(),
        ..Sample::default()
    }
}

async fn report(
    args: &Args,
    samples: &[Sample],
    gs: &[Goal],
    faults: &[String],
    figures: &Figures,
    totals: &Totals,
    env: &Env,
) -> String {
    let version: String = valkey_cmd(env, redis::cmd("INFO").arg("server"))
        .await
        .ok()
        .and_then(|i: String| info_field(&i, "valkey_version").map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let mut r = String::new();
    let req = totals.requests.load(Ordering::Relaxed);
    let _ = writeln!(
        r,
        "- Run: {} min, {} readers, a fault every {} s ({} faults), Valkey {version}, the app in a process of its own on {ALLOCATOR_NAME}",
        args.duration.as_secs() / 60,
        args.concurrency,
        args.fault_every.as_secs(),
        faults.len()
    );
    let _ = writeln!(
        r,
        "- Requests: {req} ({} writes, {} bad requests), hit ratio {:.2}",
        totals.writes.load(Ordering::Relaxed),
        figures.bad_requests.load(Ordering::Relaxed),
        totals.hits.load(Ordering::Relaxed) as f64 / req.max(1) as f64
    );
    let first = samples.iter().find(|s| s.t_s >= 60.0).or(samples.first());
    if let (Some(a), Some(b)) = (first, samples.last()) {
        let _ = writeln!(
            r,
            "- RSS {} MiB at {:.0} min -> {} MiB at the end; descriptors {} -> {}; tasks {} -> {}",
            a.app.rss_kib / 1024,
            a.t_s / 60.0,
            b.app.rss_kib / 1024,
            a.app.fds,
            b.app.fds,
            a.app.tasks,
            b.app.tasks
        );
    }
    let _ = writeln!(r, "\n| goal | measured | met |\n|---|---|---|");
    for g in gs {
        let _ = writeln!(
            r,
            "| {} | {} | {} |",
            g.name,
            g.value,
            if g.met { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(r, "\nFaults:\n");
    for f in faults {
        let _ = writeln!(r, "- {f}");
    }
    let notes = figures.samples.lock().unwrap();
    if !notes.is_empty() {
        let _ = writeln!(r, "\nFirst failures:\n");
        for n in notes.iter() {
            let _ = writeln!(r, "- {n}");
        }
    }
    r
}
