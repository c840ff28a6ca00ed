use super::body::{CacheBody, Tee};
use super::conditional;
use super::policy;
use super::request_body::{self, Buffered, CacheRequestBody};
use super::status::Outcome;
use super::vary::{Marker, Vary};
use crate::entry::{now_ms, Entry, Freshness};
use crate::flight::{follow, Join, Landing, Lead};
use crate::store::{Lookup, StoreError, Write, Written};
use crate::Cache;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;
use tracing::Instrument;

/// The service [`CacheLayer`](super::CacheLayer) wraps around a route.
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) cache: Cache,
    pub(crate) ttl: Duration,
    pub(crate) key: crate::key::Keyer,
    pub(crate) methods: Vec<Method>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_body_bytes: usize,
    pub(crate) name: Arc<str>,
    pub(crate) status_header: bool,
    pub(crate) allow_credentials: bool,
    pub(crate) key_error_reported: AtomicBool,
    pub(crate) tags: Vec<crate::key::KeyTemplate>,
    pub(crate) tag_headers: bool,
    pub(crate) respect_cache_control: bool,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) refresh_timeout: Duration,
    pub(crate) coalesce: bool,
    pub(crate) coalesce_wait: Duration,
    pub(crate) lock_lease: Option<Duration>,
    pub(crate) ttl_jitter: f64,
    pub(crate) early_refresh_beta: f64,
    pub(crate) eviction: Option<Arc<crate::eviction::RouteEviction>>,
    /// The content codings `Accept-Encoding` is reduced to for `Vary` (sorted).
    pub(crate) encodings: Arc<[String]>,
    /// `key_body`: methods other than GET and HEAD are cached, keyed by their body up to this.
    pub(crate) key_body: Option<usize>,
}

impl Shared {
    /// XFetch (Vattani et al.): refresh a fresh entry early with a probability that grows as
    /// expiry nears and with how long the value took to compute, so a hot key is refreshed once
    /// before it expires instead of stampeding after.
    fn early_refresh_due(&self, entry: &Entry, now: u64) -> bool {
        if self.early_refresh_beta <= 0.0 {
            return false;
        }
        let r = fastrand::f64().max(f64::MIN_POSITIVE);
        let head_start = entry.compute_ms as f64 * self.early_refresh_beta * -r.ln();
        now as f64 + head_start >= entry.fresh_until_ms as f64
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.cache.namespace())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer's service, returning the wrapped one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`CacheService`].
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = T> + Send>>,
}

impl<T> ResponseFuture<T> {
    /// Wraps a response future (shared by both layers' services).
    pub(crate) fn new(fut: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(fut),
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = T;
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheService<S>
where
    S: Service<Request<CacheRequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<Result<Self::Response, S::Error>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The clone is the one that is ready: keep it, send the ready one with the request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // The route template, read once per request (never the raw path).
        let route = matched_route(&req);
        let span = tracing::debug_span!(
            "cache",
            namespace = %shared.cache.namespace(),
            method = %req.method(),
            http.route = route.unwrap_or("unknown"),
            outcome = tracing::field::Empty,
            key_hash = tracing::field::Empty,
            key = tracing::field::Empty,
        );
        #[cfg(feature = "metrics")]
        let scope = crate::metrics::RequestScope::new(route);
        let conditions = conditional::Conditions::from_headers(req.headers());
        let fut = async move {
            let res = handle(shared, inner, req).await?;
            Ok(conditions.apply(res))
        }
        .instrument(span);
        // `forward_outcome` records the outcome with the route and start time of this scope.
        #[cfg(feature = "metrics")]
        let fut = crate::metrics::REQUEST.scope(scope, fut);
        ResponseFuture::new(fut)
    }
}

/// The route template axum matched (`/users/{id}`), if any.
fn matched_route<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    {
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| m.as_str())
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = req;
        None
    }
}

/// `Cache-Status` as a constant: a `&str` name would be parsed on every response.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

fn forward_outcome<B: Body>(
    sh: &Shared,
    mut res: Response<CacheBody<B>>,
    outcome: Outcome,
) -> Response<CacheBody<B>> {
    tracing::Span::current().record("outcome", outcome.label());
    #[cfg(feature = "metrics")]
    crate::metrics::record_request(sh.cache.counters(), outcome.served());
    if sh.status_header {
        res.headers_mut()
            .insert(CACHE_STATUS, outcome.header(&sh.name));
    }
    res
}

