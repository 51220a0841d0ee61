//! Maps shared by all programs. User space finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use sensor_common::counters::COUNTER_COUNT;

/// Flow records to user space. 4 MiB = 32k records of 128 bytes: room for a
/// burst while the agent's drain task is descheduled.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Loss and map-full counters, indexed by `sensor_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Adds one to counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU's program instance touches it while
        // it runs (programs are not preempted mid-run on the same CPU).
        unsafe { *slot += 1 };
    }
}
