//! Test support for applications: a store that fails on demand, and assertion helpers.
//!
//! A cache is only as good as its fallback path: when Valkey is down, slow or holds garbage, the
//! application must still answer. This module lets an application's own tests drive those paths
//! without killing servers:
//!
//! - [`FaultyStore`] wraps any [`Store`] and, through a cloneable [`Faults`] handle, takes the
//!   store down, slows it by a given delay, fails chosen [operations](Op) (once or until healed),
//!   or corrupts what reads return;
//! - [`CacheStatus`] parses the `Cache-Status` response header (RFC 9211) that
//!   [`CacheLayer`](crate::CacheLayer) sets;
//! - [`StatsDelta`] is the difference between two [`Cache::stats`] snapshots;
//! - [`conformance`] checks a store of your own (or a wrapper of one) against the [`Store`]
//!   contract, with the checks the crate's own stores pass.
//!
//! Enable it in `[dev-dependencies]`:
//!
//! ```toml
//! [dev-dependencies]
//! tower-valkey-cache = { version = "0.1", features = ["testing"] }
//! ```
//!
//! # Example: the route still answers when the cache is down
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use std::time::Duration;
//! use tower::ServiceExt; // oneshot
//! use tower_valkey_cache::testing::{CacheStatus, FaultyStore, StatsDelta};
//! use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let store = FaultyStore::new(MemoryStore::new());
//! let faults = store.faults(); // keep a handle: the cache owns the store
//! let cache = Cache::builder(store).namespace("app").build();
//! let app = Router::new().route(
//!     "/price",
//!     get(|| async { "42" }).route_layer(CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60))),
//! );
//! let get_price = || app.clone().oneshot(Request::get("/price").body(Body::empty()).unwrap());
//!
//! // Healthy: the first request fills the cache, the second is a hit.
//! get_price().await.unwrap();
//! let res = get_price().await.unwrap();
//! assert!(CacheStatus::from_response(&res).unwrap().is_hit());
//!
//! // Valkey goes away: the handler answers, nothing fails.
//! faults.down();
//! let before = cache.stats();
//! let res = get_price().await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let status = CacheStatus::from_response(&res).unwrap();
//! assert_eq!(status.fwd.as_deref(), Some("miss"));
//! assert_eq!(status.detail.as_deref(), Some("store-unavailable"));
//! assert!(status.is_store_unavailable());
//! let d = StatsDelta::since(&before, &cache.stats());
//! assert_eq!((d.store_unavailable, d.hits), (1, 0));
//! # });
//! ```
//!
//! The store's faults apply to every operation the cache sends it, so the circuit breaker,
//! timeouts, the invalidation retry queue and stale-if-error behave as they would against a real
//! failing server. (An [L1 tier](crate::l1) answers its hits without asking the store, as it
//! would in production, so faults show on L1 misses only.) A [`FaultyStore`] keeps every
//! capability of the store it wraps: [bounded namespaces](crate::eviction) (with the same
//! faults) and the L1 invalidation bus.

pub mod conformance;