async fn handle<S, ReqB, ResB>(
    sh: Arc<Shared>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<CacheRequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let counters = sh.cache.counters();
    let keyed_by_body = !matches!(*req.method(), Method::GET | Method::HEAD);
    // Methods with a body are cached only keyed by it (`key_body`).
    if !sh.methods.contains(req.method()) || (keyed_by_body && sh.key_body.is_none()) {
        counters.bypass();
        let res = Box::pin(inner.call(req.map(CacheRequestBody::new))).await?;
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Method,
        ));
    }
    if let Some(reason) = policy::request_bypass(&req, |h| {
        sh.allow_credentials || sh.key.covers_credential(h)
    }) {
        counters.bypass();
        let res = Box::pin(inner.call(req.map(CacheRequestBody::new))).await?;
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Bypass(reason),
        ));
    }
    let is_head = req.method() == Method::HEAD;
    let revalidate = policy::request_revalidate(&req);

    let (mut parts, body) = req.into_parts();
    // `key_body`: the body (and its Content-Type) becomes part of the key; the handler gets the
    // same body, also when it cannot be keyed (then the request bypasses the cache).
    let (body, body_suffix) = match sh.key_body {
        Some(max) if keyed_by_body => match Box::pin(request_body::buffer(body, max)).await {
            Buffered::Complete(bytes, body) => {
                let ct = parts.headers.get(header::CONTENT_TYPE);
                (body, Some(request_body::body_suffix(ct, &bytes)))
            }
            Buffered::Unkeyable(detail, body) => {
                counters.bypass();
                let res = Box::pin(inner.call(Request::from_parts(parts, body))).await?;
                return Ok(forward_outcome(
                    &sh,
                    res.map(CacheBody::stream),
                    Outcome::Bypass(detail),
                ));
            }
        },
        _ => (CacheRequestBody::new(body), None),
    };
    // The key and the tags (tag templates may name path parameters the key does not use).
    let key_and_tags = sh.key.derive(&sh.tags, &mut parts).await;
    let (mut key, tags) = match key_and_tags {
        Ok(kt) => kt,
        Err(e) => {
            if matches!(e, crate::key::KeyError::MissingPathParam(_))
                && !sh.key_error_reported.swap(true, Ordering::Relaxed)
            {
                tracing::error!(namespace = %sh.cache.namespace(), error = %e, "cache key configuration error; requests on this route are served uncached");
            }
            counters.bypass();
            let res = Box::pin(inner.call(Request::from_parts(parts, body))).await?;
            return Ok(forward_outcome(
                &sh,
                res.map(CacheBody::stream),
                Outcome::Bypass(e.detail()),
            ));
        }
    };
    if let Some(suffix) = body_suffix {
        key = crate::key::with_suffix(key, &suffix);
    }
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("key_hash", &crate::key::short_hash(key.as_bytes())[..12]);
        if sh.cache.logs_raw_keys() {
            span.record("key", key.as_str());
        }
    }
    let req = Request::from_parts(parts, body);

    let epoch = sh.cache.epoch();
    let base = key;
    let (lookup, key, marker) = match resolve(&sh, &base, req.headers(), true).await {
        // A request for a fresh response skips what was found, but its fill is still guarded.
        Ok(r) if revalidate => (
            Lookup {
                value: None,
                ..r.lookup
            },
            r.key,
            r.marker,
        ),
        Ok(r) => (r.lookup, r.key, r.marker),
        Err(_) => {
            counters.unavailable();
            let res = Box::pin(inner.call(req)).await?;
            return Ok(forward_outcome(
                &sh,
                res.map(CacheBody::stream),
                Outcome::StoreUnavailable,
            ));
        }
    };
    let mut detail = None;
    let mut stale: Option<(Entry, Duration)> = None;
    if let Some(raw) = &lookup.value {
        // An entry this route could never have stored (a status it does not cache, a header
        // the cache never keeps) was written by someone else: a miss, never replayed.
        match decode_for(&sh, raw) {
            Ok(entry) => {
                let now = now_ms();
                match entry.freshness(now) {
                    Freshness::Fresh(left) => {
                        counters.hit();
                        let res = entry_response(
                            &sh,
                            &entry,
                            is_head,
                            Outcome::Hit {
                                ttl: secs_ceil(left),
                                detail: None,
                            },
                            now,
                        );
                        if !is_head && sh.early_refresh_due(&entry, now) {
                            let variant = Variant::new(base, marker, req.headers());
                            let fill = Fill::new(&sh, key, tags, (lookup.clock, epoch), variant);
                            spawn_refresh(sh.clone(), fill, inner, req, entry.stored_at_ms);
                        }
                        return Ok(res);
                    }
                    Freshness::Stale(past) if past < sh.swr => {
                        counters.stale_hit();
                        let res = entry_response(
                            &sh,
                            &entry,
                            is_head,
                            Outcome::Hit {
                                ttl: -secs_ceil(past),
                                detail: None,
                            },
                            now,
                        );
                        if !is_head {
                            let variant = Variant::new(base, marker, req.headers());
                            let fill = Fill::new(&sh, key, tags, (lookup.clock, epoch), variant);
                            spawn_refresh(sh.clone(), fill, inner, req, entry.stored_at_ms);
                        }
                        return Ok(res);
                    }
                    Freshness::Stale(past) if past < sh.sie => stale = Some((entry, past)),
                    _ => {}
                }
            }
            // Written by an older version under keys of another meaning: a plain miss.
            Err(e) if e.is_outdated() => {}
            Err(e) => {
                counters.decode_failure();
                detail = Some("undecodable-entry");
                tracing::warn!(namespace = %sh.cache.namespace(), error = %e, "cached value does not decode; treating as a miss and overwriting");
            }
        }
    }
    counters.miss();
    // The miss machinery (single-flight, fill lock, fill, store) lives in its own boxed future,
    // so a hit's future stays small: less to allocate and move per request.
    let missed = Missed {
        is_head,
        revalidate,
        base,
        key,
        tags,
        marker,
        clock: lookup.clock,
        epoch,
        stale,
        detail,
    };
    Box::pin(miss(sh, inner, req, missed)).await
}

