//! The life of one HTTP request, top to bottom.
//!
//! [`handle`] is the whole pipeline in order:
//!
//! 1. take the current config snapshot (the request finishes on it even if a
//!    reload swaps in another meanwhile);
//! 2. assign the request id;
//! 3. check the request head (`check_request`);
//! 4. route it (`Router::find`);
//! 5. run the route's action: a direct response, a redirect, or `forward`:
//!    pick an endpoint, rewrite the request, send it through the cluster's pool
//!    under the route timeout, and stream the response back;
//! 6. turn any error into the client's JSON error (`ProxyError::into_response`,
//!    the only place that does);
//! 7. log the request when its response body ends (`access_log`).
//!
//! Later filters (auth, rate limits, cache...) slot in between 4 and 5.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use switchyard_config::{Direct, PathMatch, Redirect, RouteAction};

use crate::access_log::{AccessRecord, Logged, PendingSpan};
use crate::body::ProxyBody;
use crate::error::{ProxyError, Side};
use crate::trace::{Attribute, RequestTrace, SpanData, SpanKind};
use switchyard_security::cors::{CorsPolicy, Preflight};

use crate::filters;
use crate::forward::forward;
use crate::grpc;
use crate::request_id::{self, X_REQUEST_ID};
use crate::router::{template_captures, RequestView};
use crate::snapshot::{RouteEntry, Snapshot};
use crate::Shared;

/// The verified client certificate's subject, for routing and the upstream (mTLS).
pub static X_CLIENT_CERT_SUBJECT: http::HeaderName = http::HeaderName::from_static("x-client-cert-subject");
/// The verified client certificate's SAN entries (`DNS:`, `URI:`, `email:`).
pub static X_CLIENT_CERT_SAN: http::HeaderName = http::HeaderName::from_static("x-client-cert-san");

/// The response body type the gateway's listeners send.
pub type ResponseBody = Logged<ProxyBody>;

/// Facts about the client connection a request arrived on.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    /// Whether the peer is a trusted proxy (decided when the connection opened).
    pub trusted: bool,
    /// The peer's IP as a header value, for `X-Forwarded-For` (made once).
    pub peer_value: HeaderValue,
    /// What the TLS handshake established (`https` listeners).
    pub tls: Option<TlsInfo>,
    /// Where tasks that outlive the request (WebSocket tunnels) are tracked,
    /// so that a graceful shutdown waits for them.
    pub(crate) tasks: Option<tokio_util::task::TaskTracker>,
    /// The connection's place under the listener's limits, which a
    /// WebSocket keeps after hyper lets go of the socket.
    pub(crate) guard: Option<Arc<crate::server::ConnectionGuard>>,
}

/// Facts from a connection's TLS handshake.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The verified client certificate's subject and SAN entries (mTLS), as
    /// the header values sent upstream.
    pub client_subject: Option<HeaderValue>,
    pub client_san: Option<HeaderValue>,
}

impl TlsInfo {
    /// Reads what a finished handshake established.
    pub fn of(session: &rustls::ServerConnection) -> Self {
        let client = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(switchyard_security::tls::describe_client_cert);
        let (client_subject, client_san) = match client {
            Some((subject, sans)) => (
                HeaderValue::from_str(&subject).ok(),
                (!sans.is_empty())
                    .then(|| HeaderValue::from_str(&sans.join(", ")).ok())
                    .flatten(),
            ),
            None => (None, None),
        };
        Self {
            server_name: session.server_name().map(str::to_owned),
            client_subject,
            client_san,
        }
    }
}

impl ConnectionInfo {
    /// Facts about a connection from `peer` accepted on `listener`.
    pub fn new(peer: SocketAddr, listener: Arc<str>, trusted: bool) -> Self {
        let peer_value = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value");
        Self {
            peer,
            listener,
            trusted,
            peer_value,
            tls: None,
            tasks: None,
            guard: None,
        }
    }

    /// The same connection, with long-lived tasks tracked by `tasks` and
    /// its place under the listener's limits.
    pub(crate) fn with_tasks(
        mut self,
        tasks: tokio_util::task::TaskTracker,
        guard: Arc<crate::server::ConnectionGuard>,
    ) -> Self {
        self.tasks = Some(tasks);
        self.guard = Some(guard);
        self
    }

