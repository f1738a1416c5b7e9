//! The admin API: a small JSON HTTP server on its own listener (loopback by
//! default) for probes and operators.
//!
//! | method | path          | what                                              |
//! |--------|---------------|---------------------------------------------------|
//! | GET    | `/live`       | the process is up                                 |
//! | GET    | `/ready`      | serving traffic (503 while draining)              |
//! | GET    | `/api/config` | the running configuration as JSON                 |
//! | PUT    | `/api/config` | validate and apply a new configuration atomically |
//! | GET    | `/api/clusters` | clusters and the live state of every endpoint   |
//! | GET    | `/api/routes` | routes in order, their action and filters         |
//!
//! `PUT /api/config?dry_run=true` validates without applying and answers with
//! what would change.
//!
//! Errors are `{"error": {"code", "message"}}`; an invalid configuration also
//! carries `details`, one entry per problem.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use switchyard_config::Admin;
use switchyard_proxy::Gateway;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shown instead of the admin token in `GET /api/config`; a `PUT` carrying it
/// back keeps the running token.
const REDACTED: &str = "<redacted>";

/// Replaces the process's log filter (`RUST_LOG` syntax); `Err` says why not.
pub type LogLevelControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The process's log filter control and its current value, set once by the
/// binary when logging starts (the subscriber is process-wide too).
static LOG_LEVEL: std::sync::OnceLock<(LogLevelControl, std::sync::Mutex<String>)> = std::sync::OnceLock::new();

/// Lets `PUT /api/log-level` change the log filter.
pub fn set_log_level_control(control: LogLevelControl, current: String) {
    let _ = LOG_LEVEL.set((control, std::sync::Mutex::new(current)));
}

/// Every admin response body: whole documents, or the dashboard's event stream.
type AdminBody = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed()
}

/// Largest configuration document `PUT /api/config` accepts.
const MAX_CONFIG_BODY: usize = 4 << 20;

/// What the admin API serves and acts on.
#[derive(Debug, Clone)]
struct AdminState {
    gateway: Gateway,
    token: Option<Arc<str>>,
    /// Fires when the admin listener stops; ends event streams.
    stop: CancellationToken,
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    /// The bound address.
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    /// A second descriptor of the listening socket, for a successor process.
    fd: OwnedFd,
}

impl AdminServer {
    /// Stops accepting admin connections.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// A duplicate of the listening socket, to hand to a successor process.
    pub fn passable_socket(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// Binds the admin listener and serves it in the background.
pub async fn start(settings: &Admin, gateway: Gateway) -> std::io::Result<AdminServer> {
    start_on(settings, gateway, None).await
}

/// [`start`] on `inherited`, the admin socket a predecessor process handed
/// over, when there is one; else binds `settings.listen`.
pub async fn start_on(settings: &Admin, gateway: Gateway, inherited: Option<OwnedFd>) -> std::io::Result<AdminServer> {
    let listener = match inherited {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)?
        }
        None => TcpListener::bind(settings.listen).await?,
    };
    let fd = listener.as_fd().try_clone_to_owned()?;
    let local_addr = listener.local_addr()?;
    gateway.set_admin_address(local_addr);
    let stop = CancellationToken::new();
    let state = AdminState {
        gateway,
        token: settings.token.as_deref().map(Arc::from),
        stop: stop.clone(),
    };
    tokio::spawn(accept_loop(listener, state, stop.clone()));
    tracing::info!(address = %local_addr, "admin listening");
    Ok(AdminServer { local_addr, stop, fd })
}

