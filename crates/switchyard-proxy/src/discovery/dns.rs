//! DNS discovery: a cluster follows the A/AAAA or SRV records of a name,
//! looking again when the answer's TTL runs out (clamped to the cluster's
//! `min_refresh`..`max_refresh`). A failed lookup keeps the last answer: a
//! nameserver outage must not empty a cluster.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use switchyard_config::{DnsDiscovery, DnsRecord, Endpoint};
use tokio_util::sync::CancellationToken;

use super::Discovery;

/// How long building a snapshot waits for a new DNS source's first answer.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// One cluster's resolver and what to ask it.
pub struct Watcher {
    resolver: TokioResolver,
    source: DnsDiscovery,
}

impl Watcher {
    pub fn new(source: &DnsDiscovery) -> Result<Watcher, ResolveError> {
        let mut builder = match source.resolver {
            Some(address) => {
                let servers = NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()?,
        };
        // Each lookup is due exactly when the last answer expires: a cache
        // would only hand back what was already seen.
        builder.options_mut().cache_size = 0;
        Ok(Watcher {
            resolver: builder.build(),
            source: source.clone(),
        })
    }

    /// The endpoints the records name now, sorted, and the answer's TTL.
    pub async fn resolve(&self) -> Result<(Vec<Endpoint>, Duration), ResolveError> {
        let now = Instant::now();
        let mut endpoints = Vec::new();
        let ttl = match self.source.record {
            DnsRecord::Address => {
                let answer = self.resolver.lookup_ip(self.source.name.as_str()).await?;
                for ip in answer.iter() {
                    endpoints.push(Endpoint {
                        address: authority(ip, self.source.port),
                        weight: self.source.weight,
                    });
                }
                answer.valid_until().saturating_duration_since(now)
            }
            DnsRecord::Srv => {
                let answer = self.resolver.srv_lookup(self.source.name.as_str()).await?;
                let mut valid_until = answer.as_lookup().valid_until();
                // Lower priority values are preferred (RFC 2782): use the best
                // group only.
                let best = answer.iter().map(|srv| srv.priority()).min();
                for srv in answer.iter().filter(|srv| Some(srv.priority()) == best) {
                    let target = srv.target().to_utf8();
                    let ips = self.resolver.lookup_ip(target.as_str()).await?;
                    valid_until = valid_until.min(ips.valid_until());
                    for ip in ips.iter() {
                        endpoints.push(Endpoint {
                            address: authority(ip, srv.port()),
                            weight: u32::from(srv.weight()).max(1),
                        });
                    }
                }
                valid_until.saturating_duration_since(now)
            }
        };
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints.dedup_by(|later, earlier| later.address == earlier.address);
        Ok((endpoints, ttl))
    }

    /// When to look again after an answer with `ttl`.
    pub fn refresh_after(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.source.min_refresh, self.source.max_refresh)
    }
}

fn authority(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Re-resolves `cluster`'s name until `stop`, handing each answer to
/// `discovery`. Failures keep the last answer and retry sooner, doubling up
/// to `max_refresh`.
pub async fn follow(
    discovery: Arc<Discovery>,
    cluster: String,
    watcher: Watcher,
    mut wait: Duration,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match watcher.resolve().await {
            Ok((endpoints, ttl)) => {
                failures = 0;
                discovery.dns_answer(&cluster, endpoints);
                watcher.refresh_after(ttl)
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%cluster, name = %watcher.source.name, %error, failures, "DNS discovery: lookup failed; keeping the last answer");
                (watcher.source.min_refresh * 2u32.saturating_pow(failures.min(16))).min(watcher.source.max_refresh)
            }
        };
    }
}
