//! The service registry shared through Redis.
//!
//! Per service, a hash `switchyard:registry:svc:{service}` holds each
//! instance's record by id, and a sorted set
//! `switchyard:registry:svc:{service}:expiry` its expiry (milliseconds by the Redis clock, so nodes with skewed clocks
//! agree). `switchyard:registry:services` lists the services, and
//! `switchyard:registry:version` counts changes of any endpoint set. Every
//! write is one Lua script, so instances are never half written.
//!
//! Each node copies the registry into its own ([`ServiceRegistry::mirror`])
//! when the version moves: at once when another node announces a write on
//! the bus, else within a second. Every node also sweeps lapsed instances
//! out each second; the first to see one bumps the version.
//!
//! A node that (re)joins first revives what it holds ([`revive`]): every
//! instance gets at least its TTL again, and one missing from Redis (which
//! restarted empty) is written back. Heartbeats could not land while the
//! node was away, so nothing it knew expires for that.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Instant;

use super::Link;
use crate::discovery::registry::MAX_INSTANCES;
use crate::discovery::{Mirrored, Record, ServiceRegistry};

const SERVICES: &str = "switchyard:registry:services";
const VERSION: &str = "switchyard:registry:version";

/// Services live under `svc:`, apart from the registry's own keys (a
/// service may be called `services` or `version`).
fn hash_key(service: &str) -> String {
    format!("switchyard:registry:svc:{service}")
}

fn expiry_key(service: &str) -> String {
    format!("switchyard:registry:svc:{service}:expiry")
}

/// Lua: `now`, the Redis clock in milliseconds.
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS: hash, expiry, services, version. ARGV: id, record, ttl ms, most
/// instances, service. Returns {-1} when the service is full, else
/// {expiry, now}.
static REGISTER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{NOW}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if not previous and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {{-1}} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[5])
if previous ~= ARGV[2] then redis.call('INCR', KEYS[4]) end
return {{expiry, now}}
"#
    ))
});

/// KEYS: hash, expiry. ARGV: id. Returns {record, expiry, now}, or nil when
/// the instance is unknown or lapsed.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{NOW}
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) <= now then return false end
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
expiry = now + tonumber(cjson.decode(record)['ttl_ms'])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
return {{record, expiry, now}}
"#
    ))
});

/// KEYS and ARGV as [`REGISTER`]'s (most instances unused). Gives the
/// instance at least its TTL from now, and writes it back if Redis lost it.
/// Returns 1 when it was written back.
static REVIVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{NOW}
local wanted = now + tonumber(ARGV[3])
local expiry = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if expiry < wanted then redis.call('ZADD', KEYS[2], wanted, ARGV[1]) end
redis.call('SADD', KEYS[3], ARGV[5])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('INCR', KEYS[4])
  return 1
end
return 0
"#
    ))
});

/// KEYS: hash, expiry, version. ARGV: id. Returns 1 when it was there.
static DEREGISTER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if removed == 1 then redis.call('INCR', KEYS[3]) end
return removed
"#,
    )
});

/// KEYS: services, version. Drops lapsed instances (and empty services);
/// returns the version, or false when Redis holds no registry at all.
static SWEEP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{NOW}
local swept = 0
for _, service in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local hash = 'switchyard:registry:svc:' .. service
  local expiry = hash .. ':expiry'
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    redis.call('HDEL', hash, id)
    redis.call('ZREM', expiry, id)
    swept = swept + 1
  end
  if redis.call('HLEN', hash) == 0 then
    redis.call('SREM', KEYS[1], service)
    redis.call('DEL', expiry)
  end
end
if swept > 0 then return redis.call('INCR', KEYS[2]) end
local version = redis.call('GET', KEYS[2])
if not version then return false end
return tonumber(version)
"#
    ))
});

/// KEYS: services. Returns {now, then service, id, record, expiry for each
/// live instance}.
static READ: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{NOW}
local out = {{tostring(now)}}
for _, service in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local hash = 'switchyard:registry:svc:' .. service
  local live = redis.call('ZRANGEBYSCORE', hash .. ':expiry', '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #live, 2 do
    local record = redis.call('HGET', hash, live[i])
    if record then
      table.insert(out, service)
      table.insert(out, live[i])
      table.insert(out, record)
      table.insert(out, live[i + 1])
    end
  end
end
return out
"#
    ))
});

/// What a registration in Redis came to.
pub(crate) enum Registered {
    Done(Mirrored),
    Full,
}

