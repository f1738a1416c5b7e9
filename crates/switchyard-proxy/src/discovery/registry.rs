//! The service registry: instances register under a service name with a
//! time to live, keep themselves in by heartbeats, and leave by
//! deregistering or by letting the TTL lapse.
//!
//! Registration, heartbeat and expiry run on the admin API and a sweep
//! task, never on the request path: requests see the instances through the
//! snapshot that is rebuilt when a service's set of instances changes.
//!
//! In cluster mode the instances live in Redis and this registry is the
//! node's copy of them ([`ServiceRegistry::mirror`]): Redis keeps the TTLs,
//! and the copy does not expire anything by itself, so a node that loses
//! Redis keeps routing to the instances it last knew.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_config::units::parse_duration;
use switchyard_config::Endpoint;
use tokio::sync::watch;

/// TTL of a registration that names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Bounds on a registration's TTL.
pub const MIN_TTL: Duration = Duration::from_millis(100);
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest metadata object kept per instance, as JSON text.
const MAX_METADATA: usize = 4096;
/// Most instances one service may hold.
pub(crate) const MAX_INSTANCES: usize = 10_000;

/// `POST /api/registry/{service}`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Chosen by the registry when absent.
    pub id: Option<String>,
    /// `host:port`, or a host with `port` beside it.
    pub address: String,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    /// `"10s"`; [`DEFAULT_TTL`] when absent.
    pub ttl: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
}

/// Why a registry call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("no instance \"{id}\" in service \"{service}\" (it may have expired: register again)")]
    NotFound { service: String, id: String },
    #[error("service \"{0}\" already has {MAX_INSTANCES} instances")]
    Full(String),
    /// Cluster mode, and the cluster's Redis cannot be reached.
    #[error("the registry is shared through Redis, which cannot be reached now: {0}")]
    Unavailable(String),
}

/// An instance as it is stored (in Redis, in cluster mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub address: String,
    pub weight: u32,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    pub ttl_ms: u64,
    /// Wall-clock milliseconds.
    pub registered_ms: u64,
}

/// An instance read from Redis: its record, and its expiry and the time it
/// was read by the Redis clock (milliseconds).
#[derive(Debug, Clone)]
pub struct Mirrored {
    pub record: Record,
    pub expires_ms: u64,
    pub now_ms: u64,
}

#[derive(Debug, Clone)]
struct Instance {
    address: String,
    weight: u32,
    metadata: serde_json::Map<String, Value>,
    ttl: Duration,
    expires: Instant,
    registered: SystemTime,
    last_heartbeat: SystemTime,
}

/// Registered instances by service and id.
#[derive(Debug)]
pub struct ServiceRegistry {
    services: Mutex<HashMap<String, BTreeMap<String, Instance>>>,
    /// Bumped whenever a service's endpoint set (addresses or weights) changes.
    changes: watch::Sender<u64>,
    next_id: std::sync::atomic::AtomicU64,
    /// A copy of the cluster's registry: nothing expires here.
    mirrored: AtomicBool,
}

impl Default for ServiceRegistry {
    fn default() -> Self {
        Self {
            services: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            next_id: std::sync::atomic::AtomicU64::new(1),
            mirrored: AtomicBool::new(false),
        }
    }
}

