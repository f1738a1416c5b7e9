//! Long-lived responses of a route a reload removed: an event stream or a
//! gRPC response keeps flowing for `runtime.removed_route_grace`, then ends
//! cleanly instead of running on a configuration that is gone. (WebSocket
//! tunnels drain the same way, in `tunnel`.)
//!
//! An event stream simply ends: an SSE client reconnects, with its
//! `Last-Event-ID`, and lands on the current configuration. A gRPC response
//! ends with `grpc-status: 14` (UNAVAILABLE), which gRPC clients retry.
//! Other bodies are left alone: cutting a download short would look like a
//! complete one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_config::Route;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::body::{BodyError, ProxyBody};
use crate::metrics::RouteMetrics;

/// What kind of long-lived response a body is, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sse,
    Grpc,
}

impl Kind {
    /// The kind of a response with `content_type`, if it is one that drains.
    pub(crate) fn of(content_type: Option<&HeaderValue>) -> Option<Kind> {
        let value = content_type?.as_bytes();
        let starts = |prefix: &[u8]| value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix);
        // gRPC proper (`application/grpc`, `+proto`, `;...`), not gRPC-Web,
        // whose trailers travel in the body and an HTTP/1 client would lose.
        let grpc = starts(b"application/grpc") && matches!(value.get(16), None | Some(b'+' | b';'));
        if starts(b"text/event-stream") {
            Some(Kind::Sse)
        } else if grpc {
            Some(Kind::Grpc)
        } else {
            None
        }
    }
}

pin_project! {
    /// `inner` until the route's drain signal, then a clean end.
    pub(crate) struct Draining {
        #[pin]
        inner: ProxyBody,
        #[pin]
        drain: WaitForCancellationFutureOwned,
        kind: Kind,
        // The route's settings and metric handles, shared (no copy per response).
        route: Arc<Route>,
        metrics: Arc<RouteMetrics>,
        done: bool,
    }
}

impl Draining {
    pub(crate) fn new(
        inner: ProxyBody,
        drain: tokio_util::sync::CancellationToken,
        kind: Kind,
        route: Arc<Route>,
        metrics: Arc<RouteMetrics>,
    ) -> Self {
        Self {
            inner,
            drain: drain.cancelled_owned(),
            kind,
            route,
            metrics,
            done: false,
        }
    }
}

impl Body for Draining {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.drain.poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.done = true;
        match this.kind {
            Kind::Sse => this.metrics.drained_sse.inc(),
            Kind::Grpc => this.metrics.drained_grpc.inc(),
        }
        let kind = match this.kind {
            Kind::Sse => "event stream",
            Kind::Grpc => "gRPC response",
        };
        tracing::info!(route = %this.route.name, kind, "stream ended: its route was removed and the grace period ran out");
        match this.kind {
            Kind::Sse => Poll::Ready(None),
            Kind::Grpc => Poll::Ready(Some(Ok(Frame::trailers(crate::grpc::status_trailers(
                crate::grpc::UNAVAILABLE,
                "the route was removed by a configuration reload",
            ))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