/// What a request's lookup leaves for [`miss`].
struct Missed {
    is_head: bool,
    revalidate: bool,
    /// The route's key.
    base: String,
    /// Where the entry lives (the variant's key when a marker was found).
    key: String,
    tags: Vec<String>,
    marker: Option<Marker>,
    /// The invalidation clock the lookup read.
    clock: u64,
    epoch: u64,
    /// A stale entry that may stand in for a failing handler (stale-if-error).
    stale: Option<(Entry, Duration)>,
    detail: Option<&'static str>,
}

/// A miss: single-flight, fill lock, the handler, and storing its response.
async fn miss<S, ReqB, ResB>(
    sh: Arc<Shared>,
    mut inner: S,
    req: Request<CacheRequestBody<ReqB>>,
    missed: Missed,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<CacheRequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let Missed {
        is_head,
        revalidate,
        base,
        key,
        mut tags,
        marker,
        clock,
        epoch,
        stale,
        detail,
    } = missed;
    let counters = sh.cache.counters();
    let headers = req.headers().clone();

    // Single-flight: one handler run per key in this process; the others wait for its entry.
    let mut lead = None;
    if sh.coalesce && !is_head {
        let mut attempts = 0;
        loop {
            match sh.cache.flights().join(&key) {
                Join::Lead(l) => {
                    lead = Some(l);
                    break;
                }
                Join::Follow(rx) => match follow(rx, sh.coalesce_wait).await {
                    Landing::Entry(e, stamp) if stamp == (Some(clock), epoch) => {
                        counters.coalesced();
                        return Ok(entry_response(
                            &sh,
                            &e,
                            is_head,
                            Outcome::Collapsed,
                            now_ms(),
                        ));
                    }
                    // Cancelled, or landed from before an invalidation this request saw: lead.
                    Landing::Cancelled | Landing::Entry(..) if attempts < 3 => attempts += 1,
                    _ => break,
                },
            }
        }
    }

    // Fill lock: one handler run per key across every instance sharing the store.
    let mut lock = LockGuard::none(&sh.cache, &key);
    if let (Some(lease), false) = (sh.lock_lease, is_head) {
        let token = random_token();
        match sh.cache.try_lock(&key, &token, lease).await {
            Ok(true) => lock.token = Some(token),
            Ok(false) => {
                counters.lock_waits();
                match wait_for_entry(&sh, (&base, &key), &headers, lease, &token).await {
                    // A request asking to revalidate must not be answered with the cached copy.
                    Waited::Entry(entry, from) if !revalidate => {
                        counters.coalesced();
                        let entry = Arc::new(entry);
                        let res =
                            entry_response(&sh, &entry, is_head, Outcome::Collapsed, now_ms());
                        if let Some(l) = lead {
                            // Followers share this request's key, not necessarily its variant.
                            l.land(match from == key {
                                true => Landing::Entry(entry, (Some(clock), epoch)),
                                false => Landing::Unshareable,
                            });
                        }
                        return Ok(res);
                    }
                    Waited::Entry(..) => {}
                    // The holder's lease ran out (it died): we hold the lock now.
                    Waited::Locked => lock.token = Some(token),
                    Waited::TimedOut => counters.lock_timeouts(),
                }
            }
            Err(_) => {}
        }
    }

    // Double-check now that this request leads (and holds the fill lock, if any): a flight that
    // landed, or a lock holder that released, between our lookup and taking the lead has already
    // stored the entry. Without this a late miss runs the handler a second time.
    if !revalidate && (lead.is_some() || lock.token.is_some()) {
        if let Some((entry, from)) = fresh_entry(&sh, &base, &headers).await {
            counters.coalesced();
            let entry = Arc::new(entry);
            let res = entry_response(&sh, &entry, is_head, Outcome::Collapsed, now_ms());
            lock.release().await;
            if let Some(l) = lead {
                l.land(match from == key {
                    true => Landing::Entry(entry, (Some(clock), epoch)),
                    false => Landing::Unshareable,
                });
            }
            return Ok(res);
        }
    }

    let variant = Variant {
        base,
        marker,
        headers,
    };
    let fill = Fill::new(&sh, key, Vec::new(), (clock, epoch), variant);
    let res = match stale {
        // Stale-if-error: a stale entry may stand in for a failing or slow handler.
        Some((entry, past)) => {
            let call = inner.call(req);
            let ran = match sh.handler_timeout {
                Some(t) => tokio::time::timeout(t, call).await.ok(),
                None => Some(call.await),
            };
            match ran {
                Some(Ok(res)) if !res.status().is_server_error() => res,
                _ => {
                    counters.stale_if_error();
                    let entry = Arc::new(entry);
                    let res = entry_response(
                        &sh,
                        &entry,
                        is_head,
                        Outcome::Hit {
                            ttl: -secs_ceil(past),
                            detail: Some("stale-if-error"),
                        },
                        now_ms(),
                    );
                    if let Some(l) = lead {
                        l.land(Landing::Entry(entry, (Some(clock), epoch)));
                    }
                    lock.release().await;
                    return Ok(res);
                }
            }
        }
        None => inner.call(req).await?,
    };
    let mut res = res;
    if sh.tag_headers {
        take_header_tags(res.headers_mut(), &mut tags);
    }
    let fill = Fill { tags, ..fill };
    let unshareable = |lead: Option<Lead>| {
        if let Some(l) = lead {
            l.land(Landing::Unshareable);
        }
    };
    if is_head {
        // A HEAD response has no body to store; the GET that follows will fill the entry.
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Miss {
                stored: false,
                detail: Some("head"),
            },
        ));
    }
    if let Some(reason) = policy::response_unstorable(&res, &sh.statuses).or_else(|| {
        (sh.respect_cache_control
            && conditional::response_ttl(res.headers()) == Some(Duration::ZERO))
        .then_some("cache-control")
    }) {
        unshareable(lead);
        lock.release().await;
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Miss {
                stored: false,
                detail: Some(reason),
            },
        ));
    }
    // Followers joined on this request's key: they may take the entry only if it is stored under
    // that key for them too (same vary headers as the lookup went by).
    let vary = Vary::of(res.headers());
    let shareable = fill.shares(&vary);
    let (parts, body) = res.into_parts();
    let hint = body.size_hint();
    let max = sh.max_body_bytes as u64;
    if hint.lower() > max {
        unshareable(lead);
        lock.release().await;
        return Ok(forward_outcome(
            &sh,
            Response::from_parts(parts, CacheBody::stream(body)),
            Outcome::Miss {
                stored: false,
                detail: Some("too-large"),
            },
        ));
    }
    if hint.exact().is_some() {
        // Known length within the limit (axum's usual bodies): collect, store, then answer, so
        // `Cache-Status` can say whether it was stored and the next request hits.
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                unshareable(lead);
                lock.release().await;
                let res = Response::from_parts(parts, CacheBody::failed(e));
                return Ok(forward_outcome(
                    &sh,
                    res,
                    Outcome::Miss {
                        stored: false,
                        detail: detail.or(Some("body-error")),
                    },
                ));
            }
        };
        let mut parts = parts;
        let entry = fill.entry(parts.status, &mut parts.headers, bytes.clone());
        let stored = fill.store(&entry, &vary).await;
        lock.release().await;
        if let Some(l) = lead {
            l.land(match shareable {
                true => Landing::Entry(Arc::new(entry), fill.stamp()),
                false => Landing::Unshareable,
            });
        }
        let outcome = Outcome::Miss {
            stored: stored == Some(Written::Stored),
            detail: match stored {
                Some(Written::Superseded) => Some("invalidated"),
                None => Some("store-unavailable"),
                Some(Written::Stored) => None,
            },
        };
        return Ok(forward_outcome(
            &sh,
            Response::from_parts(parts, CacheBody::full(bytes)),
            outcome,
        ));
    }
    // Unknown length: stream it through and store a copy once it completes within the limit.
    // Followers wait for the landing at the end; if the body is dropped or too large, dropping
    // the lead releases them.
    let status = parts.status;
    let mut headers = parts.headers.clone();
    let tee = Tee::new(
        sh.max_body_bytes,
        Box::new(move |bytes| {
            tokio::spawn(async move {
                let entry = fill.entry(status, &mut headers, bytes);
                fill.store(&entry, &vary).await;
                lock.release().await;
                if let Some(l) = lead {
                    l.land(match shareable {
                        true => Landing::Entry(Arc::new(entry), fill.stamp()),
                        false => Landing::Unshareable,
                    });
                }
            });
        }),
    );
    let res = Response::from_parts(parts, CacheBody::tee(body, tee));
    Ok(forward_outcome(
        &sh,
        res,
        Outcome::Miss {
            stored: false,
            detail,
        },
    ))
}

