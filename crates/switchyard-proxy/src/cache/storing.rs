//! Storing a response while it streams to the client.
//!
//! A task of its own reads the origin's body at the origin's pace into a
//! shared list of chunks (shared, not copied), and stores the response when
//! it ends; the client reads the same chunks at its own pace. So a slow or
//! stalled client neither holds the other requests of the key waiting nor
//! stops the response being stored, and a client that goes away does not
//! cancel the fill. A body larger than `max_object` is not stored: the fill
//! stops and hands the rest of the origin's body to the client's reader.
//! In every case the claim on the key is released when the fill ends, waking
//! requests that waited for it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::Notify;

use super::store::{FetchGuard, ResponseStore, Stored};
use crate::body::{BodyError, ProxyBody};
use crate::error::Side;

/// Where the body goes once it is whole.
pub(super) struct Sink {
    pub(super) store: Arc<ResponseStore>,
    pub(super) key: String,
    /// The request's headers (the variant's `Vary` values).
    pub(super) request: HeaderMap,
    /// The response head, without a body yet.
    pub(super) stored: Stored,
    pub(super) limit: u64,
    /// The store's generation when the fetch began.
    pub(super) generation: u64,
    pub(super) guard: Option<FetchGuard>,
}

/// The chunks read so far and how the body ended.
#[derive(Default)]
struct Fill {
    state: Mutex<FillState>,
    changed: Notify,
}

#[derive(Default)]
struct FillState {
    chunks: Vec<Bytes>,
    end: End,
}

#[derive(Default)]
enum End {
    #[default]
    Open,
    Complete,
    Failed(String),
    /// The body ended with trailers: passed on, not stored.
    Trailers(Option<HeaderMap>),
    /// Too large to store: the rest of the origin's body, for the reader.
    HandedOver(Option<ProxyBody>),
}

/// Starts filling from `body`; returns the client's body.
pub(super) fn start(body: ProxyBody, sink: Sink) -> ProxyBody {
    let fill = Arc::new(Fill::default());
    tokio::spawn(run(fill.clone(), body, sink));
    ProxyBody::stream(futures_util::stream::unfold(
        Reader::Buffer { fill, next: 0 },
        Reader::next,
    ))
}

async fn run(fill: Arc<Fill>, mut body: ProxyBody, sink: Sink) {
    let mut size = 0u64;
    let end = loop {
        match body.frame().await {
            None => break End::Complete,
            Some(Err(error)) => break End::Failed(error.to_string()),
            Some(Ok(frame)) => {
                // A response with trailers is passed on, not stored.
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => break End::Trailers(frame.into_trailers().ok()),
                };
                size += data.len() as u64;
                let mut state = fill.state.lock().expect("fill lock is never poisoned");
                state.chunks.push(data);
                if size > sink.limit {
                    state.end = End::HandedOver(Some(body));
                    drop(state);
                    fill.changed.notify_waiters();
                    sink.store.pass(&sink.key);
                    return;
                }
                drop(state);
                fill.changed.notify_waiters();
            }
        }
    };
    let complete = matches!(end, End::Complete);
    let chunks = {
        let mut state = fill.state.lock().expect("fill lock is never poisoned");
        state.end = end;
        complete.then(|| state.chunks.clone())
    };
    fill.changed.notify_waiters();
    if let Some(chunks) = chunks {
        let Sink {
            store,
            key,
            request,
            stored,
            generation,
            guard,
            ..
        } = sink;
        let stored = stored.with_body(super::join(chunks, size as usize));
        store.insert(&key, &request, Arc::new(stored), generation);
        // Released after the insert, so that waiters find the response.
        drop(guard);
    }
}

/// The client's side: the fill's chunks in order, then its end.
enum Reader {
    Buffer { fill: Arc<Fill>, next: usize },
    Rest(Box<ProxyBody>),
    Done,
}

type Item = Result<Frame<Bytes>, BodyError>;

impl Reader {
    async fn next(self) -> Option<(Item, Reader)> {
        match self {
            Reader::Done => None,
            Reader::Rest(mut body) => match body.frame().await {
                Some(Ok(frame)) => Some((Ok(frame), Reader::Rest(body))),
                Some(Err(error)) => Some((Err(error), Reader::Done)),
                None => None,
            },
            Reader::Buffer { fill, next } => loop {
                let watched = fill.clone();
                let changed = watched.changed.notified();
                tokio::pin!(changed);
                // Registered before the state is read: no change is missed.
                changed.as_mut().enable();
                let rest = {
                    let mut state = watched.state.lock().expect("fill lock is never poisoned");
                    if let Some(chunk) = state.chunks.get(next) {
                        let chunk = chunk.clone();
                        return Some((Ok(Frame::data(chunk)), Reader::Buffer { fill, next: next + 1 }));
                    }
                    match &mut state.end {
                        End::Open => None,
                        End::Complete => return None,
                        End::Trailers(trailers) => {
                            return trailers.take().map(|t| (Ok(Frame::trailers(t)), Reader::Done));
                        }
                        End::Failed(message) => {
                            let error = BodyError::Failed {
                                side: Side::Upstream,
                                source: message.clone().into(),
                            };
                            return Some((Err(error), Reader::Done));
                        }
                        End::HandedOver(rest) => rest.take(),
                    }
                };
                if let Some(rest) = rest {
                    return Box::pin(Reader::Rest(Box::new(rest)).next()).await;
                }
                changed.await;
            },
        }
    }
}