impl ServiceRegistry {
    /// Adds or replaces an instance; returns its id and description.
    pub fn register(&self, service: &str, registration: Registration, now: Instant) -> Result<Value, RegistryError> {
        let (id, record) = self.validate(service, registration, false)?;
        let instance = Instance::new(&record, now + Duration::from_millis(record.ttl_ms), None);
        let description = describe(&id, &instance, now);
        let changed = {
            let mut services = self.services.lock().expect("registry lock is never poisoned");
            let instances = services.entry(service.to_owned()).or_default();
            if !instances.contains_key(&id) && instances.len() >= MAX_INSTANCES {
                return Err(RegistryError::Full(service.to_owned()));
            }
            let previous = instances.insert(id, instance.clone());
            previous.is_none_or(|p| p.address != instance.address || p.weight != instance.weight)
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(description)
    }

    /// Checks a registration; returns the instance's id (a random one when
    /// it names none and `random_id`, as nodes of a cluster choose ids
    /// apart) and what is stored of it.
    pub fn validate(
        &self,
        service: &str,
        registration: Registration,
        random_id: bool,
    ) -> Result<(String, Record), RegistryError> {
        check_name("service", service)?;
        let address = match registration.port {
            Some(port) => {
                let host = registration.address.trim_start_matches('[').trim_end_matches(']');
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
            None => registration.address.clone(),
        };
        check_address(&address)?;
        let weight = registration.weight.unwrap_or(1);
        if weight == 0 {
            return Err(RegistryError::Invalid(
                "weight must be at least 1 (deregister to stop traffic)".into(),
            ));
        }
        let ttl = match &registration.ttl {
            None => DEFAULT_TTL,
            Some(text) => parse_duration(text).map_err(|e| RegistryError::Invalid(format!("ttl: {e}")))?,
        };
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(RegistryError::Invalid(format!(
                "ttl must be between {}ms and {}h",
                MIN_TTL.as_millis(),
                MAX_TTL.as_secs() / 3600
            )));
        }
        let metadata_size = serde_json::to_string(&registration.metadata).map_or(0, |s| s.len());
        if metadata_size > MAX_METADATA {
            return Err(RegistryError::Invalid(format!(
                "metadata is {metadata_size} bytes as JSON; at most {MAX_METADATA} are kept"
            )));
        }
        let id = match registration.id {
            Some(id) => {
                check_name("id", &id)?;
                id
            }
            None if random_id => format!("{service}-{:012x}", fastrand::u64(..1 << 48)),
            None => format!("{service}-{}", self.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        let record = Record {
            address,
            weight,
            metadata: registration.metadata,
            ttl_ms: ttl.as_millis() as u64,
            registered_ms: unix_ms(SystemTime::now()),
        };
        Ok((id, record))
    }

    /// Replaces every instance with the cluster's (read from Redis); from
    /// then on nothing expires here until [`ServiceRegistry::unmirror`].
    pub fn mirror(&self, cluster: HashMap<String, BTreeMap<String, Mirrored>>) {
        let now = Instant::now();
        let replacement: HashMap<String, BTreeMap<String, Instance>> = cluster
            .into_iter()
            .map(|(service, instances)| {
                let instances = instances
                    .into_iter()
                    .map(|(id, m)| {
                        let left = Duration::from_millis(m.expires_ms.saturating_sub(m.now_ms));
                        let beat = m.expires_ms.saturating_sub(m.record.ttl_ms);
                        (id, Instance::new(&m.record, now + left, Some(beat)))
                    })
                    .collect();
                (service, instances)
            })
            .collect();
        self.mirrored.store(true, Ordering::Release);
        let changed = {
            let mut services = self.services.lock().expect("registry lock is never poisoned");
            let changed = endpoint_sets(&services) != endpoint_sets(&replacement);
            *services = replacement;
            changed
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Adds or replaces one instance of the cluster's copy (this node's own
    /// write, before the next read of Redis).
    pub fn mirror_one(&self, service: &str, id: &str, mirrored: Mirrored) {
        self.mirrored.store(true, Ordering::Release);
        let left = Duration::from_millis(mirrored.expires_ms.saturating_sub(mirrored.now_ms));
        let beat = mirrored.expires_ms.saturating_sub(mirrored.record.ttl_ms);
        let instance = Instance::new(&mirrored.record, Instant::now() + left, Some(beat));
        let changed = {
            let mut services = self.services.lock().expect("registry lock is never poisoned");
            let previous = services
                .entry(service.to_owned())
                .or_default()
                .insert(id.to_owned(), instance.clone());
            previous.is_none_or(|p| p.address != instance.address || p.weight != instance.weight)
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Whether this is a copy of the cluster's registry.
    pub fn is_mirror(&self) -> bool {
        self.mirrored.load(Ordering::Acquire)
    }

    /// Cluster mode is off: the instances held expire here again, each a
    /// TTL from now at the earliest (heartbeats went to Redis until now).
    pub fn unmirror(&self) {
        if !self.mirrored.swap(false, Ordering::AcqRel) {
            return;
        }
        let now = Instant::now();
        let mut services = self.services.lock().expect("registry lock is never poisoned");
        for instance in services.values_mut().flat_map(|instances| instances.values_mut()) {
            instance.expires = instance.expires.max(now + instance.ttl);
        }
    }

    /// Every instance held, as records with the time each has left (to
    /// write back into a Redis that lost them).
    pub fn records(&self, now: Instant) -> Vec<(String, String, Record, Duration)> {
        let services = self.services.lock().expect("registry lock is never poisoned");
        let mut out = Vec::new();
        for (service, instances) in services.iter() {
            for (id, instance) in instances {
                let record = Record {
                    address: instance.address.clone(),
                    weight: instance.weight,
                    metadata: instance.metadata.clone(),
                    ttl_ms: instance.ttl.as_millis() as u64,
                    registered_ms: unix_ms(instance.registered),
                };
                let left = instance.expires.saturating_duration_since(now).max(instance.ttl);
                out.push((service.clone(), id.clone(), record, left));
            }
        }
        out
    }

    /// Pushes an instance's expiry one TTL ahead.
    pub fn heartbeat(&self, service: &str, id: &str, now: Instant) -> Result<Value, RegistryError> {
        let mut services = self.services.lock().expect("registry lock is never poisoned");
        let instance = services
            .get_mut(service)
            .and_then(|s| s.get_mut(id))
            .filter(|i| i.expires > now)
            .ok_or_else(|| RegistryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            })?;
        instance.expires = now + instance.ttl;
        instance.last_heartbeat = SystemTime::now();
        Ok(describe(id, instance, now))
    }

    /// Removes an instance.
    pub fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let removed = {
            let mut services = self.services.lock().expect("registry lock is never poisoned");
            let removed = services.get_mut(service).and_then(|s| s.remove(id));
            services.retain(|_, instances| !instances.is_empty());
            removed
        };
        match removed {
            Some(_) => {
                self.changes.send_modify(|n| *n += 1);
                Ok(())
            }
            None => Err(RegistryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            }),
        }
    }

    /// Drops instances whose TTL lapsed by `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        if self.is_mirror() {
            return 0;
        }
        let mut expired = Vec::new();
        {
            let mut services = self.services.lock().expect("registry lock is never poisoned");
            for (service, instances) in services.iter_mut() {
                instances.retain(|id, instance| {
                    let alive = instance.expires > now;
                    if !alive {
                        expired.push((service.clone(), id.clone(), instance.address.clone()));
                    }
                    alive
                });
            }
            services.retain(|_, instances| !instances.is_empty());
        }
        for (service, id, address) in &expired {
            tracing::info!(%service, %id, %address, "registry: instance expired (no heartbeat within its TTL)");
        }
        if !expired.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
        expired.len()
    }

    /// The live instances of `service` as endpoints, ordered by id.
    pub fn endpoints(&self, service: &str, now: Instant) -> Vec<Endpoint> {
        let mirror = self.is_mirror();
        let services = self.services.lock().expect("registry lock is never poisoned");
        let mut endpoints: Vec<Endpoint> = services
            .get(service)
            .into_iter()
            .flat_map(|instances| instances.values())
            .filter(|i| mirror || i.expires > now)
            .map(|i| Endpoint {
                address: i.address.clone(),
                weight: i.weight,
            })
            .collect();
        // Two ids registering one address count once (the greater weight).
        endpoints.sort_by(|a, b| a.address.cmp(&b.address).then(b.weight.cmp(&a.weight)));
        endpoints.dedup_by(|later, earlier| later.address == earlier.address);
        endpoints
    }

    /// Every service and its instances (`GET /api/registry`).
    pub fn describe_all(&self, now: Instant) -> Value {
        let services = self.services.lock().expect("registry lock is never poisoned");
        let mut names: Vec<&String> = services.keys().collect();
        names.sort();
        let described: serde_json::Map<String, Value> = names
            .into_iter()
            .map(|name| {
                let instances: Vec<Value> = services[name].iter().map(|(id, i)| describe(id, i, now)).collect();
                (name.clone(), Value::Array(instances))
            })
            .collect();
        json!({"services": described})
    }

    /// A receiver that sees a new value each time an endpoint set changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl Instance {
    /// `last_heartbeat_ms`: wall-clock milliseconds (now when `None`).
    fn new(record: &Record, expires: Instant, last_heartbeat_ms: Option<u64>) -> Self {
        let wall = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        Self {
            address: record.address.clone(),
            weight: record.weight,
            metadata: record.metadata.clone(),
            ttl: Duration::from_millis(record.ttl_ms),
            expires,
            registered: wall(record.registered_ms),
            last_heartbeat: last_heartbeat_ms.map_or_else(SystemTime::now, wall),
        }
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Each service's endpoints (address and weight), to tell whether a
/// replacement changes what requests see.
fn endpoint_sets(services: &HashMap<String, BTreeMap<String, Instance>>) -> BTreeMap<&str, Vec<(&str, u32)>> {
    services
        .iter()
        .map(|(service, instances)| {
            let mut endpoints: Vec<(&str, u32)> = instances.values().map(|i| (i.address.as_str(), i.weight)).collect();
            endpoints.sort_unstable();
            (service.as_str(), endpoints)
        })
        .collect()
}

/// An instance as `GET /api/registry` shows it.
pub fn describe_record(id: &str, mirrored: &Mirrored) -> Value {
    let instance = Instance::new(
        &mirrored.record,
        Instant::now() + Duration::from_millis(mirrored.expires_ms.saturating_sub(mirrored.now_ms)),
        Some(mirrored.expires_ms.saturating_sub(mirrored.record.ttl_ms)),
    );
    describe(id, &instance, Instant::now())
}

fn describe(id: &str, instance: &Instance, now: Instant) -> Value {
    json!({
        "id": id,
        "address": instance.address,
        "weight": instance.weight,
        "metadata": instance.metadata,
        "ttl_ms": instance.ttl.as_millis() as u64,
        "expires_in_ms": instance.expires.saturating_duration_since(now).as_millis() as u64,
        "registered_at": humantime::format_rfc3339_millis(instance.registered).to_string(),
        "last_heartbeat_at": humantime::format_rfc3339_millis(instance.last_heartbeat).to_string(),
    })
}

/// Service names and ids: 1 to 128 of `A-Z a-z 0-9 . _ -`.
fn check_name(what: &str, name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{what} \"{name}\" must be 1 to 128 of letters, digits, '.', '_' and '-'"
        )))
    }
}

