//! [`CacheService`]: the guard clauses that decide whether a request uses the cache, and the
//! flow of one that does (key, lookup, hit or miss).

use super::body::CacheBody;
use super::bounds::{Inner, SendBody};
use super::conditional;
use super::config::RouteConfig;
use super::freshness;
use super::future::{Flow, Pass, ResponseFuture};
use super::invalidation::{is_unsafe, Target};
use super::lookup::{decode_for, resolve, variant, Resolved};
use super::miss::{miss, Missed};
use super::policy;
use super::range;
use super::refresh::{self, Trigger};
use super::request_body::{self, Buffered, CacheRequestBody};
use super::response::{finish, from_entry, Answer};
use super::revalidate;
use super::vary::Marker;
use crate::cache::{Later, ReadNow};
use crate::entry::{now_ms, Entry, Freshness};
use crate::outcome::Outcome;
use crate::stats::RequestScope;
use crate::store::Lookup;
use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body::Body;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;
use tracing::Instrument;

/// The service [`CacheLayer`](super::CacheLayer) wraps around a route.
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    config: Arc<RouteConfig>,
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, config: Arc<RouteConfig>) -> Self {
        Self { inner, config }
    }

    inner_service_accessors!();
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
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let mut inner = crate::macros::take_ready(&mut self.inner);
        let cfg = self.config.clone();
        // The route template, read once per request (never the raw path).
        let route = matched_route(&req);
        let span = tracing::debug_span!(
            "cache",
            namespace = %cfg.cache.namespace(),
            method = %req.method(),
            http.route = route.unwrap_or("unknown"),
            outcome = tracing::field::Empty,
            key_hash = tracing::field::Empty,
            key = tracing::field::Empty,
        );
        let scope = RequestScope::request(route);
        // Guard clauses: a request that cannot use the cache goes to the handler as it is, with
        // the inner service's own future.
        let keyed_by_body = !matches!(*req.method(), Method::GET | Method::HEAD);
        // Whether the request asks for a fresh response (`revalidate`), when it may use the cache.
        let mut revalidate = false;
        let pass =
            if !cfg.methods.contains(req.method()) || (keyed_by_body && cfg.key_body.is_none()) {
                // Methods with a body are cached only keyed by it (`key_body`).
                Some(Outcome::Method)
            } else {
                match policy::request_policy(&req, |h| cfg.covers_header(h)) {
                    Ok(fresh) => {
                        revalidate = fresh;
                        None
                    }
                    Err(reason) => Some(Outcome::Bypass(reason)),
                }
            };
        if pass == Some(Outcome::Method) && cfg.invalidate_unsafe && is_unsafe(req.method()) {
            // An unsafe method: forwarded, then its target (and same-origin `Location`s)
            // invalidated if it succeeded, before the response is returned.
            let target = Target::of(&req);
            let fut = {
                let _enter = span.enter();
                inner.call(req.map(CacheRequestBody::new))
            };
            let fut = async move {
                let res = fut.await?;
                target.invalidate(&cfg, res.status(), res.headers()).await;
                Ok(finish(
                    &cfg,
                    &scope,
                    (res.map(CacheBody::stream), Outcome::Method),
                ))
            };
            return ResponseFuture::flow(Box::pin(fut.instrument(span)));
        }
        if let Some(outcome) = pass {
            let fut = {
                let _enter = span.enter();
                inner.call(req.map(CacheRequestBody::new))
            };
            let pass = Pass {
                cfg,
                scope,
                span,
                outcome,
            };
            return ResponseFuture::passthrough(fut, pass);
        }
        let conditions = conditional::Conditions::from_headers(req.headers());
        let range = range::Requested::from_request(&cfg, req.method(), req.headers());
        // As far as it goes without waiting: an L1 hit, or a hit on a store whose reads complete
        // at once, is answered here, with no future to allocate; anything else continues in one
        // boxed future from where this stopped.
        let begin = {
            let _enter = span.enter();
            match start(&cfg, inner, req, keyed_by_body, revalidate) {
                Ok(answer) => {
                    return ResponseFuture::ready(respond(
                        &cfg,
                        &scope,
                        &conditions,
                        &range,
                        answer,
                    ))
                }
                Err(begin) => begin,
            }
        };
        let fut: Flow<_> = match begin {
            Begin::Request {
                inner,
                req,
                keyed_by_body,
                revalidate,
            } => Box::pin(
                // The flow's future is built inside this one (not passed in built): one copy
                // less of it per request.
                async move {
                    let answer = flow(cfg.clone(), inner, req, keyed_by_body, revalidate).await?;
                    Ok(respond(&cfg, &scope, &conditions, &range, answer))
                }
                .instrument(span),
            ),
            Begin::Resume(r) => Box::pin(
                async move {
                    let answer = resume(cfg.clone(), r).await?;
                    Ok(respond(&cfg, &scope, &conditions, &range, answer))
                }
                .instrument(span),
            ),
        };
        ResponseFuture::flow(fut)
    }
}