/// The whole body if it completes without error, trailers, or growing past `max`.
async fn collect_limited<B: Body<Data = Bytes>>(
    mut body: Pin<Box<B>>,
    max: usize,
) -> Option<Bytes> {
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let data = frame.ok()?.into_data().ok()?;
        len += data.len();
        if len > max {
            return None;
        }
        chunks.push(data);
    }
    Some(if chunks.len() == 1 {
        chunks.pop().unwrap_or_default()
    } else {
        chunks.concat().into()
    })
}

fn secs_ceil(d: Duration) -> i64 {
    d.as_millis().div_ceil(1000).max(1) as i64
}

fn random_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// What a lookup through a possible variant marker found.
struct Resolved {
    /// The entry for this request (the variant's, when `base` holds a marker), with the clock of
    /// the first read: the earlier clock guards the fill that follows more strictly.
    lookup: Lookup,
    /// Where the entry lives: `base`, or the variant key.
    key: String,
    /// The marker found at `base`, if any.
    marker: Option<Marker>,
}

/// Reads `base`; when it holds a variant marker, reads the variant `headers` select (a second
/// round trip). `touch`: through the route's eviction ranking (the request's own lookup).
async fn resolve(
    sh: &Shared,
    base: &str,
    headers: &HeaderMap,
    touch: bool,
) -> Result<Resolved, StoreError> {
    let read = |key: String| async move {
        match touch {
            true => crate::eviction::read(&sh.cache, sh.eviction.as_deref(), &key).await,
            false => sh.cache.read(&key).await,
        }
        .map(|l| (l, key))
    };
    let (first, base) = read(base.to_owned()).await?;
    let Some(marker) = first.value.as_ref().and_then(Marker::decode) else {
        return Ok(Resolved {
            lookup: first,
            key: base,
            marker: None,
        });
    };
    let vkey = marker.variant_key(&base, headers, &sh.encodings);
    let (second, key) = read(vkey).await?;
    Ok(Resolved {
        lookup: Lookup {
            value: second.value,
            clock: first.clock,
        },
        key,
        marker: Some(marker),
    })
}