    /// The same connection, over TLS.
    pub fn with_tls(mut self, tls: TlsInfo) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// What names a request to logs, traces and upstreams.
#[derive(Clone, Copy)]
pub(crate) struct RequestIds<'a> {
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) trace: &'a RequestTrace,
    /// Whether the request is a gRPC call (its content type), decided once.
    pub(crate) grpc: bool,
}

/// What the access log learns while the request is handled; borrowed from
/// the snapshot so that nothing is copied unless the log is on.
#[derive(Default)]
pub(crate) struct Outcome<'s> {
    pub(crate) route: Option<&'s str>,
    /// The route's CORS policy and the request's origin: every answer,
    /// errors included, gets the CORS headers (so scripts can read a 429).
    pub(crate) cors: Option<(&'s CorsPolicy, Option<String>)>,
    /// The matched route's counters (`None`: no route matched).
    pub(crate) metrics: Option<&'s crate::metrics::RouteMetrics>,
    pub(crate) upstream: Option<&'s str>,
    pub(crate) upstream_time: Option<std::time::Duration>,
}

/// Serves one request: the whole pipeline (see the module docs).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnectionInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snapshot = shared.snapshot.load_full();
    let request_id = request_id::from_request_or_new(req.headers());
    let trace = RequestTrace::new(req.headers(), snapshot.tracer.as_ref());
    let version = req.version();
    let method = req.method().clone();
    let grpc = grpc::content_type(req.headers()).cloned();

    // Kept for the access log only when it is on: the request moves upstream.
    let log_enabled = snapshot.config.access_log;
    let logged_head = (log_enabled || trace.recorder.is_some()).then(|| {
        (
            req.method().clone(),
            req.version(),
            request_host(&req).unwrap_or("-").to_owned(),
            req.uri().path().to_owned(),
        )
    });

    let mut outcome = Outcome::default();
    let ids = RequestIds {
        request_id: &request_id,
        trace: &trace,
        grpc: grpc.is_some(),
    };
    let result = serve(&snapshot, &conn, req, ids, started, &mut outcome).await;
    let (mut response, error) = match result {
        Ok(response) => (response, None),
        Err(error) => {
            match error.side() {
                Side::Upstream => {
                    tracing::warn!(%error, request_id = request_id.to_str().unwrap_or_default(), "request failed")
                }
                _ => tracing::debug!(%error, request_id = request_id.to_str().unwrap_or_default(), "request rejected"),
            }
            // A gRPC client reads a status, not a JSON body.
            let mut response = match &grpc {
                Some(content_type) => {
                    grpc::error_response(&error, &request_id, content_type.clone(), &error.client_message())
                }
                None => error.into_response(&request_id),
            };
            // After a malformed HTTP/1 request the connection's framing cannot
            // be trusted, and after a refused body its unread rest would have
            // to be drained: answer, then close.
            if matches!(
                error,
                ProxyError::BadRequest(_) | ProxyError::BodyTooLarge { .. } | ProxyError::ClientBody { .. }
            ) && version < Version::HTTP_2
            {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            (response, Some(error.code()))
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    // A process retiring after an upgrade sends its HTTP/1 clients to the
    // successor: this connection closes after this response.
    if version < Version::HTTP_2
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
        && shared.retiring.load(std::sync::atomic::Ordering::Relaxed)
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some((cors, origin)) = &outcome.cors {
        cors.apply(origin.as_deref(), response.headers_mut());
    }

    let span = match (&trace.recorder, &logged_head) {
        (Some(tracer), Some((method, version, host, path))) => Some(Box::new(PendingSpan {
            tracer: tracer.clone(),
            span: request_span(
                &trace,
                &conn,
                &outcome,
                &request_id,
                (method, *version, host, path),
                response.status(),
                error,
            ),
        })),
        _ => None,
    };
    let record = logged_head
        .filter(|_| log_enabled)
        .map(|(method, version, host, path)| {
            Box::new(AccessRecord {
                started,
                request_id: request_id.to_str().unwrap_or_default().to_owned(),
                trace_id: trace.context.trace_id_hex(),
                client: conn.peer.ip(),
                listener: conn.listener.to_string(),
                method,
                version,
                host,
                path,
                route: outcome.route.map(str::to_owned),
                status: response.status(),
                upstream: outcome.upstream.map(str::to_owned),
                upstream_time: outcome.upstream_time,
                error,
            })
        });
    let metrics = outcome.metrics.unwrap_or(&snapshot.unrouted);
    metrics.request(&method, response.status(), started.elapsed());
    let bytes = metrics.bytes.clone();
    // A gRPC status in the headers (trailers-only) is counted now; else the
    // body counts the one in its trailers.
    let grpc_trailers = grpc.and_then(|_| match response.headers().get(&grpc::GRPC_STATUS) {
        Some(status) => {
            metrics.grpc.count(status);
            None
        }
        None => Some(metrics.grpc.clone()),
    });
    Ok(response.map(|body| {
        Logged::new(body, record)
            .with_span(span)
            .counting(bytes)
            .with_grpc(grpc_trailers)
    }))
}

/// The request's server span, ended when its response body ends.
fn request_span(
    trace: &RequestTrace,
    conn: &ConnectionInfo,
    outcome: &Outcome<'_>,
    request_id: &HeaderValue,
    (method, version, host, path): (&http::Method, Version, &str, &str),
    status: http::StatusCode,
    error: Option<&'static str>,
) -> SpanData {
    let route = outcome.route.unwrap_or("-");
    let mut attributes = vec![
        ("http.request.method", Attribute::Str(method.to_string())),
        ("url.path", Attribute::Str(path.to_owned())),
        ("server.address", Attribute::Str(host.to_owned())),
        (
            "network.protocol.version",
            Attribute::Str(protocol_version(version).to_owned()),
        ),
        ("client.address", Attribute::Str(conn.peer.ip().to_string())),
        ("http.response.status_code", Attribute::Int(i64::from(status.as_u16()))),
        ("switchyard.listener", Attribute::Str(conn.listener.to_string())),
        ("switchyard.route", Attribute::Str(route.to_owned())),
        (
            "switchyard.request_id",
            Attribute::Str(request_id.to_str().unwrap_or_default().to_owned()),
        ),
    ];
    if let Some(upstream) = outcome.upstream {
        attributes.push(("switchyard.upstream", Attribute::Str(upstream.to_owned())));
    }
    SpanData {
        trace_id: trace.context.trace_id,
        span_id: trace.context.span_id,
        parent: trace.context.parent,
        name: format!("{method} {route}"),
        kind: SpanKind::Server,
        start: trace.started_at,
        end: trace.started_at,
        attributes,
        error: match error {
            Some(code) => Some(format!("{} {code}", status.as_u16())),
            None if status.is_server_error() => Some(format!("upstream answered {}", status.as_u16())),
            None => None,
        },
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Steps 3 to 5: check, route, act.
async fn serve<'s>(
    snapshot: &'s Arc<Snapshot>,
    conn: &Arc<ConnectionInfo>,
    mut req: Request<Incoming>,
    ids: RequestIds<'_>,
    started: Instant,
    outcome: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    check_request(&req)?;
    let listener = snapshot.listeners.get(&*conn.listener).ok_or_else(|| no_route(&req))?;
    // The verified client certificate (mTLS), never the client's own claim of
    // one; set before routing, so routes can match on it.
    if conn.tls.is_some()
        || req.headers().contains_key(&X_CLIENT_CERT_SUBJECT)
        || req.headers().contains_key(&X_CLIENT_CERT_SAN)
    {
        let headers = req.headers_mut();
        headers.remove(&X_CLIENT_CERT_SUBJECT);
        headers.remove(&X_CLIENT_CERT_SAN);
        if let Some(tls) = &conn.tls {
            if let Some(subject) = &tls.client_subject {
                headers.insert(X_CLIENT_CERT_SUBJECT.clone(), subject.clone());
            }
            if let Some(san) = &tls.client_san {
                headers.insert(X_CLIENT_CERT_SAN.clone(), san.clone());
            }
        }
    }

    let target_length = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_length > listener.config.max_uri_length {
        return Err(ProxyError::UriTooLong {
            limit: listener.config.max_uri_length,
        });
    }
    let host = request_host(&req).map(strip_port);
    // An HTTP/2 WebSocket (extended CONNECT) matches routes as the GET it
    // stands for, so `methods = ["GET"]` routes take both kinds.
    let method = if req.method() == http::Method::CONNECT && crate::websocket::requested(&req).is_some() {
        &http::Method::GET
    } else {
        req.method()
    };
    let view = RequestView {
        method,
        host,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let entry = listener.router.find(&view).ok_or_else(|| no_route(&req))?;
    outcome.route = Some(&entry.route.name);
    outcome.metrics = Some(&entry.metrics);

    // CORS: preflights are answered here; an actual request's origin is
    // kept for the response headers.
    outcome.cors = match &entry.cors {
        Some(cors) => {
            if CorsPolicy::is_preflight(req.method(), req.headers()) {
                return match cors.preflight(req.headers()) {
                    Preflight::Allowed(headers) => {
                        let mut response = Response::new(ProxyBody::empty());
                        *response.status_mut() = http::StatusCode::NO_CONTENT;
                        *response.headers_mut() = headers;
                        Ok(response)
                    }
                    Preflight::Denied(reason) => Err(ProxyError::CorsDenied { reason }),
                };
            }
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Some((cors, origin))
        }
        None => None,
    };

    // Route filters: IP lists, authentication, then rate limits.
    let filtered = listener.ip_filter.is_some() || entry.ip_filter.is_some() || !entry.limits.is_empty();
    let ip = filtered.then(|| filters::client_ip(conn, req.headers(), listener));
    if let Some(ip) = ip {
        if let Some(filter) = &listener.ip_filter {
            filters::check_ip(filter, ip, "listener")?;
        }
        if let Some(filter) = &entry.ip_filter {
            filters::check_ip(filter, ip, "route")?;
        }
    }
    let principal = match &entry.auth {
        Some(auth) => Some(auth.authenticate(req.headers(), req.uri().query()).await?),
        None => None,
    };
    let quota = match ip {
        Some(ip) => {
            filters::check_limits(
                &entry.limits,
                ip,
                req.headers(),
                principal.as_ref(),
                started,
                &entry.metrics,
            )
            .await?
        }
        None => filters::Quota::default(),
    };
    if let (Some(auth), Some(principal)) = (&entry.auth, &principal) {
        auth.forward(principal, req.headers_mut());
    }
    if let Some(hub) = &entry.hub {
        let mut response = crate::hub::serve(hub, entry, conn, req, principal).await?;
        quota.apply(response.headers_mut());
        return Ok(drain_on_removal(entry, response));
    }

    let head_request = req.method() == http::Method::HEAD;
    let compression = entry
        .route
        .compression
        .as_ref()
        .and_then(|c| crate::compress::Negotiated::of(c, req.method(), req.headers()).map(|n| (c, n)));
    let mut response = match &entry.route.action {
        RouteAction::Direct(direct) => direct_response(direct),
        RouteAction::Redirect(redirect) => redirect_response(redirect, entry, &req),
        RouteAction::Hub(_) => unreachable!("hub routes are answered above"),
        RouteAction::Aggregate(aggregate) => {
            let calls = entry.aggregate.as_deref().expect("an aggregate route has its calls");
            crate::aggregate::serve(aggregate, entry, calls, &listener.config, conn, &req, ids).await?
        }
        RouteAction::Static(files) => {
            let target = rewritten_path_and_query(entry, req.uri());
            crate::static_files::serve(files, entry.files.as_deref(), &req, target.path()).await?
        }
        RouteAction::Forward { .. } => match &entry.cache {
            Some(cache) => {
                let origin = crate::cache::Origin {
                    snapshot,
                    listener,
                    entry,
                    conn,
                    ids,
                    started,
                };
                crate::cache::serve(cache, origin, req, outcome).await?
            }
            None => {
                let req = req.map(http_body_util::Either::Left);
                forward(entry, &listener.config, conn, req, ids, started, outcome).await?
            }
        },
    };
    if let Some(transform) = &entry.route.transform {
        response = crate::transform::response(transform, &entry.route.name, head_request, response).await?;
    }
    if let Some((settings, negotiated)) = &compression {
        response = crate::compress::apply(settings, negotiated, response);
    }
    quota.apply(response.headers_mut());
    Ok(drain_on_removal(entry, response))
}

/// An event stream or gRPC response ends a grace period after a reload
/// removes its route (see [`crate::drain`]); other responses are untouched.
fn drain_on_removal(entry: &RouteEntry, response: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(kind) = crate::drain::Kind::of(response.headers().get(header::CONTENT_TYPE)) else {
        return response;
    };
    // Nothing left to drain: an empty body, or a trailers-only gRPC answer.
    if http_body::Body::is_end_stream(response.body()) || response.headers().contains_key(&crate::grpc::GRPC_STATUS) {
        return response;
    }
    let (drain, route, metrics) = (entry.drain.clone(), entry.route.clone(), entry.metrics.clone());
    response.map(|body| {
        ProxyBody::translated(body, |body| {
            crate::drain::Draining::new(body, drain, kind, route, metrics)
        })
    })
}

/// Rejects request heads that hyper accepts but a proxy must not pass on.
fn check_request(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    // RFC 9112 section 3.2: an HTTP/1.1 request without Host gets a 400.
    if req.version() == Version::HTTP_11 && hosts == 0 && req.uri().authority().is_none() {
        return Err(ProxyError::BadRequest("HTTP/1.1 request without a Host header"));
    }
    if !req.uri().path().starts_with('/') {
        return Err(ProxyError::BadRequest("the request target must be an absolute path"));
    }
    Ok(())
}

/// The path and query sent upstream after the route's rewrite, if any.
pub(crate) fn rewritten_path_and_query(entry: &RouteEntry, uri: &Uri) -> PathAndQuery {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let rewrite = &entry.route.rewrite;
    let new_path = match (&rewrite.prefix, &rewrite.path) {
        (Some(prefix), _) => replace_prefix(&entry.route.matcher.path, uri.path(), prefix),
        (None, Some(path)) => Cow::Owned(fill_path(&entry.route.matcher.path, uri.path(), path)),
        (None, None) if rewrite.query.is_none() => return original,
        (None, None) => Cow::Borrowed(uri.path()),
    };
    // A rewrite may map path captures into the query (`/v1/user?id={id}`):
    // the client's own query parameters follow.
    let mut joined = match uri.query() {
        Some(query) if new_path.contains('?') => format!("{new_path}&{query}"),
        Some(query) => format!("{new_path}?{query}"),
        None => new_path.into_owned(),
    };
    if let Some(edits) = &rewrite.query {
        joined = edit_query(&joined, edits);
    }
    PathAndQuery::try_from(joined).unwrap_or(original)
}

/// `target` with its query parameters removed, renamed and set (in that
/// order; the parameters are encoded again).
fn edit_query(target: &str, edits: &switchyard_config::QueryRewrite) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(name, _)| !edits.remove.contains(name))
        .collect();
    for (from, to) in &edits.rename {
        for param in params.iter_mut().filter(|(name, _)| name == from) {
            param.0.clone_from(to);
        }
    }
    for (name, value) in &edits.set {
        params.retain(|(n, _)| n != name);
        params.push((name.clone(), value.clone()));
    }
    if params.is_empty() {
        return path.to_owned();
    }
    let mut out = form_urlencoded::Serializer::for_suffix(format!("{path}?"), path.len() + 1);
    out.extend_pairs(params);
    out.finish()
}

/// `/api/users` with prefix `/api/` replaced by `/v2/` becomes `/v2/users`.
fn replace_prefix<'a>(matcher: &Option<PathMatch>, path: &'a str, replacement: &str) -> Cow<'a, str> {
    let Some(PathMatch::Prefix(matched)) = matcher else {
        return Cow::Borrowed(path);
    };
    let rest = &path[matched.len().min(path.len())..];
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement);
    match (replacement.ends_with('/'), rest.starts_with('/')) {
        (true, true) => out.push_str(&rest[1..]),
        (false, false) if !rest.is_empty() => {
            out.push('/');
            out.push_str(rest);
        }
        _ => out.push_str(rest),
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// A whole-path rewrite: regex replacement, template capture fill-in, or literal.
fn fill_path(matcher: &Option<PathMatch>, path: &str, template: &str) -> String {
    match matcher {
        Some(PathMatch::Regex(re)) => re.replace(path, template).into_owned(),
        Some(PathMatch::Template(segments)) => {
            let mut out = template.to_owned();
            for (name, value) in template_captures(segments, path).unwrap_or_default() {
                out = out.replace(&format!("{{{name}}}"), value);
            }
            out
        }
        _ => template.to_owned(),
    }
}

fn direct_response(direct: &Direct) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from(direct.body.clone())));
    *response.status_mut() = direct.status;
    for (name, value) in &direct.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

