//! Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI 2016),
//! for `consistent_hash` and `ip_hash`.
//!
//! Each endpoint walks its own permutation of the table's slots (derived from
//! its stable id, not its position) and the endpoints take turns claiming their
//! next free slot, heavier endpoints more often. A key hashes to a slot, the
//! slot names the endpoint: O(1) per pick. Adding or removing one of N
//! endpoints moves about 1/N of the keys.

use std::sync::Arc;

use crate::hash::{key_hash, mix};
use crate::{first_usable_from, Balancer, EndpointState, PickContext};

/// Smallest table (Maglev's disruption nears the ideal 1/N only with many
/// slots per endpoint); larger clusters get at least 100 per endpoint.
const MIN_TABLE: u64 = 65_537;
const SLOTS_PER_ENDPOINT: u64 = 100;

/// A Maglev table over one endpoint list.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// The table of `endpoints`, weighted.
    pub fn new(endpoints: &[Arc<EndpointState>]) -> Self {
        let ids: Vec<(u64, u32)> = endpoints.iter().map(|e| (e.id(), e.weight())).collect();
        Self { table: populate(&ids) }
    }

    /// The endpoint a key hash maps to, ignoring availability.
    fn slot(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }
}

impl Balancer for Maglev {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let hash = match (ctx.hash_key, ctx.client_ip) {
            (Some(key), _) => key_hash(key),
            (None, Some(std::net::IpAddr::V4(ip))) => key_hash(&ip.octets()),
            (None, Some(std::net::IpAddr::V6(ip))) => key_hash(&ip.octets()),
            // No key at all: any endpoint will do.
            (None, None) => fastrand::u64(..),
        };
        let first = self.slot(hash);
        if ctx.usable(&endpoints[first]) {
            return Some(first);
        }
        // The key's endpoint is down: rehash, so that its keys spread over the
        // others instead of piling onto one neighbour; other keys do not move.
        (1..=8u64)
            .map(|attempt| self.slot(mix(hash ^ attempt)))
            .find(|&i| ctx.usable(&endpoints[i]))
            .or_else(|| first_usable_from(endpoints, first, ctx))
    }
}

/// Fills a prime-sized table from `(id, weight)` pairs.
fn populate(endpoints: &[(u64, u32)]) -> Vec<u32> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let size = next_prime((endpoints.len() as u64 * SLOTS_PER_ENDPOINT).max(MIN_TABLE));
    let max_weight = endpoints.iter().map(|e| e.1).max().unwrap_or(1).max(1) as f64;
    // Permutation of endpoint i: offset, offset + skip, offset + 2 skip, ... mod size.
    let mut walkers: Vec<(u64, u64, u64, f64)> = endpoints
        .iter()
        .map(|&(id, _)| {
            let offset = mix(id) % size;
            let skip = mix(id ^ 0x5bd1_e995_5bd1_e995) % (size - 1) + 1;
            (offset, skip, 0, 0.0)
        })
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    // Turns in id order, not list order: the same set of endpoints gives the
    // same table however the configuration orders them.
    let mut turns: Vec<usize> = (0..endpoints.len()).collect();
    turns.sort_by_key(|&i| endpoints[i].0);
    'fill: loop {
        for &i in &turns {
            let weight = endpoints[i].1;
            // Weighted turns: each round an endpoint earns weight / max_weight
            // of a claim, and claims a slot per whole unit earned.
            let walker = &mut walkers[i];
            walker.3 += f64::from(weight.max(1)) / max_weight;
            while walker.3 >= 1.0 {
                walker.3 -= 1.0;
                loop {
                    let slot = ((walker.0 + walker.2 * walker.1) % size) as usize;
                    walker.2 += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
    }
    table
}

fn next_prime(from: u64) -> u64 {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
    (from..).find(|&n| is_prime(n)).expect("there is always a larger prime")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Instant;

    use super::*;
    use crate::testing::{assert_shares, endpoints};

    fn owner(m: &Maglev, eps: &[Arc<EndpointState>], key: &str) -> usize {
        let mut ctx = PickContext::at(Instant::now());
        ctx.hash_key = Some(key.as_bytes());
        m.pick(eps, &ctx).unwrap()
    }

    fn moved_share(before: &[Arc<EndpointState>], after: &[Arc<EndpointState>], keys: usize) -> f64 {
        let (a, b) = (Maglev::new(before), Maglev::new(after));
        let moved = (0..keys)
            .filter(|k| {
                let key = format!("user-{k}");
                before[owner(&a, before, &key)].address() != after[owner(&b, after, &key)].address()
            })
            .count();
        moved as f64 / keys as f64
    }

    #[test]
    fn the_same_key_always_lands_on_the_same_endpoint() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let m = Maglev::new(&eps);
        for k in 0..100 {
            let key = format!("k{k}");
            assert_eq!(owner(&m, &eps, &key), owner(&m, &eps, &key));
        }
        // ...and the client address is the default key.
        let mut ctx = PickContext::at(Instant::now());
        ctx.client_ip = Some(IpAddr::from([192, 0, 2, 7]));
        let first = m.pick(&eps, &ctx);
        assert!((0..50).all(|_| m.pick(&eps, &ctx) == first));
    }

    #[test]
    fn adding_or_removing_one_of_n_moves_about_one_nth() {
        let ten = endpoints(&[1; 10]);
        let nine = ten[..9].to_vec();
        for (from, to) in [(&ten, &nine), (&nine, &ten)] {
            let share = moved_share(from, to, 20_000);
            assert!((0.08..=0.13).contains(&share), "moved {share:.4}, ideal 0.10");
        }
        // Order does not matter: the table follows ids, not positions.
        let reversed: Vec<_> = ten.iter().rev().cloned().collect();
        assert_eq!(moved_share(&ten, &reversed, 5000), 0.0);
    }

    #[test]
    fn shares_follow_weights() {
        let weights = [1, 2, 3, 4];
        let eps = endpoints(&weights);
        let m = Maglev::new(&eps);
        let mut counts = [0usize; 4];
        for &i in &m.table {
            counts[i as usize] += 1;
        }
        assert_shares(&counts, &weights, 0.01);
    }

    #[test]
    fn keys_of_a_down_endpoint_move_and_no_other_key_does() {
        let eps = endpoints(&[1; 5]);
        let m = Maglev::new(&eps);
        let before: Vec<usize> = (0..5000).map(|k| owner(&m, &eps, &format!("k{k}"))).collect();
        eps[3].set_healthy(false, Instant::now());
        let after: Vec<usize> = (0..5000).map(|k| owner(&m, &eps, &format!("k{k}"))).collect();
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, 3);
            if *b != 3 {
                assert_eq!(a, b, "a key of a healthy endpoint moved");
            }
        }
        // The down endpoint's keys spread over several others.
        let targets: std::collections::HashSet<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, _)| **b == 3)
            .map(|(_, a)| *a)
            .collect();
        assert!(targets.len() >= 3, "{targets:?}");
    }

    #[test]
    fn table_sizes_are_prime_and_scale_with_the_cluster() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(1_000_000), 1_000_003);
        assert_eq!(Maglev::new(&endpoints(&[1; 3])).table.len(), 65_537);
        assert_eq!(Maglev::new(&endpoints(&[1; 1000])).table.len(), 100_003);
    }
}
