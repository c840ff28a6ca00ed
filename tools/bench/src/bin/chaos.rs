//! Reliability under faults: the program behind `scripts/chaos`.
//!
//! ```text
//! cargo run --release -p tvc-bench --bin chaos -- [--quick] [--only SCENARIO,...]
//!     [--concurrency N] [--delay MS] [--timeline DIR]
//! ```
//!
//! It owns the whole experiment, on 127.0.0.1 only:
//!
//! - a `valkey-server` of its own on a free port (no persistence), killed when it exits
//!   (`tvc_harness::ValkeyServer`, the integration tests' harness);
//! - a small TCP proxy between the application and Valkey that can delay everything Valkey
//!   sends (the "slow Valkey" fault), so the delay is exact and Valkey itself stays healthy
//!   (`tvc_harness::DelayProxy`);
//! - an axum application as a production user would configure it: `GET /items/{id}` behind a
//!   `CacheLayer` (key `item:{id}`, 10 s TTL, stale-while-revalidate 30 s, stale-if-error 5 min,
//!   1 s handler timeout) on a `ValkeyStore` with the crate's defaults (100 ms per operation,
//!   breaker after 5 failures for 1 s); the handler takes 2 ms (a database call) and returns
//!   a 1 KiB body that depends on the id;
//! - a closed-loop load generator (hyper, `--concurrency` connections, 32 by default) asking for
//!   500 ids with a Zipf(1) popularity, recording every request's time, status, latency and
//!   `Cache-Status`, and checking every body byte for byte.
//!
//! Scenarios, one after another, each on a flushed Valkey and a freshly built application: a
//! warm-up, then 10 s before the fault, 10 s of fault, 10 s after (`--quick`: 1 + 3 + 4 + 5 s):
//!
//! | scenario | the fault |
//! |---|---|
//! | `baseline` | none (the control row) |
//! | `kill` | `valkey-server` is killed (SIGKILL, its data is lost) and restarted on the same port when the fault ends |
//! | `slow` | the proxy delays every byte from Valkey by `--delay` (250 ms, past the 100 ms operation timeout) |
//! | `maxmemory` | `maxmemory` set to the memory in use, `allkeys-lru`, while another client writes 8 MB/s of other keys |
//! | `garbage` | every 250 ms, every entry key is overwritten with one of ten kinds of garbage (random bytes, truncated and padded entries, a forged 500, a forged `Set-Cookie`, a list...) |
//! | `client-kill` | `CLIENT KILL TYPE normal` every 250-750 ms, cutting the application's connections |
//!
//! A request fails when it answers non-2xx, when it errs (connection error, no answer within
//! 5 s), or when its body is not the one its id must have or it carries `Set-Cookie`. It prints
//! a Markdown report on stdout (progress on stderr) and exits with 1 if any request failed.
//! `--timeline DIR` also writes each scenario's 100 ms buckets to `DIR/SCENARIO.csv`.

