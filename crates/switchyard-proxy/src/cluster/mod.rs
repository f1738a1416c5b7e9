//! Cluster mode (`[cluster] redis = ...`), first part: the nodes know each
//! other, and cache purges reach all of them.
//!
//! - Membership: every second each node writes `switchyard:node:{id}` (its
//!   config version, start time, admin address, whether it drains) with a
//!   5-second expiry; `GET /api/nodes` lists the keys present.
//! - The bus: nodes publish events on the Redis channel `switchyard:bus` and
//!   each node follows it on a connection of its own. A cache purge made on
//!   one node is applied there at once and published; the others apply it
//!   when it arrives.
//! - Without Redis (unreachable, or cluster mode off) a node keeps serving
//!   alone: purges apply locally and say the broadcast failed; membership and
//!   the bus come back by themselves (retried every second).
//!
//! - Hub fan-out: a hub route's publishes go to the Redis stream
//!   `switchyard:hub:{route}` (fields `topic`, `data`, `event`), and every
//!   node, the publishing one included, reads it and delivers each message
//!   with an id made from its stream id. So every node numbers a message
//!   alike, and a subscriber resumes on any node. A node that joins reads
//!   what the stream still holds into its histories. Without the link,
//!   publishes are refused (`503 cluster_unavailable`) rather than reaching
//!   some nodes only.
//!
//! - Shared configuration: `PUT /api/config` on any node stores the document
//!   in `switchyard:config` (`version`, `document`) with compare-and-set on
//!   the version, applies it, and announces it on the bus; every node applies
//!   a newer version when told, or within a second by polling. A node that
//!   joins applies the newest; the first node of a cluster stores its own.
//!   Without Redis a `PUT` is refused (`503 cluster_unavailable`): a change
//!   only one node had would drift silently.
//!
//! - The service registry: see [`registry`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use switchyard_config::ClusterMode;

use crate::cache::Purge;
use crate::global_limit::{manager_config, redacted};
use crate::Shared;

mod hub;
mod idempotency;
pub(crate) mod registry;

use hub::Readers;
pub(crate) use hub::StreamLink;
pub(crate) use idempotency::SharedIdempotency;

/// The channel every node follows.
const BUS: &str = "switchyard:bus";
/// The shared configuration: a hash of `version` and `document`.
const CONFIG_KEY: &str = "switchyard:config";
/// Stores ARGV[2] as version ARGV[1] + 1 if the stored version is ARGV[1].
/// Returns {1, new version} or {0, the stored version}.
static CONFIG_CAS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v} end
redis.call('HSET', KEYS[1], 'version', v + 1, 'document', ARGV[2])
return {1, v + 1}
"#,
    )
});
/// Stores ARGV[2] as version ARGV[1] unless a version as new is stored.
/// Returns 1 when stored.
static CONFIG_SEED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'document', ARGV[2])
return 1
"#,
    )
});
/// Node keys: `switchyard:node:{id}`.
const NODE_PREFIX: &str = "switchyard:node:";
const HEARTBEAT: Duration = Duration::from_secs(1);
const NODE_TTL: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_secs(1);

/// This node and its link to the others.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub(crate) node_id: String,
    started_ms: u64,
    /// The shared configuration version applied here (0: none yet).
    config_version: AtomicU64,
    /// A shared version that could not be applied here (not retried).
    failed_version: AtomicU64,
    /// The connection events and heartbeats go out on, while connected;
    /// global limits and idempotency keys use it too.
    link: LinkSlot,
    /// Where this node's admin API listens, once it does.
    admin: std::sync::OnceLock<String>,
    /// Why the last attempt to reach Redis failed (cleared on joining).
    last_error: std::sync::Mutex<Option<String>>,
    /// Held across a registry write and this node's copy of it, and across
    /// a read of the registry and its copy, so a read that began before a
    /// write never lands after it.
    pub(crate) registry_writes: tokio::sync::Mutex<()>,
    /// Held while a shared configuration is stored or applied here, so an
    /// older version never replaces a newer one.
    pub(crate) config_writes: tokio::sync::Mutex<()>,
    /// This node's own document (its file, as last loaded): where its
    /// listeners, admin API and cluster link are, whatever the shared
    /// configuration says.
    own: arc_swap::ArcSwap<switchyard_config::RawConfig>,
}

