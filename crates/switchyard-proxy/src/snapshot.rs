//! The runtime snapshot: everything a request needs, built from a [`Config`]
//! and swapped whole on reload.
//!
//! State that must outlive a reload (endpoint health and load, upstream pools)
//! is not rebuilt: the [`Registry`] hands the same objects, found by name, to
//! each new snapshot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::uri::Authority;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use switchyard_balance::{
    Algorithm, Balancer, ClusterHealth, Cursor, EndpointState, Options, OutlierPolicy, PickContext,
};
use switchyard_config::{BalancerKind, Cluster, ClusterMode, Config, Listener, Route, RouteAction};
use switchyard_resilience::fault::{AbortFault, DelayFault, FaultSettings};
use switchyard_resilience::idempotency::{IdempotencyStore, MemoryStore, MemoryStoreSettings};

use crate::cluster::SharedIdempotency;
use switchyard_resilience::{Breaker, BreakerSettings, ConcurrencyLimit, RetryBudget, RetryBudgetSettings};
use switchyard_security::cors::{CorsPolicy, Origins};
use switchyard_security::ipfilter::IpFilter;
use switchyard_security::ratelimit::{Quota, RateLimiter};

use crate::auth::RouteAuth;
use crate::discovery::Discovery;
use crate::filters::Limit;
use crate::global_limit::{GlobalBucket, RedisStore};
use crate::metrics::{ClusterMetrics, ListenerMetrics, Metrics, RouteMetrics};
use crate::router::Router;
use crate::trace::Tracer;
use crate::upstream::{PoolSettings, UpstreamClient};

/// An immutable view of the running configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// The configuration's version: 0 before the first apply, then one more
    /// for each configuration applied.
    pub version: u64,
    /// Request counters for requests no route matched.
    pub unrouted: Arc<RouteMetrics>,
    pub listeners: HashMap<String, ListenerRuntime>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// Span export (`[tracing]`).
    pub tracer: Option<Arc<Tracer>>,
    /// The response store (`[cache]`), shared by routes with `cache`.
    pub cache: Arc<crate::cache::ResponseStore>,
}