async fn accept_loop(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            // Once stopped, never accept again (after an upgrade the socket
            // lives on in the successor, which takes what comes).
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<AdminBody> {
    // Probes stay open so orchestrators need no secret; everything else needs it.
    let is_probe = matches!(req.uri().path(), "/live" | "/ready");
    if let Some(expected) = state.token.as_ref().filter(|_| !is_probe) {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // A browser opening the dashboard cannot send a header: the page
        // takes `?token=` once, drops it from the address bar, keeps it in a
        // same-site session cookie for reloads of the page, and sends the
        // header on every data call it makes. Only the page itself (no data)
        // accepts the query or the cookie.
        let page_token = || page_token(&req);
        let accepted = match presented {
            Some(p) => constant_time_eq(p.as_bytes(), expected.as_bytes()),
            None => page_token().is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes())),
        };
        if !accepted {
            let message = if req.uri().path() == "/" {
                "a valid token is required: open the dashboard as /?token=YOUR_ADMIN_TOKEN"
            } else {
                "a valid `Authorization: Bearer` token is required"
            };
            return error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        }
    }
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/api/registry/") {
        return registry_call(state, req, rest).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/live") => json_response(StatusCode::OK, &json!({"status": "live"})),
        (&Method::GET, "/ready") => {
            if state.gateway.is_draining() {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"}))
            } else {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            }
        }
        (&Method::GET, "/api/config") => {
            let (config, version) = state.gateway.versioned_config();
            match serde_json::to_value(&config.raw) {
                Ok(mut config) => {
                    // The admin token is a secret: never echo it.
                    if let Some(token) = config.pointer_mut("/admin/token") {
                        *token = Value::String(REDACTED.into());
                    }
                    let mut response = json_response(StatusCode::OK, &config);
                    response.headers_mut().insert(header::ETAG, etag(version));
                    response
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
            }
        }
        (&Method::PUT, "/api/config") => put_config(state, req).await,
        (&Method::GET, "/api/clusters") => {
            json_response(StatusCode::OK, &json!({"clusters": state.gateway.cluster_status()}))
        }
        (&Method::GET, "/api/routes") => json_response(StatusCode::OK, &routes(&state.gateway.config())),
        (&Method::GET, "/api/log-level") => match LOG_LEVEL.get() {
            Some((_, current)) => json_response(
                StatusCode::OK,
                &json!({"level": *current.lock().expect("log level lock is never poisoned")}),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "log levels are not adjustable in this process",
            ),
        },
        (&Method::PUT, "/api/log-level") => put_log_level(req).await,
        (&Method::GET, "/api/cache") => json_response(StatusCode::OK, &state.gateway.cache_stats()),
        (&Method::GET, "/api/nodes") => json_response(StatusCode::OK, &state.gateway.nodes().await),
        (&Method::GET, "/api/processes") => json_response(StatusCode::OK, &state.gateway.processes()),
        (&Method::POST, "/api/cache/purge") => purge_cache(state, req).await,
        (&Method::GET, "/") => static_document(DASHBOARD, "text/html; charset=utf-8"),
        (&Method::GET, "/api/openapi.json") => static_document(OPENAPI, "application/json"),
        (&Method::GET, "/api/registry") => json_response(StatusCode::OK, &state.gateway.registry_view().await),
        (&Method::GET, "/api/stats") => json_response(StatusCode::OK, &state.gateway.dashboard_summary()),
        (&Method::GET, "/api/stream") => stats_stream(state),
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(full(state.gateway.metrics_text()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (_, path) if ENDPOINTS.iter().any(|(_, known)| *known == path) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{} is not allowed on {path}", req.method()),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin endpoint at {path}"),
        ),
    }
}

/// Every fixed admin path with its methods, as `/api/openapi.json` lists them.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/live"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/config"),
    ("PUT", "/api/config"),
    ("GET", "/api/clusters"),
    ("GET", "/api/routes"),
    ("GET", "/api/registry"),
    ("POST", "/api/registry/{service}"),
    ("PUT", "/api/registry/{service}/{id}/heartbeat"),
    ("DELETE", "/api/registry/{service}/{id}"),
    ("GET", "/api/stats"),
    ("GET", "/api/stream"),
    ("GET", "/api/log-level"),
    ("PUT", "/api/log-level"),
    ("GET", "/api/cache"),
    ("POST", "/api/cache/purge"),
    ("GET", "/api/nodes"),
    ("GET", "/api/processes"),
];

