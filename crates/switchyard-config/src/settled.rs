//! Stage three: settled settings with real types.
//!
//! A [`Config`] has passed validation: every duration is a `Duration`, every
//! address a `SocketAddr`, every regex compiled, every name it refers to exists.
//! The proxy builds its runtime snapshot from this and never re-checks it.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use regex::Regex;

use crate::raw::RawConfig;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub runtime: Runtime,
    /// The admin listener; `None` when `[admin]` is absent.
    pub admin: Option<Admin>,
    /// Whether each request is logged as an `access` event.
    pub access_log: bool,
    pub listeners: Vec<Listener>,
    /// Routes in declared order; shared with the runtime's route entries,
    /// which a reload then builds without copying them.
    pub routes: Vec<std::sync::Arc<Route>>,
    pub clusters: Vec<Cluster>,
    /// Shared state for several nodes (`[cluster]`); `None`: a single node.
    pub cluster_mode: Option<ClusterMode>,
    /// Span export (`[tracing]`); `None`: trace context is still propagated
    /// and logged, but no spans are recorded.
    pub tracing: Option<Tracing>,
    /// The response store routes with `cache` share (`[cache]`).
    pub cache: CacheStore,
    /// The document this was settled from, served back by `GET /api/config`.
    pub raw: RawConfig,
}

/// `[cache]`: the one response store of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStore {
    /// Bytes of stored responses (bodies, headers and keys) kept at most;
    /// past it the least likely to be asked again are evicted.
    pub max_size: u64,
}

impl Default for CacheStore {
    fn default() -> Self {
        Self {
            max_size: defaults::CACHE_MAX_SIZE,
        }
    }
}

/// A route's response cache (RFC 9111 shared-cache rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// Lifetime of responses that give none (no `max-age`, `s-maxage` or
    /// `Expires`); `None`: such responses are not stored.
    pub ttl: Option<Duration>,
    /// Responses larger than this are passed on, not stored.
    pub max_object: u64,
    /// `stale-while-revalidate` for responses that do not say.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` for responses that do not say.
    pub stale_if_error: Option<Duration>,
    /// Longest a request waits for another request's fetch of the same
    /// object before going to the origin itself.
    pub lock_timeout: Duration,
    /// The response header whose (space or comma separated) values tag the
    /// object for purges, such as `Surrogate-Key`; not sent to clients.
    pub tag_header: Option<http::HeaderName>,
    /// What makes two requests ask for the same object.
    pub key: switchyard_cache::KeySpec,
}

/// `[cluster]`: where nodes share state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMode {
    /// `redis://` or `rediss://` URL. With `sentinel`, its scheme,
    /// credentials and database apply to the primary Sentinel names.
    pub redis: String,
    /// Longest wait for one Redis answer before the failure policy applies.
    pub redis_timeout: Duration,
    /// Private CA and client certificate for `rediss://`.
    pub tls: Option<RedisTls>,
    /// The primary is found through Redis Sentinel.
    pub sentinel: Option<Sentinel>,
}

/// `[cluster] tls`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// Roots to verify the server with (the built-in web roots when absent).
    pub ca: Option<String>,
    /// Certificate and key the node shows (mutual TLS).
    pub client_cert: Option<(String, String)>,
}

/// `[cluster] sentinel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// The name the Sentinels monitor the primary under.
    pub master: String,
    /// `host:port` of each Sentinel.
    pub addresses: Vec<String>,
}

/// `[tracing]`: where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// OTLP/HTTP traces URL (`http://` or `https://`, JSON encoding).
    pub otlp_endpoint: http::Uri,
    pub sample_ratio: f64,
    pub service_name: String,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub queue_size: usize,
    pub export_timeout: Duration,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long WebSocket connections of a route removed by a reload keep
    /// flowing before they are closed.
    pub removed_route_grace: Duration,
    /// The Unix socket of binary upgrades (`switchyard upgrade`); `None`: a
    /// path derived from the configuration file's (see [`upgrade_socket_for`]).
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// How long a successor process has to take the sockets over and start.
    pub upgrade_timeout: Duration,
    /// How long a process replaced by an upgrade keeps its open connections
    /// (WebSocket, SSE, TCP, requests in flight) before it exits.
    pub upgrade_drain_timeout: Duration,
    /// Where the serving process writes its pid (a successor rewrites it).
    pub pid_file: Option<std::path::PathBuf>,
}

