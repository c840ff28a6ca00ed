//! Single-flight under bad luck (issue 16 item 8), on a real Valkey and on `MemoryStore`, for
//! `CacheLayer` routes and for `get_or_set`:
//!
//! - **cancelled leaders in a row**: N leaders cancelled one after another while M followers
//!   wait: exactly N + 1 runs, every remaining follower answered by the last one (a fixed retry
//!   cap of three once let every follower of a fourth cancelled leader run at once: 31 runs);
//! - **failures are shared**: a handler answering a 5xx, or a loader returning an error, with 40
//!   concurrent callers runs once and every caller gets the same response or error (40 runs
//!   before); a 5xx the route could never share (`Set-Cookie`, `private`, `no-store`) is not;
//! - **`error_ttl`**: a failure answers the next misses for its TTL, in this process, and any
//!   invalidation of the namespace retires it; revalidating requests run the handler.
//!
//! Every handler and loader counts its runs, so an extra run fails an exact assertion. The
//! concurrency tests run on a two-worker runtime; they wait on the `waiting` gauge (every
//! follower has joined) rather than on sleeps.

use crate::support;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{collect, eventually, get as get_req, Backend, Resp, StoreTimeouts};
use tower::ServiceExt;
use tower_valkey_cache::function::Options;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);
/// The bound of every wait: far above what any scenario needs.
const LIMIT: Duration = Duration::from_secs(20);

const COLLAPSED: &str = "tower-valkey-cache; fwd=uri-miss; collapsed";
const STORED: &str = "tower-valkey-cache; fwd=uri-miss; stored";
const FAILED: &str = "tower-valkey-cache; fwd=uri-miss; detail=status";
const ERROR_CACHED: &str = "tower-valkey-cache; fwd=uri-miss; detail=error-cached";

/// Counts runs and records which caller each run belongs to.
#[derive(Clone, Default)]
struct Runs {
    n: Arc<AtomicUsize>,
    callers: Arc<Mutex<Vec<usize>>>,
}

