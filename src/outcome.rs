//! [`Outcome`]: what the cache did for one request, recorded once (the docs are on the type).

use std::sync::Arc;
use tokio::sync::watch;

/// What the cache did for one request, recorded once.
///
/// [`CacheLayer`](crate::CacheLayer) decides one outcome per request and hands it to one place
/// that writes the `Cache-Status` header, the request span's `outcome` field, the
/// [`Stats`](crate::Stats) counters and the OpenTelemetry `cache.requests` instrument, and
/// inserts the outcome into the response's extensions, where [`Cache::warm`](crate::Cache::warm),
/// tests and applications read it without parsing a header:
///
/// ```
/// use axum::{body::Body, routing::get, Router};
/// use tower::ServiceExt;
/// use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, Outcome};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::new(MemoryStore::new());
/// let app = Router::new().route("/", get(|| async { "hi" }).route_layer(CacheLayer::new(cache)));
/// let get = || http::Request::get("/").body(Body::empty()).unwrap();
/// let first = app.clone().oneshot(get()).await.unwrap();
/// assert!(matches!(first.extensions().get::<Outcome>(), Some(Outcome::Miss { stored: true, .. })));
/// let second = app.oneshot(get()).await.unwrap();
/// assert!(second.extensions().get::<Outcome>().unwrap().is_fresh_hit());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Served from an entry with `ttl` seconds of freshness left (at least 1), or, when `ttl` is
    /// 0 or negative, `-ttl` seconds past its freshness: stale-while-revalidate (`detail` None)
    /// or stale-if-error (`detail` `Some("stale-if-error")`).
    Hit {
        /// Seconds of freshness left (negative: stale).
        ttl: i64,
        /// Why a stale entry was served, if not for revalidation.
        detail: Option<&'static str>,
    },
    /// Answered with the fresh entry another request's fill produced (single-flight in this
    /// process, or another instance's fill lock).
    Collapsed,
    /// Looked up, not found (or unusable); the handler answered.
    Miss {
        /// Whether the response was stored before its head was sent. A response streamed to the
        /// client while a copy is taken is stored when its body completes: then `stored` is
        /// false and the response carries a [`PendingStore`] extension that says how it ended.
        stored: bool,
        /// Why it was not stored, or what made it a miss (`head`, `invalidated`,
        /// `store-unavailable`, `cache-control`, `too-large`, ...).
        detail: Option<&'static str>,
    },
    /// Not looked up: the request is not eligible (`authorization`, `no-store`, `key-error`,
    /// ...).
    Bypass(&'static str),
    /// Not looked up: the route does not cache this method.
    Method,
    /// The store failed, was too slow, or the breaker was open (or an invalidation is owed to
    /// it); the handler answered without the cache.
    StoreUnavailable,
}

impl Outcome {
    /// A hit on a fresh entry with `left` of freshness (`ttl` rounded up, at least 1 s).
    pub(crate) fn fresh(left: std::time::Duration) -> Self {
        Outcome::Hit {
            ttl: secs_ceil(left),
            detail: None,
        }
    }

    /// A hit on an entry `past` its freshness (`ttl` negative, rounded away from 0): for
    /// revalidation (`detail` None) or `stale-if-error`.
    pub(crate) fn stale(past: std::time::Duration, detail: Option<&'static str>) -> Self {
        Outcome::Hit {
            ttl: -secs_ceil(past),
            detail,
        }
    }

    /// A short label: `hit`, `stale`, `collapsed`, `miss`, `bypass` or `store_unavailable` (the
    /// span field and the metric's `cache.outcome`).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Hit { ttl, .. } if *ttl <= 0 => "stale",
            Outcome::Hit { .. } => "hit",
            Outcome::Collapsed => "collapsed",
            Outcome::Miss { .. } => "miss",
            Outcome::Bypass(_) | Outcome::Method => "bypass",
            Outcome::StoreUnavailable => "store_unavailable",
        }
    }

    /// Served from a fresh entry.
    pub fn is_fresh_hit(&self) -> bool {
        matches!(self, Outcome::Hit { ttl, .. } if *ttl > 0)
    }

    /// Served from a stale entry (stale-while-revalidate or stale-if-error).
    pub fn is_stale(&self) -> bool {
        matches!(self, Outcome::Hit { ttl, .. } if *ttl <= 0)
    }

    /// Served from the cache at all: a fresh or stale hit, or a collapsed answer.
    pub fn is_cached(&self) -> bool {
        matches!(self, Outcome::Hit { .. } | Outcome::Collapsed)
    }

    /// Stored before the head was sent (a streamed fill reports through [`PendingStore`]).
    pub fn is_stored(&self) -> bool {
        matches!(self, Outcome::Miss { stored: true, .. })
    }

    /// The detail, if any (why it bypassed, why it was not stored, why a stale entry).
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            Outcome::Hit { detail, .. } | Outcome::Miss { detail, .. } => *detail,
            Outcome::Bypass(d) => Some(d),
            Outcome::Method => Some("method"),
            Outcome::StoreUnavailable => Some("store-unavailable"),
            Outcome::Collapsed => None,
        }
    }
}

/// Whole seconds, rounded up, at least 1.
fn secs_ceil(d: std::time::Duration) -> i64 {
    d.as_millis().div_ceil(1000).clamp(1, i64::MAX as u128) as i64
}

/// How the store of a streamed fill ended: a response extension on misses whose body streams
/// to the client while a copy is kept (their [`Outcome::Miss`] has `stored: false`, since the
/// head left before the body was complete).
#[derive(Clone, Debug)]
pub struct PendingStore {
    rx: watch::Receiver<Option<bool>>,
}

/// The sending side of a [`PendingStore`], held by the fill.
#[derive(Debug)]
pub(crate) struct StoreReport {
    tx: Arc<watch::Sender<Option<bool>>>,
}

impl PendingStore {
    /// A pending store and the handle that reports how it ended.
    pub(crate) fn new() -> (Self, StoreReport) {
        let (tx, rx) = watch::channel(None);
        (Self { rx }, StoreReport { tx: Arc::new(tx) })
    }

    /// Waits until the body was consumed and the fill ended: true if the entry was stored
    /// (false: too large, the body failed or was dropped, the store refused or failed).
    pub async fn stored(mut self) -> bool {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            // The fill went away without reporting: not stored.
            Err(_) => false,
        }
    }
}

impl StoreReport {
    /// Reports how the store ended.
    pub(crate) fn report(&self, stored: bool) {
        self.tx.send_replace(Some(stored));
    }
}

impl Drop for StoreReport {
    fn drop(&mut self) {
        // Dropped without a report (the body was dropped early): not stored.
        if self.tx.borrow().is_none() {
            self.tx.send_replace(Some(false));
        }
    }
}
