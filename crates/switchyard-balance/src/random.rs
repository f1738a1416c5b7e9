//! Weighted random: each pick draws an endpoint with probability proportional
//! to its weight, in O(1) through Vose's alias table.

use std::sync::Arc;

use crate::{first_admitted, Balancer, EndpointState, PickContext, Ramp};

/// Weighted random picker.
#[derive(Debug)]
pub struct WeightedRandom {
    /// For slot i: keep i with probability `keep[i]`, else take `alias[i]`.
    keep: Vec<f64>,
    alias: Vec<u32>,
    ramp: Ramp,
}

impl WeightedRandom {
    /// The alias table of `endpoints`' current weights.
    pub fn new(endpoints: &[Arc<EndpointState>], ramp: Ramp) -> Self {
        let weights: Vec<f64> = endpoints.iter().map(|e| f64::from(e.weight())).collect();
        let (keep, alias) = alias_table(&weights);
        Self { keep, alias, ramp }
    }

    fn draw(&self) -> usize {
        let slot = fastrand::usize(..self.keep.len());
        if fastrand::f64() < self.keep[slot] {
            slot
        } else {
            self.alias[slot] as usize
        }
    }
}

impl Balancer for WeightedRandom {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        if self.keep.is_empty() {
            return None;
        }
        // Redraw on an unusable or ramping endpoint: keeps the others' shares
        // proportional. After a few misses, scan.
        let scan_from = fastrand::usize(..endpoints.len());
        first_admitted((0..8).map(|_| self.draw()), endpoints, ctx, self.ramp, scan_from)
    }
}

/// Vose's alias method: splits `weights` into n slots of equal probability,
/// each holding at most two endpoints.
fn alias_table(weights: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let n = weights.len();
    let total: f64 = weights.iter().sum();
    let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
    let mut keep = vec![1.0; n];
    let mut alias: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        keep[s] = scaled[s];
        alias[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // Leftovers (rounding) keep their own slot entirely.
    (keep, alias)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::{assert_shares, endpoints, histogram};

    #[test]
    fn shares_follow_weights() {
        fastrand::seed(21);
        let weights = [1, 2, 3, 10];
        let eps = endpoints(&weights);
        let random = WeightedRandom::new(&eps, Ramp::default());
        let counts = histogram(&random, &eps, &PickContext::at(Instant::now()), 200_000);
        assert_shares(&counts, &weights, 0.005);
    }

    #[test]
    fn an_unavailable_endpoint_gets_nothing_and_the_rest_keep_their_proportions() {
        fastrand::seed(22);
        let eps = endpoints(&[1, 2, 3]);
        eps[2].set_healthy(false, Instant::now());
        let random = WeightedRandom::new(&eps, Ramp::default());
        let counts = histogram(&random, &eps, &PickContext::at(Instant::now()), 90_000);
        assert_eq!(counts[2], 0);
        assert_shares(&counts[..2], &[1, 2], 0.01);
    }
}