impl Runs {
    /// Counts a run by `caller`; returns its number (1 for the first).
    fn start(&self, caller: usize) -> usize {
        let mut c = self.callers.lock().unwrap();
        c.push(caller);
        self.n.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
    /// The caller of run `k` (1-based).
    fn caller_of(&self, k: usize) -> usize {
        self.callers.lock().unwrap()[k - 1]
    }
}

/// Waits until the cache's `waiting` gauge reads `n`.
async fn waiting(cache: &Cache, n: usize, what: &str) {
    eventually(LIMIT, what, || async {
        (cache.stats().waiting == n as u64).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 1. N cancelled leaders in a row, M followers: exactly N + 1 runs
// ---------------------------------------------------------------------------------------------

/// Leaders cancelled in a row.
const CANCELLED: usize = 4;
/// Followers of the first leader.
const FOLLOWERS: usize = 30;

/// Drives `CANCELLED` cancellations: callers `0..=FOLLOWERS` are `tasks` (caller 0 started
/// first and leads); each round waits for run `i` to start with every other live caller
/// waiting on it, then aborts the caller that runs it. Returns the live callers' results.
async fn cancel_leaders_in_a_row<T: Send + std::fmt::Debug + 'static>(
    cache: &Cache,
    runs: &Runs,
    mut tasks: Vec<Option<tokio::task::JoinHandle<T>>>,
) -> Vec<T> {
    for i in 1..=CANCELLED {
        eventually(LIMIT, "the next leader to run", || async {
            (runs.get() == i).then_some(())
        })
        .await;
        let live = tasks.iter().filter(|t| t.is_some()).count();
        waiting(cache, live - 1, "every other caller to follow the leader").await;
        assert_eq!(runs.get(), i, "followers wait for leader {i}");
        let leader = tasks[runs.caller_of(i)]
            .take()
            .expect("a live caller leads");
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
    }
    let mut out = Vec::new();
    let all = async {
        for t in tasks.into_iter().flatten() {
            out.push(t.await.expect("caller panicked"));
        }
    };
    tokio::time::timeout(LIMIT, all)
        .await
        .expect("followers hang after their leaders were cancelled");
    out
}

async fn layer_cancelled_leaders(b: Backend) {
    let cache = b.cache("leaders", OP);
    let runs = Runs::default();
    let app = {
        let runs = runs.clone();
        Router::new().route(
            "/item",
            get(move |headers: HeaderMap| {
                let runs = runs.clone();
                async move {
                    let caller = headers["x-caller"].to_str().unwrap().parse().unwrap();
                    let k = runs.start(caller);
                    // The first CANCELLED runs end only by being cancelled.
                    let delay = if k <= CANCELLED {
                        LIMIT * 2
                    } else {
                        Duration::from_millis(50)
                    };
                    tokio::time::sleep(delay).await;
                    format!("run {k}")
                }
            })
            .route_layer(
                CacheLayer::new(cache.clone())
                    .key("item")
                    .ttl(Duration::from_secs(60)),
            ),
        )
    };
    let call = |caller: usize| {
        let app = app.clone();
        tokio::spawn(async move {
            let req = Request::get("/item")
                .header("x-caller", caller.to_string())
                .body(Body::empty())
                .unwrap();
            collect(app.oneshot(req).await.expect("infallible")).await
        })
    };
    let mut tasks = vec![Some(call(0))];
    eventually(LIMIT, "the first leader to run", || async {
        (runs.get() == 1).then_some(())
    })
    .await;
    tasks.extend((1..=FOLLOWERS).map(|c| Some(call(c))));

    let rs = cancel_leaders_in_a_row(&cache, &runs, tasks).await;
    assert_eq!(runs.get(), CANCELLED + 1, "the cancelled runs and one more");
    let last = format!("run {}", CANCELLED + 1);
    for r in &rs {
        assert_eq!((r.status, r.text()), (StatusCode::OK, last.as_str()));
    }
    let stored = rs.iter().filter(|r| r.cache_status() == STORED).count();
    let collapsed = rs.iter().filter(|r| r.cache_status() == COLLAPSED).count();
    assert_eq!((stored, collapsed), (1, FOLLOWERS - CANCELLED));
    assert!(get_req(&app, "/item").await.is_hit());
}

async fn function_cancelled_leaders(b: Backend) {
    let cache = b.cache("leaders-fn", OP);
    let runs = Runs::default();
    let call = |caller: usize| {
        let (cache, runs) = (cache.clone(), runs.clone());
        tokio::spawn(async move {
            cache
                .get_or_set("item", || async move {
                    let k = runs.start(caller);
                    let delay = if k <= CANCELLED {
                        LIMIT * 2
                    } else {
                        Duration::from_millis(50)
                    };
                    tokio::time::sleep(delay).await;
                    Ok::<_, ()>(format!("run {k}"))
                })
                .await
        })
    };
    let mut tasks = vec![Some(call(0))];
    eventually(LIMIT, "the first leader to run", || async {
        (runs.get() == 1).then_some(())
    })
    .await;
    tasks.extend((1..=FOLLOWERS).map(|c| Some(call(c))));

    let values = cancel_leaders_in_a_row(&cache, &runs, tasks).await;
    assert_eq!(runs.get(), CANCELLED + 1, "the cancelled runs and one more");
    assert_eq!(values.len(), FOLLOWERS + 1 - CANCELLED);
    for v in values {
        assert_eq!(v, Ok(format!("run {}", CANCELLED + 1)));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A failure is shared: 40 callers, one run
// ---------------------------------------------------------------------------------------------

const CALLERS: usize = 40;

/// A route `/down` whose handler counts its run, holds the first run until every other request
/// waits on it, and answers `503` with `headers` and the body `"down <k>"`.
fn failing_route(
    cache: &Cache,
    runs: &Runs,
    headers: &'static [(&'static str, &'static str)],
    layer: CacheLayer,
) -> Router {
    let (runs, cache) = (runs.clone(), cache.clone());
    Router::new().route(
        "/down",
        get(move || {
            let (runs, cache) = (runs.clone(), cache.clone());
            async move {
                let k = runs.start(0);
                if k == 1 {
                    let deadline = Instant::now() + LIMIT / 2;
                    while cache.stats().waiting < CALLERS as u64 - 1 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let mut res = http::Response::builder().status(StatusCode::SERVICE_UNAVAILABLE);
                for (n, v) in headers {
                    res = res.header(*n, *v);
                }
                res.header("retry-after", "3")
                    .body(Body::from(format!("down {k}")))
                    .unwrap()
            }
        })
        .route_layer(layer),
    )
}

async fn burst(app: &Router, n: usize, uri: &str) -> Vec<Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (app, uri) = (app.clone(), uri.to_owned());
            tokio::spawn(async move {
                let req = Request::get(uri).body(Body::empty()).unwrap();
                collect(app.oneshot(req).await.expect("infallible")).await
            })
        })
        .collect();
    let mut out = Vec::new();
    let all = async {
        for t in tasks {
            out.push(t.await.expect("request panicked"));
        }
    };
    tokio::time::timeout(LIMIT, all)
        .await
        .expect("burst completes");
    out
}

async fn layer_failure_is_shared(b: Backend) {
    let cache = b.cache("fail", OP);
    let runs = Runs::default();
    let layer = CacheLayer::new(cache.clone()).key("down");
    let app = failing_route(&cache, &runs, &[], layer);
    let rs = burst(&app, CALLERS, "/down").await;
    assert_eq!(
        runs.get(),
        1,
        "one handler run for {CALLERS} concurrent requests"
    );
    for r in &rs {
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::SERVICE_UNAVAILABLE, "down 1")
        );
        assert_eq!(r.header("retry-after"), "3", "the headers are shared too");
    }
    let leader = rs.iter().filter(|r| r.cache_status() == FAILED).count();
    let collapsed = rs.iter().filter(|r| r.cache_status() == COLLAPSED).count();
    assert_eq!((leader, collapsed), (1, CALLERS - 1));
    // Not stored: the next request runs the handler again.
    let r = get_req(&app, "/down").await;
    assert_eq!((r.text(), r.cache_status()), ("down 2", FAILED));
    assert!(support::stored(&cache, "down").await.is_none());
}

/// A 5xx a route could never share is not handed to its followers: each runs the handler.
async fn layer_private_failures_are_not_shared(b: Backend) {
    let cases: [&'static [(&'static str, &'static str)]; 3] = [
        &[("set-cookie", "session=abc")],
        &[("cache-control", "private")],
        &[("cache-control", "no-store")],
    ];
    for (n, headers) in cases.into_iter().enumerate() {
        let cache = b.cache(&format!("private-fail-{n}"), OP);
        let runs = Runs::default();
        let layer = CacheLayer::new(cache.clone())
            .key("down")
            .error_ttl(Duration::from_secs(30));
        let app = failing_route(&cache, &runs, headers, layer);
        let rs = burst(&app, CALLERS, "/down").await;
        assert_eq!(
            runs.get(),
            CALLERS,
            "{headers:?}: every request ran its own handler"
        );
        let mut bodies: Vec<&str> = rs.iter().map(|r| r.text()).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(
            bodies.len(),
            CALLERS,
            "{headers:?}: nobody got another's response"
        );
        // Nor kept by the error cache.
        let r = get_req(&app, "/down").await;
        assert_eq!(r.text(), format!("down {}", CALLERS + 1));
    }
}

async fn function_failure_is_shared(b: Backend) {
    let cache = b.cache("fail-fn", OP);
    let runs = Runs::default();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set("rate", || async {
                        let k = runs.start(0);
                        let deadline = Instant::now() + LIMIT / 2;
                        while cache.stats().waiting < CALLERS as u64 - 1
                            && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err::<String, _>(format!("upstream down (run {k})"))
                    })
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(
            tokio::time::timeout(LIMIT, t)
                .await
                .expect("call completes")
                .unwrap(),
        );
    }
    assert_eq!(
        runs.get(),
        1,
        "one loader run for {CALLERS} concurrent callers"
    );
    for r in results {
        assert_eq!(r, Err("upstream down (run 1)".to_owned()));
    }
    // Not stored, not kept (no error_ttl): the next call runs the loader again.
    let r = cache
        .get_or_set("rate", || async { Err::<String, _>("again".to_owned()) })
        .await;
    assert_eq!(r, Err("again".to_owned()));
}