/// Where the link is kept while connected (shared with the global limits
/// and idempotency stores, which use its connection).
pub(crate) type LinkSlot = Arc<ArcSwapOption<Link>>;

pub(crate) struct Link {
    url: String,
    pub(crate) manager: ConnectionManager,
    timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &redacted(&self.url))
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Runs a script, waiting up to four Redis timeouts for its answer.
    async fn call<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T, String> {
        let mut manager = self.manager.clone();
        tokio::time::timeout(self.timeout * 4, invocation.invoke_async(&mut manager))
            .await
            .map_err(|_| "Redis did not answer".to_owned())?
            .map_err(|e| e.to_string())
    }
}

/// What nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    from: String,
    #[serde(flatten)]
    kind: EventKind,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum EventKind {
    Purge {
        purge: Purge,
    },
    Config {
        version: u64,
    },
    /// The registry changed: read it now rather than at the next tick.
    Registry,
}

/// What storing a configuration in the cluster came to.
pub(crate) enum Stored {
    /// Stored as this version.
    Version(u64),
    /// The cluster is at another version than expected.
    Conflict { current: u64 },
}

/// What a node says of itself in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct NodeRecord {
    id: String,
    version: u64,
    started_ms: u64,
    heartbeat_ms: u64,
    admin: Option<String>,
    draining: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ClusterState {
    pub(crate) fn new(link: LinkSlot) -> Self {
        Self {
            node_id: format!("{:016x}", fastrand::u64(..)),
            started_ms: now_ms(),
            config_version: AtomicU64::new(0),
            failed_version: AtomicU64::new(0),
            link,
            admin: std::sync::OnceLock::new(),
            last_error: std::sync::Mutex::new(None),
            registry_writes: tokio::sync::Mutex::new(()),
            config_writes: tokio::sync::Mutex::new(()),
            own: arc_swap::ArcSwap::from_pointee(switchyard_config::RawConfig::default()),
        }
    }

    /// Records where the admin API listens (the bound address, not the
    /// configured one, which may name port 0).
    pub(crate) fn set_admin_address(&self, address: String) {
        let _ = self.admin.set(address);
    }

    /// Where this node's admin API listens.
    pub(crate) fn admin_address(&self) -> Option<String> {
        self.admin.get().cloned()
    }

    /// Records this node's own document (at start and on file reloads).
    pub(crate) fn set_own(&self, raw: &switchyard_config::RawConfig) {
        self.own.store(Arc::new(raw.clone()));
    }

    /// This node's own document.
    pub(crate) fn own(&self) -> Arc<switchyard_config::RawConfig> {
        self.own.load_full()
    }

    /// When this node started (wall-clock milliseconds).
    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The shared configuration version applied here (0: none).
    pub(crate) fn config_version(&self) -> u64 {
        self.config_version.load(Ordering::Acquire)
    }

    /// Stores `document` as the cluster's next configuration if the cluster
    /// is at `expected`; `Err` says why Redis could not be asked.
    pub(crate) async fn store_config(&self, expected: u64, document: &str) -> Result<Stored, String> {
        let Some(link) = self.link.load_full() else {
            return Err("not connected to the cluster's Redis".into());
        };
        let mut manager = link.manager.clone();
        let mut invocation = CONFIG_CAS.key(CONFIG_KEY);
        invocation.arg(expected).arg(document);
        let answer: (u8, u64) = tokio::time::timeout(link.timeout * 4, invocation.invoke_async(&mut manager))
            .await
            .map_err(|_| "Redis did not answer".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(match answer {
            (1, version) => Stored::Version(version),
            (_, current) => Stored::Conflict { current },
        })
    }

    /// Records that shared version `version` runs here (or could not:
    /// it is not tried again), and tells the others.
    pub(crate) async fn announce_config(&self, version: u64, runs_here: bool) {
        if runs_here {
            self.config_version.fetch_max(version, Ordering::AcqRel);
        } else {
            self.failed_version.store(version, Ordering::Release);
        }
        self.announce(EventKind::Config { version }).await;
    }

    /// Tells the other nodes, if connected (they catch up by polling if not).
    pub(crate) async fn announce(&self, kind: EventKind) {
        let Some(link) = self.link.load_full() else { return };
        let event = Event {
            from: self.node_id.clone(),
            kind,
        };
        let payload = serde_json::to_string(&event).expect("an event serialises");
        let mut manager = link.manager.clone();
        let _ = tokio::time::timeout(link.timeout, manager.publish::<_, _, i64>(BUS, payload)).await;
    }

    /// The link to Redis while connected.
    pub(crate) fn link(&self) -> Option<Arc<Link>> {
        self.link.load_full()
    }

    /// Publishes `purge` to the other nodes; `Err` says why it could not.
    pub(crate) async fn broadcast_purge(&self, purge: &Purge) -> Result<(), String> {
        let Some(link) = self.link.load_full() else {
            return Err("not connected to the cluster's Redis".into());
        };
        let event = Event {
            from: self.node_id.clone(),
            kind: EventKind::Purge { purge: purge.clone() },
        };
        let payload = serde_json::to_string(&event).expect("an event serialises");
        let mut manager = link.manager.clone();
        match tokio::time::timeout(link.timeout, manager.publish::<_, _, i64>(BUS, payload)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("Redis did not answer within {:?}", link.timeout)),
        }
    }

    fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("last error lock is never poisoned") = error;
    }

    /// Every node whose heartbeat is current (this one first), or only this
    /// one without cluster mode (`clustered` false) or Redis.
    pub(crate) async fn nodes(&self, this: serde_json::Value, clustered: bool) -> serde_json::Value {
        let mut nodes = vec![this];
        let Some(link) = self.link.load_full() else {
            if !clustered {
                return serde_json::json!({"cluster": false, "nodes": nodes});
            }
            let error = self
                .last_error
                .lock()
                .expect("last error lock is never poisoned")
                .clone()
                .unwrap_or_else(|| "connecting".into());
            return serde_json::json!({"cluster": true, "error": format!("not connected: {error}"), "nodes": nodes});
        };
        let mut manager = link.manager.clone();
        let listed = tokio::time::timeout(link.timeout * 4, async {
            // SCAN, not KEYS: a shared Redis is not blocked while it looks.
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{NODE_PREFIX}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut manager)
                    .await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            keys.sort_unstable();
            keys.dedup();
            if keys.is_empty() {
                return Ok::<_, redis::RedisError>(Vec::new());
            }
            let values: Vec<Option<String>> = manager.mget(&keys).await?;
            Ok(values.into_iter().flatten().collect())
        })
        .await;
        let now = now_ms();
        match listed {
            Ok(Ok(values)) => {
                for value in values {
                    let Ok(record) = serde_json::from_str::<NodeRecord>(&value) else {
                        continue;
                    };
                    if record.id == self.node_id {
                        continue;
                    }
                    nodes.push(serde_json::json!({
                        "id": record.id,
                        "this": false,
                        "version": record.version,
                        "started_ms": record.started_ms,
                        "heartbeat_age_ms": now.saturating_sub(record.heartbeat_ms),
                        "admin": record.admin,
                        "draining": record.draining,
                    }));
                }
                serde_json::json!({"cluster": true, "redis": redacted(&link.url), "nodes": nodes})
            }
            Ok(Err(error)) => serde_json::json!({"cluster": true, "error": error.to_string(), "nodes": nodes}),
            Err(_) => serde_json::json!({"cluster": true, "error": "Redis did not answer", "nodes": nodes}),
        }
    }
}