/// `script` (REGISTER or REVIVE) for one instance. KEYS: hash, expiry,
/// services, version. ARGV: id, record, ttl ms, most instances, service.
fn instance_invocation<'s>(
    script: &'s redis::Script,
    service: &str,
    id: &str,
    record: &Record,
) -> redis::ScriptInvocation<'s> {
    let text = serde_json::to_string(record).expect("a record serialises");
    let mut invocation = script.prepare_invoke();
    invocation
        .key(hash_key(service))
        .key(expiry_key(service))
        .key(SERVICES)
        .key(VERSION)
        .arg(id)
        .arg(text)
        .arg(record.ttl_ms)
        .arg(MAX_INSTANCES)
        .arg(service);
    invocation
}

/// The registry as Redis holds it: instances by service and id.
pub(crate) type Services = HashMap<String, BTreeMap<String, Mirrored>>;

impl Link {
    pub(crate) async fn register(&self, service: &str, id: &str, record: &Record) -> Result<Registered, String> {
        let answer: Vec<i64> = self.call(instance_invocation(&REGISTER, service, id, record)).await?;
        match answer.as_slice() {
            [expires, now] => Ok(Registered::Done(Mirrored {
                record: record.clone(),
                expires_ms: *expires as u64,
                now_ms: *now as u64,
            })),
            _ => Ok(Registered::Full),
        }
    }

    /// `None`: no such live instance.
    pub(crate) async fn heartbeat(&self, service: &str, id: &str) -> Result<Option<Mirrored>, String> {
        let mut invocation = HEARTBEAT.prepare_invoke();
        invocation.key(hash_key(service)).key(expiry_key(service)).arg(id);
        let answer: Option<(String, u64, u64)> = self.call(invocation).await?;
        Ok(answer.and_then(|(record, expires_ms, now_ms)| {
            Some(Mirrored {
                record: serde_json::from_str(&record).ok()?,
                expires_ms,
                now_ms,
            })
        }))
    }

    /// Whether the instance was there.
    pub(crate) async fn deregister(&self, service: &str, id: &str) -> Result<bool, String> {
        let mut invocation = DEREGISTER.prepare_invoke();
        invocation
            .key(hash_key(service))
            .key(expiry_key(service))
            .key(VERSION)
            .arg(id);
        let removed: i64 = self.call(invocation).await?;
        Ok(removed == 1)
    }

    /// Sweeps lapsed instances; returns the registry's version (`None`:
    /// Redis holds no registry, for instance after a restart).
    pub(crate) async fn sweep_registry(&self) -> Result<Option<u64>, String> {
        let mut invocation = SWEEP.prepare_invoke();
        invocation.key(SERVICES).key(VERSION);
        self.call(invocation).await
    }

    /// Every live instance.
    pub(crate) async fn read_registry(&self) -> Result<Services, String> {
        let mut invocation = READ.prepare_invoke();
        invocation.key(SERVICES);
        let flat: Vec<String> = self.call(invocation).await?;
        let now_ms: u64 = flat.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut services = Services::new();
        for entry in flat.get(1..).unwrap_or_default().chunks_exact(4) {
            let [service, id, record, expires] = entry else {
                continue;
            };
            let (Ok(record), Ok(expires_ms)) = (serde_json::from_str::<Record>(record), expires.parse::<f64>()) else {
                tracing::warn!(%service, %id, "cluster: a registry record in Redis could not be read");
                continue;
            };
            services.entry(service.clone()).or_default().insert(
                id.clone(),
                Mirrored {
                    record,
                    expires_ms: expires_ms as u64,
                    now_ms,
                },
            );
        }
        Ok(services)
    }
}

/// Gives every instance this node holds at least its TTL again, and
/// writes back those Redis lost: run when a node (re)joins, before the
/// first sweep, since heartbeats could not land while it was away.
pub(crate) async fn revive(registry: &ServiceRegistry, link: &Link) -> Result<(), String> {
    if !registry.is_mirror() {
        return Ok(());
    }
    let held = registry.records(Instant::now());
    let mut written_back = 0;
    for (service, id, record, _) in &held {
        let restored: i64 = link.call(instance_invocation(&REVIVE, service, id, record)).await?;
        written_back += restored;
    }
    if !held.is_empty() {
        tracing::info!(
            instances = held.len(),
            written_back,
            "cluster: the registry this node held is in Redis again, each instance with its TTL"
        );
    }
    Ok(())
}

/// Brings this node's registry to the cluster's: sweeps, and reads it all
/// when its version moved since `seen`.
pub(crate) async fn sync(registry: &ServiceRegistry, link: &Link, seen: &mut Option<u64>) -> Result<(), String> {
    let version = link.sweep_registry().await?;
    if version.is_some() && version == *seen {
        return Ok(());
    }
    let services = link.read_registry().await?;
    registry.mirror(services);
    *seen = version;
    Ok(())
}