use axum::{extract::Path, extract::State, routing::get, Router};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use redis::aio::MultiplexedConnection;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_valkey_cache::entry::Entry;
use tower_valkey_cache::testing::{CacheStatus, StatsDelta};
use tower_valkey_cache::{Cache, CacheLayer, Stats, ValkeyStore};
use tvc_harness::{info_field, memory_pressure, DelayProxy, Tenant, ValkeyServer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEYS: usize = 500;
const ZIPF_S: f64 = 1.0;
const BODY_LEN: usize = 1024;
const HANDLER_DELAY: Duration = Duration::from_millis(2);
const NAMESPACE: &str = "chaos";
const TTL: Duration = Duration::from_secs(10);
const SWR: Duration = Duration::from_secs(30);
const SIE: Duration = Duration::from_secs(300);
const HANDLER_TIMEOUT: Duration = Duration::from_secs(1);
/// A request without an answer within this is a failure (a hang).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Recovery is measured in buckets this long...
const BUCKET_US: u64 = 100_000;
/// ...and counts once this many buckets in a row are back at 90% of the baseline hit ratio.
const RECOVERED_RUN: usize = 10;

// ---------------------------------------------------------------------------------- scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Baseline,
    Kill,
    Slow,
    Maxmemory,
    Garbage,
    ClientKill,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::Baseline,
        Scenario::Kill,
        Scenario::Slow,
        Scenario::Maxmemory,
        Scenario::Garbage,
        Scenario::ClientKill,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Kill => "kill",
            Scenario::Slow => "slow",
            Scenario::Maxmemory => "maxmemory",
            Scenario::Garbage => "garbage",
            Scenario::ClientKill => "client-kill",
        }
    }

    fn describe(self, args: &Args) -> String {
        let f = args.timing.fault.as_secs();
        match self {
            Scenario::Baseline => "none".into(),
            Scenario::Kill => format!("Valkey killed for {f} s, restarted empty"),
            Scenario::Slow => format!("+{} ms on every reply for {f} s", args.delay.as_millis()),
            Scenario::Maxmemory => format!("maxmemory + allkeys-lru under 8 MB/s of writes, {f} s"),
            Scenario::Garbage => {
                format!("all entries overwritten with garbage every 250 ms, {f} s")
            }
            Scenario::ClientKill => format!("CLIENT KILL TYPE normal every ~500 ms, {f} s"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    warmup: Duration,
    before: Duration,
    fault: Duration,
    after: Duration,
}

struct Args {
    timing: Timing,
    only: Vec<Scenario>,
    concurrency: usize,
    delay: Duration,
    timeline: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        timing: Timing {
            warmup: Duration::from_secs(3),
            before: Duration::from_secs(10),
            fault: Duration::from_secs(10),
            after: Duration::from_secs(10),
        },
        only: Scenario::ALL.to_vec(),
        concurrency: 32,
        delay: Duration::from_millis(250),
        timeline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--quick" => {
                args.timing = Timing {
                    warmup: Duration::from_secs(1),
                    before: Duration::from_secs(3),
                    fault: Duration::from_secs(4),
                    after: Duration::from_secs(5),
                }
            }
            "--only" => {
                args.only = value("--only")?
                    .split(',')
                    .map(|n| {
                        Scenario::ALL
                            .into_iter()
                            .find(|s| s.name() == n)
                            .ok_or_else(|| format!("unknown scenario `{n}`"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--concurrency" => {
                args.concurrency = value("--concurrency")?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--delay" => {
                args.delay = Duration::from_millis(
                    value("--delay")?
                        .parse()
                        .map_err(|e| format!("--delay: {e}"))?,
                )
            }
            "--timeline" => args.timeline = Some(PathBuf::from(value("--timeline")?)),
            _ => return Err(format!("unknown argument `{a}`")),
        }
    }
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------- valkey

/// Our own `valkey-server` (the harness's, killed when dropped: also when the program is
/// interrupted), and the parts of it the faults need.
struct Valkey {
    server: ValkeyServer,
}

impl Valkey {
    /// Starts the server on a free port and waits until it answers PING (up to 5 s, blocking:
    /// a worker of this multi-threaded runtime steps aside meanwhile).
    fn start() -> Result<Self, BoxError> {
        let server = started(|| ValkeyServer::start_with_args(&["--loglevel", "warning"]))?;
        Ok(Self { server })
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    /// Starts the server again on its port after [`kill`](Self::kill), waiting for PING.
    fn spawn(&mut self) -> Result<(), BoxError> {
        let server = &mut self.server;
        started(|| server.restart())
    }

    /// SIGKILL, and wait for the process to go. Its data is lost.
    fn kill(&mut self) {
        tokio::task::block_in_place(|| self.server.stop());
    }

    fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// A connection of our own, straight to Valkey (not through the proxy).
    async fn control(&self) -> redis::RedisResult<MultiplexedConnection> {
        self.server.connection().await
    }

    async fn version(&self) -> String {
        let Ok(mut c) = self.control().await else {
            return "unknown".into();
        };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        info_field(&info, "valkey_version")
            .or_else(|| info_field(&info, "redis_version"))
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// Runs a harness call that blocks until the server answers (or panics when it cannot start)
/// off the async workers, and turns its panic into an error.
fn started<T>(f: impl FnOnce() -> T) -> Result<T, BoxError> {
    tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("valkey-server did not start");
            format!("{msg} (scripts/install-valkey installs it)").into()
        })
}

// ---------------------------------------------------------------------------------- the app

fn bodies() -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..KEYS)
            .map(|id| {
                let mut s = format!("{{\"id\":{id},\"payload\":\"");
                while s.len() < BODY_LEN - 2 {
                    let _ = write!(s, "{:x}", (id * 2654435761 + s.len()) % 16);
                }
                s.push_str("\"}");
                Bytes::from(s)
            })
            .collect(),
    )
}

async fn item(
    State(bodies): State<Arc<Vec<Bytes>>>,
    Path(id): Path<usize>,
) -> Result<Bytes, StatusCode> {
    // A database call.
    tokio::time::sleep(HANDLER_DELAY).await;
    bodies.get(id).cloned().ok_or(StatusCode::NOT_FOUND)
}

fn layer(cache: Cache) -> CacheLayer {
    CacheLayer::new(cache)
        .key("item:{id}")
        .ttl(TTL)
        .stale_while_revalidate(SWR)
        .stale_if_error(SIE)
        .handler_timeout(HANDLER_TIMEOUT)
}

/// The application under test, serving on a port of its own until dropped.
struct App {
    port: u16,
    cache: Cache,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl App {
    async fn start(valkey_port: u16, bodies: Arc<Vec<Bytes>>) -> Result<Self, BoxError> {
        let store = ValkeyStore::new(&format!("redis://127.0.0.1:{valkey_port}/"))?;
        let cache = Cache::builder(store).namespace(NAMESPACE).build();
        let router = Router::new()
            .route("/items/{id}", get(item).route_layer(layer(cache.clone())))
            .with_state(bodies);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(App {
            port,
            cache,
            stop: Some(stop),
            task: Some(task),
        })
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------- load

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// 2xx from the cache (fresh or stale).
    Hit,
    /// 2xx from the handler.
    Handler,
    Non2xx,
    /// Connection error or no answer within [`REQUEST_TIMEOUT`].
    Error,
    /// 2xx with a body that is not the id's, or with `Set-Cookie`.
    Wrong,
}

#[derive(Clone, Copy, Debug)]
struct Rec {
    /// Since the scenario started, µs.
    at_us: u64,
    lat_us: u32,
    kind: Kind,
}

impl Rec {
    fn failed(&self) -> bool {
        matches!(self.kind, Kind::Non2xx | Kind::Error | Kind::Wrong)
    }
}

struct Load {
    recs: Vec<Rec>,
    samples: Vec<String>,
}

/// Zipf(s) over `n` ids: the cumulative distribution, sampled by binary search.
fn zipf_cdf(n: usize, s: f64) -> Arc<Vec<f64>> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    Arc::new(cdf)
}

async fn worker(
    client: Client<HttpConnector, Empty<Bytes>>,
    port: u16,
    bodies: Arc<Vec<Bytes>>,
    cdf: Arc<Vec<f64>>,
    t0: Instant,
    end_us: Arc<AtomicU64>,
) -> Load {
    let mut load = Load {
        recs: Vec::with_capacity(64 * 1024),
        samples: Vec::new(),
    };
    let mut rng = fastrand::Rng::new();
    loop {
        let started = Instant::now();
        let at_us = started.duration_since(t0).as_micros() as u64;
        if at_us >= end_us.load(Ordering::Relaxed) {
            return load;
        }
        let id = cdf.partition_point(|&c| c < rng.f64()).min(KEYS - 1);
        let uri = format!("http://127.0.0.1:{port}/items/{id}");
        let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let res = client.get(uri.parse()?).await?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>((parts, body))
        })
        .await;
        let lat_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let (kind, why) = match res {
            Err(_) => (Kind::Error, format!("no answer within {REQUEST_TIMEOUT:?}")),
            Ok(Err(e)) => (Kind::Error, format!("request error: {e}")),
            Ok(Ok((parts, body))) => classify(&parts.status, &parts.headers, &body, &bodies[id]),
        };
        if kind != Kind::Hit && kind != Kind::Handler && load.samples.len() < 5 {
            load.samples
                .push(format!("t={:.3}s id={id}: {why}", at_us as f64 / 1e6));
        }
        load.recs.push(Rec {
            at_us,
            lat_us,
            kind,
        });
    }
}

fn classify(
    status: &StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    want: &Bytes,
) -> (Kind, String) {
    let cs = CacheStatus::from_headers(headers);
    let cs_text = headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    if !status.is_success() {
        (
            Kind::Non2xx,
            format!("status {status}, cache-status {cs_text}"),
        )
    } else if body != want {
        (
            Kind::Wrong,
            format!("wrong body ({} bytes), cache-status {cs_text}", body.len()),
        )
    } else if headers.contains_key(header::SET_COOKIE) {
        (
            Kind::Wrong,
            format!("Set-Cookie replayed, cache-status {cs_text}"),
        )
    } else if cs.is_some_and(|s| s.hit) {
        (Kind::Hit, String::new())
    } else {
        (Kind::Handler, String::new())
    }
}

// ---------------------------------------------------------------------------------- faults

/// The environment faults act on.
struct Env {
    valkey: Valkey,
    proxy: DelayProxy,
}

async fn reset(env: &mut Env) -> Result<(), BoxError> {
    env.proxy.set_delay(Duration::ZERO);
    if !env.valkey.is_running() {
        env.valkey.spawn()?;
    }
    let mut c = env.valkey.control().await?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut c)
        .await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut c).await?;
    Ok(())
}

