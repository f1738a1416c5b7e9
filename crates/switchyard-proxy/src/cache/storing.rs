//! A response body that is kept while it streams to the client: each chunk
//! is passed on at once and held (shared, not copied) until the body ends,
//! when the whole response is stored. A body larger than `max_object`, one
//! that fails, or one the client stops reading is not stored; in every case
//! the claim on the key is released, waking requests that waited for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::store::{FetchGuard, ResponseStore, Stored};
use crate::body::{BodyError, ProxyBody};

/// Where the body goes once it is whole.
pub(super) struct Sink {
    pub(super) store: Arc<ResponseStore>,
    pub(super) key: String,
    /// The request's headers (the variant's `Vary` values).
    pub(super) request: HeaderMap,
    /// The response head, without a body yet.
    pub(super) stored: Stored,
    pub(super) limit: u64,
    pub(super) guard: Option<FetchGuard>,
}

struct Held {
    sink: Sink,
    chunks: Vec<Bytes>,
    size: u64,
}

impl Held {
    /// Stores the response; the claim is released after, so waiters find it.
    fn finish(self) {
        let Held { sink, chunks, size } = self;
        let stored = sink.stored.with_body(super::join(chunks, size as usize));
        sink.store.insert(&sink.key, &sink.request, Arc::new(stored));
        drop(sink.guard);
    }
}

pin_project! {
    pub(super) struct Storing {
        #[pin]
        body: ProxyBody,
        held: Option<Box<Held>>,
    }
}

impl Storing {
    pub(super) fn new(body: ProxyBody, sink: Sink) -> Self {
        Self {
            body,
            held: Some(Box::new(Held {
                sink,
                chunks: Vec::new(),
                size: 0,
            })),
        }
    }
}

impl Body for Storing {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    if let Some(held) = this.held.as_mut() {
                        held.size += data.len() as u64;
                        if held.size > held.sink.limit {
                            *this.held = None;
                        } else {
                            held.chunks.push(data.clone());
                        }
                    }
                }
                // Trailers are not stored: neither is a response with them.
                None => *this.held = None,
            },
            Some(Err(_)) => *this.held = None,
            None => {
                if let Some(held) = this.held.take() {
                    held.finish();
                }
            }
        }
        // hyper may stop polling once the body says it has ended.
        if this.body.is_end_stream() {
            if let Some(held) = this.held.take() {
                held.finish();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