/// The upgrade socket of a gateway run with the configuration file `file`:
/// `runtime.upgrade_socket` when set, else one in `$XDG_RUNTIME_DIR` (a
/// directory of the user's own) or, without it, the temporary directory,
/// named after the file's canonical path (FNV-1a, stable across versions, so
/// that an old and a new binary find the same socket).
pub fn upgrade_socket_for(runtime: &Runtime, file: &std::path::Path) -> std::path::PathBuf {
    if let Some(path) = &runtime.upgrade_socket {
        return path.clone();
    }
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in file.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("switchyard-{hash:016x}.sock"))
}

/// The admin API listener.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token required on every admin call when set.
    pub token: Option<String>,
}

/// Protocols a listener can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// Cleartext HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS (ALPN).
    Https,
    /// Raw TCP, forwarded byte for byte to a cluster (L4).
    Tcp,
    /// UDP datagrams, forwarded per client session to a cluster (L4).
    Udp,
}

impl ListenerProtocol {
    /// Whether HTTP routes apply to the listener.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Https)
    }
}

/// A socket the gateway accepts client connections on.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may sit with no request.
    pub idle_timeout: Duration,
    /// Largest request head accepted (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_size: usize,
    /// Most request headers accepted in one HTTP/1 request.
    pub max_headers: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Client addresses refused on this listener (every route).
    pub ip_filter: Option<IpFilter>,
    /// Largest request body accepted (routes may set their own); `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Longest request target accepted (414 beyond).
    pub max_uri_length: usize,
    /// Open client connections at once; `None`: no limit.
    pub max_connections: Option<usize>,
    /// Open client connections at once from one address; `None`: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Certificates and client verification (`https` listeners).
    pub tls: Option<ListenerTls>,
    /// (bytes per second, grace): a request body slower than this on average,
    /// once the grace period has passed, is cut (slowloris bodies).
    pub min_body_rate: Option<(u64, Duration)>,
    /// Trusted peers start each connection with a PROXY protocol header
    /// naming the real client.
    pub proxy_protocol: bool,
    /// `tcp`/`udp`: the cluster connections go to (for `tcp` with
    /// `sni_routes`: those no server name matched); `None` on HTTP listeners.
    pub cluster: Option<String>,
    /// `tcp`: clusters chosen by the ClientHello's server name, first match wins.
    pub sni_routes: Vec<SniRoute>,
    /// `tcp`: endpoints tried (each under the cluster's connect timeout)
    /// before the client's connection is closed.
    pub connect_attempts: u32,
    /// `udp`: client sessions kept at once; datagrams of new clients beyond
    /// it are dropped.
    pub max_sessions: usize,
}

/// One rule of a `tcp` listener's TLS passthrough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// Lower-case names, exact (`a.example`) or one-label wildcards (`*.example`).
    pub server_names: Vec<String>,
    pub cluster: String,
}

impl SniRoute {
    /// Whether `name` (lower-case) is one of this rule's names.
    pub fn matches(&self, name: &str) -> bool {
        self.server_names
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .and_then(|head| head.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                None => pattern == name,
            })
    }
}

/// TLS settings of an `https` listener, as files; loaded and checked when
/// the configuration settles, loaded again when a snapshot is built (so a
/// reload picks up renewed certificates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// (certificate chain file, private key file), the first being the default.
    pub certificates: Vec<(String, String)>,
    /// CA file client certificates must chain to (mTLS).
    pub client_ca: Option<String>,
    /// Whether a client certificate is required (else optional, verified when sent).
    pub client_auth_required: bool,
}

/// Allowed and denied client networks; deny wins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpFilter {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// One rate limit of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// What identifies a client; several parts are combined.
    pub key: Vec<RateKeyPart>,
    /// Requests allowed per `per`, on average...
    pub rate: u32,
    pub per: Duration,
    /// ...with bursts of up to this many.
    pub burst: u32,
    /// Send `RateLimit-*` headers on allowed responses too (429s always carry them).
    pub headers: bool,
    /// Keys (clients) tracked at most.
    pub max_keys: usize,
    /// Buckets in Redis, shared by every node (`scope = "global"`); `None`:
    /// in this process.
    pub global: Option<OnRedisError>,
}

/// What a global rate limit does when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Let the request through (fail open).
    Allow,
    /// Refuse it with 503 (fail closed).
    Deny,
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKeyPart {
    /// The client's address (from the socket, or trusted proxies' headers).
    ClientIp,
    /// A request header's value (the client address when absent).
    Header(HeaderName),
    /// A claim of the request's JWT (the client address when absent).
    Claim(String),
    /// The authenticated identity (`api_key` in the configuration: the key's
    /// id, the token's `sub`, or the user name).
    Identity,
}

