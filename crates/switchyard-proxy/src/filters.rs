//! Route filters that run after routing and before the route's action:
//! IP allow/deny lists (the listener's, then the route's) and rate limits.
//!
//! The client address they judge is the socket peer, or, when the peer is one
//! of the listener's trusted proxies, the address those proxies recorded in
//! `X-Forwarded-For` (the nearest one that is not itself a trusted proxy).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard_config::{OnRedisError, RateKeyPart, RateLimit};
use switchyard_security::auth::Principal;
use switchyard_security::ipfilter::{IpFilter, Refusal};
use switchyard_security::ratelimit::{Decision, RateLimiter};

use crate::error::ProxyError;
use crate::global_limit::GlobalBucket;
use crate::metrics::RouteMetrics;
use crate::pipeline::ConnectionInfo;
use crate::snapshot::ListenerRuntime;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The client's address as the filters see it.
pub fn client_ip(conn: &ConnectionInfo, headers: &HeaderMap, listener: &ListenerRuntime) -> IpAddr {
    let peer = conn.peer.ip();
    if !conn.trusted {
        return peer;
    }
    // Right to left: each trusted proxy appended the address it received
    // from; the first one not in the trusted set is the client (or, when all
    // are trusted, the leftmost).
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok());
    let mut leftmost = peer;
    for hop in hops {
        if !listener.trusts(hop) {
            return hop;
        }
        leftmost = hop;
    }
    leftmost
}

/// Checks `ip` against a filter, as the client's error.
pub fn check_ip(filter: &IpFilter, ip: IpAddr, scope: &'static str) -> Result<(), ProxyError> {
    filter.check(ip).map_err(|refusal| ProxyError::IpDenied {
        scope,
        reason: match refusal {
            Refusal::Denied(net) => format!("{ip} is in the denied network {net}"),
            Refusal::NotAllowed => format!("{ip} is not in an allowed network"),
        },
    })
}

/// A route's rate limit with its buckets: in this process, or in Redis.
#[derive(Debug)]
pub struct Limit {
    pub config: RateLimit,
    pub limiter: Arc<RateLimiter>,
    /// Set for `scope = "global"`: the buckets live in Redis.
    pub global: Option<GlobalBucket>,
}

/// What the rate limits said about an allowed request: the headers to add
/// to its response, if any limit asks for them.
#[derive(Debug, Default)]
pub struct Quota {
    tightest: Option<Decision>,
}

impl Quota {
    /// Adds `RateLimit-*` headers for the tightest limit.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(decision) = &self.tightest {
            set_headers(headers, decision);
        }
    }
}

/// Takes a token from every limit of the route; the first refusal wins.
pub async fn check_limits(
    limits: &[Limit],
    ip: IpAddr,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    now: Instant,
    metrics: &RouteMetrics,
) -> Result<Quota, ProxyError> {
    if limits.is_empty() {
        return Ok(Quota::default());
    }
    let mut quota = Quota::default();
    let mut key = Vec::new();
    for limit in limits {
        key.clear();
        build_key(&mut key, &limit.config.key, ip, headers, principal);
        let decision = match &limit.global {
            None => limit.limiter.check(&key, now),
            Some(bucket) => match bucket.check(&key).await {
                Some(decision) => decision,
                None => {
                    metrics.unavailable.inc();
                    match bucket.on_error {
                        OnRedisError::Allow => continue,
                        OnRedisError::Deny => return Err(ProxyError::RateLimitUnavailable),
                    }
                }
            },
        };
        if !decision.allowed {
            metrics.limited.inc();
            return Err(ProxyError::RateLimited { decision });
        }
        if limit.config.headers && quota.tightest.is_none_or(|t| decision.remaining < t.remaining) {
            quota.tightest = Some(decision);
        }
    }
    metrics.allowed.inc();
    Ok(quota)
}

/// The bytes that identify a client for `parts`: each part, separated so
/// that `("a", "bc")` and `("ab", "c")` differ.
fn build_key(key: &mut Vec<u8>, parts: &[RateKeyPart], ip: IpAddr, headers: &HeaderMap, principal: Option<&Principal>) {
    for part in parts {
        match part {
            RateKeyPart::ClientIp => push_ip(key, ip),
            RateKeyPart::Header(name) => match headers.get(name) {
                Some(value) => {
                    key.push(b'h');
                    key.extend_from_slice(value.as_bytes());
                }
                // No header: the client address stands in, so leaving the
                // header out does not escape the limit.
                None => push_ip(key, ip),
            },
            RateKeyPart::Claim(claim) => match principal.and_then(|p| p.claims.get(claim)) {
                Some(value) => {
                    key.push(b'c');
                    match value {
                        serde_json::Value::String(s) => key.extend_from_slice(s.as_bytes()),
                        other => key.extend_from_slice(other.to_string().as_bytes()),
                    }
                }
                None => push_ip(key, ip),
            },
            RateKeyPart::Identity => match principal {
                Some(p) => {
                    key.push(b'i');
                    key.extend_from_slice(p.identity.as_bytes());
                }
                None => push_ip(key, ip),
            },
        }
        key.push(0);
    }
}

fn push_ip(key: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            key.push(b'4');
            key.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.push(b'6');
            key.extend_from_slice(&v6.octets());
        }
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (whole seconds, rounded up).
pub fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(decision.limit));
    headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(decision.remaining));
    headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(ceil_secs(decision.reset)));
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_parts_apart() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        let parts = [RateKeyPart::ClientIp, RateKeyPart::Header("x-user".parse().unwrap())];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        build_key(&mut a, &parts, ip, &headers, None);
        headers.insert("x-user", "bob".parse().unwrap());
        build_key(&mut b, &parts, ip, &headers, None);
        assert_ne!(a, b);
        // A missing header falls back to the address, not to a shared "" key.
        let (mut c, mut d) = (Vec::new(), Vec::new());
        let header_only = [RateKeyPart::Header("x-user".parse().unwrap())];
        build_key(&mut c, &header_only, ip, &HeaderMap::new(), None);
        build_key(
            &mut d,
            &header_only,
            "10.0.0.2".parse().unwrap(),
            &HeaderMap::new(),
            None,
        );
        assert_ne!(c, d);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
