//! Switchyard's configuration: what users write, how it is checked, and the
//! settled settings the proxy runs on.
//!
//! Three stages, one module each: [`raw`] mirrors the TOML/JSON document,
//! [`settle`](settle::settle) validates it while collecting *every* problem with
//! its key path, and [`settled`] holds the result with real types. [`load`] ties
//! them together and turns key paths into file, line and column.

#![forbid(unsafe_code)]

pub mod diagnostic;
pub mod load;
pub mod raw;
mod settle;
pub mod settled;
pub mod units;

pub use diagnostic::{Diagnostic, Diagnostics, KeyPath, Location};
pub use load::{load_file, parse_json, parse_toml};
pub use raw::RawConfig;
pub use settle::settle;
pub use settled::*;