/// The entry `headers` select at `base` if the store has it and it is fresh, and where it lives.
async fn fresh_entry(sh: &Shared, base: &str, headers: &HeaderMap) -> Option<(Entry, String)> {
    let r = resolve(sh, base, headers, false).await.ok()?;
    let entry = decode_for(sh, &r.lookup.value?).ok()?;
    matches!(entry.freshness(now_ms()), Freshness::Fresh(_)).then_some((entry, r.key))
}

/// Decodes a stored value for this route: undecodable values and entries this route's own
/// fills cannot produce are both errors (a miss).
fn decode_for(sh: &Shared, raw: &Bytes) -> Result<Entry, crate::entry::DecodeError> {
    Entry::decode(raw).and_then(|e| plausible(sh, e))
}

/// Refuses decoded entries that this route's own fills cannot produce.
fn plausible(sh: &Shared, e: Entry) -> Result<Entry, crate::entry::DecodeError> {
    let status_ok = StatusCode::from_u16(e.status).is_ok_and(|s| sh.statuses.contains(&s));
    if status_ok && !e.headers.iter().any(|(n, _)| n == header::SET_COOKIE) {
        Ok(e)
    } else {
        Err(crate::entry::DecodeError::foreign())
    }
}

/// What waiting on another instance's fill lock ended with.
enum Waited {
    /// The holder stored a fresh entry (for this request's variant), at this key.
    Entry(Entry, String),
    /// The holder's lease expired without an entry (it died): this request took the lock.
    Locked,
    /// Neither within `lease`: run the handler without the lock.
    TimedOut,
}

