//! Cost of one pick, per algorithm, for clusters of 3, 100 and 10,000
//! endpoints (target: under 100 ns at 10,000; see docs/benchmarks.md).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard_balance::{build, Algorithm, EndpointState, Options, PickContext};

const ALGORITHMS: [(&str, Algorithm); 8] = [
    ("round_robin", Algorithm::RoundRobin),
    ("weighted_round_robin", Algorithm::WeightedRoundRobin),
    ("least_connections", Algorithm::LeastConnections),
    ("power_of_two", Algorithm::PowerOfTwo),
    ("least_response_time", Algorithm::LeastResponseTime),
    ("random", Algorithm::Random),
    ("ip_hash", Algorithm::IpHash),
    ("consistent_hash", Algorithm::ConsistentHash),
];

fn bench_picks(c: &mut Criterion) {
    let now = Instant::now();
    for size in [3usize, 100, 10_000] {
        // Mixed weights, some load and latency, as in a live cluster.
        let endpoints: Vec<Arc<EndpointState>> = (0..size)
            .map(|i| {
                let e = Arc::new(EndpointState::new(
                    format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255),
                    1 + (i % 3) as u32,
                ));
                e.observe_latency(Duration::from_micros(500 + (i % 7) as u64 * 100), now);
                e
            })
            .collect();
        let _load: Vec<_> = endpoints.iter().step_by(3).map(|e| e.begin()).collect();
        let mut group = c.benchmark_group(format!("pick_{size}"));
        for (name, algorithm) in ALGORITHMS {
            let balancer = build(algorithm, &endpoints, &Options::default(), Default::default());
            let mut ctx = PickContext::at(now);
            ctx.client_ip = Some(IpAddr::from([192, 0, 2, 1]));
            ctx.hash_key = Some(b"user-42");
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| black_box(balancer.pick(black_box(&endpoints), &ctx)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_picks);
criterion_main!(benches);
