use super::body::{CacheBody, Tee};
use super::policy;
use super::status::Outcome;
use crate::entry::{now_ms, Entry, Freshness};
use crate::key::{KeyContext, KeyStrategy};
use crate::store::{Write, Written};
use crate::Cache;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
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
    pub(crate) key: Arc<dyn KeyStrategy>,
    pub(crate) methods: Vec<Method>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_body_bytes: usize,
    pub(crate) name: Arc<str>,
    pub(crate) status_header: bool,
    pub(crate) keyed_by_caller: bool,
    pub(crate) key_error_reported: AtomicBool,
    pub(crate) tags: Vec<crate::key::KeyTemplate>,
    pub(crate) tag_headers: bool,
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
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
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
        let span = tracing::debug_span!(
            "cache",
            namespace = %shared.cache.namespace(),
            method = %req.method(),
            outcome = tracing::field::Empty,
            key_hash = tracing::field::Empty,
        );
        ResponseFuture {
            inner: Box::pin(handle(shared, inner, req).instrument(span)),
        }
    }
}

fn forward_outcome<B: Body>(
    sh: &Shared,
    mut res: Response<CacheBody<B>>,
    outcome: Outcome,
) -> Response<CacheBody<B>> {
    tracing::Span::current().record("outcome", outcome.label());
    if sh.status_header {
        res.headers_mut()
            .insert("cache-status", outcome.header(&sh.name));
    }
    res
}

async fn handle<S, ReqB, ResB>(
    sh: Arc<Shared>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    let counters = sh.cache.counters();
    if !sh.methods.contains(req.method()) {
        let res = inner.call(req).await?;
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Method,
        ));
    }
    if let Some(reason) = policy::request_bypass(&req, sh.keyed_by_caller) {
        counters.bypass();
        let res = inner.call(req).await?;
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Bypass(reason),
        ));
    }
    let is_head = req.method() == Method::HEAD;

    let (mut parts, body) = req.into_parts();
    let params = if sh.key.needs_path_params() {
        crate::key::path_params(&mut parts)
    } else {
        Vec::new()
    };
    let ctx = KeyContext::new(&parts).with_path_params(params);
    let key_and_tags = sh.key.key(&ctx).and_then(|k| {
        let tags = sh
            .tags
            .iter()
            .map(|t| t.key(&ctx))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((k, tags))
    });
    drop(ctx);
    let (key, mut tags) = match key_and_tags {
        Ok(kt) => kt,
        Err(e) => {
            if matches!(e, crate::key::KeyError::MissingPathParam(_))
                && !sh.key_error_reported.swap(true, Ordering::Relaxed)
            {
                tracing::error!(namespace = %sh.cache.namespace(), error = %e, "cache key configuration error; requests on this route are served uncached");
            }
            counters.bypass();
            let res = inner.call(Request::from_parts(parts, body)).await?;
            let detail = match e {
                crate::key::KeyError::MissingPathParam(_) => "key-error",
                crate::key::KeyError::Declined => "key-declined",
            };
            return Ok(forward_outcome(
                &sh,
                res.map(CacheBody::stream),
                Outcome::Bypass(detail),
            ));
        }
    };
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("key_hash", &crate::key::short_hash(key.as_bytes())[..12]);
    }
    let req = Request::from_parts(parts, body);

    let lookup = match sh.cache.read(&key).await {
        Ok(l) => l,
        Err(_) => {
            counters.unavailable();
            let res = inner.call(req).await?;
            return Ok(forward_outcome(
                &sh,
                res.map(CacheBody::stream),
                Outcome::StoreUnavailable,
            ));
        }
    };
    let mut detail = None;
    if let Some(raw) = &lookup.value {
        match Entry::decode(raw) {
            Ok(entry) => {
                let now = now_ms();
                if let Freshness::Fresh(left) = entry.freshness(now) {
                    counters.hit();
                    return Ok(hit_response(&sh, entry, is_head, left, now));
                }
            }
            Err(e) => {
                counters.decode_failure();
                detail = Some("undecodable-entry");
                tracing::warn!(namespace = %sh.cache.namespace(), error = %e, "cached value does not decode; treating as a miss and overwriting");
            }
        }
    }
    counters.miss();

    let started = Instant::now();
    let mut res = inner.call(req).await?;
    if sh.tag_headers {
        take_header_tags(res.headers_mut(), &mut tags);
    }
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
    if let Some(reason) = policy::response_unstorable(&res, &sh.statuses) {
        return Ok(forward_outcome(
            &sh,
            res.map(CacheBody::stream),
            Outcome::Miss {
                stored: false,
                detail: Some(reason),
            },
        ));
    }
    let (parts, body) = res.into_parts();
    let hint = body.size_hint();
    let max = sh.max_body_bytes as u64;
    if hint.lower() > max {
        return Ok(forward_outcome(
            &sh,
            Response::from_parts(parts, CacheBody::stream(body)),
            Outcome::Miss {
                stored: false,
                detail: Some("too-large"),
            },
        ));
    }
    let fill = Fill {
        cache: sh.cache.clone(),
        key,
        tags,
        ttl: sh.ttl,
        since: lookup.clock,
        started,
    };
    if hint.exact().is_some() {
        // Known length within the limit (axum's usual bodies): collect, store, then answer, so
        // `Cache-Status` can say whether it was stored and the next request hits.
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
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
        let stored = fill
            .store(parts.status, &parts.headers, bytes.clone())
            .await;
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
    let status = parts.status;
    let headers = parts.headers.clone();
    let tee = Tee::new(
        sh.max_body_bytes,
        Box::new(move |bytes| {
            tokio::spawn(async move {
                fill.store(status, &headers, bytes).await;
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

/// A fill in progress: what is needed to store the handler's response once it is complete.
struct Fill {
    cache: Cache,
    key: String,
    tags: Vec<String>,
    ttl: Duration,
    since: u64,
    started: Instant,
}

impl Fill {
    /// Stores the response; None when the store failed or the fill outlived the invalidation
    /// window (its guard can no longer be checked, so it is dropped).
    async fn store(
        self,
        status: StatusCode,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Option<Written> {
        if self.started.elapsed() >= self.cache.key_space().tombstone_ttl() {
            tracing::debug!("fill took longer than the invalidation window; not stored");
            return None;
        }
        let now = now_ms();
        let entry = Entry::from_response(status, headers, body, now, self.ttl, Duration::ZERO);
        let value = match entry.encode() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "response cannot be encoded; not stored");
                return None;
            }
        };
        self.cache
            .write(Write {
                key: &self.key,
                value,
                ttl: entry.store_ttl(now),
                tags: &self.tags,
                since: Some(self.since),
            })
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

fn hit_response<B: Body>(
    sh: &Shared,
    entry: Entry,
    is_head: bool,
    left: Duration,
    now: u64,
) -> Response<CacheBody<B>> {
    let age = entry.age(now).as_secs();
    let len = entry.body.len();
    let mut res = Response::new(if is_head {
        CacheBody::empty()
    } else {
        CacheBody::full(entry.body)
    });
    *res.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let headers = res.headers_mut();
    headers.reserve(entry.headers.len() + 3);
    for (name, value) in entry.headers {
        headers.append(name, value);
    }
    headers.insert(header::AGE, HeaderValue::from(age));
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    // Round up so that a hit with 0.4 s left does not say ttl=0.
    let ttl = left.as_millis().div_ceil(1000) as i64;
    forward_outcome(sh, res, Outcome::Hit { ttl })
}
