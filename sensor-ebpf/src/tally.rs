//! Per-class judgement counters: every judgement of an operation of a tagged
//! process is counted once, whether or not its record reaches user space (a
//! folded repeat, a full ring buffer), in `CLASS_TALLY` by the classes it was
//! judged for, those it violated, and whether it was denied. One map update
//! per judgement, no loop over classes: user space splits the counts per
//! class when it reads them (the window attestations' kernel counts).

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::PerCpuHashMap};
use sensor_common::{
    counters::{DENIED, TALLY_CAPACITY, TALLY_MAP_FULL, TallyKey, VIOLATIONS},
    policy::action,
};

use crate::{agg::Decision, maps::count};

/// Judgements per (classes judged, classes violated, generation, denied).
#[map]
pub static CLASS_TALLY: PerCpuHashMap<TallyKey, u64> =
    PerCpuHashMap::with_max_entries(TALLY_CAPACITY, 0);

/// Counts a judgement of an operation judged for `judged` with outcome `d`:
/// per class, and (violations) in the host-wide counters.
#[inline(always)]
pub fn tally(judged: u64, d: &Decision) {
    let _ = residency_tally(judged, d.reported, d.generation, u32::from(d.action));
}

/// [`tally`]'s body as a global BPF function: the verifier checks it once,
/// on its own, instead of once per state of every path that reaches it
/// (inlined, it pushed the connect programs past the verifier's
/// 1M-instruction budget). Scalar arguments and a scalar result, as global
/// functions must have.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn residency_tally(judged: u64, reported: u64, generation: u32, act: u32) -> u32 {
    let violating = if act == u32::from(action::NONE) {
        0
    } else {
        count(VIOLATIONS);
        if act == u32::from(action::DENIED) {
            count(DENIED);
        }
        reported
    };
    let key = TallyKey {
        judged,
        violating,
        generation,
        denied: u8::from(act == u32::from(action::DENIED)),
        _pad: [0; 3],
    };
    match CLASS_TALLY.get_ptr_mut(key) {
        // SAFETY: this CPU's value; programs are not preempted mid-run.
        Some(n) => unsafe { *n += 1 },
        // Full, or another CPU created the key this instant: not counted,
        // and said so.
        None => {
            if CLASS_TALLY
                .insert(key, 1u64, u64::from(BPF_NOEXIST))
                .is_err()
            {
                count(TALLY_MAP_FULL);
            }
        }
    }
    0
}
