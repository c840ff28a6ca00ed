//! Cheap counters behind [`Cache::stats`](crate::Cache::stats).
//!
//! [`Counters`] is the funnel every counted event goes through; with the `opentelemetry` feature each
//! method also records the matching OpenTelemetry instrument ([`crate::metrics`], which holds
//! the instruments and imports nothing else of the crate). A request's outcome is recorded by
//! [`Counters::record`], once per request, from the one place that finishes a response (and,
//! for the function cache, when a call ends).

use crate::outcome::Outcome;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
#[cfg(feature = "opentelemetry")]
use std::time::Instant;

/// A snapshot of a cache's counters since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Requests answered from a fresh entry.
    pub hits: u64,
    /// Requests answered from a stale entry.
    pub stale_hits: u64,
    /// Requests that looked in the cache and found nothing usable.
    pub misses: u64,
    /// Requests that skipped the cache (method not cached, credentials, `no-store`, key
    /// errors).
    pub bypasses: u64,
    /// Requests served without the cache because the store failed or the breaker was open.
    pub store_unavailable: u64,
    /// Entries written.
    pub stores: u64,
    /// Fills not written because an invalidation happened while they ran.
    pub superseded: u64,
    /// Stored values that did not decode (treated as misses and overwritten).
    pub decode_failures: u64,
    /// Failed store operations (errors and timeouts).
    pub store_errors: u64,
    /// Entries removed by invalidation.
    pub invalidated: u64,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Times the circuit breaker closed again.
    pub breaker_closed: u64,
    /// Failed invalidations handed to the retry queue (queued, merged with an owed one, or
    /// covered by a namespace-wide invalidation).
    pub invalidations_queued: u64,
    /// Retries that landed (one per store operation the retry queue ran successfully).
    pub invalidations_retried: u64,
    /// Invalidations still running when their caller stopped waiting
    /// ([`CacheBuilder::invalidation_wait`](crate::CacheBuilder::invalidation_wait)); each was
    /// owed until it landed or was queued.
    pub invalidations_late: u64,
    /// Always 0: an invalidation is never dropped. One the retry queue cannot hold, or one still
    /// failing after `give_up_after`, becomes a namespace-wide invalidation
    /// ([`invalidation_floors`](Self::invalidation_floors)).
    pub invalidations_dropped: u64,
    /// Namespace-wide invalidations owed because the retry queue was full or a queued
    /// invalidation was still failing after `give_up_after` (see
    /// [`CacheBuilder::invalidation_retry`](crate::CacheBuilder::invalidation_retry)).
    pub invalidation_floors: u64,
    /// Requests that waited for another request's fill instead of running the handler.
    pub coalesced: u64,
    /// Requests that waited on another instance's fill lock.
    pub lock_waits: u64,
    /// Fill-lock waits that timed out (the waiter then ran the handler).
    pub lock_timeouts: u64,
    /// Background refreshes (stale-while-revalidate, early refresh) that stored a new entry.
    pub refreshes: u64,
    /// Background refreshes that failed (the stale entry stays).
    pub refresh_failures: u64,
    /// Handler failures answered with a stale entry (stale-if-error).
    pub stale_if_error: u64,
    /// Entries evicted to keep a bounded namespace within its capacity.
    pub evictions: u64,
    /// A gauge, not a count: requests (and function-cache calls) waiting **right now** for
    /// another one's fill, as single-flight followers in this process or on another instance's
    /// fill lock.
    pub waiting: u64,
}

impl Stats {
    /// Requests the cache saw: every request through a `CacheLayer` and every function-cache
    /// lookup (`get_or_set*`, per id for batches), each counted once as a hit, stale hit, miss,
    /// bypass or store-unavailable. (Coalesced and stale-if-error requests are misses first.)
    pub fn requests(&self) -> u64 {
        self.hits + self.stale_hits + self.misses + self.bypasses + self.store_unavailable
    }

    /// Hits (fresh and stale) over lookups (hits and misses); 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.hits + self.stale_hits;
        let total = hits + self.misses;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    store_unavailable: AtomicU64,
    stores: AtomicU64,
    superseded: AtomicU64,
    decode_failures: AtomicU64,
    store_errors: AtomicU64,
    invalidated: AtomicU64,
    breaker_opened: AtomicU64,
    breaker_closed: AtomicU64,
    invalidations_queued: AtomicU64,
    invalidations_late: AtomicU64,
    invalidations_retried: AtomicU64,
    invalidations_dropped: AtomicU64,
    invalidation_floors: AtomicU64,
    coalesced: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    stale_if_error: AtomicU64,
    evictions: AtomicU64,
    waiting: AtomicU64,
    #[cfg(feature = "opentelemetry")]
    otel: Option<crate::metrics::Metrics>,
}

/// Runs `$e` with `$m` bound to the OpenTelemetry instruments, when there are any.
macro_rules! otel {
    ($self:ident, $m:ident => $e:expr) => {
        #[cfg(feature = "opentelemetry")]
        if let Some($m) = &$self.otel {
            $e;
        }
    };
}