/// The dashboard: one self-contained page (no outside scripts, styles or fonts).
const DASHBOARD: &str = include_str!("dashboard.html");
/// The OpenAPI 3 description of this API.
const OPENAPI: &str = include_str!("openapi.json");
/// How often `/api/stream` sends the figures.
const STREAM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn static_document(body: &'static str, content_type: &'static str) -> Response<AdminBody> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    // The page may talk to this listener only: nothing loads from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    response
}

/// `GET /api/stream`: the dashboard figures as server-sent events, one
/// `stats` event at once and then every second, until the client leaves or
/// the admin listener stops.
fn stats_stream(state: &AdminState) -> Response<AdminBody> {
    let events = futures_util::stream::unfold(
        (state.gateway.clone(), state.stop.clone(), true),
        |(gateway, stop, first)| async move {
            if !first {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(STREAM_INTERVAL) => {}
                }
            }
            let event = format!("event: stats\ndata: {}\n\n", gateway.dashboard_summary());
            Some((Ok(Frame::data(Bytes::from(event))), (gateway, stop, false)))
        },
    );
    let mut response = Response::new(StreamBody::new(events).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}

/// `POST /api/registry/{service}`, `PUT /api/registry/{service}/{id}/heartbeat`
/// and `DELETE /api/registry/{service}/{id}`; `rest` is the path after
/// `/api/registry/`.
async fn registry_call(state: &AdminState, req: Request<Incoming>, rest: &str) -> Response<AdminBody> {
    use switchyard_proxy::discovery::{Registration, RegistryError};
    let gateway = &state.gateway;
    let segments: Vec<&str> = rest.split('/').collect();
    let refused = |e: RegistryError| match e {
        RegistryError::Invalid(message) => error(StatusCode::BAD_REQUEST, "invalid_registration", &message),
        e @ RegistryError::NotFound { .. } => error(StatusCode::NOT_FOUND, "unknown_instance", &e.to_string()),
        e @ RegistryError::Full(_) => error(StatusCode::CONFLICT, "service_full", &e.to_string()),
        e @ RegistryError::Unavailable(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", &e.to_string())
        }
    };
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, [service]) => {
            let service = (*service).to_owned();
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        &format!("the registration could not be read: {e}"),
                    )
                }
            };
            let registration: Registration = match serde_json::from_slice(&body) {
                Ok(registration) => registration,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_registration",
                        &format!(
                            "expected {{\"address\": \"10.0.0.5:8080\", \"id\"?, \"port\"?, \"weight\"?, \"ttl\"?: \"10s\", \"metadata\"?: {{}}}}: {e}"
                        ),
                    )
                }
            };
            match gateway.register(&service, registration).await {
                Ok(instance) => {
                    tracing::info!(%service, id = %instance["id"], address = %instance["address"], "registry: instance registered");
                    json_response(StatusCode::CREATED, &json!({"service": service, "instance": instance}))
                }
                Err(e) => refused(e),
            }
        }
        (Method::PUT, [service, id, "heartbeat"]) => match gateway.heartbeat(service, id).await {
            Ok(instance) => json_response(StatusCode::OK, &json!({"service": service, "instance": instance})),
            Err(e) => refused(e),
        },
        (Method::DELETE, [service, id]) => match gateway.deregister(service, id).await {
            Ok(()) => {
                tracing::info!(%service, %id, "registry: instance deregistered");
                json_response(
                    StatusCode::OK,
                    &json!({"service": service, "id": id, "status": "deregistered"}),
                )
            }
            Err(e) => refused(e),
        },
        (method, [_] | [_, _] | [_, _, "heartbeat"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{method} is not allowed on /api/registry/{rest}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin endpoint at /api/registry/{rest}"),
        ),
    }
}

