use crate::key::{KeyContext, KeyError, KeyStrategy, KeyTemplate};
use crate::Cache;
use http::{Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The service [`InvalidateLayer`](super::InvalidateLayer) wraps around a route.
#[derive(Clone, Debug)]
pub struct InvalidateService<S> {
    inner: S,
    plan: Arc<Plan>,
}

pub(crate) struct Plan {
    pub(crate) cache: Cache,
    pub(crate) keys: Vec<KeyTemplate>,
    pub(crate) patterns: Vec<KeyTemplate>,
    pub(crate) tags: Vec<KeyTemplate>,
    pub(crate) when: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
    pub(crate) error_reported: AtomicBool,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("keys", &self.keys)
            .field("patterns", &self.patterns)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// The invalidations one request asks for, rendered from its path, query and headers.
struct Rendered {
    keys: Vec<String>,
    patterns: Vec<String>,
    tags: Vec<String>,
}

impl Plan {
    fn render(&self, ctx: &KeyContext<'_>) -> Result<Rendered, KeyError> {
        let all = |ts: &[KeyTemplate]| ts.iter().map(|t| t.key(ctx)).collect::<Result<Vec<_>, _>>();
        Ok(Rendered {
            keys: all(&self.keys)?,
            patterns: all(&self.patterns)?,
            tags: all(&self.tags)?,
        })
    }

    fn needs_path_params(&self) -> bool {
        self.keys
            .iter()
            .chain(&self.patterns)
            .chain(&self.tags)
            .any(|t| t.needs_path_params())
    }

    async fn run(&self, r: Rendered) {
        let invalidation = crate::Invalidation::new()
            .keys(r.keys)
            .tags(r.tags)
            .patterns(r.patterns);
        if let Err(e) = self.cache.invalidate(invalidation).await {
            tracing::warn!(namespace = %self.cache.namespace(), error = %e, "invalidation not finished; owed to the store (queued for retry, or still running past invalidation_wait)");
        }
    }
}

impl<S> InvalidateService<S> {
    pub(crate) fn new(inner: S, plan: Arc<Plan>) -> Self {
        Self { inner, plan }
    }

    inner_service_accessors!();
}

/// The response future of [`InvalidateService`]: the handler, then the invalidation.
pub struct InvalidateFuture<T> {
    inner: Pin<Box<dyn Future<Output = T> + Send>>,
}

impl<T> Future for InvalidateFuture<T> {
    type Output = T;
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> std::fmt::Debug for InvalidateFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvalidateFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for InvalidateService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = InvalidateFuture<Result<Response<ResB>, S::Error>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let mut inner = crate::macros::take_ready(&mut self.inner);
        let plan = self.plan.clone();
        InvalidateFuture {
            inner: Box::pin(async move {
                // Render before the handler consumes the request.
                let (mut parts, body) = req.into_parts();
                let params = if plan.needs_path_params() {
                    crate::key::path_params(&mut parts)
                } else {
                    crate::key::PathParams::None
                };
                let rendered = plan.render(&KeyContext::new(&parts).with_params(params));
                let res = inner.call(Request::from_parts(parts, body)).await?;
                if (plan.when)(res.status()) {
                    match rendered {
                        Ok(r) => plan.run(r).await,
                        Err(e) => {
                            if !plan.error_reported.swap(true, Ordering::Relaxed) {
                                tracing::error!(namespace = %plan.cache.namespace(), error = %e, "invalidation template does not fit this route; nothing invalidated");
                            }
                        }
                    }
                }
                Ok(res)
            }),
        }
    }
}
