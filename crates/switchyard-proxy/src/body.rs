//! Bodies that stream through the gateway.
//!
//! Nothing here buffers: a [`TimedBody`] passes each frame on as it arrives and
//! only adds an idle timer, and [`ProxyBody`] is either such a stream or a small
//! body the gateway made itself (errors, redirects, direct responses).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body as the pipeline carries it: the client's, or none for a
/// request the gateway makes itself (a background refresh, say).
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Empty<Bytes>>;
use pin_project_lite::pin_project;
use switchyard_balance::InFlight;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, Side};

/// A body stream failed or stalled.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{side:?} body sent nothing for {after:?}")]
    Idle { side: Side, after: Duration },
    #[error("{side:?} body was still streaming when the route's max_duration ran out")]
    Deadline { side: Side },
    #[error("{side:?} body failed: {source}")]
    Failed { side: Side, source: BoxError },
    #[error("{side:?} body is larger than {limit} bytes")]
    TooLarge { side: Side, limit: u64 },
    #[error("{side:?} body arrives slower than {rate} bytes per second")]
    TooSlow { side: Side, rate: u64 },
}

impl BodyError {
    /// The side whose body it was.
    pub fn side(&self) -> Side {
        match self {
            Self::Idle { side, .. }
            | Self::Deadline { side }
            | Self::Failed { side, .. }
            | Self::TooLarge { side, .. }
            | Self::TooSlow { side, .. } => *side,
        }
    }

    /// Whether the body stalled or crawled (rather than broke).
    pub fn is_idle(&self) -> bool {
        matches!(self, Self::Idle { .. } | Self::TooSlow { .. })
    }

    /// Whether the exchange ran past its deadline (`max_duration`).
    pub fn is_deadline(&self) -> bool {
        matches!(self, Self::Deadline { .. })
    }
}

pin_project! {
    /// Passes a body through, failing it when no frame arrives for `timeout`.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        // Armed lazily, the first time the body has to wait: a body that is
        // ready whenever it is polled (small responses, most requests) never
        // reads the clock or registers a timer. Boxed so the body stays `Unpin`.
        idle: Option<Pin<Box<Sleep>>>,
        // A frame arrived since the timer was last (re)armed.
        progressed: bool,
        timeout: Duration,
        // The end of the whole exchange (`max_duration`), when the route has one.
        deadline: Option<Pin<Box<Sleep>>>,
        side: Side,
        // Told when the body has been read to its end.
        finished: Option<oneshot::Sender<()>>,
        // The most bytes the body may carry, and how many came so far.
        max: Option<u64>,
        received: u64,
        // The slowest average rate (bytes/s) allowed once `grace` has passed
        // since the first frame was asked for, and when that was.
        min_rate: Option<(u64, Duration)>,
        started: Option<Instant>,
        // Adds each frame's bytes as they come (/metrics).
        counter: Option<prometheus::IntCounter>,
    }
}

impl<B: Body> TimedBody<B> {
    /// Wraps `inner`, which belongs to `side`, with an idle `timeout`.
    pub fn new(inner: B, timeout: Duration, side: Side) -> Self {
        Self {
            inner,
            idle: None,
            progressed: false,
            timeout,
            deadline: None,
            side,
            finished: None,
            max: None,
            received: 0,
            min_rate: None,
            started: None,
            counter: None,
        }
    }

    /// Adds the body's bytes to `counter` as they come.
    pub fn counting(mut self, counter: prometheus::IntCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Fails the body when, `grace` after it started, it has averaged fewer
    /// than `rate` bytes per second (a slowloris body that never quite stalls).
    pub fn with_min_rate(mut self, min_rate: Option<(u64, Duration)>) -> Self {
        self.min_rate = min_rate;
        self
    }

    /// Fails the body once more than `max` bytes have come (checked as they
    /// stream, so nothing beyond the limit is read further).
    pub fn with_limit(mut self, max: Option<u64>) -> Self {
        self.max = max;
        self
    }

    /// Also fails the body once `deadline` passes, however busy it is.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline.map(|at| Box::pin(tokio::time::sleep_until(at)));
        self
    }