impl Counters {
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn with_metrics(metrics: crate::metrics::Metrics) -> Self {
        Self {
            otel: Some(metrics),
            ..Self::default()
        }
    }

    /// An entry of `bytes` (encoded) was written.
    pub(crate) fn stored(&self, bytes: usize) {
        self.stores.fetch_add(1, Relaxed);
        otel!(self, m => m.stored(bytes));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = bytes;
    }
    pub(crate) fn superseded(&self) {
        self.superseded.fetch_add(1, Relaxed);
        otel!(self, m => m.superseded());
    }
    pub(crate) fn decode_failure(&self) {
        self.decode_failures.fetch_add(1, Relaxed);
        otel!(self, m => m.decode_failure());
    }
    /// A store operation `op` took `elapsed` (and failed with `error`, if any).
    pub(crate) fn store_op(
        &self,
        op: &'static str,
        elapsed: std::time::Duration,
        error: Option<&'static str>,
    ) {
        otel!(self, m => m.store_op(op, elapsed, error));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = (op, elapsed, error);
    }

    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }
    /// An invalidation of `kind` (`key`, `tag`, `pattern`) removed `n` entries.
    pub(crate) fn invalidated(&self, kind: &'static str, n: u64) {
        self.invalidated.fetch_add(n, Relaxed);
        otel!(self, m => m.invalidated(kind, n));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = kind;
    }
    pub(crate) fn breaker_opened(&self) {
        self.breaker_opened.fetch_add(1, Relaxed);
        otel!(self, m => m.breaker("open"));
    }
    pub(crate) fn breaker_closed(&self) {
        self.breaker_closed.fetch_add(1, Relaxed);
        otel!(self, m => m.breaker("closed"));
    }

    /// An invalidation still running past its caller's wait (owed until it ends).
    pub(crate) fn invalidation_late(&self) {
        self.invalidations_late.fetch_add(1, Relaxed);
        otel!(self, m => m.retry("late"));
    }

    /// A failed invalidation handed to the retry queue, and what the queue did with it.
    pub(crate) fn retry_queued(&self, how: crate::cache::retry::Pushed) {
        use crate::cache::retry::Pushed;
        self.invalidations_queued.fetch_add(1, Relaxed);
        match how {
            Pushed::Queued => {
                otel!(self, m => m.retry("queued"));
            }
            Pushed::Merged => {
                otel!(self, m => m.retry("merged"));
            }
            Pushed::Floor => self.retry_floor(),
        }
    }
    pub(crate) fn retry_succeeded(&self) {
        self.invalidations_retried.fetch_add(1, Relaxed);
        otel!(self, m => m.retry("succeeded"));
    }
    /// A namespace-wide invalidation owed instead of what the retry queue could not hold.
    pub(crate) fn retry_floor(&self) {
        self.invalidation_floors.fetch_add(1, Relaxed);
        otel!(self, m => m.retry("floor"));
    }

    /// `n` entries of a bounded namespace evicted by `policy` (the policy's name).
    pub(crate) fn evicted(&self, policy: &str, n: u64) {
        self.evictions.fetch_add(n, Relaxed);
        otel!(self, m => m.evicted(policy, n));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = policy;
    }

    /// A batch lookup of the function cache (`get_or_set_many`): `hits` ids found fresh, the
    /// `missing` others missed, or found the store unavailable when `store_ok` is false.
    pub(crate) fn batch(&self, hits: u64, missing: u64, store_ok: bool) {
        self.hits.fetch_add(hits, Relaxed);
        if store_ok {
            self.misses.fetch_add(missing, Relaxed);
        } else {
            self.store_unavailable.fetch_add(missing, Relaxed);
        }
        otel!(self, m => {
            use crate::metrics::Served;
            m.served_n(Served::HIT, hits);
            m.served_n(if store_ok { Served::MISS } else { Served::STORE_UNAVAILABLE }, missing)
        });
    }

    /// One request of [`Cache::warm`](crate::Cache::warm): `warmed`, `already_fresh` or
    /// `failed` (OpenTelemetry only: the warm report counts them for the caller).
    pub(crate) fn warm(&self, result: &'static str) {
        otel!(self, m => m.warm(result));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = result;
    }

    pub(crate) fn lock_waits(&self) {
        self.lock_waits.fetch_add(1, Relaxed);
        otel!(self, m => m.lock_wait());
    }
    pub(crate) fn lock_timeouts(&self) {
        self.lock_timeouts.fetch_add(1, Relaxed);
        otel!(self, m => m.lock_timeout());
    }
    pub(crate) fn refreshes(&self) {
        self.refreshes.fetch_add(1, Relaxed);
        otel!(self, m => m.refresh("ok"));
    }
    pub(crate) fn refresh_failures(&self) {
        self.refresh_failures.fetch_add(1, Relaxed);
        otel!(self, m => m.refresh("failed"));
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            stale_hits: self.stale_hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bypasses: self.bypasses.load(Relaxed),
            store_unavailable: self.store_unavailable.load(Relaxed),
            stores: self.stores.load(Relaxed),
            superseded: self.superseded.load(Relaxed),
            decode_failures: self.decode_failures.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
            invalidated: self.invalidated.load(Relaxed),
            breaker_opened: self.breaker_opened.load(Relaxed),
            breaker_closed: self.breaker_closed.load(Relaxed),
            invalidations_queued: self.invalidations_queued.load(Relaxed),
            invalidations_retried: self.invalidations_retried.load(Relaxed),
            invalidations_late: self.invalidations_late.load(Relaxed),
            invalidations_dropped: self.invalidations_dropped.load(Relaxed),
            invalidation_floors: self.invalidation_floors.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            lock_waits: self.lock_waits.load(Relaxed),
            lock_timeouts: self.lock_timeouts.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            refresh_failures: self.refresh_failures.load(Relaxed),
            stale_if_error: self.stale_if_error.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
        }
    }
}

