//! Rate limits shared by every gateway node, kept in Redis.
//!
//! The same GCRA as the local limiter, run as one Lua script so that the read
//! and the update are atomic across nodes; the script takes the time from the
//! Redis server (`TIME`), so nodes with skewed clocks still agree. One
//! multiplexed connection per Redis URL, re-established by itself after a
//! failure. When Redis does not answer within `redis_timeout`, each limit
//! applies its `on_redis_error` policy (allow or deny), logs it (at most every
//! 10 seconds) and counts it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::cluster::LinkSlot;
use sha2::{Digest, Sha256};
use switchyard_config::{ClusterMode, OnRedisError};
use switchyard_security::ratelimit::{Decision, Quota};

/// GCRA in microseconds. KEYS[1]: the bucket; ARGV: interval, tolerance.
/// Returns {allowed, microseconds until the bucket is full, microseconds until
/// one request would be allowed}.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, tat - now, ahead - tolerance}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(ahead / 1000) + 1)
return {1, ahead, 0}
"#,
    )
});

/// The shared Redis as global limits and idempotency keys use it: the
/// cluster link's connection while the node is connected (see
/// `cluster`), nothing while it is not, so that a node cut off from Redis
/// applies its failure policies at once instead of waiting on each request.
pub struct RedisStore {
    pub url: String,
    link: LinkSlot,
    pub(crate) timeout: Duration,
    /// Calls that failed or timed out (for /metrics).
    pub failures: AtomicU64,
    last_warning: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &redacted(&self.url))
            .finish_non_exhaustive()
    }
}

/// How every connection to the cluster's Redis behaves: `redis_timeout`
/// for connecting and for each answer, one retry, reconnects at most a
/// second apart.
pub(crate) fn manager_config(mode: &ClusterMode) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(mode.redis_timeout))
        .set_response_timeout(Some(mode.redis_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
}

/// `prefix` and the hex of the first `bytes` bytes of `key`'s SHA-256:
/// client-chosen bytes never become Redis key syntax.
pub(crate) fn hashed_key(prefix: &str, key: &[u8], bytes: usize) -> String {
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(prefix.len() + 2 * bytes);
    out.push_str(prefix);
    for byte in &digest[..bytes.min(digest.len())] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The URL without its password, for logs and the admin API.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

impl RedisStore {
    /// A store for `mode` on the cluster's link.
    pub(crate) fn new(mode: &ClusterMode, link: LinkSlot) -> Arc<Self> {
        Arc::new(Self {
            url: mode.redis.clone(),
            link,
            timeout: mode.redis_timeout,
            failures: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The connection, while the node is connected to Redis.
    fn connection(&self) -> Result<ConnectionManager, String> {
        self.link
            .load()
            .as_ref()
            .map(|link| link.manager.clone())
            .ok_or_else(|| "not connected to the cluster's Redis".to_owned())
    }

    /// Runs a script within `redis_timeout`; `Err` says why it could not.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.connection()?;
        Self::answer(tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await)
    }

    /// Runs a command within `redis_timeout`; `Err` says why it could not.
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, String> {
        let mut connection = self.connection()?;
        Self::answer(tokio::time::timeout(self.timeout, command.query_async(&mut connection)).await)
    }

    fn answer<T>(result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>) -> Result<T, String> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    /// Counts a failed call and logs it (at most every 10 seconds); `what`
    /// names the feature, `allowing` its policy.
    pub(crate) fn warn(&self, what: &'static str, error: &str, allowing: bool) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_secs() + 10;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                redis = %redacted(&self.url),
                %error,
                policy = if allowing { "allow" } else { "deny" },
                failures = self.failures.load(Ordering::Relaxed),
                "{what} store unreachable"
            );
        }
    }
}

/// One global limit of one route.
#[derive(Debug)]
pub struct GlobalBucket {
    pub store: Arc<RedisStore>,
    /// `switchyard:rl:{route}:{index}:` (the quota is part of it, so a
    /// changed limit starts with fresh buckets).
    prefix: String,
    interval_us: u64,
    tolerance_us: u64,
    burst: u32,
    pub on_error: OnRedisError,
}

impl GlobalBucket {
    pub fn new(store: Arc<RedisStore>, route: &str, index: usize, quota: Quota, on_error: OnRedisError) -> Self {
        let interval_us = (quota.per.as_micros() / u128::from(quota.rate.max(1))).max(1) as u64;
        Self {
            store,
            prefix: format!(
                "switchyard:rl:{route}:{index}:{}:{}:{}:",
                quota.rate,
                quota.per.as_millis(),
                quota.burst
            ),
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(quota.burst.max(1))),
            burst: quota.burst,
            on_error,
        }
    }

    /// Takes a token for `key`; `None` when Redis could not answer (the
    /// caller applies `on_error`).
    pub async fn check(&self, key: &[u8]) -> Option<Decision> {
        let mut invocation = GCRA.key(hashed_key(&self.prefix, key, 16));
        invocation.arg(self.interval_us).arg(self.tolerance_us);
        let (allowed, ahead, retry) = match self.store.invoke::<(i64, i64, i64)>(invocation).await {
            Ok(values) => values,
            Err(error) => {
                self.store
                    .warn("rate limit", &error, self.on_error == OnRedisError::Allow);
                return None;
            }
        };
        let ahead = ahead.max(0) as u64;
        Some(Decision {
            allowed: allowed == 1,
            limit: self.burst,
            remaining: if allowed == 1 {
                (self.tolerance_us.saturating_sub(ahead) / self.interval_us) as u32
            } else {
                0
            },
            reset: Duration::from_micros(ahead),
            retry_after: Duration::from_micros(retry.max(0) as u64),
        })
    }
}
