//! Upstream connection pools.
//!
//! One pooled hyper client per distinct set of pool settings; clusters with the
//! same settings share it (the pool is keyed by endpoint authority inside). The
//! clients live in the [`Registry`](crate::snapshot::Registry) so keep-alive
//! connections survive config reloads.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use switchyard_config::{Cluster, UpstreamProtocol};

use crate::body::UpstreamRequestBody;

/// A pooled HTTP client for upstream requests.
pub type UpstreamClient = Client<HttpConnector, UpstreamRequestBody>;

/// Settings that make two pools different.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
}

impl PoolSettings {
    /// The pool settings a cluster asks for.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            max_idle_per_endpoint: cluster.pool_max_idle_per_endpoint,
            idle_timeout: cluster.pool_idle_timeout,
        }
    }

    /// A new client with these settings.
    pub fn build(&self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle_per_endpoint)
            .http2_only(self.protocol == UpstreamProtocol::Http2)
            .build(connector)
    }
}