/// Where and when a request (or a function-cache call) started, for `cache.requests` and
/// `cache.request.duration`.
#[derive(Clone, Debug)]
pub(crate) struct RequestScope {
    #[cfg(feature = "opentelemetry")]
    started: Instant,
    /// The route template (axum's `MatchedPath`), `"unknown"` in a layer without one; None for
    /// function-cache calls.
    #[cfg(feature = "opentelemetry")]
    route: Option<opentelemetry::StringValue>,
}

impl RequestScope {
    /// A request through a layer on `route` (a template, never the raw path).
    pub(crate) fn request(route: Option<&str>) -> Self {
        #[cfg(not(feature = "opentelemetry"))]
        let _ = route;
        Self {
            #[cfg(feature = "opentelemetry")]
            started: Instant::now(),
            #[cfg(feature = "opentelemetry")]
            route: Some(crate::metrics::route_value(route)),
        }
    }

    /// A function-cache call.
    pub(crate) fn call() -> Self {
        Self {
            #[cfg(feature = "opentelemetry")]
            started: Instant::now(),
            #[cfg(feature = "opentelemetry")]
            route: None,
        }
    }
}

/// Counts one waiter in [`Stats::waiting`] while it lives.
pub(crate) struct Waiting<'a>(&'a Counters);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

impl Counters {
    /// A request starts waiting for another one's fill; it stops when the guard drops.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Relaxed);
        Waiting(self)
    }

    /// One batch call of the function cache (`op`: `get_many`, `get_or_set_many`, `set_many`,
    /// `warm_values`) ended: its duration since `scope` began, in `cache.request.duration` with
    /// `cache.outcome` `batch` and `cache.operation` `op` (the ids of `get_or_set_many` are
    /// counted one by one through [`batch`](Self::batch)).
    pub(crate) fn batch_call(&self, op: &'static str, scope: &RequestScope) {
        otel!(self, m => m.batch_call(op, scope.started.elapsed()));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = (op, scope);
    }

    /// Records one request's outcome: the [`Stats`] counters and, with the `opentelemetry` feature,
    /// `cache.requests` and `cache.request.duration` (from `scope`).
    pub(crate) fn record(&self, outcome: &Outcome, scope: &RequestScope) {
        match outcome {
            Outcome::Hit {
                ttl,
                detail: Some(_),
            } if *ttl <= 0 => {
                // Stale-if-error: a miss whose handler failed.
                self.misses.fetch_add(1, Relaxed);
                self.stale_if_error.fetch_add(1, Relaxed);
            }
            Outcome::Hit { ttl, .. } if *ttl <= 0 => {
                self.stale_hits.fetch_add(1, Relaxed);
            }
            Outcome::Hit { .. } => {
                self.hits.fetch_add(1, Relaxed);
            }
            Outcome::Collapsed => {
                self.misses.fetch_add(1, Relaxed);
                self.coalesced.fetch_add(1, Relaxed);
            }
            Outcome::Miss { .. } => {
                self.misses.fetch_add(1, Relaxed);
            }
            Outcome::Bypass(_) | Outcome::Method => {
                self.bypasses.fetch_add(1, Relaxed);
            }
            Outcome::StoreUnavailable => {
                self.store_unavailable.fetch_add(1, Relaxed);
            }
        }
        otel!(self, m => m.served(served(outcome), scope.route.clone(), Some(scope.started.elapsed())));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = scope;
    }
}

/// An outcome as `cache.requests` labels it.
#[cfg(feature = "opentelemetry")]
fn served(outcome: &Outcome) -> crate::metrics::Served {
    use crate::metrics::Served;
    match outcome {
        Outcome::Hit {
            ttl,
            detail: Some(_),
        } if *ttl <= 0 => Served::STALE_IF_ERROR,
        Outcome::Hit { ttl, .. } if *ttl <= 0 => Served::STALE_WHILE_REVALIDATE,
        Outcome::Hit { .. } => Served::HIT,
        Outcome::Collapsed => Served::COLLAPSED,
        Outcome::Miss { .. } => Served::MISS,
        Outcome::Bypass(reason) => Served::bypass(reason),
        Outcome::Method => Served::bypass("method"),
        Outcome::StoreUnavailable => Served::STORE_UNAVAILABLE,
    }
}
