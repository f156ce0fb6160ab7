//! Body wrappers that pass every frame through unchanged while letting the [`Call`] see it.

use crate::sources::cri_proxy::call::{Call, End, PullCapture};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

/// The request body forwarded to the runtime; tees PullImage bytes into the capture.
pub struct RequestBody {
    inner: Incoming,
    capture: Option<Arc<Mutex<PullCapture>>>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, capture: Option<Arc<Mutex<PullCapture>>>) -> Self {
        Self { inner, capture }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let res = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(capture) = &this.capture {
            let mut c = capture.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(data) = res
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .and_then(Frame::data_ref)
            {
                c.push(data);
            }
            if res.is_none() || this.inner.is_end_stream() {
                c.complete();
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body returned to the caller: the runtime's, observed, or empty for a
/// trailers-only answer of pullwatch's own.
pub struct ResponseBody {
    inner: Option<Incoming>,
    call: Option<Call>,
}

impl ResponseBody {
    pub(crate) fn upstream(inner: Incoming, call: Call) -> Self {
        Self {
            inner: Some(inner),
            call: (!call.is_finished()).then_some(call),
        }
    }
}

impl Default for ResponseBody {
    /// An empty body (trailers-only responses).
    fn default() -> Self {
        Self {
            inner: None,
            call: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let res = ready!(Pin::new(&mut *inner).poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &res {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        call.on_data(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        call.on_trailers(trailers);
                    }
                    if inner.is_end_stream() {
                        call.finish(End::Completed);
                    }
                }
                Some(Err(e)) => call.finish(End::RuntimeUnavailable(format!(
                    "runtime connection failed mid-response: {e}"
                ))),
                None => call.finish(End::Completed),
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