use crate::store::ranked::{RankedSpace, Spec};
use crate::store::{
    InvalidationBus, KeySpace, Lookup, LookupMany, RankedStore, Store, StoreError, StoreErrorKind,
    StoreFuture, Target, Write, Written,
};
use crate::{Cache, Stats};
use bytes::Bytes;
use http::HeaderValue;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A store operation, as [`Faults`] selects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Store::read`]: every lookup of `CacheLayer` and `get_or_set`.
    Read,
    /// [`Store::read_many`]: batch lookups (`get_many`, `get_or_set_many`).
    ReadMany,
    /// [`Store::write`]: storing a fill.
    Write,
    /// [`Store::write_many`]: batch writes (`set_many`, warming).
    WriteMany,
    /// [`Store::invalidate`]: keys, tags and patterns.
    Invalidate,
    /// [`Store::try_lock`]: taking a fill lock (`CacheLayer::lock`).
    Lock,
    /// [`Store::unlock`]: releasing a fill lock.
    Unlock,
    /// [`Store::ping`].
    Ping,
    /// [`Store::claim_layout`]: a cache's check of its namespace's key layout (before its first
    /// operation, then periodically).
    Layout,
}

impl Op {
    /// Every operation.
    pub const ALL: &'static [Op] = &[
        Op::Read,
        Op::ReadMany,
        Op::Write,
        Op::WriteMany,
        Op::Invalidate,
        Op::Lock,
        Op::Unlock,
        Op::Ping,
        Op::Layout,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

const OPS: usize = Op::ALL.len();

/// The bytes corrupted reads return by default: not an [entry](crate::entry), not JSON.
pub const GARBAGE: &[u8] = b"\x00\xffnot a cache entry\xfe";

#[derive(Debug, Default)]
struct State {
    down: bool,
    delay: Duration,
    fail: [Option<StoreErrorKind>; OPS],
    fail_next: [u32; OPS],
    corrupt: Option<Bytes>,
    calls: [u64; OPS],
    injected: u64,
}

/// The switches of a [`FaultyStore`]. Cheap to clone; every clone controls the same store.
///
/// Faults combine: a slow store that is also down waits, then fails. Changes apply to operations
/// that start after them.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the store down: every operation fails with [`StoreErrorKind::Unavailable`], as a
    /// refused connection would.
    pub fn down(&self) {
        self.lock().down = true;
    }

    /// Brings the store back up (undoes [`down`](Self::down) only).
    pub fn up(&self) {
        self.lock().down = false;
    }

    /// Whether the store is [down](Self::down).
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Delays every operation by `delay` before it runs (or fails). Past the cache's operation
    /// timeout ([`CacheBuilder::timeout`](crate::CacheBuilder::timeout)) the cache gives up on
    /// it: the request is served by the handler. `Duration::ZERO` makes the store fast again.
    pub fn slow(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Fails every `op` with a [`StoreErrorKind::Server`] error until [`heal`](Self::heal)ed.
    pub fn fail(&self, op: Op) {
        self.fail_with(op, StoreErrorKind::Server);
    }

    /// Fails every `op` with an error of `kind` until [`heal`](Self::heal)ed.
    pub fn fail_with(&self, op: Op, kind: StoreErrorKind) {
        self.lock().fail[op.index()] = Some(kind);
    }

    /// Fails the next `n` calls of `op` (a transient fault), then lets them through again.
    pub fn fail_next(&self, op: Op, n: u32) {
        self.lock().fail_next[op.index()] = n;
    }

    /// Stops failing `op` (set by [`fail`](Self::fail), [`fail_with`](Self::fail_with) or
    /// [`fail_next`](Self::fail_next)).
    pub fn heal(&self, op: Op) {
        let mut s = self.lock();
        s.fail[op.index()] = None;
        s.fail_next[op.index()] = 0;
    }

    /// Whether reads return [`GARBAGE`] instead of each value they find (missing values stay
    /// missing), as if something else had written over the entries. The cache treats such values
    /// as misses (`Cache-Status: ...; detail=undecodable-entry`) and overwrites them.
    pub fn corrupt_reads(&self, enable: bool) {
        self.lock().corrupt = enable.then(|| Bytes::from_static(GARBAGE));
    }

    /// Like [`corrupt_reads`](Self::corrupt_reads), with the bytes to return.
    pub fn corrupt_reads_with(&self, value: impl Into<Bytes>) {
        self.lock().corrupt = Some(value.into());
    }

    /// Clears every fault (the call counts stay).
    pub fn reset(&self) {
        let mut s = self.lock();
        let (calls, injected) = (s.calls, s.injected);
        *s = State {
            calls,
            injected,
            ..State::default()
        };
    }

    /// How many times the cache called `op` (failed calls included). Calls the circuit breaker
    /// skipped never reach the store, so they are not counted.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls[op.index()]
    }

    /// How many calls failed because of an injected fault.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Counts the call and decides its fate: the delay to wait, then the error to return (if
    /// any) and whether to corrupt what it reads.
    fn enter(&self, op: Op) -> (Duration, Option<StoreError>, Option<Bytes>) {
        let mut s = self.lock();
        let i = op.index();
        s.calls[i] += 1;
        let err = if s.down {
            Some(StoreError::new(
                StoreErrorKind::Unavailable,
                "FaultyStore: store is down",
            ))
        } else if s.fail_next[i] > 0 {
            s.fail_next[i] -= 1;
            Some(StoreError::new(
                StoreErrorKind::Server,
                format!("FaultyStore: injected transient {op:?} failure"),
            ))
        } else {
            s.fail[i]
                .map(|kind| StoreError::new(kind, format!("FaultyStore: injected {op:?} failure")))
        };
        if err.is_some() {
            s.injected += 1;
        }
        (s.delay, err, s.corrupt.clone())
    }

    async fn before(&self, op: Op) -> Result<Option<Bytes>, StoreError> {
        let (delay, err, corrupt) = self.enter(op);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match err {
            Some(e) => Err(e),
            None => Ok(corrupt),
        }
    }
}

/// A [`Store`] that injects faults on demand, controlled through its [`Faults`] handle.
///
/// Without faults it behaves exactly as the store it wraps (and reports the same
/// [`name`](Store::name) to metrics). See the [module docs](self) for an example.
#[derive(Debug)]
pub struct FaultyStore<S: Store> {
    inner: S,
    faults: Faults,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, with no faults.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Faults::default(),
        }
    }

    /// The handle that switches faults on and off (take one before giving the store to a
    /// [`Cache`]).
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store + Clone> Clone for FaultyStore<S> {
    /// A clone shares the wrapped store's data (if the store is shared, as the built-in ones
    /// are) and the same [`Faults`].
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        Box::pin(async move {
            let corrupt = self.faults.before(Op::Read).await?;
            let mut lookup = self.inner.read(space, key).await?;
            if let (Some(garbage), Some(v)) = (corrupt, lookup.value.as_mut()) {
                *v = garbage;
            }
            Ok(lookup)
        })
    }

    fn write<'a>(&'a self, space: &'a KeySpace, write: Write<'a>) -> StoreFuture<'a, Written> {
        Box::pin(async move {
            self.faults.before(Op::Write).await?;
            self.inner.write(space, write).await
        })
    }

    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        Box::pin(async move {
            let corrupt = self.faults.before(Op::ReadMany).await?;
            let mut lookup = self.inner.read_many(space, keys).await?;
            if let Some(garbage) = corrupt {
                for v in lookup.values.iter_mut().flatten() {
                    *v = garbage.clone();
                }
            }
            Ok(lookup)
        })
    }

    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        Box::pin(async move {
            self.faults.before(Op::WriteMany).await?;
            self.inner.write_many(space, writes).await
        })
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            self.faults.before(Op::Invalidate).await?;
            self.inner.invalidate(space, target).await
        })
    }

    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.faults.before(Op::Lock).await?;
            self.inner.try_lock(space, key, token, lease).await
        })
    }

    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.faults.before(Op::Unlock).await?;
            self.inner.unlock(space, key, token).await
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.faults.before(Op::Ping).await?;
            self.inner.ping().await
        })
    }

    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            self.faults.before(Op::Layout).await?;
            self.inner.claim_layout(key, layout).await
        })
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

    /// The wrapped store's bus: an [L1 tier](crate::l1) over a `FaultyStore` announces and hears
    /// invalidations as it would over the wrapped store (faults do not apply to announcements).
    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        self.inner.bus()
    }

    /// The wrapped store's bounded namespaces, with the same faults: reads ([`Op::Read`]: route
    /// reads, `get`, `len`, `keys`, corrupted like any read), writes ([`Op::Write`]: `set`,
    /// ranking a stored route entry) and removals ([`Op::Invalidate`]: `delete`, `clear`).
    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        let inner = self.inner.ranked()?;
        Some(Arc::new(FaultyRanked {
            inner,
            faults: self.faults.clone(),
        }))
    }
}

/// The bounded-namespace capability of a [`FaultyStore`], with its faults.
#[derive(Debug)]
struct FaultyRanked {
    inner: Arc<dyn RankedStore>,
    faults: Faults,
}

impl RankedStore for FaultyRanked {
    fn get<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let corrupt = self.faults.before(Op::Read).await?;
            let v = self.inner.get(space, key, spec).await?;
            Ok(match (corrupt, v) {
                (Some(garbage), Some(_)) => Some(garbage),
                (_, v) => v,
            })
        })
    }

    fn set<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.faults.before(Op::Write).await?;
            self.inner.set(space, key, value, ttl, spec).await
        })
    }

    fn delete<'a>(&'a self, space: &'a RankedSpace, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.faults.before(Op::Invalidate).await?;
            self.inner.delete(space, key).await
        })
    }

    fn len<'a>(&'a self, space: &'a RankedSpace) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            self.faults.before(Op::Read).await?;
            self.inner.len(space).await
        })
    }

    fn keys<'a>(&'a self, space: &'a RankedSpace, spec: Spec) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.faults.before(Op::Read).await?;
            self.inner.keys(space, spec).await
        })
    }

    fn clear<'a>(&'a self, space: &'a RankedSpace) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            self.faults.before(Op::Invalidate).await?;
            self.inner.clear(space).await
        })
    }

    fn route_read<'a>(
        &'a self,
        keys: &'a KeySpace,
        space: &'a RankedSpace,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Lookup> {
        Box::pin(async move {
            let corrupt = self.faults.before(Op::Read).await?;
            let mut lookup = self.inner.route_read(keys, space, key, spec).await?;
            if let (Some(garbage), Some(v)) = (corrupt, lookup.value.as_mut()) {
                *v = garbage;
            }
            Ok(lookup)
        })
    }

    fn route_record<'a>(
        &'a self,
        space: &'a RankedSpace,
        key: &'a str,
        ttl: Duration,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.faults.before(Op::Write).await?;
            self.inner.route_record(space, key, ttl, spec).await
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Status
// ---------------------------------------------------------------------------------------------

/// One cache's entry in a `Cache-Status` header (RFC 9211), as [`CacheLayer`](crate::CacheLayer)
/// writes it:
///
/// | header | fields |
/// |---|---|
/// | `tower-valkey-cache; hit; ttl=42` | `hit`, `ttl: Some(42)` (fresh) |
/// | `tower-valkey-cache; hit; ttl=-3` | `hit`, `ttl: Some(-3)` (stale) |
/// | `tower-valkey-cache; fwd=uri-miss; stored` | `fwd: "uri-miss"`, `stored` |
/// | `tower-valkey-cache; fwd=uri-miss; collapsed` | `fwd: "uri-miss"`, `collapsed` |
/// | `tower-valkey-cache; fwd=uri-miss; detail=cache-control` | a miss not stored, and why |
/// | `tower-valkey-cache; fwd=bypass; detail=authorization` | not looked up, and why |
/// | `tower-valkey-cache; fwd=method` | method not cached |
/// | `tower-valkey-cache; fwd=miss; detail=store-unavailable` | the store failed |
///
/// ```
/// use http::HeaderValue;
/// use tower_valkey_cache::testing::CacheStatus;
///
/// let s = CacheStatus::parse(&HeaderValue::from_static("tower-valkey-cache; hit; ttl=42"));
/// assert!(s.hit && s.is_hit());
/// assert_eq!(s.ttl, Some(42));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// The cache's name (the list member's token or string).
    pub cache: String,
    /// Served from the cache (`hit`).
    pub hit: bool,
    /// Freshness left in seconds (`ttl`); zero or negative for a stale entry.
    pub ttl: Option<i64>,
    /// Why the request went to the handler (`fwd`): `uri-miss`, `miss`, `bypass`, `method`...
    pub fwd: Option<String>,
    /// The handler's response was stored (`stored`).
    pub stored: bool,
    /// Answered with another request's fill (`collapsed`).
    pub collapsed: bool,
    /// More about the outcome (`detail`): `store-unavailable`, `authorization`,
    /// `cache-control`, `undecodable-entry`, `stale-if-error`...
    pub detail: Option<String>,
}

