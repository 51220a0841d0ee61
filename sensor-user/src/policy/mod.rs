//! Residency policies: the TOML a human writes, checked with messages that
//! point at file, line and column, and compiled with region data into what the
//! kernel enforces.
//!
//! - [`model`]: the file format (serde structs, every key documented in
//!   docs/policy.md).
//! - [`validate`]: parsing and semantic checks → [`validate::Policy`].
//! - [`compile`]: (policy × region data × sites) → per-class verdict prefixes.
//! - [`explain`]: why an address gets the verdict it gets.
//! - [`apply`]: installs a compiled policy into the kernel.
//! - [`exceptions`]: operators' time-limited widenings of a class's policy.
//! - [`source`]: the files a running agent builds its policy from.

pub mod apply;
pub mod compile;
pub mod exceptions;
pub mod explain;
pub mod model;
pub mod source;
pub mod validate;