/// Runs the fault for `len`; returns when it is over (Valkey back, delay off, ...).
async fn fault(sc: Scenario, env: &mut Env, args: &Args) -> Result<(), BoxError> {
    let len = args.timing.fault;
    let until = Instant::now() + len;
    match sc {
        Scenario::Baseline => tokio::time::sleep(len).await,
        Scenario::Kill => {
            env.valkey.kill();
            tokio::time::sleep_until(until).await;
            env.valkey.spawn()?;
        }
        Scenario::Slow => {
            env.proxy.set_delay(args.delay);
            tokio::time::sleep_until(until).await;
            env.proxy.set_delay(Duration::ZERO);
        }
        Scenario::Maxmemory => {
            // Another tenant of the same Valkey keeps writing new keys: 100 × 4 KiB every 50 ms.
            let mut control = env.valkey.control().await?;
            let filler = env.valkey.control().await?;
            let tenant = Tenant {
                per_tick: 100,
                keys: None,
                ttl: None,
            };
            memory_pressure(&mut control, filler, "allkeys-lru", tenant, until).await?;
        }
        Scenario::Garbage => {
            let garbage = garbage();
            let space = tower_valkey_cache::store::KeySpace::new(NAMESPACE, Duration::ZERO);
            let keys: Vec<String> = (0..KEYS)
                .map(|id| space.entry(&format!("item:{id}")))
                .collect();
            let mut c = env.valkey.control().await?;
            let mut round = 0usize;
            while Instant::now() < until {
                let mut p = redis::pipe();
                for (i, key) in keys.iter().enumerate() {
                    match &garbage[(i + round) % garbage.len()] {
                        Garbage::Value(v) => {
                            p.cmd("SET").arg(key).arg(v.as_ref()).ignore();
                        }
                        Garbage::List => {
                            p.cmd("DEL").arg(key).ignore();
                            p.cmd("RPUSH").arg(key).arg("not").arg("a string").ignore();
                        }
                    }
                }
                p.query_async::<()>(&mut c).await?;
                round += 1;
                tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
            }
        }
        Scenario::ClientKill => {
            let mut c = env.valkey.control().await?;
            while Instant::now() < until {
                // SKIPME yes (the default): our own connection stays.
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .query_async(&mut c)
                    .await;
                // 250-750 ms apart: a fixed period would phase-lock with the breaker's 1 s
                // cool-down and kill every probe's fresh connection.
                let pause = Duration::from_millis(fastrand::u64(250..=750));
                tokio::time::sleep(pause.min(until - Instant::now())).await;
            }
        }
    }
    Ok(())
}