fn redirect_response(redirect: &Redirect, entry: &RouteEntry, req: &Request<Incoming>) -> Response<ProxyBody> {
    let location = match &redirect.location {
        Some(location) => location.clone(),
        None => {
            let uri = req.uri();
            let scheme = redirect.scheme.as_deref().unwrap_or("http");
            let request_host = request_host(req).unwrap_or("localhost");
            let host = redirect.host.as_deref().unwrap_or_else(|| strip_port(request_host));
            // Keep the client's port only when neither host nor scheme changes.
            let port = redirect.port.map(|p| format!(":{p}")).unwrap_or_else(|| {
                let same_origin = redirect.host.is_none() && redirect.scheme.is_none();
                match request_host.strip_prefix(strip_port(request_host)) {
                    Some(port) if same_origin => port.to_owned(),
                    _ => String::new(),
                }
            });
            let path = match (&redirect.path, &redirect.prefix) {
                (Some(path), _) => Cow::Owned(fill_path(&entry.route.matcher.path, uri.path(), path)),
                (None, Some(prefix)) => replace_prefix(&entry.route.matcher.path, uri.path(), prefix),
                (None, None) => Cow::Borrowed(uri.path()),
            };
            match uri.query() {
                Some(query) => format!("{scheme}://{host}{port}{path}?{query}"),
                None => format!("{scheme}://{host}{port}{path}"),
            }
        }
    };
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = redirect.status;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn no_route(req: &Request<Incoming>) -> ProxyError {
    ProxyError::NoRoute {
        method: req.method().to_string(),
        host: request_host(req).unwrap_or_default().to_owned(),
        path: req.uri().path().to_owned(),
    }
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form),
/// else the `Host` header. May include a port.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    host_of(req.uri(), req.headers())
}

