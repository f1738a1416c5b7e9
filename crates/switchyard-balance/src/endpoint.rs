//! State of one upstream endpoint, shared by the balancers, the proxy and the
//! health checkers. It outlives config reloads: the proxy keeps it by cluster and
//! address and hands the same `Arc` to each new snapshot, so load, latency and
//! health carry over for endpoints that stay.
//!
//! Everything is an atomic: the request path reads and updates it without locks.
//! Times are kept as nanoseconds since the endpoint was created (`born`), so an
//! `Instant` fits in an `AtomicU64`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Failed requests in a row (outlier detection).
    consecutive_failures: AtomicU32,
    /// Ejections so far; each one lasts longer (reset after a long good spell).
    ejections: AtomicU32,
    /// When the current ejection ends (ns since `born`), or `NEVER`.
    ejected_until: AtomicU64,
    /// What the last counted failure was ([`Failure`] as u8; 0: none).
    last_failure: AtomicU8,
    /// Requests and failures in the last two 10-second windows.
    errors: ErrorWindow,
    /// Why the last active check failed, for operators (not on the request path).
    check_detail: Mutex<Option<String>>,
}

/// A failed request, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failure {
    /// The upstream answered with a 5xx status.
    ServerError = 1,
    /// No connection could be made.
    Connect = 2,
    /// The connection broke before a response.
    Reset = 3,
    /// No response in time.
    Timeout = 4,
}

impl Failure {
    /// A short name for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::ServerError => "5xx",
            Failure::Connect => "connect_failure",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
        }
    }

    fn from_u8(value: u8) -> Option<Failure> {
        [Failure::ServerError, Failure::Connect, Failure::Reset, Failure::Timeout]
            .into_iter()
            .find(|f| *f as u8 == value)
    }
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
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(NEVER),
            last_failure: AtomicU8::new(0),
            errors: ErrorWindow::default(),
            check_detail: Mutex::new(None),
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
            self.ejected_until.store(NEVER, Ordering::Relaxed);
            self.start_ramp(now);
        }
        changed
    }

    /// When the current ejection ends, if the endpoint is ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Relaxed) {
            NEVER => None,
            nanos => Some(self.born + Duration::from_nanos(nanos)),
        }
    }

    /// Records the end of a request for outlier detection and the error rate:
    /// `None` for success. Returns the failures in a row so far.
    pub fn record_outcome(&self, failure: Option<Failure>, now: Instant) -> u32 {
        self.errors.record(failure.is_some(), self.nanos_at(now));
        match failure {
            None => {
                // Read first: most requests succeed, and a store would
                // bounce the cache line between cores for nothing.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                0
            }
            Some(failure) => {
                self.last_failure.store(failure as u8, Ordering::Relaxed);
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
            }
        }
    }

    /// Failed requests in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The kind of the last counted failure.
    pub fn last_failure(&self) -> Option<Failure> {
        Failure::from_u8(self.last_failure.load(Ordering::Relaxed))
    }

    /// Share of failed requests over the last 10 to 20 seconds, with the
    /// number of requests it is based on.
    pub fn error_rate(&self, now: Instant) -> (f64, u64) {
        self.errors.rate(self.nanos_at(now))
    }

    /// Ejects the endpoint until `now + length` (the caller checked the
    /// cluster's limits); counts the ejection and clears the failure streak.
    pub(crate) fn eject(&self, now: Instant, length: Duration) -> bool {
        if self.ejected.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.ejected_until.store(self.nanos_at(now + length), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }

    /// The ejection count after one more ejection at `now`; the count starts
    /// over when the endpoint has stayed in for `forgive_after` since its last
    /// ejection ended.
    pub(crate) fn next_ejection_count(&self, now: Instant, forgive_after: Duration) -> u32 {
        let last_back = self.ramp_from.load(Ordering::Relaxed);
        let forgiven =
            last_back == NEVER || self.nanos_at(now).saturating_sub(last_back) >= forgive_after.as_nanos() as u64;
        if forgiven {
            self.ejections.store(1, Ordering::Relaxed);
            1
        } else {
            self.ejections.fetch_add(1, Ordering::Relaxed) + 1
        }
    }

    /// Ejections counted so far (see [`EndpointState::next_ejection_count`]).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Why the last active check failed (`None` after a pass).
    pub fn check_detail(&self) -> Option<String> {
        self.check_detail
            .lock()
            .expect("check detail lock is never poisoned")
            .clone()
    }

    /// Records the outcome of an active check for operators.
    pub fn set_check_detail(&self, detail: Option<String>) {
        *self.check_detail.lock().expect("check detail lock is never poisoned") = detail;
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

/// Requests and failures over two consecutive 10-second windows: enough for a
/// "recent error rate" without a timer. Counting races at a window boundary
/// can lose a few counts, which a rate shown to operators can afford.
#[derive(Debug, Default)]
struct ErrorWindow {
    /// Index of the current window (ns / WINDOW).
    epoch: AtomicU64,
    current: [AtomicU64; 2],
    previous: [AtomicU64; 2],
}

impl ErrorWindow {
    const WINDOW_NANOS: u64 = 10_000_000_000;

    fn roll(&self, nanos: u64) {
        let epoch = nanos / Self::WINDOW_NANOS;
        let seen = self.epoch.load(Ordering::Relaxed);
        if epoch <= seen
            || self
                .epoch
                .compare_exchange(seen, epoch, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for i in 0..2 {
            let moved = self.current[i].swap(0, Ordering::Relaxed);
            // After a gap of more than one window the previous one is empty.
            let keep = if epoch == seen + 1 { moved } else { 0 };
            self.previous[i].store(keep, Ordering::Relaxed);
        }
    }

    fn record(&self, failed: bool, nanos: u64) {
        self.roll(nanos);
        self.current[0].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.current[1].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn rate(&self, nanos: u64) -> (f64, u64) {
        self.roll(nanos);
        let total = self.current[0].load(Ordering::Relaxed) + self.previous[0].load(Ordering::Relaxed);
        let failed = self.current[1].load(Ordering::Relaxed) + self.previous[1].load(Ordering::Relaxed);
        if total == 0 {
            (0.0, 0)
        } else {
            (failed as f64 / total as f64, total)
        }
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
