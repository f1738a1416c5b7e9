//! Access logging: one `tracing` event (target `access`) per request, emitted
//! when the response body has been sent, so it carries the real byte count and
//! total duration. Whether it prints as JSON or for humans is the subscriber's
//! choice (`--log-format`).

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::BodyError;

/// What is known about a request by the time its response starts.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub request_id: String,
    /// The W3C trace id (32 hex digits), continued or started here.
    pub trace_id: String,
    pub client: IpAddr,
    pub listener: String,
    pub method: Method,
    pub version: Version,
    pub host: String,
    pub path: String,
    pub route: Option<String>,
    pub status: StatusCode,
    pub upstream: Option<String>,
    /// Time until the upstream's response headers arrived.
    pub upstream_time: Option<Duration>,
    pub error: Option<&'static str>,
}

impl AccessRecord {
    fn emit(&self, bytes: u64, outcome: &str) {
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            trace_id = %self.trace_id,
            client = %self.client,
            listener = %self.listener,
            method = %self.method,
            version = ?self.version,
            host = %self.host,
            path = %self.path,
            route = self.route.as_deref().unwrap_or("-"),
            status = self.status.as_u16(),
            bytes,
            upstream = self.upstream.as_deref().unwrap_or("-"),
            upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            error = self.error.unwrap_or("-"),
            outcome,
            "request"
        );
    }
}

/// A request's server span, waiting for the response body to end.
#[derive(Debug)]
pub struct PendingSpan {
    pub tracer: std::sync::Arc<crate::trace::Tracer>,
    pub span: crate::trace::SpanData,
}

impl PendingSpan {
    fn end(self, outcome: &str) {
        let mut this = self;
        this.span.end = std::time::SystemTime::now();
        if outcome != "complete" {
            this.span
                .attributes
                .push(("switchyard.outcome", crate::trace::Attribute::Str(outcome.to_owned())));
            this.span.error.get_or_insert_with(|| outcome.to_owned());
        }
        this.tracer.record(this.span);
    }
}

/// Ends what waits for the body's end: the access log line and the span.
fn finish(record: &mut Option<Box<AccessRecord>>, span: &mut Option<Box<PendingSpan>>, bytes: u64, outcome: &str) {
    if let Some(record) = record.take() {
        record.emit(bytes, outcome);
    }
    if let Some(span) = span.take() {
        (*span).end(outcome);
    }
}

pin_project! {
    /// A response body that logs its request when it ends (or is dropped early).
    pub struct Logged<B> {
        #[pin]
        inner: B,
        record: Option<Box<AccessRecord>>,
        span: Option<Box<PendingSpan>>,
        bytes: u64,
        // The route's response-bytes counter (/metrics).
        counter: Option<prometheus::IntCounter>,
        // A gRPC call's status counters, until its trailers are seen.
        grpc: Option<std::sync::Arc<crate::grpc::GrpcMetrics>>,
        // An empty body may never be polled; its drop is a normal end.
        empty: bool,
    }

    impl<B> PinnedDrop for Logged<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let outcome = if *this.empty { "complete" } else { "client_gone" };
            finish(this.record, this.span, *this.bytes, outcome);
        }
    }
}

impl<B: Body> Logged<B> {
    /// Wraps `inner`; `record` is `None` when access logging is off.
    pub fn new(inner: B, record: Option<Box<AccessRecord>>) -> Self {
        let empty = inner.is_end_stream();
        Self {
            inner,
            record,
            span: None,
            bytes: 0,
            counter: None,
            grpc: None,
            empty,
        }
    }

    /// Also ends `span` when the body ends.
    pub fn with_span(mut self, span: Option<Box<PendingSpan>>) -> Self {
        self.span = span;
        self
    }

    /// Also counts the `grpc-status` trailer of a gRPC call.
    pub fn with_grpc(mut self, grpc: Option<std::sync::Arc<crate::grpc::GrpcMetrics>>) -> Self {
        self.grpc = grpc;
        self
    }

    /// Also adds the body's bytes to `counter` as they are sent.
    pub fn counting(mut self, counter: prometheus::IntCounter) -> Self {
        self.counter = Some(counter);
        self
    }
}

impl<B: Body<Data = Bytes, Error = BodyError>> Body for Logged<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let (Some(grpc), Poll::Ready(Some(Ok(frame)))) = (this.grpc.as_ref(), &polled) {
            if let Some(status) = frame.trailers_ref().and_then(|t| t.get(&crate::grpc::GRPC_STATUS)) {
                grpc.count(status);
                *this.grpc = None;
            }
        }
        if let (Some(counter), Poll::Ready(Some(Ok(frame)))) = (this.counter.as_ref(), &polled) {
            if let Some(data) = frame.data_ref() {
                counter.inc_by(data.len() as u64);
            }
        }
        if this.record.is_some() || this.span.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                    // A body of known length is not polled past its last frame.
                    if this.inner.is_end_stream() {
                        finish(this.record, this.span, *this.bytes, "complete");
                    }
                }
                Poll::Ready(None) => finish(this.record, this.span, *this.bytes, "complete"),
                Poll::Ready(Some(Err(e))) => {
                    let outcome = if e.is_idle() {
                        "body_idle_timeout"
                    } else if e.is_deadline() {
                        "max_duration"
                    } else {
                        "body_error"
                    };
                    finish(this.record, this.span, *this.bytes, outcome);
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
