//! Load-aware pickers over in-flight requests: least connections (an exact
//! minimum for small clusters, power-of-two-choices for large ones) and plain
//! power-of-two-choices.
//!
//! Load is `in_flight / (weight x ramp)`: an endpoint of weight 2 is "as loaded"
//! as one of weight 1 when it carries twice the requests.

use std::sync::Arc;

use crate::{first_usable_from, Balancer, EndpointState, PickContext, Ramp};

/// Up to this many endpoints, least connections scans them all; above, it
/// samples two (O(1) per pick, and within a small factor of the best choice).
const EXACT_SCAN_MAX: usize = 16;

/// Picks the endpoint with the fewest in-flight requests relative to its weight.
#[derive(Debug)]
pub struct LeastConnections {
    ramp: Ramp,
}

impl LeastConnections {
    /// A least-connections picker.
    pub fn new(ramp: Ramp) -> Self {
        Self { ramp }
    }
}

impl Balancer for LeastConnections {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        let n = endpoints.len();
        if n > EXACT_SCAN_MAX {
            return power_of_two(endpoints, ctx, |e| load(e, self.ramp, ctx));
        }
        if n == 0 {
            return None;
        }
        // The least loaded; among equals, each equally likely (reservoir
        // sampling), so ties spread evenly.
        let mut best: Option<(usize, f64)> = None;
        let mut ties = 0u32;
        for (i, endpoint) in endpoints.iter().enumerate() {
            if !ctx.usable(endpoint) {
                continue;
            }
            let l = load(endpoint, self.ramp, ctx);
            match best {
                Some((_, b)) if l > b => {}
                Some((_, b)) if l == b => {
                    ties += 1;
                    if fastrand::u32(..ties) == 0 {
                        best = Some((i, l));
                    }
                }
                _ => {
                    best = Some((i, l));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Power of two choices: two random usable endpoints, the less loaded wins.
#[derive(Debug)]
pub struct PowerOfTwo {
    ramp: Ramp,
}

impl PowerOfTwo {
    /// A power-of-two-choices picker over in-flight load.
    pub fn new(ramp: Ramp) -> Self {
        Self { ramp }
    }
}

impl Balancer for PowerOfTwo {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        power_of_two(endpoints, ctx, |e| load(e, self.ramp, ctx))
    }
}

/// In-flight requests per unit of effective weight (plus one, so an idle heavy
/// endpoint still beats an idle light one).
fn load(endpoint: &EndpointState, ramp: Ramp, ctx: &PickContext<'_>) -> f64 {
    let weight = f64::from(endpoint.weight()) * ramp.factor(endpoint, ctx.now);
    (endpoint.in_flight() as f64 + 1.0) / weight
}

/// Samples two distinct usable endpoints and returns the one with the lower
/// `cost`. A few draws find usable ones when some are down; when most are, it
/// falls back to a scan.
pub(crate) fn power_of_two(
    endpoints: &[Arc<EndpointState>],
    ctx: &PickContext<'_>,
    cost: impl Fn(&EndpointState) -> f64,
) -> Option<usize> {
    let n = endpoints.len();
    match n {
        0 => return None,
        1 => return ctx.usable(&endpoints[0]).then_some(0),
        _ => {}
    }
    let draw = || {
        (0..4)
            .map(|_| fastrand::usize(..n))
            .find(|&i| ctx.usable(&endpoints[i]))
    };
    let a = draw().or_else(|| first_usable_from(endpoints, fastrand::usize(..n), ctx))?;
    // The second choice differs from the first: draw from the other n - 1.
    let b = (0..4)
        .map(|_| (a + 1 + fastrand::usize(..n - 1)) % n)
        .find(|&i| ctx.usable(&endpoints[i]));
    Some(match b {
        Some(b) if cost(&endpoints[b]) < cost(&endpoints[a]) => b,
        _ => a,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::{assert_shares, endpoints, histogram};

    #[test]
    fn least_connections_steers_away_from_a_loaded_endpoint() {
        fastrand::seed(1);
        let eps = endpoints(&[1, 1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| eps[1].begin()).collect();
        let lc = LeastConnections::new(Ramp::default());
        let counts = histogram(&lc, &eps, &PickContext::at(Instant::now()), 3000);
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!(counts[0].abs_diff(counts[2]) < 200, "ties spread: {counts:?}");
    }

    #[test]
    fn least_connections_follows_load_as_requests_start_and_end() {
        fastrand::seed(2);
        let eps = endpoints(&[1, 1, 1]);
        let lc = LeastConnections::new(Ramp::default());
        let ctx = PickContext::at(Instant::now());
        // Requests that never finish: each pick goes to an endpoint with the
        // fewest, so the counts stay level.
        let mut held = Vec::new();
        for _ in 0..30 {
            let i = lc.pick(&eps, &ctx).unwrap();
            held.push(eps[i].begin());
        }
        assert_eq!(eps.iter().map(|e| e.in_flight()).collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[test]
    fn weights_scale_the_load() {
        fastrand::seed(3);
        let eps = endpoints(&[3, 1]);
        let lc = LeastConnections::new(Ramp::default());
        let ctx = PickContext::at(Instant::now());
        let mut held = Vec::new();
        for _ in 0..40 {
            let i = lc.pick(&eps, &ctx).unwrap();
            held.push(eps[i].begin());
        }
        assert_eq!(
            eps[0].in_flight(),
            30,
            "a weight-3 endpoint carries three times the requests"
        );
        assert_shares(&[eps[0].in_flight(), eps[1].in_flight()], &[3, 1], 0.0);
    }

    #[test]
    fn large_clusters_sample_two_and_still_avoid_the_loaded() {
        fastrand::seed(4);
        let eps = endpoints(&[1; 100]);
        // Half the endpoints are busy: a P2C pick lands on a busy one only when
        // both draws are busy, about a quarter of the time.
        let _busy: Vec<_> = eps
            .iter()
            .take(50)
            .flat_map(|e| (0..10).map(|_| e.begin()).collect::<Vec<_>>())
            .collect();
        let lc = LeastConnections::new(Ramp::default());
        let counts = histogram(&lc, &eps, &PickContext::at(Instant::now()), 20_000);
        let busy_share = counts[..50].iter().sum::<usize>() as f64 / 20_000.0;
        assert!((busy_share - 0.25).abs() < 0.02, "{busy_share}");
    }

    #[test]
    fn power_of_two_skips_the_unusable_and_never_picks_the_same_twice() {
        fastrand::seed(5);
        let eps = endpoints(&[1, 1, 1, 1]);
        eps[2].set_ejected(true, Instant::now());
        let p2c = PowerOfTwo::new(Ramp::default());
        let counts = histogram(&p2c, &eps, &PickContext::at(Instant::now()), 4000);
        assert_eq!(counts[2], 0);
        assert!(
            counts.iter().enumerate().all(|(i, &c)| i == 2 || c > 1000),
            "{counts:?}"
        );
    }

    #[test]
    fn nothing_usable_means_no_pick() {
        let eps = endpoints(&[1; 20]);
        eps.iter().for_each(|e| {
            e.set_healthy(false, Instant::now());
        });
        let ctx = PickContext::at(Instant::now());
        assert_eq!(LeastConnections::new(Ramp::default()).pick(&eps, &ctx), None);
        assert_eq!(LeastConnections::new(Ramp::default()).pick(&eps[..3], &ctx), None);
        assert_eq!(PowerOfTwo::new(Ramp::default()).pick(&eps, &ctx), None);
    }
}
