//! The shared harness for privileged end-to-end tests.
//!
//! - [`harness::privilege`]: fail loudly (never skip) when not root.
//! - [`harness::cgroup`]: throw-away cgroups and children started inside them.
//! - [`harness::netns`]: "remote hosts" in network namespaces joined by veth pairs.
//! - [`harness::probe`]: runs `netprobe` and reads what it did.
//!
//! Everything created here is removed on drop, which also runs on panic; names are
//! unique per slot/process so tests can run in parallel.

pub mod harness;
