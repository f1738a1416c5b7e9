//! L4 listeners: `tcp` (byte streams, with TLS passthrough routed by SNI)
//! and `udp` (datagrams in per-client sessions), balanced across a cluster's
//! endpoints with the same balancers, health and outlier state as HTTP routes.

pub(crate) mod sni;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::IpAddr;

use prometheus::{IntCounter, IntGauge};

use crate::snapshot::ClusterRuntime;
use crate::tunnel::Meters;

/// A listener's L4 counters.
#[derive(Debug, Clone)]
pub(crate) struct L4Metrics {
    /// Connections joined to an endpoint.
    pub proxied: IntCounter,
    /// Connections closed because no endpoint was available or none answered.
    pub no_endpoint: IntCounter,
    /// Connect attempts that failed (each endpoint tried counts).
    pub connect_failed: IntCounter,
    /// Connections refused before any endpoint was tried (ip_filter, SNI, PROXY header).
    pub rejected: IntCounter,
    /// Connections closed a grace period after a reload stopped the listener
    /// sending connections to their cluster.
    pub drained: IntCounter,
    /// UDP sessions opened, and datagrams dropped (session table full, no endpoint).
    pub sessions_opened: IntCounter,
    pub datagrams_dropped: IntCounter,
    pub sessions_active: IntGauge,
    pub bytes: Meters,
}

/// The endpoint for a connection from `client`, avoiding those in `tried`:
/// the cluster's balancer first (hashing balancers hash the client's
/// address, so a client keeps its endpoint), then the next usable one.
pub(crate) fn pick(cluster: &ClusterRuntime, client: IpAddr, tried: &[usize]) -> Option<usize> {
    let mut key = [0u8; 16];
    let key: &[u8] = match client {
        IpAddr::V4(ip) => {
            key[..4].copy_from_slice(&ip.octets());
            &key[..4]
        }
        IpAddr::V6(ip) => {
            key.copy_from_slice(&ip.octets());
            &key
        }
    };
    let ctx = cluster.pick_context(client, Some(key));
    let first = cluster.balancer.pick(&cluster.endpoints, &ctx)?;
    if tried.contains(&first) {
        cluster.next_untried(first, &ctx, tried)
    } else {
        Some(first)
    }
}
