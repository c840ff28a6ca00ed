//! The bounds the request flow puts on the wrapped service and the bodies, written once: every
//! part of the flow (service, miss, refresh) may move them into a spawned task.

use super::request_body::CacheRequestBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

/// A body the flow can move between tasks: `Bytes` frames, `Send`, a `Send` error.
pub(crate) trait SendBody:
    Body<Data = Bytes, Error: Send + 'static> + Send + 'static
{
}

impl<B> SendBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
}

/// The wrapped service as the flow drives it: it takes the request with its
/// [`CacheRequestBody`] and answers `ResB`; it, its future and its error can move between tasks.
pub(crate) trait Inner<ReqB: SendBody, ResB>:
    Service<
        Request<CacheRequestBody<ReqB>>,
        Response = Response<ResB>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, ReqB: SendBody, ResB> Inner<ReqB, ResB> for S
where
    S: Service<Request<CacheRequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}
