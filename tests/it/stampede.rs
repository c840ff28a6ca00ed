//! Stampede protection and stale serving (issue 4), through real axum routers against a real
//! Valkey and, where it is cheap, against `MemoryStore`:
//!
//! - single-flight: a burst of 1,000 concurrent requests on one cold key runs the handler once;
//! - the fill lock: three independent caches/routers on one Valkey fill a cold key once, and
//!   followers still complete when the lock holder dies (its lease expires);
//! - stale-while-revalidate: stale answers at once, one background refresh, fresh afterwards;
//! - stale-if-error: a failing or slow upstream (wiremock) is replaced by the stale entry inside
//!   the window, and passes through outside it;
//! - cancellation: a leader whose client goes away does not leave followers hanging;
//! - TTL jitter: entries written together get TTLs spread over `[ttl * (1 - f), ttl]`.
//!
//! Every handler counts its runs (`Calls`), so an extra run fails an exact assertion. Concurrency
//! tests run on a two-worker multi-threaded runtime so races between tasks are real.

use crate::support;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    collect, eventually, get as get_req, Backend, Resp, StoreTimeouts, ValkeyCluster, ValkeyServer,
};
use tokio::sync::Barrier;
use tower::ServiceExt;
use tower_valkey_cache::entry::{now_ms, Entry};
use tower_valkey_cache::store::Write;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyStore};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "tower-valkey-cache";
const STORED: &str = "tower-valkey-cache; fwd=uri-miss; stored";
const COLLAPSED: &str = "tower-valkey-cache; fwd=uri-miss; collapsed";
/// Bound of every poll loop and of every burst: far above what any scenario needs, so hitting it
/// means something hangs.
const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The single server's store: generous timeouts, since a debug build serving a 1,000-request
/// burst on two cores is slow and these scenarios are about behaviour, not latency. (With the
/// default 100 ms, a read that times out is served by the handler and would count as an extra
/// run.)
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
/// The cluster store's connect and response timeout.
const CLUSTER: Duration = Duration::from_secs(2);
/// Every cache's operation timeout.
const OP: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Counts handler runs.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    /// Counts a run; returns its number (1 for the first).
    fn inc(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Holds handlers back until every request of a burst has looked the key up: when armed, a
/// handler waits (bounded) until the caches' `waiting` gauge says every other request of the
/// burst waits on a leader (a flight in its process, or another instance's fill lock).
#[derive(Clone)]
struct Gate {
    target: Arc<AtomicU64>,
    caches: Vec<Cache>,
}

impl Gate {
    fn new(caches: &[Cache]) -> Self {
        Self {
            target: Arc::new(AtomicU64::new(0)),
            caches: caches.to_vec(),
        }
    }

    /// Requests waiting right now for another one's fill (flight followers, fill-lock waiters).
    fn waiting(&self) -> u64 {
        self.caches.iter().map(|c| c.stats().waiting).sum()
    }

    /// Handlers wait until the other `n - 1` requests of a burst of `n` wait for them: every
    /// request has looked up, missed and joined a flight or a fill lock.
    fn arm(&self, n: usize) {
        self.target.store(n as u64 - 1, Ordering::SeqCst);
    }

    /// Handlers run at once.
    fn open(&self) {
        self.target.store(0, Ordering::SeqCst);
    }

    async fn pass(&self) {
        let target = self.target.load(Ordering::SeqCst);
        let deadline = Instant::now() + LIMIT / 2;
        while self.waiting() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A route `/{n}` whose handler counts its run, passes `gate` (if any), sleeps `delay`, and
/// answers `"<n> run <k>"` (k: the run number), so two runs never produce the same body.
fn slow_route(calls: &Calls, delay: Duration, gate: Option<Gate>, layer: CacheLayer) -> Router {
    let calls = calls.clone();
    Router::new().route(
        "/{n}",
        get(move |Path(n): Path<String>| {
            let (calls, gate) = (calls.clone(), gate.clone());
            async move {
                let k = calls.inc();
                if let Some(g) = gate {
                    g.pass().await;
                }
                tokio::time::sleep(delay).await;
                format!("{n} run {k}")
            }
        })
        .route_layer(layer),
    )
}

/// Sends `n` concurrent `GET uri`, spread round-robin over `apps`, each in its own task, all
/// released together by a barrier. Returns each response with the time it took from the release.
async fn burst(apps: &[Router], n: usize, uri: &str) -> Vec<(Resp, Duration)> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = apps[i % apps.len()].clone();
            let barrier = barrier.clone();
            let uri = uri.to_owned();
            tokio::spawn(async move {
                let req = Request::get(uri).body(Body::empty()).unwrap();
                barrier.wait().await;
                let started = Instant::now();
                let res = app.oneshot(req).await.expect("router is infallible");
                let r = collect(res).await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    let all = async {
        for t in tasks {
            out.push(t.await.expect("request task panicked"));
        }
    };
    tokio::time::timeout(LIMIT, all).await.unwrap_or_else(|_| {
        panic!("a burst of {n} requests on {uri} did not complete in {LIMIT:?}")
    });
    out
}

/// `Cache-Status` values with how many responses carried each, for failure messages.
fn outcomes(rs: &[(Resp, Duration)]) -> Vec<(String, usize)> {
    let mut m = std::collections::BTreeMap::<String, usize>::new();
    for (r, _) in rs {
        *m.entry(format!("{} {:?}", r.cache_status(), r.text()))
            .or_default() += 1;
    }
    m.into_iter().collect()
}

fn count(rs: &[(Resp, Duration)], cache_status: &str) -> usize {
    rs.iter()
        .filter(|(r, _)| r.cache_status() == cache_status)
        .count()
}

/// Asserts every response is a 200 with one and the same body; returns that body.
fn one_body(rs: &[(Resp, Duration)]) -> String {
    let first = rs[0].0.text().to_owned();
    for (r, _) in rs {
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}: {:?}",
            r.cache_status(),
            r.body
        );
        assert_eq!(
            r.text(),
            first,
            "bodies differ: the handler ran more than once"
        );
    }
    first
}

/// The `ttl=N` of a `hit` `Cache-Status`, if the response is a hit.
fn hit_ttl(r: &Resp) -> Option<i64> {
    let rest = r
        .cache_status()
        .strip_prefix(&format!("{NAME}; hit; ttl="))?;
    rest.split(';').next()?.trim().parse().ok()
}

/// The decoded entry at `key` (relative to the cache's namespace), read through the store.
async fn entry(cache: &Cache, key: &str) -> Entry {
    let raw = cache
        .store()
        .read(cache.key_space(), key)
        .await
        .expect("store read")
        .value
        .unwrap_or_else(|| panic!("no entry at `{key}`"));
    Entry::decode(&raw).expect("entry decodes")
}

/// Sleeps until the wall clock (the one entries are stamped with) passes `t_ms`, plus `margin`.
/// Computed from the entry, not a guess: as short as the scenario allows.
async fn sleep_past(t_ms: u64, margin: Duration) {
    let wait = Duration::from_millis(t_ms.saturating_sub(now_ms())) + margin;
    tokio::time::sleep(wait).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Single-flight: 1,000 concurrent requests on one cold key, one handler run
// ---------------------------------------------------------------------------------------------

const BURST: usize = 1000;
const ITERATIONS: usize = 4;

async fn thousand_on_one_cold_key(b: Backend) {
    let cache = b.cache("burst", OP);
    let calls = Calls::default();
    let gate = Gate::new(std::slice::from_ref(&cache));
    let layer = CacheLayer::new(cache.clone())
        .key("burst:{n}")
        .ttl(Duration::from_secs(60));
    let app = slow_route(&calls, Duration::from_millis(50), Some(gate.clone()), layer);

    // A fresh key each iteration, so each is a cold-key stampede of its own. Even iterations
    // gate the handler so that all 1,000 requests miss; odd ones let the burst run as it comes,
    // with some requests arriving after the entry is stored (they hit): the window in which a
    // late miss could start a second fill.
    for i in 0..ITERATIONS {
        let gated = i % 2 == 0;
        let (calls_before, stats_before) = (calls.get(), cache.stats());
        if gated {
            gate.arm(BURST);
        } else {
            gate.open();
        }
        let rs = burst(std::slice::from_ref(&app), BURST, &format!("/k{i}")).await;

        let s = cache.stats();
        assert_eq!(
            calls.get() - calls_before,
            1,
            "iteration {i}: handler runs; outcomes {:?}; {s:?}",
            outcomes(&rs),
        );
        let body = one_body(&rs);
        assert_eq!(body, format!("k{i} run {}", calls.get()));
        let (stored, collapsed) = (count(&rs, STORED), count(&rs, COLLAPSED));
        let hits = rs.iter().filter(|(r, _)| r.is_hit()).count();
        assert_eq!(stored, 1, "iteration {i}: leaders");
        assert_eq!(
            collapsed + hits,
            BURST - 1,
            "iteration {i}: {:?}",
            outcomes(&rs)
        );
        if gated {
            assert_eq!(collapsed, BURST - 1, "iteration {i}: collapsed");
        }
        assert_eq!(s.coalesced - stats_before.coalesced, collapsed as u64);
        assert_eq!(s.misses - stats_before.misses, (1 + collapsed) as u64);
        assert_eq!(s.hits - stats_before.hits, hits as u64);
        assert_eq!(s.stores - stats_before.stores, 1);
        assert_eq!(s.store_errors, 0);
        eprintln!(
            "burst {i} ({}): 1 handler run, {collapsed} collapsed, {hits} hits",
            if gated { "gated" } else { "free" }
        );

        // And the entry is there for the next request.
        let r = get_req(&app, &format!("/k{i}")).await;
        assert_eq!(r.text(), body);
        assert!(hit_ttl(&r).is_some_and(|t| t > 0), "{}", r.cache_status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_thousand_concurrent_requests_on_one_cold_key_run_the_handler_once() {
    thousand_on_one_cold_key(Backend::valkey(VALKEY)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_thousand_concurrent_requests_on_one_cold_key_run_the_handler_once() {
    thousand_on_one_cold_key(Backend::cluster(CLUSTER)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_thousand_concurrent_requests_on_one_cold_key_run_the_handler_once() {
    thousand_on_one_cold_key(Backend::memory(MemoryStore::new())).await
}

// ---------------------------------------------------------------------------------------------
// 2. Fill lock across three instances sharing one Valkey
// ---------------------------------------------------------------------------------------------

const LEASE: Duration = Duration::from_secs(2);

/// Where the three instances of the fill-lock scenario keep their cache.
enum Shared {
    Server(ValkeyServer),
    Cluster(&'static ValkeyCluster, String),
}

impl Shared {
    /// A store of its own (own connections) for one instance.
    fn store(&self) -> ValkeyStore {
        match self {
            Shared::Server(server) => support::valkey_store(server, VALKEY),
            Shared::Cluster(..) => support::shared_cluster_store(Duration::from_secs(2)).1,
        }
    }

    fn namespace(&self) -> String {
        match self {
            Shared::Server(_) => "locked".to_owned(),
            Shared::Cluster(_, suffix) => format!("locked{suffix}"),
        }
    }

    /// The fill locks left in the namespace.
    async fn locks(&self) -> Vec<String> {
        match self {
            Shared::Server(server) => server.keys("locked|lock:*").await,
            Shared::Cluster(cluster, _) => {
                cluster.keys(&format!("{{{}}}|lock:*", self.namespace()))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_fill_lock_across_three_instances() {
    fill_lock_across_three_instances(Shared::Server(ValkeyServer::start())).await
}

/// The same on a Valkey Cluster: the lock lives in the namespace's slot beside the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fill_lock_across_three_instances() {
    let (cluster, _, suffix) = support::shared_cluster_store(Duration::from_secs(2));
    fill_lock_across_three_instances(Shared::Cluster(cluster, suffix)).await
}

async fn fill_lock_across_three_instances(shared: Shared) {
    let calls = Calls::default();
    // Three independent instances: their own store (connections), cache (flights, counters) and
    // router, sharing only the Valkey server and the namespace.
    let caches: Vec<Cache> = (0..3)
        .map(|_| {
            Cache::builder(shared.store())
                .namespace(shared.namespace())
                .timeout(Duration::from_secs(2))
                .build()
        })
        .collect();
    let gate = Gate::new(&caches);
    let apps: Vec<Router> = caches
        .iter()
        .map(|c| {
            let layer = CacheLayer::new(c.clone())
                .key("lk:{n}")
                .ttl(Duration::from_secs(60))
                .lock(LEASE);
            slow_route(
                &calls,
                Duration::from_millis(100),
                Some(gate.clone()),
                layer,
            )
        })
        .collect();
    let sum = |f: fn(&tower_valkey_cache::Stats) -> u64| -> u64 {
        caches.iter().map(|c| f(&c.stats())).sum()
    };

    // 300 concurrent cold requests, 100 per instance, the handler held until all 300 have
    // missed: exactly one runs it, 299 answer with its entry.
    gate.arm(300);
    let rs = burst(&apps, 300, "/cold").await;
    assert_eq!(
        calls.get(),
        1,
        "handler runs across three instances; {:?}",
        outcomes(&rs)
    );
    assert_eq!(one_body(&rs), "cold run 1");
    assert_eq!(count(&rs, STORED), 1);
    assert_eq!(count(&rs, COLLAPSED), 299);
    assert_eq!(sum(|s| s.coalesced), 299);
    // The two instances that lost the lock race waited on it, and none gave up waiting.
    assert_eq!(sum(|s| s.lock_waits), 2);
    assert_eq!(sum(|s| s.lock_timeouts), 0);
    assert_eq!(sum(|s| s.stores), 1);
    // The holder released the lock once its entry was stored.
    assert!(shared.locks().await.is_empty());

    // Again without holding the handler: requests that arrive late hit, and none starts a
    // second fill (a late miss, an instance taking the lock just released).
    gate.open();
    let before = sum(|s| s.coalesced);
    let rs = burst(&apps, 300, "/free").await;
    assert_eq!(calls.get(), 2, "handler runs; {:?}", outcomes(&rs));
    assert_eq!(one_body(&rs), "free run 2");
    assert_eq!(count(&rs, STORED), 1);
    let collapsed = count(&rs, COLLAPSED);
    let hits = rs.iter().filter(|(r, _)| r.is_hit()).count();
    assert_eq!(collapsed + hits, 299, "{:?}", outcomes(&rs));
    assert_eq!(sum(|s| s.coalesced) - before, collapsed as u64);
    assert!(shared.locks().await.is_empty());

    // The holder dies mid-fill: a lock taken and never released, with a short lease.
    let dead_lease = Duration::from_millis(300);
    let c0 = &caches[0];
    let taken = c0
        .store()
        .try_lock(c0.key_space(), "lk:dead", "dead-holder", dead_lease)
        .await
        .expect("try_lock");
    assert!(taken, "the lock on a cold key is free");
    let stats_before = sum(|s| s.lock_waits);
    let started = Instant::now();
    let rs = burst(&apps, 30, "/dead").await;
    let took = started.elapsed();
    for (r, _) in &rs {
        assert_eq!(r.status, StatusCode::OK, "{}", r.cache_status());
        assert!(r.text().starts_with("dead run "), "{:?}", r.body);
    }
    // Waiters keep trying the lock while they wait: once the dead holder's lease expires one of
    // them takes it and fills, and the others get its entry.
    let dead_calls = calls.get() - 2;
    assert_eq!(dead_calls, 1, "handler runs after the dead holder's lease");
    assert_eq!(
        sum(|s| s.lock_timeouts),
        0,
        "nobody waited out its own lease"
    );
    assert!(
        sum(|s| s.lock_waits) > stats_before,
        "requests waited on the dead lock"
    );
    // They waited for the dead holder (nobody ran the handler while its lease held), and no
    // longer than the waiters' own lease plus the handler, with slack for a loaded machine.
    assert!(took >= dead_lease, "took {took:?}");
    assert!(took < LEASE + Duration::from_secs(3), "took {took:?}");
    eprintln!(
        "dead holder: {} handler runs, {} lock timeouts, all 30 answered in {took:?}",
        dead_calls,
        sum(|s| s.lock_timeouts)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Stale-while-revalidate
// ---------------------------------------------------------------------------------------------

/// How long the handler takes in the SWR scenario: long enough that "answered without waiting
/// for it" stays distinguishable from "waited" on a loaded two-core machine running debug builds.
const SLOW: Duration = Duration::from_secs(1);

async fn stale_while_revalidate(b: Backend) {
    let cache = b.cache("swr", OP);
    let calls = Calls::default();
    let layer = CacheLayer::new(cache.clone())
        .key("swr:{n}")
        .ttl(Duration::from_millis(800))
        .stale_while_revalidate(Duration::from_secs(10));
    let app = slow_route(&calls, SLOW, None, layer);

    let r = get_req(&app, "/item").await;
    assert_eq!((r.text(), r.cache_status()), ("item run 1", STORED));
    let e = entry(&cache, "swr:item").await;
    sleep_past(e.fresh_until_ms, Duration::from_millis(20)).await;

    // Twenty concurrent requests in the stale window.
    let rs = burst(std::slice::from_ref(&app), 20, "/item").await;
    for (r, took) in &rs {
        assert_eq!((r.status, r.text()), (StatusCode::OK, "item run 1"));
        assert!(
            hit_ttl(r).is_some_and(|t| t < 0),
            "expected a stale hit, got `{}`",
            r.cache_status()
        );
        // None waited for the refresh: the handler takes 1 s, a stale hit is one store read
        // (a few ms). The bound leaves room for scheduling stalls on a loaded machine while still
        // failing if any request had waited on the handler.
        assert!(*took < SLOW * 3 / 4, "stale hit took {took:?}");
    }

    // One refresh reaches the handler and the entry becomes fresh with the new body.
    let r = eventually(LIMIT, "the refreshed entry", || async {
        let r = get_req(&app, "/item").await;
        assert_eq!(r.status, StatusCode::OK);
        (r.text() == "item run 2").then_some(r)
    })
    .await;
    assert!(
        hit_ttl(&r).is_some_and(|t| t > 0),
        "expected a fresh hit, got `{}`",
        r.cache_status()
    );
    assert_eq!(calls.get(), 2, "one initial fill and exactly one refresh");
    // The refresh counts itself just after storing the entry the poll above saw.
    let s = eventually(LIMIT, "the refresh to be counted", || async {
        let s = cache.stats();
        (s.refreshes > 0).then_some(s)
    })
    .await;
    assert_eq!(s.refreshes, 1);
    assert_eq!(s.refresh_failures, 0);
    assert!(s.stale_hits >= 20, "{s:?}");
    assert_eq!(s.misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_stale_while_revalidate_serves_stale_and_refreshes_once() {
    stale_while_revalidate(Backend::valkey(VALKEY)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stale_while_revalidate_serves_stale_and_refreshes_once() {
    stale_while_revalidate(Backend::memory(MemoryStore::new())).await
}

// ---------------------------------------------------------------------------------------------
// 4. Stale-if-error, with the upstream behind the handler mocked by wiremock
// ---------------------------------------------------------------------------------------------

const HANDLER_TIMEOUT: Duration = Duration::from_millis(200);
const SIE_WINDOW: Duration = Duration::from_secs(3);

/// A route `/item` whose handler forwards to `upstream` and answers with its status and body.
fn proxy_route(upstream: String, calls: &Calls, layer: CacheLayer) -> Router {
    let client = support::http_client();
    let calls = calls.clone();
    Router::new().route(
        "/item",
        get(move || {
            let (client, url, calls) = (client.clone(), upstream.clone(), calls.clone());
            async move {
                calls.inc();
                let res = support::http_get(&client, &url).await;
                let status = res.status();
                let body: Bytes = res
                    .into_body()
                    .collect()
                    .await
                    .expect("upstream body")
                    .to_bytes();
                (status, body)
            }
        })
        .route_layer(layer),
    )
}

async fn upstream_answers(mock: &MockServer, template: ResponseTemplate) {
    mock.reset().await;
    Mock::given(method("GET"))
        .and(path("/item"))
        .respond_with(template)
        .mount(mock)
        .await;
}

async fn upstream_requests(mock: &MockServer) -> usize {
    mock.received_requests().await.expect("recording").len()
}

async fn stale_if_error(b: Backend) {
    let cache = b.cache("sie", OP);
    let mock = MockServer::start().await;
    let calls = Calls::default();
    let layer = CacheLayer::new(cache.clone())
        .key("sie")
        .ttl(Duration::from_millis(500))
        .stale_if_error(SIE_WINDOW)
        .handler_timeout(HANDLER_TIMEOUT);
    let app = proxy_route(format!("{}/item", mock.uri()), &calls, layer);
    let stale_detail = |r: &Resp| {
        r.cache_status().starts_with(&format!("{NAME}; hit; ttl=-"))
            && r.cache_status().ends_with("; detail=stale-if-error")
    };

    upstream_answers(&mock, ResponseTemplate::new(200).set_body_string("v1")).await;
    let r = get_req(&app, "/item").await;
    assert_eq!(
        (r.status, r.text(), r.cache_status()),
        (StatusCode::OK, "v1", STORED)
    );
    let e = entry(&cache, "sie").await;
    assert_eq!(
        e.stale_until_ms - e.fresh_until_ms,
        SIE_WINDOW.as_millis() as u64
    );
    sleep_past(e.fresh_until_ms, Duration::from_millis(20)).await;

    // Inside the window, the upstream fails with 500: the stale body, with 200.
    upstream_answers(
        &mock,
        ResponseTemplate::new(500).set_body_string("upstream broke"),
    )
    .await;
    let r = get_req(&app, "/item").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "v1"));
    assert!(stale_detail(&r), "{}", r.cache_status());
    assert_eq!(upstream_requests(&mock).await, 1, "the upstream was asked");

    // Inside the window, the upstream hangs for 2 s: the stale body once the handler timeout
    // (200 ms) passes. Anything well under 2 s shows nobody waited for the upstream; 1.5 s leaves
    // room for a loaded machine.
    upstream_answers(
        &mock,
        ResponseTemplate::new(200)
            .set_body_string("too late")
            .set_delay(Duration::from_secs(2)),
    )
    .await;
    let started = Instant::now();
    let r = get_req(&app, "/item").await;
    let took = started.elapsed();
    assert_eq!((r.status, r.text()), (StatusCode::OK, "v1"));
    assert!(stale_detail(&r), "{}", r.cache_status());
    assert!(
        took >= HANDLER_TIMEOUT && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(upstream_requests(&mock).await, 1);
    assert_eq!(cache.stats().stale_if_error, 2);
    assert_eq!(calls.get(), 3);

    // Past the window (the store has dropped the entry with it): the real 500 passes through.
    upstream_answers(
        &mock,
        ResponseTemplate::new(500).set_body_string("upstream broke"),
    )
    .await;
    sleep_past(e.stale_until_ms, Duration::from_millis(50)).await;
    let r = get_req(&app, "/item").await;
    assert_eq!(
        (r.status, r.text(), r.cache_status()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "upstream broke",
            "tower-valkey-cache; fwd=uri-miss; detail=status"
        )
    );

    // An entry still in the store but stale for longer than the window does not stand in either.
    let now = now_ms();
    let old = Entry::new(
        200,
        Vec::new(),
        Bytes::from_static(b"too old"),
        now - 10_000,
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    cache
        .store()
        .write(
            cache.key_space(),
            Write {
                key: "sie",
                value: old.encode().unwrap(),
                ttl: Duration::from_secs(60),
                tags: &[],
                since: None,
            },
        )
        .await
        .expect("store write");
    let r = get_req(&app, "/item").await;
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke")
    );
    assert_eq!(cache.stats().stale_if_error, 2);
    assert_eq!(upstream_requests(&mock).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_stale_if_error_inside_and_outside_the_window() {
    stale_if_error(Backend::valkey(VALKEY)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stale_if_error_inside_and_outside_the_window() {
    stale_if_error(Backend::memory(MemoryStore::new())).await
}

// ---------------------------------------------------------------------------------------------
// 5. Cancellation: the leader's client goes away mid-fill
// ---------------------------------------------------------------------------------------------

const FOLLOWERS: usize = 20;

async fn leader_cancelled(b: Backend, lock: Option<Duration>) {
    let cache = b.cache("cancel", OP);
    let calls = Calls::default();
    let mut layer = CacheLayer::new(cache.clone())
        .key("c:{n}")
        .ttl(Duration::from_secs(60));
    if let Some(lease) = lock {
        layer = layer.lock(lease);
    }
    // The first run (the leader's) outlasts the test: it ends only by being cancelled. Later runs
    // take 100 ms.
    let app = {
        let calls = calls.clone();
        Router::new().route(
            "/{n}",
            get(move |Path(n): Path<String>| {
                let calls = calls.clone();
                async move {
                    let k = calls.inc();
                    let delay = if k == 1 {
                        LIMIT * 2
                    } else {
                        Duration::from_millis(100)
                    };
                    tokio::time::sleep(delay).await;
                    format!("{n} run {k}")
                }
            })
            .route_layer(layer),
        )
    };
    let call = |app: &Router| {
        let app = app.clone();
        tokio::spawn(async move {
            let res = app
                .oneshot(Request::get("/item").body(Body::empty()).unwrap())
                .await
                .expect("router is infallible");
            collect(res).await
        })
    };

    let leader = call(&app);
    eventually(LIMIT, "the leader's handler to start", || async {
        (calls.get() == 1).then_some(())
    })
    .await;
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| call(&app)).collect();
    // Every follower has looked up the key (a miss) and joined the flight (or, with the fill
    // lock, waits on it): the `waiting` gauge counts them.
    eventually(LIMIT, "the followers to join the flight", || async {
        (cache.stats().waiting == FOLLOWERS as u64).then_some(())
    })
    .await;
    assert_eq!(calls.get(), 1, "followers wait for the leader");

    // The leader's client disconnects: its request future is dropped mid-handler.
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());

    let all = async {
        let mut out = Vec::new();
        for f in followers {
            out.push(f.await.expect("follower task panicked"));
        }
        out
    };
    let rs = tokio::time::timeout(LIMIT, all)
        .await
        .expect("followers hang after the leader was cancelled");
    // One follower took over as leader and ran the handler; the others answered with its entry.
    assert_eq!(calls.get(), 2, "the cancelled run and one replacement");
    for r in &rs {
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, "item run 2"),
            "{}",
            r.cache_status()
        );
    }
    let collapsed = rs.iter().filter(|r| r.cache_status() == COLLAPSED).count();
    let stored = rs.iter().filter(|r| r.cache_status() == STORED).count();
    assert_eq!((stored, collapsed), (1, FOLLOWERS - 1));
    assert!(get_req(&app, "/item").await.is_hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cancelled_leader_does_not_strand_followers() {
    leader_cancelled(Backend::valkey(VALKEY), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cancelled_leader_holding_the_fill_lock_does_not_strand_followers() {
    leader_cancelled(Backend::valkey(VALKEY), Some(Duration::from_secs(1))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_cancelled_leader_holding_the_fill_lock_does_not_strand_followers() {
    leader_cancelled(Backend::cluster(CLUSTER), Some(Duration::from_secs(1))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cancelled_leader_does_not_strand_followers() {
    leader_cancelled(Backend::memory(MemoryStore::new()), None).await
}

// ---------------------------------------------------------------------------------------------
// 6. TTL jitter
// ---------------------------------------------------------------------------------------------

const JITTER_FILLS: usize = 200;
const JITTER_TTL: Duration = Duration::from_secs(100);

/// Fills `JITTER_FILLS` keys with TTL 100 s and jitter 0.5; returns each entry's freshness
/// lifetime in ms (from the entry itself), and how long the fills took.
async fn jitter_fills(cache: &Cache) -> (Vec<u64>, Duration) {
    let calls = Calls::default();
    let layer = CacheLayer::new(cache.clone())
        .key("j:{n}")
        .ttl(JITTER_TTL)
        .ttl_jitter(0.5);
    let app = slow_route(&calls, Duration::ZERO, None, layer);
    let started = Instant::now();
    for i in 0..JITTER_FILLS {
        let r = get_req(&app, &format!("/{i}")).await;
        assert_eq!(r.cache_status(), STORED);
    }
    let mut lifetimes = Vec::new();
    for i in 0..JITTER_FILLS {
        let e = entry(cache, &format!("j:{i}")).await;
        lifetimes.push(e.fresh_until_ms - e.stored_at_ms);
    }
    (lifetimes, started.elapsed())
}

/// Values spread over `[lo, hi]`: none outside, and both ends of the range reached (with 200
/// uniform draws, the chance that none falls in the bottom or top fifth is about 1e-19).
fn assert_spread(what: &str, ms: &[u64], lo: u64, hi: u64) {
    let (min, max) = (*ms.iter().min().unwrap(), *ms.iter().max().unwrap());
    assert!(
        min >= lo && max <= hi,
        "{what}: [{min}, {max}] not within [{lo}, {hi}]"
    );
    let fifth = (hi - lo) / 5;
    assert!(min < lo + fifth, "{what}: min {min}");
    assert!(max > hi - fifth, "{what}: max {max}");
    let mut distinct = ms.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > ms.len() / 2,
        "{what}: {} distinct",
        distinct.len()
    );
}

#[tokio::test]
async fn valkey_ttl_jitter_spreads_expiry() {
    let b = Backend::valkey(VALKEY);
    let cache = b.cache("jitter", OP);
    let (lifetimes, took) = jitter_fills(&cache).await;
    assert_spread("freshness lifetimes", &lifetimes, 50_000, 100_000);

    // What Valkey will actually expire: PTTL of every entry, read in one pipeline.
    let server = b.server().expect("a single Valkey server");
    let mut pipe = redis::pipe();
    for i in 0..JITTER_FILLS {
        pipe.cmd("PTTL")
            .arg(cache.key_space().entry(&format!("j:{i}")));
    }
    let client = redis::Client::open(server.url()).expect("valid url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to valkey");
    let pttls: Vec<i64> = tokio::time::timeout(LIMIT, pipe.query_async(&mut conn))
        .await
        .expect("PTTL pipeline timed out")
        .expect("PTTL pipeline");
    assert_eq!(pttls.len(), JITTER_FILLS);
    assert!(pttls.iter().all(|&t| t > 0), "every entry has a TTL");
    let pttls: Vec<u64> = pttls.into_iter().map(|t| t as u64).collect();
    // An entry's PTTL has run down by the time since it was written (at most `took` + a read).
    let slack = took.as_millis() as u64 + 1000;
    assert_spread("PTTLs", &pttls, 50_000 - slack, 100_000);
}

#[tokio::test]
async fn memory_ttl_jitter_spreads_expiry() {
    let cache = Backend::memory(MemoryStore::new()).cache("jitter", OP);
    let (lifetimes, _) = jitter_fills(&cache).await;
    assert_spread("freshness lifetimes", &lifetimes, 50_000, 100_000);
}

/// Fills `JITTER_FILLS` keys on a route that takes each response's lifetime from its own
/// `Cache-Control: max-age=100` (the route's TTL, 1,000 s, is not used), with jitter 0.5;
/// returns each entry's freshness lifetime in ms.
async fn jitter_fills_max_age(cache: &Cache) -> Vec<u64> {
    let layer = CacheLayer::new(cache.clone())
        .key("m:{n}")
        .ttl(Duration::from_secs(1000))
        .respect_cache_control(true)
        .ttl_jitter(0.5);
    let app = Router::new().route(
        "/{n}",
        get(|Path(n): Path<String>| async move { ([("cache-control", "max-age=100")], n) })
            .route_layer(layer),
    );
    for i in 0..JITTER_FILLS {
        let r = get_req(&app, &format!("/{i}")).await;
        assert_eq!(r.cache_status(), STORED);
    }
    let mut lifetimes = Vec::new();
    for i in 0..JITTER_FILLS {
        let e = entry(cache, &format!("m:{i}")).await;
        lifetimes.push(e.fresh_until_ms - e.stored_at_ms);
    }
    lifetimes
}

/// The jitter applies to every TTL source: the handler's own `max-age` too (it used to apply to
/// the route's TTL only, so 200 entries filled with `max-age=100` all lived exactly 100 s).
#[tokio::test]
async fn valkey_ttl_jitter_applies_to_the_handlers_max_age() {
    let b = Backend::valkey(VALKEY);
    let cache = b.cache("jitter-max-age", OP);
    let lifetimes = jitter_fills_max_age(&cache).await;
    assert_spread("max-age lifetimes", &lifetimes, 50_000, 100_000);
}

#[tokio::test]
async fn memory_ttl_jitter_applies_to_the_handlers_max_age() {
    let cache = Backend::memory(MemoryStore::new()).cache("jitter-max-age", OP);
    let lifetimes = jitter_fills_max_age(&cache).await;
    assert_spread("max-age lifetimes", &lifetimes, 50_000, 100_000);
}