/// One routing rule.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// The listener it applies to; `None` means every HTTP listener.
    pub listener: Option<String>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Longest the upstream may take to send response headers.
    pub timeout: Duration,
    /// Longest a body (either direction) may stall between chunks.
    pub idle_timeout: Duration,
    /// Longest the whole exchange may take, from the request's arrival to the
    /// last byte of the response; `None`: no limit (streams may run forever).
    pub max_duration: Option<Duration>,
    pub rewrite: Rewrite,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Retry policy; `None`: one attempt (connect failures still retried
    /// once elsewhere only when a policy says so).
    pub retry: Option<Retry>,
    /// Hedged reads; `None`: off.
    pub hedge: Option<Hedge>,
    /// Replay by `Idempotency-Key`; `None`: the header is passed on untouched.
    pub idempotency: Option<Idempotency>,
    /// Injected faults; `None`: none.
    pub fault: Option<Fault>,
    /// Rate limits, all checked (`rate_limit` and `rate_limits`).
    pub rate_limits: Vec<RateLimit>,
    /// Client addresses refused on this route.
    pub ip_filter: Option<IpFilter>,
    /// Largest request body accepted; overrides the listener's.
    pub max_body_size: Option<u64>,
    /// Cross-origin rules; `None`: requests pass untouched.
    pub cors: Option<Cors>,
    /// Authentication and authorization; `None`: anyone may pass.
    pub auth: Option<Auth>,
    /// WebSocket upgrades (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT).
    pub websocket: WebSocket,
    /// gRPC-Web requests are translated to gRPC for the cluster.
    pub grpc_web: bool,
    /// Responses compressed for clients that accept it; `None`: as they are.
    pub compression: Option<Compression>,
    /// Responses stored and reused; `None`: every request goes upstream.
    pub cache: Option<RouteCache>,
    /// Body transforms; `None`: bodies pass as they are.
    pub transform: Option<Transform>,
}

/// `aggregate`: one JSON answer built from several upstream calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub calls: Vec<AggregateCall>,
    /// The whole answer's time limit.
    pub timeout: Duration,
    /// Largest response body read from one call.
    pub max_response: u64,
    /// Client request headers every call gets.
    pub forward_headers: Vec<HeaderName>,
}

/// One upstream call of an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateCall {
    pub name: String,
    pub cluster: String,
    pub method: Method,
    /// The request target, filled in per request.
    pub target: Vec<TemplatePart>,
    pub timeout: Duration,
    pub required: bool,
    pub retry: Option<Retry>,
    /// The calls whose answers the target uses (indices into `calls`).
    pub uses: Vec<usize>,
}

/// A piece of a call's target template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `{path.NAME}`: a capture of the route's path template.
    Path(String),
    /// `{query.NAME}`: the client's query parameter.
    Query(String),
    /// `{header.NAME}`: the client's request header.
    Header(HeaderName),
    /// `{call.NAME/pointer}`: a value in an earlier call's JSON answer.
    Call {
        call: usize,
        pointer: String,
    },
}

/// `transform`: body edits of a forwarding route.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub request: Option<BodyTransform>,
    pub response: Option<BodyTransform>,
    /// Largest body buffered to transform.
    pub max_body: u64,
    pub on_oversize: Oversize,
}

/// What a body over `max_body` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Sent on untransformed (and logged).
    Pass,
    /// Refused: 413 for a request, 502 for a response.
    Refuse,
}

/// The edits of one direction, in the order they apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyTransform {
    pub from_xml: bool,
    pub unwrap: Option<String>,
    pub remove: Vec<String>,
    /// `rename` and `move`: from pointer, to pointer.
    pub moves: Vec<(String, String)>,
    pub set: Vec<(String, serde_json::Value)>,
    pub wrap: Option<String>,
    /// Root element name when the body goes out as XML.
    pub to_xml: Option<String>,
    /// Response statuses sent as others.
    pub status: Vec<(http::StatusCode, http::StatusCode)>,
}

impl BodyTransform {
    /// Whether the body itself changes (not only the status).
    pub fn edits_body(&self) -> bool {
        self.from_xml
            || self.unwrap.is_some()
            || !self.remove.is_empty()
            || !self.moves.is_empty()
            || !self.set.is_empty()
            || self.wrap.is_some()
            || self.to_xml.is_some()
    }
}

