//! Retry budgets (as in Finagle and Linkerd): retries may add at most a
//! fraction of the recent request rate, plus a small floor so that a quiet
//! cluster can still retry. An outage then costs at most `1 + ratio` times
//! the normal load, whatever the retry policies of the routes say.

use std::time::{Duration, Instant};

use crate::window::RollingCounts;

/// How much retrying a cluster allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetSettings {
    /// Retries allowed per request over the window (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries per second allowed whatever the traffic.
    pub min_per_second: u32,
    /// How far back requests and retries are counted.
    pub window: Duration,
}

/// A cluster's retry budget; kept across reloads.
#[derive(Debug)]
pub struct RetryBudget {
    settings: RetryBudgetSettings,
    /// (requests, retries) over the window.
    counts: RollingCounts,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(settings: RetryBudgetSettings) -> Self {
        Self {
            settings,
            counts: RollingCounts::new(settings.window),
            epoch: Instant::now(),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RetryBudgetSettings {
        &self.settings
    }

    /// Counts a client request (not a retry) at `now`.
    pub fn record_request(&self, now: Instant) {
        self.counts.add(self.nanos(now), 1, 0);
    }

    /// Takes one retry from the budget if there is room; `false` means the
    /// retry must not happen.
    pub fn try_retry(&self, now: Instant) -> bool {
        let nanos = self.nanos(now);
        let (requests, retries) = self.counts.sum(nanos);
        let floor = f64::from(self.settings.min_per_second) * self.settings.window.as_secs_f64();
        let allowed = self.settings.ratio * requests as f64 + floor;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.counts.add(nanos, 0, 1);
        true
    }

    /// Requests and retries counted over the window ending at `now`.
    pub fn usage(&self, now: Instant) -> (u64, u64) {
        self.counts.sum(self.nanos(now))
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetSettings {
            ratio,
            min_per_second,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn retries_are_a_fraction_of_requests_plus_a_floor() {
        let b = budget(0.2, 1);
        let now = b.epoch + Duration::from_secs(1);
        for _ in 0..100 {
            b.record_request(now);
        }
        // 0.2 x 100 + 1/s x 10s = 30 retries.
        let granted = (0..100).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 30);
        assert_eq!(b.usage(now), (100, 30));
    }

    #[test]
    fn an_idle_cluster_still_gets_the_floor() {
        let b = budget(0.2, 2);
        let now = b.epoch;
        assert_eq!((0..100).filter(|_| b.try_retry(now)).count(), 20);
        let zero = budget(0.0, 0);
        assert!(!zero.try_retry(now), "no budget at all");
    }

    #[test]
    fn the_budget_refills_as_the_window_slides() {
        let b = budget(0.5, 0);
        let t0 = b.epoch;
        for _ in 0..10 {
            b.record_request(t0);
        }
        assert_eq!((0..10).filter(|_| b.try_retry(t0)).count(), 5);
        assert!(!b.try_retry(t0 + Duration::from_secs(5)), "still spent");
        let later = t0 + Duration::from_secs(11);
        for _ in 0..4 {
            b.record_request(later);
        }
        assert_eq!(
            (0..10).filter(|_| b.try_retry(later)).count(),
            2,
            "old requests and retries slid out"
        );
    }
}
