//! Plain round robin: each available endpoint in turn, weights ignored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{Balancer, EndpointState, PickContext};

/// Cycles through endpoints, skipping unavailable ones.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &[Arc<EndpointState>], _ctx: &PickContext<'_>) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        // One shared counter: concurrent picks interleave but each advances it,
        // so the distribution stays even without a lock.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|offset| (start.wrapping_add(offset)) % n)
            .find(|&i| endpoints[i].is_available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| Arc::new(EndpointState::new(format!("127.0.0.1:{}", 9000 + i), 1)))
            .collect()
    }

    fn picks(rr: &RoundRobin, eps: &[Arc<EndpointState>], count: usize) -> Vec<Option<usize>> {
        (0..count).map(|_| rr.pick(eps, &PickContext::default())).collect()
    }

    #[test]
    fn cycles_in_order() {
        let eps = endpoints(3);
        let rr = RoundRobin::new();
        let got = picks(&rr, &eps, 6);
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn skips_unavailable_endpoints() {
        let eps = endpoints(3);
        eps[1].set_healthy(false);
        let rr = RoundRobin::new();
        let got = picks(&rr, &eps, 4);
        assert!(got.iter().all(|p| *p != Some(1)), "{got:?}");
        assert!(got.contains(&Some(0)) && got.contains(&Some(2)), "{got:?}");
    }

    #[test]
    fn none_when_nothing_is_available() {
        let eps = endpoints(2);
        eps.iter().for_each(|e| e.set_healthy(false));
        assert_eq!(RoundRobin::new().pick(&eps, &PickContext::default()), None);
        assert_eq!(RoundRobin::new().pick(&[], &PickContext::default()), None);
    }

    #[test]
    fn even_distribution_over_many_picks() {
        let eps = endpoints(4);
        let rr = RoundRobin::new();
        let mut counts = [0usize; 4];
        for p in picks(&rr, &eps, 4000) {
            counts[p.unwrap()] += 1;
        }
        assert_eq!(counts, [1000; 4]);
    }
}
