//! Edge security decisions: authentication ([`auth`]), rate limits
//! ([`ratelimit`]), IP filters ([`ipfilter`]) and CORS ([`cors`]). Pure logic, no I/O: the proxy asks, these answer. Time is
//! passed in so that every decision can be tested exactly.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cors;
pub mod ipfilter;
pub mod ratelimit;
pub mod tls;