/// A route's response compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// Offered in this order of preference (the client's q-values first).
    pub algorithms: Vec<Encoding>,
    /// Responses declaring a shorter `Content-Length` are left alone.
    pub min_size: u64,
    /// Lower-case media types (`type/subtype`, or `type/*`) compressed.
    pub content_types: Vec<String>,
}

/// Content codings the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Brotli,
    Zstd,
    Gzip,
    Deflate,
}

impl Encoding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Self::Brotli => "br",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }

    pub fn from_token(token: &str) -> Option<Self> {
        [Self::Brotli, Self::Zstd, Self::Gzip, Self::Deflate]
            .into_iter()
            .find(|e| {
                e.token().eq_ignore_ascii_case(token) || (token.eq_ignore_ascii_case("x-gzip") && *e == Self::Gzip)
            })
    }
}

/// How a route treats WebSocket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocket {
    /// Whether upgrades are proxied (else refused with 400).
    pub enabled: bool,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection open this long is closed; `None`: no limit.
    pub max_lifetime: Option<Duration>,
    /// Open connections through the route at once; `None`: no limit.
    pub max_connections: Option<usize>,
}

impl Default for WebSocket {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_timeout: defaults::WEBSOCKET_IDLE_TIMEOUT,
            max_lifetime: None,
            max_connections: None,
        }
    }
}

/// A route's authentication: any configured method may authenticate a
/// request; `require` then decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub jwt: Option<JwtAuth>,
    pub api_keys: Option<ApiKeysAuth>,
    pub basic: Option<BasicAuth>,
    pub require_identities: Vec<String>,
    pub require_claims: Vec<(String, String)>,
    /// Header set to the authenticated identity for the upstream.
    pub identity_header: Option<HeaderName>,
}

/// JWT bearer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuth {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub key: JwtKey,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
    /// Claims copied into upstream request headers.
    pub forward_claims: Vec<(String, HeaderName)>,
}

/// Where JWT verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// An HMAC secret.
    Secret(String),
    /// A PEM public key file (read at load time).
    PublicKey { path: String, pem: Vec<u8> },
    /// A JWK set file, re-read every `refresh` and when a token names an
    /// unknown key id.
    Jwks { path: String, refresh: Duration },
    /// A JWK set fetched over HTTP(S) (system roots), re-fetched every
    /// `refresh` and when a token names an unknown key id.
    JwksUrl { url: String, refresh: Duration },
}

/// API-key settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeysAuth {
    pub header: Option<HeaderName>,
    pub query: Option<String>,
    /// (id, SHA-256 of the key).
    pub keys: Vec<(String, [u8; 32])>,
}

/// Basic-auth settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub realm: String,
    /// (user, password hash).
    pub users: Vec<(String, String)>,
}

/// A route's CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// `None`: any origin (`"*"`); otherwise lower-case origins, exact or
    /// `scheme://*.domain`.
    pub origins: Option<Vec<String>>,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

/// When and how a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    pub on: RetryOn,
    /// Each attempt's wait for response headers; `None`: only the route
    /// `timeout` (which bounds all attempts together).
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// This route's own cap: retries may add at most this share of its
    /// recent requests (on top of the cluster's `retry_budget`).
    pub budget: Option<f64>,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    pub non_idempotent: bool,
    /// Request bodies up to this size are kept for replay; larger ones are
    /// sent once.
    pub max_replay_body: u64,
}

/// The conditions that make an attempt worth retrying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made (nothing reached the upstream).
    pub connect_failure: bool,
    /// The connection broke before a response.
    pub reset: bool,
    /// Any 5xx answer, plus connect failures, resets and timeouts.
    pub server_error: bool,
    /// 502, 503 or 504 answers, plus connect failures, resets and timeouts.
    pub gateway_error: bool,
    /// Answers with one of these statuses.
    pub statuses: Vec<u16>,
    /// gRPC answers with `grpc-status: 14` (UNAVAILABLE).
    pub grpc_unavailable: bool,
}

/// A second attempt at a slow read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    /// Send the hedge when the first attempt has not answered in this long.
    pub delay: Duration,
}

/// What a concurrent duplicate of a running keyed request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrentDuplicate {
    /// Waits for the first request's response (bounded by the route timeout).
    Wait,
    /// 409 at once.
    Reject,
}