/// A listener's settings and its router.
pub struct ListenerRuntime {
    pub config: Listener,
    pub metrics: ListenerMetrics,
    /// TLS for `https` listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The listener's `ip_filter`.
    pub ip_filter: Option<IpFilter>,
    pub router: Router<RouteEntry>,
    /// The hyper connection builder with this listener's limits and timeouts.
    pub http: Arc<auto::Builder<TokioExecutor>>,
    /// `tcp` listeners: by cluster, cancelled a grace period after a reload
    /// stops this listener sending connections there (the listener removed,
    /// or its cluster or SNI routes changed); open connections then close.
    pub drains: HashMap<String, tokio_util::sync::CancellationToken>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ListenerRuntime {
    /// Whether `ip` is a trusted proxy for this listener.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// A route with its cluster resolved.
#[derive(Debug)]
pub struct RouteEntry {
    pub route: Arc<Route>,
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// Responses kept by idempotency key (routes with `idempotency`).
    pub idempotency: Option<Arc<dyn IdempotencyStore>>,
    pub fault: Option<FaultSettings>,
    /// The route's own retry budget (`retry.budget`), on top of the cluster's.
    pub budget: Option<Arc<RetryBudget>>,
    pub ip_filter: Option<IpFilter>,
    /// Rate limits with their buckets (which outlive reloads).
    pub limits: Vec<Limit>,
    pub cors: Option<CorsPolicy>,
    pub auth: Option<Arc<RouteAuth>>,
    pub metrics: Arc<RouteMetrics>,
    /// WebSocket connections open through the route (outlives reloads).
    pub websockets: Arc<std::sync::atomic::AtomicUsize>,
    /// Small files served lately (`static` routes).
    pub files: Option<Arc<crate::static_files::FileCache>>,
    /// The route's response cache (`cache`).
    pub(crate) cache: Option<crate::cache::RouteCache>,
    /// The route's pub/sub hub (`hub`; outlives reloads).
    pub hub: Option<Arc<crate::hub::Hub>>,
    /// An aggregate route's calls, each a forwarding entry of its own.
    pub aggregate: Option<Arc<[RouteEntry]>>,
    /// Cancelled a grace period after a reload removes the route: its
    /// WebSocket tunnels then close (outlives reloads while the route stays).
    pub drain: tokio_util::sync::CancellationToken,
}

impl RouteEntry {
    /// A forwarding entry for one call of an aggregate route.
    pub(crate) fn for_call(
        route: Arc<Route>,
        cluster: Option<Arc<ClusterRuntime>>,
        metrics: Arc<RouteMetrics>,
    ) -> Self {
        RouteEntry {
            route,
            cluster,
            idempotency: None,
            fault: None,
            budget: None,
            ip_filter: None,
            limits: Vec::new(),
            cors: None,
            auth: None,
            metrics,
            websockets: Arc::default(),
            files: None,
            cache: None,
            hub: None,
            aggregate: None,
            drain: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl AsRef<Route> for RouteEntry {
    fn as_ref(&self) -> &Route {
        &self.route
    }
}

/// A cluster ready to take requests.
#[derive(Debug)]
pub struct ClusterRuntime {
    pub config: Cluster,
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Parsed `host:port` of each endpoint, same order as `endpoints`.
    pub authorities: Vec<Authority>,
    pub balancer: Box<dyn Balancer>,
    pub client: UpstreamClient,
    /// Availability counts, ejections and panic mode; outlives reloads.
    pub health: Arc<ClusterHealth>,
    pub outlier: Option<OutlierPolicy>,
    /// Endpoint index by stable id, for sticky cookies (empty without `sticky`).
    pub by_id: HashMap<u64, usize>,
    /// Caps retries of every route to this cluster.
    pub budget: Arc<RetryBudget>,
    /// The cluster's breaker (`circuit_breaker` without `per_endpoint`).
    pub breaker: Option<Arc<Breaker>>,
    /// One breaker per endpoint, same order as `endpoints` (`per_endpoint`).
    pub endpoint_breakers: Vec<Arc<Breaker>>,
    /// `max_concurrent` / `max_pending`.
    pub limit: Option<Arc<ConcurrencyLimit>>,
    pub metrics: ClusterMetrics,
}

impl ClusterRuntime {
    /// The context of a pick now: the client, the hash key, and whether too
    /// few endpoints are available (panic mode spreads over all of them).
    pub fn pick_context<'k>(&self, client_ip: std::net::IpAddr, hash_key: Option<&'k [u8]>) -> PickContext<'k> {
        let threshold = self.config.panic_threshold;
        PickContext {
            now: Instant::now(),
            client_ip: Some(client_ip),
            hash_key,
            panic: threshold > 0 && self.health.panic(threshold),
        }
    }

    /// A usable endpoint not in `tried`, scanning on from `after`.
    pub fn next_untried(&self, after: usize, ctx: &PickContext<'_>, tried: &[usize]) -> Option<usize> {
        let n = self.endpoints.len();
        (1..n)
            .map(|offset| (after + offset) % n)
            .find(|i| !tried.contains(i) && ctx.usable(&self.endpoints[*i]))
    }

    /// The endpoint a sticky cookie value (the endpoint id in hex) names.
    pub fn sticky_endpoint(&self, cookie: &str) -> Option<usize> {
        let id = u64::from_str_radix(cookie, 16).ok()?;
        self.by_id.get(&id).copied()
    }

    /// The cluster and the live state of each endpoint, as `GET /api/clusters`
    /// shows it.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let wall = SystemTime::now();
        let balancer = BalancerKind::ALL
            .iter()
            .find(|(_, kind)| *kind == self.config.balancer)
            .map_or("?", |(name, _)| *name);
        let threshold = self.config.panic_threshold;
        let (available, total) = (self.health.available(), self.health.total());
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (error_rate, recent_requests) = e.error_rate(now);
                let ejection = e.ejected_until().map(|until| {
                    let at = wall + until.saturating_duration_since(now);
                    json!({
                        "until": humantime::format_rfc3339_millis(at).to_string(),
                        "seconds_left": until.saturating_duration_since(now).as_secs_f64(),
                        "reason": format!(
                            "{} failures in a row, the last: {}",
                            self.outlier.map_or(0, |o| o.consecutive_failures),
                            e.last_failure().map_or("-", |f| f.as_str()),
                        ),
                    })
                });
                json!({
                    "address": e.address(),
                    "id": format!("{:016x}", e.id()),
                    "weight": e.weight(),
                    "available": e.is_available(),
                    "healthy": e.is_healthy(),
                    "health_check_failure": e.check_detail(),
                    "ejected": ejection,
                    "ejections": e.ejections(),
                    "consecutive_failures": e.consecutive_failures(),
                    "in_flight": e.in_flight(),
                    "latency_ewma_ms": e.latency_estimate(now) / 1e6,
                    "error_rate": error_rate,
                    "recent_requests": recent_requests,
                    "slow_start_share": e.ramp_factor(now, self.config.slow_start, switchyard_balance::SLOW_START_FLOOR),
                    "circuit_breaker": self.endpoint_breakers.get(i).map(|b| b.state().as_str()),
                })
            })
            .collect();
        let breaker = self.breaker.as_ref().map(|b| {
            let (requests, failures) = b.window(now);
            json!({
                "state": b.state().as_str(),
                "opened_total": b.opened_total(),
                "window_requests": requests,
                "window_failures": failures,
            })
        });
        let concurrency = self.limit.as_ref().map(|l| {
            let (max_concurrent, max_pending) = l.settings();
            json!({
                "active": l.active(),
                "pending": l.pending(),
                "max_concurrent": max_concurrent,
                "max_pending": max_pending,
            })
        });
        let (budget_requests, budget_retries) = self.budget.usage(now);
        json!({
            "name": self.config.name,
            "balancer": balancer,
            "endpoints_total": total,
            "endpoints_available": available,
            "panic_threshold_percent": threshold,
            "in_panic": (available as u64) * 100 < u64::from(threshold) * total as u64,
            "panic_picks": self.health.panic_picks(),
            "health_check": self.config.health_check.is_some(),
            "outlier_detection": self.outlier.is_some(),
            "circuit_breaker": breaker,
            "concurrency": concurrency,
            "retry_budget": {"window_requests": budget_requests, "window_retries": budget_retries},
            "endpoints": endpoints,
        })
    }
}