impl CacheStatus {
    /// Parses a `Cache-Status` value. With several caches listed, the last one (closest to the
    /// client) is returned; see [`parse_all`](Self::parse_all). Unknown parameters are ignored;
    /// a value that does not parse gives an empty `CacheStatus` (nothing set). Never panics.
    pub fn parse(value: &HeaderValue) -> Self {
        Self::parse_all(value).pop().unwrap_or_default()
    }

    /// Parses every cache listed in a `Cache-Status` value, in order (the first is closest to
    /// the origin).
    pub fn parse_all(value: &HeaderValue) -> Vec<Self> {
        parse_list(value.as_bytes())
    }

    /// Parses a `Cache-Status` value given as text ([`parse`](Self::parse)).
    pub fn parse_str(value: &str) -> Self {
        parse_list(value.as_bytes()).pop().unwrap_or_default()
    }

    /// The `Cache-Status` of a response (the last one, if several), or `None` if it has none.
    pub fn from_response<B>(res: &http::Response<B>) -> Option<Self> {
        Self::from_headers(res.headers())
    }

    /// The `Cache-Status` in a header map (the last one listed), or `None` if there is none.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let mut all = Vec::new();
        for v in headers.get_all("cache-status") {
            all.extend(Self::parse_all(v));
        }
        all.pop()
    }

    /// A fresh hit (`hit` with `ttl` above zero, or no `ttl`).
    pub fn is_hit(&self) -> bool {
        self.hit && self.ttl.is_none_or(|t| t > 0)
    }

    /// A stale hit (`hit` with `ttl` zero or below): stale-while-revalidate or stale-if-error.
    pub fn is_stale(&self) -> bool {
        self.hit && self.ttl.is_some_and(|t| t <= 0)
    }

    /// Looked up and not found (or not usable): the handler answered (`fwd=uri-miss`, not
    /// `collapsed`).
    pub fn is_miss(&self) -> bool {
        !self.hit && !self.collapsed && self.fwd.as_deref() == Some("uri-miss")
    }

    /// Skipped the cache (`fwd=bypass` or `fwd=method`).
    pub fn is_bypass(&self) -> bool {
        matches!(self.fwd.as_deref(), Some("bypass" | "method"))
    }

    /// The store failed or was skipped by the circuit breaker; the handler answered
    /// (`fwd=miss; detail=store-unavailable`).
    pub fn is_store_unavailable(&self) -> bool {
        self.fwd.as_deref() == Some("miss") && self.detail.as_deref() == Some("store-unavailable")
    }
}