/// `Idempotency-Key` handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    pub ttl: Duration,
    /// Largest request or response body kept; larger requests get 413.
    pub max_body: u64,
    pub max_entries: usize,
    pub concurrent: ConcurrentDuplicate,
    /// Cluster mode (keys kept in Redis): what a request with a key gets
    /// while Redis cannot be reached.
    pub on_redis_error: OnRedisError,
}

/// Injected faults.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub duration: Duration,
    pub percent: f64,
    pub header: Option<HeaderName>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub status: StatusCode,
    pub percent: f64,
    pub header: Option<HeaderName>,
}

/// What a route does with a matched request.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Proxy to the named cluster.
    Forward { cluster: String },
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Direct(Direct),
    /// Serve files from a directory.
    Static(StaticFiles),
    /// Be a pub/sub hub.
    Hub(Hub),
    /// Answer from several upstream calls.
    Aggregate(Aggregate),
}

/// `hub = { ... }`: a pub/sub hub (SSE, WebSocket and long-poll
/// subscribers, HTTP and WebSocket publishers).
#[derive(Debug, Clone, PartialEq)]
pub struct Hub {
    /// Messages kept per topic for resuming subscribers.
    pub history: usize,
    /// Messages older than this leave the history.
    pub history_ttl: Duration,
    /// Largest message body.
    pub max_message: u64,
    /// Messages a subscriber may fall behind before `slow_consumer` applies.
    pub queue: usize,
    pub slow_consumer: SlowConsumer,
    /// Comment lines keeping quiet SSE streams (and their proxies) open.
    pub heartbeat: Duration,
    /// The SSE `retry:` hint for reconnecting browsers.
    pub retry: Duration,
    /// Longest a long poll waits for a message.
    pub long_poll_timeout: Duration,
    pub max_topics: usize,
    /// Topics (or patterns) one subscriber may follow.
    pub max_subscriptions: usize,
    /// Who may publish where; empty: nobody.
    pub publish: Vec<HubRule>,
    /// Who may subscribe where; `None`: anyone the route admits, anywhere.
    pub subscribe: Option<Vec<HubRule>>,
}

/// What a hub does with a subscriber that falls `queue` messages behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// It misses the oldest messages and is told how many.
    DropOldest,
    /// Its connection is closed (it can resume from its last id).
    Disconnect,
}

/// One hub permission: topics matching `topics`, for principals `require` admits.
#[derive(Debug, Clone, PartialEq)]
pub struct HubRule {
    pub topics: TopicPattern,
    pub require: switchyard_security::auth::Require,
}

/// A topic pattern: dot-separated segments, `*` for any one segment, `>`
/// (last) for one or more, `{identity}` for the caller's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    segments: Vec<TopicSegment>,
}

impl std::fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicSegment {
    Literal(String),
    One,
    Rest,
    Identity,
}

