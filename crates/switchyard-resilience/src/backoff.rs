//! Exponential backoff with full jitter (as in the AWS architecture blog's
//! "Exponential Backoff And Jitter"): the wait before retry `n` is uniform in
//! `[0, min(max, base * 2^n))`. Full jitter spreads the retries of many
//! clients that failed together, which a fixed or "equal jitter" wait does not.

use std::time::Duration;

/// Base and cap of the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random wait before retry `retry`, uniform below its ceiling.
    pub fn delay(&self, retry: u32) -> Duration {
        self.ceiling(retry).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let b = backoff();
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
        assert_eq!(b.ceiling(1000), Duration::from_millis(250), "no overflow");
    }

    #[test]
    fn delays_stay_below_the_ceiling_and_spread_over_it() {
        fastrand::seed(7);
        let b = backoff();
        let delays: Vec<Duration> = (0..10_000).map(|_| b.delay(2)).collect();
        assert!(delays.iter().all(|d| *d < Duration::from_millis(100)));
        // Full jitter: uniform over [0, 100ms), so each quarter gets about a quarter.
        for quarter in 0..4u32 {
            let low = Duration::from_millis(25) * quarter;
            let high = low + Duration::from_millis(25);
            let n = delays.iter().filter(|d| **d >= low && **d < high).count();
            assert!((2_300..2_700).contains(&n), "quarter {quarter}: {n} of 10000");
        }
        let mean = delays.iter().sum::<Duration>() / 10_000;
        assert!((45..55).contains(&mean.as_millis()), "mean {mean:?}");
    }
}