    /// Like [`TimedBody::new`], plus a receiver that resolves once the body has
    /// been read to its end (or dropped); `None` for an empty body.
    pub fn with_completion(inner: B, timeout: Duration, side: Side) -> (Self, Option<oneshot::Receiver<()>>) {
        Self::new(inner, timeout, side).signal_completion()
    }

    /// The body, plus a receiver that resolves once it has been read to its
    /// end (or dropped); `None` for an empty body.
    pub fn signal_completion(mut self) -> (Self, Option<oneshot::Receiver<()>>) {
        if self.inner.is_end_stream() {
            return (self, None);
        }
        let (tx, rx) = oneshot::channel();
        self.finished = Some(tx);
        (self, Some(rx))
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        if this.min_rate.is_some() && this.started.is_none() {
            *this.started = Some(Instant::now());
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(BodyError::Deadline { side: *this.side })));
            }
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.progressed = true;
                if let Some(data) = frame.data_ref() {
                    *this.received += data.len() as u64;
                    if let Some(counter) = this.counter {
                        counter.inc_by(data.len() as u64);
                    }
                }
                if let Some(max) = *this.max {
                    if *this.received > max {
                        return Poll::Ready(Some(Err(BodyError::TooLarge {
                            side: *this.side,
                            limit: max,
                        })));
                    }
                }
                if let (Some((rate, grace)), Some(started)) = (*this.min_rate, *this.started) {
                    let elapsed = started.elapsed();
                    if elapsed > grace && (*this.received as f64) < rate as f64 * elapsed.as_secs_f64() {
                        return Poll::Ready(Some(Err(BodyError::TooSlow { side: *this.side, rate })));
                    }
                }
                // A body with a known length may never be polled past its last frame.
                if this.inner.is_end_stream() {
                    if let Some(tx) = this.finished.take() {
                        let _ = tx.send(());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Failed {
                side: *this.side,
                source: e.into(),
            }))),
            Poll::Ready(None) => {
                if let Some(tx) = this.finished.take() {
                    let _ = tx.send(());
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The stall is measured from the first poll that had to wait
                // after the last frame.
                let idle = match this.idle.as_mut() {
                    Some(idle) => {
                        if std::mem::take(this.progressed) {
                            idle.as_mut().reset(Instant::now() + *this.timeout);
                        }
                        idle
                    }
                    None => {
                        *this.progressed = false;
                        this.idle.insert(Box::pin(tokio::time::sleep(*this.timeout)))
                    }
                };
                if idle.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Some(Err(BodyError::Idle {
                        side: *this.side,
                        after: *this.timeout,
                    })))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The request body sent upstream: chunks read ahead (a body kept for
    /// replay, or the start of one too big to keep), then the client's stream,
    /// if any is left, under its idle timer.
    pub struct UpstreamRequestBody {
        prefix: VecDeque<Bytes>,
        #[pin]
        rest: Option<TimedBody<RequestBody>>,
    }
}

impl UpstreamRequestBody {
    /// The client's stream as it arrives.
    pub fn stream(body: TimedBody<RequestBody>) -> Self {
        Self {
            prefix: VecDeque::new(),
            rest: Some(body),
        }
    }

    /// A complete body read ahead (sent again on each attempt).
    pub fn replay(chunks: &[Bytes]) -> Self {
        Self {
            prefix: chunks.iter().cloned().collect(),
            rest: None,
        }
    }

    /// Chunks read ahead, then the rest of the stream.
    pub fn prefixed(prefix: Vec<Bytes>, rest: TimedBody<RequestBody>) -> Self {
        Self {
            prefix: prefix.into(),
            rest: Some(rest),
        }
    }
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.rest {
            None => SizeHint::with_exact(prefix_len(&self.prefix)),
            Some(rest) => prefixed_hint(&self.prefix, rest.size_hint()),
        }
    }
}

