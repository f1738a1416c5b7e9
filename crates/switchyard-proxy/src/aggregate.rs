//! `aggregate` routes: one client request answered by several upstream
//! calls, merged into one JSON object keyed by call name.
//!
//! Calls start as soon as the calls whose answers they use have answered
//! (all at once when none depend on another), each through its cluster's
//! balancer, retries and breaker like any proxied request ([`forward`]),
//! under the same request id and trace (each attempt is a child span).
//! Every call has its own timeout; the whole answer has the route's.
//!
//! A call succeeds with a 2xx JSON answer no larger than `max_response`. A
//! required call that fails fails the whole answer (502, or 400 when the
//! client's request lacks what its target needs, or 504 when the time ran
//! out), naming the call; an optional one becomes `null` with an entry in
//! the answer's `errors` member.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};
use switchyard_config::{Aggregate, PathMatch, TemplatePart};

use crate::body::{collect_limited, Collected, ProxyBody};
use crate::error::ProxyError;
use crate::forward::forward;
use crate::pipeline::{ConnectionInfo, Outcome, RequestIds};
use crate::snapshot::RouteEntry;

/// Everything but RFC 3986's unreserved characters is escaped in a value
/// put into a target.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

static FORWARDED: http::HeaderName = http::HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// Why a call has no answer.
#[derive(Debug, Clone)]
enum Failure {
    /// The client's request lacks what the target needs.
    Input(String),
    /// A call it uses failed.
    Dependency(String),
    /// The upstream answered with this status.
    Status(StatusCode),
    /// The gateway could not get an answer (the error's status and text).
    Proxy(StatusCode, String),
    /// The answer is not usable JSON, or too big.
    Answer(String),
    /// The aggregate's time ran out first.
    TimedOut,
}

impl Failure {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status(status) | Self::Proxy(status, _) => Some(status.as_u16()),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Input(why) => why.clone(),
            Self::Dependency(call) => format!("call \"{call}\", whose answer it uses, failed"),
            Self::Status(status) => format!("the upstream answered {}", status.as_u16()),
            Self::Proxy(_, why) => why.clone(),
            Self::Answer(why) => why.clone(),
            Self::TimedOut => "the aggregate's time ran out".into(),
        }
    }
}

/// Answers `req` from the aggregate's calls (`calls`: one route entry per
/// call, in the configuration's order).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    aggregate: &Aggregate,
    entry: &RouteEntry,
    calls: &[RouteEntry],
    listener: &switchyard_config::Listener,
    conn: &ConnectionInfo,
    req: &Request<Incoming>,
    ids: RequestIds<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let captures: Vec<(&str, &str)> = match &entry.route.matcher.path {
        Some(PathMatch::Template(segments)) => {
            crate::router::template_captures(segments, req.uri().path()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + aggregate.timeout;

    let count = aggregate.calls.len();
    let mut results: Vec<Option<Result<Value, Failure>>> = vec![None; count];
    let mut started = vec![false; count];
    let mut running = FuturesUnordered::new();
    loop {
        // Start (or fail, when an input failed) every call whose inputs are
        // all in, until a pass starts nothing new.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..count {
                let call = &aggregate.calls[i];
                if started[i] || !call.uses.iter().all(|&u| results[u].is_some()) {
                    continue;
                }
                started[i] = true;
                progressed = true;
                if let Some(&failed) = call.uses.iter().find(|&&u| matches!(results[u], Some(Err(_)))) {
                    results[i] = Some(Err(Failure::Dependency(aggregate.calls[failed].name.clone())));
                    continue;
                }
                let sub = fill(
                    &call.target,
                    &captures,
                    &query,
                    req.headers(),
                    &aggregate.calls,
                    &results,
                )
                .and_then(|target| sub_request(aggregate, call, req, &target));
                match sub {
                    Ok(sub) => running.push(async move {
                        // The call's timeout covers its whole answer, body included.
                        let answer = run(&calls[i], listener, conn, sub, ids, aggregate.max_response);
                        let result = tokio::time::timeout(call.timeout, answer).await.unwrap_or_else(|_| {
                            Err(Failure::Proxy(
                                StatusCode::GATEWAY_TIMEOUT,
                                format!("no whole answer within the call's timeout ({:?})", call.timeout),
                            ))
                        });
                        (i, result)
                    }),
                    Err(failure) => results[i] = Some(Err(failure)),
                }
            }
        }
        // A failed required call decides the answer: no need to wait for
        // the others.
        let failed_required = aggregate
            .calls
            .iter()
            .zip(&results)
            .find(|(call, result)| call.required && matches!(result, Some(Err(_))));
        if let Some((call, Some(Err(failure)))) = failed_required {
            return Err(required_failed(&call.name, failure));
        }
        if running.is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, running.next()).await {
            Ok(Some((i, result))) => results[i] = Some(result),
            // Done, or out of time: what has not answered timed out.
            Ok(None) | Err(_) => break,
        }
    }
    drop(running);
    // Calls cut off by the aggregate's time count as timed out.
    for (i, result) in results.iter().enumerate() {
        if started[i] && result.is_none() {
            calls[i].metrics.request(
                &aggregate.calls[i].method,
                StatusCode::GATEWAY_TIMEOUT,
                aggregate.timeout,
            );
        }
    }

    let mut answer = Map::new();
    let mut errors = Map::new();
    for (call, result) in aggregate.calls.iter().zip(results) {
        match result.unwrap_or(Err(Failure::TimedOut)) {
            Ok(value) => {
                answer.insert(call.name.clone(), value);
            }
            Err(failure) if call.required => return Err(required_failed(&call.name, &failure)),
            Err(failure) => {
                tracing::info!(call = %call.name, reason = %failure.describe(), "aggregate: an optional call failed");
                answer.insert(call.name.clone(), Value::Null);
                let mut error = json!({ "error": failure.describe() });
                if let Some(status) = failure.status() {
                    error["status"] = status.into();
                }
                errors.insert(call.name.clone(), error);
            }
        }
    }
    if !errors.is_empty() {
        answer.insert("errors".into(), Value::Object(errors));
    }
    let body = serde_json::to_vec(&Value::Object(answer)).expect("JSON serialises");
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn required_failed(call: &str, failure: &Failure) -> ProxyError {
    match failure {
        Failure::Input(why) => ProxyError::AggregateInput {
            call: call.to_owned(),
            reason: why.clone(),
        },
        Failure::TimedOut | Failure::Proxy(StatusCode::GATEWAY_TIMEOUT, _) => {
            ProxyError::AggregateTimeout { call: call.to_owned() }
        }
        other => ProxyError::AggregateCall {
            call: call.to_owned(),
            status: other.status(),
            reason: other.describe(),
        },
    }
}

