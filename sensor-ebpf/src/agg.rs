//! Repeated flows of one process to one destination (`AGG`, keyed by process
//! and destination): folded into one record per aggregation interval, and
//! judged once. The verdict reached is kept with the aggregation state and
//! reused while the policy epoch and the process's classes are unchanged, so
//! a repeat skips the failsafe and verdict tries (an LPM lookup in a
//! 500,000-prefix trie is several hundred ns of cache misses).

use sensor_common::{
    counters::AGG_MAP_FULL,
    flow::{AggKey, AggState},
};

use crate::maps::{AGG, count};

/// A verdict for one destination of one process.
#[derive(Clone, Copy)]
pub struct Decision {
    /// Classes the records report: the violating ones, or all judged ones.
    pub reported: u64,
    /// Worst verdict (`sensor_common::policy::verdict`).
    pub verdict: u8,
    /// Action (`sensor_common::policy::action`).
    pub action: u8,
    /// Policy generation that decided.
    pub generation: u32,
}

impl Decision {
    /// Nothing to judge or report (a failsafe destination, every class off).
    pub const NOTHING: Self = Self {
        reported: 0,
        verdict: 0,
        action: 0,
        generation: 0,
    };

    /// The verdict cached in `state`.
    #[inline(always)]
    pub fn cached(state: &AggState) -> Self {
        Self {
            reported: state.reported,
            verdict: state.verdict,
            action: state.action,
            generation: state.generation,
        }
    }
}

/// Whether the verdict cached in `state` still holds for a process carrying
/// `classes`: reached under the policy epoch in force, for the same classes,
/// with a live name entry for the destination or without one as now (the
/// agent bumps the epoch when it adds or changes an entry; an entry's expiry
/// is seen here).
#[inline(always)]
pub fn holds(state: &AggState, epoch: u32, classes: u64, named: u64) -> bool {
    state.epoch == epoch && state.classes == classes && u64::from(state.named) == named
}

/// Counts one more occurrence under a verdict that holds. Returns the count the
/// record of this occurrence reports, or 0 when it was folded (within
/// `interval_ns` of the last record).
#[inline(always)]
pub fn fold(state: &mut AggState, now: u64, interval_ns: u64) -> u32 {
    if now.wrapping_sub(state.last_ns) < interval_ns {
        state.suppressed = state.suppressed.wrapping_add(1);
        0
    } else {
        let n = state.suppressed.wrapping_add(1);
        state.last_ns = now;
        state.suppressed = 0;
        n
    }
}

/// Stores a fresh verdict for `key` (over the stale state when there is one).
/// A failed insert is counted: the record is still sent, only not folded.
#[inline(always)]
pub fn remember(
    key: &AggKey,
    stale: Option<*mut AggState>,
    d: &Decision,
    epoch: u32,
    classes: u64,
    named: u64,
    now: u64,
) {
    match stale {
        Some(state) => {
            // SAFETY: pointer from a successful lookup, valid for this run.
            // Field by field: a struct copy compiles to a byte loop on BPF.
            let state = unsafe { &mut *state };
            state.last_ns = now;
            state.classes = classes;
            state.reported = d.reported;
            state.suppressed = 0;
            state.epoch = epoch;
            state.generation = d.generation;
            state.verdict = d.verdict;
            state.action = d.action;
            state.named = named as u8;
        }
        None => {
            let fresh = AggState {
                last_ns: now,
                classes,
                reported: d.reported,
                suppressed: 0,
                epoch,
                generation: d.generation,
                verdict: d.verdict,
                action: d.action,
                named: named as u8,
                _pad: 0,
            };
            if AGG.insert(key, fresh, 0).is_err() {
                count(AGG_MAP_FULL);
            }
        }
    }
}
