//! Prometheus metrics, served by the admin API's `GET /metrics` in the text
//! exposition format.
//!
//! Labels are bounded by the configuration: route, cluster, listener and
//! endpoint names, methods folded to a fixed set, statuses folded to classes;
//! never paths or client addresses. The request path only increments handles
//! resolved ahead of time (an atomic add); label lookups happen when a
//! snapshot is built, or once for each method and status class a route sees.
//! Endpoint and cluster state is read from the running snapshot at scrape time.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::snapshot::Snapshot;

/// Reload outcomes kept for the dashboard and `GET /api/reloads`.
const RECENT_RELOADS: usize = 20;

/// One configuration reload attempt.
#[derive(Debug, Clone)]
pub struct ReloadEvent {
    pub at: SystemTime,
    pub applied: bool,
    /// The version serving after the attempt.
    pub version: u64,
    /// What triggered it and, for a failure, why.
    pub detail: String,
}

/// Methods with their own label value; the rest count as `other`.
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency buckets, in seconds: 0.5 ms to 30 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

/// Every metric family of a gateway. Lives as long as the gateway: counters
/// keep counting across reloads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    response_bytes: IntCounterVec,
    request_bytes: IntCounterVec,
    trace_spans: IntCounterVec,
    websocket_connections: IntCounterVec,
    grpc_calls: IntCounterVec,
    websocket_active: IntGaugeVec,
    streams_drained: IntCounterVec,
    websocket_bytes: IntCounterVec,
    l4_connections: IntCounterVec,
    l4_bytes: IntCounterVec,
    udp_sessions: IntCounterVec,
    udp_sessions_active: IntGaugeVec,
    connections_active: IntGaugeVec,
    connections: IntCounterVec,
    tls_handshakes: IntCounterVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    breaker_transitions: IntCounterVec,
    rate_limit_decisions: IntCounterVec,
    reloads: IntCounterVec,
    config_version: IntGauge,
    cache_requests: IntCounterVec,
    hub_published: IntCounterVec,
    hub_subscribers: IntGaugeVec,
    hub_delivered: IntCounterVec,
    hub_dropped: IntCounterVec,
    hub_topic_subscribers: IntGaugeVec,
    cache_evictions: IntCounter,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
    // Read from the snapshot at scrape time.
    endpoint_healthy: IntGaugeVec,
    endpoint_available: IntGaugeVec,
    endpoint_in_flight: IntGaugeVec,
    endpoint_latency: prometheus::GaugeVec,
    endpoint_ejections: IntGaugeVec,
    cluster_available: IntGaugeVec,
    cluster_panic_picks: IntGaugeVec,
    breaker_open: IntGaugeVec,
    /// The latest reload attempts, newest last; touched only on reload.
    recent_reloads: Mutex<VecDeque<ReloadEvent>>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(vec.clone())).expect("unique metric name");
    vec
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(vec.clone())).expect("unique metric name");
    vec
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(latency_buckets()), labels)
        .expect("valid metric definition");
    registry.register(Box::new(vec.clone())).expect("unique metric name");
    vec
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let config_version = IntGauge::new(
            "switchyard_config_version",
            "Configurations applied since start (1 is the first).",
        )
        .expect("valid metric definition");
        r.register(Box::new(config_version.clone()))
            .expect("unique metric name");
        let endpoint_latency = prometheus::GaugeVec::new(
            Opts::new(
                "switchyard_endpoint_latency_ewma_seconds",
                "Peak-EWMA latency estimate of an endpoint (0 before its first response).",
            ),
            &["cluster", "endpoint"],
        )
        .expect("valid metric definition");
        r.register(Box::new(endpoint_latency.clone()))
            .expect("unique metric name");
        let single_gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("valid metric definition");
            r.register(Box::new(gauge.clone())).expect("unique metric name");
            gauge
        };
        let cache_bytes = single_gauge(
            "switchyard_cache_stored_bytes",
            "Bytes of responses in the response store (bodies, heads and keys).",
        );
        let cache_entries = single_gauge("switchyard_cache_entries", "Entries in the response store.");
        let cache_evictions = IntCounter::new(
            "switchyard_cache_evictions_total",
            "Stored responses pushed out of the response store by its byte bound.",
        )
        .expect("valid metric definition");
        r.register(Box::new(cache_evictions.clone()))
            .expect("unique metric name");
        Self {
            hub_published: counter(
                &r,
                "switchyard_hub_messages_published_total",
                "Messages published on hub routes.",
                &["route"],
            ),
            hub_subscribers: gauge(
                &r,
                "switchyard_hub_subscribers",
                "Hub subscribers connected, by transport (sse, websocket, long_poll).",
                &["route", "transport"],
            ),
            hub_delivered: counter(
                &r,
                "switchyard_hub_deliveries_total",
                "Messages delivered to hub subscribers, by transport.",
                &["route", "transport"],
            ),
            hub_dropped: counter(
                &r,
                "switchyard_hub_dropped_total",
                "Slow hub subscribers: messages they missed (lagged) and subscribers disconnected for it.",
                &["route", "reason"],
            ),
            hub_topic_subscribers: gauge(
                &r,
                "switchyard_hub_topic_subscribers",
                "Subscribers following each hub topic by name, read at scrape time (pattern subscribers count under topic \"*\").",
                &["route", "topic"],
            ),
            cache_requests: counter(
                &r,
                "switchyard_cache_requests_total",
                "Requests on routes with a cache, by what the cache did (hit, miss, stale, revalidated, bypass).",
                &["route", "status"],
            ),
            cache_evictions,
            cache_bytes,
            cache_entries,
            requests: counter(
                &r,
                "switchyard_requests_total",
                "Requests answered, by route, cluster, method and status class.",
                &["route", "cluster", "method", "status_class"],
            ),
            request_duration: histogram(
                &r,
                "switchyard_request_duration_seconds",
                "Time from a request's arrival to its response headers, by route.",
                &["route"],
            ),
            upstream_duration: histogram(
                &r,
                "switchyard_upstream_response_seconds",
                "Time from sending to an upstream to its response headers, by cluster.",
                &["cluster"],
            ),
            response_bytes: counter(
                &r,
                "switchyard_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
                &["route"],
            ),
            request_bytes: counter(
                &r,
                "switchyard_request_body_bytes_total",
                "Request body bytes received from clients, by route.",
                &["route"],
            ),
            trace_spans: counter(
                &r,
                "switchyard_trace_spans_total",
                "Sampled spans, by result (exported, dropped: the export queue was full, failed: the collector refused or was unreachable).",
                &["result"],
            ),
            grpc_calls: counter(
                &r,
                "switchyard_grpc_calls_total",
                "gRPC calls by route and the grpc-status they ended with (from the upstream, or made by the gateway).",
                &["route", "grpc_code"],
            ),
            websocket_connections: counter(
                &r,
                "switchyard_websocket_connections_total",
                "WebSocket connections by route and result (opened; refused: the route's limit; failed: the upgrade did not complete; drained: closed a grace period after a reload removed the route).",
                &["route", "result"],
            ),
            streams_drained: counter(
                &r,
                "switchyard_streams_drained_total",
                "Long-lived responses (kind: sse, grpc) ended a grace period after a reload removed their route (WebSocket connections count under switchyard_websocket_connections_total).",
                &["route", "kind"],
            ),
            websocket_active: gauge(
                &r,
                "switchyard_websocket_connections_active",
                "WebSocket connections open now, by route.",
                &["route"],
            ),
            websocket_bytes: counter(
                &r,
                "switchyard_websocket_bytes_total",
                "Bytes carried by WebSocket connections (frames included), by route and direction (from_client, to_client).",
                &["route", "direction"],
            ),
            l4_connections: counter(
                &r,
                "switchyard_l4_connections_total",
                "tcp listener connections by result (proxied; no_endpoint; connect_failed: one per endpoint attempt; rejected: ip_filter, SNI or PROXY header; drained: a tcp connection or udp session closed a grace period after a reload stopped the listener sending to its cluster or endpoint).",
                &["listener", "result"],
            ),
            l4_bytes: counter(
                &r,
                "switchyard_l4_bytes_total",
                "Bytes carried by tcp and udp listeners, by listener and direction (from_client, to_client).",
                &["listener", "direction"],
            ),
            udp_sessions: counter(
                &r,
                "switchyard_udp_sessions_total",
                "udp listener sessions opened, and datagrams dropped (session table full or no endpoint).",
                &["listener", "result"],
            ),
            udp_sessions_active: gauge(
                &r,
                "switchyard_udp_sessions_active",
                "udp listener sessions open now.",
                &["listener"],
            ),
            connections_active: gauge(
                &r,
                "switchyard_connections_active",
                "Client connections open now, by listener.",
                &["listener"],
            ),
            connections: counter(
                &r,
                "switchyard_connections_total",
                "Client connections accepted (or refused by a connection limit), by listener.",
                &["listener", "result"],
            ),
            tls_handshakes: counter(
                &r,
                "switchyard_tls_handshakes_total",
                "TLS handshakes on https listeners, by listener and result.",
                &["listener", "result"],
            ),
            retries: counter(
                &r,
                "switchyard_retries_total",
                "Retries and hedges sent, by cluster.",
                &["cluster"],
            ),
            budget_exhausted: counter(
                &r,
                "switchyard_retry_budget_exhausted_total",
                "Retries not made because a retry budget was spent, by cluster.",
                &["cluster"],
            ),
            breaker_transitions: counter(
                &r,
                "switchyard_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by cluster and new state.",
                &["cluster", "state"],
            ),
            rate_limit_decisions: counter(
                &r,
                "switchyard_rate_limit_decisions_total",
                "Rate-limit decisions, by route and decision (allowed, limited, store_unavailable).",
                &["route", "decision"],
            ),
            reloads: counter(
                &r,
                "switchyard_config_reloads_total",
                "Configuration reloads, by result (success, failure).",
                &["result"],
            ),
            config_version,
            endpoint_healthy: gauge(
                &r,
                "switchyard_endpoint_healthy",
                "1 when the endpoint passes its health checks (always 1 without checks).",
                &["cluster", "endpoint"],
            ),
            endpoint_available: gauge(
                &r,
                "switchyard_endpoint_available",
                "1 when the endpoint may be picked (healthy and not ejected).",
                &["cluster", "endpoint"],
            ),
            endpoint_in_flight: gauge(
                &r,
                "switchyard_endpoint_in_flight",
                "Requests being served by the endpoint now.",
                &["cluster", "endpoint"],
            ),
            endpoint_latency,
            endpoint_ejections: gauge(
                &r,
                "switchyard_endpoint_ejections",
                "Ejections counted toward the endpoint's growing ejection time.",
                &["cluster", "endpoint"],
            ),
            cluster_available: gauge(
                &r,
                "switchyard_cluster_endpoints_available",
                "Endpoints of the cluster that may be picked.",
                &["cluster"],
            ),
            cluster_panic_picks: gauge(
                &r,
                "switchyard_cluster_panic_picks",
                "Picks made in panic mode since start (too few endpoints available).",
                &["cluster"],
            ),
            breaker_open: gauge(
                &r,
                "switchyard_circuit_breaker_open",
                "1 while the cluster's circuit breaker is open or half-open.",
                &["cluster"],
            ),
            registry: r,
            recent_reloads: Mutex::new(VecDeque::with_capacity(RECENT_RELOADS)),
        }
    }

    /// The handles one route's requests use.
    pub fn route(&self, route: &str, cluster: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_owned(),
            cluster: cluster.to_owned(),
            family: self.requests.clone(),
            requests: Default::default(),
            duration: self.request_duration.with_label_values(&[route]),
            bytes: self.response_bytes.with_label_values(&[route]),
            request_bytes: self.request_bytes.with_label_values(&[route]),
            allowed: self.rate_limit_decisions.with_label_values(&[route, "allowed"]),
            limited: self.rate_limit_decisions.with_label_values(&[route, "limited"]),
            unavailable: self
                .rate_limit_decisions
                .with_label_values(&[route, "store_unavailable"]),
            grpc: crate::grpc::GrpcMetrics::new(route, self.grpc_calls.clone()),
            drained_sse: self.streams_drained.with_label_values(&[route, "sse"]),
            drained_grpc: self.streams_drained.with_label_values(&[route, "grpc"]),
            websocket: crate::websocket::WebSocketMetrics {
                opened: self.websocket_connections.with_label_values(&[route, "opened"]),
                refused: self.websocket_connections.with_label_values(&[route, "refused"]),
                failed: self.websocket_connections.with_label_values(&[route, "failed"]),
                drained: self.websocket_connections.with_label_values(&[route, "drained"]),
                active: self.websocket_active.with_label_values(&[route]),
                bytes: crate::tunnel::Meters {
                    from_client: self.websocket_bytes.with_label_values(&[route, "from_client"]),
                    to_client: self.websocket_bytes.with_label_values(&[route, "to_client"]),
                },
            },
        }
    }

    /// A route's cache counters, in `cache::Status` order.
    pub(crate) fn cache(&self, route: &str) -> [IntCounter; 5] {
        crate::cache::Status::ALL.map(|status| self.cache_requests.with_label_values(&[route, status.label()]))
    }

    /// A hub route's handles.
    pub(crate) fn hub(&self, route: &str) -> crate::hub::HubMetrics {
        let names = crate::hub::Transport::NAMES;
        crate::hub::HubMetrics {
            published: self.hub_published.with_label_values(&[route]),
            subscribers: names.map(|t| self.hub_subscribers.with_label_values(&[route, t])),
            delivered: names.map(|t| self.hub_delivered.with_label_values(&[route, t])),
            lagged: self.hub_dropped.with_label_values(&[route, "lagged"]),
            disconnected: self.hub_dropped.with_label_values(&[route, "disconnected"]),
        }
    }

    /// The counter of responses the store's byte bound pushes out.
    pub(crate) fn cache_evictions(&self) -> IntCounter {
        self.cache_evictions.clone()
    }

    /// The handles one cluster's requests use.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        ClusterMetrics {
            upstream: self.upstream_duration.with_label_values(&[cluster]),
            retries: self.retries.with_label_values(&[cluster]),
            budget_exhausted: self.budget_exhausted.with_label_values(&[cluster]),
            opened: self.breaker_transitions.with_label_values(&[cluster, "open"]),
            half_opened: self.breaker_transitions.with_label_values(&[cluster, "half_open"]),
            closed: self.breaker_transitions.with_label_values(&[cluster, "closed"]),
        }
    }

    /// A listener's connection gauge and counters.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            active: self.connections_active.with_label_values(&[listener]),
            accepted: self.connections.with_label_values(&[listener, "accepted"]),
            refused: self.connections.with_label_values(&[listener, "refused"]),
            tls_ok: self.tls_handshakes.with_label_values(&[listener, "success"]),
            tls_failed: self.tls_handshakes.with_label_values(&[listener, "failure"]),
            l4: crate::l4::L4Metrics {
                proxied: self.l4_connections.with_label_values(&[listener, "proxied"]),
                no_endpoint: self.l4_connections.with_label_values(&[listener, "no_endpoint"]),
                connect_failed: self.l4_connections.with_label_values(&[listener, "connect_failed"]),
                rejected: self.l4_connections.with_label_values(&[listener, "rejected"]),
                drained: self.l4_connections.with_label_values(&[listener, "drained"]),
                sessions_opened: self.udp_sessions.with_label_values(&[listener, "opened"]),
                datagrams_dropped: self.udp_sessions.with_label_values(&[listener, "dropped_datagram"]),
                sessions_active: self.udp_sessions_active.with_label_values(&[listener]),
                bytes: crate::tunnel::Meters {
                    from_client: self.l4_bytes.with_label_values(&[listener, "from_client"]),
                    to_client: self.l4_bytes.with_label_values(&[listener, "to_client"]),
                },
            },
        }
    }

    /// The span counters of a tracer.
    pub fn trace(&self) -> crate::trace::TraceMetrics {
        crate::trace::TraceMetrics {
            exported: self.trace_spans.with_label_values(&["exported"]),
            dropped: self.trace_spans.with_label_values(&["dropped"]),
            failed: self.trace_spans.with_label_values(&["failed"]),
        }
    }

    /// Counts a reload attempt; `version` is the one serving afterwards.
    pub fn reload(&self, applied: bool, version: u64, detail: String) {
        let result = if applied { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        self.config_version.set(version as i64);
        let mut recent = self.recent_reloads.lock().expect("reload log lock is never poisoned");
        if recent.len() == RECENT_RELOADS {
            recent.pop_front();
        }
        recent.push_back(ReloadEvent {
            at: SystemTime::now(),
            applied,
            version,
            detail,
        });
    }

    /// The latest reload attempts, oldest first.
    pub fn recent_reloads(&self) -> Vec<ReloadEvent> {
        let recent = self.recent_reloads.lock().expect("reload log lock is never poisoned");
        recent.iter().cloned().collect()
    }

    /// Cumulative per-route and per-cluster figures for the dashboard: request
    /// counts by status class, and latency histograms (bucket bounds in
    /// seconds with cumulative counts) from which a viewer takes rates and
    /// quantiles over any interval.
    pub fn summary(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let families = self.registry.gather();
        let family = |name: &str| families.iter().find(|f| f.name() == name);
        let label = |m: &prometheus::proto::Metric, key: &str| -> String {
            m.get_label()
                .iter()
                .find(|l| l.name() == key)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let mut routes: Map<String, Value> = Map::new();
        if let Some(requests) = family("switchyard_requests_total") {
            for m in requests.get_metric() {
                let entry = routes.entry(label(m, "route")).or_insert_with(|| {
                    json!({"cluster": label(m, "cluster"), "requests": 0, "status": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}})
                });
                let count = m.get_counter().get_value() as u64;
                let class = label(m, "status_class");
                entry["requests"] = json!(entry["requests"].as_u64().unwrap_or(0) + count);
                entry["status"][&class] = json!(entry["status"][&class].as_u64().unwrap_or(0) + count);
            }
        }
        let histograms = |family: Option<&MetricFamily>, key: &str| -> Map<String, Value> {
            let mut out = Map::new();
            for m in family.map(|f| f.get_metric()).unwrap_or_default() {
                let h = m.get_histogram();
                let buckets: Vec<Value> = h
                    .get_bucket()
                    .iter()
                    .map(|b| json!([b.upper_bound(), b.cumulative_count()]))
                    .collect();
                out.insert(
                    label(m, key),
                    json!({"count": h.get_sample_count(), "sum_seconds": h.get_sample_sum(), "buckets": buckets}),
                );
            }
            out
        };
        for (route, latency) in histograms(family("switchyard_request_duration_seconds"), "route") {
            if let Some(entry) = routes.get_mut(&route) {
                entry["latency"] = latency;
            }
        }
        let upstream = histograms(family("switchyard_upstream_response_seconds"), "cluster");
        json!({"routes": routes, "upstream_latency": upstream})
    }

    /// The exposition text, with endpoint and cluster state read from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.refresh_state(snapshot);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn refresh_state(&self, snapshot: &Snapshot) {
        let now = std::time::Instant::now();
        let stats = snapshot.cache.stats();
        self.cache_bytes.set(stats.bytes as i64);
        self.cache_entries.set(stats.entries as i64);
        self.hub_topic_subscribers.reset();
        let mut seen = std::collections::HashSet::new();
        for listener in snapshot.listeners.values() {
            for entry in listener.router.routes() {
                let Some(hub) = &entry.hub else { continue };
                if !seen.insert(entry.route.name.as_str()) {
                    continue;
                }
                for (topic, subscribers, _) in hub.topics() {
                    self.hub_topic_subscribers
                        .with_label_values(&[entry.route.name.as_str(), topic.as_str()])
                        .set(subscribers as i64);
                }
                self.hub_topic_subscribers
                    .with_label_values(&[entry.route.name.as_str(), "*"])
                    .set(hub.pattern_subscribers() as i64);
            }
        }
        for family in [
            &self.endpoint_healthy,
            &self.endpoint_available,
            &self.endpoint_in_flight,
            &self.endpoint_ejections,
            &self.cluster_available,
            &self.cluster_panic_picks,
            &self.breaker_open,
        ] {
            family.reset();
        }
        self.endpoint_latency.reset();
        for (name, cluster) in &snapshot.clusters {
            for endpoint in &cluster.endpoints {
                let labels = [name.as_str(), endpoint.address()];
                self.endpoint_healthy
                    .with_label_values(&labels)
                    .set(i64::from(endpoint.is_healthy()));
                self.endpoint_available
                    .with_label_values(&labels)
                    .set(i64::from(endpoint.is_available()));
                self.endpoint_in_flight
                    .with_label_values(&labels)
                    .set(endpoint.in_flight() as i64);
                self.endpoint_ejections
                    .with_label_values(&labels)
                    .set(i64::from(endpoint.ejections()));
                self.endpoint_latency
                    .with_label_values(&labels)
                    .set(endpoint.latency_estimate(now) / 1e9);
            }
            self.cluster_available
                .with_label_values(&[name])
                .set(cluster.health.available() as i64);
            self.cluster_panic_picks
                .with_label_values(&[name])
                .set(cluster.health.panic_picks() as i64);
            if let Some(breaker) = &cluster.breaker {
                let open = breaker.state() != switchyard_resilience::BreakerState::Closed;
                self.breaker_open.with_label_values(&[name]).set(i64::from(open));
            }
        }
    }
}

