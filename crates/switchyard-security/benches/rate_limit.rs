//! Cost of one local rate-limit decision (target: under 100 ns uncontended).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard_security::ratelimit::{Quota, RateLimiter};

fn bench_decisions(c: &mut Criterion) {
    let quota = Quota {
        rate: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000,
    };
    let limiter = RateLimiter::new(quota, 100_000);
    let now = Instant::now();
    c.bench_function("rate_limit/one_key", |b| {
        b.iter(|| black_box(limiter.check(black_box(b"203.0.113.7"), now)))
    });
    // Many clients: keys spread over the shards, maps of realistic size.
    let keys: Vec<String> = (0..10_000).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect();
    let mut i = 0;
    c.bench_function("rate_limit/10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(keys[i].as_bytes(), now))
        })
    });
}

criterion_group!(benches, bench_decisions);
criterion_main!(benches);
