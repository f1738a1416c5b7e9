//! Edge security decisions: rate limits ([`ratelimit`]) and IP filters
//! ([`ipfilter`]). Pure logic, no I/O: the proxy asks, these answer. Time is
//! passed in so that every decision can be tested exactly.

#![forbid(unsafe_code)]

pub mod ipfilter;
pub mod ratelimit;
