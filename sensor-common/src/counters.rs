//! Indices into the kernel's per-CPU `COUNTERS` array.
//!
//! Every condition under which the kernel could not do what it should (a record it
//! could not reserve, a map that was full) is counted here, so user space can
//! report the loss explicitly: silence must never look like compliance.

/// A flow record could not be reserved in the `EVENTS` ring buffer (it was full).
pub const RINGBUF_RESERVE_FAILED: u32 = 0;
/// Number of counters; the size of the `COUNTERS` map.
pub const COUNTER_COUNT: u32 = 8;
