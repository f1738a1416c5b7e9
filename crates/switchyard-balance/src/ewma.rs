//! Peak-EWMA latency, as Finagle and Linkerd use it for load balancing: a slower
//! sample raises the estimate at once (the peak), faster samples pull it down
//! gradually, and without samples the estimate decays toward zero so that an
//! endpoint once found slow is tried again after a while instead of never.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time constant of the decay: after this long without a sample, an estimate
/// has fallen to 1/e of its value; a faster sample this long after the last one
/// weighs 63% in the new estimate.
pub const DECAY: Duration = Duration::from_secs(10);

/// A lock-free peak-EWMA of latencies in nanoseconds.
///
/// Times are nanoseconds on the caller's clock (the endpoint's age). Concurrent
/// updates may lose one of two racing samples; the estimate stays a valid
/// recent latency, which is all a balancer needs.
#[derive(Debug, Default)]
pub struct PeakEwma {
    /// The estimate as `f64` bits; 0.0 means no sample yet.
    value: AtomicU64,
    /// When `value` was last updated (caller's nanoseconds).
    stamp: AtomicU64,
}

impl PeakEwma {
    /// An estimate with no samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample of `rtt` taken at `now_ns`.
    pub fn observe(&self, rtt: Duration, now_ns: u64) {
        let rtt = rtt.as_nanos() as f64;
        let previous = f64::from_bits(self.value.load(Ordering::Relaxed));
        let next = if previous == 0.0 || rtt >= previous {
            rtt
        } else {
            let w = self.decay_weight(now_ns);
            previous * w + rtt * (1.0 - w)
        };
        self.value.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns, Ordering::Relaxed);
    }

    /// The estimate at `now_ns`, decayed by the time since the last sample.
    pub fn estimate(&self, now_ns: u64) -> f64 {
        let value = f64::from_bits(self.value.load(Ordering::Relaxed));
        if value == 0.0 {
            return 0.0;
        }
        value * self.decay_weight(now_ns)
    }

    /// `exp(-elapsed / DECAY)`: how much of the old estimate still counts.
    fn decay_weight(&self, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        (-elapsed / DECAY.as_nanos() as f64).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slow_sample_raises_the_estimate_at_once() {
        let e = PeakEwma::new();
        e.observe(Duration::from_millis(5), 0);
        e.observe(Duration::from_millis(200), MS);
        assert_eq!(e.estimate(MS), 200.0 * MS as f64);
    }

    #[test]
    fn fast_samples_pull_it_down_gradually() {
        let e = PeakEwma::new();
        e.observe(Duration::from_millis(100), 0);
        // One fast sample 1s later: 1 - exp(-0.1) = 9.5% weight.
        e.observe(Duration::from_millis(10), 1000 * MS);
        let got = e.estimate(1000 * MS) / MS as f64;
        let want = 100.0 * (-0.1f64).exp() + 10.0 * (1.0 - (-0.1f64).exp());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(got > 10.0 && got < 100.0);
    }

    #[test]
    fn without_samples_the_estimate_decays_so_the_endpoint_is_tried_again() {
        let e = PeakEwma::new();
        assert_eq!(e.estimate(0), 0.0, "no sample: no estimate");
        e.observe(Duration::from_millis(100), 0);
        let later = e.estimate(DECAY.as_nanos() as u64);
        assert!((later / (100.0 * MS as f64) - (-1.0f64).exp()).abs() < 1e-9);
    }
}
