//! Indices into the kernel's per-CPU `COUNTERS` array.
//!
//! Every condition under which the kernel could not do what it should (a record it
//! could not reserve, a map that was full) is counted here, so user space can
//! report the loss explicitly: silence must never look like compliance.

/// A record could not be reserved in the `EVENTS` ring buffer (it was full).
pub const RINGBUF_RESERVE_FAILED: u32 = 0;
/// A process should have been tagged but the `TASKS` map was full: the process
/// runs untagged (its connects are not judged). The agent reports this as an
/// explicit gap; see the README ("When a map is full").
pub const TAG_MAP_FULL: u32 = 1;
/// A flow of a tagged process could not be tracked for byte counting (the `FLOWS`
/// map was full): its close record will be missing.
pub const FLOW_MAP_FULL: u32 = 2;
/// An aggregation entry could not be stored (LRU map insert failed): the record
/// was sent un-aggregated, so nothing is lost.
pub const AGG_MAP_FULL: u32 = 3;
/// Violations seen (before aggregation), all classes.
pub const VIOLATIONS: u32 = 4;
/// Calls denied with EPERM.
pub const DENIED: u32 = 5;
/// A socket of a tagged process could not be marked (the kernel refused its
/// socket-local storage: memory, `net.core.optmem_max`): its packets are not
/// judged by the egress backstop, only at connect/sendmsg. The agent logs it.
pub const MARK_FAILED: u32 = 6;
/// Number of counters; the size of the `COUNTERS` map.
pub const COUNTER_COUNT: u32 = 8;

/// Human names, indexed like the counters (for logs and metrics).
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "ringbuf_reserve_failed",
    "tag_map_full",
    "flow_map_full",
    "agg_map_full",
    "violations",
    "denied",
    "mark_failed",
    "reserved7",
];