/// Keeps this node in the cluster while cluster mode is configured:
/// connects, heartbeats, follows the bus, and starts over after a failure
/// or a change of `[cluster]`. Runs until the gateway drains.
pub(crate) async fn follow(shared: Arc<Shared>) {
    loop {
        let mode = shared.snapshot.load().config.cluster_mode.clone();
        let outcome = match mode {
            None => {
                shared.cluster.link.store(None);
                shared.discovery.registry.unmirror();
                Ok(())
            }
            Some(mode) => run(&shared, &mode).await,
        };
        shared.cluster.link.store(None);
        if let Err(error) = outcome {
            // Said once per kind of failure, not once per retry.
            let repeated = shared
                .cluster
                .last_error
                .lock()
                .expect("last error lock is never poisoned")
                .as_deref()
                == Some(error.as_str());
            if repeated {
                tracing::debug!(%error, "cluster: Redis still unreachable; retrying");
            } else {
                tracing::warn!(%error, "cluster: no link to Redis; serving alone, retrying every second");
            }
            shared.cluster.set_last_error(Some(error));
        }
        tokio::select! {
            _ = shared.drain.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// The shared `document` as this node runs it: with its own `[admin]` and
/// `[cluster]`, and its own address for each listener it has by the same
/// name (nodes share routes and clusters, not where they listen).
pub(crate) fn localize(document: &str, own: &switchyard_config::RawConfig) -> Result<String, String> {
    use serde_json::Value;
    let mut shared: Value = serde_json::from_str(document).map_err(|e| format!("not JSON: {e}"))?;
    let Some(fields) = shared.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    for (key, mine) in [
        ("admin", own.admin.as_ref().map(serde_json::to_value)),
        ("cluster", own.cluster.as_ref().map(serde_json::to_value)),
    ] {
        match mine {
            Some(value) => {
                fields.insert(key.into(), value.map_err(|e| e.to_string())?);
            }
            None => {
                fields.remove(key);
            }
        }
    }
    if let Some(Value::Array(listeners)) = fields.get_mut("listeners") {
        for listener in listeners {
            let name = listener.get("name").and_then(Value::as_str).map(str::to_owned);
            let mine = own
                .listeners
                .iter()
                .find(|l| l.name.is_some() && l.name == name)
                .and_then(|l| l.listen.clone());
            if let (Some(address), Some(fields)) = (mine, listener.as_object_mut()) {
                fields.insert("listen".into(), Value::String(address));
            }
        }
    }
    serde_json::to_string(&shared).map_err(|e| e.to_string())
}

/// A client for the cluster's Redis: the URL as given (with the private CA
/// and client certificate of `tls`), or the primary the Sentinels name now.
async fn connect_client(mode: &ClusterMode) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    let failed = |e: redis::RedisError| format!("{}: {e}", redacted(&mode.redis));
    let Some(sentinel) = &mode.sentinel else {
        return match &mode.tls {
            Some(tls) if tls.ca.is_some() || tls.client_cert.is_some() => {
                let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
                let certificates = redis::TlsCertificates {
                    client_tls: match &tls.client_cert {
                        Some((cert, key)) => Some(redis::ClientTlsConfig {
                            client_cert: read(cert)?,
                            client_key: read(key)?,
                        }),
                        None => None,
                    },
                    root_cert: tls.ca.as_deref().map(read).transpose()?,
                };
                redis::Client::build_with_tls(mode.redis.as_str(), certificates).map_err(failed)
            }
            _ => redis::Client::open(mode.redis.as_str()).map_err(failed),
        };
    };
    let info = mode.redis.as_str().into_connection_info().map_err(failed)?;
    let mut node =
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info.redis_settings().clone());
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        node = node.set_tls_mode(redis::TlsMode::Secure);
    }
    let addresses: Vec<String> = sentinel.addresses.iter().map(|a| format!("redis://{a}")).collect();
    let mut sentinels = redis::sentinel::Sentinel::build(addresses).map_err(|e| format!("Sentinel: {e}"))?;
    sentinels
        .async_master_for(&sentinel.master, Some(&node))
        .await
        .map_err(|e| format!("Sentinel, primary \"{}\": {e}", sentinel.master))
}