enum Garbage {
    Value(Bytes),
    /// The key holds a list, not a string.
    List,
}

/// What a confused or hostile writer might leave at an entry's key.
fn garbage() -> Vec<Garbage> {
    let now = tower_valkey_cache::entry::now_ms();
    let entry = |status: u16, headers: Vec<(HeaderName, HeaderValue)>, body: &'static [u8]| {
        Entry::new(
            status,
            headers,
            Bytes::from_static(body),
            now,
            Duration::from_secs(3600),
            Duration::ZERO,
        )
        .encode()
        .unwrap_or_default()
    };
    let good = entry(200, Vec::new(), b"{\"id\":0}");
    let mut truncated = good.to_vec();
    truncated.truncate(good.len() / 2);
    let mut padded = good.to_vec();
    padded.extend_from_slice(b"trailing");
    let mut version = good.to_vec();
    if let Some(v) = version.get_mut(3) {
        *v = 99;
    }
    let cookie = vec![(
        header::SET_COOKIE,
        HeaderValue::from_static("session=stolen"),
    )];
    vec![
        Garbage::Value(Bytes::from(
            (0..64).map(|_| fastrand::u8(..)).collect::<Vec<u8>>(),
        )),
        Garbage::Value(Bytes::from_static(tower_valkey_cache::testing::GARBAGE)),
        Garbage::Value(Bytes::new()),
        Garbage::Value(Bytes::from(truncated)),
        Garbage::Value(Bytes::from(padded)),
        Garbage::Value(Bytes::from(version)),
        Garbage::Value(Bytes::from_static(b"TVC")),
        // Well-formed entries the route could never have stored: must not be replayed.
        Garbage::Value(entry(500, Vec::new(), b"forged error")),
        Garbage::Value(entry(200, cookie, b"{\"id\":0}")),
        Garbage::List,
    ]
}