/// A route's request handles.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    cluster: String,
    family: IntCounterVec,
    /// Resolved on first use of each method and status class.
    requests: [[OnceLock<IntCounter>; 5]; 8],
    duration: Histogram,
    pub bytes: IntCounter,
    pub request_bytes: IntCounter,
    pub allowed: IntCounter,
    pub limited: IntCounter,
    pub unavailable: IntCounter,
    pub(crate) websocket: crate::websocket::WebSocketMetrics,
    pub grpc: std::sync::Arc<crate::grpc::GrpcMetrics>,
    /// Event streams and gRPC responses drained after the route was removed.
    pub(crate) drained_sse: IntCounter,
    pub(crate) drained_grpc: IntCounter,
}

impl RouteMetrics {
    /// Counts an answered request and how long its head took.
    pub fn request(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        let m = METHODS
            .iter()
            .position(|known| *known == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let c = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[m][c]
            .get_or_init(|| {
                self.family
                    .with_label_values(&[&self.route, &self.cluster, METHODS[m], CLASSES[c]])
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// A cluster's handles.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    pub upstream: Histogram,
    pub retries: IntCounter,
    pub budget_exhausted: IntCounter,
    pub opened: IntCounter,
    pub half_opened: IntCounter,
    pub closed: IntCounter,
}

/// A listener's handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub active: IntGauge,
    pub accepted: IntCounter,
    pub refused: IntCounter,
    pub tls_ok: IntCounter,
    pub tls_failed: IntCounter,
    pub(crate) l4: crate::l4::L4Metrics,
}
