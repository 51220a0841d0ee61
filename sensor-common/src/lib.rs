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
//! - [`dns`]: DNS answers to tagged processes.
//! - [`exec`]: the paths tagged processes exec'd.
//! - [`names`]: addresses learned from answers for names the policy rules on.
//! - [`net`]: address families, protocols, and the 16-byte address form.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod counters;
pub mod dns;
pub mod exec;
pub mod flow;
pub mod mark;
pub mod names;
pub mod net;
pub mod policy;
pub mod tag;

/// Reads a plain-data record of type `T` from ring-buffer bytes (`None`
/// when they are too short). `T` must be `repr(C)` plain data for which
/// every bit pattern is valid (the boundary types here).
pub fn read_record<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; callers pass plain-data types whose every bit
    // pattern is valid; read_unaligned because the ring buffer gives no
    // alignment promise.
    Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

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