// ---------------------------------------------------------------------------------- analysis

struct Report {
    scenario: Scenario,
    fault: String,
    requests: usize,
    non2xx: usize,
    errors: usize,
    rps_before: f64,
    rps_during: f64,
    p99_before: Duration,
    p99_during: Duration,
    max: Duration,
    hit_before: f64,
    hit_during: f64,
    hit_after: f64,
    recovery: Option<Duration>,
    stats: Stats,
    /// The machine's 1-minute load average, the higher of the scenario's start and end.
    load: Option<f64>,
    samples: Vec<String>,
}

struct Window {
    n: usize,
    hits: usize,
    p99: Duration,
    secs: f64,
}

fn window(recs: &[Rec], from_us: u64, to_us: u64) -> Window {
    let mut lat: Vec<u32> = Vec::new();
    let mut hits = 0;
    for r in recs.iter().filter(|r| (from_us..to_us).contains(&r.at_us)) {
        lat.push(r.lat_us);
        hits += usize::from(r.kind == Kind::Hit);
    }
    lat.sort_unstable();
    let p99 = match lat.len() {
        0 => 0,
        n => lat[(n * 99).div_ceil(100) - 1],
    };
    Window {
        n: lat.len(),
        hits,
        p99: Duration::from_micros(p99 as u64),
        secs: to_us.saturating_sub(from_us) as f64 / 1e6,
    }
}

