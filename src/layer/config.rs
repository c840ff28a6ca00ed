//! [`RouteConfig`]: everything a [`CacheLayer`](super::CacheLayer) was told, declared once.
//!
//! The layer's builder methods write it (copy-on-write through `Arc::make_mut`), the service
//! holds the same `Arc`, and every stage of a request (lookup, miss, fill, refresh) reads it from
//! there: no field is copied into a second struct.

use crate::entry::Entry;
use crate::eviction::RouteEviction;
use crate::key::{DefaultKey, KeyTemplate, Keyer};
use crate::Cache;
use http::{HeaderName, Method, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A route's cache configuration.
#[derive(Clone)]
pub(crate) struct RouteConfig {
    pub(crate) cache: Cache,
    /// The route's TTL; the cache's default when None.
    pub(crate) ttl: Option<Duration>,
    pub(crate) key: Keyer,
    pub(crate) methods: Vec<Method>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_body_bytes: usize,
    pub(crate) name: Arc<str>,
    pub(crate) status_header: bool,
    pub(crate) allow_credentials: bool,
    pub(crate) tags: Vec<KeyTemplate>,
    pub(crate) tag_headers: bool,
    pub(crate) respect_cache_control: bool,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) refresh_timeout: Duration,
    pub(crate) coalesce: bool,
    pub(crate) coalesce_wait: Duration,
    pub(crate) lock_lease: Option<Duration>,
    /// `error_ttl`: how long a shareable 5xx answers this route's misses (zero: off).
    pub(crate) error_ttl: Duration,
    pub(crate) ttl_jitter: f64,
    pub(crate) early_refresh_beta: f64,
    pub(crate) eviction: Option<Arc<RouteEviction>>,
    /// The content codings `Accept-Encoding` is reduced to for `Vary` (sorted).
    pub(crate) encodings: Arc<[String]>,
    /// `key_body`: methods other than GET and HEAD are cached, keyed by their body up to this.
    pub(crate) key_body: Option<usize>,
    /// Whether a key configuration error was logged already (once per route).
    key_error_reported: Arc<AtomicBool>,
    /// Freshness from the response as RFC 9111 computes it (`http_freshness`), not the route TTL.
    pub(crate) http_freshness: bool,
    /// Heuristic freshness: this fraction of `Date - Last-Modified`, at most `heuristic_max`.
    pub(crate) heuristic_fraction: f64,
    pub(crate) heuristic_max: Duration,
    /// Targeted cache-control fields (RFC 9213), in order of precedence.
    pub(crate) targeted: Arc<[HeaderName]>,
    /// Whether the response's RFC 5861 `stale-while-revalidate=` / `stale-if-error=` count.
    pub(crate) stale_directives: bool,
    /// How long entries with a validator are kept past freshness to be revalidated (0: not
    /// revalidated).
    pub(crate) keep_for_revalidation: Duration,
    /// Whether a successful unsafe request invalidates its target and `Location`s.
    pub(crate) invalidate_unsafe: bool,
    /// Whether `Range` requests are answered from a stored `200`.
    pub(crate) ranges: bool,
    /// Whether a response without `ETag` gets a content-hash one.
    pub(crate) etag: bool,
    /// Whether every miss streams its body (a known length too) while a copy is stored.
    pub(crate) stream_misses: bool,
}

impl RouteConfig {
    /// The defaults of [`CacheLayer::new`](super::CacheLayer::new).
    pub(crate) fn new(cache: Cache) -> Self {
        Self {
            cache,
            ttl: None,
            key: Keyer::strategy(DefaultKey),
            methods: vec![Method::GET, Method::HEAD],
            statuses: vec![StatusCode::OK],
            max_body_bytes: 1 << 20,
            name: Arc::from("tower-valkey-cache"),
            status_header: true,
            allow_credentials: false,
            tags: Vec::new(),
            tag_headers: true,
            respect_cache_control: false,
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            handler_timeout: None,
            refresh_timeout: Duration::from_secs(30),
            coalesce: true,
            coalesce_wait: Duration::from_secs(10),
            lock_lease: None,
            error_ttl: Duration::ZERO,
            ttl_jitter: 0.0,
            early_refresh_beta: 0.0,
            eviction: None,
            encodings: super::vary::served_encodings(super::vary::DEFAULT_ENCODINGS).into(),
            key_body: None,
            key_error_reported: Arc::new(AtomicBool::new(false)),
            http_freshness: false,
            heuristic_fraction: 0.0,
            heuristic_max: Duration::from_secs(24 * 3600),
            targeted: Arc::from(Vec::new()),
            stale_directives: false,
            keep_for_revalidation: Duration::ZERO,
            invalidate_unsafe: false,
            ranges: false,
            etag: true,
            stream_misses: false,
        }
    }

