//! Endpoints found at run time: the service registry (instances register
//! through the admin API) and DNS (A/AAAA or SRV records, re-resolved on
//! their TTL).
//!
//! [`Discovery`] keeps the latest answer of each source; a snapshot built
//! for a cluster with `endpoints_from` takes its endpoints from here. Each
//! time an answer changes, the gateway builds a new snapshot with the same
//! configuration, and endpoints that stay keep their state (load, health,
//! latency, breakers) because that state is found by address.

mod dns;
pub mod registry;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use switchyard_config::{Cluster, Config, DnsDiscovery, Endpoint, EndpointSource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use registry::{Mirrored, Record, Registration, RegistryError, ServiceRegistry};

/// The discovered endpoints of every source in use.
#[derive(Debug, Default)]
pub struct Discovery {
    pub registry: ServiceRegistry,
    /// One watcher per cluster with `endpoints_from = { dns = ... }`.
    dns: Mutex<HashMap<String, DnsWatch>>,
    /// Bumped whenever a DNS answer changes an endpoint set.
    dns_changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct DnsWatch {
    source: DnsDiscovery,
    endpoints: Vec<Endpoint>,
    stop: CancellationToken,
}

impl Discovery {
    /// The endpoints of a cluster that discovers them; `None` for a cluster
    /// with a fixed list.
    pub fn endpoints(&self, cluster: &Cluster) -> Option<Vec<Endpoint>> {
        match cluster.endpoints_from.as_ref()? {
            EndpointSource::Registry { service } => Some(self.registry.endpoints(service, Instant::now())),
            EndpointSource::Dns(source) => {
                let watches = self.dns.lock().expect("dns lock is never poisoned");
                Some(
                    watches
                        .get(&cluster.name)
                        .filter(|w| w.source == *source)
                        .map(|w| w.endpoints.clone())
                        .unwrap_or_default(),
                )
            }
        }
    }

    /// Starts a DNS watcher for each DNS-discovered cluster of `config` that
    /// has none (after a first resolution, bounded in time, so that its
    /// endpoints are there when the snapshot is built) and stops watchers
    /// of clusters that are gone or changed source.
    pub async fn prepare(self: &std::sync::Arc<Self>, config: &Config, stop: &CancellationToken) {
        let wanted: HashMap<&str, &DnsDiscovery> = config
            .clusters
            .iter()
            .filter_map(|c| match &c.endpoints_from {
                Some(EndpointSource::Dns(source)) => Some((c.name.as_str(), source)),
                _ => None,
            })
            .collect();
        let fresh: Vec<(String, DnsDiscovery)> = {
            let mut watches = self.dns.lock().expect("dns lock is never poisoned");
            watches.retain(|name, watch| {
                let keep = wanted.get(name.as_str()) == Some(&&watch.source);
                if !keep {
                    watch.stop.cancel();
                }
                keep
            });
            wanted
                .iter()
                .filter(|(name, _)| !watches.contains_key(**name))
                .map(|(name, source)| ((*name).to_owned(), (*source).clone()))
                .collect()
        };
        for (cluster, source) in fresh {
            let watcher = match dns::Watcher::new(&source) {
                Ok(watcher) => watcher,
                Err(error) => {
                    tracing::error!(%cluster, name = %source.name, %error, "DNS discovery cannot start: the cluster has no endpoints");
                    continue;
                }
            };
            let first = tokio::time::timeout(dns::FIRST_ANSWER_WAIT, watcher.resolve()).await;
            let (endpoints, next) = match first {
                Ok(Ok((endpoints, ttl))) => (endpoints, watcher.refresh_after(ttl)),
                Ok(Err(error)) => {
                    tracing::warn!(%cluster, name = %source.name, %error, "DNS discovery: first lookup failed; retrying");
                    (Vec::new(), source.min_refresh)
                }
                Err(_) => {
                    tracing::warn!(%cluster, name = %source.name, "DNS discovery: first lookup timed out; retrying");
                    (Vec::new(), source.min_refresh)
                }
            };
            tracing::info!(%cluster, name = %source.name, endpoints = endpoints.len(), "DNS discovery started");
            let token = stop.child_token();
            self.dns.lock().expect("dns lock is never poisoned").insert(
                cluster.clone(),
                DnsWatch {
                    source,
                    endpoints,
                    stop: token.clone(),
                },
            );
            tokio::spawn(dns::follow(self.clone(), cluster, watcher, next, token));
        }
    }

    /// Records a DNS answer for `cluster`; signals a change if it is one.
    fn dns_answer(&self, cluster: &str, endpoints: Vec<Endpoint>) {
        let changed = {
            let mut watches = self.dns.lock().expect("dns lock is never poisoned");
            match watches.get_mut(cluster) {
                Some(watch) if watch.endpoints != endpoints => {
                    tracing::info!(
                        %cluster,
                        name = %watch.source.name,
                        before = watch.endpoints.len(),
                        after = endpoints.len(),
                        "DNS discovery: endpoints changed"
                    );
                    watch.endpoints = endpoints;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.dns_changes.send_modify(|n| *n += 1);
        }
    }

    /// Resolves when any discovered endpoint set may have changed.
    pub fn subscribe(&self) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        (self.registry.subscribe(), self.dns_changes.subscribe())
    }
}
