//! [`CacheService`]: the guard clauses that decide whether a request uses the cache, and the
//! flow of one that does (key, lookup, hit or miss).

use super::body::CacheBody;
use super::conditional;
use super::config::RouteConfig;
use super::freshness;
use super::future::{Pass, ResponseFuture};
use super::invalidation::{is_unsafe, Target};
use super::lookup::{decode_for, resolve};
use super::miss::{miss, Missed};
use super::policy;
use super::range;
use super::refresh::{self, Trigger};
use super::request_body::{self, Buffered, CacheRequestBody};
use super::response::{finish, from_entry, Answer};
use super::revalidate;
use crate::entry::{now_ms, Entry, Freshness};
use crate::outcome::Outcome;
use crate::stats::RequestScope;
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
        let pass =
            if !cfg.methods.contains(req.method()) || (keyed_by_body && cfg.key_body.is_none()) {
                // Methods with a body are cached only keyed by it (`key_body`).
                Some(Outcome::Method)
            } else {
                policy::request_bypass(&req, |h| cfg.covers_header(h)).map(Outcome::Bypass)
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
        let fut = async move {
            let conditions = conditional::Conditions::from_headers(req.headers());
            let range = range::Requested::from_request(&cfg, req.method(), req.headers());
            let answer = flow(cfg.clone(), inner, req, keyed_by_body).await?;
            Ok(range.apply(conditions.apply(finish(&cfg, &scope, answer))))
        };
        ResponseFuture::flow(Box::pin(fut.instrument(span)))
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

/// The flow of a request the cache may answer: its key, the lookup, a hit, or a miss.
async fn flow<S, ReqB, ResB>(
    cfg: Arc<RouteConfig>,
    mut inner: S,
    req: Request<ReqB>,
    keyed_by_body: bool,
) -> Result<Answer<ResB>, S::Error>
where
    S: Service<Request<CacheRequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let is_head = req.method() == Method::HEAD;
    let revalidate = policy::request_revalidate(&req);
    let (mut parts, body) = req.into_parts();

    // The one pass-through of the flow: the handler answers, the cache is not used.
    macro_rules! pass {
        ($parts:expr, $body:expr, $outcome:expr) => {{
            let res = Box::pin(inner.call(Request::from_parts($parts, $body))).await?;
            return Ok((res.map(CacheBody::stream), $outcome));
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
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("key_hash", &crate::key::short_hash(key.as_bytes())[..12]);
        if cfg.cache.logs_raw_keys() {
            span.record("key", key.as_str());
        }
    }
    let req = Request::from_parts(parts, body);

    let epoch = cfg.cache.epoch();
    let base = key;
    let (lookup, variant, marker) = match resolve(&cfg, &base, req.headers(), true).await {
        Ok(r) => (r.lookup, r.variant, r.marker),
        Err(_) => {
            let res = Box::pin(inner.call(req)).await?;
            return Ok((res.map(CacheBody::stream), Outcome::StoreUnavailable));
        }
    };
    let mut detail = None;
    let mut stale: Option<(Entry, Duration)> = None;
    // A stored entry a conditional request may revalidate (`revalidate`).
    let mut revalidating: Option<Entry> = None;
    if let Some(raw) = &lookup.value {
        match decode_for(&cfg, raw) {
            // A request for a fresh response skips what was found (its fill is still guarded),
            // but may revalidate it.
            Ok(entry) if revalidate => {
                if revalidate::candidate(&cfg, &entry) {
                    revalidating = Some(entry);
                }
            }
            Ok(entry) => {
                let now = now_ms();
                let (swr, sie) = (
                    freshness::swr_window(&cfg, &entry),
                    freshness::sie_window(&cfg, &entry),
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
                if outcome.is_none() && revalidate::candidate(&cfg, &entry) {
                    revalidating = Some(entry.clone());
                }
                if let Some(outcome) = outcome {
                    let answer = from_entry(&entry, is_head, outcome, now);
                    if refresh {
                        let trigger = Trigger {
                            key: variant.unwrap_or_else(|| base.clone()),
                            base,
                            marker,
                            tags,
                            stamp: (lookup.clock, epoch),
                            seen_stored_at: entry.stored_at_ms,
                            entry: revalidate::candidate(&cfg, &entry).then(|| entry.clone()),
                        };
                        refresh::spawn(cfg.clone(), trigger, inner, req);
                    }
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
    // The miss machinery (single-flight, fill lock, fill, store) lives in its own boxed future,
    // so a hit's future stays small: less to allocate and move per request.
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
    Box::pin(miss(cfg, inner, req, missed)).await
}