/// The call's request: its method and target, the forwarded headers, no
/// body.
fn sub_request(
    aggregate: &Aggregate,
    call: &switchyard_config::AggregateCall,
    req: &Request<Incoming>,
    target: &str,
) -> Result<Request<crate::body::RequestBody>, Failure> {
    let mut builder = Request::builder().method(call.method.clone()).uri(target);
    // The client's host (HTTP/2 clients send it as `:authority`).
    if let Some(host) = crate::pipeline::request_host(req) {
        builder = builder.header(header::HOST, host);
    }
    // The trace context always goes (replaced by each attempt's own span
    // when the gateway records spans), and the forwarding headers (which
    // the forwarding step keeps only from trusted proxies, as for any
    // request), with the configured headers.
    let always = [
        &crate::trace::TRACEPARENT,
        &crate::trace::TRACESTATE,
        &FORWARDED,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
    ];
    for name in always.into_iter().chain(&aggregate.forward_headers) {
        for value in req.headers().get_all(name) {
            builder = builder.header(name, value);
        }
    }
    builder = builder.header(header::ACCEPT, HeaderValue::from_static("application/json"));
    builder
        .body(http_body_util::Either::Right(http_body_util::Empty::new()))
        .map_err(|e| {
            Failure::Input(format!(
                "the call's target \"{target}\" is not a valid request target: {e}"
            ))
        })
}

/// One call, through the cluster like any proxied request.
async fn run(
    entry: &RouteEntry,
    listener: &switchyard_config::Listener,
    conn: &ConnectionInfo,
    sub: Request<crate::body::RequestBody>,
    ids: RequestIds<'_>,
    max_response: u64,
) -> Result<Value, Failure> {
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let method = sub.method().clone();
    let response = match forward(entry, listener, conn, sub, ids, started, &mut outcome).await {
        Ok(response) => response,
        Err(error) => {
            entry.metrics.request(&method, error.status(), started.elapsed());
            return Err(Failure::Proxy(error.status(), error.client_message()));
        }
    };
    let status = response.status();
    entry.metrics.request(&method, status, started.elapsed());
    if !status.is_success() {
        return Err(Failure::Status(status));
    }
    let body = match collect_limited(response.into_body(), max_response).await {
        Ok(Collected::Complete(body)) => body,
        Ok(Collected::TooLarge(_)) => {
            return Err(Failure::Answer(format!(
                "the answer is larger than max_response ({max_response} bytes)"
            )))
        }
        Err(error) => return Err(Failure::Answer(format!("the answer could not be read: {error}"))),
    };
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| Failure::Answer(format!("the answer is not JSON: {e}")))
}