/// Long-lived state found by name when a snapshot is built.
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: HashMap<(String, String), Arc<EndpointState>>,
    clients: HashMap<PoolSettings, UpstreamClient>,
    /// Round-robin positions by cluster name.
    cursors: HashMap<String, Cursor>,
    /// Availability by cluster name.
    health: HashMap<String, Arc<ClusterHealth>>,
    /// Retry budgets, breakers and limits by cluster name (by cluster and
    /// address for per-endpoint breakers), kept while their settings stay.
    budgets: HashMap<String, Arc<RetryBudget>>,
    breakers: HashMap<String, Arc<Breaker>>,
    endpoint_breakers: HashMap<(String, String), Arc<Breaker>>,
    limits: HashMap<String, Arc<ConcurrencyLimit>>,
    /// Idempotency stores by route name: here, or in Redis (cluster mode).
    idempotency: HashMap<String, Arc<MemoryStore>>,
    shared_idempotency: HashMap<String, Arc<SharedIdempotency>>,
    /// Route retry budgets by route name.
    route_budgets: HashMap<String, Arc<RetryBudget>>,
    /// Rate limiters by route name and position.
    limiters: HashMap<(String, usize), Arc<RateLimiter>>,
    /// The shared Redis (`[cluster]`), kept while its settings stay.
    redis: Option<(ClusterMode, Arc<RedisStore>)>,
    /// The cluster's link to Redis, which the stores above use.
    cluster_link: crate::cluster::LinkSlot,
    /// Route authentication by route name.
    auths: HashMap<String, Arc<RouteAuth>>,
    /// Metric handles by route and cluster name: looking them up in their
    /// families is most of a route's build cost, and they never change.
    route_metrics: HashMap<(String, String), Arc<RouteMetrics>>,
    /// Open WebSocket connections by route name.
    websockets: HashMap<String, Arc<std::sync::atomic::AtomicUsize>>,
    /// The TLS settings each https listener serves with, kept so that a
    /// certificate that cannot be read at reload leaves the previous one.
    tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// The span exporter, kept while `[tracing]` stays the same.
    tracer: Option<Arc<Tracer>>,
    /// The response store, kept while `[cache] max_size` stays the same.
    store: Option<Arc<crate::cache::ResponseStore>>,
    /// Drain signals of routes by name (see [`RouteEntry::drain`]).
    route_drains: HashMap<String, tokio_util::sync::CancellationToken>,
    /// Drain signals of `tcp` listeners by listener and cluster (see
    /// [`ListenerRuntime::drains`]).
    l4_drains: HashMap<(String, String), tokio_util::sync::CancellationToken>,
    /// Routes a reload removed whose grace period runs, for the admin API.
    draining: Arc<std::sync::Mutex<Vec<DrainingRoute>>>,
    /// Pub/sub hubs by route name (their settings follow reloads).
    hubs: HashMap<String, Arc<crate::hub::Hub>>,
    /// Whether a snapshot was built before (endpoints added later slow-start).
    built: bool,
}

/// A route a reload removed, or a tcp listener's former cluster, in its
/// grace period.
#[derive(Debug)]
struct DrainingRoute {
    /// `{"route": NAME}` or `{"listener": NAME, "cluster": NAME}`.
    what: serde_json::Value,
    /// A route's WebSocket connections still open.
    websockets: Option<Arc<std::sync::atomic::AtomicUsize>>,
    until: std::time::SystemTime,
    token: tokio_util::sync::CancellationToken,
}

