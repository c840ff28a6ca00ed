//! An invalidation that was started is finished (issue 16 item 1), on a real Valkey and on
//! `MemoryStore`: the request future of a successful write is dropped at **every await point of
//! its invalidation** (a client disconnect, a `TimeoutLayer`, a load balancer hanging up), and
//! every time the invalidation still lands in full (keys, tags and a pattern), or is queued
//! (`Cache::pending_invalidations`), and no read afterwards serves the pre-write version.
//!
//! Two ways to cut:
//!
//! - **at each store operation**, exactly: a store wrapper (`Stepper`) counts the operations
//!   (and the announcements on the invalidation bus) and holds the N-th until the test has
//!   dropped the request future, for N = 1, 2, ... until the write completes without reaching N.
//!   Deterministic, however loaded the machine.
//! - **by time**, as a `TimeoutLayer` would: the write through `tokio::time::timeout` with a
//!   limit stepping up from 0 ms by 1 ms, over a Valkey slowed by `FaultyStore::slow`, until a
//!   write completes within it.
//!
//! Both for `InvalidateLayer` on a route and for `Cache::invalidate` called directly.

use crate::support;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::Router;
use http::Request;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use support::{get as get_req, Backend, StoreTimeouts};
use tower::ServiceExt;
use tower_valkey_cache::store::bus::{BusSink, Subscription};
use tower_valkey_cache::store::{
    InvalidationBus, KeySpace, Lookup, LookupMany, RankedStore, Store, StoreFuture, Target, Write,
    Written,
};
use tower_valkey_cache::testing::FaultyStore;
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, Invalidation, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);
/// How long a cut invalidation gets to land before the cut point counts as a violation: far
/// above what it needs (one round trip per part).
const LAND: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The stepper: holds the N-th store operation until released
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Step {
    count: AtomicUsize,
    /// The operation to hold (1-based); 0: none.
    target: AtomicUsize,
    reached: tokio::sync::Notify,
    open: tokio::sync::watch::Sender<bool>,
}

impl Default for Step {
    fn default() -> Self {
        Self {
            count: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            reached: tokio::sync::Notify::new(),
            open: tokio::sync::watch::channel(true).0,
        }
    }
}

impl Step {
    /// Holds the `n`-th operation from now.
    fn arm(&self, n: usize) {
        self.open.send_replace(false);
        self.count.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.target.store(0, Ordering::SeqCst);
        self.open.send_replace(true);
    }

    async fn enter(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
    }
}

/// A store whose every operation (and every announcement on its bus) passes through a [`Step`].
#[derive(Debug)]
struct Stepper {
    inner: Arc<dyn Store>,
    step: Arc<Step>,
}

/// The operation `$call`, created (a `MemoryStore` acts when called) only once the step lets
/// it through.
macro_rules! stepped {
    ($self:ident, $call:expr) => {{
        Box::pin(async move {
            $self.step.enter().await;
            $call.await
        })
    }};
}

impl Store for Stepper {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        stepped!(self, self.inner.read(space, key))
    }
    fn write<'a>(&'a self, space: &'a KeySpace, write: Write<'a>) -> StoreFuture<'a, Written> {
        stepped!(self, self.inner.write(space, write))
    }
    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        stepped!(self, self.inner.read_many(space, keys))
    }
    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        stepped!(self, self.inner.write_many(space, writes))
    }
    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        stepped!(self, self.inner.invalidate(space, target))
    }
    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        stepped!(self, self.inner.try_lock(space, key, token, lease))
    }
    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        stepped!(self, self.inner.unlock(space, key, token))
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        stepped!(self, self.inner.ping())
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn needs_hash_tags(&self) -> bool {
        self.inner.needs_hash_tags()
    }
    fn supports_shards(&self) -> bool {
        self.inner.supports_shards()
    }
    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        self.inner.ranked()
    }
    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        let inner = self.inner.bus()?;
        Some(Arc::new(SteppedBus {
            inner,
            step: self.step.clone(),
        }))
    }
}

#[derive(Debug)]
struct SteppedBus {
    inner: Arc<dyn InvalidationBus>,
    step: Arc<Step>,
}