/// The response to a looked-up request: its outcome recorded ([`finish`]), then the request's
/// conditions and range applied.
fn respond<B: Body>(
    cfg: &RouteConfig,
    scope: &RequestScope,
    conditions: &conditional::Conditions,
    range: &range::Requested,
    answer: Answer<B>,
) -> Response<CacheBody<B>> {
    range.apply(conditions.apply(finish(cfg, scope, answer)))
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

/// A looked-up request, keyed: what the rest of its flow needs.
struct Keyed<S, ReqB: Body> {
    inner: S,
    req: Request<CacheRequestBody<ReqB>>,
    is_head: bool,
    /// The request asks for a fresh response (`no-cache`, `max-age=0`): what is found is not
    /// served, but may be revalidated.
    revalidate: bool,
    /// The route's key.
    base: String,
    tags: Vec<String>,
    /// This process's epoch, read before the lookup.
    epoch: u64,
}

/// Where the flow continues after [`start`]: at the request ([`flow`]), or where [`start`]
/// stopped ([`resume`]).
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per request; boxing the larger variant would allocate on the paths this serves"
)]
enum Begin<S, ReqB: Body> {
    /// Nothing done yet (the key needs waiting or is derived from the body, the read is ranked,
    /// or the store must be waited for).
    Request {
        inner: S,
        req: Request<ReqB>,
        keyed_by_body: bool,
        revalidate: bool,
    },
    /// Keyed, and further.
    Resume(Resume<S, ReqB>),
}

/// Where [`start`] stopped, keyed.
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per request; boxing the larger variant would allocate on the paths this serves"
)]
enum Resume<S, ReqB: Body> {
    /// The read of the key must be waited for (L1 did not have it).
    Read(Keyed<S, ReqB>, Later),
    /// The key holds a variant marker, whose variant is read next.
    Variant(Keyed<S, ReqB>, Box<(Lookup, Marker)>),
    /// Looked up, not a hit.
    Rest(Rest<S, ReqB>),
}

/// What a lookup that is not a hit leads to.
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per request; boxing the larger variant would allocate on the paths this serves"
)]
enum Rest<S, ReqB: Body> {
    /// The store failed: the handler answers, uncached.
    Unavailable {
        inner: S,
        req: Request<CacheRequestBody<ReqB>>,
    },
    /// A miss (or a stale entry, or one to revalidate): the miss machinery.
    Miss {
        inner: S,
        req: Request<CacheRequestBody<ReqB>>,
        missed: Missed,
    },
}

/// The flow of a request as far as it goes without waiting: the key when a [`KeyStrategy`]
/// derives it, and the lookup when L1 or the store answers at once. `Ok`: a hit, answered;
/// `Err`: where [`flow`] continues.
///
/// [`KeyStrategy`]: crate::key::KeyStrategy
#[allow(
    clippy::result_large_err,
    reason = "the error is where the flow continues, moved once; boxing it would allocate per request"
)]
fn start<S, ReqB, ResB>(
    cfg: &Arc<RouteConfig>,
    inner: S,
    req: Request<ReqB>,
    keyed_by_body: bool,
    revalidate: bool,
) -> Result<Answer<ResB>, Begin<S, ReqB>>
where
    S: Inner<ReqB, ResB>,
    ReqB: SendBody,
    ResB: SendBody,
{
    // A ranked read (eviction) always goes to the store, as does every read of a store without
    // L1 that must be waited for; a keyed body must be buffered first.
    if keyed_by_body || cfg.eviction.is_some() || !cfg.cache.answers_now() {
        return Err(Begin::Request {
            inner,
            req,
            keyed_by_body,
            revalidate,
        });
    }
    let (mut parts, body) = req.into_parts();
    let Some(Ok((key, tags))) = cfg.key.derive_now(&cfg.tags, &mut parts) else {
        // An extractor's key, or a key error (the flow derives it again and reports it).
        return Err(Begin::Request {
            inner,
            req: Request::from_parts(parts, body),
            keyed_by_body,
            revalidate,
        });
    };
    let k = Keyed::new(
        cfg,
        inner,
        Request::from_parts(parts, CacheRequestBody::new(body)),
        revalidate,
        key,
        tags,
    );
    match cfg.cache.read_now(&k.base) {
        ReadNow::Done(Ok(first)) => match Resolved::plain(first) {
            Ok(resolved) => k
                .settle(cfg, Ok(resolved))
                .map_err(|r| Begin::Resume(Resume::Rest(r))),
            Err(found) => Err(Begin::Resume(Resume::Variant(k, Box::new(found)))),
        },
        ReadNow::Done(Err(e)) => k
            .settle(cfg, Err(e))
            .map_err(|r| Begin::Resume(Resume::Rest(r))),
        ReadNow::Later(later) => Err(Begin::Resume(Resume::Read(k, later))),
    }
}

