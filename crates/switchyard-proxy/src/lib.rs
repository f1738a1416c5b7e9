//! Switchyard's data plane: listeners, the HTTP request pipeline, routing and
//! upstream pools.
//!
//! [`Gateway`] owns it all: it binds the configured listeners, serves requests
//! through [`pipeline::handle`] on the current [`snapshot::Snapshot`], swaps in a
//! new snapshot on [`Gateway::apply`], and drains on [`Gateway::shutdown`].

#![forbid(unsafe_code)]

pub mod access_log;
mod aggregate;
mod auth;
pub mod body;
pub mod cache;
mod cluster;
mod compress;
mod conditional;
pub mod discovery;
mod drain;
pub mod error;
mod filters;
mod forward;
mod global_limit;
pub mod grpc;
pub mod handover;
pub mod headers;
mod health;
pub mod hub;
mod l4;
pub mod metrics;
pub mod pipeline;
mod proxy_protocol;
pub mod request_id;
pub mod router;
mod server;
pub mod snapshot;
pub mod static_files;
pub mod trace;
pub mod transform;
mod tunnel;
pub mod upstream;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use switchyard_config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handover::Inherited;
use crate::health::HealthCheckers;
use crate::server::{accept_loop, bind, BoundListener, ListenOn, Socket};
use crate::snapshot::{Registry, Snapshot};

/// State shared by every connection and request of a gateway.
#[derive(Debug)]
pub struct Shared {
    /// The current snapshot; each request loads it once and keeps it.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Long-lived state by name; locked only while a snapshot is built.
    registry: Mutex<Registry>,
    /// Active health check tasks, matched to each new snapshot.
    checkers: Mutex<HealthCheckers>,
    /// Endpoints found at run time (service registry, DNS).
    pub(crate) discovery: Arc<discovery::Discovery>,
    /// Counters and histograms for `/metrics`; they outlive reloads.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Bound listeners by name. The async lock also serialises reloads.
    listeners: tokio::sync::Mutex<HashMap<String, BoundListener>>,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Fires when the gateway starts draining.
    pub(crate) drain: CancellationToken,
    draining: AtomicBool,
    /// Set when a successor process took the listening sockets over (see
    /// [`Gateway::retire`]), before the listeners stop: their connections
    /// then retire rather than drain, and HTTP/1 responses close theirs.
    pub(crate) retiring: AtomicBool,
    /// Sockets a predecessor handed over, until listeners claim them.
    inherited: Mutex<Inherited>,
    /// The process this one took the sockets over from, on an upgrade.
    predecessor: Mutex<Option<handover::Predecessor>>,
    /// This node in cluster mode (`[cluster]`): membership and the bus.
    pub(crate) cluster: cluster::ClusterState,
}

/// Why a configuration could not be applied. The running one stays.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot listen on {address} for listener \"{name}\": {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the configuration changed meanwhile: expected version {expected}, running version {running}")]
    VersionConflict { expected: u64, running: u64 },
    #[error("the configuration cannot be shared with the other nodes: {0}")]
    ClusterUnavailable(String),
    #[error(
        "the shared configuration is not valid on this node (with its own admin, cluster and listener addresses): {0}"
    )]
    NotValidHere(String),
}

impl Shared {
    /// Builds the snapshot of `config` (reusing long-lived state), makes it
    /// the one new requests see, and starts or stops health checkers to
    /// match. Callers hold the `listeners` lock, so installs never interleave.
    fn install(&self, config: Arc<Config>, version: u64) {
        let started = std::time::Instant::now();
        let snapshot = self.registry.lock().expect("registry lock is never poisoned").build(
            config,
            version,
            &self.discovery,
            &self.metrics,
        );
        let snapshot = Arc::new(snapshot);
        let built = started.elapsed();
        // Freed here unless a request in flight still holds it.
        drop(self.snapshot.swap(snapshot.clone()));
        tracing::debug!(
            version,
            built_ms = built.as_secs_f64() * 1e3,
            swapped_ms = started.elapsed().as_secs_f64() * 1e3,
            "snapshot built and swapped in"
        );
        self.checkers
            .lock()
            .expect("checkers lock is never poisoned")
            .reconcile(&snapshot, &self.drain);
    }
}