impl TopicPattern {
    /// Parses a pattern, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_TOPIC_LEN {
            return Err(format!("a topic or pattern is at most {MAX_TOPIC_LEN} bytes long"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = text.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "*" => TopicSegment::One,
                ">" if i + 1 == parts.len() => TopicSegment::Rest,
                ">" => return Err(format!("\"{text}\": `>` may only end a pattern")),
                "{identity}" => TopicSegment::Identity,
                literal if valid_topic_segment(literal) => TopicSegment::Literal(literal.to_owned()),
                _ => {
                    return Err(format!(
                        "\"{text}\" is not a topic pattern: dot-separated segments of letters, digits, '_', '-' and ':', or `*`, `>`, `{{identity}}`"
                    ))
                }
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `topic` matches, `{identity}` standing for `identity`.
    pub fn matches(&self, topic: &str, identity: Option<&str>) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match segment {
                TopicSegment::Rest => return parts.next().is_some(),
                _ => {
                    let Some(part) = parts.next() else { return false };
                    let ok = match segment {
                        TopicSegment::Literal(literal) => literal == part,
                        TopicSegment::One => true,
                        TopicSegment::Identity => identity == Some(part),
                        TopicSegment::Rest => unreachable!(),
                    };
                    if !ok {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic `other` matches also matches this pattern (a
    /// rule covering a subscription), `{identity}` standing for `identity`.
    pub fn covers(&self, other: &TopicPattern, identity: Option<&str>) -> bool {
        let mut theirs = other.segments.iter();
        for mine in &self.segments {
            let Some(their) = theirs.next() else { return false };
            let ok = match (mine, their) {
                (TopicSegment::Rest, _) => return true,
                (_, TopicSegment::Rest) => false,
                (TopicSegment::One, TopicSegment::Literal(_) | TopicSegment::One) => true,
                (TopicSegment::Literal(a), TopicSegment::Literal(b)) => a == b,
                (TopicSegment::Identity, TopicSegment::Literal(b)) => identity == Some(b.as_str()),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        theirs.next().is_none()
    }

    /// Whether it names one topic only (no wildcard).
    pub fn is_exact(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, TopicSegment::Literal(_)))
    }
}

/// The longest topic name or pattern.
pub const MAX_TOPIC_LEN: usize = 256;

/// Whether `topic` is a valid topic name (not a pattern).
pub fn valid_topic(topic: &str) -> bool {
    topic.len() <= MAX_TOPIC_LEN && topic.split('.').all(valid_topic_segment)
}

fn valid_topic_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

/// `static = { ... }`: a directory served as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFiles {
    /// The directory, absolute with symlinks resolved (checked to exist).
    pub root: std::path::PathBuf,
    /// The file served for a directory path; `None`: none.
    pub index: Option<String>,
    /// List a directory that has no index file (else 404).
    pub listing: bool,
    /// Send a `.br`, `.zst` or `.gz` sibling to clients that accept it.
    pub precompressed: bool,
}

/// Conditions a request must meet; all present ones must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
}

/// A host matcher. Hosts are compared lower-case, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches one or more labels.
    Wildcard(String),
}

/// A path matcher.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path equals this, byte for byte.
    Exact(String),
    /// The path starts with this. A prefix not ending in `/` only matches at a
    /// segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    /// The whole path matches this (anchored) regex.
    Regex(Regex),
    /// `/users/{id}/orders`: literal segments and one-segment captures.
    Template(Vec<TemplateSegment>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSegment {
    Literal(String),
    Capture(String),
}

/// A header or query parameter matcher.
#[derive(Debug, Clone)]
pub struct ValueMatch {
    /// Header names are lower-case; query names as written.
    pub name: String,
    pub kind: ValueMatchKind,
}

/// How a header or query value must look.
#[derive(Debug, Clone)]
pub enum ValueMatchKind {
    Exact(String),
    Regex(Regex),
    /// `true`: must be present; `false`: must be absent.
    Present(bool),
}

/// Changes to the request line and `Host` before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replace the matched `path_prefix` with this.
    pub prefix: Option<String>,
    /// Replace the whole path. With `path_regex` this is a replacement template
    /// (`$1`, `${name}`); with a path template, `{name}` captures are filled in.
    pub path: Option<String>,
    /// Send this `Host` upstream instead of the client's.
    pub host: Option<HeaderValue>,
    /// Query parameter edits.
    pub query: Option<QueryRewrite>,
}

/// Query parameter edits: `remove`, then `rename`, then `set`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryRewrite {
    pub remove: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub set: Vec<(String, String)>,
}

/// Header edits: `remove` first, then `set` (replace), then `add` (append).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// A redirect answer. Parts left `None` are taken from the request.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub status: StatusCode,
    /// A fixed target; when set, the parts below are ignored.
    pub location: Option<String>,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    /// Replace the matched `path_prefix` with this.
    pub prefix: Option<String>,
}

/// A fixed response.
#[derive(Debug, Clone)]
pub struct Direct {
    pub status: StatusCode,
    pub body: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Balancing algorithms available to clusters (see docs/configuration.md for
/// when to use which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastResponseTime,
    PowerOfTwo,
    Random,
    IpHash,
    ConsistentHash,
}

impl BalancerKind {
    /// Every balancer with its configuration name.
    pub const ALL: [(&'static str, BalancerKind); 8] = [
        ("round_robin", Self::RoundRobin),
        ("weighted_round_robin", Self::WeightedRoundRobin),
        ("least_connections", Self::LeastConnections),
        ("least_response_time", Self::LeastResponseTime),
        ("power_of_two", Self::PowerOfTwo),
        ("random", Self::Random),
        ("ip_hash", Self::IpHash),
        ("consistent_hash", Self::ConsistentHash),
    ];
}

/// What a hashing balancer hashes for a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's IP address.
    #[default]
    ClientIp,
    /// A request header's value (the client IP when absent).
    Header(HeaderName),
    /// A cookie's value (the client IP when absent).
    Cookie(String),
    /// The request path.
    Path,
}

/// Protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge (cleartext).
    Http2,
}

/// A named group of endpoints and how to reach them.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub balancer: BalancerKind,
    /// The configured endpoints; empty with `endpoints_from`.
    pub endpoints: Vec<Endpoint>,
    /// Where endpoints are discovered at run time; `None`: `endpoints` only.
    pub endpoints_from: Option<EndpointSource>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per endpoint.
    pub pool_max_idle_per_endpoint: usize,
    /// How long an idle upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// What `consistent_hash` hashes (`ip_hash` always hashes the client IP).
    pub hash_key: HashKey,
    /// A new or recovered endpoint ramps up to its full share over this long.
    pub slow_start: Option<Duration>,
    /// Active checks; `None`: every endpoint counts as healthy.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection; `None`: endpoints are never ejected.
    pub outlier_detection: Option<OutlierDetection>,
    /// Below this share of available endpoints (percent), spread requests
    /// over all of them; 0 turns panic mode off.
    pub panic_threshold: u32,
    /// Cookie-based affinity; `None`: off.
    pub sticky: Option<Sticky>,
    /// How much retrying the cluster allows (always set: a default applies).
    pub retry_budget: RetryBudget,
    /// `None`: no breaker and no concurrency limit.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// TLS to the endpoints; `None`: cleartext.
    pub tls: Option<UpstreamTls>,
    /// A PROXY protocol header starts each `tcp` listener connection to an
    /// endpoint; `None`: none.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
}