/// `PUT /api/log-level` with `{"level": "info,switchyard_proxy=debug"}`.
/// `POST /api/cache/purge` with `{"keys": [...], "prefixes": [...], "tags": [...]}`.
async fn purge_cache(state: &AdminState, req: Request<Incoming>) -> Response<AdminBody> {
    const EXPECTED: &str = "expected {\"keys\": [...], \"prefixes\": [...], \"tags\": [...]} with at least one entry";
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the body could not be read: {e}"),
            )
        }
    };
    let purge: switchyard_proxy::cache::Purge = match serde_json::from_slice(&body) {
        Ok(purge) => purge,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("{EXPECTED}: {e}")),
    };
    let named = [&purge.keys, &purge.prefixes, &purge.tags];
    if named.iter().all(|list| list.is_empty()) {
        return error(StatusCode::BAD_REQUEST, "bad_request", EXPECTED);
    }
    if named.iter().any(|list| list.iter().any(String::is_empty)) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an empty key, prefix or tag would name everything: list what to purge",
        );
    }
    let (purged, broadcast) = state.gateway.cache_purge(&purge).await;
    let nodes = match broadcast {
        None => json!("this node (no cluster mode)"),
        Some(Ok(())) => json!("all nodes"),
        Some(Err(why)) => json!(format!("this node only: {why}")),
    };
    json_response(StatusCode::OK, &json!({ "purged": purged, "nodes": nodes }))
}

async fn put_log_level(req: Request<Incoming>) -> Response<AdminBody> {
    let Some((control, current)) = LOG_LEVEL.get() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "log levels are not adjustable in this process",
        );
    };
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the body could not be read: {e}"),
            )
        }
    };
    let level = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("level").and_then(Value::as_str).map(str::to_owned));
    let Some(level) = level else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected {\"level\": \"...\"} with a filter such as \"debug\" or \"info,switchyard_proxy=debug\"",
        );
    };
    match control(&level) {
        Ok(()) => {
            *current.lock().expect("log level lock is never poisoned") = level.clone();
            tracing::info!(%level, "admin API: log level changed");
            json_response(StatusCode::OK, &json!({"level": level}))
        }
        Err(why) => error(
            StatusCode::BAD_REQUEST,
            "invalid_log_level",
            &format!("invalid log filter {level:?}: {why}"),
        ),
    }
}