/// A tiny RFC 8941 list reader, lenient: what does not parse is skipped.
fn parse_list(input: &[u8]) -> Vec<CacheStatus> {
    let mut out = Vec::new();
    let mut p = Cursor { s: input, i: 0 };
    loop {
        p.skip_ws();
        if p.done() {
            break;
        }
        let mut status = CacheStatus {
            cache: p.bare_item(),
            ..CacheStatus::default()
        };
        // Parameters: `; key[=value]`.
        loop {
            p.skip_ows();
            if p.peek() != Some(b';') {
                break;
            }
            p.i += 1;
            p.skip_ows();
            let key = p.key();
            let value = if p.peek() == Some(b'=') {
                p.i += 1;
                Some(p.bare_item())
            } else {
                None
            };
            match (key.as_str(), value) {
                ("hit", None) => status.hit = true,
                ("hit", Some(v)) => status.hit = v == "?1",
                ("stored", None) => status.stored = true,
                ("stored", Some(v)) => status.stored = v == "?1",
                ("collapsed", None) => status.collapsed = true,
                ("collapsed", Some(v)) => status.collapsed = v == "?1",
                ("ttl", Some(v)) => status.ttl = v.parse().ok(),
                ("fwd", Some(v)) => status.fwd = Some(v),
                ("detail", Some(v)) => status.detail = Some(v),
                _ => {}
            }
        }
        // Anything else up to the next member is malformed: skip it.
        while let Some(c) = p.peek() {
            p.i += 1;
            if c == b',' {
                break;
            }
            if c == b'"' {
                p.i -= 1;
                let _ = p.bare_item();
            }
        }
        out.push(status);
    }
    out
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> String {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"_-.*".contains(&c)) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).to_ascii_lowercase()
    }
    /// A token, number, boolean or (unescaped) quoted string, as text.
    fn bare_item(&mut self) -> String {
        if self.peek() == Some(b'"') {
            self.i += 1;
            let mut v = Vec::new();
            while let Some(c) = self.peek() {
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        if let Some(e) = self.peek() {
                            self.i += 1;
                            v.push(e);
                        }
                    }
                    c => v.push(c),
                }
            }
            return String::from_utf8_lossy(&v).into_owned();
        }
        let start = self.i;
        while matches!(self.peek(), Some(c) if !matches!(c, b';' | b',' | b' ' | b'\t' | b'=' | b'"'))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Stats deltas