impl DrainingRoute {
    /// Lists `self` until its grace period ends.
    fn track(self, draining: &Arc<std::sync::Mutex<Vec<DrainingRoute>>>, grace: std::time::Duration) {
        let token = self.token.clone();
        draining.lock().expect("draining lock is never poisoned").push(self);
        let draining = draining.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            token.cancel();
            draining
                .lock()
                .expect("draining lock is never poisoned")
                .retain(|d| !d.token.is_cancelled());
        });
    }
}

impl Registry {
    /// Removed routes whose connections still drain (`GET /api/processes`).
    pub(crate) fn draining_routes(&self) -> serde_json::Value {
        self.draining
            .lock()
            .expect("draining lock is never poisoned")
            .iter()
            .map(|d| {
                let mut entry = d.what.clone();
                if let Some(websockets) = &d.websockets {
                    entry["websockets"] = websockets.load(std::sync::atomic::Ordering::Relaxed).into();
                }
                entry["closes_at"] = humantime::format_rfc3339_millis(d.until).to_string().into();
                entry
            })
            .collect()
    }

    /// An empty registry whose Redis stores use the cluster's `link`.
    pub(crate) fn new(cluster_link: crate::cluster::LinkSlot) -> Self {
        Self {
            cluster_link,
            ..Self::default()
        }
    }

    /// Builds a snapshot of `config`, reusing state for names seen before and
    /// forgetting state no longer referenced.
    pub fn build(&mut self, config: Arc<Config>, version: u64, discovery: &Discovery, metrics: &Metrics) -> Snapshot {
        let now = Instant::now();
        let mut endpoints_in_use = HashMap::new();
        let mut clients_in_use = HashMap::new();
        let mut cursors_in_use = HashMap::new();
        let mut health_in_use = HashMap::new();
        let mut budgets_in_use = HashMap::new();
        let mut breakers_in_use = HashMap::new();
        let mut endpoint_breakers_in_use = HashMap::new();
        let mut limits_in_use = HashMap::new();
        let mut clusters = HashMap::new();
        for cluster in &config.clusters {
            let settings = PoolSettings::of(cluster);
            let client = self.clients.get(&settings).cloned().unwrap_or_else(|| settings.build());
            clients_in_use.insert(settings, client.clone());
            let discovered = discovery.endpoints(cluster);
            let listed = discovered.as_deref().unwrap_or(&cluster.endpoints);
            let mut endpoints = Vec::with_capacity(listed.len());
            let mut authorities = Vec::with_capacity(listed.len());
            for ep in listed {
                let key = (cluster.name.clone(), ep.address.clone());
                let state = self.endpoints.get(&key).cloned().unwrap_or_else(|| {
                    let state = EndpointState::new(ep.address.clone(), ep.weight);
                    // An endpoint a reload adds joins gently; the first
                    // configuration's endpoints start at full share.
                    if self.built {
                        state.start_ramp(now);
                    }
                    Arc::new(state)
                });
                state.set_weight(ep.weight);
                // Health comes from active checks only: without them, an
                // endpoint a removed check had marked down is back in.
                if cluster.health_check.is_none() {
                    state.set_healthy(true, now);
                }
                endpoints_in_use.insert(key, state.clone());
                endpoints.push(state);
                authorities.push(
                    ep.address
                        .parse()
                        .expect("validated endpoint address is a valid authority"),
                );
            }
            let cursor = self.cursors.get(&cluster.name).cloned().unwrap_or_default();
            cursors_in_use.insert(cluster.name.clone(), cursor.clone());
            let options = Options {
                slow_start: cluster.slow_start,
            };
            let balancer = switchyard_balance::build(algorithm(cluster.balancer), &endpoints, &options, cursor);
            let health = self.health.get(&cluster.name).cloned().unwrap_or_default();
            health.set_endpoints(endpoints.clone());
            health_in_use.insert(cluster.name.clone(), health.clone());
            let outlier = cluster.outlier_detection.map(|o| OutlierPolicy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection,
                max_ejection: o.max_ejection,
                max_ejected_percent: o.max_ejected_percent,
            });
            let budget_settings = RetryBudgetSettings {
                ratio: cluster.retry_budget.ratio,
                min_per_second: cluster.retry_budget.min_per_second,
                window: cluster.retry_budget.window,
            };
            let budget = reuse(&self.budgets, &cluster.name, |b| *b.settings() == budget_settings)
                .unwrap_or_else(|| Arc::new(RetryBudget::new(budget_settings)));
            budgets_in_use.insert(cluster.name.clone(), budget.clone());
            let breaker_settings = cluster.circuit_breaker.map(|cb| BreakerSettings {
                failure_ratio: cb.failure_ratio,
                min_requests: cb.min_requests,
                window: cb.window,
                consecutive_failures: cb.consecutive_failures,
                open_for: cb.open_for,
                half_open_probes: cb.half_open_probes,
            });
            let per_endpoint = cluster.circuit_breaker.is_some_and(|cb| cb.per_endpoint);
            let new_breaker = |settings: BreakerSettings| Arc::new(Breaker::new(settings));
            let breaker = breaker_settings.filter(|_| !per_endpoint).map(|settings| {
                let breaker = reuse(&self.breakers, &cluster.name, |b| *b.settings() == settings)
                    .unwrap_or_else(|| new_breaker(settings));
                breakers_in_use.insert(cluster.name.clone(), breaker.clone());
                breaker
            });
            let endpoint_breakers = match breaker_settings.filter(|_| per_endpoint) {
                Some(settings) => endpoints
                    .iter()
                    .map(|e| {
                        let key = (cluster.name.clone(), e.address().to_owned());
                        let breaker = reuse(&self.endpoint_breakers, &key, |b| *b.settings() == settings)
                            .unwrap_or_else(|| new_breaker(settings));
                        endpoint_breakers_in_use.insert(key, breaker.clone());
                        breaker
                    })
                    .collect(),
                None => Vec::new(),
            };
            let limit = cluster.circuit_breaker.and_then(|cb| {
                let max = cb.max_concurrent?;
                let limit = reuse(&self.limits, &cluster.name, |l| l.settings() == (max, cb.max_pending))
                    .unwrap_or_else(|| Arc::new(ConcurrencyLimit::new(max, cb.max_pending)));
                limits_in_use.insert(cluster.name.clone(), limit.clone());
                Some(limit)
            });
            let by_id = match cluster.sticky {
                Some(_) => endpoints.iter().enumerate().map(|(i, e)| (e.id(), i)).collect(),
                None => HashMap::new(),
            };
            clusters.insert(
                cluster.name.clone(),
                Arc::new(ClusterRuntime {
                    config: cluster.clone(),
                    endpoints,
                    authorities,
                    balancer,
                    client,
                    health,
                    outlier,
                    by_id,
                    budget,
                    breaker,
                    endpoint_breakers,
                    limit,
                    metrics: metrics.cluster(&cluster.name),
                }),
            );
        }
        self.endpoints = endpoints_in_use;
        self.clients = clients_in_use;
        self.cursors = cursors_in_use;
        self.health = health_in_use;
        self.budgets = budgets_in_use;
        self.breakers = breakers_in_use;
        self.endpoint_breakers = endpoint_breakers_in_use;
        self.limits = limits_in_use;

