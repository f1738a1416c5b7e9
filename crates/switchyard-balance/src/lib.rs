//! Load balancing: shared per-endpoint state and the pickers that choose among
//! endpoints.
//!
//! Pickers are pure: they read endpoint state (availability, load, latency,
//! slow-start ramp) and return an index. They do no I/O and take no locks, so
//! they are cheap on the request path and can be tested exhaustively; the
//! caller passes the time (`PickContext::now`) and the randomness comes from a
//! thread-local generator that tests seed. [`ClusterHealth`] holds the
//! cluster-wide side of availability (outlier ejection, panic mode); the I/O
//! of health checking and discovery lives elsewhere and only writes into it.
//!
//! A picker is built for one endpoint list (one config snapshot) by [`build`];
//! whatever must outlive a reload lives in [`EndpointState`] or in the
//! [`Cursor`] the caller keeps per cluster.

#![forbid(unsafe_code)]

mod endpoint;
pub mod ewma;
pub mod hash;
mod health;
mod least_connections;
mod least_response_time;
mod maglev;
mod random;
mod round_robin;
mod smooth_weighted;

pub use endpoint::{EndpointState, Failure, InFlight};
pub use health::{ClusterHealth, Ejection, OutlierPolicy};
pub use least_connections::{LeastConnections, PowerOfTwo};
pub use least_response_time::LeastResponseTime;
pub use maglev::Maglev;
pub use random::WeightedRandom;
pub use round_robin::RoundRobin;
pub use smooth_weighted::SmoothWeighted;

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Share of its weight an endpoint gets at the very start of slow start
/// (Envoy's default minimum weight percent, 10%).
pub const SLOW_START_FLOOR: f64 = 0.1;

/// What a picker may know about the request it picks for.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The time of the pick (slow-start ramps, latency decay).
    pub now: Instant,
    /// The client's address, the default key of hashing balancers.
    pub client_ip: Option<IpAddr>,
    /// A request-derived key (header, cookie, path) for hashing balancers;
    /// overrides `client_ip` when present.
    pub hash_key: Option<&'a [u8]>,
    /// Spread over every endpoint, available or not: too few are available
    /// (the cluster's panic threshold was crossed).
    pub panic: bool,
}

impl PickContext<'_> {
    /// A context at `now` with no request facts.
    pub fn at(now: Instant) -> Self {
        Self {
            now,
            client_ip: None,
            hash_key: None,
            panic: false,
        }
    }

    /// Whether `endpoint` may be picked in this context.
    pub fn usable(&self, endpoint: &EndpointState) -> bool {
        self.panic || endpoint.is_available()
    }
}

/// Chooses one endpoint of a cluster for a request.
///
/// `endpoints` is the list the picker was built for; the returned index points
/// into it. `None` means no endpoint can take the request.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Picks a usable endpoint, or `None` when none is.
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize>;
}

/// The balancing algorithms (names as in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    PowerOfTwo,
    LeastResponseTime,
    Random,
    IpHash,
    ConsistentHash,
}

/// Settings shared by the pickers of one cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Slow-start window: an endpoint that (re)joins ramps from
    /// [`SLOW_START_FLOOR`] to its full share over this long.
    pub slow_start: Option<Duration>,
}

/// A rotating position that outlives reloads (round robin, weighted round
/// robin), kept by the caller per cluster and handed to each new picker.
pub type Cursor = Arc<AtomicUsize>;

/// Builds the picker of `algorithm` for `endpoints`.
pub fn build(
    algorithm: Algorithm,
    endpoints: &[Arc<EndpointState>],
    options: &Options,
    cursor: Cursor,
) -> Box<dyn Balancer> {
    let ramp = Ramp(options.slow_start);
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(cursor, ramp)),
        Algorithm::WeightedRoundRobin => Box::new(SmoothWeighted::new(endpoints, cursor, ramp)),
        Algorithm::LeastConnections => Box::new(LeastConnections::new(ramp)),
        Algorithm::PowerOfTwo => Box::new(PowerOfTwo::new(ramp)),
        Algorithm::LeastResponseTime => Box::new(LeastResponseTime::new(ramp)),
        Algorithm::Random => Box::new(WeightedRandom::new(endpoints, ramp)),
        Algorithm::IpHash | Algorithm::ConsistentHash => Box::new(Maglev::new(endpoints)),
    }
}

/// Slow start as the pickers apply it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ramp(pub Option<Duration>);

impl Ramp {
    /// The share of its weight `endpoint` gets at `now` (1 outside a ramp).
    pub fn factor(&self, endpoint: &EndpointState, now: Instant) -> f64 {
        endpoint.ramp_factor(now, self.0, SLOW_START_FLOOR)
    }

    /// Whether a pick of `endpoint` stands: always outside a ramp, with
    /// probability equal to the ramp factor inside one.
    pub fn admits(&self, endpoint: &EndpointState, now: Instant) -> bool {
        if self.0.is_none() {
            return true;
        }
        let factor = self.factor(endpoint, now);
        factor >= 1.0 || fastrand::f64() < factor
    }
}

/// The first of `candidates` that is usable and that slow start admits; failing
/// that, the first usable candidate (a ramping endpoint beats none); failing
/// that, the first usable endpoint from `scan_from` on.
pub(crate) fn first_admitted(
    candidates: impl Iterator<Item = usize>,
    endpoints: &[Arc<EndpointState>],
    ctx: &PickContext<'_>,
    ramp: Ramp,
    scan_from: usize,
) -> Option<usize> {
    let mut fallback = None;
    for i in candidates {
        let endpoint = &endpoints[i];
        if !ctx.usable(endpoint) {
            continue;
        }
        if ramp.admits(endpoint, ctx.now) {
            return Some(i);
        }
        fallback.get_or_insert(i);
    }
    fallback.or_else(|| first_usable_from(endpoints, scan_from, ctx))
}

/// The first usable endpoint at or after `start` (wrapping), for pickers whose
/// preferred choice was unusable.
pub(crate) fn first_usable_from(
    endpoints: &[Arc<EndpointState>],
    start: usize,
    ctx: &PickContext<'_>,
) -> Option<usize> {
    let n = endpoints.len();
    (0..n)
        .map(|offset| (start + offset) % n)
        .find(|&i| ctx.usable(&endpoints[i]))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the pickers' tests.

    use super::*;

    /// Endpoints `10.0.0.i:80` with the given weights.
    pub fn endpoints(weights: &[u32]) -> Vec<Arc<EndpointState>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(EndpointState::new(format!("10.0.0.{i}:80"), w)))
            .collect()
    }

    /// How many of `picks` picks landed on each endpoint.
    pub fn histogram(b: &dyn Balancer, eps: &[Arc<EndpointState>], ctx: &PickContext<'_>, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; eps.len()];
        for _ in 0..picks {
            counts[b.pick(eps, ctx).expect("an endpoint is usable")] += 1;
        }
        counts
    }

    /// Asserts each share of `counts` is within `tolerance` (absolute, as a
    /// fraction of all picks) of the weight's share.
    pub fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
        let total: usize = counts.iter().sum();
        let weight_total: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let got = c as f64 / total as f64;
            let want = f64::from(w) / f64::from(weight_total);
            assert!(
                (got - want).abs() <= tolerance,
                "endpoint {i}: share {got:.4}, weight share {want:.4} (counts {counts:?})"
            );
        }
    }

    /// A fresh cursor.
    pub fn cursor() -> Cursor {
        Arc::new(AtomicUsize::new(0))
    }
}
