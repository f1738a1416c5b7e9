//! Distributed tracing: W3C trace context on every request, and spans (one
//! per request, one per upstream attempt) exported over OTLP/HTTP when
//! `[tracing]` is configured.

pub mod context;
pub mod export;

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

pub use context::{TraceContext, TRACEPARENT, TRACESTATE};
pub use export::{Attribute, SpanData, SpanKind, TraceMetrics, Tracer};

use context::SpanId;

/// A request's trace context and, when its spans are recorded, the tracer.
#[derive(Debug)]
pub struct RequestTrace {
    pub context: TraceContext,
    /// Set only for a sampled request of a gateway with `[tracing]`.
    pub recorder: Option<Arc<Tracer>>,
    /// Whether the gateway takes part in traces (`[tracing]` configured).
    participating: bool,
    pub started_at: SystemTime,
}

impl RequestTrace {
    pub fn new(headers: &http::HeaderMap, tracer: Option<&Arc<Tracer>>) -> Self {
        let ratio = tracer.map_or(0.0, |t| t.settings.sample_ratio);
        let context = TraceContext::from_headers(headers, ratio);
        let recorder = tracer.filter(|_| context.sampled).cloned();
        Self {
            context,
            recorder,
            participating: tracer.is_some(),
            started_at: SystemTime::now(),
        }
    }

    /// The `traceparent` an upstream attempt with span `attempt` carries;
    /// `None` leaves the caller's own header as it is (a gateway without
    /// `[tracing]` records no span to be a parent).
    pub fn upstream_header(&self, attempt: &SpanId) -> Option<HeaderValue> {
        if self.participating {
            Some(self.context.header_for(attempt))
        } else if self.context.parent.is_none() {
            // No usable context came in: the new trace starts here.
            Some(self.context.header_for(&self.context.span_id))
        } else {
            None
        }
    }

    /// Records a span of this trace, if it is sampled.
    pub fn record(&self, span: impl FnOnce() -> SpanData) {
        if let Some(tracer) = &self.recorder {
            tracer.record(span());
        }
    }
}
