//! The Residency Sensor agent as a library: everything `sensord` does, in modules
//! that tests can call directly.
//!
//! - [`system`]: facts about the host (cgroup v2 and bpffs mounts).
//! - [`preflight`]: explains why the sensor cannot run here, before it tries.
//! - [`loader`]: loads the embedded kernel object, attaches and detaches it.
//! - [`events`]: reads flow records out of the kernel's ring buffer.
//! - [`errors`]: the crate's error type.

pub mod errors;
pub mod events;
pub mod loader;
pub mod preflight;
pub mod system;

pub use errors::SensorError;
