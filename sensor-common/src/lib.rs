//! The kernel/user boundary of Residency Sensor.
//!
//! Every type that crosses between the eBPF programs (`sensor-ebpf`) and the agent
//! (`sensor-user`) is defined here once, `#[repr(C)]`, with explicit padding and a
//! size assertion. The crate is `no_std` so the kernel side can use it; the `user`
//! feature adds the `aya::Pod` impls and conversions to std types.
//!
//! - [`flow`]: records the kernel sends up (flows, tags, closes).
//! - [`policy`]: verdict codes, modes, the verdict/failsafe/taint map keys, config.
//! - [`mark`]: classes carried by sockets (socket-local storage).
//! - [`tag`]: which processes carry which data classes, and why.
//! - [`counters`]: loss and map-full counters.
//! - [`net`]: address families, protocols, and the 16-byte address form.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod counters;
pub mod flow;
pub mod mark;
pub mod net;
pub mod policy;
pub mod tag;

/// Implements `aya::Pod` for plain-data boundary types (user side only).
#[cfg(feature = "user")]
macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: repr(C), Copy, explicit padding, no pointers: every bit
        // pattern of the type's size is a valid value.
        unsafe impl aya::Pod for $t {}
    )*};
}
#[cfg(feature = "user")]
pub(crate) use pod;
