//! Token-bucket rate limits, kept as GCRA (the generic cell rate algorithm):
//! each key stores one number, its "theoretical arrival time" (TAT). A
//! request at `now` is allowed when `max(TAT, now) + T - now <= τ`, where
//! `T = per / rate` is the time one token takes to refill and `τ = T × burst`
//! is how far ahead of the steady rate a key may run. This is exactly a token
//! bucket of `burst` tokens refilled at `rate` per `per`, with one word of
//! state and no timer.
//!
//! Keys live in shards, each a small map behind its own lock held for a few
//! nanoseconds: no global lock. Memory is bounded: a shard that fills up first
//! drops the keys whose bucket is full again (idle keys: forgetting them
//! changes nothing), then, if still full, an arbitrary key (which then starts
//! over with a full bucket).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many shards a limiter's keys are spread over.
const SHARDS: usize = 64;

/// One limit: `rate` requests per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Quota {
    /// Time to refill one token, in nanoseconds (at least 1).
    fn interval(&self) -> u64 {
        (self.per.as_nanos() / u128::from(self.rate.max(1))).max(1) as u64
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The limit, as `RateLimit-Limit` shows it (the burst size).
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Until the bucket is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// When refused: until one request would be allowed (`Retry-After`).
    pub retry_after: Duration,
}

/// A rate limiter: one quota, many keys.
#[derive(Debug)]
pub struct RateLimiter {
    quota: Quota,
    /// τ in nanoseconds.
    tolerance: u64,
    interval: u64,
    max_keys: usize,
    max_keys_per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    epoch: Instant,
}

impl RateLimiter {
    /// A limiter for `quota`, keeping at most about `max_keys` keys.
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        let interval = quota.interval();
        Self {
            quota,
            tolerance: interval.saturating_mul(u64::from(quota.burst.max(1))),
            interval,
            max_keys,
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
        }
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The key bound it was made with.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Keys held now (for tests and the admin API).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("shard lock").len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one token for `key` at `now` if there is one.
    pub fn check(&self, key: &[u8], now: Instant) -> Decision {
        // Keys are hashed with a per-limiter random key: a client cannot pick
        // keys that collide with another client's bucket.
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[(hash % SHARDS as u64) as usize];
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut map = shard.lock().expect("rate limit shard lock is never poisoned");
        let tat = map.get(&hash).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        if ahead > self.tolerance {
            // Refused: the state does not change.
            let ahead_now = tat - now;
            return Decision {
                allowed: false,
                limit: self.quota.burst,
                remaining: 0,
                reset: Duration::from_nanos(ahead_now),
                retry_after: Duration::from_nanos(ahead - self.tolerance),
            };
        }
        if !map.contains_key(&hash) && map.len() >= self.max_keys_per_shard {
            make_room(&mut map, now, self.max_keys_per_shard);
        }
        map.insert(hash, new_tat);
        Decision {
            allowed: true,
            limit: self.quota.burst,
            remaining: ((self.tolerance - ahead) / self.interval) as u32,
            reset: Duration::from_nanos(ahead),
            retry_after: Duration::ZERO,
        }
    }
}

/// Frees at least one slot below `max`: keys whose bucket is full again
/// first (forgetting them changes nothing), else one arbitrary key.
fn make_room(map: &mut HashMap<u64, u64>, now: u64, max: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() >= max {
        if let Some(&victim) = map.keys().next() {
            map.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, per: Duration, burst: u32) -> RateLimiter {
        RateLimiter::new(Quota { rate, per, burst }, 10_000)
    }

    #[test]
    fn a_burst_then_refusal_at_the_exact_boundary() {
        let l = limiter(10, Duration::from_secs(1), 5);
        let now = l.epoch;
        let remaining: Vec<u32> = (0..5).map(|_| l.check(b"k", now)).map(|d| d.remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = l.check(b"k", now);
        assert!(!refused.allowed);
        assert_eq!(
            refused.retry_after,
            Duration::from_millis(100),
            "one token refills in 100ms"
        );
        assert_eq!(
            refused.reset,
            Duration::from_millis(500),
            "the bucket is full again in 500ms"
        );
        // Another key has its own bucket.
        assert!(l.check(b"other", now).allowed);
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let l = limiter(10, Duration::from_secs(1), 2);
        let t0 = l.epoch;
        assert!(l.check(b"k", t0).allowed);
        assert!(l.check(b"k", t0).allowed);
        assert!(!l.check(b"k", t0).allowed);
        assert!(!l.check(b"k", t0 + Duration::from_millis(99)).allowed);
        assert!(
            l.check(b"k", t0 + Duration::from_millis(100)).allowed,
            "one token after 100ms"
        );
        assert!(!l.check(b"k", t0 + Duration::from_millis(100)).allowed);
        // After a long idle spell the bucket is full, not more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.check(b"k", later).remaining, 1);
        assert!(l.check(b"k", later).allowed);
        assert!(!l.check(b"k", later).allowed);
    }

    #[test]
    fn steady_traffic_at_the_rate_is_never_refused() {
        let l = limiter(100, Duration::from_secs(1), 1);
        let t0 = l.epoch;
        for i in 0..1000u64 {
            assert!(l.check(b"k", t0 + Duration::from_millis(10 * i)).allowed, "request {i}");
        }
    }

    #[test]
    fn hourly_limits_count_the_whole_window() {
        let l = limiter(1000, Duration::from_secs(3600), 1000);
        let t0 = l.epoch;
        assert_eq!((0..1500).filter(|_| l.check(b"k", t0).allowed).count(), 1000);
        // 3.6 s later one more token is back.
        assert_eq!(
            (0..10)
                .filter(|_| l.check(b"k", t0 + Duration::from_millis(3600)).allowed)
                .count(),
            1
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let l = RateLimiter::new(
            Quota {
                rate: 1,
                per: Duration::from_secs(60),
                burst: 1,
            },
            640,
        );
        let now = l.epoch;
        for i in 0..20_000u32 {
            l.check(&i.to_le_bytes(), now);
        }
        assert!(l.len() <= 640 + SHARDS, "{} keys kept", l.len());
        // Idle keys (full buckets) are the first to go.
        let later = now + Duration::from_secs(120);
        for i in 0..640u32 {
            l.check(&(100_000 + i).to_le_bytes(), later);
        }
        assert!(l.len() <= 640 + SHARDS);
    }
}
