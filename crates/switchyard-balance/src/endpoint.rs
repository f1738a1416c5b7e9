//! State of one upstream endpoint, shared by the balancer, the proxy and (later)
//! health checking. It outlives config reloads: the proxy keeps it by cluster and
//! address and hands the same `Arc` to each new snapshot.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Live state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    address: String,
    weight: AtomicUsize,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

impl EndpointState {
    /// A new endpoint, healthy and idle.
    pub fn new(address: impl Into<String>, weight: u32) -> Self {
        Self {
            address: address.into(),
            weight: AtomicUsize::new(weight as usize),
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// `host:port` of the endpoint.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The configured weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed) as u32
    }

    /// Updates the weight when a reload changes it.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1) as usize, Ordering::Relaxed);
    }

    /// Whether the endpoint may be picked.
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the endpoint healthy or not.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests currently being served by this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Holds one unit of an endpoint's in-flight count.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let endpoint = Arc::new(EndpointState::new("127.0.0.1:1", 1));
        let a = endpoint.begin();
        let b = endpoint.begin();
        assert_eq!(endpoint.in_flight(), 2);
        drop(a);
        assert_eq!(endpoint.in_flight(), 1);
        drop(b);
        assert_eq!(endpoint.in_flight(), 0);
    }
}
