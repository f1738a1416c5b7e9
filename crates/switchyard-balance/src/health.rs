//! Cluster-wide availability: which share of a cluster can take traffic,
//! passive outlier ejection, and the panic threshold.
//!
//! The request path only reads two counters here ([`ClusterHealth::panic`]).
//! Everything that changes availability (an active check flipping, an
//! ejection, a readmission, a reload) is rare, and goes through one lock that
//! recounts the cluster, so the counters never drift from the endpoints' flags.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{EndpointState, Failure};

/// When failing endpoints are ejected (the `outlier_detection` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Length of a first ejection; the n-th lasts n times as long...
    pub base_ejection: Duration,
    /// ...up to this.
    pub max_ejection: Duration,
    /// Most of the cluster that may be ejected at once (percent). At least
    /// one endpoint may always be ejected unless this is 0.
    pub max_ejected_percent: u32,
}

/// An ejection that [`ClusterHealth::record`] made; the caller readmits the
/// endpoint after `length` with [`ClusterHealth::readmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub length: Duration,
    /// Which ejection of this endpoint it is (1 for the first).
    pub count: u32,
    pub failures: u32,
}

/// Availability of one cluster. Kept across reloads by cluster name.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    /// The endpoints of the newest snapshot; locked for every state change.
    endpoints: Mutex<Vec<Arc<EndpointState>>>,
    total: AtomicUsize,
    available: AtomicUsize,
    /// Picks made in panic mode.
    panic_picks: AtomicU64,
}

impl ClusterHealth {
    /// Takes the endpoint list of a new snapshot and recounts.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<EndpointState>>) {
        let mut list = self.lock();
        *list = endpoints;
        self.recount(&list);
    }

    /// Endpoints in the newest snapshot.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Endpoints that are healthy and not ejected.
    pub fn available(&self) -> usize {
        self.available.load(Ordering::Relaxed)
    }

    /// Whether a pick should ignore availability because fewer than
    /// `threshold_percent` of the endpoints are available (Envoy's panic
    /// mode: spreading over everything beats crushing the few that are left).
    /// Counts the pick when it is.
    pub fn panic(&self, threshold_percent: u32) -> bool {
        let total = self.total.load(Ordering::Relaxed) as u64;
        let available = self.available.load(Ordering::Relaxed) as u64;
        let panic = available * 100 < u64::from(threshold_percent) * total;
        if panic {
            self.panic_picks.fetch_add(1, Ordering::Relaxed);
        }
        panic
    }

    /// Picks made in panic mode so far.
    pub fn panic_picks(&self) -> u64 {
        self.panic_picks.load(Ordering::Relaxed)
    }

    /// Marks `endpoint` healthy or not after active checks; returns whether
    /// that changed anything.
    pub fn set_healthy(&self, endpoint: &EndpointState, healthy: bool, now: Instant) -> bool {
        let list = self.lock();
        let changed = endpoint.set_healthy(healthy, now);
        if changed {
            self.recount(&list);
        }
        changed
    }

    /// Records how a request to `endpoint` ended (`None`: success) and, under
    /// `policy`, ejects the endpoint when its failures in a row reach the
    /// limit and the cluster may lose one more endpoint.
    pub fn record(
        &self,
        endpoint: &EndpointState,
        failure: Option<Failure>,
        now: Instant,
        policy: Option<&OutlierPolicy>,
    ) -> Option<Ejection> {
        let failures = endpoint.record_outcome(failure, now);
        let policy = policy?;
        if failures < policy.consecutive_failures || endpoint.is_ejected() {
            return None;
        }
        let list = self.lock();
        if endpoint.is_ejected() {
            return None;
        }
        let ejected = list.iter().filter(|e| e.is_ejected()).count();
        if ejected >= max_ejected(list.len(), policy.max_ejected_percent) {
            return None;
        }
        let count = endpoint.next_ejection_count(now, policy.max_ejection);
        let length = policy.base_ejection.saturating_mul(count).min(policy.max_ejection);
        if !endpoint.eject(now, length) {
            return None;
        }
        self.recount(&list);
        Some(Ejection {
            length,
            count,
            failures,
        })
    }

    /// Ends an ejection (its time is up); returns whether the endpoint was
    /// ejected. It comes back with a slow-start ramp.
    pub fn readmit(&self, endpoint: &EndpointState, now: Instant) -> bool {
        let list = self.lock();
        let changed = endpoint.set_ejected(false, now);
        if changed {
            self.recount(&list);
        }
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointState>>> {
        self.endpoints.lock().expect("cluster health lock is never poisoned")
    }

    fn recount(&self, list: &[Arc<EndpointState>]) {
        self.total.store(list.len(), Ordering::Relaxed);
        let available = list.iter().filter(|e| e.is_available()).count();
        self.available.store(available, Ordering::Relaxed);
    }
}