/// The flow of a request the cache may answer: its key, the lookup, a hit, or a miss.
async fn flow<S, ReqB, ResB>(
    cfg: Arc<RouteConfig>,
    mut inner: S,
    req: Request<ReqB>,
    keyed_by_body: bool,
    revalidate: bool,
) -> Result<Answer<ResB>, S::Error>
where
    S: Inner<ReqB, ResB>,
    ReqB: SendBody,
    ResB: SendBody,
{
    let (mut parts, body) = req.into_parts();

    // The one pass-through of the flow: the handler answers, the cache is not used.
    macro_rules! pass {
        ($parts:expr, $body:expr, $outcome:expr) => {{
            let res = Box::pin(inner.call(Request::from_parts($parts, $body))).await;
            return res.map(|res| (res.map(CacheBody::stream), $outcome));
        }};
    }

    // `key_body`: the body (and its Content-Type) becomes part of the key; the handler gets the
    // same body, also when it cannot be keyed (then the request bypasses the cache).
    let (body, body_suffix) = match cfg.key_body {
        Some(max) if keyed_by_body => match Box::pin(request_body::buffer(body, max)).await {
            Buffered::Complete(bytes, body) => {
                let ct = parts.headers.get(header::CONTENT_TYPE);
                (body, Some(request_body::body_suffix(ct, &bytes)))
            }
            Buffered::Unkeyable(detail, body) => pass!(parts, body, Outcome::Bypass(detail)),
        },
        _ => (CacheRequestBody::new(body), None),
    };
    // The key and the tags (tag templates may name path parameters the key does not use).
    let (mut key, tags) = match cfg.key.derive(&cfg.tags, &mut parts).await {
        Ok(kt) => kt,
        Err(e) => {
            if matches!(e, crate::key::KeyError::MissingPathParam(_)) && cfg.first_key_error() {
                tracing::error!(namespace = %cfg.cache.namespace(), error = %e, "cache key configuration error; requests on this route are served uncached");
            }
            pass!(parts, body, Outcome::Bypass(e.detail()))
        }
    };
    if let Some(suffix) = body_suffix {
        key = crate::key::with_suffix(key, &suffix);
    }
    let k = Keyed::new(
        &cfg,
        inner,
        Request::from_parts(parts, body),
        revalidate,
        key,
        tags,
    );
    let resolved = resolve(&cfg, &k.base, k.req.headers(), true).await;
    match k.settle(&cfg, resolved) {
        Ok(answer) => Ok(answer),
        Err(rest) => rest.run(cfg).await,
    }
}

/// The flow from where [`start`] stopped.
async fn resume<S, ReqB, ResB>(
    cfg: Arc<RouteConfig>,
    from: Resume<S, ReqB>,
) -> Result<Answer<ResB>, S::Error>
where
    S: Inner<ReqB, ResB>,
    ReqB: SendBody,
    ResB: SendBody,
{
    let (k, resolved) = match from {
        Resume::Rest(rest) => return rest.run(cfg).await,
        Resume::Read(k, later) => {
            let r = match cfg.cache.read_later(&k.base, later).await {
                Ok(first) => match Resolved::plain(first) {
                    Ok(r) => Ok(r),
                    Err((first, marker)) => {
                        variant(&cfg, &k.base, k.req.headers(), true, first, marker).await
                    }
                },
                Err(e) => Err(e),
            };
            (k, r)
        }
        Resume::Variant(k, found) => {
            let (first, marker) = *found;
            let r = variant(&cfg, &k.base, k.req.headers(), true, first, marker).await;
            (k, r)
        }
    };
    match k.settle(&cfg, resolved) {
        Ok(answer) => Ok(answer),
        Err(rest) => rest.run(cfg).await,
    }
}

impl<S, ReqB: Body> Rest<S, ReqB> {
    /// The rest of the flow after a lookup that is not a hit, in a boxed future of its own (the
    /// miss machinery: single-flight, fill lock, fill, store), so a hit's future stays small:
    /// less to allocate and move per request.
    fn run<ResB>(self, cfg: Arc<RouteConfig>) -> super::future::Flow<Result<Answer<ResB>, S::Error>>
    where
        S: Inner<ReqB, ResB>,
        ReqB: SendBody,
        ResB: SendBody,
    {
        match self {
            Rest::Unavailable { mut inner, req } => Box::pin(async move {
                let res = inner.call(req).await?;
                Ok((res.map(CacheBody::stream), Outcome::StoreUnavailable))
            }),
            Rest::Miss { inner, req, missed } => Box::pin(miss(cfg, inner, req, missed)),
        }
    }
}

