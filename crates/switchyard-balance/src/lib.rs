//! Load balancing: shared per-endpoint state and the pickers that choose among
//! endpoints.
//!
//! Pickers are pure: they read endpoint state (health, load) and return an index.
//! They do no I/O and take no locks, so they are cheap on the request path and
//! can be tested exhaustively. Discovery and health checking live elsewhere and
//! only write into [`EndpointState`].

#![forbid(unsafe_code)]

mod endpoint;
mod round_robin;

pub use endpoint::{EndpointState, InFlight};
pub use round_robin::RoundRobin;

use std::net::IpAddr;
use std::sync::Arc;

/// What a picker may know about the request it picks for.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client's address, for address-affine balancers.
    pub client_ip: Option<IpAddr>,
    /// A request-derived key (header, cookie, path) for hashing balancers.
    pub hash_key: Option<&'a [u8]>,
}

/// Chooses one endpoint of a cluster for a request.
///
/// `endpoints` is the cluster's current endpoint list; the returned index points
/// into it. `None` means no endpoint can take the request (all unavailable).
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Picks an available endpoint, or `None` when none is.
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickContext<'_>) -> Option<usize>;
}
