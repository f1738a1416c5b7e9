//! Fault injection: which requests get an artificial delay or error, so that
//! clients' resilience can be tested against the real gateway (as Envoy's and
//! Istio's fault filters allow).
//!
//! A fault applies to a random `percent` of requests, and always to requests
//! that carry its trigger header. A numeric header value overrides the
//! configured delay (milliseconds) or abort status.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

/// An artificial delay before the request is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayFault {
    pub duration: Duration,
    /// Share of requests delayed, 0 to 100.
    pub percent: f64,
    /// Requests carrying this header are always delayed.
    pub header: Option<HeaderName>,
}

/// An error answer instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortFault {
    pub status: StatusCode,
    /// Share of requests aborted, 0 to 100.
    pub percent: f64,
    /// Requests carrying this header are always aborted.
    pub header: Option<HeaderName>,
}

/// A route's faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSettings {
    pub delay: Option<DelayFault>,
    pub abort: Option<AbortFault>,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<StatusCode>,
}

impl FaultSettings {
    /// Decides the faults for a request with `headers`.
    pub fn decide(&self, headers: &HeaderMap) -> FaultDecision {
        let delay = self.delay.as_ref().and_then(|d| {
            triggered(headers, d.header.as_ref(), d.percent).map(|value| {
                value
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(d.duration, Duration::from_millis)
            })
        });
        let abort = self.abort.as_ref().and_then(|a| {
            triggered(headers, a.header.as_ref(), a.percent).map(|value| {
                value
                    .and_then(|v| v.parse::<u16>().ok())
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(a.status)
            })
        });
        FaultDecision { delay, abort }
    }
}

/// `Some(header value)` when the fault applies: by header (with its value), or
/// by chance (`Some(None)`).
fn triggered<'h>(headers: &'h HeaderMap, header: Option<&HeaderName>, percent: f64) -> Option<Option<&'h str>> {
    if let Some(value) = header.and_then(|name| headers.get(name)) {
        return Some(value.to_str().ok());
    }
    (percent > 0.0 && fastrand::f64() * 100.0 < percent).then_some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(percent: f64) -> FaultSettings {
        FaultSettings {
            delay: Some(DelayFault {
                duration: Duration::from_millis(200),
                percent,
                header: Some(HeaderName::from_static("x-fault-delay")),
            }),
            abort: Some(AbortFault {
                status: StatusCode::SERVICE_UNAVAILABLE,
                percent,
                header: Some(HeaderName::from_static("x-fault-abort")),
            }),
        }
    }

    #[test]
    fn percentages_apply_to_about_that_share() {
        fastrand::seed(3);
        let s = settings(10.0);
        let headers = HeaderMap::new();
        let decisions: Vec<FaultDecision> = (0..10_000).map(|_| s.decide(&headers)).collect();
        let delayed = decisions.iter().filter(|d| d.delay.is_some()).count();
        let aborted = decisions.iter().filter(|d| d.abort.is_some()).count();
        assert!((900..1100).contains(&delayed), "{delayed}");
        assert!((900..1100).contains(&aborted), "{aborted}");
        assert_eq!(settings(0.0).decide(&headers), FaultDecision::default());
    }

    #[test]
    fn a_header_forces_the_fault_and_its_value_overrides() {
        let s = settings(0.0);
        let mut headers = HeaderMap::new();
        headers.insert("x-fault-delay", "yes".parse().unwrap());
        assert_eq!(s.decide(&headers).delay, Some(Duration::from_millis(200)));
        headers.insert("x-fault-delay", "50".parse().unwrap());
        headers.insert("x-fault-abort", "429".parse().unwrap());
        let d = s.decide(&headers);
        assert_eq!(d.delay, Some(Duration::from_millis(50)));
        assert_eq!(d.abort, Some(StatusCode::TOO_MANY_REQUESTS));
        headers.insert("x-fault-abort", "200".parse().unwrap());
        assert_eq!(
            s.decide(&headers).abort,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "only error statuses override"
        );
    }
}
