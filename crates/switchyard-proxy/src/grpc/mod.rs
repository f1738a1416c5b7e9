//! What the gateway knows about gRPC: which requests are gRPC calls, their
//! `grpc-timeout`, how a gateway-made error reads to a gRPC client (a status
//! in a trailers-only answer, never a JSON body), and counting the status
//! each call ended with (from the response headers or the trailers).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use prometheus::{IntCounter, IntCounterVec};

use crate::body::{BodyError, ProxyBody};
use crate::error::ProxyError;

pub mod web;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Status code names, by code (0 to 16).
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const UNKNOWN: u8 = 2;
const DEADLINE_EXCEEDED: u8 = 4;
const PERMISSION_DENIED: u8 = 7;
const RESOURCE_EXHAUSTED: u8 = 8;
const FAILED_PRECONDITION: u8 = 9;
const ABORTED: u8 = 10;
const OUT_OF_RANGE: u8 = 11;
const UNIMPLEMENTED: u8 = 12;
const INTERNAL: u8 = 13;
pub(crate) const UNAVAILABLE: u8 = 14;
const UNAUTHENTICATED: u8 = 16;

/// The content type of a gRPC call, if the request is one (`application/grpc`
/// and its `+proto`/`+json` variants).
pub fn content_type(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers
        .get(header::CONTENT_TYPE)
        .filter(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-timeout` (`100m`, `5S`, `1H`...): at most 8 digits and a unit.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status a gateway-made error stands for.
pub fn code_of(error: &ProxyError) -> u8 {
    match error {
        ProxyError::NoRoute { .. } | ProxyError::MethodNotAllowed { .. } | ProxyError::FileNotFound => UNIMPLEMENTED,
        ProxyError::PreconditionFailed => FAILED_PRECONDITION,
        ProxyError::RangeNotSatisfiable { .. } => OUT_OF_RANGE,
        ProxyError::NotCached
        | ProxyError::HubFull { .. }
        | ProxyError::ClusterUnavailable
        | ProxyError::IdempotencyUnavailable => UNAVAILABLE,
        ProxyError::HubRequest(_) => INTERNAL,
        ProxyError::AggregateInput { .. } | ProxyError::TransformInput(_) => INTERNAL,
        ProxyError::AggregateCall { .. } => UNAVAILABLE,
        ProxyError::AggregateTimeout { .. } => DEADLINE_EXCEEDED,
        ProxyError::TransformTooLarge { .. } => RESOURCE_EXHAUSTED,
        ProxyError::BadRequest(_) | ProxyError::ClientBody { .. } | ProxyError::UriTooLong { .. } => INTERNAL,
        ProxyError::ClientTimeout | ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamConnectTimeout { .. } => {
            DEADLINE_EXCEEDED
        }
        ProxyError::Unauthorized { .. } => UNAUTHENTICATED,
        ProxyError::Forbidden { .. } | ProxyError::IpDenied { .. } | ProxyError::CorsDenied { .. } => PERMISSION_DENIED,
        ProxyError::RateLimited { .. }
        | ProxyError::BodyTooLarge { .. }
        | ProxyError::IdempotencyBodyTooLarge { .. }
        | ProxyError::IdempotencyStoreFull
        | ProxyError::WebSocketLimit { .. } => RESOURCE_EXHAUSTED,
        ProxyError::IdempotencyInProgress => ABORTED,
        ProxyError::IdempotencyMismatch => FAILED_PRECONDITION,
        ProxyError::NoHealthyEndpoint { .. }
        | ProxyError::CircuitOpen { .. }
        | ProxyError::Overloaded { .. }
        | ProxyError::UpstreamConnect { .. }
        | ProxyError::Upstream { .. }
        | ProxyError::RateLimitUnavailable
        | ProxyError::WebSocketUpstream { .. } => UNAVAILABLE,
        ProxyError::FaultInjected { status } => code_of_http(*status),
    }
}

/// The gRPC status an HTTP status maps to (gRPC's HTTP-to-gRPC mapping).
fn code_of_http(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 => UNAVAILABLE,
        504 => DEADLINE_EXCEEDED,
        _ => UNKNOWN,
    }
}

/// A trailers-only gRPC answer for `error`: HTTP 200, the status and message
/// in the headers, no body. `content_type` echoes the request's.
pub fn error_response(
    error: &ProxyError,
    request_id: &HeaderValue,
    content_type: HeaderValue,
    message: &str,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code_of(error))));
    headers.insert(GRPC_MESSAGE.clone(), percent_encode(message));
    headers.insert(crate::request_id::X_REQUEST_ID, request_id.clone());
    response
}

/// Trailers that end a call with status `code` and `message` (printable ASCII).
pub(crate) fn status_trailers(code: u8, message: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    trailers.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(message));
    trailers
}

/// `grpc-message` is percent-encoded UTF-8: printable ASCII but `%` as is.
fn percent_encode(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("printable ASCII is a valid header value")
}

pin_project! {
    /// A gRPC response body that, when the call's deadline cuts it, ends with
    /// `DEADLINE_EXCEEDED` trailers (what a gRPC server would send) instead
    /// of a reset stream.
    pub struct DeadlineTrailers<B> {
        #[pin]
        inner: B,
        done: bool,
    }
}

impl<B> DeadlineTrailers<B> {
    pub fn new(inner: B) -> Self {
        Self { inner, done: false }
    }
}

impl<B: Body<Data = Bytes, Error = BodyError>> Body for DeadlineTrailers<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(error))) if error.is_deadline() => {
                *this.done = true;
                let trailers = status_trailers(DEADLINE_EXCEEDED, "deadline exceeded at the gateway");
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A route's counters of the statuses its gRPC calls ended with.
#[derive(Debug)]
pub struct GrpcMetrics {
    route: String,
    family: IntCounterVec,
    /// Resolved on first use of each code; the last is for unknown values.
    codes: [OnceLock<IntCounter>; 18],
}

impl GrpcMetrics {
    pub(crate) fn new(route: &str, family: IntCounterVec) -> Arc<Self> {
        Arc::new(Self {
            route: route.to_owned(),
            family,
            codes: Default::default(),
        })
    }

    /// Counts the status in `value` (a `grpc-status` header or trailer).
    pub fn count(&self, value: &HeaderValue) {
        let code = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&c| c < CODES.len())
            .unwrap_or(CODES.len());
        self.codes[code]
            .get_or_init(|| {
                let name = CODES.get(code).copied().unwrap_or("INVALID");
                self.family.with_label_values(&[&self.route, name])
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_every_unit_and_refuse_the_rest() {
        let parse = |v: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(&GRPC_TIMEOUT, HeaderValue::from_static(v));
            timeout(&headers)
        };
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("100000u"), Some(Duration::from_millis(100)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "100", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("no route: 100% sure"), "no route: 100%25 sure");
        assert_eq!(percent_encode("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn gateway_errors_map_to_grpc_codes() {
        let no_route = ProxyError::NoRoute {
            method: "POST".into(),
            host: "h".into(),
            path: "/x".into(),
        };
        assert_eq!(code_of(&no_route), UNIMPLEMENTED);
        assert_eq!(
            code_of(&ProxyError::NoHealthyEndpoint { cluster: "c".into() }),
            UNAVAILABLE
        );
        assert_eq!(
            code_of(&ProxyError::UpstreamTimeout {
                endpoint: "e".into(),
                timeout: Duration::from_secs(1)
            }),
            DEADLINE_EXCEEDED
        );
        assert_eq!(
            code_of(&ProxyError::FaultInjected {
                status: StatusCode::FORBIDDEN
            }),
            PERMISSION_DENIED
        );
    }
}
