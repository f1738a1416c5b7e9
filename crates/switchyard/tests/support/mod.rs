//! Test harness shared by the integration tests: the real `switchyard` binary
//! started from a config string, real backends that record what they saw, and
//! HTTP/1.1, HTTP/2 and raw-TCP clients. Everything listens on 127.0.0.1 with
//! ephemeral ports, so tests run in parallel.

#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod dns;
pub mod gateway;
pub mod grpc;
pub mod redis;
pub mod sse;
pub mod ws;

#[allow(unused_imports)]
pub use backend::Backend;
#[allow(unused_imports)]
pub use gateway::GatewayProcess;

/// The value of the first sample in a Prometheus scrape whose line starts
/// with `needle` (a metric name with its labels, as the gateway orders them).
pub fn metric(scrape: &str, needle: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in\n{scrape}"))
}
