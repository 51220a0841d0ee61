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
/// A judgement could not be counted per class: the `CLASS_TALLY` map was full
/// (its counts for the window are then short; the attestation says so).
pub const TALLY_MAP_FULL: u32 = 7;
/// A DNS answer to a tagged process could not be passed up (the `DNS` ring
/// buffer was full): the names of the flows it answered are missing from
/// their records.
pub const DNS_LOST: u32 = 8;
/// The path a tagged process exec'd could not be passed up (the
/// `EXEC_PATHS` ring buffer was full): its records name its executable only
/// if it still runs when they are read.
pub const EXEC_PATH_LOST: u32 = 9;
/// Number of counters; the size of the `COUNTERS` map.
pub const COUNTER_COUNT: u32 = 10;

/// Human names, indexed like the counters (for logs and metrics).
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "ringbuf_reserve_failed",
    "tag_map_full",
    "flow_map_full",
    "agg_map_full",
    "violations",
    "denied",
    "mark_failed",
    "tally_map_full",
    "dns_lost",
    "exec_path_lost",
];

/// Distinct keys the `CLASS_TALLY` map holds: combinations of classes,
/// outcome and policy generation (the agent removes those of generations
/// no longer in force once it has read them).
pub const TALLY_CAPACITY: u32 = 4096;

/// Key of the per-class judgement counters (`CLASS_TALLY`, a per-CPU hash
/// whose values count judgements): what one judgement of an operation of a
/// tagged process was, by class bit sets, so that the kernel updates one
/// entry per judgement and user space splits the counts per class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TallyKey {
    /// The classes the operation was judged for.
    pub judged: u64,
    /// Of them, the classes it violated (0: none).
    pub violating: u64,
    /// The policy generation the judgement was made under.
    pub generation: u32,
    /// 1: the operation was denied.
    pub denied: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
crate::pod!(TallyKey);

const _: () = assert!(core::mem::size_of::<TallyKey>() == 24);
