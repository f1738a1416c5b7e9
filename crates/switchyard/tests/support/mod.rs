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
pub mod ws;

#[allow(unused_imports)]
pub use backend::Backend;
#[allow(unused_imports)]
pub use gateway::GatewayProcess;
