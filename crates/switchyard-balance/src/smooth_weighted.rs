//! Smooth weighted round robin, as NGINX does it: weights {5, 1, 1} give
//! `a a b a c a a`, not `a a a a a b c`, so the heavy endpoint never gets a burst.
//!
//! NGINX runs its O(n) step on every pick. Here the whole cycle is computed
//! once per snapshot into a schedule and a pick is one atomic increment and one
//! index, whatever the cluster's size. For large clusters (where NGINX's
//! O(n) step per schedule entry would make building the schedule slow) the
//! schedule comes from earliest-deadline-first with midpoint deadlines
//! (Sainte-Laguë order) instead: just as smooth, not the identical sequence.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::{first_admitted, Balancer, Cursor, EndpointState, PickContext, Ramp};

/// Longest schedule kept; heavier weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 18;
/// Largest `schedule length x endpoints` built with NGINX's exact algorithm.
const MAX_EXACT_WORK: u64 = 1 << 22;

/// Weighted round robin over a precomputed smooth schedule.
#[derive(Debug)]
pub struct SmoothWeighted {
    /// Endpoint indices in pick order, one full cycle.
    schedule: Vec<u32>,
    next: Cursor,
    ramp: Ramp,
}

impl SmoothWeighted {
    /// The schedule of `endpoints`' current weights, continuing from `cursor`.
    pub fn new(endpoints: &[Arc<EndpointState>], cursor: Cursor, ramp: Ramp) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight())).collect();
        Self {
            schedule: schedule(&weights),
            next: cursor,
            ramp,
        }
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        // An unusable or ramping endpoint's slot goes to a random other slot,
        // so the others keep their proportions; a bounded number of draws
        // keeps the pick O(1) when most endpoints are fine.
        let slots = (0..len.min(16)).map(|attempt| if attempt == 0 { start } else { fastrand::usize(..len) });
        let candidates = slots.map(|slot| self.schedule[slot] as usize);
        first_admitted(candidates, endpoints, ctx, self.ramp, self.schedule[start] as usize)
    }
}

/// One cycle of the smooth weighted order of `weights`.
fn schedule(weights: &[u64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let weights = normalise(weights);
    let total: u64 = weights.iter().sum();
    if total * weights.len() as u64 <= MAX_EXACT_WORK {
        nginx_order(&weights, total)
    } else {
        midpoint_edf_order(&weights, total)
    }
}

/// Divides by the common divisor (a cycle of {2, 2} is `a b`, not `a b a b`)
/// and scales a sum above [`MAX_SCHEDULE`] down, keeping every weight >= 1.
fn normalise(weights: &[u64]) -> Vec<u64> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut out: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let total: u64 = out.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        out.iter_mut()
            .for_each(|w| *w = ((*w as f64 * scale).round() as u64).max(1));
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// NGINX's algorithm: every step each endpoint's current weight grows by its
/// weight, the largest is picked (first on ties) and loses the total.
fn nginx_order(weights: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

/// Endpoint i's k-th turn is due at `(k + 1/2) / w_i`; turns are taken in
/// deadline order (ties by index). O(total log n).
fn midpoint_edf_order(weights: &[u64], total: u64) -> Vec<u32> {
    // Deadlines compared exactly as fractions (2k + 1) / (2 w).
    #[derive(PartialEq, Eq)]
    struct Due {
        numerator: u64,
        denominator: u64,
        index: u32,
    }
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            let a = u128::from(self.numerator) * u128::from(other.denominator);
            let b = u128::from(other.numerator) * u128::from(self.denominator);
            a.cmp(&b).then(self.index.cmp(&other.index))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Reverse(Due {
                numerator: 1,
                denominator: 2 * w,
                index: i as u32,
            })
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while order.len() < total as usize {
        let Reverse(mut due) = heap.pop().expect("one entry per endpoint stays in the heap");
        order.push(due.index);
        due.numerator += 2;
        heap.push(Reverse(due));
    }
    order
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::{assert_shares, cursor, endpoints, histogram};

    fn names(order: &[u32]) -> String {
        order.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn the_nginx_sequence() {
        assert_eq!(names(&schedule(&[5, 1, 1])), "aabacaa");
        assert_eq!(names(&schedule(&[4, 2, 1])), "abacaba");
        assert_eq!(names(&schedule(&[1, 1, 1])), "abc");
        assert_eq!(names(&schedule(&[2, 2])), "ab", "common divisor removed");
    }

    #[test]
    fn the_heavy_endpoint_never_gets_a_burst() {
        // Longest run of the heavy endpoint: ceil(w_heavy / (w_others + 1)) at most.
        for order in [schedule(&[5, 1, 1]), midpoint_edf_order(&[5, 1, 1], 7)] {
            let longest = order
                .chunk_by(|a, b| a == b)
                .filter(|run| run[0] == 0)
                .map(<[u32]>::len)
                .max();
            assert!(longest <= Some(3), "{}", names(&order));
        }
        assert_eq!(names(&midpoint_edf_order(&[5, 1, 1], 7)), "aaabcaa");
    }

    #[test]
    fn shares_match_weights_exactly_over_a_cycle() {
        let weights = [7, 3, 1, 9];
        let eps = endpoints(&weights);
        let wrr = SmoothWeighted::new(&eps, cursor(), Ramp::default());
        let counts = histogram(&wrr, &eps, &PickContext::at(Instant::now()), 20 * 100);
        assert_eq!(counts, [700, 300, 100, 900]);
        assert_shares(&counts, &weights, 0.0);
    }

    #[test]
    fn large_clusters_use_the_edf_schedule_with_exact_shares() {
        let weights: Vec<u32> = (0..5000).map(|i| 1 + i % 4).collect();
        let eps = endpoints(&weights);
        let wrr = SmoothWeighted::new(&eps, cursor(), Ramp::default());
        let total: u32 = weights.iter().sum();
        assert_eq!(wrr.schedule.len(), total as usize);
        let counts = histogram(&wrr, &eps, &PickContext::at(Instant::now()), total as usize);
        let exact: Vec<usize> = weights.iter().map(|&w| w as usize).collect();
        assert_eq!(counts, exact);
    }

    #[test]
    fn huge_weight_sums_are_scaled_into_a_bounded_schedule() {
        let s = schedule(&[1_000_000, 3_000_001, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3, "{}", s.len());
        let share = s.iter().filter(|&&i| i == 1).count() as f64 / s.len() as f64;
        assert!((share - 0.75).abs() < 0.001, "{share}");
        assert!(s.contains(&2), "a tiny weight keeps at least one slot");
    }

    #[test]
    fn unavailable_endpoints_pass_their_turn() {
        fastrand::seed(31);
        let weights = [5, 1, 1];
        let eps = endpoints(&weights);
        eps[0].set_healthy(false, Instant::now());
        let wrr = SmoothWeighted::new(&eps, cursor(), Ramp::default());
        let counts = histogram(&wrr, &eps, &PickContext::at(Instant::now()), 700);
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1] + counts[2], 700);
        assert!(counts[1].abs_diff(counts[2]) <= 70, "{counts:?}");
    }
}