/// One connected stretch: returns when `[cluster]` changes or Redis fails.
async fn run(shared: &Arc<Shared>, mode: &ClusterMode) -> Result<(), String> {
    let client = tokio::time::timeout(mode.redis_timeout * 4, connect_client(mode))
        .await
        .map_err(|_| "the primary was not found in time".to_owned())??;
    let connect = async {
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config(mode)).await?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(BUS).await?;
        Ok::<_, redis::RedisError>((manager, pubsub))
    };
    let (manager, mut pubsub) = tokio::time::timeout(mode.redis_timeout * 4, connect)
        .await
        .map_err(|_| "Redis did not answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let link = Arc::new(Link {
        url: mode.redis.clone(),
        manager,
        timeout: mode.redis_timeout,
    });
    heartbeat(shared, &link).await?;
    shared.cluster.link.store(Some(link.clone()));
    shared.cluster.set_last_error(None);
    tracing::info!(node = %shared.cluster.node_id, "cluster: joined");
    // One reader per hub route, dropped (and so stopped) with this stretch.
    let mut readers = Readers::default();
    readers.reconcile(shared, &client, &link);
    sync_config(shared, &link).await?;
    let mut registry_seen = None;
    {
        let _writes = shared.cluster.registry_writes.lock().await;
        registry::revive(&shared.discovery.registry, &link).await?;
    }
    sync_registry(shared, &link, &mut registry_seen).await;
    let mut messages = pubsub.on_message();
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.reset();
    loop {
        tokio::select! {
            _ = shared.drain.cancelled() => {
                let mut manager = link.manager.clone();
                let key = format!("{NODE_PREFIX}{}", shared.cluster.node_id);
                let _ = tokio::time::timeout(link.timeout, manager.del::<_, i64>(key)).await;
                return Ok(());
            }
            message = messages.next() => {
                let Some(message) = message else {
                    return Err("the bus connection closed".into());
                };
                let Ok(payload) = message.get_payload::<String>() else { continue };
                match serde_json::from_str::<Event>(&payload) {
                    Ok(event) if event.from == shared.cluster.node_id => {}
                    Ok(Event { kind: EventKind::Config { .. }, .. }) => sync_config(shared, &link).await?,
                    Ok(Event { kind: EventKind::Registry, .. }) => {
                        sync_registry(shared, &link, &mut registry_seen).await;
                    }
                    Ok(event) => apply(shared, event),
                    Err(error) => tracing::warn!(%error, "cluster: an event on the bus could not be read"),
                }
            }
            _ = ticks.tick() => {
                if shared.snapshot.load().config.cluster_mode.as_ref() != Some(mode) {
                    return Ok(());
                }
                heartbeat(shared, &link).await?;
                readers.reconcile(shared, &client, &link);
                sync_config(shared, &link).await?;
                sync_registry(shared, &link, &mut registry_seen).await;
            }
        }
    }
}

