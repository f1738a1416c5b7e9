//! The rules of HTTP caching for a shared cache (RFC 9111), with no I/O:
//!
//! - [`control`]: `Cache-Control` and `Pragma` as one parsed form;
//! - [`freshness`]: whether a response may be stored and for how long it is
//!   fresh, how old a stored one is, and what a stored one may answer
//!   (fresh, stale-while-revalidate, revalidate first, stale-if-error);
//! - [`key`]: cache keys (host, path, query kept, sorted, filtered, chosen
//!   headers and cookies) and `Vary`, normalised on `Accept-Encoding`.
//!
//! The response cache of routes (storage, coalescing, revalidation, purge)
//! builds on these in `switchyard-proxy`'s `cache` module.

pub mod control;
pub mod freshness;
pub mod key;

pub use control::CacheControl;
pub use freshness::{initial_age, storable, usable, NotStored, Usable};
pub use key::{accepted_codings, coding_q, preferred_encoding, vary_names, vary_values, KeySpec, QueryKey};