        let mut route_budgets_in_use = HashMap::new();
        for route in &config.routes {
            let Some(ratio) = route.retry.as_ref().and_then(|r| r.budget) else {
                continue;
            };
            let wanted = RetryBudgetSettings {
                ratio,
                // A floor so that a quiet route can still retry its first failures.
                min_per_second: 1,
                window: switchyard_config::defaults::RETRY_BUDGET_WINDOW,
            };
            let budget = reuse(&self.route_budgets, &route.name, |b| *b.settings() == wanted)
                .unwrap_or_else(|| Arc::new(RetryBudget::new(wanted)));
            route_budgets_in_use.insert(route.name.clone(), budget);
        }
        self.route_budgets = route_budgets_in_use;
        // Routes a reload removes: their WebSocket tunnels keep flowing for
        // the grace period, then close.
        let mut drains_in_use = HashMap::new();
        for route in &config.routes {
            let token = self.route_drains.remove(&route.name).unwrap_or_default();
            drains_in_use.insert(route.name.clone(), token);
        }
        let grace = config.runtime.removed_route_grace;
        for (route, token) in std::mem::replace(&mut self.route_drains, drains_in_use) {
            let websockets = self.websockets.get(&route).cloned().unwrap_or_default();
            let open = websockets.load(std::sync::atomic::Ordering::Relaxed);
            if open > 0 {
                tracing::info!(%route, open, grace = ?grace, "route removed: its WebSocket connections drain for the grace period, then close");
            }
            DrainingRoute {
                what: serde_json::json!({ "route": route }),
                websockets: Some(websockets),
                until: std::time::SystemTime::now() + grace,
                token,
            }
            .track(&self.draining, grace);
        }
        self.websockets = config
            .routes
            .iter()
            .map(|route| {
                let open = self.websockets.get(&route.name).cloned().unwrap_or_default();
                (route.name.clone(), open)
            })
            .collect();