/// How many of `total` endpoints may be ejected at once.
fn max_ejected(total: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    (total * percent as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::endpoints;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        }
    }

    fn cluster(n: usize) -> (ClusterHealth, Vec<Arc<EndpointState>>) {
        let eps = endpoints(&vec![1; n]);
        let health = ClusterHealth::default();
        health.set_endpoints(eps.clone());
        (health, eps)
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_streak() {
        let (health, eps) = cluster(4);
        let now = Instant::now();
        let p = policy();
        assert_eq!(health.record(&eps[0], Some(Failure::Connect), now, Some(&p)), None);
        assert_eq!(health.record(&eps[0], Some(Failure::Connect), now, Some(&p)), None);
        assert_eq!(health.record(&eps[0], None, now, Some(&p)), None, "success");
        assert_eq!(eps[0].consecutive_failures(), 0);
        for _ in 0..2 {
            assert_eq!(health.record(&eps[0], Some(Failure::ServerError), now, Some(&p)), None);
        }
        let ejection = health.record(&eps[0], Some(Failure::ServerError), now, Some(&p));
        assert_eq!(
            ejection,
            Some(Ejection {
                length: Duration::from_secs(10),
                count: 1,
                failures: 3
            })
        );
        assert!(eps[0].is_ejected());
        assert_eq!(eps[0].last_failure(), Some(Failure::ServerError));
        assert_eq!(eps[0].ejected_until(), Some(now + Duration::from_secs(10)));
        assert_eq!((health.available(), health.total()), (3, 4));
        assert!(health.readmit(&eps[0], now + Duration::from_secs(10)));
        assert_eq!(health.available(), 4);
        assert!(!health.readmit(&eps[0], now), "already back");
    }

    #[test]
    fn repeated_ejections_grow_to_the_cap_and_are_forgiven_later() {
        let (health, eps) = cluster(2);
        let p = policy();
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..3 {
            let ejection = (0..3)
                .find_map(|_| health.record(&eps[0], Some(Failure::Reset), now, Some(&p)))
                .expect("the third failure ejects");
            lengths.push(ejection.length.as_secs());
            now += ejection.length;
            health.readmit(&eps[0], now);
        }
        assert_eq!(lengths, [10, 20, 25], "linear growth, capped at max_ejection");
        // A long good spell (max_ejection) starts the count over.
        now += p.max_ejection;
        let ejection = (0..3)
            .find_map(|_| health.record(&eps[0], Some(Failure::Reset), now, Some(&p)))
            .unwrap();
        assert_eq!((ejection.count, ejection.length.as_secs()), (1, 10));
    }

    #[test]
    fn never_ejects_more_than_the_allowed_share() {
        let (health, eps) = cluster(4);
        let now = Instant::now();
        let p = policy();
        let mut ejected = 0;
        for endpoint in &eps {
            for _ in 0..5 {
                if health.record(endpoint, Some(Failure::Timeout), now, Some(&p)).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        assert_eq!(health.available(), 2);
        // At least one may go even when the share rounds down to zero.
        let (health, eps) = cluster(1);
        let ejection = (0..3).find_map(|_| health.record(&eps[0], Some(Failure::Timeout), now, Some(&p)));
        assert!(ejection.is_some());
        // 0% turns ejection off.
        let (health, eps) = cluster(3);
        let off = OutlierPolicy {
            max_ejected_percent: 0,
            ..p
        };
        assert!((0..10).all(|_| health
            .record(&eps[0], Some(Failure::Timeout), now, Some(&off))
            .is_none()));
    }

    #[test]
    fn without_a_policy_failures_are_only_counted() {
        let (health, eps) = cluster(2);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(health.record(&eps[1], Some(Failure::Connect), now, None), None);
        }
        health.record(&eps[1], None, now, None);
        let (rate, total) = eps[1].error_rate(now);
        assert_eq!(total, 11);
        assert!((rate - 10.0 / 11.0).abs() < 1e-9, "{rate}");
        assert!(!eps[1].is_ejected());
    }

    #[test]
    fn panic_mode_starts_below_the_threshold_and_is_counted() {
        let (health, eps) = cluster(4);
        let now = Instant::now();
        assert!(!health.panic(50));
        health.set_healthy(&eps[0], false, now);
        health.set_healthy(&eps[1], false, now);
        assert!(!health.panic(50), "2 of 4 is exactly 50%: not below");
        health.set_healthy(&eps[2], false, now);
        assert!(health.panic(50));
        assert!(!health.panic(0), "0 turns panic mode off");
        assert_eq!(health.panic_picks(), 1);
        assert!(health.set_healthy(&eps[2], true, now));
        assert!(!health.set_healthy(&eps[2], true, now), "no change");
        assert_eq!(health.available(), 2);
    }

    #[test]
    fn a_reload_recounts() {
        let (health, eps) = cluster(3);
        health.set_healthy(&eps[0], false, Instant::now());
        assert_eq!(health.available(), 2);
        health.set_endpoints(eps[1..].to_vec());
        assert_eq!((health.available(), health.total()), (2, 2));
    }

    #[test]
    fn the_error_rate_forgets_old_windows() {
        let (_, eps) = cluster(1);
        let t0 = Instant::now();
        eps[0].record_outcome(Some(Failure::Connect), t0);
        eps[0].record_outcome(None, t0);
        assert_eq!(
            eps[0].error_rate(t0 + Duration::from_secs(11)).1,
            2,
            "previous window still counts"
        );
        assert_eq!(eps[0].error_rate(t0 + Duration::from_secs(45)), (0.0, 0));
    }
}