/// Every route in precedence order as configured, with what it does and the
/// filters it applies.
fn routes(config: &switchyard_config::Config) -> Value {
    let routes: Vec<Value> = config
        .routes
        .iter()
        .zip(&config.raw.routes)
        .map(|(route, raw)| {
            let action = match &route.action {
                switchyard_config::RouteAction::Forward { cluster } => json!({"cluster": cluster}),
                switchyard_config::RouteAction::Redirect(_) => json!({"redirect": raw.redirect}),
                switchyard_config::RouteAction::Direct(_) => {
                    json!({"direct": {"status": raw.direct.as_ref().and_then(|d| d.status)}})
                }
                switchyard_config::RouteAction::Static(files) => json!({"static": {
                    "root": files.root.display().to_string(),
                    "index": files.index,
                    "listing": files.listing,
                    "precompressed": files.precompressed,
                }}),
                switchyard_config::RouteAction::Hub(hub) => json!({"hub": {
                    "history": hub.history,
                    "queue": hub.queue,
                    "publish_rules": hub.publish.len(),
                    "subscribe_rules": hub.subscribe.as_ref().map(Vec::len),
                }}),
                switchyard_config::RouteAction::Aggregate(aggregate) => json!({"aggregate": {
                    "calls": aggregate.calls.iter().map(|c| json!({
                        "name": c.name,
                        "cluster": c.cluster,
                        "required": c.required,
                        "uses": c.uses.iter().map(|&u| aggregate.calls[u].name.as_str()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "timeout_ms": aggregate.timeout.as_millis() as u64,
                }}),
            };
            let mut filters = Vec::new();
            if route.ip_filter.is_some() {
                filters.push("ip_filter");
            }
            if route.auth.is_some() {
                filters.push("auth");
            }
            if !route.rate_limits.is_empty() {
                filters.push("rate_limit");
            }
            if route.cors.is_some() {
                filters.push("cors");
            }
            if route.idempotency.is_some() {
                filters.push("idempotency");
            }
            if route.fault.is_some() {
                filters.push("fault");
            }
            json!({
                "name": route.name,
                "listener": route.listener,
                "match": raw.matcher,
                "action": action,
                "timeout_ms": route.timeout.as_millis() as u64,
                "idle_timeout_ms": route.idle_timeout.as_millis() as u64,
                "max_duration_ms": route.max_duration.map(|d| d.as_millis() as u64),
                "retry_attempts": route.retry.as_ref().map_or(1, |r| r.attempts),
                "filters": filters,
            })
        })
        .collect();
    json!({"routes": routes})
}

/// What changes between two configurations, section by section: the names
/// of listeners, routes and clusters added, removed and changed, and the
/// other top-level sections that differ.
fn diff(running: &Value, proposed: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for section in ["listeners", "routes", "clusters"] {
        let named = |v: &Value| -> Vec<(String, Value)> {
            v.get(section)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let name = item
                                .get("name")
                                .and_then(Value::as_str)
                                .map_or_else(|| format!("route-{i}"), str::to_owned);
                            (name, item.clone())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (old, new) = (named(running), named(proposed));
        let find = |list: &[(String, Value)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let added: Vec<&String> = new
            .iter()
            .filter(|(n, _)| find(&old, n).is_none())
            .map(|(n, _)| n)
            .collect();
        let removed: Vec<&String> = old
            .iter()
            .filter(|(n, _)| find(&new, n).is_none())
            .map(|(n, _)| n)
            .collect();
        let changed: Vec<&String> = new
            .iter()
            .filter(|(n, v)| find(&old, n).is_some_and(|o| o != *v))
            .map(|(n, _)| n)
            .collect();
        out.insert(
            section.to_owned(),
            json!({"added": added, "removed": removed, "changed": changed}),
        );
    }
    let others: Vec<&str> = ["runtime", "admin", "access_log", "cluster"]
        .into_iter()
        .filter(|k| running.get(k) != proposed.get(k))
        .collect();
    out.insert("other_sections_changed".to_owned(), json!(others));
    Value::Object(out)
}

async fn put_config(state: &AdminState, req: Request<Incoming>) -> Response<AdminBody> {
    // `If-Match: "7"` applies only over version 7 (compare-and-set).
    let expected = match req.headers().get(header::IF_MATCH).map(parse_etag) {
        None => None,
        Some(Ok(version)) => Some(version),
        Some(Err(())) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "If-Match must be a configuration version as GET /api/config's ETag gives it, such as \"7\"",
            )
        }
    };
    let dry_run = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "dry_run" || p == "dry_run=true" || p == "dry_run=1")
    });
    let body = match Limited::new(req.into_body(), MAX_CONFIG_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the configuration could not be read: {e}"),
            );
        }
    };
    let body = restore_token(
        &body,
        state.gateway.config().admin.as_ref().and_then(|a| a.token.as_deref()),
    );
    // Off the worker threads: a large document takes tens of milliseconds.
    let parsed = tokio::task::spawn_blocking(move || switchyard_config::parse_json(&body)).await;
    let config = match parsed.expect("parsing a configuration does not panic") {
        Ok(config) => config,
        Err(diagnostics) => {
            tracing::warn!(
                errors = diagnostics.len(),
                "admin API: configuration rejected, keeping the running one"
            );
            if !dry_run {
                state
                    .gateway
                    .count_rejected_reload(format!("admin API: {} error(s)", diagnostics.len()));
            }
            let details: Vec<Value> = diagnostics
                .iter()
                .map(|d| {
                    json!({
                        "path": d.path.to_string(),
                        "message": d.message,
                        "hint": d.hint,
                        "line": d.location.map(|l| l.line),
                        "column": d.location.map(|l| l.column),
                    })
                })
                .collect();
            let body = json!({
                "error": {
                    "code": "invalid_config",
                    "message": format!("the configuration has {} error(s); the running configuration is unchanged", diagnostics.len()),
                    "dry_run": dry_run,
                    "details": details,
                }
            });
            return json_response(StatusCode::BAD_REQUEST, &body);
        }
    };
    let (running, version) = state.gateway.versioned_config();
    if dry_run {
        let running_raw = serde_json::to_value(&running.raw).unwrap_or_default();
        let proposed_raw = serde_json::to_value(&config.raw).unwrap_or_default();
        return json_response(
            StatusCode::OK,
            &json!({
                "status": "valid",
                "dry_run": true,
                "running_version": version,
                "diff": diff(&running_raw, &proposed_raw),
            }),
        );
    }
    if config.admin.as_ref().map(|a| (a.listen, &a.token)) != running.admin.as_ref().map(|a| (a.listen, &a.token)) {
        tracing::warn!("admin API: changes to [admin] take effect on restart only");
    }
    // On a task of its own: a client that hangs up must not leave a
    // configuration half applied (swapped in, listeners not yet started).
    let gateway = state.gateway.clone();
    let applied = tokio::spawn(async move { gateway.put_config(config, expected).await })
        .await
        .expect("applying a configuration does not panic");
    match applied {
        Ok(version) => {
            tracing::info!(version, "admin API: configuration applied");
            let mut response = json_response(StatusCode::OK, &json!({"status": "applied", "version": version}));
            response.headers_mut().insert(header::ETAG, etag(version));
            response
        }
        Err(e @ switchyard_proxy::ApplyError::VersionConflict { .. }) => {
            tracing::warn!(error = %e, "admin API: configuration not applied");
            error(StatusCode::PRECONDITION_FAILED, "version_conflict", &e.to_string())
        }
        Err(e @ switchyard_proxy::ApplyError::ClusterUnavailable(_)) => {
            tracing::warn!(error = %e, "admin API: configuration not applied");
            error(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", &e.to_string())
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin API: configuration could not be applied, keeping the running one");
            error(StatusCode::CONFLICT, "apply_failed", &e.to_string())
        }
    }
}

