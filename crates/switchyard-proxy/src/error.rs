//! Errors on the request path, and the one place they become client responses.
//!
//! Each error knows which side is at fault and what status the client gets;
//! [`ProxyError::into_response`] is the only code that turns an error into an
//! HTTP answer (JSON with a stable code and the request id, per DESIGN.md).

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{BodyError, ProxyBody};

/// Boxed error type used by bodies.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Which party caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong or stalled.
    Downstream,
    /// The upstream failed, stalled or is unavailable.
    Upstream,
    /// The gateway itself (configuration, invariant).
    Internal,
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches {method} {host}{path}")]
    NoRoute { method: String, host: String, path: String },
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("cluster {cluster} has no available endpoint")]
    NoHealthyEndpoint { cluster: String },
    #[error("cannot connect to {endpoint}: {source}")]
    UpstreamConnect { endpoint: String, source: BoxError },
    #[error("connecting to {endpoint} timed out")]
    UpstreamConnectTimeout { endpoint: String },
    #[error("{endpoint} sent no response headers within {timeout:?}")]
    UpstreamTimeout { endpoint: String, timeout: Duration },
    #[error("upstream {endpoint} failed: {source}")]
    Upstream { endpoint: String, source: BoxError },
    #[error("the client stopped sending the request body")]
    ClientTimeout,
    #[error("reading the request body failed: {source}")]
    ClientBody { source: BoxError },
    #[error("the circuit breaker of cluster {cluster} is open")]
    CircuitOpen { cluster: String, retry_after: Duration },
    #[error("cluster {cluster} is at its concurrency limit: {reason}")]
    Overloaded { cluster: String, reason: String },
    #[error("fault injected: {status}")]
    FaultInjected { status: StatusCode },
    #[error("a request with this idempotency key is still being processed")]
    IdempotencyInProgress,
    #[error("this idempotency key was used for a different request")]
    IdempotencyMismatch,
    #[error("the request body is larger than the {limit} bytes an idempotent request may have")]
    IdempotencyBodyTooLarge { limit: u64 },
    #[error("the idempotency store is full")]
    IdempotencyStoreFull,
    #[error("client address refused by the {scope} ip_filter: {reason}")]
    IpDenied { scope: &'static str, reason: String },
    #[error("rate limited")]
    RateLimited {
        decision: switchyard_security::ratelimit::Decision,
    },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the shared rate-limit store is unreachable and the limit fails closed")]
    RateLimitUnavailable,
    #[error("CORS preflight refused: {reason}")]
    CorsDenied { reason: String },
    #[error("not authenticated: {reason}")]
    Unauthorized { challenges: Vec<String>, reason: String },
    #[error("not allowed: {reason}")]
    Forbidden { reason: String },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("route {route} has {limit} WebSocket connections open already")]
    WebSocketLimit { route: String, limit: usize },
    #[error("cluster {cluster} speaks HTTP/2 upstream; WebSocket needs an HTTP/1.1 cluster")]
    WebSocketUpstream { cluster: String },
    #[error("method not allowed (allowed: {allow})")]
    MethodNotAllowed { allow: &'static str },
    #[error("no such file")]
    FileNotFound,
    #[error("a precondition of the request does not hold")]
    PreconditionFailed,
    #[error("no requested range is within the {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error("only a stored response was asked for (only-if-cached) and none is stored")]
    NotCached,
    #[error("{0}")]
    HubRequest(String),
    #[error("the hub has {limit} topics, its maximum")]
    HubFull { limit: usize },
    #[error("the cluster's Redis cannot be reached")]
    ClusterUnavailable,
    #[error("the idempotency store (the cluster's Redis) cannot be reached")]
    IdempotencyUnavailable,
    #[error("aggregate call \"{call}\" failed: {reason}")]
    AggregateCall {
        call: String,
        status: Option<u16>,
        reason: String,
    },
    #[error("aggregate call \"{call}\" cannot be made from this request: {reason}")]
    AggregateInput { call: String, reason: String },
    #[error("aggregate call \"{call}\" did not answer in time")]
    AggregateTimeout { call: String },
    #[error("the {side} body is larger than the {limit} bytes a transform reads")]
    TransformTooLarge { side: &'static str, limit: u64 },
    #[error("the request body cannot be transformed: {0}")]
    TransformInput(String),
}

impl ProxyError {
    /// The party at fault.
    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute { .. }
            | Self::BadRequest(_)
            | Self::ClientTimeout
            | Self::ClientBody { .. }
            | Self::IdempotencyInProgress
            | Self::IdempotencyMismatch
            | Self::IdempotencyBodyTooLarge { .. }
            | Self::IpDenied { .. }
            | Self::RateLimited { .. }
            | Self::BodyTooLarge { .. }
            | Self::CorsDenied { .. }
            | Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::UriTooLong { .. }
            | Self::MethodNotAllowed { .. }
            | Self::FileNotFound
            | Self::PreconditionFailed
            | Self::RangeNotSatisfiable { .. }
            | Self::NotCached
            | Self::HubRequest(_) => Side::Downstream,
            Self::HubFull { .. } | Self::ClusterUnavailable | Self::IdempotencyUnavailable => Side::Internal,
            Self::AggregateInput { .. } | Self::TransformInput(_) => Side::Downstream,
            Self::AggregateCall { .. } | Self::AggregateTimeout { .. } => Side::Upstream,
            Self::TransformTooLarge { side, .. } => {
                if *side == "request" {
                    Side::Downstream
                } else {
                    Side::Upstream
                }
            }
            Self::WebSocketLimit { .. } => Side::Upstream,
            Self::FaultInjected { .. }
            | Self::IdempotencyStoreFull
            | Self::RateLimitUnavailable
            | Self::WebSocketUpstream { .. } => Side::Internal,
            Self::CircuitOpen { .. }
            | Self::Overloaded { .. }
            | Self::NoHealthyEndpoint { .. }
            | Self::UpstreamConnect { .. }
            | Self::UpstreamConnectTimeout { .. }
            | Self::UpstreamTimeout { .. }
            | Self::Upstream { .. } => Side::Upstream,
        }
    }

    /// Whether the failure was a timeout on either side.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::UpstreamConnectTimeout { .. } | Self::UpstreamTimeout { .. } | Self::ClientTimeout
        )
    }

    /// How outlier detection counts this error against the endpoint; `None`
    /// when the endpoint is not to blame (the client was, or none was picked).
    pub fn endpoint_failure(&self) -> Option<switchyard_balance::Failure> {
        use switchyard_balance::Failure;
        match self {
            Self::UpstreamConnect { .. } => Some(Failure::Connect),
            Self::UpstreamConnectTimeout { .. } | Self::UpstreamTimeout { .. } => Some(Failure::Timeout),
            Self::Upstream { .. } => Some(Failure::Reset),
            _ => None,
        }
    }

    /// Whether retrying elsewhere is safe: nothing reached an upstream.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::UpstreamConnect { .. } | Self::UpstreamConnectTimeout { .. })
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) | Self::ClientBody { .. } => StatusCode::BAD_REQUEST,
            Self::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NoHealthyEndpoint { .. }
            | Self::CircuitOpen { .. }
            | Self::Overloaded { .. }
            | Self::IdempotencyStoreFull
            | Self::RateLimitUnavailable
            | Self::WebSocketLimit { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::FaultInjected { status } => *status,
            Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::IpDenied { .. } | Self::CorsDenied { .. } | Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::FileNotFound => StatusCode::NOT_FOUND,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Self::HubRequest(_) => StatusCode::BAD_REQUEST,
            Self::HubFull { .. } | Self::ClusterUnavailable | Self::IdempotencyUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::AggregateCall { .. } => StatusCode::BAD_GATEWAY,
            Self::AggregateInput { .. } | Self::TransformInput(_) => StatusCode::BAD_REQUEST,
            Self::AggregateTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::TransformTooLarge { side, .. } => {
                if *side == "request" {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
            Self::UpstreamConnect { .. } | Self::Upstream { .. } | Self::WebSocketUpstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamConnectTimeout { .. } | Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable machine-readable code for the JSON body and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::BadRequest(_) => "bad_request",
            Self::ClientBody { .. } => "client_body_error",
            Self::ClientTimeout => "client_timeout",
            Self::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            Self::UpstreamConnect { .. } => "upstream_connect_failed",
            Self::UpstreamConnectTimeout { .. } => "upstream_connect_timeout",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::Upstream { .. } => "upstream_error",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Overloaded { .. } => "overloaded",
            Self::FaultInjected { .. } => "fault_injected",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::IdempotencyMismatch => "idempotency_key_reused",
            Self::IdempotencyBodyTooLarge { .. } => "idempotency_body_too_large",
            Self::IdempotencyStoreFull => "idempotency_store_full",
            Self::IpDenied { .. } => "ip_denied",
            Self::RateLimited { .. } => "rate_limited",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::CorsDenied { .. } => "cors_denied",
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimitUnavailable => "rate_limit_unavailable",
            Self::Forbidden { .. } => "forbidden",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::WebSocketLimit { .. } => "websocket_limit",
            Self::WebSocketUpstream { .. } => "websocket_unsupported_upstream",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::FileNotFound => "not_found",
            Self::PreconditionFailed => "precondition_failed",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::NotCached => "not_cached",
            Self::HubRequest(_) => "invalid_hub_request",
            Self::HubFull { .. } => "hub_full",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::IdempotencyUnavailable => "idempotency_unavailable",
            Self::AggregateCall { .. } => "aggregate_call_failed",
            Self::AggregateInput { .. } => "aggregate_bad_request",
            Self::AggregateTimeout { .. } => "aggregate_timeout",
            Self::TransformTooLarge { .. } => "transform_too_large",
            Self::TransformInput(_) => "transform_failed",
        }
    }

    /// Classifies a failed upstream exchange by walking the error's causes.
    pub fn from_upstream(endpoint: &str, error: hyper_util::client::legacy::Error) -> Self {
        let endpoint = endpoint.to_owned();
        // The request body is our wrapper around the client's stream: when it is
        // the cause, the client is at fault, not the upstream.
        let client_side = causes(&error)
            .find_map(|e| e.downcast_ref::<BodyError>())
            .filter(|b| b.side() == Side::Downstream);
        match client_side {
            Some(BodyError::TooLarge { limit, .. }) => return Self::BodyTooLarge { limit: *limit },
            Some(b) if b.is_idle() => return Self::ClientTimeout,
            Some(_) => {
                return Self::ClientBody {
                    source: Box::new(error),
                }
            }
            None => {}
        }
        if error.is_connect() {
            let timed_out = causes(&error).any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            });
            if timed_out {
                return Self::UpstreamConnectTimeout { endpoint };
            }
            return Self::UpstreamConnect {
                endpoint,
                source: Box::new(error),
            };
        }
        Self::Upstream {
            endpoint,
            source: Box::new(error),
        }
    }

    /// The response the client sees for this error.
    pub fn into_response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let mut response = error_response(self.status(), self.code(), &self.client_message(), request_id);
        // Whole seconds, rounded up: "0" would invite an immediate retry.
        let retry_after = match self {
            Self::CircuitOpen { retry_after, .. } => Some(*retry_after),
            Self::RateLimited { decision } => {
                crate::filters::set_headers(response.headers_mut(), decision);
                Some(decision.retry_after)
            }
            _ => None,
        };
        if let Self::Unauthorized { challenges, .. } = self {
            for challenge in challenges {
                if let Ok(value) = HeaderValue::from_str(challenge) {
                    response.headers_mut().append(header::WWW_AUTHENTICATE, value);
                }
            }
        }
        match self {
            Self::MethodNotAllowed { allow } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::RangeNotSatisfiable { len } => {
                if let Ok(range) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, range);
                }
            }
            _ => {}
        }
        if let Some(after) = retry_after {
            let seconds = crate::filters::ceil_secs(after).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// What the client is told: enough to act on, no internal addresses.
    pub(crate) fn client_message(&self) -> String {
        match self {
            Self::NoRoute { .. } => "no route matches this request".into(),
            Self::BadRequest(why) => format!("malformed request: {why}"),
            Self::ClientBody { .. } => "the request body could not be read".into(),
            Self::ClientTimeout => "the request body was not received in time".into(),
            Self::NoHealthyEndpoint { cluster } => {
                format!("no healthy endpoint in cluster {cluster}")
            }
            Self::UpstreamConnect { .. } => "the upstream could not be reached".into(),
            Self::UpstreamConnectTimeout { .. } => "connecting to the upstream timed out".into(),
            Self::UpstreamTimeout { .. } => "the upstream did not answer in time".into(),
            Self::Upstream { .. } => "the upstream failed to answer".into(),
            Self::CircuitOpen { cluster, .. } => {
                format!("cluster {cluster} is failing; its circuit breaker is open")
            }
            Self::Overloaded { cluster, reason } => format!("cluster {cluster} is overloaded: {reason}"),
            Self::FaultInjected { .. } => "fault injected by the gateway's fault configuration".into(),
            Self::IdempotencyInProgress => {
                "a request with this Idempotency-Key is still being processed; retry later".into()
            }
            Self::IdempotencyMismatch => "this Idempotency-Key was already used for a different request".into(),
            Self::IdempotencyBodyTooLarge { limit } => {
                format!("requests with an Idempotency-Key may carry at most {limit} bytes of body")
            }
            Self::IdempotencyStoreFull => {
                "too many requests with an Idempotency-Key are in progress; retry later".into()
            }
            Self::IpDenied { scope, .. } => format!("your address is not allowed on this {scope}"),
            Self::BodyTooLarge { limit } => format!("the request body may carry at most {limit} bytes"),
            Self::CorsDenied { reason } => format!("cross-origin request refused: {reason}"),
            Self::Unauthorized { reason, .. } => format!("authentication required: {reason}"),
            Self::Forbidden { reason } => format!("not allowed: {reason}"),
            Self::RateLimitUnavailable => "the rate limit cannot be checked right now; retry later".into(),
            Self::UriTooLong { limit } => format!("the request target may be at most {limit} bytes long"),
            Self::WebSocketLimit { limit, .. } => {
                format!("this route allows {limit} open WebSocket connections; retry later")
            }
            Self::WebSocketUpstream { .. } => "the upstream of this route cannot take WebSocket connections".into(),
            Self::MethodNotAllowed { allow } => format!("this route answers only {allow}"),
            Self::FileNotFound => "no such file".into(),
            Self::PreconditionFailed => {
                "a precondition of the request (If-Match, If-Unmodified-Since) does not hold".into()
            }
            Self::RangeNotSatisfiable { len } => format!("no requested range is within the {len} bytes"),
            Self::NotCached => "the request allows only a stored response (only-if-cached) and none is stored".into(),
            Self::HubRequest(message) => message.clone(),
            Self::HubFull { limit } => format!("the hub follows {limit} topics, its maximum; retry later"),
            Self::ClusterUnavailable => {
                "the cluster's Redis cannot be reached, so the message would not reach every node; retry later".into()
            }
            Self::IdempotencyUnavailable => {
                "idempotency keys are kept in the cluster's Redis, which cannot be reached now, so a repeat could not be recognised; retry later".into()
            }
            Self::AggregateCall { call, status, reason } => match status {
                Some(status) => format!("required call \"{call}\" failed with status {status}: {reason}"),
                None => format!("required call \"{call}\" failed: {reason}"),
            },
            Self::AggregateInput { call, reason } => format!("required call \"{call}\" needs more from this request: {reason}"),
            Self::AggregateTimeout { call } => {
                format!("required call \"{call}\" did not answer in time (its own timeout or the route's)")
            }
            Self::TransformTooLarge { side, limit } => {
                format!("the {side} body is larger than the {limit} bytes this route transforms (on_oversize = \"refuse\")")
            }
            Self::TransformInput(why) => format!("the request body cannot be transformed: {why}"),
            Self::RateLimited { decision } => format!(
                "rate limit of {} requests exceeded; retry in {} s",
                decision.limit,
                crate::filters::ceil_secs(decision.retry_after).max(1)
            ),
        }
    }
}