/// A failing loader with a stale value in its window: one run, and every caller (the leader and
/// its followers) gets the stale value, each counted as served stale-if-error.
async fn function_failure_with_a_stale_value_is_stale_for_everyone(b: Backend) {
    let cache = b.cache("fail-fn-stale", OP);
    let opts = Options::new()
        .ttl(Duration::from_millis(50))
        .stale_if_error(Duration::from_secs(600));
    cache.set("rate", &"old".to_owned(), &opts).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let before = cache.stats();
    let runs = Runs::default();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cache, runs, opts) = (cache.clone(), runs.clone(), opts.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set_with("rate", &opts, || async {
                        runs.start(0);
                        let deadline = Instant::now() + LIMIT / 2;
                        while cache.stats().waiting < CALLERS as u64 - 1
                            && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err::<String, _>("upstream down".to_owned())
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        let r = tokio::time::timeout(LIMIT, t)
            .await
            .expect("call completes")
            .unwrap();
        assert_eq!(r, Ok("old".to_owned()));
    }
    assert_eq!(runs.get(), 1, "one loader run for {CALLERS} callers");
    let after = cache.stats();
    assert_eq!(
        after.stale_if_error - before.stale_if_error,
        CALLERS as u64,
        "every caller labelled stale: {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. error_ttl
// ---------------------------------------------------------------------------------------------

async fn layer_error_ttl(b: Backend) {
    let cache = b.cache("error-ttl", OP);
    let runs = Runs::default();
    let app = {
        let runs = runs.clone();
        let layer = CacheLayer::new(cache.clone())
            .key("down")
            .error_ttl(Duration::from_secs(30));
        Router::new().route(
            "/down",
            get(move || {
                let runs = runs.clone();
                async move {
                    let k = runs.start(0);
                    (StatusCode::BAD_GATEWAY, format!("down {k}"))
                }
            })
            .route_layer(layer),
        )
    };
    let r = get_req(&app, "/down").await;
    assert_eq!(
        (r.status, r.text(), r.cache_status()),
        (StatusCode::BAD_GATEWAY, "down 1", FAILED)
    );
    for _ in 0..5 {
        let r = get_req(&app, "/down").await;
        assert_eq!(
            (r.status, r.text(), r.cache_status()),
            (StatusCode::BAD_GATEWAY, "down 1", ERROR_CACHED)
        );
    }
    assert_eq!(
        runs.get(),
        1,
        "the failing handler is not run again within error_ttl"
    );
    // A request asking to revalidate runs the handler.
    let r = support::send(
        &app,
        support::request("GET", "/down", &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(r.text(), "down 2");
    // Any invalidation of the namespace retires the failure (here: another key's).
    cache.invalidate_key("unrelated").await.unwrap();
    let r = get_req(&app, "/down").await;
    assert_eq!((r.text(), r.cache_status()), ("down 3", FAILED));
    let r = get_req(&app, "/down").await;
    assert_eq!((r.text(), r.cache_status()), ("down 3", ERROR_CACHED));

    // It expires: a short error_ttl runs the handler again once it has passed.
    let runs = Runs::default();
    let short = {
        let runs = runs.clone();
        let layer = CacheLayer::new(cache.clone())
            .key("short")
            .error_ttl(Duration::from_millis(200));
        Router::new().route(
            "/short",
            get(move || {
                let runs = runs.clone();
                async move {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("down {}", runs.start(0)),
                    )
                }
            })
            .route_layer(layer),
        )
    };
    assert_eq!(get_req(&short, "/short").await.text(), "down 1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get_req(&short, "/short").await.text(), "down 2");

    // Without error_ttl every sequential request runs the failing handler.
    let runs = Runs::default();
    let off = {
        let runs = runs.clone();
        Router::new().route(
            "/off",
            get(move || {
                let runs = runs.clone();
                async move {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("down {}", runs.start(0)),
                    )
                }
            })
            .route_layer(CacheLayer::new(cache.clone()).key("off")),
        )
    };
    for k in 1..=3 {
        assert_eq!(get_req(&off, "/off").await.text(), format!("down {k}"));
    }
}

async fn function_error_ttl(b: Backend) {
    let cache = b.cache("error-ttl-fn", OP);
    let runs = Runs::default();
    let opts = Options::new().error_ttl(Duration::from_secs(30));
    let load = |cache: &Cache| {
        let (cache, runs, opts) = (cache.clone(), runs.clone(), opts.clone());
        async move {
            cache
                .get_or_set_with("rate", &opts, || async {
                    Err::<String, _>(format!("down {}", runs.start(0)))
                })
                .await
        }
    };
    for _ in 0..5 {
        assert_eq!(load(&cache).await, Err("down 1".to_owned()));
    }
    assert_eq!(
        runs.get(),
        1,
        "the failing loader is not run again within error_ttl"
    );
    // An invalidation of the key (or anything in the namespace) retires it.
    cache.invalidate_key("rate").await.unwrap();
    assert_eq!(load(&cache).await, Err("down 2".to_owned()));
    assert_eq!(load(&cache).await, Err("down 2".to_owned()));
    // Another call site failing with another error type on the same key runs its own loader.
    let other: Result<String, u16> = cache
        .get_or_set_with("rate", &opts, || async { Err(503) })
        .await;
    assert_eq!(other, Err(503));
    // Expiry.
    let short = Options::new().error_ttl(Duration::from_millis(200));
    let runs = Runs::default();
    let load = || {
        let (cache, runs, short) = (cache.clone(), runs.clone(), short.clone());
        async move {
            cache
                .get_or_set_with("short", &short, || async {
                    Err::<String, _>(format!("down {}", runs.start(0)))
                })
                .await
        }
    };
    assert_eq!(load().await, Err("down 1".to_owned()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(load().await, Err("down 2".to_owned()));
}

mod valkey {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_four_cancelled_leaders_in_a_row_mean_five_runs() {
        layer_cancelled_leaders(Backend::valkey(VALKEY)).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn function_four_cancelled_leaders_in_a_row_mean_five_runs() {
        function_cancelled_leaders(Backend::valkey(VALKEY)).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_a_5xx_is_shared_with_its_followers() {
        layer_failure_is_shared(Backend::valkey(VALKEY)).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_a_private_5xx_is_never_shared() {
        layer_private_failures_are_not_shared(Backend::valkey(VALKEY)).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn function_a_loader_error_is_shared_with_its_followers() {
        function_failure_is_shared(Backend::valkey(VALKEY)).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn function_followers_of_a_failure_get_the_stale_value_labelled_stale() {
        function_failure_with_a_stale_value_is_stale_for_everyone(Backend::valkey(VALKEY)).await
    }
    #[tokio::test]
    async fn layer_error_ttl_answers_misses_until_invalidated_or_expired() {
        layer_error_ttl(Backend::valkey(VALKEY)).await
    }
    #[tokio::test]
    async fn function_error_ttl_answers_calls_until_invalidated_or_expired() {
        function_error_ttl(Backend::valkey(VALKEY)).await
    }
}

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_four_cancelled_leaders_in_a_row_mean_five_runs() {
        layer_cancelled_leaders(Backend::memory(MemoryStore::new())).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn function_four_cancelled_leaders_in_a_row_mean_five_runs() {
        function_cancelled_leaders(Backend::memory(MemoryStore::new())).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_a_5xx_is_shared_with_its_followers() {
        layer_failure_is_shared(Backend::memory(MemoryStore::new())).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_a_private_5xx_is_never_shared() {
        layer_private_failures_are_not_shared(Backend::memory(MemoryStore::new())).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn function_a_loader_error_is_shared_with_its_followers() {
        function_failure_is_shared(Backend::memory(MemoryStore::new())).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn function_followers_of_a_failure_get_the_stale_value_labelled_stale() {
        function_failure_with_a_stale_value_is_stale_for_everyone(Backend::memory(
            MemoryStore::new(),
        ))
        .await
    }
    #[tokio::test]
    async fn layer_error_ttl_answers_misses_until_invalidated_or_expired() {
        layer_error_ttl(Backend::memory(MemoryStore::new())).await
    }
    #[tokio::test]
    async fn function_error_ttl_answers_calls_until_invalidated_or_expired() {
        function_error_ttl(Backend::memory(MemoryStore::new())).await
    }
}

/// The single-flight map's bound (ARCHITECTURE.md, *Bounds*): never more entries than keys
/// being filled, and none once every caller has finished or been cancelled, at whatever point
/// the cancellation lands (before the read, during the load, while following).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_are_bounded_by_keys_and_empty_when_idle() {
    const KEYS: usize = 16;
    let cache = Cache::new(MemoryStore::new());
    let opts = Options::new().ttl(Duration::from_millis(5));
    let max_seen = Arc::new(AtomicUsize::new(0));
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..200usize {
            let (cache, opts, max_seen) = (cache.clone(), opts.clone(), max_seen.clone());
            let key = format!("k:{round}:{}", i % KEYS);
            tasks.push(tokio::spawn(async move {
                let c = cache.clone();
                let _: Result<u64, Arc<std::io::Error>> = cache
                    .get_or_set_with(&key, &opts, || async move {
                        max_seen.fetch_max(c.flights_in_progress(), Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
                        Ok(1)
                    })
                    .await;
            }));
        }
        // Cancel a third of the callers at random moments.
        for (i, t) in tasks.iter().enumerate() {
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..200))).await;
                t.abort();
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        assert_eq!(
            cache.flights_in_progress(),
            0,
            "round {round}: a flight outlived its callers"
        );
    }
    let max = max_seen.load(Ordering::SeqCst);
    assert!(
        (1..=KEYS).contains(&max),
        "flights in progress peaked at {max} with {KEYS} keys"
    );
}
