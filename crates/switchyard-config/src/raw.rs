//! Stage one: the configuration exactly as the user wrote it.
//!
//! These structs mirror the TOML (and the admin API's JSON) one to one. Values
//! that need checking (durations, sizes, addresses, names of other objects) stay
//! strings here so that the validation stage can report *every* problem with its
//! location instead of stopping at the first one. Unknown keys are collected by
//! the loader (`serde_ignored`), not rejected by serde, for the same reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole configuration document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub runtime: RawRuntime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    pub access_log: RawAccessLog,
    pub listeners: Vec<RawListener>,
    /// Boxed: a route's settings are large, and a configuration may have
    /// tens of thousands (a growing vector then moves pointers, not routes).
    pub routes: Vec<Box<RawRoute>>,
    pub clusters: Vec<RawCluster>,
    /// `[cluster]`: shared state for several gateway nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawClusterMode>,
    /// `[tracing]`: span export over OTLP/HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<RawTracing>,
    /// `[cache]`: the response store that routes with `cache` share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<RawCacheStore>,
}

/// `[cache] max_size = "256MiB"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCacheStore {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
}

/// `[tracing] otlp_endpoint = "http://collector:4318/v1/traces"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawTracing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1 (a caller's sampled flag wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Spans per export request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Longest a span waits for its batch to fill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_timeout: Option<String>,
    /// Spans held while exports are slow; more are dropped (and counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_timeout: Option<String>,
    /// Extra headers on export requests (a collector's API key).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `[cluster] redis = "redis://..."`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawClusterMode {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_timeout: Option<String>,
    /// `tls = { ca, client_cert, client_key }` for `rediss://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawRedisTls>,
    /// `sentinel = { master, addresses }`: find the primary through Redis
    /// Sentinel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RawSentinel>,
}

/// `[cluster] tls = { ca = "ca.pem", client_cert, client_key }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedisTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// `[cluster] sentinel = { master = "mymaster", addresses = ["10.0.0.1:26379"] }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSentinel {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRuntime {
    /// Worker threads; 0 or absent means one per core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// How long WebSocket connections of a route removed by a reload stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_route_grace: Option<String>,
    /// The Unix socket `switchyard upgrade` and a successor process talk to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<String>,
    /// How long a successor process has to start before an upgrade is given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_timeout: Option<String>,
    /// How long a process replaced by an upgrade keeps its open connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_drain_timeout: Option<String>,
    /// A file this process writes its pid to (and a successor takes over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawAdmin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `[access_log]`: one structured log event per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawAccessLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `[[listeners]]`: a socket the gateway accepts connections on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawListener {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_filter: Option<RawIpFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uri_length: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_body_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_rate_grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,
    /// `tcp` and `udp` listeners: the cluster connections go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `tcp` listeners: clusters chosen by the TLS ClientHello's server name
    /// (TLS passthrough); `cluster` takes the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<RawSniRoute>,
    /// `tcp` listeners: endpoints tried before a connection is given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_attempts: Option<u32>,
    /// `udp` listeners: client sessions kept at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
}

/// `sni_routes = [{ server_names = ["a.example", "*.b.example"], cluster = "a" }]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawSniRoute {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// `tls = { certificates = [{ cert, key }], client_ca, client_auth }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawTls {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<RawCertificate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCertificate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `ip_filter = { allow, deny }`: CIDR lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawIpFilter {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// `rate_limit = { key, rate, per, burst, headers, max_keys }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRateLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<RawRateKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_redis_error: Option<String>,
}

/// A rate-limit key: one part (`"client_ip"`) or several combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawRateKey {
    One(String),
    Many(Vec<String>),
}

/// `[[routes]]`: which requests go where.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RawRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<RawHeaderOps>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<RawHeaderOps>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RawRedirect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<RawDirect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge: Option<RawHedge>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<RawIdempotency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<RawFault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RawRateLimit>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RawRateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_filter: Option<RawIpFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<RawCors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RawAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<RawWebSocket>,
    /// Translate gRPC-Web requests (browsers) to gRPC for the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_web: Option<bool>,
    /// Serve files from a directory.
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_files: Option<RawStatic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<RawCompression>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<RawRouteCache>,
    /// Be a pub/sub hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<RawHub>,
    /// Answer from several upstream calls merged into one JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<RawAggregate>,
    /// JSON and XML body transforms of requests and responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<RawTransform>,
}

/// `aggregate = { calls = [...], timeout, max_response, forward_headers }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawAggregate {
    pub calls: Vec<RawCall>,
    /// The whole answer's time limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Largest response body read from one call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response: Option<String>,
    /// Client request headers every call gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_headers: Option<Vec<String>>,
}

/// One upstream call of an aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `/users/{path.id}/orders?limit={query.limit}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// A failed required call fails the whole answer; an optional one
    /// becomes `null` with an entry in `errors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
}

/// `transform = { request, response, max_body, on_oversize }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawTransform {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RawBodyTransform>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<RawBodyTransform>,
    /// Largest body buffered to transform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<String>,
    /// A larger body: `pass` it untransformed, or `refuse` it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_oversize: Option<String>,
}