fn apply(shared: &Shared, event: Event) {
    match event.kind {
        EventKind::Purge { purge } => {
            let purged = shared.snapshot.load().cache.purge(&purge);
            tracing::info!(from = %event.from, purged, "cluster: purge from another node applied");
        }
        EventKind::Config { .. } | EventKind::Registry => {}
    }
}

/// Brings this node's registry to the cluster's, after any write of its
/// own under way. A failure is logged, not fatal to the link (the next
/// tick tries again; the other shared state does not depend on it).
async fn sync_registry(shared: &Shared, link: &Link, seen: &mut Option<u64>) {
    let _writes = shared.cluster.registry_writes.lock().await;
    if let Err(error) = registry::sync(&shared.discovery.registry, link, seen).await {
        tracing::warn!(%error, "cluster: the registry could not be read from Redis; keeping this node's copy");
    }
}

/// Brings this node to the cluster's configuration: applies a newer shared
/// version, or, when the cluster has none yet, stores this node's own.
async fn sync_config(shared: &Arc<Shared>, link: &Link) -> Result<(), String> {
    let _writes = shared.cluster.config_writes.lock().await;
    let mut manager = link.manager.clone();
    let read: Option<(Option<u64>, Option<String>)> = tokio::time::timeout(
        link.timeout * 4,
        redis::cmd("HMGET")
            .arg(CONFIG_KEY)
            .arg("version")
            .arg("document")
            .query_async(&mut manager),
    )
    .await
    .map_err(|_| "Redis did not answer".to_owned())?
    .map_err(|e| e.to_string())
    .map(Some)?;
    let (version, document) = read.unwrap_or((None, None));
    let state = &shared.cluster;
    match (version, document) {
        (Some(version), Some(document)) if version >= state.config_version() => {
            if version == state.config_version() || version == state.failed_version.load(Ordering::Acquire) {
                return Ok(());
            }
            let gateway = crate::Gateway { shared: shared.clone() };
            let document = match localize(&document, &state.own()) {
                Ok(document) => document,
                Err(error) => {
                    state.failed_version.store(version, Ordering::Release);
                    tracing::error!(version, %error, "cluster: the shared configuration cannot be read; keeping the running one");
                    return Ok(());
                }
            };
            let config = match switchyard_config::parse_json(document.as_bytes()) {
                Ok(config) => config,
                Err(diagnostics) => {
                    state.failed_version.store(version, Ordering::Release);
                    let detail = format!("cluster version {version}: {} error(s) here", diagnostics.len());
                    tracing::error!(version, errors = %diagnostics, "cluster: the shared configuration is not valid on this node; keeping the running one");
                    gateway.count_rejected_reload(detail);
                    return Ok(());
                }
            };
            match gateway.apply_versioned(config, None, "cluster").await {
                Ok(local) => {
                    state.config_version.fetch_max(version, Ordering::AcqRel);
                    tracing::info!(version, local, "cluster: shared configuration applied");
                }
                Err(error) => {
                    state.failed_version.store(version, Ordering::Release);
                    tracing::error!(version, %error, "cluster: the shared configuration cannot run here; keeping the running one");
                }
            }
            Ok(())
        }
        _ => {
            // Redis holds no configuration, or an older one than runs here:
            // this is the cluster's first node (its configuration becomes
            // version 1), or Redis lost its data (restarted without
            // persistence) and the newest version a node runs goes back.
            let document =
                serde_json::to_string(&shared.snapshot.load().config.raw).expect("a configuration serialises");
            let version = state.config_version().max(1);
            let mut invocation = CONFIG_SEED.key(CONFIG_KEY);
            invocation.arg(version).arg(&document);
            let seeded: u8 = link.call(invocation).await?;
            if seeded == 1 {
                state.config_version.fetch_max(version, Ordering::AcqRel);
                tracing::info!(version, "cluster: stored this node's configuration as the shared one");
            }
            Ok(())
        }
    }
}