// ---------------------------------------------------------------------------------------------

/// What happened between two [`Cache::stats`] snapshots: each counter of [`Stats`], after minus
/// before. Read the counters as fields (`delta.hits`); [`Stats::requests`] and
/// [`Stats::hit_ratio`] work on the delta too.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use tower_valkey_cache::testing::StatsDelta;
/// use tower_valkey_cache::{Cache, MemoryStore};
///
/// let cache = Cache::new(MemoryStore::new());
/// let before = cache.stats();
/// let v: Result<u32, ()> = cache.get_or_set("answer", || async { Ok(42) }).await;
/// let v: Result<u32, ()> = cache.get_or_set("answer", || async { Ok(0) }).await;
/// assert_eq!(v, Ok(42));
/// let d = StatsDelta::since(&before, &cache.stats());
/// assert_eq!((d.misses, d.stores, d.hits), (1, 1, 1));
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsDelta(Stats);

impl StatsDelta {
    /// `after - before`, counter by counter (a counter that went down, which the cache never
    /// does, counts as 0); the [`waiting`](Stats::waiting) gauge is `after`'s.
    pub fn since(before: &Stats, after: &Stats) -> Self {
        // Exhaustive on purpose: a counter added to `Stats` must be added here.
        let Stats {
            hits,
            stale_hits,
            misses,
            bypasses,
            store_unavailable,
            stores,
            superseded,
            decode_failures,
            store_errors,
            invalidated,
            breaker_opened,
            breaker_closed,
            invalidations_queued,
            invalidations_retried,
            invalidations_late,
            invalidations_dropped,
            invalidation_floors,
            coalesced,
            lock_waits,
            lock_timeouts,
            refreshes,
            refresh_failures,
            stale_if_error,
            evictions,
            waiting,
        } = *after;
        let b = before;
        Self(Stats {
            hits: hits.saturating_sub(b.hits),
            stale_hits: stale_hits.saturating_sub(b.stale_hits),
            misses: misses.saturating_sub(b.misses),
            bypasses: bypasses.saturating_sub(b.bypasses),
            store_unavailable: store_unavailable.saturating_sub(b.store_unavailable),
            stores: stores.saturating_sub(b.stores),
            superseded: superseded.saturating_sub(b.superseded),
            decode_failures: decode_failures.saturating_sub(b.decode_failures),
            store_errors: store_errors.saturating_sub(b.store_errors),
            invalidated: invalidated.saturating_sub(b.invalidated),
            breaker_opened: breaker_opened.saturating_sub(b.breaker_opened),
            breaker_closed: breaker_closed.saturating_sub(b.breaker_closed),
            invalidations_queued: invalidations_queued.saturating_sub(b.invalidations_queued),
            invalidations_retried: invalidations_retried.saturating_sub(b.invalidations_retried),
            invalidations_late: invalidations_late.saturating_sub(b.invalidations_late),
            invalidations_dropped: invalidations_dropped.saturating_sub(b.invalidations_dropped),
            invalidation_floors: invalidation_floors.saturating_sub(b.invalidation_floors),
            coalesced: coalesced.saturating_sub(b.coalesced),
            lock_waits: lock_waits.saturating_sub(b.lock_waits),
            lock_timeouts: lock_timeouts.saturating_sub(b.lock_timeouts),
            refreshes: refreshes.saturating_sub(b.refreshes),
            refresh_failures: refresh_failures.saturating_sub(b.refresh_failures),
            stale_if_error: stale_if_error.saturating_sub(b.stale_if_error),
            evictions: evictions.saturating_sub(b.evictions),
            // A gauge: the value after, not a difference.
            waiting,
        })
    }

