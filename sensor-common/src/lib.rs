//! The kernel/user boundary of Residency Sensor.
//!
//! Every type that crosses between the eBPF programs (`sensor-ebpf`) and the agent
//! (`sensor-user`) is defined here once, `#[repr(C)]`, with explicit padding and a
//! size assertion. The crate is `no_std` so the kernel side can use it; the `user`
//! feature adds the `aya::Pod` impls and conversions to std types.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod counters;
pub mod flow;
pub mod net;