impl Window {
    fn ratio(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.hits as f64 / self.n as f64
        }
    }
}

/// Requests and hits per bucket from `from_us` to `to_us`.
fn buckets(recs: &[Rec], from_us: u64, to_us: u64) -> Vec<(usize, usize, usize)> {
    let n = (to_us.saturating_sub(from_us)).div_ceil(BUCKET_US) as usize;
    let mut b = vec![(0usize, 0usize, 0usize); n];
    for r in recs.iter().filter(|r| (from_us..to_us).contains(&r.at_us)) {
        let i = ((r.at_us - from_us) / BUCKET_US) as usize;
        b[i].0 += 1;
        b[i].1 += usize::from(r.kind == Kind::Hit);
        b[i].2 += usize::from(r.failed());
    }
    b
}

/// The median of the buckets' hit ratios: the steady state before the fault, unmoved by a
/// moment of trouble (a scheduling stall on a busy machine can open the breaker for a second).
fn median_ratio(b: &[(usize, usize, usize)]) -> f64 {
    let mut r: Vec<f64> = b
        .iter()
        .filter(|(n, ..)| *n > 0)
        .map(|&(n, hits, _)| hits as f64 / n as f64)
        .collect();
    r.sort_by(f64::total_cmp);
    r.get(r.len() / 2).copied().unwrap_or(0.0)
}

/// The first bucket after which `RECOVERED_RUN` buckets in a row (or all that are left) have a
/// hit ratio of at least `threshold`.
fn recovery(after: &[(usize, usize, usize)], threshold: f64) -> Option<Duration> {
    let ok = |&(n, hits, _): &(usize, usize, usize)| n > 0 && hits as f64 >= threshold * n as f64;
    (0..after.len())
        .find(|&i| {
            after[i..(i + RECOVERED_RUN).min(after.len())]
                .iter()
                .all(ok)
        })
        .map(|i| Duration::from_micros(i as u64 * BUCKET_US))
}

// ---------------------------------------------------------------------------------- a scenario

async fn run_scenario(
    sc: Scenario,
    env: &mut Env,
    args: &Args,
    bodies: &Arc<Vec<Bytes>>,
    cdf: &Arc<Vec<f64>>,
) -> Result<Report, BoxError> {
    reset(env).await?;
    let load_start = loadavg();
    let app = App::start(env.proxy.port(), bodies.clone()).await?;
    let before_stats = app.cache.stats();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let t0 = Instant::now();
    let end_us = Arc::new(AtomicU64::new(u64::MAX));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                app.port,
                bodies.clone(),
                cdf.clone(),
                t0,
                end_us.clone(),
            ))
        })
        .collect();
    let t = args.timing;
    tokio::time::sleep_until(t0 + t.warmup + t.before).await;
    let fault_start = t0.elapsed();
    let faulted = fault(sc, env, args).await;
    let fault_end = t0.elapsed();
    end_us.store((fault_end + t.after).as_micros() as u64, Ordering::Relaxed);
    let mut recs = Vec::new();
    let mut samples = Vec::new();
    for w in workers {
        let load = w.await?;
        recs.extend(load.recs);
        samples.extend(load.samples);
    }
    drop(client);
    let stats = *StatsDelta::since(&before_stats, &app.cache.stats());
    app.stop().await;
    faulted?;

    let (fs, fe) = (fault_start.as_micros() as u64, fault_end.as_micros() as u64);
    let ae = (fault_end + t.after).as_micros() as u64;
    let bs = fs.saturating_sub(t.before.as_micros() as u64);
    let (before, during, after) = (
        window(&recs, bs, fs),
        window(&recs, fs, fe),
        window(&recs, fe, ae),
    );
    let after_buckets = buckets(&recs, fe, ae);
    let reference = median_ratio(&buckets(&recs, bs, fs));
    if let Some(dir) = &args.timeline {
        write_timeline(dir, sc, &recs, bs, fs, ae)?;
    }
    samples.sort();
    samples.truncate(10);
    Ok(Report {
        scenario: sc,
        fault: sc.describe(args),
        requests: recs.len(),
        non2xx: recs.iter().filter(|r| r.kind == Kind::Non2xx).count(),
        errors: recs
            .iter()
            .filter(|r| matches!(r.kind, Kind::Error | Kind::Wrong))
            .count(),
        rps_before: before.n as f64 / before.secs,
        rps_during: during.n as f64 / during.secs,
        p99_before: before.p99,
        p99_during: during.p99,
        max: Duration::from_micros(recs.iter().map(|r| r.lat_us).max().unwrap_or(0) as u64),
        hit_before: before.ratio(),
        hit_during: during.ratio(),
        hit_after: after.ratio(),
        recovery: recovery(&after_buckets, 0.9 * reference),
        stats,
        load: match (load_start, loadavg()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        samples,
    })
}