fn prefix_len(prefix: &VecDeque<Bytes>) -> u64 {
    prefix.iter().map(|c| c.len() as u64).sum()
}

/// The size of chunks read ahead followed by a body of size `inner`.
fn prefixed_hint(prefix: &VecDeque<Bytes>, inner: SizeHint) -> SizeHint {
    let buffered = prefix_len(prefix);
    let mut hint = SizeHint::new();
    hint.set_lower(inner.lower() + buffered);
    if let Some(upper) = inner.upper() {
        hint.set_upper(upper + buffered);
    }
    hint
}

/// What [`read_ahead`] got of a body.
pub enum ReadAhead<B> {
    /// The whole body, within the limit.
    Complete(Vec<Bytes>),
    /// More than the limit: what was read, and the rest of the stream.
    TooLarge { prefix: Vec<Bytes>, rest: TimedBody<B> },
}

/// Reads `body` (a request's or a response's) until it ends or more than
/// `limit` bytes have come. Trailers, if any, are dropped (a body kept for
/// replay has none).
pub async fn read_ahead<B>(mut body: TimedBody<B>, limit: u64) -> Result<ReadAhead<B>, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let mut chunks = Vec::new();
    let mut total = 0u64;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else { break };
        if let Ok(data) = frame?.into_data() {
            total += data.len() as u64;
            chunks.push(data);
            if total > limit {
                return Ok(ReadAhead::TooLarge {
                    prefix: chunks,
                    rest: body,
                });
            }
        }
    }
    Ok(ReadAhead::Complete(chunks))
}

/// A body read up to a limit.
pub enum Collected {
    /// All of it.
    Complete(Bytes),
    /// More than the limit: what was read, then the rest, as one body.
    TooLarge(ProxyBody),
}

/// Reads `body` whole if it is at most `limit` bytes.
pub async fn collect_limited(mut body: ProxyBody, limit: u64) -> Result<Collected, BodyError> {
    use http_body_util::BodyExt;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        total += data.len() as u64;
        chunks.push(data);
        if total > limit {
            let read = futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
            let rest = http_body_util::BodyStream::new(body);
            return Ok(Collected::TooLarge(ProxyBody::stream(read.chain(rest))));
        }
    }
    Ok(Collected::Complete(concat(chunks)))
}

/// `chunks` as one buffer, copied only when there are several.
pub fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    }
}

pin_project! {
    /// A response body sent to the client.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A body the gateway made; sent in one frame.
        Full { data: Option<Bytes> },
        /// The upstream's body, streamed. Holds the endpoint's in-flight slot
        /// until the body is done, so load counts include streaming responses.
        Upstream {
            // Chunks already read (a response too big to keep for replay).
            prefix: VecDeque<Bytes>,
            #[pin]
            body: TimedBody<Incoming>,
            in_flight: Option<InFlight>,
            // The cluster's concurrency slot, when it has a limit.
            slot: Option<OwnedSemaphorePermit>,
        },
        /// An upstream body translated on the way (gRPC-Web).
        Translated {
            #[pin]
            body: http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>,
        },
    }
}

impl ProxyBody {
    /// A complete body of `data`.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::Full { data: None }
    }

    /// The upstream's streamed body.
    pub fn upstream(body: TimedBody<Incoming>, in_flight: InFlight) -> Self {
        Self::upstream_prefixed(Vec::new(), body, in_flight, None)
    }

    /// Chunks already read from the upstream's body, then the rest of it;
    /// `slot` (a concurrency limit's) is held until the body is done.
    pub fn upstream_prefixed(
        prefix: Vec<Bytes>,
        body: TimedBody<Incoming>,
        in_flight: InFlight,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self::Upstream {
            prefix: prefix.into(),
            body,
            in_flight: Some(in_flight),
            slot,
        }
    }
}