/// The token a browser presents for the dashboard page (`GET /` only): the
/// `token` query parameter or the page's `switchyard_admin_token` cookie,
/// percent-decoded.
fn page_token(req: &Request<Incoming>) -> Option<String> {
    if req.method() != Method::GET || req.uri().path() != "/" {
        return None;
    }
    let decoded = |pairs: &str, key: &str| {
        form_urlencoded::parse(pairs.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let from_query = req.uri().query().and_then(|q| decoded(q, "token"));
    from_query.or_else(|| {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| decoded(pair.trim(), "switchyard_admin_token"))
    })
}

/// A configuration version as an entity tag: `"7"`.
fn etag(version: u64) -> header::HeaderValue {
    header::HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header value")
}

/// The version an `If-Match` names (quoted, or bare digits).
fn parse_etag(value: &header::HeaderValue) -> Result<u64, ()> {
    let text = value.to_str().map_err(|_| ())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    text.parse().map_err(|_| ())
}

/// Puts the running token back where a client sent the redacted placeholder.
fn restore_token(body: &Bytes, running: Option<&str>) -> Bytes {
    // Most documents carry no placeholder: no second parse for them (a
    // large configuration takes milliseconds to parse).
    // Searched without its angle brackets, which a JSON encoder may escape
    // (Go writes `\u003c`).
    let placeholder = b"redacted";
    if running.is_none() || !body.windows(placeholder.len()).any(|w| w == placeholder) {
        return body.clone();
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    match (value.pointer_mut("/admin/token"), running) {
        (Some(token), Some(running)) if token == REDACTED => {
            *token = Value::String(running.to_owned());
            Bytes::from(value.to_string())
        }
        _ => body.clone(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<AdminBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<AdminBody> {
    json_response(status, &json!({"error": {"code": code, "message": message}}))
}

/// Compares secrets without exiting early on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"short", b"longer"));
    }
}
