//! Idempotency keys shared through Redis (cluster mode): a repeat reaching
//! any node is recognised.
//!
//! A key is the hash `switchyard:idem:{sha256 of the scoped key}` with the
//! request's `fp` (fingerprint), `state` and `owner` (a token of the claim);
//! an answered one adds `status`, `headers` and `body`. A running claim
//! expires after twice the route's timeout plus 30 s, so a node that dies
//! mid-request does not hold the key for good; only the claim's owner may
//! answer or release it, so a claim that lapsed and was taken again is not
//! overwritten. An answer is kept for the route's `ttl`. Claims, answers and
//! releases are single Lua scripts. While Redis cannot be reached, a
//! request with a key gets the route's `on_redis_error`: refused (503) or
//! run without the key.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use switchyard_config::OnRedisError;
use switchyard_resilience::idempotency::{Begin, BoxFuture, ClaimId, IdempotencyStore, StoredResponse};

use crate::global_limit::{hashed_key, RedisStore};

/// KEYS: the key. ARGV: fingerprint, lease ms, owner. Returns {"proceed"},
/// {"mismatch"}, {"running"} or {"done", status, headers, body}.
static BEGIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'running', 'owner', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'proceed'}
end
if fp ~= ARGV[1] then return {'mismatch'} end
local stored = redis.call('HMGET', KEYS[1], 'state', 'status', 'headers', 'body')
if stored[1] ~= 'done' then return {'running'} end
return {'done', stored[2], stored[3], stored[4]}
"#,
    )
});

/// KEYS: the key. ARGV: owner, status, headers, body, ttl ms. Answers the
/// owner's running claim; returns 0 when it has none (its lease lapsed).
static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local claim = redis.call('HMGET', KEYS[1], 'state', 'owner')
if claim[1] ~= 'running' or claim[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#,
    )
});

/// KEYS: the key. ARGV: owner. Releases the owner's running claim (an
/// answered key stays).
static ABANDON: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local claim = redis.call('HMGET', KEYS[1], 'state', 'owner')
if claim[1] == 'running' and claim[2] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// How often a duplicate looks whether the running request has answered.
const POLL: Duration = Duration::from_millis(50);

/// One route's idempotency keys, in the cluster's Redis.
#[derive(Debug)]
pub(crate) struct SharedIdempotency {
    redis: Arc<RedisStore>,
    ttl: Duration,
    /// How long a running claim holds the key.
    lease: Duration,
    on_error: OnRedisError,
}

impl SharedIdempotency {
    pub(crate) fn new(redis: Arc<RedisStore>, ttl: Duration, route_timeout: Duration, on_error: OnRedisError) -> Self {
        Self {
            redis,
            ttl,
            lease: lease(route_timeout),
            on_error,
        }
    }

    /// Whether this store is the one these settings call for.
    pub(crate) fn is(
        &self,
        redis: &Arc<RedisStore>,
        ttl: Duration,
        route_timeout: Duration,
        on_error: OnRedisError,
    ) -> bool {
        Arc::ptr_eq(&self.redis, redis)
            && self.ttl == ttl
            && self.lease == lease(route_timeout)
            && self.on_error == on_error
    }

    fn failed(&self, error: &str) {
        self.redis
            .warn("idempotency", error, self.on_error == OnRedisError::Allow);
    }
}

/// How long a running claim holds its key: the request's whole life (its
/// timeout, a wait for a slot, reading the answer) with room to spare.
fn lease(route_timeout: Duration) -> Duration {
    route_timeout * 2 + Duration::from_secs(30)
}

/// The key's Redis key (hashed: client-chosen bytes never become Redis
/// key syntax).
fn redis_key(key: &str) -> String {
    hashed_key("switchyard:idem:", key.as_bytes(), 32)
}

/// `name: value` lines (names hold no `:`, values no newline).
fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