async fn heartbeat(shared: &Shared, link: &Link) -> Result<(), String> {
    let snapshot = shared.snapshot.load();
    let shared_version = shared.cluster.config_version();
    let record = NodeRecord {
        id: shared.cluster.node_id.clone(),
        // The shared version it runs (its own count before it has one).
        version: if shared_version > 0 {
            shared_version
        } else {
            snapshot.version
        },
        started_ms: shared.cluster.started_ms,
        heartbeat_ms: now_ms(),
        admin: shared.cluster.admin_address(),
        draining: shared.draining.load(std::sync::atomic::Ordering::SeqCst),
    };
    let key = format!("{NODE_PREFIX}{}", record.id);
    let value = serde_json::to_string(&record).expect("a record serialises");
    let mut manager = link.manager.clone();
    let set = manager.pset_ex::<_, _, ()>(key, value, NODE_TTL.as_millis() as u64);
    match tokio::time::timeout(link.timeout, set).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("the heartbeat timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_document_keeps_this_nodes_own_parts() {
        let own: switchyard_config::RawConfig = toml::from_str(
            r#"
[admin]
listen = "127.0.0.1:9902"
[cluster]
redis = "redis://10.0.0.5/0"
[[listeners]]
name = "public"
listen = "10.0.0.12:8080"
"#,
        )
        .unwrap();
        let shared = r#"{
            "admin": {"listen": "127.0.0.1:9901", "token": "other"},
            "listeners": [
                {"name": "public", "listen": "10.0.0.11:8080"},
                {"name": "extra", "listen": "10.0.0.11:9000", "protocol": "tcp"}
            ],
            "routes": [{"name": "r", "cluster": "c"}]
        }"#;
        let local: serde_json::Value = serde_json::from_str(&localize(shared, &own).unwrap()).unwrap();
        assert_eq!(local["admin"]["listen"], "127.0.0.1:9902");
        assert!(local["admin"].get("token").is_none(), "its own [admin], whole");
        assert_eq!(local["cluster"]["redis"], "redis://10.0.0.5/0");
        assert_eq!(local["listeners"][0]["listen"], "10.0.0.12:8080");
        assert_eq!(
            local["listeners"][1]["listen"], "10.0.0.11:9000",
            "a listener this node has no address for keeps the shared one"
        );
        assert_eq!(local["routes"][0]["name"], "r");
        assert!(localize("[1, 2]", &own).is_err());
    }
}
