//! Failure handling that keeps upstream failures from becoming client failures
//! without turning them into retry storms.
//!
//! Everything here is policy, not I/O: [`backoff`] computes waits, [`budget`]
//! decides whether one more retry is affordable, [`breaker`] is the circuit
//! breaker's state machine, [`fault`] decides which requests get an injected
//! fault, and [`idempotency`] remembers responses by idempotency key. Time is
//! passed in, randomness comes from a thread-local generator tests can seed,
//! and the request path touches only atomics (the idempotency store, used
//! only on opted-in routes for requests that carry a key, takes a short lock).

#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod fault;
pub mod idempotency;
pub mod limit;
mod window;

pub use breaker::{Admission, Breaker, BreakerSettings, BreakerState, Transition};
pub use budget::{RetryBudget, RetryBudgetSettings};
pub use limit::{ConcurrencyLimit, Shed};
pub use window::RollingCounts;