fn decode_headers(bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

fn decode_response(parts: &[Vec<u8>]) -> Option<StoredResponse> {
    let [status, headers, body] = parts else { return None };
    let status = std::str::from_utf8(status).ok()?.parse::<u16>().ok()?;
    Some(StoredResponse {
        status: StatusCode::from_u16(status).ok()?,
        headers: decode_headers(headers),
        body: Bytes::copy_from_slice(body),
    })
}

impl IdempotencyStore for SharedIdempotency {
    fn begin<'a>(&'a self, key: &'a str, fingerprint: u64) -> BoxFuture<'a, Begin> {
        Box::pin(async move {
            let redis_key = redis_key(key);
            let owner = fastrand::u64(..);
            let mut invocation = BEGIN.prepare_invoke();
            invocation
                .key(&redis_key)
                .arg(fingerprint.to_string())
                .arg(self.lease.as_millis() as u64)
                .arg(owner);
            let answer: Vec<Vec<u8>> = match self.redis.invoke(invocation).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.failed(&error);
                    return match self.on_error {
                        OnRedisError::Allow => Begin::Bypass,
                        OnRedisError::Deny => Begin::Unavailable,
                    };
                }
            };
            match answer.first().map(Vec::as_slice) {
                // The owner token travels with the claim (see `ClaimId`).
                Some(b"proceed") => Begin::Proceed(ClaimId(owner)),
                Some(b"mismatch") => Begin::Mismatch,
                Some(b"running") => Begin::InProgress,
                Some(b"done") => match decode_response(&answer[1..]) {
                    Some(response) => Begin::Replay(Arc::new(response)),
                    None => Begin::InProgress,
                },
                _ => Begin::InProgress,
            }
        })
    }

    fn wait<'a>(&'a self, key: &'a str, timeout: Duration) -> BoxFuture<'a, Option<Arc<StoredResponse>>> {
        Box::pin(async move {
            let key = redis_key(key);
            let deadline = tokio::time::Instant::now() + timeout;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
                let mut command = redis::cmd("HMGET");
                command.arg(&key).arg("state").arg("status").arg("headers").arg("body");
                let fields: Vec<Option<Vec<u8>>> = match self.redis.query(&command).await {
                    Ok(fields) => fields,
                    Err(error) => {
                        self.failed(&error);
                        return None;
                    }
                };
                match fields.first() {
                    // Released (or lapsed): the caller may try again.
                    Some(None) | None => return None,
                    Some(Some(state)) if state.as_slice() == b"done" => {
                        let parts: Vec<Vec<u8>> = fields[1..].iter().map(|f| f.clone().unwrap_or_default()).collect();
                        return decode_response(&parts).map(Arc::new);
                    }
                    Some(Some(_)) => {}
                }
            }
            None
        })
    }

    fn complete<'a>(&'a self, key: &'a str, claim: ClaimId, response: StoredResponse) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (redis_key, owner) = (redis_key(key), claim.0);
            let mut invocation = COMPLETE.prepare_invoke();
            invocation
                .key(redis_key)
                .arg(owner)
                .arg(response.status.as_u16())
                .arg(encode_headers(&response.headers))
                .arg(response.body.as_ref())
                .arg(self.ttl.as_millis() as u64);
            match self.redis.invoke::<i64>(invocation).await {
                Ok(1) => {}
                Ok(_) => tracing::warn!("idempotency: the claim had lapsed when the answer came; it is not kept"),
                Err(error) => self.failed(&error),
            }
        })
    }

    fn abandon<'a>(&'a self, key: &'a str, claim: ClaimId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (redis_key, owner) = (redis_key(key), claim.0);
            let mut invocation = ABANDON.prepare_invoke();
            invocation.key(redis_key).arg(owner);
            if let Err(error) = self.redis.invoke::<i64>(invocation).await {
                self.failed(&error);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2: with colon"));
        headers.append("x-bytes", HeaderValue::from_bytes(b"caf\xc3\xa9\tok").unwrap());
        assert_eq!(decode_headers(&encode_headers(&headers)), headers);
    }

    #[test]
    fn keys_are_hashed() {
        let key = redis_key("route\u{1}client\u{1}key with spaces and \r\n");
        assert!(key.starts_with("switchyard:idem:"));
        assert_eq!(key.len(), "switchyard:idem:".len() + 64);
        assert!(key["switchyard:idem:".len()..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