/// Polls the store until `key` holds a fresh entry, or the lock frees up (the holder's lease
/// expired), or `lease` passes (another instance holds the fill lock and runs the handler).
/// `base` is the route's key, `key` the lock's (the variant's, when known).
async fn wait_for_entry(
    sh: &Shared,
    (base, key): (&str, &str),
    headers: &HeaderMap,
    lease: Duration,
    token: &str,
) -> Waited {
    let cache = &sh.cache;
    let deadline = Instant::now() + lease;
    let mut pause = Duration::from_millis(5);
    while Instant::now() + pause < deadline {
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_millis(100));
        if let Some((e, from)) = fresh_entry(sh, base, headers).await {
            return Waited::Entry(e, from);
        }
        if let Ok(true) = cache.try_lock(key, token, lease).await {
            return Waited::Locked;
        }
    }
    Waited::TimedOut
}

/// The fill lock held by this request, released when the fill is stored (or on drop).
struct LockGuard {
    cache: Cache,
    key: String,
    token: Option<String>,
}

impl LockGuard {
    fn none(cache: &Cache, key: &str) -> Self {
        Self {
            cache: cache.clone(),
            key: key.to_owned(),
            token: None,
        }
    }

    async fn release(mut self) {
        if let Some(t) = self.token.take() {
            let _ = self.cache.unlock(&self.key, &t).await;
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
                rt.spawn(async move {
                    let _ = cache.unlock(&key, &t).await;
                });
            }
        }
    }
}