fn host_of<'a>(uri: &'a Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn prefix_replacement_keeps_one_slash() {
        let prefix = |p: &str| Some(PathMatch::Prefix(p.to_owned()));
        let cases = [
            ("/api/", "/api/users", "/", "/users"),
            ("/api/", "/api/users", "/v2/", "/v2/users"),
            ("/api", "/api/users", "/v2", "/v2/users"),
            ("/api", "/api", "/", "/"),
            ("/api", "/api", "/v2", "/v2"),
            ("/api/", "/api/", "/internal/", "/internal/"),
            ("/api", "/api/x", "", "/x"),
        ];
        for (matched, path, replacement, want) in cases {
            assert_eq!(
                replace_prefix(&prefix(matched), path, replacement),
                want,
                "{matched} {path} {replacement}"
            );
        }
    }

    #[test]
    fn whole_path_rewrites() {
        let re = Some(PathMatch::Regex(regex::Regex::new("^(?:/old/([a-z]+))$").unwrap()));
        assert_eq!(fill_path(&re, "/old/page", "/new/$1"), "/new/page");
        let template = Some(PathMatch::Template(vec![
            switchyard_config::TemplateSegment::Literal("u".into()),
            switchyard_config::TemplateSegment::Capture("id".into()),
        ]));
        assert_eq!(
            fill_path(&template, "/u/42", "/users/{id}/profile"),
            "/users/42/profile"
        );
        assert_eq!(fill_path(&None, "/x", "/fixed"), "/fixed");
    }
}