/// The target with its variables filled in (each value percent-encoded).
fn fill(
    parts: &[TemplatePart],
    captures: &[(&str, &str)],
    query: &[(String, String)],
    headers: &http::HeaderMap,
    calls: &[switchyard_config::AggregateCall],
    results: &[Option<Result<Value, Failure>>],
) -> Result<String, Failure> {
    let mut out = String::new();
    for part in parts {
        let value: std::borrow::Cow<'_, str> = match part {
            TemplatePart::Literal(text) => {
                out.push_str(text);
                continue;
            }
            TemplatePart::Path(name) => {
                let raw = captures
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| Failure::Input(format!("the path has no {{{name}}}")))?;
                // A capture is still percent-encoded as the client sent it.
                percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
            }
            TemplatePart::Query(name) => query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| std::borrow::Cow::Borrowed(v.as_str()))
                .ok_or_else(|| Failure::Input(format!("the query parameter \"{name}\" is missing")))?,
            TemplatePart::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(std::borrow::Cow::Borrowed)
                .ok_or_else(|| Failure::Input(format!("the header \"{name}\" is missing")))?,
            TemplatePart::Call { call, pointer } => {
                let Some(Ok(answer)) = &results[*call] else {
                    return Err(Failure::Dependency(calls[*call].name.clone()));
                };
                let name = &calls[*call].name;
                match answer.pointer(pointer) {
                    Some(Value::String(s)) => std::borrow::Cow::Owned(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => std::borrow::Cow::Owned(v.to_string()),
                    Some(_) => {
                        return Err(Failure::Answer(format!(
                            "{{call.{name}{pointer}}} is not a string, number or boolean in call \"{name}\"'s answer"
                        )))
                    }
                    None => {
                        return Err(Failure::Answer(format!(
                            "call \"{name}\"'s answer has nothing at \"{pointer}\""
                        )))
                    }
                }
            }
        };
        // An empty value or a dot segment would change which resource the
        // target names (`/users/` is the collection, `/users/..` walks up,
        // and `%2E%2E` is decoded back by normalising upstreams).
        if value.is_empty() || value == "." || value == ".." {
            return Err(Failure::Input(format!(
                "an empty, \".\" or \"..\" value for {}",
                describe(part)
            )));
        }
        out.extend(utf8_percent_encode(&value, VALUE));
    }
    Ok(out)
}

fn describe(part: &TemplatePart) -> String {
    match part {
        TemplatePart::Literal(text) => text.clone(),
        TemplatePart::Path(name) => format!("{{path.{name}}}"),
        TemplatePart::Query(name) => format!("{{query.{name}}}"),
        TemplatePart::Header(name) => format!("{{header.{name}}}"),
        TemplatePart::Call { pointer, .. } => format!("a value at \"{pointer}\""),
    }
}

/// The name a call of an aggregate route counts under in metrics and logs.
pub(crate) fn call_route_name(route: &str, call: &str) -> String {
    format!("{route}.{call}")
}

/// The route entries of an aggregate's calls: each a forwarding route to
/// its cluster, with the call's timeout and retries, counted in metrics
/// as `{route}.{call}` (handles from `metrics`, the registry's, by name and
/// cluster).
pub(crate) fn call_entries(
    route: &switchyard_config::Route,
    aggregate: &Aggregate,
    clusters: &std::collections::HashMap<String, Arc<crate::snapshot::ClusterRuntime>>,
    metrics: &std::collections::HashMap<(String, String), Arc<crate::metrics::RouteMetrics>>,
) -> Vec<RouteEntry> {
    aggregate
        .calls
        .iter()
        .map(|call| {
            let name = call_route_name(&route.name, &call.name);
            let handles = metrics[&(name.clone(), call.cluster.clone())].clone();
            let mut call_route = route.clone();
            call_route.name = name.clone();
            call_route.action = switchyard_config::RouteAction::Forward {
                cluster: call.cluster.clone(),
            };
            call_route.matcher = Default::default();
            call_route.timeout = call.timeout;
            call_route.retry = call.retry.clone();
            call_route.hedge = None;
            call_route.idempotency = None;
            call_route.fault = None;
            call_route.rate_limits = Vec::new();
            call_route.ip_filter = None;
            call_route.cors = None;
            call_route.auth = None;
            call_route.rewrite = Default::default();
            call_route.request_headers = Default::default();
            call_route.response_headers = Default::default();
            call_route.compression = None;
            call_route.cache = None;
            call_route.transform = None;
            RouteEntry::for_call(Arc::new(call_route), clusters.get(&call.cluster).cloned(), handles)
        })
        .collect()
}