impl Shared {
    /// [`Shared::install`] on the blocking pool: building the snapshot of a
    /// large configuration takes tens of milliseconds, which would stall the
    /// requests queued behind it on a worker thread.
    async fn install_off_thread(self: &Arc<Self>, config: Arc<Config>, version: u64) {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || shared.install(config, version))
            .await
            .expect("building a snapshot does not panic");
    }
}

/// How long a burst of discovery changes (instances registering together)
/// is gathered into one new snapshot.
const DISCOVERY_SETTLE: Duration = Duration::from_millis(50);
/// How often lapsed registry instances are swept out.
const REGISTRY_SWEEP: Duration = Duration::from_millis(250);

/// Rebuilds the snapshot, same configuration and version, each time a
/// discovered endpoint set changes; sweeps out lapsed registry instances.
/// Runs until the gateway drains.
async fn follow_discovery(shared: Arc<Shared>) {
    let (mut registry, mut dns) = shared.discovery.subscribe();
    let mut sweep = tokio::time::interval(REGISTRY_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.drain.cancelled() => return,
            _ = sweep.tick() => {
                shared.discovery.registry.expire(std::time::Instant::now());
                continue;
            }
            changed = registry.changed() => if changed.is_err() { return },
            changed = dns.changed() => if changed.is_err() { return },
        }
        tokio::time::sleep(DISCOVERY_SETTLE).await;
        registry.mark_unchanged();
        dns.mark_unchanged();
        let _serialised = shared.listeners.lock().await;
        let running = shared.snapshot.load_full();
        shared.install_off_thread(running.config.clone(), running.version).await;
        tracing::debug!("discovered endpoints changed: snapshot rebuilt");
    }
}