/// Refreshes an entry in the background (stale-while-revalidate, early refresh): at most one
/// refresh per key in this process (and, with a fill lock, across instances), bounded by the
/// refresh timeout. A refresh that fails leaves the old entry in place.
fn spawn_refresh<S, ReqB, ResB>(
    sh: Arc<Shared>,
    fill: Fill,
    mut inner: S,
    req: Request<ReqB>,
    seen_stored_at: u64,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    let Some(lead) = sh.cache.flights().try_lead(&fill.key) else {
        return;
    };
    tokio::spawn(async move {
        let mut lock = LockGuard::none(&sh.cache, &fill.key);
        if let Some(lease) = sh.lock_lease {
            let token = random_token();
            if !matches!(sh.cache.try_lock(&fill.key, &token, lease).await, Ok(true)) {
                return; // another instance is refreshing it
            }
            lock.token = Some(token);
        }
        // Double-check: a refresh that landed between the read that triggered this one and
        // taking the lead has already replaced the entry this request saw.
        let found = resolve(&sh, &fill.variant.base, &fill.variant.headers, false).await;
        if let Some((raw, true)) = found
            .ok()
            .and_then(|r| Some((r.lookup.value?, r.key == fill.key)))
        {
            if let Ok(e) = decode_for(&sh, &raw) {
                if e.stored_at_ms != seen_stored_at {
                    lead.land(match e.freshness(now_ms()) {
                        Freshness::Fresh(_) => Landing::Entry(Arc::new(e), fill.stamp()),
                        _ => Landing::Unshareable,
                    });
                    lock.release().await;
                    return;
                }
            }
        }
        let mut fill = fill;
        let work = async {
            let mut res = inner.call(req).await.ok()?;
            if sh.tag_headers {
                take_header_tags(res.headers_mut(), &mut fill.tags);
            }
            if policy::response_unstorable(&res, &sh.statuses).is_some() {
                return None;
            }
            let vary = Vary::of(res.headers());
            let (parts, body) = res.into_parts();
            let bytes = collect_limited(Box::pin(body), sh.max_body_bytes).await?;
            let mut parts = parts;
            let entry = fill.entry(parts.status, &mut parts.headers, bytes);
            let stored = fill.store(&entry, &vary).await == Some(Written::Stored);
            stored.then_some((entry, fill.shares(&vary)))
        };
        match tokio::time::timeout(sh.refresh_timeout, work).await {
            Ok(Some((entry, shareable))) => {
                sh.cache.counters().refreshes();
                lead.land(match shareable {
                    true => Landing::Entry(Arc::new(entry), fill.stamp()),
                    false => Landing::Unshareable,
                });
            }
            _ => {
                sh.cache.counters().refresh_failures();
                tracing::debug!(namespace = %sh.cache.namespace(), "background refresh failed; the stale entry stays");
                lead.land(Landing::Unshareable);
            }
        }
        lock.release().await;
    });
}

/// Which variant of the route's key a fill is for.
struct Variant {
    /// The route's key (where the marker, or a response without `Vary`, lives).
    base: String,
    /// The marker the lookup found there, if any.
    marker: Option<Marker>,
    /// The request's headers, to key the variant once the response names its vary headers.
    headers: HeaderMap,
}

impl Variant {
    fn new(base: String, marker: Option<Marker>, headers: &HeaderMap) -> Self {
        Self {
            base,
            marker,
            headers: headers.clone(),
        }
    }
}

/// A fill in progress: what is needed to store the handler's response once it is complete.
struct Fill {
    cache: Cache,
    /// The key the lookup read the entry at (the variant's when a marker was found): the
    /// single-flight and fill-lock key.
    key: String,
    variant: Variant,
    encodings: Arc<[String]>,
    tags: Vec<String>,
    ttl: Duration,
    stale_for: Duration,
    since: u64,
    epoch: u64,
    started: Instant,
    respect_cache_control: bool,
    eviction: Option<Arc<crate::eviction::RouteEviction>>,
}

impl Fill {
    fn new(
        sh: &Shared,
        key: String,
        tags: Vec<String>,
        (since, epoch): (u64, u64),
        variant: Variant,
    ) -> Self {
        let ttl = if sh.ttl_jitter > 0.0 {
            // Only ever shorten: an entry must not outlive the freshness the route promises.
            sh.ttl.mul_f64(1.0 - sh.ttl_jitter * fastrand::f64())
        } else {
            sh.ttl
        };
        Self {
            cache: sh.cache.clone(),
            key,
            variant,
            encodings: sh.encodings.clone(),
            tags,
            ttl,
            stale_for: sh.swr.max(sh.sie),
            since,
            epoch,
            started: Instant::now(),
            respect_cache_control: sh.respect_cache_control,
            eviction: sh.eviction.clone(),
        }
    }

    fn stamp(&self) -> crate::flight::Stamp {
        (Some(self.since), self.epoch)
    }