impl ProxyBody {
    /// A body made of `frames` as they come.
    pub fn stream<S>(frames: S) -> Self
    where
        S: futures_core::Stream<Item = Result<Frame<Bytes>, BodyError>> + Send + 'static,
    {
        use http_body_util::BodyExt;
        Self::Translated {
            body: http_body_util::StreamBody::new(frames).boxed_unsync(),
        }
    }

    /// `body` turned into another body by `translate`.
    pub fn translated<T>(body: ProxyBody, translate: impl FnOnce(ProxyBody) -> T) -> Self
    where
        T: Body<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        use http_body_util::BodyExt;
        Self::Translated {
            body: translate(body).boxed_unsync(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Upstream {
                prefix,
                body,
                in_flight,
                slot,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                let polled = body.poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    // Release the endpoint as soon as the exchange is over, not
                    // when the connection gets around to dropping the body.
                    in_flight.take();
                    slot.take();
                }
                polled
            }
            ProxyBodyProj::Translated { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { data } => data.is_none(),
            Self::Upstream { prefix, body, .. } => prefix.is_empty() && body.is_end_stream(),
            Self::Translated { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Upstream { prefix, body, .. } => prefixed_hint(prefix, body.size_hint()),
            Self::Translated { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn full_body_is_one_frame_with_exact_size() {
        let body = ProxyBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert!(ProxyBody::empty().is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let mut body = TimedBody::new(StreamBody::new(stream), Duration::from_secs(5), Side::Downstream);
        tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        // Nothing more arrives: the timer (reset by the frame) fires.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is_idle());
        assert_eq!(err.side(), Side::Downstream);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_waits_never_times_out() {
        // The timer runs only while the body waits, not while nobody polls it.
        let body = TimedBody::new(
            Full::new(Bytes::from_static(b"ready")),
            Duration::from_millis(1),
            Side::Upstream,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"ready");
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_idle_timer() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = TimedBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(5),
            Side::Upstream,
        );
        let sender = tokio::spawn(async move {
            // Three pauses of 4s: 12s in all, but never 5s without a frame.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            }
        });
        let collected = body.collect().await.expect("no idle timeout").to_bytes();
        assert_eq!(&collected[..], b"xxx");
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_body_still_stops_at_its_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut body = TimedBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(5),
            Side::Upstream,
        )
        .with_deadline(Some(deadline));
        tokio::spawn(async move {
            // A frame every second: never idle, but longer than the deadline.
            while tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut frames = 0;
        let error = loop {
            match body.frame().await.expect("the body errs before it ends") {
                Ok(_) => frames += 1,
                Err(e) => break e,
            }
        };
        assert!(error.is_deadline(), "{error}");
        assert!((9..=11).contains(&frames), "{frames} frames before the deadline");
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crawling_body_fails_after_the_grace_period() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = TimedBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(60),
            Side::Downstream,
        )
        .with_min_rate(Some((100, Duration::from_secs(5))));
        tokio::spawn(async move {
            // 10 bytes a second: never idle, far below 100 B/s.
            while tx
                .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let error = body.collect().await.expect_err("too slow");
        assert!(matches!(error, BodyError::TooSlow { rate: 100, .. }), "{error}");
        assert!(error.is_idle(), "answered like a stalled body (408)");
        let after = started.elapsed();
        assert!(
            after > Duration::from_secs(5) && after <= Duration::from_secs(7),
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_passes() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = TimedBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(60),
            Side::Downstream,
        )
        .with_min_rate(Some((100, Duration::from_secs(5))));
        tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 200])))).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let collected = body.collect().await.expect("fast enough").to_bytes();
        assert_eq!(collected.len(), 4000);
    }

    /// A minimal `Stream` over an mpsc receiver (avoids a tokio-stream dependency).
    fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
