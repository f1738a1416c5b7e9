//! Least response time: power of two choices over `peak-EWMA latency x
//! (in-flight + 1) / weight`, as Finagle's and Linkerd's balancers do. A slow
//! endpoint loses most comparisons; its estimate decays while it rests, so it
//! is tried again now and then and wins back traffic once it is fast.

use std::sync::Arc;

use crate::least_connections::power_of_two;
use crate::{Balancer, EndpointState, PickContext, Ramp};

/// Latency assumed for an endpoint with no sample yet, so that a new endpoint
/// is neither avoided nor flooded (1 ms).
const DEFAULT_RTT_NS: f64 = 1_000_000.0;

/// Picks by latency-weighted load.
#[derive(Debug)]
pub struct LeastResponseTime {
    ramp: Ramp,
}

impl LeastResponseTime {
    /// A least-response-time picker.
    pub fn new(ramp: Ramp) -> Self {
        Self { ramp }
    }
}

impl Balancer for LeastResponseTime {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        power_of_two(endpoints, ctx, |e| {
            let latency = match e.latency_estimate(ctx.now) {
                0.0 => DEFAULT_RTT_NS,
                estimate => estimate,
            };
            let weight = f64::from(e.weight()) * self.ramp.factor(e, ctx.now);
            latency * (e.in_flight() as f64 + 1.0) / weight
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testing::{endpoints, histogram};

    #[test]
    fn steers_away_from_a_slow_endpoint() {
        fastrand::seed(11);
        let eps = endpoints(&[1, 1, 1]);
        let now = Instant::now();
        eps[0].observe_latency(Duration::from_millis(5), now);
        eps[1].observe_latency(Duration::from_millis(100), now);
        eps[2].observe_latency(Duration::from_millis(5), now);
        let lrt = LeastResponseTime::new(Ramp::default());
        let counts = histogram(&lrt, &eps, &PickContext::at(now), 3000);
        // P2C: the slow one wins no comparison, and is drawn first or second
        // only against a faster one.
        assert_eq!(counts[1], 0, "{counts:?}");
    }

    #[test]
    fn load_counts_too_a_fast_endpoint_is_not_crushed() {
        fastrand::seed(12);
        let eps = endpoints(&[1, 1]);
        let now = Instant::now();
        eps[0].observe_latency(Duration::from_millis(10), now);
        eps[1].observe_latency(Duration::from_millis(20), now);
        // 3 in flight on the fast one: 10 x 4 = 40 > 20 x 1.
        let _held: Vec<_> = (0..3).map(|_| eps[0].begin()).collect();
        let lrt = LeastResponseTime::new(Ramp::default());
        assert_eq!(lrt.pick(&eps, &PickContext::at(now)), Some(1));
    }

    #[test]
    fn a_rested_slow_endpoint_is_tried_again() {
        fastrand::seed(13);
        let eps = endpoints(&[1, 1]);
        let now = Instant::now();
        eps[0].observe_latency(Duration::from_millis(2), now);
        eps[1].observe_latency(Duration::from_millis(50), now);
        let lrt = LeastResponseTime::new(Ramp::default());
        assert_eq!(lrt.pick(&eps, &PickContext::at(now)), Some(0));
        // The fast one keeps getting samples; the slow one's estimate decays
        // (50ms x e^-4 = 0.9ms < 2ms after 40s).
        let later = now + Duration::from_secs(40);
        eps[0].observe_latency(Duration::from_millis(2), later);
        assert_eq!(lrt.pick(&eps, &PickContext::at(later)), Some(1));
    }
}