impl InvalidationBus for SteppedBus {
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, ()> {
        stepped!(self, self.inner.publish(channel, payload))
    }
    fn subscribe(&self, channel: &str, sink: Weak<dyn BusSink>) -> Subscription {
        self.inner.subscribe(channel, sink)
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
}

// ---------------------------------------------------------------------------------------------
// The application: three entries a write makes wrong, one per invalidation kind
// ---------------------------------------------------------------------------------------------

/// Each user's version, bumped by every successful write.
#[derive(Clone, Default)]
struct Db(Arc<Mutex<HashMap<String, u64>>>);

impl Db {
    fn version(&self, id: &str) -> u64 {
        *self.0.lock().unwrap().get(id).unwrap_or(&0)
    }
    fn bump(&self, id: &str) {
        *self.0.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    }
}

/// `GET /users/{id}` (key `user:{id}`), `GET /profiles/{id}` (key `profile:{id}`, tag
/// `user:{id}`), `GET /users/{id}/posts` (key `user_{id}_posts:1`), and `PUT /users/{id}`
/// invalidating the first by key, the second by tag and the third by pattern.
fn app(cache: &Cache, db: &Db) -> Router<()> {
    let read = |cache: &Cache, key: &str, tags: &[&str]| {
        CacheLayer::new(cache.clone())
            .key(key)
            .tags(tags.iter().copied())
            .ttl(Duration::from_secs(300))
    };
    let body = |what: &'static str| {
        move |State(db): State<Db>, Path(id): Path<String>| async move {
            format!("{what} {id} v{}", db.version(&id))
        }
    };
    Router::new()
        .route(
            "/users/{id}",
            get(body("user"))
                .route_layer(read(cache, "user:{id}", &[]))
                .merge(
                    put(|State(db): State<Db>, Path(id): Path<String>| async move {
                        db.bump(&id);
                        "written"
                    })
                    .route_layer(
                        InvalidateLayer::new(cache.clone())
                            .keys(["user:{id}"])
                            .tags(["user:{id}"])
                            .patterns(["user_{id}_posts:*"]),
                    ),
                ),
        )
        .route(
            "/profiles/{id}",
            get(body("profile")).route_layer(read(cache, "profile:{id}", &["user:{id}"])),
        )
        .route(
            "/users/{id}/posts",
            get(body("posts")).route_layer(read(cache, "user_{id}_posts:1", &[])),
        )
        .with_state(db.clone())
}

const READS: [&str; 3] = ["/users/{id}", "/profiles/{id}", "/users/{id}/posts"];

/// Fills the three entries of user `id` and checks they are hits.
async fn seed(app: &Router, id: usize) {
    for r in READS {
        let uri = r.replace("{id}", &id.to_string());
        get_req(app, &uri).await;
        assert!(get_req(app, &uri).await.is_hit(), "{uri} is cached");
    }
}