    /// Runs `fut` and returns its output with what it did to `cache`'s counters. (Other tasks
    /// using the cache meanwhile count too.)
    pub async fn measure<T>(cache: &Cache, fut: impl Future<Output = T>) -> (T, Self) {
        let before = cache.stats();
        let out = fut.await;
        (out, Self::since(&before, &cache.stats()))
    }

    /// The delta as a [`Stats`] value.
    pub fn stats(&self) -> Stats {
        self.0
    }

    /// Whether no counter moved.
    pub fn is_empty(&self) -> bool {
        self.0 == Stats::default()
    }
}

impl std::ops::Deref for StatsDelta {
    type Target = Stats;
    fn deref(&self) -> &Stats {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_parameters_and_quoted_strings() {
        let s = CacheStatus::parse_str("tower-valkey-cache; fwd=uri-miss; stored");
        assert_eq!(s.cache, "tower-valkey-cache");
        assert!(s.stored && s.is_miss() && !s.hit && !s.collapsed);
        let all = CacheStatus::parse_all(&HeaderValue::from_static(
            "Origin; fwd=uri-miss; detail=\"a \\\"b\\\" ;,c\", edge;hit;ttl=-3;key=x",
        ));
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].detail.as_deref(), Some("a \"b\" ;,c"));
        assert!(all[1].is_stale() && all[1].ttl == Some(-3));
        assert_eq!(CacheStatus::parse_str(""), CacheStatus::default());
        assert!(!CacheStatus::parse_str("x; hit=?0").hit);
    }

    #[test]
    fn stats_delta_subtracts_every_counter() {
        let before = Stats {
            hits: 2,
            misses: 5,
            ..Stats::default()
        };
        let after = Stats {
            hits: 3,
            misses: 5,
            stores: 1,
            ..Stats::default()
        };
        let d = StatsDelta::since(&before, &after);
        assert_eq!((d.hits, d.misses, d.stores), (1, 0, 1));
        assert!(StatsDelta::since(&after, &after).is_empty());
        // Never negative.
        assert_eq!(StatsDelta::since(&after, &before).stores, 0);
    }
}