/// The 1-minute load average (Linux), to tell a stalled machine from a stalled cache.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn write_timeline(
    dir: &std::path::Path,
    sc: Scenario,
    recs: &[Rec],
    from_us: u64,
    fault_us: u64,
    to_us: u64,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut out = String::from("t_from_fault_s,requests,hits,failures,hit_ratio\n");
    for (i, (n, hits, failed)) in buckets(recs, from_us, to_us).into_iter().enumerate() {
        let t = (from_us + i as u64 * BUCKET_US) as f64 / 1e6 - fault_us as f64 / 1e6;
        let ratio = if n == 0 { 0.0 } else { hits as f64 / n as f64 };
        let _ = writeln!(out, "{t:.1},{n},{hits},{failed},{ratio:.4}");
    }
    std::fs::write(dir.join(format!("{}.csv", sc.name())), out)
}

// ---------------------------------------------------------------------------------- report

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn markdown(reports: &[Report], args: &Args, valkey_version: &str) -> String {
    let t = args.timing;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- Load: {} concurrent connections, closed loop (hyper), `GET /items/{{id}}` over {KEYS} ids \
         with Zipf({ZIPF_S}) popularity; every body checked byte for byte",
        args.concurrency
    );
    let _ = writeln!(
        s,
        "- App: `CacheLayer` key `item:{{id}}`, TTL {} s, stale-while-revalidate {} s, \
         stale-if-error {} s, handler timeout {} s; handler {} ms, {BODY_LEN} B body; \
         `ValkeyStore` defaults (100 ms per operation, breaker 5 failures / 1 s), through a \
         TCP proxy to Valkey {valkey_version}",
        TTL.as_secs(),
        SWR.as_secs(),
        SIE.as_secs(),
        HANDLER_TIMEOUT.as_secs(),
        HANDLER_DELAY.as_millis(),
    );
    let _ = writeln!(
        s,
        "- Each scenario: flushed Valkey, new app, {} s warm-up, {} s before the fault, {} s of \
         fault, {} s after",
        t.warmup.as_secs(),
        t.before.as_secs(),
        t.fault.as_secs(),
        t.after.as_secs()
    );
    s.push('\n');
    s.push_str(
        "| scenario | fault | requests | non-2xx | errors | req/s before → during | p99 before → during | max latency | hit ratio before / during / after | recovery |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        let rec = match r.recovery {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "not recovered".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} → {} | {} → {} | {} | {} / {} / {} | {} |",
            r.scenario.name(),
            r.fault,
            thousands(r.requests),
            r.non2xx,
            r.errors,
            thousands(r.rps_before.round() as usize),
            thousands(r.rps_during.round() as usize),
            ms(r.p99_before),
            ms(r.p99_during),
            ms(r.max),
            pct(r.hit_before),
            pct(r.hit_during),
            pct(r.hit_after),
            rec,
        );
    }
    s.push('\n');
    s.push_str("What the cache counted (`Cache::stats()` over the scenario):\n\n");
    s.push_str("| scenario | hits | stale hits | misses | store unavailable | undecodable | store errors | breaker opened | stale-if-error | load average |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        let st = &r.stats;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.name(),
            thousands(st.hits as usize),
            thousands(st.stale_hits as usize),
            thousands(st.misses as usize),
            thousands(st.store_unavailable as usize),
            thousands(st.decode_failures as usize),
            thousands(st.store_errors as usize),
            st.breaker_opened,
            st.stale_if_error,
            r.load.map_or("?".into(), |l| format!("{l:.1}")),
        );
    }
    s.push('\n');
    s.push_str(
        "Requests and failures count every request of the scenario, warm-up included. **non-2xx** \
         and **errors** (connection errors, no answer within 5 s, a wrong body or a replayed \
         `Set-Cookie`) must be 0. A hit is a response with `Cache-Status: ...; hit` (fresh or \
         stale). **Recovery**: time from the end of the fault (Valkey answering again, the delay \
         off, ...) until the hit ratio is at least 90% of the before-window's (the median of its 100 ms \
         buckets) for 10 consecutive 100 ms buckets. **Load average**: the machine's 1-minute \
         load average; above its CPU count, processes wait for a CPU, and a stall past the 100 ms \
         operation timeout fails store operations (and can open the breaker) with no fault at \
         all.\n",
    );
    s
}