fn check_address(address: &str) -> Result<(), RegistryError> {
    let parsed: Result<http::uri::Authority, _> = address.parse();
    match parsed {
        Ok(authority) if authority.port_u16().is_some_and(|p| p != 0) && !authority.host().is_empty() => Ok(()),
        _ => Err(RegistryError::Invalid(format!(
            "address \"{address}\" must be host:port (or give `port` beside it), such as \"10.0.0.5:8080\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(address: &str, id: Option<&str>, ttl: &str) -> Registration {
        Registration {
            id: id.map(str::to_owned),
            address: address.to_owned(),
            port: None,
            weight: None,
            ttl: Some(ttl.to_owned()),
            metadata: Default::default(),
        }
    }

    #[test]
    fn instances_expire_unless_they_heartbeat() {
        let registry = ServiceRegistry::default();
        let start = Instant::now();
        registry
            .register("users", registration("127.0.0.1:1", Some("a"), "1s"), start)
            .unwrap();
        registry
            .register("users", registration("127.0.0.1:2", Some("b"), "1s"), start)
            .unwrap();
        registry
            .heartbeat("users", "a", start + Duration::from_millis(800))
            .unwrap();
        assert_eq!(registry.expire(start + Duration::from_millis(1200)), 1);
        let left = registry.endpoints("users", start + Duration::from_millis(1200));
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].address, "127.0.0.1:1");
        assert_eq!(
            registry.heartbeat("users", "b", start + Duration::from_millis(1200)),
            Err(RegistryError::NotFound {
                service: "users".into(),
                id: "b".into()
            })
        );
    }

    #[test]
    fn changes_are_signalled_only_when_the_endpoint_set_changes() {
        let registry = ServiceRegistry::default();
        let mut changes = registry.subscribe();
        let now = Instant::now();
        let first = registry
            .register("users", registration("127.0.0.1:1", None, "5s"), now)
            .unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let id = first["id"].as_str().unwrap().to_owned();
        registry.heartbeat("users", &id, now).unwrap();
        assert!(!changes.has_changed().unwrap(), "a heartbeat changes no endpoint");
        registry.deregister("users", &id).unwrap();
        assert!(changes.has_changed().unwrap());
        assert!(registry.endpoints("users", now).is_empty());
    }

    #[test]
    fn bad_registrations_say_what_is_wrong() {
        let registry = ServiceRegistry::default();
        let now = Instant::now();
        let err = registry
            .register("users", registration("no-port", None, "5s"), now)
            .unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
        let err = registry
            .register("users", registration("127.0.0.1:1", None, "1ms"), now)
            .unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
        let err = registry
            .register("us ers", registration("127.0.0.1:1", None, "5s"), now)
            .unwrap_err();
        assert!(err.to_string().contains("service"), "{err}");
        let with_port = Registration {
            port: Some(8080),
            ..registration("10.0.0.5", Some("x"), "5s")
        };
        let ok = registry.register("users", with_port, now).unwrap();
        assert_eq!(ok["address"], "10.0.0.5:8080");
    }
}