/// The reads of user `id` that still serve the pre-write version (v0) once the invalidation
/// had `LAND` to land (or be queued: then every read is served by the handler).
async fn stale_reads(app: &Router, cache: &Cache, id: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + LAND;
    loop {
        let mut stale = Vec::new();
        for r in READS {
            let uri = r.replace("{id}", &id.to_string());
            let res = get_req(app, &uri).await;
            if res.text().ends_with(" v0") {
                stale.push(format!("{uri}: {} ({})", res.text(), res.cache_status()));
            }
        }
        if stale.is_empty() || tokio::time::Instant::now() >= deadline {
            if !stale.is_empty() {
                stale.push(format!("pending: {}", cache.pending_invalidations()));
            }
            return stale;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Write_ = Box<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The write of user `id` through the route.
fn through_route(app: &Router) -> Write_ {
    let app = app.clone();
    Box::new(move |id| {
        let app = app.clone();
        Box::pin(async move {
            let req = Request::put(format!("/users/{id}"))
                .body(Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.expect("infallible");
            assert!(res.status().is_success());
        })
    })
}

/// The write of user `id` with `Cache::invalidate` called directly after the database write.
fn through_invalidate(cache: &Cache, db: &Db) -> Write_ {
    let (cache, db) = (cache.clone(), db.clone());
    Box::new(move |id| {
        let (cache, db) = (cache.clone(), db.clone());
        Box::pin(async move {
            db.bump(&id.to_string());
            let inv = Invalidation::new()
                .key(format!("user:{id}"))
                .tag(format!("user:{id}"))
                .pattern(format!("user_{id}_posts:*"));
            let _ = cache.invalidate(inv).await;
        })
    })
}

/// Cuts the write at its 1st, 2nd, ... store operation until it completes uncut; returns how
/// many cut points there were and the violations (reads still served the old version).
async fn cut_at_every_operation(b: &Backend, ns: &str, direct: bool) -> (usize, Vec<String>) {
    let mut violations = Vec::new();
    for n in 1.. {
        // A cache of its own per cut point: what is left of the previous write (its remaining
        // operations, finishing in the background) cannot shift this one's count.
        let step = Arc::new(Step::default());
        let store = Stepper {
            inner: b.store(),
            step: step.clone(),
        };
        let cache = Cache::builder(store)
            .namespace(b.namespace(&format!("{ns}-{n}")))
            .timeout(OP)
            .bulk_timeout(OP)
            .publish_invalidations(true)
            .build();
        let db = Db::default();
        let app = app(&cache, &db);
        let write = match direct {
            true => through_invalidate(&cache, &db),
            false => through_route(&app),
        };
        let id = 1;
        seed(&app, id).await;
        step.arm(n);
        let mut task = tokio::spawn(write(id));
        let cut = tokio::select! {
            _ = step.reached.notified() => {
                // The request future is dropped while its n-th operation is in flight.
                task.abort();
                let _ = (&mut task).await;
                true
            }
            r = &mut task => {
                r.expect("write task");
                false
            }
        };
        step.disarm();
        let stale = stale_reads(&app, &cache, id).await;
        if !stale.is_empty() {
            violations.push(format!("cut at operation {n}: {stale:?}"));
        }
        if !cut {
            return (n - 1, violations);
        }
        assert!(n < 50, "the write never completes");
    }
    unreachable!()
}

/// Cuts the write by a timeout of 0, 1, 2, ... ms over a store slowed by `delay` per operation,
/// until a write completes within its limit.
async fn cut_by_timeouts(b: &Backend, ns: &str, delay: Duration) -> (usize, Vec<String>) {
    let store = FaultyStore::new(b.store());
    let faults = store.faults();
    let cache = Cache::builder(store)
        .namespace(b.namespace(ns))
        .timeout(OP)
        .bulk_timeout(OP)
        .publish_invalidations(true)
        .build();
    let db = Db::default();
    let app = app(&cache, &db);
    let write = through_route(&app);
    let mut violations = Vec::new();
    for ms in 0u64.. {
        let id = ms as usize + 1;
        seed(&app, id).await;
        faults.slow(delay);
        let done = tokio::time::timeout(Duration::from_millis(ms), write(id))
            .await
            .is_ok();
        faults.slow(Duration::ZERO);
        let stale = stale_reads(&app, &cache, id).await;
        if !stale.is_empty() {
            violations.push(format!("timeout {ms} ms: {stale:?}"));
        }
        if done {
            return (ms as usize, violations);
        }
        assert!(ms < 2_000, "the write never completes");
    }
    unreachable!()
}

async fn every_operation(b: Backend) {
    for direct in [false, true] {
        let ns = if direct { "cut-direct" } else { "cut-route" };
        let (cuts, violations) = cut_at_every_operation(&b, ns, direct).await;
        // Keys, tags, pattern, and an announcement after each (published: they are announced).
        assert!(
            cuts >= 3,
            "{ns}: the write has at least 3 store operations, cut {cuts}"
        );
        assert!(
            violations.is_empty(),
            "{ns}: {} of {cuts} cut points left the pre-write version served:\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
}

async fn every_timeout(b: Backend) {
    let (cuts, violations) = cut_by_timeouts(&b, "cut-timeout", Duration::from_millis(3)).await;
    assert!(
        cuts >= 3,
        "the slowed write takes a few ms, cut {cuts} times"
    );
    assert!(
        violations.is_empty(),
        "{} of {cuts} timeouts left the pre-write version served:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

mod valkey {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_dropped_at_any_store_operation_still_invalidates_everything() {
        every_operation(Backend::valkey(VALKEY)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_cut_by_any_timeout_still_invalidates_everything() {
        every_timeout(Backend::valkey(VALKEY)).await
    }
}

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_dropped_at_any_store_operation_still_invalidates_everything() {
        every_operation(Backend::memory(MemoryStore::new())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_cut_by_any_timeout_still_invalidates_everything() {
        every_timeout(Backend::memory(MemoryStore::new())).await
    }
}