    /// The entry for a response; adds a strong content-hash `ETag` to `headers` when the
    /// handler set none, so clients can revalidate (`If-None-Match` → 304).
    fn entry(&self, status: StatusCode, headers: &mut http::HeaderMap, body: Bytes) -> Entry {
        if !headers.contains_key(header::ETAG) {
            headers.insert(header::ETAG, conditional::etag_for(&body));
        }
        let ttl = match self.respect_cache_control {
            true => conditional::response_ttl(headers).unwrap_or(self.ttl),
            false => self.ttl,
        };
        Entry::from_response(status, headers, body, now_ms(), ttl, self.stale_for)
            .with_compute_time(self.started.elapsed())
    }

    /// Whether requests that joined this fill's key (single-flight followers) may take its
    /// entry: only if the response varies on exactly what the lookup keyed by.
    fn shares(&self, vary: &Vary) -> bool {
        self.variant.marker.as_ref().map(|m| &m.names[..]) == vary.names()
    }

    /// Stores the entry; None when the store failed or the fill outlived the invalidation
    /// window (its guard can no longer be checked, so it is dropped).
    ///
    /// A response with `Vary` first writes the variant marker at the route's key (reusing the
    /// generation found there when the header list matches), guarded like any fill, and only
    /// then the variant: a fill that read the key before an invalidation cannot restore the old
    /// generation, and a variant written after an invalidation is unreachable.
    async fn store(&self, entry: &Entry, vary: &Vary) -> Option<Written> {
        if self.started.elapsed() >= self.cache.key_space().tombstone_ttl() {
            tracing::debug!("fill took longer than the invalidation window; not stored");
            return None;
        }
        let base = &self.variant.base;
        let Some(names) = vary.names() else {
            return self.put(base, entry, self.since).await;
        };
        // The marker outlives the variants written under it (a shorter-lived marker only costs
        // hits: its variants become unreachable).
        let ttl = entry
            .store_ttl(now_ms())
            .max(self.ttl.saturating_add(self.stale_for));
        let mut marker = match &self.variant.marker {
            // Reusing a generation is guarded by the clock that generation began at.
            Some(m) if m.names == names => m.clone(),
            _ => Marker::new(names.to_vec(), self.since),
        };
        let mut written = self
            .put(base, &marker.entry(ttl)?, marker.since.min(self.since))
            .await?;
        if written == Written::Superseded && marker.since < self.since {
            // Something covering the key was invalidated since the generation began, though
            // not since this fill's read: start a new generation (its variants are all new).
            marker = Marker::new(names.to_vec(), self.since);
            written = self.put(base, &marker.entry(ttl)?, self.since).await?;
        }
        if written != Written::Stored {
            return Some(written);
        }
        let key = marker.variant_key(base, &self.variant.headers, &self.encodings);
        self.put(&key, entry, self.since).await
    }

    /// Encodes and writes one entry at `key` with the fill's tags, guarded by clock `since`.
    async fn put(&self, key: &str, entry: &Entry, since: u64) -> Option<Written> {
        let value = match entry.encode() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "response cannot be encoded; not stored");
                return None;
            }
        };
        crate::eviction::write(
            &self.cache,
            self.eviction.as_deref(),
            Write {
                key,
                value,
                ttl: entry.store_ttl(now_ms()),
                tags: &self.tags,
                since: Some(since),
            },
        )
        .await
        .ok()
    }
}

/// Moves tags from `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated) into
/// `tags`, removing the headers so they never reach the client.
fn take_header_tags(headers: &mut http::HeaderMap, tags: &mut Vec<String>) {
    for (name, sep) in [("surrogate-key", ' '), ("cache-tag", ',')] {
        if let http::header::Entry::Occupied(e) = headers.entry(name) {
            for v in e.remove_entry_mult().1 {
                if let Ok(v) = v.to_str() {
                    tags.extend(
                        v.split(sep)
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
        }
    }
    tags.sort_unstable();
    tags.dedup();
}

fn entry_response<B: Body>(
    sh: &Shared,
    entry: &Entry,
    is_head: bool,
    outcome: Outcome,
    now: u64,
) -> Response<CacheBody<B>> {
    let age = entry.age(now).as_secs();
    let len = entry.body.len();
    let mut res = Response::new(if is_head {
        CacheBody::empty()
    } else {
        CacheBody::full(entry.body.clone())
    });
    *res.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let headers = res.headers_mut();
    headers.reserve(entry.headers.len() + 3);
    for (name, value) in &entry.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::AGE, HeaderValue::from(age));
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    forward_outcome(sh, res, outcome)
}