/// The chain of errors below `error`.
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next = error.source();
    std::iter::from_fn(move || {
        let current = next?;
        next = current.source();
        Some(current)
    })
}

/// A JSON error response: `{"error": {"code", "message", "request_id"}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str, request_id: &HeaderValue) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    let mut response = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(crate::request_id::X_REQUEST_ID, request_id.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_sides() {
        let cases = [
            (
                ProxyError::NoRoute {
                    method: "GET".into(),
                    host: "h".into(),
                    path: "/".into(),
                },
                404,
                Side::Downstream,
            ),
            (ProxyError::BadRequest("x"), 400, Side::Downstream),
            (ProxyError::ClientTimeout, 408, Side::Downstream),
            (
                ProxyError::NoHealthyEndpoint { cluster: "c".into() },
                503,
                Side::Upstream,
            ),
            (
                ProxyError::UpstreamConnectTimeout { endpoint: "e".into() },
                504,
                Side::Upstream,
            ),
            (
                ProxyError::UpstreamTimeout {
                    endpoint: "e".into(),
                    timeout: Duration::from_secs(1),
                },
                504,
                Side::Upstream,
            ),
        ];
        for (error, status, side) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.side(), side, "{error}");
        }
        assert!(ProxyError::UpstreamConnectTimeout { endpoint: "e".into() }.is_retryable());
        assert!(!ProxyError::UpstreamTimeout {
            endpoint: "e".into(),
            timeout: Duration::from_secs(1)
        }
        .is_retryable());
    }
}