        self.redis = match (&config.cluster_mode, self.redis.take()) {
            (Some(mode), Some((kept, store))) if kept == *mode => Some((kept, store)),
            (Some(mode), _) => Some((mode.clone(), RedisStore::new(mode, self.cluster_link.clone()))),
            (None, _) => None,
        };
        // Idempotency keys: in the cluster's Redis in cluster mode, else here.
        let mut idempotency_in_use = HashMap::new();
        let mut shared_idempotency_in_use = HashMap::new();
        for route in &config.routes {
            let Some(settings) = route.idempotency else { continue };
            if let Some((_, redis)) = &self.redis {
                let same = |s: &SharedIdempotency| s.is(redis, settings.ttl, route.timeout, settings.on_redis_error);
                let store = reuse(&self.shared_idempotency, &route.name, same).unwrap_or_else(|| {
                    Arc::new(SharedIdempotency::new(
                        redis.clone(),
                        settings.ttl,
                        route.timeout,
                        settings.on_redis_error,
                    ))
                });
                shared_idempotency_in_use.insert(route.name.clone(), store);
                continue;
            }
            let wanted = MemoryStoreSettings {
                ttl: settings.ttl,
                max_entries: settings.max_entries,
            };
            let store = reuse(&self.idempotency, &route.name, |s| *s.settings() == wanted)
                .unwrap_or_else(|| Arc::new(MemoryStore::new(wanted)));
            idempotency_in_use.insert(route.name.clone(), store);
        }
        self.idempotency = idempotency_in_use;
        self.shared_idempotency = shared_idempotency_in_use;
        let mut limiters_in_use = HashMap::new();
        for route in &config.routes {
            for (i, limit) in route.rate_limits.iter().enumerate() {
                let quota = Quota {
                    rate: limit.rate,
                    per: limit.per,
                    burst: limit.burst,
                };
                let key = (route.name.clone(), i);
                let limiter = reuse(&self.limiters, &key, |l| {
                    *l.quota() == quota && l.max_keys() == limit.max_keys
                })
                .unwrap_or_else(|| Arc::new(RateLimiter::new(quota, limit.max_keys)));
                limiters_in_use.insert(key, limiter);
            }
        }
        self.limiters = limiters_in_use;

        let mut auths_in_use = HashMap::new();
        for route in &config.routes {
            let Some(auth) = &route.auth else { continue };
            let runtime =
                reuse(&self.auths, &route.name, |a| a.config == *auth).unwrap_or_else(|| RouteAuth::new(auth));
            auths_in_use.insert(route.name.clone(), runtime);
        }
        self.auths = auths_in_use;
        self.built = true;

        let mut tls_in_use = HashMap::new();
        for listener in &config.listeners {
            let Some(tls) = &listener.tls else { continue };
            match server_config(tls) {
                Ok(server) => {
                    tls_in_use.insert(listener.name.clone(), Arc::new(server));
                }
                Err(error) => match self.tls.get(&listener.name) {
                    Some(previous) => {
                        tracing::error!(listener = %listener.name, %error, "TLS settings not reloaded: serving the previous certificates");
                        tls_in_use.insert(listener.name.clone(), previous.clone());
                    }
                    None => {
                        tracing::error!(listener = %listener.name, %error, "TLS settings cannot be loaded: the listener refuses connections")
                    }
                },
            }
        }
        self.tls = tls_in_use;
        let store = match self.store.take() {
            Some(store) if store.max_size() == config.cache.max_size => store,
            _ => crate::cache::ResponseStore::new(config.cache.max_size, metrics.cache_evictions()),
        };
        self.store = Some(store.clone());
        let mut hubs_in_use = HashMap::new();
        for route in &config.routes {
            let RouteAction::Hub(settings) = &route.action else {
                continue;
            };
            let clustered = config.cluster_mode.is_some();
            let hub = match self.hubs.get(&route.name) {
                Some(hub) => {
                    hub.update(settings);
                    hub.set_clustered(clustered);
                    hub.clone()
                }
                None => crate::hub::Hub::new(settings.clone(), metrics.hub(&route.name), clustered),
            };
            hubs_in_use.insert(route.name.clone(), hub);
        }
        self.hubs = hubs_in_use;

        let mut route_metrics_in_use = HashMap::with_capacity(config.routes.len() + 1);
        // Requests no route matched count under route "-".
        let unrouted = ("-".to_owned(), "-".to_owned());
        let handles = match self.route_metrics.remove(&unrouted) {
            Some(kept) => kept,
            None => Arc::new(metrics.route("-", "-")),
        };
        route_metrics_in_use.insert(unrouted.clone(), handles);
        for route in &config.routes {
            let cluster = match &route.action {
                RouteAction::Forward { cluster } => cluster.as_str(),
                _ => "-",
            };
            let mut keys = vec![(route.name.clone(), cluster.to_owned())];
            // An aggregate route's calls count as `{route}.{call}`.
            if let RouteAction::Aggregate(aggregate) = &route.action {
                keys.extend(aggregate.calls.iter().map(|call| {
                    (
                        crate::aggregate::call_route_name(&route.name, &call.name),
                        call.cluster.clone(),
                    )
                }));
            }
            for key in keys {
                let handles = match self.route_metrics.remove(&key) {
                    Some(kept) => kept,
                    None => Arc::new(metrics.route(&key.0, &key.1)),
                };
                route_metrics_in_use.insert(key, handles);
            }
        }
        self.route_metrics = route_metrics_in_use;
        // Aggregate routes' call entries, once per route (not per listener).
        let aggregates: HashMap<&str, Arc<[RouteEntry]>> = config
            .routes
            .iter()
            .filter_map(|route| match &route.action {
                RouteAction::Aggregate(aggregate) => Some((
                    route.name.as_str(),
                    crate::aggregate::call_entries(route, aggregate, &clusters, &self.route_metrics).into(),
                )),
                _ => None,
            })
            .collect();

