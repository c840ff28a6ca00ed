//! The response body of [`CacheService`](super::CacheService).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The body of a response that went through [`CacheLayer`](super::CacheLayer): a cached body,
    /// the handler's body untouched, or the handler's body streamed while a copy is kept for the
    /// store.
    pub struct CacheBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Full { data: Option<Bytes> },
        Stream { #[pin] inner: B },
        Tee { #[pin] inner: B, tee: Option<Box<Tee>> },
        Failed { error: Option<B::Error> },
    }
}

/// Collects a streamed body up to a limit, then hands it to `done` if the stream completed.
pub(crate) struct Tee {
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
    /// The body's exact length, when its size hint gave one: the copy is complete once that
    /// much arrived. A server stops polling a body whose `Content-Length` it has written, so
    /// the end of the stream may never be seen.
    expected: Option<u64>,
    done: Option<Box<dyn FnOnce(Bytes) + Send>>,
}

impl Tee {
    pub(crate) fn new(max: usize, done: Box<dyn FnOnce(Bytes) + Send>) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            max,
            expected: None,
            done: Some(done),
        }
    }

    fn finish(mut self) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = Vec::with_capacity(self.len);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                Bytes::from(all)
            }
        };
        if let Some(done) = self.done.take() {
            done(body);
        }
    }
}

impl<B: Body> CacheBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether the whole body is in memory (a cached or collected body).
    pub(crate) fn is_full(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }

    /// The whole body, when it is in memory and not read yet.
    pub(crate) fn full_bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Full { data } => Some(data.clone().unwrap_or_default()),
            _ => None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    pub(crate) fn stream(inner: B) -> Self {
        Self {
            kind: Kind::Stream { inner },
        }
    }

    pub(crate) fn tee(inner: B, mut tee: Tee) -> Self {
        tee.expected = inner.size_hint().exact();
        if tee.expected == Some(0) && inner.is_end_stream() {
            // No body to wait for (a `204`, an empty `200`): nothing will be polled.
            tee.finish();
            return Self::stream(inner);
        }
        Self {
            kind: Kind::Tee {
                inner,
                tee: Some(Box::new(tee)),
            },
        }
    }

    pub(crate) fn failed(error: B::Error) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { inner } => inner.poll_frame(cx),
            KindProj::Failed { error } => Poll::Ready(error.take().map(Err)),
            KindProj::Tee { inner, tee } => {
                let frame = std::task::ready!(inner.poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            let keep = tee.as_mut().is_some_and(|t| t.len + data.len() <= t.max);
                            if keep {
                                if let Some(t) = tee.as_mut() {
                                    t.len += data.len();
                                    t.chunks.push(data.clone());
                                }
                                // The whole known length: complete now, whether or not the
                                // end of the stream is polled.
                                let complete = tee
                                    .as_ref()
                                    .is_some_and(|t| t.expected == Some(t.len as u64));
                                if complete {
                                    if let Some(t) = tee.take() {
                                        t.finish();
                                    }
                                }
                            } else {
                                // Over the limit: the rest streams through, nothing is stored.
                                *tee = None;
                            }
                        } else {
                            // Trailers are not stored, so neither is a body that has them.
                            *tee = None;
                        }
                    }
                    Some(Err(_)) => *tee = None,
                    None => {
                        if let Some(t) = tee.take() {
                            t.finish();
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Stream { inner } => inner.is_end_stream(),
            // Report the end only through poll_frame, so the tee sees it.
            Kind::Tee { inner, tee } => tee.is_none() && inner.is_end_stream(),
            Kind::Failed { error } => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { inner } | Kind::Tee { inner, .. } => inner.size_hint(),
            Kind::Failed { .. } => SizeHint::default(),
        }
    }
}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Stream { .. } => "Stream",
            Kind::Tee { .. } => "Tee",
            Kind::Failed { .. } => "Failed",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}