impl<S, ReqB: Body> Keyed<S, ReqB> {
    /// The request keyed `key`, recorded on the request span; the epoch read now, before the
    /// lookup.
    fn new(
        cfg: &RouteConfig,
        inner: S,
        req: Request<CacheRequestBody<ReqB>>,
        revalidate: bool,
        key: String,
        tags: Vec<String>,
    ) -> Self {
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("key_hash", &crate::key::short_hash(key.as_bytes())[..12]);
            if cfg.cache.logs_raw_keys() {
                span.record("key", key.as_str());
            }
        }
        Self {
            is_head: req.method() == Method::HEAD,
            revalidate,
            inner,
            req,
            base: key,
            tags,
            epoch: cfg.cache.epoch(),
        }
    }

    /// What the lookup found leads to: `Ok`, a hit, answered (and its refresh started when
    /// one is due); `Err`, the rest of the flow.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the rest of the flow, moved once; boxing it would allocate per miss"
    )]
    fn settle<ResB>(
        self,
        cfg: &Arc<RouteConfig>,
        resolved: Result<Resolved, crate::store::StoreError>,
    ) -> Result<Answer<ResB>, Rest<S, ReqB>>
    where
        S: Inner<ReqB, ResB>,
        ReqB: SendBody,
        ResB: SendBody,
    {
        let Keyed {
            inner,
            req,
            is_head,
            revalidate,
            base,
            tags,
            epoch,
        } = self;
        let Resolved {
            lookup,
            variant,
            marker,
        } = match resolved {
            Ok(r) => r,
            Err(_) => return Err(Rest::Unavailable { inner, req }),
        };
        let mut detail = None;
        let mut stale: Option<(Entry, Duration)> = None;
        // A stored entry a conditional request may revalidate (`revalidate`).
        let mut revalidating: Option<Entry> = None;
        if let Some(raw) = &lookup.value {
            match decode_for(cfg, raw) {
                // A request for a fresh response skips what was found (its fill is still
                // guarded), but may revalidate it.
                Ok(entry) if revalidate => {
                    if revalidate::candidate(cfg, &entry) {
                        revalidating = Some(entry);
                    }
                }
                Ok(entry) => {
                    let now = now_ms();
                    let (swr, sie) = (
                        freshness::swr_window(cfg, &entry),
                        freshness::sie_window(cfg, &entry),
                    );
                    let (outcome, refresh) = match entry.freshness(now) {
                        Freshness::Fresh(left) => (
                            Some(Outcome::fresh(left)),
                            !is_head && cfg.early_refresh_due(&entry, now),
                        ),
                        Freshness::Stale(past) if past < swr => {
                            (Some(Outcome::stale(past, None)), !is_head)
                        }
                        Freshness::Stale(past) if past < sie => {
                            stale = Some((entry.clone(), past));
                            (None, false)
                        }
                        _ => (None, false),
                    };
                    if outcome.is_none() && revalidate::candidate(cfg, &entry) {
                        revalidating = Some(entry.clone());
                    }
                    if let Some(outcome) = outcome {
                        let mut answer = from_entry(&entry, is_head, outcome, now);
                        if !refresh {
                            // The request is done with: its extensions' map (allocated for
                            // axum's own) holds the response's, so `finish` allocates no map.
                            let mut extensions = req.into_parts().0.extensions;
                            extensions.clear();
                            *answer.0.extensions_mut() = extensions;
                            return Ok(answer);
                        }
                        let trigger = Trigger {
                            key: variant.unwrap_or_else(|| base.clone()),
                            base,
                            marker,
                            tags,
                            stamp: (lookup.clock, epoch),
                            seen_stored_at: entry.stored_at_ms,
                            entry: revalidate::candidate(cfg, &entry).then(|| entry.clone()),
                        };
                        refresh::spawn(cfg.clone(), trigger, inner, req);
                        return Ok(answer);
                    }
                }
                // Written by an older version under keys of another meaning: a plain miss.
                Err(e) if e.is_outdated() => {}
                Err(e) => {
                    cfg.cache.counters().decode_failure();
                    detail = Some("undecodable-entry");
                    tracing::warn!(namespace = %cfg.cache.namespace(), error = %e, "cached value does not decode; treating as a miss and overwriting");
                }
            }
        }
        let missed = Missed {
            is_head,
            revalidate,
            key: variant.unwrap_or_else(|| base.clone()),
            base,
            tags,
            marker,
            stamp: (lookup.clock, epoch),
            stale,
            revalidating,
            detail,
        };
        Err(Rest::Miss { inner, req, missed })
    }
}