        // tcp listeners' drain signals: kept while the listener still sends
        // connections to the cluster, else fired after the grace period.
        let mut l4_drains_in_use = HashMap::new();
        for listener in config
            .listeners
            .iter()
            .filter(|l| l.protocol == switchyard_config::ListenerProtocol::Tcp)
        {
            let clusters = listener
                .cluster
                .iter()
                .chain(listener.sni_routes.iter().map(|r| &r.cluster));
            for cluster in clusters {
                let key = (listener.name.clone(), cluster.clone());
                let token = self.l4_drains.remove(&key).unwrap_or_default();
                l4_drains_in_use.insert(key, token);
            }
        }
        for ((listener, cluster), token) in std::mem::replace(&mut self.l4_drains, l4_drains_in_use) {
            tracing::info!(%listener, %cluster, grace = ?grace, "tcp listener no longer sends connections to this cluster: its open connections drain for the grace period, then close");
            DrainingRoute {
                what: serde_json::json!({ "listener": listener, "cluster": cluster }),
                websockets: None,
                until: std::time::SystemTime::now() + grace,
                token,
            }
            .track(&self.draining, grace);
        }

        let listeners = config
            .listeners
            .iter()
            .map(|listener| {
                let mut entries = Vec::with_capacity(if listener.protocol.is_http() {
                    config.routes.len()
                } else {
                    0
                });
                let built = config
                    .routes
                    .iter()
                    .filter(|r| listener.protocol.is_http() && r.listener.as_ref().is_none_or(|l| *l == listener.name))
                    .map(|route| RouteEntry {
                        route: route.clone(),
                        cluster: match &route.action {
                            RouteAction::Forward { cluster } => clusters.get(cluster).cloned(),
                            _ => None,
                        },
                        idempotency: match self.shared_idempotency.get(&route.name) {
                            Some(shared) => Some(shared.clone() as Arc<dyn IdempotencyStore>),
                            None => self
                                .idempotency
                                .get(&route.name)
                                .map(|store| store.clone() as Arc<dyn IdempotencyStore>),
                        },
                        fault: route.fault.as_ref().map(fault_settings),
                        budget: self.route_budgets.get(&route.name).cloned(),
                        metrics: self.route_metrics[&(
                            route.name.clone(),
                            match &route.action {
                                RouteAction::Forward { cluster } => cluster.clone(),
                                _ => "-".to_owned(),
                            },
                        )]
                            .clone(),
                        ip_filter: route.ip_filter.as_ref().map(ip_filter),
                        cors: route.cors.as_ref().map(cors_policy),
                        auth: self.auths.get(&route.name).cloned(),
                        websockets: self.websockets[&route.name].clone(),
                        files: matches!(route.action, RouteAction::Static(_))
                            .then(|| Arc::new(crate::static_files::FileCache::new())),
                        hub: self.hubs.get(&route.name).cloned(),
                        drain: self.route_drains[&route.name].clone(),
                        aggregate: aggregates.get(route.name.as_str()).cloned(),
                        cache: route.cache.as_ref().map(|settings| crate::cache::RouteCache {
                            settings: settings.clone(),
                            store: store.clone(),
                            counters: metrics.cache(&route.name),
                        }),
                        limits: route
                            .rate_limits
                            .iter()
                            .enumerate()
                            .map(|(i, config)| {
                                let limiter = self.limiters[&(route.name.clone(), i)].clone();
                                let global = config.global.and_then(|on_error| {
                                    let (_, store) = self.redis.as_ref()?;
                                    Some(GlobalBucket::new(
                                        store.clone(),
                                        &route.name,
                                        i,
                                        *limiter.quota(),
                                        on_error,
                                    ))
                                });
                                Limit {
                                    config: config.clone(),
                                    limiter,
                                    global,
                                }
                            })
                            .collect(),
                    });
                entries.extend(built);
                let runtime = ListenerRuntime {
                    config: listener.clone(),
                    metrics: metrics.listener(&listener.name),
                    tls: self
                        .tls
                        .get(&listener.name)
                        .cloned()
                        .map(tokio_rustls::TlsAcceptor::from),
                    ip_filter: listener.ip_filter.as_ref().map(ip_filter),
                    router: Router::new(entries),
                    http: Arc::new(http_builder(listener)),
                    drains: self
                        .l4_drains
                        .iter()
                        .filter(|((name, _), _)| *name == listener.name)
                        .map(|((_, cluster), token)| (cluster.clone(), token.clone()))
                        .collect(),
                };
                (listener.name.clone(), runtime)
            })
            .collect();
        self.tracer = match (&config.tracing, self.tracer.take()) {
            (Some(wanted), Some(kept)) if kept.settings == *wanted => Some(kept),
            (Some(wanted), _) => match Tracer::start(wanted.clone(), metrics.trace()) {
                Ok(tracer) => Some(tracer),
                Err(error) => {
                    tracing::error!(%error, "cannot start span export: no spans are recorded");
                    None
                }
            },
            (None, _) => None,
        };
        Snapshot {
            tracer: self.tracer.clone(),
            cache: store,
            config,
            version,
            unrouted: self.route_metrics[&unrouted].clone(),
            listeners,
            clusters,
        }
    }
}