/// The edits of one direction, applied in this order: `from_xml`,
/// `unwrap`, `remove`, `rename`, `move`, `set`, `wrap`, `to_xml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawBodyTransform {
    /// Read the body as XML (into JSON by the documented mapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_xml: Option<bool>,
    /// Replace the body with the value at this JSON pointer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwrap: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Pointer to pointer, same parent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Pointer to pointer, anywhere.
    #[serde(rename = "move", skip_serializing_if = "BTreeMap::is_empty")]
    pub move_: BTreeMap<String, String>,
    /// Pointer to JSON value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, serde_json::Value>,
    /// Put the body under this member of a new object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap: Option<String>,
    /// Write the body as XML under this root element name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_xml: Option<String>,
    /// Response statuses to send as others (`{ "404" = 200 }`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, u16>,
}

/// `hub = { history, history_ttl, max_message, queue, slow_consumer,
/// heartbeat, retry, long_poll_timeout, max_topics, max_subscriptions,
/// publish, subscribe }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHub {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_poll_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_topics: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<RawHubRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<RawHubRule>>,
}

/// `{ topics = "orders.*", identities = [...], claims = { role = "admin" } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHubRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// `cache = { ttl, max_object, stale_while_revalidate, stale_if_error,
/// lock_timeout, tag_header, key }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRouteCache {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<RawCacheKey>,
}

/// `key = { host, query, query_include, query_exclude, sort_query, headers, cookies }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCacheKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_include: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_exclude: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_query: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<String>,
}

/// `compression = { algorithms, min_size, content_types }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCompression {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
}

/// `static = { root, index, listing, precompressed }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawStatic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// The file served for a directory; `""` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precompressed: Option<bool>,
}

/// `websocket = { enabled, idle_timeout, max_lifetime, max_connections }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawWebSocket {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// `auth = { jwt, api_keys, basic, require, identity_header }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<RawJwt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<RawApiKeys>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic: Option<RawBasic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require: Option<RawRequire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_header: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawJwt {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leeway: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawApiKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<RawApiKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawApiKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawBasic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<RawUser>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawUser {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRequire {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// `cors = { origins, methods, headers, expose_headers, credentials, max_age }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCors {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// `retry = { ... }`: a route's retry policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retriable_statuses: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<RawBackoff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replay_body: Option<String>,
}

/// `hedge = { delay }`: a second attempt for slow idempotent reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHedge {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
}

/// `idempotency = { ... }`: replay of requests by `Idempotency-Key`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawIdempotency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<String>,
    /// Cluster mode: what a request with a key gets while Redis cannot be
    /// reached (`deny`: 503, `allow`: it runs without the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_redis_error: Option<String>,
}

/// `backoff = { base, max }` of a retry policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawBackoff {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// `fault = { delay, delay_percent, delay_header, abort_status, abort_percent,
/// abort_header }`: injected faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawFault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_header: Option<String>,
}

/// `match = { ... }` of a route. Every present matcher must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<RawValueMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<RawValueMatch>,
}

/// A header or query parameter matcher: `{ name, value | regex | present }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawValueMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// `rewrite = { prefix | path, host }` applied before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Query parameter edits: `{ remove = [..], rename = {..}, set = {..} }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<RawQueryRewrite>,
}

/// Query parameter edits, applied in this order: remove, rename, set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawQueryRewrite {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
}

/// `{ add = {..}, set = {..}, remove = [..] }` on request or response headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHeaderOps {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `redirect = { ... }`: answer with a redirect instead of forwarding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRedirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// `direct = { status, body, content_type, headers }`: a static response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawDirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `[[clusters]]`: a named group of upstream endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancer: Option<String>,
    pub endpoints: Vec<RawEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_from: Option<RawEndpointsFrom>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<RawPool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<RawHashKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<RawOutlierDetection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<RawSticky>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RawRetryBudget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawUpstreamTls>,
    /// `"v1"` or `"v2"`: a PROXY protocol header naming the client starts
    /// each connection to an endpoint (`tcp` listeners).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
}

/// `tls = { ca, server_name, client_cert, client_key }` of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawUpstreamTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// `retry_budget = { ratio, min_per_second, window }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawRetryBudget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// `circuit_breaker = { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawCircuitBreaker {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_endpoint: Option<bool>,
}

/// `health_check = { ... }`: active checks of every endpoint of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHealthCheck {
    /// `"http"` (default) or `"tcp"`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Status codes (`200`) or classes (`"2xx"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<RawStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// One entry of `expected_statuses`: a code or a class such as `"2xx"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(u16),
    Class(String),
}

/// `outlier_detection = { ... }`: passive ejection of failing endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawOutlierDetection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

/// `sticky = { cookie, ttl }`: cookie-based session affinity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawSticky {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `hash_key = { header | cookie | path | client_ip }`: what `consistent_hash`
/// hashes. Exactly one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHashKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<bool>,
}

/// One upstream endpoint of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawEndpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// `endpoints_from = { registry = "users" }` or
/// `{ dns = "users.internal", port = 8080 }`: endpoints discovered at run time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawEndpointsFrom {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `"a"` (A and AAAA, the default) or `"srv"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// A nameserver `ip:port` to ask instead of the system's resolvers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Bounds on the re-resolution interval the records' TTL gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_refresh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_refresh: Option<String>,
    /// Endpoint weight of discovered addresses (SRV records carry their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// `pool = { max_idle_per_endpoint, idle_timeout }`: upstream keep-alive pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}
