//! The request body the service inside [`CacheLayer`](super::CacheLayer) receives, and the
//! buffering behind [`key_body`](super::CacheLayer::key_body).

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The request body handed to the service inside a [`CacheLayer`](super::CacheLayer): the
    /// client's body as it is or, when [`key_body`](super::CacheLayer::key_body) read some of
    /// it to key the request, the frames it read followed by the rest of the stream (and the
    /// error, if reading failed). Either way the service sees exactly the client's body.
    ///
    /// axum routes accept it as they accept any body.
    pub struct CacheRequestBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Passthrough { #[pin] inner: B },
        Replay {
            read: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> CacheRequestBody<B> {
    /// The client's body, untouched.
    pub(crate) fn new(inner: B) -> Self {
        Self {
            kind: Kind::Passthrough { inner },
        }
    }

    fn replay(
        read: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        Self {
            kind: Kind::Replay { read, error, rest },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CacheRequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { inner } => inner.poll_frame(cx),
            KindProj::Replay { read, error, rest } => {
                if let Some(f) = read.pop_front() {
                    return Poll::Ready(Some(Ok(f)));
                }
                if let Some(e) = error.take() {
                    *rest = None;
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(r) => {
                        let polled = r.as_mut().poll_frame(cx);
                        if let Poll::Ready(None) = polled {
                            *rest = None;
                        }
                        polled
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { inner } => inner.is_end_stream(),
            Kind::Replay { read, error, rest } => {
                read.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { inner } => inner.size_hint(),
            Kind::Replay { read, rest, .. } => {
                let buffered: u64 = read
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let mut hint = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
                hint.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

impl<B: Body> std::fmt::Debug for CacheRequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRequestBody").finish_non_exhaustive()
    }
}

/// What reading a request body to key it produced.
pub(crate) enum Buffered<B: Body> {
    /// The whole body, within the bound, and the same body to hand on.
    Complete(Bytes, CacheRequestBody<B>),
    /// Not keyable (over the bound, trailers, a read error: the detail says which); the body to
    /// hand on still yields everything the client sent.
    Unkeyable(&'static str, CacheRequestBody<B>),
}

/// Reads `body` up to `max` bytes.
pub(crate) async fn buffer<B: Body<Data = Bytes>>(body: B, max: usize) -> Buffered<B> {
    if body.size_hint().lower() > max as u64 {
        // Declared too large (Content-Length): not read at all.
        return Buffered::Unkeyable("body-too-large", CacheRequestBody::new(body));
    }
    let mut body = Box::pin(body);
    let mut read = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    len += data.len();
                    read.push_back(frame);
                    if len > max {
                        let b = CacheRequestBody::replay(read, None, Some(body));
                        return Buffered::Unkeyable("body-too-large", b);
                    }
                }
                None => {
                    // Trailers: keyed by neither the body hash nor anything else.
                    read.push_back(frame);
                    let b = CacheRequestBody::replay(read, None, Some(body));
                    return Buffered::Unkeyable("body-trailers", b);
                }
            },
            Some(Err(e)) => {
                let b = CacheRequestBody::replay(read, Some(e), None);
                return Buffered::Unkeyable("body-error", b);
            }
        }
    }
    let mut bytes = BytesMut::with_capacity(len);
    for f in &read {
        if let Some(d) = f.data_ref() {
            bytes.extend_from_slice(d);
        }
    }
    Buffered::Complete(bytes.freeze(), CacheRequestBody::replay(read, None, None))
}

/// The key suffix for a request body: `#body:` and 128 bits of SHA-256 over the request's
/// `Content-Type` (trimmed, lower-cased) and the body. Appended with
/// [`with_suffix`](crate::key::with_suffix), which bounds the whole key.
pub(crate) fn body_suffix(content_type: Option<&http::HeaderValue>, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let mut h = Sha256::new();
    match content_type {
        Some(ct) => {
            let ct = ct.as_bytes().trim_ascii().to_ascii_lowercase();
            h.update([1]);
            h.update((ct.len() as u32).to_be_bytes());
            h.update(&ct);
        }
        None => h.update([0]),
    }
    h.update(body);
    let digest = h.finalize();
    let mut out = String::with_capacity(6 + 32);
    out.push_str("#body:");
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}
