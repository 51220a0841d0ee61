//! The Residency Sensor agent as a library: everything `sensord` does, in modules
//! that tests can call directly.
//!
//! - [`agent`]: the task that owns the sensor and the policy; commands in.
//! - [`api`]: the gRPC API (Unix socket, root only).
//! - [`system`]: facts about the host (cgroup v2 and bpffs mounts).
//! - [`preflight`]: explains why the sensor cannot run here, before it tries.
//! - [`kernel`]: the loaded kernel object: attach, tag, judge, configure.
//! - [`procscan`]: tags processes already running when the agent starts.
//! - [`events`]: reads flow records out of the kernel's ring buffer.
//! - [`dns`]: the names processes resolved, from the DNS answers they got.
//! - [`ledger`]: why each process carries its classes.
//! - [`clock`]: wall-clock time for kernel timestamps.
//! - [`errors`]: the crate's error type.

pub mod agent;
pub mod api;
pub mod clock;
pub mod config;
pub mod dns;
pub mod errors;
pub mod events;
pub mod export;
pub mod kernel;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod procscan;
pub mod regions;
pub mod system;

pub use errors::SensorError;
