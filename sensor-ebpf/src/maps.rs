//! Maps shared by all programs. User space finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use sensor_common::{
    counters::COUNTER_COUNT,
    flow::{AggKey, AggState, FLOW_SLOT_COUNT, FlowEvent},
    mark::{LocalFlow, LocalFlowKey},
    names::{NameKey, NameRule},
    policy::{Config, Liveness, MAX_CLASSES, TaintSource, VerdictKey, capacity},
    tag::{ExeKey, TaskTag},
};

/// Records to user space. 4 MiB = 32k records of 128 bytes: room for a burst
/// while the agent's drain task is descheduled.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// DNS answers to tagged processes (`dns.rs`): 1 MiB holds about 1,900
/// answers, what arrives between two drains (100 ms) at 19,000 answers/s.
#[map]
pub static DNS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Paths tagged processes exec'd (`process.rs`): 256 KiB holds about 250
/// execs, what arrives between two drains (100 ms) at 2,500 execs/s of
/// tagged processes.
#[map]
pub static EXEC_PATHS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Loss and map-full counters, indexed by `sensor_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Host-wide configuration (index 0).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The agent's heartbeat and what each class does without it (index 0).
#[map]
pub static LIVENESS: Array<Liveness> = Array::with_max_entries(1, 0);

/// Mode per class id (`sensor_common::policy::mode`).
#[map]
pub static MODES: Array<u8> = Array::with_max_entries(MAX_CLASSES, 0);

/// Processes that carry classes: tgid → classes.
#[map]
pub static TASKS: HashMap<u32, TaskTag> = HashMap::with_max_entries(capacity::TASKS, 0);

/// Selectors, evaluated at exec: cgroup id (the cgroup or any ancestor), uid,
/// executable identity → classes.
#[map]
pub static CGROUP_SELECTORS: HashMap<u64, u64> = HashMap::with_max_entries(capacity::SELECTORS, 0);
#[map]
pub static UID_SELECTORS: HashMap<u32, u64> = HashMap::with_max_entries(capacity::SELECTORS, 0);
#[map]
pub static EXE_SELECTORS: HashMap<ExeKey, u64> = HashMap::with_max_entries(capacity::SELECTORS, 0);

/// Destination verdicts per class, double-buffered: user space fills the
/// inactive one, then flips `Config::active_verdicts` in one map write.
#[map]
pub static VERDICTS_A: LpmTrie<VerdictKey, u8> = LpmTrie::with_max_entries(capacity::VERDICTS, 0);
#[map]
pub static VERDICTS_B: LpmTrie<VerdictKey, u8> = LpmTrie::with_max_entries(capacity::VERDICTS, 0);

/// Destinations that are never violations (collector, resolvers, control plane,
/// the host's own addresses), map-form addresses.
#[map]
pub static FAILSAFE: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(capacity::FAILSAFE, 0);

/// Taint sources: connecting there tags the process.
#[map]
pub static TAINT: LpmTrie<[u8; 16], TaintSource> = LpmTrie::with_max_entries(capacity::TAINT, 0);

/// Addresses processes learned from answers for names the policy rules on
/// (filled by the agent, read by `names.rs`).
#[map]
pub static NAMES: HashMap<NameKey, NameRule> = HashMap::with_max_entries(capacity::NAMES, 0);

/// Flows of tagged processes being tracked for their close record: the record
/// to send at close (`detail` accumulates bytes sent), in the slot its socket
/// cookie names (`cookie % FLOW_SLOT_COUNT`, see `flows.rs`). Consecutive
/// connects get consecutive cookies, so they use neighbouring, cache-warm
/// slots: no hashing, no allocation, no helper call. 4 MiB.
#[map]
pub static FLOW_SLOTS: Array<FlowEvent> = Array::with_max_entries(FLOW_SLOT_COUNT, 0);

/// Flows whose slot was taken by another open flow: socket cookie → record.
/// Not preallocated (BPF_F_NO_PREALLOC = 1): it holds only the overflow.
#[map]
pub static FLOWS: HashMap<u64, FlowEvent> = HashMap::with_max_entries(65_536, 1);

/// Aggregation state and cached verdicts of recent flows (see `agg.rs`).
#[map]
pub static AGG: LruHashMap<AggKey, AggState> = LruHashMap::with_max_entries(65_536, 0);

/// Local TCP connections opened by processes whose classes propagate over
/// local connections (`Config::local_classes`), noted by the egress backstop
/// as their SYN leaves, found by the accepting side (`sockets.rs`).
#[map]
pub static LOCAL_FLOWS: LruHashMap<LocalFlowKey, LocalFlow> =
    LruHashMap::with_max_entries(16_384, 0);

/// Non-zero once a tagged process opened an MPTCP connection (its socket is
/// marked): from then on the egress backstop looks for the MPTCP connection
/// behind an unmarked TCP socket's packet (a subflow the kernel opened).
#[map]
pub static MPTCP_MARKED: Array<u32> = Array::with_max_entries(1, 0);

/// Adds one to counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs are not preempted mid-run on one CPU.
        unsafe { *slot += 1 };
    }
}

/// The configuration, or the defaults before user space wrote one.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    // A reference, not a copy: copying the 80-byte struct compiles to a byte
    // loop on BPF, measurable on every connect of a tagged process.
    CONFIG.get(0)
}

/// One judgement's inputs and per-class results (see `decide.rs` for why in
/// a map): what the global functions of `decide.rs` and `names.rs` take
/// beside their scalar arguments and leave for their callers.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Judgement {
    pub judged: u64,
    pub violating: u64,
    pub worst: u64,
    pub enforce: u64,
    /// The name entry's masks, written by `names::lookup` (or cleared by
    /// `names::none`) before the judgement.
    pub name_allow: u64,
    pub name_deny: u64,
    /// The keys of the lookups, in map memory rather than on the stack (the
    /// connect and egress programs leave little of the 512 bytes to the
    /// global functions they call). The `FAILSAFE` key, laid out as
    /// `Key<[u8; 16]>`: the destination judged (map form, see
    /// `sensor_common::net`) at full length. The callers write `dst`.
    pub dst_prefix: u32,
    pub dst: [u8; 16],
    /// The `VERDICTS_*` key, laid out as `Key<VerdictKey>`.
    pub verdict_prefix: u32,
    pub verdict_class: [u8; 4],
    pub verdict_addr: [u8; 16],
    /// The `NAMES` key.
    pub name: NameKey,
}

impl Judgement {
    /// The `FAILSAFE` key in the judgement at `j`.
    ///
    /// # Safety
    /// `j` points to a live `SCRATCH` value.
    #[inline(always)]
    pub unsafe fn failsafe_key<'a>(j: *mut Self) -> &'a Key<[u8; 16]> {
        // SAFETY: `Key` is packed (alignment 1) and laid out as the fields
        // from `dst_prefix` on (checked below).
        unsafe { &*(&raw const (*j).dst_prefix).cast() }
    }

    /// The `VERDICTS_*` key in the judgement at `j`.
    ///
    /// # Safety
    /// As for [`Judgement::failsafe_key`].
    #[inline(always)]
    pub unsafe fn verdict_key<'a>(j: *mut Self) -> &'a Key<VerdictKey> {
        // SAFETY: as above, from `verdict_prefix` on.
        unsafe { &*(&raw const (*j).verdict_prefix).cast() }
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(Judgement, dst) == offset_of!(Judgement, dst_prefix) + 4);
    assert!(size_of::<Key<[u8; 16]>>() == 20);
    assert!(offset_of!(Judgement, verdict_class) == offset_of!(Judgement, verdict_prefix) + 4);
    assert!(offset_of!(Judgement, verdict_addr) == offset_of!(Judgement, verdict_prefix) + 8);
    assert!(size_of::<Key<VerdictKey>>() == 24);
};

/// Scratch space for `decide::decide` (one per `emit::slot` per CPU).
#[map]
pub static SCRATCH: PerCpuArray<Judgement> =
    PerCpuArray::with_max_entries(crate::emit::slot::COUNT, 0);

/// A socket's address as a plain number (see `backstop::user_socket`).
#[map]
pub static SOCK_ADDR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Scratch records, one per `emit::slot` per CPU.
#[map]
pub static RECORDS: PerCpuArray<FlowEvent> =
    PerCpuArray::with_max_entries(crate::emit::slot::COUNT, 0);
