//! WebSocket connections through a route.
//!
//! A client opens one with an HTTP/1.1 `Upgrade: websocket` request or, on
//! HTTP/2, an extended CONNECT (RFC 8441, `:protocol = websocket`). Either
//! way the upstream is asked with an HTTP/1.1 upgrade: the request goes
//! through the route's pipeline like any other (filters, balancer, breaker,
//! connect retries), and when the upstream answers `101 Switching Protocols`
//! the client gets its own success answer (101, or 200 on HTTP/2) and both
//! connections are joined byte for byte ([`crate::tunnel`]). Frames are not
//! parsed: close frames, pings and fragments pass untouched, and closing one
//! side's TCP connection closes the other's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge};
use switchyard_config::WebSocket;
use tokio_util::task::TaskTracker;

use crate::tunnel::{self, Limits, Meters};

const SEC_WEBSOCKET_KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;
const SEC_WEBSOCKET_VERSION: header::HeaderName = header::SEC_WEBSOCKET_VERSION;

/// How the client asked for its WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// `GET` with `Connection: upgrade` and `Upgrade: websocket` (HTTP/1.1).
    Upgrade,
    /// `CONNECT` with `:protocol = websocket` (HTTP/2, RFC 8441).
    ExtendedConnect,
}

/// The handshake a request opens, if it asks for a WebSocket.
pub(crate) fn requested<B>(req: &http::Request<B>) -> Option<Handshake> {
    if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
        return protocol
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then_some(Handshake::ExtendedConnect);
    }
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    (has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")).then_some(Handshake::Upgrade)
}

/// One of a route's WebSocket connection places, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    open: Arc<AtomicUsize>,
    /// The route's gauge, once the slot was admitted.
    active: Option<IntGauge>,
}

impl Slot {
    /// Takes a place among the route's open connections, or says no at the limit.
    pub(crate) fn admit(open: &Arc<AtomicUsize>, max: Option<usize>, metrics: &WebSocketMetrics) -> Option<Slot> {
        let now = open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = Slot {
            open: open.clone(),
            active: None,
        };
        if max.is_some_and(|max| now > max) {
            metrics.refused.inc();
            return None;
        }
        metrics.active.inc();
        slot.active = Some(metrics.active.clone());
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(active) = &self.active {
            active.dec();
        }
    }
}

/// A route's WebSocket counters.
#[derive(Debug, Clone)]
pub(crate) struct WebSocketMetrics {
    pub opened: IntCounter,
    pub refused: IntCounter,
    pub failed: IntCounter,
    /// Closed because their route was removed (after the grace period).
    pub drained: IntCounter,
    pub active: IntGauge,
    pub bytes: Meters,
}

/// Turns the client's request head into the upstream's: always an HTTP/1.1
/// upgrade (an HTTP/2 client's CONNECT becomes a `GET` with a fresh key).
pub(crate) fn prepare_upstream(head: &mut Parts, handshake: Handshake) {
    let headers = &mut head.headers;
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if handshake == Handshake::ExtendedConnect {
        head.method = Method::GET;
        if !headers.contains_key(&SEC_WEBSOCKET_KEY) {
            headers.insert(SEC_WEBSOCKET_KEY, new_key());
        }
        if !headers.contains_key(&SEC_WEBSOCKET_VERSION) {
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
    }
    head.version = Version::HTTP_11;
}

/// A random `Sec-WebSocket-Key`: 16 bytes, base64.
fn new_key() -> HeaderValue {
    use base64::Engine as _;
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

/// Makes the upstream's `101` the client's success answer: `101` with the
/// upgrade headers back on HTTP/1.1, `200` on HTTP/2 (which has no accept key).
pub(crate) fn client_answer<B>(response: &mut Response<B>, handshake: Handshake) {
    match handshake {
        Handshake::Upgrade => {
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Handshake::ExtendedConnect => {
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
}

/// Joins the client's and the upstream's upgraded connections on a task of
/// their own (tracked, so a graceful shutdown waits for it). `hold` (the
/// route's connection place, the endpoint's in-flight count) is kept until
/// the tunnel ends.
pub(crate) fn spawn_tunnel<H: Send + 'static>(
    tasks: Option<&TaskTracker>,
    (client, upstream): (OnUpgrade, OnUpgrade),
    settings: WebSocket,
    metrics: WebSocketMetrics,
    hold: H,
    (route, endpoint): (Arc<str>, Arc<str>),
    drain: tokio_util::sync::CancellationToken,
) {
    let tunnel = async move {
        let _hold = hold;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                metrics.failed.inc();
                tracing::debug!(%error, %route, "WebSocket upgrade did not complete");
                return;
            }
        };
        metrics.opened.inc();
        let limits = Limits {
            idle_timeout: settings.idle_timeout,
            max_lifetime: settings.max_lifetime,
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let outcome = tunnel::splice(&mut client, &mut upstream, limits, &metrics.bytes, Some(&drain)).await;
        if matches!(outcome.end, tunnel::End::Drained) {
            metrics.drained.inc();
            tracing::info!(%route, %endpoint, "WebSocket closed: its route was removed and the grace period ran out");
        }
        tracing::debug!(
            %route,
            %endpoint,
            end = %outcome.end,
            from_client = outcome.from_client,
            to_client = outcome.to_client,
            "WebSocket closed"
        );
    };
    match tasks {
        Some(tasks) => tasks.spawn(tunnel),
        None => tokio::spawn(tunnel),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_handshakes() {
        let upgrade = http::Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .body(())
            .unwrap();
        assert_eq!(requested(&upgrade), Some(Handshake::Upgrade));
        let h2c = http::Request::get("/")
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert_eq!(requested(&h2c), None);
        let mut connect = http::Request::connect("/ws").version(Version::HTTP_2).body(()).unwrap();
        assert_eq!(requested(&connect), None, "plain CONNECT is not a WebSocket");
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(requested(&connect), Some(Handshake::ExtendedConnect));
    }

    #[test]
    fn keys_are_sixteen_random_bytes_in_base64() {
        let a = new_key();
        let b = new_key();
        assert_eq!(a.len(), 24);
        assert!(a.to_str().unwrap().ends_with("=="));
        assert_ne!(a, b);
    }
}
