//! Active health checks: one task per endpoint of every cluster that has a
//! `health_check`, probing over a fresh connection each time (HTTP `GET` or a
//! TCP connect) and flipping the endpoint's health after enough passes or
//! failures in a row.
//!
//! [`HealthCheckers::reconcile`] runs after each snapshot swap: checkers whose
//! cluster, endpoint and settings are unchanged keep running (with their
//! counts), the rest stop or start. Health itself lives in the endpoint's
//! state, so it survives reloads like load and latency do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use switchyard_balance::{ClusterHealth, EndpointState};
use switchyard_config::{HealthCheck, HealthCheckKind};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::snapshot::Snapshot;

/// Most of a check response's body read when looking for `body_contains`.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// The running checkers, by cluster and endpoint address.
#[derive(Debug, Default)]
pub(crate) struct HealthCheckers {
    running: HashMap<(String, String), Running>,
}

#[derive(Debug)]
struct Running {
    check: HealthCheck,
    stop: CancellationToken,
}

impl HealthCheckers {
    /// Starts, keeps or stops checkers to match `snapshot`. New checkers stop
    /// when `parent` is cancelled (the gateway drains).
    pub(crate) fn reconcile(&mut self, snapshot: &Snapshot, parent: &CancellationToken) {
        let mut wanted = HashMap::new();
        for cluster in snapshot.clusters.values() {
            let Some(check) = &cluster.config.health_check else {
                continue;
            };
            for endpoint in &cluster.endpoints {
                let key = (cluster.config.name.clone(), endpoint.address().to_owned());
                let running = match self.running.remove(&key) {
                    Some(running) if running.check == *check => running,
                    previous => {
                        if let Some(previous) = previous {
                            previous.stop.cancel();
                        }
                        let stop = parent.child_token();
                        tokio::spawn(run(
                            key.0.clone(),
                            endpoint.clone(),
                            cluster.health.clone(),
                            check.clone(),
                            stop.clone(),
                        ));
                        Running {
                            check: check.clone(),
                            stop,
                        }
                    }
                };
                wanted.insert(key, running);
            }
        }
        for (_, gone) in self.running.drain() {
            gone.stop.cancel();
        }
        self.running = wanted;
    }
}

/// Checks one endpoint until `stop` fires.
async fn run(
    cluster: String,
    endpoint: Arc<EndpointState>,
    health: Arc<ClusterHealth>,
    check: HealthCheck,
    stop: CancellationToken,
) {
    // Spread the first checks of many endpoints over the jitter window.
    let mut wait = jitter(check.jitter);
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let result = match tokio::time::timeout(check.timeout, probe(endpoint.address(), &check.kind)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                endpoint.set_check_detail(None);
                if !endpoint.is_healthy()
                    && passes >= check.healthy_threshold
                    && health.set_healthy(&endpoint, true, Instant::now())
                {
                    tracing::info!(%cluster, endpoint = endpoint.address(), passes, "endpoint healthy again");
                }
            }
            Err(why) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if endpoint.is_healthy()
                    && failures >= check.unhealthy_threshold
                    && health.set_healthy(&endpoint, false, Instant::now())
                {
                    tracing::warn!(%cluster, endpoint = endpoint.address(), failures, reason = %why, "endpoint unhealthy");
                }
                endpoint.set_check_detail(Some(why));
            }
        }
        wait = check.interval + jitter(check.jitter);
    }
}

/// A random share of `max`.
fn jitter(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// One check; `Err` says why it failed.
async fn probe(address: &str, kind: &HealthCheckKind) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let HealthCheckKind::Http {
        path,
        host,
        expected_statuses,
        body_contains,
    } = kind
    else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // The connection task ends with the exchange (`Connection: close`).
    tokio::spawn(connection);
    let request = Request::get(path.as_str())
        .header(header::HOST, host.as_deref().unwrap_or(address))
        .header(header::USER_AGENT, "switchyard-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the check request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if !status_expected(status, expected_statuses) {
        return Err(format!("unexpected status {}", status.as_u16()));
    }
    if let Some(needle) = body_contains {
        let body = http_body_util::Limited::new(response.into_body(), MAX_CHECK_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
            .to_bytes();
        if !contains(&body, needle.as_bytes()) {
            return Err(format!("body does not contain {needle:?}"));
        }
    }
    Ok(())
}

fn status_expected(status: StatusCode, expected: &[(u16, u16)]) -> bool {
    let code = status.as_u16();
    expected.iter().any(|&(low, high)| (low..=high).contains(&code))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_codes_and_classes() {
        let expected = [(204, 204), (300, 399)];
        assert!(status_expected(StatusCode::NO_CONTENT, &expected));
        assert!(status_expected(StatusCode::FOUND, &expected));
        assert!(!status_expected(StatusCode::OK, &expected));
        assert!(!status_expected(StatusCode::SERVICE_UNAVAILABLE, &expected));
    }

    #[test]
    fn body_substrings() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: down", b"ok"));
        assert!(contains(b"", b""));
    }
}