// ---------------------------------------------------------------------------------- main

async fn run(args: Args) -> Result<bool, BoxError> {
    let valkey = Valkey::start()?;
    let proxy = DelayProxy::start(valkey.port()).await?;
    let version = valkey.version().await;
    eprintln!(
        "chaos: valkey-server {version} on port {}, proxy on {}",
        valkey.port(),
        proxy.port()
    );
    let mut env = Env { valkey, proxy };
    let (bodies, cdf) = (bodies(), zipf_cdf(KEYS, ZIPF_S));
    let mut reports = Vec::new();
    for &sc in &args.only {
        eprintln!("chaos: {}: {}", sc.name(), sc.describe(&args));
        let r = run_scenario(sc, &mut env, &args, &bodies, &cdf).await?;
        eprintln!(
            "chaos: {}: {} requests, {} non-2xx, {} errors, hit ratio {} / {} / {}, p99 {} → {}",
            sc.name(),
            r.requests,
            r.non2xx,
            r.errors,
            pct(r.hit_before),
            pct(r.hit_during),
            pct(r.hit_after),
            ms(r.p99_before),
            ms(r.p99_during),
        );
        for s in &r.samples {
            eprintln!("chaos: {}:   failure: {s}", sc.name());
        }
        reports.push(r);
    }
    print!("{}", markdown(&reports, &args, &version));
    Ok(reports.iter().all(|r| r.non2xx == 0 && r.errors == 0))
}

async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = tokio::signal::ctrl_c() => return "SIGINT",
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

#[tokio::main]
async fn main() -> ExitCode {
    // RUST_LOG=tower_valkey_cache=warn shows why store operations fail.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            eprintln!("usage: chaos [--quick] [--only SCENARIO,...] [--concurrency N] [--delay MS] [--timeline DIR]");
            return ExitCode::from(2);
        }
    };
    // Dropping `run` on a signal drops the Valkey child, which kills it.
    let outcome = tokio::select! {
        r = run(args) => r,
        s = interrupted() => Err(format!("stopped by {s}").into()),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("chaos: FAILED: some requests failed (see non-2xx / errors above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("chaos: error: {e}");
            ExitCode::from(3)
        }
    }
}