/// The state kept under `key` if `same` says its settings still hold.
fn reuse<K, T>(kept: &HashMap<K, Arc<T>>, key: &K, same: impl Fn(&T) -> bool) -> Option<Arc<T>>
where
    K: std::hash::Hash + Eq,
{
    kept.get(key).filter(|t| same(t)).cloned()
}

/// Loads an https listener's certificates and builds its rustls settings.
fn server_config(tls: &switchyard_config::ListenerTls) -> Result<rustls::ServerConfig, String> {
    let certs = tls
        .certificates
        .iter()
        .map(|(cert, key)| switchyard_security::tls::load_cert(cert, key))
        .collect::<Result<Vec<_>, _>>()?;
    let client_auth = match &tls.client_ca {
        Some(ca) => switchyard_security::tls::ClientAuth::Verify {
            roots: Arc::new(switchyard_security::tls::load_roots(ca)?),
            required: tls.client_auth_required,
        },
        None => switchyard_security::tls::ClientAuth::None,
    };
    switchyard_security::tls::server_config(&certs, &client_auth)
}

/// The security crate's form of a route's `cors`.
fn cors_policy(cors: &switchyard_config::Cors) -> CorsPolicy {
    CorsPolicy {
        origins: match &cors.origins {
            None => Origins::Any,
            Some(list) => Origins::List(list.clone()),
        },
        methods: cors.methods.clone(),
        headers: cors.headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        credentials: cors.credentials,
        max_age: cors.max_age,
    }
}

/// The security crate's form of an `ip_filter`.
fn ip_filter(filter: &switchyard_config::IpFilter) -> IpFilter {
    IpFilter {
        allow: filter.allow.clone(),
        deny: filter.deny.clone(),
    }
}

/// The resilience crate's form of a route's `fault`.
fn fault_settings(fault: &switchyard_config::Fault) -> FaultSettings {
    FaultSettings {
        delay: fault.delay.as_ref().map(|d| DelayFault {
            duration: d.duration,
            percent: d.percent,
            header: d.header.clone(),
        }),
        abort: fault.abort.as_ref().map(|a| AbortFault {
            status: a.status,
            percent: a.percent,
            header: a.header.clone(),
        }),
    }
}

/// The balancer crate's name for a configured algorithm.
fn algorithm(kind: BalancerKind) -> Algorithm {
    match kind {
        BalancerKind::RoundRobin => Algorithm::RoundRobin,
        BalancerKind::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        BalancerKind::LeastConnections => Algorithm::LeastConnections,
        BalancerKind::LeastResponseTime => Algorithm::LeastResponseTime,
        BalancerKind::PowerOfTwo => Algorithm::PowerOfTwo,
        BalancerKind::Random => Algorithm::Random,
        BalancerKind::IpHash => Algorithm::IpHash,
        BalancerKind::ConsistentHash => Algorithm::ConsistentHash,
    }
}

/// hyper's server settings for one listener: HTTP/1.1 and h2c (prior knowledge).
fn http_builder(listener: &Listener) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper arms this when it starts waiting for a request head, including
        // between keep-alive requests: it bounds slowloris clients and idle
        // HTTP/1 connections alike.
        .header_read_timeout(listener.header_read_timeout)
        .max_buf_size(listener.max_header_size)
        .max_headers(listener.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(listener.max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): a client that opens and cancels
        // streams faster than they can be served is cut off.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(u32::try_from(listener.max_header_size).unwrap_or(u32::MAX))
        // WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    builder
}