    /// The shared-cache preset ([`CacheLayer::http_cache`](super::CacheLayer::http_cache)):
    /// every option it sets is also a layer method of its own.
    pub(crate) fn set_http_cache(&mut self) {
        self.http_freshness = true;
        self.statuses = super::freshness::shared_statuses();
        self.heuristic_fraction = 0.1;
        self.targeted = Arc::from(vec![HeaderName::from_static("cdn-cache-control")]);
        self.stale_directives = true;
        self.keep_for_revalidation = Duration::from_secs(3600);
        self.invalidate_unsafe = true;
        self.ranges = true;
        self.etag = false;
        self.stream_misses = true;
    }

    /// How long this route's responses stay fresh.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl.unwrap_or_else(|| self.cache.default_ttl())
    }

    /// How long past freshness entries are kept (for stale-while-revalidate or stale-if-error).
    pub(crate) fn stale_for(&self) -> Duration {
        self.swr.max(self.sie)
    }

    /// Whether a request carrying header `h` (a credential, `Range`) may use the cache: the
    /// route's key covers it, or, for a credential, the route opted in, or, for `Range`, the
    /// route serves ranges from stored `200`s.
    pub(crate) fn covers_header(&self, h: &http::HeaderName) -> bool {
        self.key.covers_header(h)
            || (self.allow_credentials && crate::headers::is_credential(h))
            || (self.ranges && h == http::header::RANGE)
    }

    /// Whether the route's key includes the request's `Range`: only then is a `206` stored.
    pub(crate) fn covers_range(&self) -> bool {
        self.key.covers_header(&http::header::RANGE)
    }

    /// Whether `res` is a failure this route shares with the followers of its fill (and keeps
    /// for `error_ttl`): a 5xx it does not store as an entry, but that it could store if it
    /// cached that status (no `Set-Cookie`, no `private` / `no-store` / `no-cache`, a parsable
    /// `Vary` other than `*`). One rule with storing: [`response_unstorable`].
    ///
    /// [`response_unstorable`]: super::policy::response_unstorable
    pub(crate) fn shares_failure<B>(&self, res: &http::Response<B>) -> bool {
        let status = res.status();
        status.is_server_error()
            && !self.statuses.contains(&status)
            && super::policy::response_unstorable(res, &[status], self.covers_range()).is_none()
    }

    /// True the first time it is called for this route (to log configuration errors once).
    pub(crate) fn first_key_error(&self) -> bool {
        !self.key_error_reported.swap(true, Ordering::Relaxed)
    }

    /// XFetch (Vattani et al.): refresh a fresh entry early with a probability that grows as
    /// expiry nears and with how long the value took to compute, so a hot key is refreshed once
    /// before it expires instead of stampeding after.
    pub(crate) fn early_refresh_due(&self, entry: &Entry, now: u64) -> bool {
        if self.early_refresh_beta <= 0.0 {
            return false;
        }
        let r = fastrand::f64().max(f64::MIN_POSITIVE);
        let head_start = entry.compute_ms as f64 * self.early_refresh_beta * -r.ln();
        now as f64 + head_start >= entry.fresh_until_ms as f64
    }
}

impl std::fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("namespace", &self.cache.namespace())
            .field("ttl", &self.ttl)
            .field("methods", &self.methods)
            .field("statuses", &self.statuses)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