/// PROXY protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocolVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// Where a cluster finds its endpoints at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointSource {
    /// Instances registered under this service name in the service registry.
    Registry { service: String },
    /// Addresses a DNS name resolves to.
    Dns(DnsDiscovery),
}

/// `endpoints_from = { dns = ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsDiscovery {
    pub name: String,
    pub record: DnsRecord,
    /// The port of every address (A/AAAA); SRV records carry their own.
    pub port: u16,
    /// A nameserver to ask; `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// The records' TTL, clamped to these bounds, sets when to look again.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// Weight of each address (A/AAAA); SRV records carry their own.
    pub weight: u32,
}

/// Which records name the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsRecord {
    /// A and AAAA.
    Address,
    /// SRV: target, port and weight per record.
    Srv,
}

/// How the gateway speaks TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// CA file to verify endpoints against; `None`: the system's roots.
    pub ca: Option<String>,
    /// The name to ask for (SNI) and verify; `None`: the endpoint's host.
    pub server_name: Option<String>,
    /// (certificate chain, key) files presented to endpoints that ask (mTLS).
    pub client_cert: Option<(String, String)>,
}

/// Retries may add at most `ratio` of the requests over `window`, plus
/// `min_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

/// A cluster's circuit breaker and concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreaker {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    /// 0: off.
    pub consecutive_failures: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
    /// Requests in flight at once; `None`: unlimited.
    pub max_concurrent: Option<usize>,
    /// Requests that may wait for a slot.
    pub max_pending: usize,
    /// Longest a pending request waits.
    pub pending_timeout: Duration,
    /// One breaker per endpoint instead of one for the cluster.
    pub per_endpoint: bool,
}

/// How endpoints are actively checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    /// Up to this much is added at random to each interval, so that checks of
    /// many endpoints (and many gateways) do not fire in lockstep.
    pub jitter: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy endpoint out.
    pub unhealthy_threshold: u32,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HealthCheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers with an expected status (and body substring).
    Http {
        path: String,
        /// The Host header; the endpoint's address when `None`.
        host: Option<String>,
        /// Inclusive status ranges that pass.
        expected_statuses: Vec<(u16, u16)>,
        body_contains: Option<String>,
    },
}

/// When an endpoint is ejected for failing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive failed requests (5xx, connect failure, reset) that eject.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each repeat adds as much again.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// Never eject more than this share of the cluster (percent).
    pub max_ejected_percent: u32,
}

/// Cookie-based affinity settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    /// Cookie lifetime (`Max-Age`); `None`: a session cookie.
    pub ttl: Option<Duration>,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as written (an IP literal or a DNS name).
    pub address: String,
    pub weight: u32,
}

/// Defaults applied where a key is absent (documented in docs/configuration.md).
pub mod defaults {
    use std::time::Duration;

    pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Bounds on how often DNS discovery looks again (the records' TTL, clamped).
    /// Span export.
    pub const TRACE_BATCH_SIZE: usize = 512;
    pub const TRACE_QUEUE_SIZE: usize = 4096;
    pub const TRACE_BATCH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DNS_MIN_REFRESH: Duration = Duration::from_secs(1);
    pub const DNS_MAX_REFRESH: Duration = Duration::from_secs(60);
    pub const LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// L4 listeners: a TCP connection or UDP session with no traffic this long ends.
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const TCP_CONNECT_ATTEMPTS: u32 = 3;
    pub const UDP_MAX_SESSIONS: usize = 10_000;
    pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const COMPRESSION_MIN_SIZE: u64 = 1024;
    pub const CACHE_MAX_SIZE: u64 = 256 << 20;
    pub const CACHE_MAX_OBJECT: u64 = 8 << 20;
    pub const CACHE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HUB_HISTORY: usize = 100;
    pub const HUB_HISTORY_TTL: Duration = Duration::from_secs(3600);
    pub const HUB_MAX_MESSAGE: u64 = 64 << 10;
    pub const HUB_QUEUE: usize = 256;
    pub const HUB_HEARTBEAT: Duration = Duration::from_secs(15);
    pub const HUB_RETRY: Duration = Duration::from_secs(3);
    pub const HUB_LONG_POLL_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HUB_MAX_TOPICS: usize = 10_000;
    pub const HUB_MAX_SUBSCRIPTIONS: usize = 16;
    /// Media types compressed unless a route lists its own.
    pub const COMPRESSIBLE_TYPES: [&str; 12] = [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/ld+json",
        "application/manifest+json",
        "application/wasm",
        "application/x-ndjson",
        "image/svg+xml",
    ];
    pub const MAX_HEADER_SIZE: u64 = 64 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const MAX_CONCURRENT_STREAMS: u32 = 256;
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const ROUTE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const POOL_MAX_IDLE: usize = 128;
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    pub const HEALTH_PATH: &str = "/";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
    pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
    pub const OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
    pub const OUTLIER_MAX_EJECTED_PERCENT: u32 = 50;
    pub const PANIC_THRESHOLD: u32 = 50;
    pub const STICKY_COOKIE: &str = "switchyard_sticky";
    pub const RETRY_ATTEMPTS: u32 = 2;
    pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
    pub const RETRY_MAX_REPLAY_BODY: u64 = 64 * 1024;
    pub const RETRY_BUDGET_RATIO: f64 = 0.2;
    pub const RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
    pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
    pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
    pub const IDEMPOTENCY_MAX_BODY: u64 = 1024 * 1024;
    pub const IDEMPOTENCY_MAX_ENTRIES: usize = 10_000;
    pub const BREAKER_FAILURE_RATIO: f64 = 0.5;
    pub const BREAKER_MIN_REQUESTS: u32 = 20;
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
    pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
    pub const BREAKER_HALF_OPEN_PROBES: u32 = 3;
    pub const BREAKER_PENDING_TIMEOUT: Duration = Duration::from_secs(1);
    pub const RATE_LIMIT_MAX_KEYS: usize = 100_000;
    pub const MAX_URI_LENGTH: u64 = 8 * 1024;
}

#[cfg(test)]
mod topic_tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        let p = |t: &str| TopicPattern::parse(t).unwrap();
        assert!(p("news.sport").matches("news.sport", None));
        assert!(!p("news.sport").matches("news.sport.x", None));
        assert!(p("news.*").matches("news.sport", None));
        assert!(!p("news.*").matches("news", None));
        assert!(!p("news.*").matches("news.a.b", None));
        assert!(p("news.>").matches("news.a.b", None));
        assert!(!p("news.>").matches("news", None));
        assert!(p(">").matches("anything.at.all", None));
        assert!(p("user.{identity}.*").matches("user.alice.inbox", Some("alice")));
        assert!(!p("user.{identity}.*").matches("user.bob.inbox", Some("alice")));
        assert!(!p("user.{identity}").matches("user.alice", None));
        assert!(p("a.b").is_exact() && !p("a.*").is_exact());
        assert!(p("news.*").covers(&p("news.sport"), None));
        assert!(p("news.*").covers(&p("news.*"), None));
        assert!(!p("news.*").covers(&p("news.>"), None));
        assert!(p("news.>").covers(&p("news.a.*"), None));
        assert!(!p("news.sport").covers(&p("news.*"), None));
        assert!(p("user.{identity}").covers(&p("user.alice"), Some("alice")));
        assert!(!p("user.{identity}").covers(&p("user.*"), Some("alice")));
        assert!(TopicPattern::parse("a.>.b").is_err());
        assert!(TopicPattern::parse("a..b").is_err());
        assert!(TopicPattern::parse("a b").is_err());
        assert!(valid_topic("orders.eu-west:1") && !valid_topic("a.*") && !valid_topic(""));
    }
}
