//! State of one upstream endpoint, shared by the balancers, the proxy and the
//! health checkers. It outlives config reloads: the proxy keeps it by cluster and
//! address and hands the same `Arc` to each new snapshot, so load, latency and
//! health carry over for endpoints that stay.
//!
//! Everything is an atomic: the request path reads and updates it without locks.
//! Times are kept as nanoseconds since the endpoint was created (`born`), so an
//! `Instant` fits in an `AtomicU64`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ewma::PeakEwma;

/// Sentinel for "no time set" in the nanosecond fields.
const NEVER: u64 = u64::MAX;

/// Live state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    address: String,
    /// A stable identifier derived from the address (sticky cookies, hashing):
    /// independent of the endpoint's position in the cluster.
    id: u64,
    weight: AtomicU32,
    born: Instant,
    /// Passes (or has no) active health check.
    healthy: AtomicBool,
    /// Ejected by passive outlier detection.
    ejected: AtomicBool,
    in_flight: AtomicUsize,
    latency: PeakEwma,
    /// When the endpoint last became available (ns since `born`), for slow
    /// start; `NEVER` when it has been available since it was created without
    /// a ramp (the first configuration).
    ramp_from: AtomicU64,
}

impl EndpointState {
    /// A new endpoint, healthy, idle and at full weight.
    pub fn new(address: impl Into<String>, weight: u32) -> Self {
        let address = address.into();
        Self {
            id: stable_id(&address),
            address,
            weight: AtomicU32::new(weight.max(1)),
            born: Instant::now(),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            latency: PeakEwma::new(),
            ramp_from: AtomicU64::new(NEVER),
        }
    }

    /// `host:port` of the endpoint.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A stable 64-bit identifier of the address.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The configured weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Updates the weight when a reload changes it.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Whether the endpoint may be picked: healthy and not ejected.
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    /// Whether the endpoint passes its active health check.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the endpoint healthy or not; returns whether that changed anything.
    /// Becoming healthy starts a slow-start ramp at `now`.
    pub fn set_healthy(&self, healthy: bool, now: Instant) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed && healthy {
            self.start_ramp(now);
        }
        changed
    }

    /// Whether passive outlier detection has ejected the endpoint.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ejects or readmits the endpoint; returns whether that changed anything.
    /// Readmission starts a slow-start ramp at `now`.
    pub fn set_ejected(&self, ejected: bool, now: Instant) -> bool {
        let changed = self.ejected.swap(ejected, Ordering::Relaxed) != ejected;
        if changed && !ejected {
            self.start_ramp(now);
        }
        changed
    }

    /// Starts a slow-start ramp at `now` (a new endpoint added by a reload, or
    /// one that came back).
    pub fn start_ramp(&self, now: Instant) {
        self.ramp_from.store(self.nanos_at(now), Ordering::Relaxed);
    }

    /// The share of its weight the endpoint should get at `now` under a
    /// slow-start `window`: from `min` just after it became available, growing
    /// linearly to 1 at the end of the window.
    pub fn ramp_factor(&self, now: Instant, window: Option<Duration>, min: f64) -> f64 {
        let Some(window) = window else { return 1.0 };
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == NEVER {
            return 1.0;
        }
        let elapsed = self.nanos_at(now).saturating_sub(from) as f64;
        let share = elapsed / window.as_nanos().max(1) as f64;
        if share >= 1.0 {
            1.0
        } else {
            share.max(min)
        }
    }

    /// Requests currently being served by this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Records the time an exchange took (until response headers).
    pub fn observe_latency(&self, rtt: Duration, now: Instant) {
        self.latency.observe(rtt, self.nanos_at(now));
    }

    /// The peak-EWMA latency estimate at `now`, in nanoseconds (0: no sample yet).
    pub fn latency_estimate(&self, now: Instant) -> f64 {
        self.latency.estimate(self.nanos_at(now))
    }

    fn nanos_at(&self, now: Instant) -> u64 {
        // Saturates rather than wraps: u64 nanoseconds last 584 years.
        u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(NEVER - 1)
    }
}

/// FNV-1a of the address: stable across processes and versions, unlike
/// `DefaultHasher`, so sticky cookies survive restarts and upgrades.
fn stable_id(address: &str) -> u64 {
    crate::hash::fnv1a(address.as_bytes())
}

/// Holds one unit of an endpoint's in-flight count.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let endpoint = Arc::new(EndpointState::new("127.0.0.1:1", 1));
        let a = endpoint.begin();
        let b = endpoint.begin();
        assert_eq!(endpoint.in_flight(), 2);
        drop(a);
        assert_eq!(endpoint.in_flight(), 1);
        drop(b);
        assert_eq!(endpoint.in_flight(), 0);
    }

    #[test]
    fn available_means_healthy_and_not_ejected() {
        let e = EndpointState::new("127.0.0.1:1", 1);
        let now = Instant::now();
        assert!(e.is_available());
        assert!(e.set_ejected(true, now));
        assert!(!e.is_available());
        assert!(!e.set_ejected(true, now), "no change the second time");
        e.set_ejected(false, now);
        e.set_healthy(false, now);
        assert!(!e.is_available());
        e.set_healthy(true, now);
        assert!(e.is_available());
    }

    #[test]
    fn slow_start_ramps_linearly_from_the_floor() {
        let e = EndpointState::new("127.0.0.1:1", 1);
        let t0 = Instant::now();
        let window = Some(Duration::from_secs(10));
        assert_eq!(e.ramp_factor(t0, window, 0.1), 1.0, "no ramp before any transition");
        e.set_healthy(false, t0);
        e.set_healthy(true, t0);
        assert_eq!(e.ramp_factor(t0, window, 0.1), 0.1);
        let half = e.ramp_factor(t0 + Duration::from_secs(5), window, 0.1);
        assert!((half - 0.5).abs() < 1e-6, "{half}");
        assert_eq!(e.ramp_factor(t0 + Duration::from_secs(11), window, 0.1), 1.0);
        assert_eq!(e.ramp_factor(t0, None, 0.1), 1.0, "no window, no ramp");
    }

    #[test]
    fn ids_depend_on_the_address_only() {
        assert_eq!(
            EndpointState::new("10.0.0.1:80", 1).id(),
            EndpointState::new("10.0.0.1:80", 5).id()
        );
        assert_ne!(
            EndpointState::new("10.0.0.1:80", 1).id(),
            EndpointState::new("10.0.0.2:80", 1).id()
        );
    }
}
