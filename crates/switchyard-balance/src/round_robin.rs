//! Plain round robin: each usable endpoint in turn, weights ignored (use
//! `weighted_round_robin` for weights).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::{first_admitted, Balancer, Cursor, EndpointState, PickContext, Ramp};

/// Cycles through endpoints, skipping unusable ones.
#[derive(Debug)]
pub struct RoundRobin {
    next: Cursor,
    ramp: Ramp,
}

impl RoundRobin {
    /// A round robin continuing from `cursor`.
    pub fn new(cursor: Cursor, ramp: Ramp) -> Self {
        Self { next: cursor, ramp }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        // One shared counter: concurrent picks interleave but each advances it,
        // so the distribution stays even without a lock.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        first_admitted(
            (0..n).map(|offset| (start + offset) % n),
            endpoints,
            ctx,
            self.ramp,
            start,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testing::{cursor, endpoints, histogram};

    fn picks(rr: &RoundRobin, eps: &[Arc<EndpointState>], count: usize) -> Vec<Option<usize>> {
        let ctx = PickContext::at(Instant::now());
        (0..count).map(|_| rr.pick(eps, &ctx)).collect()
    }

    #[test]
    fn cycles_in_order() {
        let eps = endpoints(&[1, 1, 1]);
        let rr = RoundRobin::new(cursor(), Ramp::default());
        assert_eq!(picks(&rr, &eps, 6), [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn skips_unavailable_endpoints() {
        let eps = endpoints(&[1, 1, 1]);
        eps[1].set_healthy(false, Instant::now());
        let rr = RoundRobin::new(cursor(), Ramp::default());
        let got = picks(&rr, &eps, 4);
        assert!(got.iter().all(|p| *p != Some(1)), "{got:?}");
        assert!(got.contains(&Some(0)) && got.contains(&Some(2)), "{got:?}");
    }

    #[test]
    fn none_when_nothing_is_usable_unless_in_panic() {
        let eps = endpoints(&[1, 1]);
        eps.iter().for_each(|e| {
            e.set_healthy(false, Instant::now());
        });
        let rr = RoundRobin::new(cursor(), Ramp::default());
        let mut ctx = PickContext::at(Instant::now());
        assert_eq!(rr.pick(&eps, &ctx), None);
        assert_eq!(rr.pick(&[], &ctx), None);
        ctx.panic = true;
        assert!(rr.pick(&eps, &ctx).is_some(), "panic mode spreads over all");
    }

    #[test]
    fn even_distribution_and_the_cursor_survives_a_rebuild() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let shared = cursor();
        let rr = RoundRobin::new(shared.clone(), Ramp::default());
        let counts = histogram(&rr, &eps, &PickContext::at(Instant::now()), 4000);
        assert_eq!(counts, [1000; 4]);
        rr.pick(&eps, &PickContext::at(Instant::now()));
        // A reload builds a new picker on the same cursor: it goes on at 1, not 0.
        let again = RoundRobin::new(shared, Ramp::default());
        assert_eq!(again.pick(&eps, &PickContext::at(Instant::now())), Some(1));
    }

    #[test]
    fn a_recovering_endpoint_ramps_up() {
        fastrand::seed(7);
        let eps = endpoints(&[1, 1]);
        let t0 = Instant::now();
        eps[0].set_healthy(false, t0);
        eps[0].set_healthy(true, t0);
        let rr = RoundRobin::new(cursor(), Ramp(Some(Duration::from_secs(10))));
        let early = histogram(&rr, &eps, &PickContext::at(t0), 10_000);
        let half = histogram(&rr, &eps, &PickContext::at(t0 + Duration::from_secs(5)), 10_000);
        let done = histogram(&rr, &eps, &PickContext::at(t0 + Duration::from_secs(10)), 10_000);
        // On its turn (every other pick) it is taken with probability equal to
        // the factor, else the turn passes to the next: shares 5%, 25%, 50%.
        let share = |c: &[usize]| c[0] as f64 / 10_000.0;
        assert!((share(&early) - 0.05).abs() < 0.015, "{early:?}");
        assert!((share(&half) - 0.25).abs() < 0.015, "{half:?}");
        assert_eq!(done, [5000, 5000]);
    }
}