/// A running gateway. Cheap to clone; all clones control the same gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Binds the listeners of `config` and starts serving.
    pub async fn start(config: Config) -> Result<Gateway, ApplyError> {
        Gateway::start_with(config, Inherited::default()).await
    }

    async fn start_with(config: Config, inherited: Inherited) -> Result<Gateway, ApplyError> {
        let link = cluster::LinkSlot::default();
        let mut registry = Registry::new(link.clone());
        let metrics = Arc::new(metrics::Metrics::new());
        let discovery = Arc::new(discovery::Discovery::default());
        // A placeholder until `apply` below builds version 1.
        let snapshot = registry.build(Arc::new(config.clone()), 0, &discovery, &metrics);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry: Mutex::new(registry),
            discovery,
            checkers: Mutex::new(HealthCheckers::default()),
            metrics,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            drain: CancellationToken::new(),
            draining: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            inherited: Mutex::new(inherited),
            predecessor: Mutex::new(None),
            cluster: cluster::ClusterState::new(link),
        });
        let gateway = Gateway { shared };
        gateway.shared.cluster.set_own(&config.raw);
        gateway.apply_versioned(config, None, "start").await?;
        tokio::spawn(follow_discovery(gateway.shared.clone()));
        tokio::spawn(cluster::follow(gateway.shared.clone()));
        if let Some(mode) = &gateway.shared.snapshot.load().config.cluster_mode {
            // Give the link a moment, so that the first requests find Redis
            // rather than the failure policies; serve alone if it is away.
            let deadline = tokio::time::Instant::now() + mode.redis_timeout * 4;
            while gateway.shared.cluster.link().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(gateway)
    }

    /// Applies a validated configuration: binds any new listener addresses,
    /// swaps the snapshot (new requests use it; requests in flight finish on
    /// theirs), then stops listeners that are gone. On error nothing changes.
    pub async fn apply(&self, config: Config) -> Result<u64, ApplyError> {
        self.apply_versioned(config, None, "reload").await
    }

    /// Applies the node's own file again (`trigger`: SIGHUP, a file
    /// change). In cluster mode the file also says where this node listens
    /// under every later shared version.
    pub async fn apply_file(&self, config: Config, trigger: &str) -> Result<u64, ApplyError> {
        let raw = config.raw.clone();
        let applied = self.apply_versioned(config, None, trigger).await;
        if applied.is_ok() {
            self.shared.cluster.set_own(&raw);
        }
        applied
    }

    /// [`Gateway::apply`] that refuses unless the running configuration is
    /// still `expected` (compare-and-set), so that two writers cannot
    /// silently undo each other. Returns the new version; `source` names the
    /// trigger in the reload log.
    pub async fn apply_versioned(
        &self,
        config: Config,
        expected: Option<u64>,
        source: &str,
    ) -> Result<u64, ApplyError> {
        let shared = &self.shared;
        let mut bound = shared.listeners.lock().await;
        if shared.draining.load(Ordering::SeqCst) {
            return Err(ApplyError::ShuttingDown);
        }
        let running = shared.snapshot.load().version;
        if let Some(expected) = expected.filter(|e| *e != running) {
            shared
                .metrics
                .reload(false, running, format!("{source}: version conflict"));
            return Err(ApplyError::VersionConflict { expected, running });
        }
        let version = running + 1;
        let wanted: HashMap<String, ListenOn> = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), ListenOn::of(l)))
            .collect();
        let unchanged = |name: &str, b: &BoundListener| wanted.get(name) == Some(&b.configured);

        // A listener renamed or moved onto an address another one holds: free
        // the address first (a brief gap for that one address only).
        let to_bind: Vec<(String, ListenOn)> = wanted
            .iter()
            .filter(|(name, _)| !bound.get(name.as_str()).is_some_and(|b| unchanged(name, b)))
            .map(|(n, a)| (n.clone(), *a))
            .collect();
        for (_, address) in &to_bind {
            let holder = bound
                .iter()
                .find(|(name, b)| b.configured == *address && address.address.port() != 0 && !unchanged(name, b))
                .map(|(name, _)| name.clone());
            if let Some(name) = holder {
                let old = bound.remove(&name).expect("holder was just found");
                old.stop.cancel();
                let _ = old.task.await;
            }
        }

        let mut fresh = Vec::new();
        for (name, address) in to_bind {
            let handed = shared
                .inherited
                .lock()
                .expect("inherited sockets lock is never poisoned")
                .take(&name, address);
            let socket = match handed {
                Some(handed) => handed.adopt(),
                None => bind(address),
            };
            // A second descriptor, kept to hand the socket to a successor.
            let socket = socket.and_then(|socket| Ok((socket.duplicate()?, socket)));
            match socket {
                Ok((fd, socket)) => fresh.push((name, address, socket, fd)),
                Err(error) => {
                    shared
                        .metrics
                        .reload(false, running, format!("{source}: cannot listen on {address}: {error}"));
                    return Err(ApplyError::Bind {
                        name,
                        address: address.address,
                        source: error,
                    });
                }
            }
        }

        shared.discovery.prepare(&config, &shared.drain).await;
        shared.metrics.reload(true, version, source.to_owned());
        shared.install_off_thread(Arc::new(config), version).await;

        let stale: Vec<String> = bound
            .iter()
            .filter(|(name, b)| !unchanged(name, b))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(old) = bound.remove(&name) {
                old.stop.cancel();
            }
        }
        for (name, configured, socket, fd) in fresh {
            let local = socket.local_addr().unwrap_or(configured.address);
            // A child of the drain token: one token per connection to watch.
            let stop = shared.drain.child_token();
            let listener = Arc::from(name.as_str());
            let task = match socket {
                Socket::Tcp(socket) => tokio::spawn(accept_loop(shared.clone(), listener, socket, stop.clone())),
                Socket::Udp(socket) => tokio::spawn(l4::udp::serve(shared.clone(), listener, socket, stop.clone())),
            };
            tracing::info!(listener = %name, address = %local, "listening");
            bound.insert(
                name,
                BoundListener {
                    configured,
                    local,
                    stop,
                    task,
                    fd,
                },
            );
        }
        Ok(version)
    }

    /// The configuration currently serving new requests.
    pub fn config(&self) -> Arc<Config> {
        self.shared.snapshot.load().config.clone()
    }

    /// The running configuration and its version (1 for the first applied,
    /// one more for each successful apply), read together.
    pub fn versioned_config(&self) -> (Arc<Config>, u64) {
        let snapshot = self.shared.snapshot.load();
        // In cluster mode, the shared version (what If-Match names).
        let version = match (&snapshot.config.cluster_mode, self.shared.cluster.config_version()) {
            (Some(_), shared) if shared > 0 => shared,
            _ => snapshot.version,
        };
        (snapshot.config.clone(), version)
    }

    /// Applies `config` for the admin API (`PUT /api/config`): on a single
    /// node with the node's own compare-and-set (`expected`); in cluster
    /// mode, stored in Redis under compare-and-set on the shared version
    /// (`expected`, else the version this node runs), applied here, and
    /// announced to the other nodes. Returns the version clients see.
    pub async fn put_config(&self, config: Config, expected: Option<u64>) -> Result<u64, ApplyError> {
        if self.shared.snapshot.load().config.cluster_mode.is_none() {
            return self.apply_versioned(config, expected, "admin API").await;
        }
        let cluster = &self.shared.cluster;
        let _writes = cluster.config_writes.lock().await;
        let expected = expected.unwrap_or_else(|| cluster.config_version());
        let document = serde_json::to_string(&config.raw).expect("a configuration serialises");
        match cluster.store_config(expected, &document).await {
            Err(why) => Err(ApplyError::ClusterUnavailable(why)),
            Ok(cluster::Stored::Conflict { current }) => Err(ApplyError::VersionConflict {
                expected,
                running: current,
            }),
            Ok(cluster::Stored::Version(version)) => {
                // Stored: it is the cluster's now, even if it cannot run here.
                // This node runs it with its own admin, cluster and listener
                // addresses, as every other node does.
                let local = cluster::localize(&document, &cluster.own())
                    .and_then(|text| switchyard_config::parse_json(text.as_bytes()).map_err(|d| d.to_string()));
                let applied = match local {
                    Ok(local) => self.apply_versioned(local, None, "admin API (cluster)").await,
                    Err(why) => Err(ApplyError::NotValidHere(why)),
                };
                // Whether or not it runs here, the others are told.
                cluster.announce_config(version, applied.is_ok()).await;
                applied.map(|_| version)
            }
        }
    }

    /// Figures for the dashboard: per-route counts and latency histograms,
    /// cluster state and recent reloads.
    pub fn dashboard_summary(&self) -> serde_json::Value {
        let snapshot = self.shared.snapshot.load();
        let mut summary = self.shared.metrics.summary();
        summary["version"] = snapshot.version.into();
        summary["clusters"] = self.cluster_status();
        let mut hubs = serde_json::Map::new();
        for listener in snapshot.listeners.values() {
            for entry in listener.router.routes() {
                if let Some(hub) = &entry.hub {
                    hubs.entry(entry.route.name.clone()).or_insert_with(|| hub.describe());
                }
            }
        }
        summary["hubs"] = hubs.into();
        summary["reloads"] = self
            .shared
            .metrics
            .recent_reloads()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "at": humantime::format_rfc3339_millis(r.at).to_string(),
                    "applied": r.applied,
                    "version": r.version,
                    "detail": r.detail,
                })
            })
            .collect();
        summary
    }

    /// The `/metrics` exposition text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(&self.shared.snapshot.load())
    }

    /// Counts a reload that was refused before it reached [`Gateway::apply`]
    /// (an invalid file or admin request), with why.
    pub fn count_rejected_reload(&self, detail: String) {
        let running = self.shared.snapshot.load().version;
        self.shared.metrics.reload(false, running, detail);
    }

    /// Every cluster with the live state of its endpoints (`GET /api/clusters`),
    /// sorted by name.
    pub fn cluster_status(&self) -> serde_json::Value {
        let snapshot = self.shared.snapshot.load();
        let mut clusters: Vec<_> = snapshot.clusters.values().collect();
        clusters.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        serde_json::Value::Array(clusters.iter().map(|c| c.status()).collect())
    }

    /// The bound address of each listener, by name.
    pub async fn listener_addresses(&self) -> HashMap<String, SocketAddr> {
        self.shared
            .listeners
            .lock()
            .await
            .iter()
            .map(|(n, b)| (n.clone(), b.local))
            .collect()
    }

    /// Removes the stored responses `purge` names (`POST /api/cache/purge`)
    /// here, and in cluster mode on every other node too. Returns how many
    /// went here, and whether the other nodes were told (or why not).
    pub async fn cache_purge(&self, purge: &cache::Purge) -> (u64, Option<Result<(), String>>) {
        let purged = self.shared.snapshot.load().cache.purge(purge);
        tracing::info!(
            purged,
            keys = purge.keys.len(),
            prefixes = purge.prefixes.len(),
            tags = purge.tags.len(),
            "response cache purged"
        );
        let clustered = self.shared.snapshot.load().config.cluster_mode.is_some();
        let broadcast = match clustered {
            true => Some(self.shared.cluster.broadcast_purge(purge).await),
            false => None,
        };
        if let Some(Err(error)) = &broadcast {
            tracing::warn!(%error, "cluster: the purge applied here only");
        }
        (purged, broadcast)
    }

    /// Records where the admin API listens (shown to the other nodes).
    pub fn set_admin_address(&self, address: SocketAddr) {
        self.shared.cluster.set_admin_address(address.to_string());
    }

    /// The nodes of the cluster (`GET /api/nodes`): this one, and in cluster
    /// mode every node whose heartbeat is current.
    pub async fn nodes(&self) -> serde_json::Value {
        let (_, version) = self.versioned_config();
        let this = serde_json::json!({
            "id": self.shared.cluster.node_id,
            "this": true,
            "version": version,
            "admin": self.shared.cluster.admin_address(),
            "draining": self.is_draining(),
            "started_ms": self.shared.cluster.started_ms(),
        });
        let clustered = self.shared.snapshot.load().config.cluster_mode.is_some();
        self.shared.cluster.nodes(this, clustered).await
    }

    /// What the response store holds (`GET /api/cache`).
    pub fn cache_stats(&self) -> serde_json::Value {
        let store = self.shared.snapshot.load().cache.clone();
        let stats = store.stats();
        serde_json::json!({
            "entries": stats.entries,
            "bytes": stats.bytes,
            "max_size": stats.max_size,
            "evictions": store.evictions(),
        })
    }

    /// The service registry (`/api/registry`).
    pub fn service_registry(&self) -> &discovery::ServiceRegistry {
        &self.shared.discovery.registry
    }

    /// The link to the cluster's Redis in cluster mode (`None` without
    /// cluster mode); refused while Redis cannot be reached.
    fn registry_link(&self) -> Result<Option<Arc<cluster::Link>>, discovery::RegistryError> {
        if self.shared.snapshot.load().config.cluster_mode.is_none() {
            return Ok(None);
        }
        match self.shared.cluster.link() {
            Some(link) => Ok(Some(link)),
            None => Err(discovery::RegistryError::Unavailable(
                "not connected to the cluster's Redis".into(),
            )),
        }
    }

    /// Registers an instance (`POST /api/registry/{service}`): here, or in
    /// cluster mode in Redis, for every node. Returns its description.
    pub async fn register(
        &self,
        service: &str,
        registration: discovery::Registration,
    ) -> Result<serde_json::Value, discovery::RegistryError> {
        use discovery::RegistryError::{Full, Unavailable};
        let registry = &self.shared.discovery.registry;
        let Some(link) = self.registry_link()? else {
            return registry.register(service, registration, std::time::Instant::now());
        };
        let (id, record) = registry.validate(service, registration, true)?;
        let _writes = self.shared.cluster.registry_writes.lock().await;
        match link.register(service, &id, &record).await.map_err(Unavailable)? {
            cluster::registry::Registered::Full => Err(Full(service.to_owned())),
            cluster::registry::Registered::Done(mirrored) => {
                let description = discovery::registry::describe_record(&id, &mirrored);
                registry.mirror_one(service, &id, mirrored);
                self.shared.cluster.announce(cluster::EventKind::Registry).await;
                Ok(description)
            }
        }
    }

    /// Pushes an instance's expiry one TTL ahead
    /// (`PUT /api/registry/{service}/{id}/heartbeat`).
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<serde_json::Value, discovery::RegistryError> {
        let registry = &self.shared.discovery.registry;
        let Some(link) = self.registry_link()? else {
            return registry.heartbeat(service, id, std::time::Instant::now());
        };
        let _writes = self.shared.cluster.registry_writes.lock().await;
        match link
            .heartbeat(service, id)
            .await
            .map_err(discovery::RegistryError::Unavailable)?
        {
            Some(mirrored) => {
                let description = discovery::registry::describe_record(id, &mirrored);
                // This node's copy knows the new expiry too (it matters if
                // cluster mode is turned off).
                registry.mirror_one(service, id, mirrored);
                Ok(description)
            }
            None => Err(discovery::RegistryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            }),
        }
    }

    /// Removes an instance (`DELETE /api/registry/{service}/{id}`).
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), discovery::RegistryError> {
        let registry = &self.shared.discovery.registry;
        let Some(link) = self.registry_link()? else {
            return registry.deregister(service, id);
        };
        let _writes = self.shared.cluster.registry_writes.lock().await;
        let removed = link
            .deregister(service, id)
            .await
            .map_err(discovery::RegistryError::Unavailable)?;
        // This node's copy follows at once; the others when told.
        let _ = registry.deregister(service, id);
        self.shared.cluster.announce(cluster::EventKind::Registry).await;
        match removed {
            true => Ok(()),
            false => Err(discovery::RegistryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            }),
        }
    }

    /// Every service and its instances (`GET /api/registry`): in cluster
    /// mode as Redis holds them, or this node's copy (`"shared": false`)
    /// while Redis cannot be reached.
    pub async fn registry_view(&self) -> serde_json::Value {
        let registry = &self.shared.discovery.registry;
        let local = |shared: Option<bool>| {
            let mut view = registry.describe_all(std::time::Instant::now());
            if let Some(shared) = shared {
                view["shared"] = serde_json::Value::Bool(shared);
            }
            view
        };
        let link = match self.registry_link() {
            Ok(None) => return local(None),
            Ok(Some(link)) => link,
            Err(_) => return local(Some(false)),
        };
        match link.read_registry().await {
            Ok(services) => {
                let mut names: Vec<&String> = services.keys().collect();
                names.sort();
                let described: serde_json::Map<String, serde_json::Value> = names
                    .into_iter()
                    .map(|name| {
                        let instances = services[name]
                            .iter()
                            .map(|(id, m)| discovery::registry::describe_record(id, m))
                            .collect();
                        (name.clone(), serde_json::Value::Array(instances))
                    })
                    .collect();
                serde_json::json!({"services": described, "shared": true})
            }
            Err(_) => local(Some(false)),
        }
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Stops accepting, asks every connection to finish its in-flight requests
    /// and close, and waits up to `timeout` for them. Returns whether all
    /// connections finished in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.shared.draining.store(true, Ordering::SeqCst);
        for (_, listener) in self.shared.listeners.lock().await.drain() {
            listener.stop.cancel();
        }
        self.shared.drain.cancel();
        self.shared.tracker.close();
        tokio::time::timeout(timeout, self.shared.tracker.wait()).await.is_ok()
    }
}
