//! [`ResponseFuture`]: a request that passes through is the inner service's own future (not
//! boxed); a request the cache answers without waiting is ready; any other it looks up runs
//! the flow in one boxed future.

use super::body::CacheBody;
use super::config::RouteConfig;
use super::response::finish;
use crate::outcome::Outcome;
use crate::stats::RequestScope;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The boxed flow of a looked-up request.
pub(crate) type Flow<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`CacheService`](super::CacheService).
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        /// Not eligible for the cache: the inner service's future, finished with this outcome.
        Passthrough {
            #[pin]
            fut: F,
            pass: Option<Pass>,
        },
        /// Looked up: the cache's flow (lookup, hit or miss).
        Flow { fut: Flow<Result<Response<CacheBody<B>>, E>> },
        /// Answered without waiting (an in-process hit).
        Ready { res: Option<Response<CacheBody<B>>> },
    }
}

/// What finishing a passed-through response needs.
pub(crate) struct Pass {
    pub(crate) cfg: Arc<RouteConfig>,
    pub(crate) scope: RequestScope,
    pub(crate) span: tracing::Span,
    pub(crate) outcome: Outcome,
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(fut: F, pass: Pass) -> Self {
        Self {
            kind: Kind::Passthrough {
                fut,
                pass: Some(pass),
            },
        }
    }

    pub(crate) fn ready(res: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }

    pub(crate) fn flow(fut: Flow<Result<Response<CacheBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Flow { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { fut, pass } => {
                let res = match fut.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                let res = res?.map(CacheBody::stream);
                // Polled to completion once: `pass` is there until then.
                Poll::Ready(Ok(match pass.take() {
                    Some(p) => {
                        let _enter = p.span.enter();
                        finish(&p.cfg, &p.scope, (res, p.outcome))
                    }
                    None => res,
                }))
            }
            KindProj::Flow { fut } => fut.as_mut().poll(cx),
            // Cannot fail for any request: `res` is taken only by the poll that returns
            // Ready, and a future is not polled after it completed (the `Future` contract,
            // which hyper, tower and tokio keep; `std::future::Ready` panics the same way).
            KindProj::Ready { res } => Poll::Ready(Ok(res
                .take()
                .expect("a ready response future is polled once"))),
        }
    }
}

impl<F, B: Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
