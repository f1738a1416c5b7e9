//! Span export over OTLP/HTTP with JSON encoding.
//!
//! Requests hand finished spans to a bounded queue with `try_send` and never
//! wait: when the collector is slow or down and the queue is full, spans are
//! dropped and counted. One task per [`Tracer`] gathers them into batches
//! (by size or by time) and posts each batch once; a failed export is
//! counted and logged, not retried, so that a collector outage costs
//! nothing but its spans.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use prometheus::IntCounter;
use serde_json::{json, Value};
use switchyard_config::Tracing;
use tokio::sync::mpsc;

use super::context::{hex, SpanId, TraceId};
use crate::upstream::{web_client, WebClient};

/// How often export failures are logged at most.
const FAILURE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// OTLP span kinds used here.
#[derive(Debug, Clone, Copy)]
pub enum SpanKind {
    Server = 2,
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone)]
pub enum Attribute {
    Str(String),
    Int(i64),
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attribute)>,
    /// `Some`: the span failed, with why.
    pub error: Option<String>,
}

/// Counters of what happened to spans.
#[derive(Debug, Clone)]
pub struct TraceMetrics {
    pub exported: IntCounter,
    pub dropped: IntCounter,
    pub failed: IntCounter,
}

/// Where sampled spans go. Kept across reloads while `[tracing]` stays.
#[derive(Debug)]
pub struct Tracer {
    pub settings: Tracing,
    queue: mpsc::Sender<SpanData>,
    dropped: IntCounter,
}

impl Tracer {
    /// Starts the export task for `settings`.
    pub fn start(settings: Tracing, metrics: TraceMetrics) -> Result<Arc<Tracer>, String> {
        let client = web_client()?;
        let (queue, spans) = mpsc::channel(settings.queue_size);
        tokio::spawn(export_loop(spans, settings.clone(), client, metrics.clone()));
        Ok(Arc::new(Tracer {
            settings,
            queue,
            dropped: metrics.dropped,
        }))
    }

    /// Queues a finished span; never waits.
    pub fn record(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// Gathers spans into batches and exports them until every [`Tracer`]
/// handle is gone; the last batch is exported before the task ends.
async fn export_loop(
    mut spans: mpsc::Receiver<SpanData>,
    settings: Tracing,
    client: WebClient<Full<Bytes>>,
    metrics: TraceMetrics,
) {
    let mut batch = Vec::with_capacity(settings.batch_size);
    let mut last_warning: Option<Instant> = None;
    loop {
        let Some(first) = spans.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + settings.batch_timeout;
        let mut closed = false;
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        match export(&client, &settings, &batch).await {
            Ok(()) => metrics.exported.inc_by(batch.len() as u64),
            Err(error) => {
                metrics.failed.inc_by(batch.len() as u64);
                if last_warning.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %settings.otlp_endpoint,
                        %error,
                        spans = batch.len(),
                        "span export failed; these spans are dropped"
                    );
                }
            }
        }
        batch.clear();
        if closed {
            return;
        }
    }
}

async fn export(client: &WebClient<Full<Bytes>>, settings: &Tracing, batch: &[SpanData]) -> Result<(), String> {
    let body = encode(settings, batch).to_string();
    let mut request = http::Request::post(settings.otlp_endpoint.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    for (name, value) in &settings.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let response = tokio::time::timeout(settings.export_timeout, client.request(request))
        .await
        .map_err(|_| format!("no answer within {:?}", settings.export_timeout))?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {}", response.status()))
    }
}

/// An OTLP `ExportTraceServiceRequest` in the protobuf JSON mapping (ids as
/// hex, 64-bit integers as strings).
pub fn encode(settings: &Tracing, batch: &[SpanData]) -> Value {
    let spans: Vec<Value> = batch.iter().map(encode_span).collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": settings.service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "switchyard", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }]
    })
}

fn encode_span(span: &SpanData) -> Value {
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string();
    let attributes: Vec<Value> = span
        .attributes
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Attribute::Str(s) => json!({"stringValue": s}),
                Attribute::Int(i) => json!({"intValue": i.to_string()}),
            };
            json!({"key": key, "value": value})
        })
        .collect();
    let status = match &span.error {
        Some(message) => json!({"code": 2, "message": message}),
        None => json!({"code": 0}),
    };
    let mut out = json!({
        "traceId": hex(&span.trace_id),
        "spanId": hex(&span.span_id),
        "name": span.name,
        "kind": span.kind as u8,
        "startTimeUnixNano": nanos(span.start),
        "endTimeUnixNano": nanos(span.end),
        "attributes": attributes,
        "status": status,
    });
    if let Some(parent) = &span.parent {
        out["parentSpanId"] = Value::String(hex(parent));
    }
    out
}
