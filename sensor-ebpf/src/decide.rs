//! The verdict for one destination of one process, shared by the socket hooks.
//!
//! Order: untagged and not connecting to a taint source → allow at once (one
//! TASKS lookup, and one TAINT lookup only while taint sources exist). Loopback and failsafe destinations → allow,
//! unrecorded. Otherwise every class the process carries whose mode is not off is
//! judged against its verdict trie; any violating class in enforce mode denies.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid, maps::lpm_trie::Key};
use sensor_common::{
    counters::{DENIED, TAG_MAP_FULL, VIOLATIONS},
    flow::FlowKind,
    net::AF_INET,
    policy::{MAX_CLASSES, VERDICT_CLASS_BITS, VerdictKey, action, mode, verdict},
    tag::{TaskTag, reason},
};

use crate::{
    emit::{Destination, aggregate, fill_flow, slot, submit, task_record, track_flow},
    maps::{
        FAILSAFE, Judgement, MODES, SCRATCH, TAINT, TASKS, VERDICTS_A, VERDICTS_B, config, count,
    },
};

/// sock_addr return codes.
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

#[inline(always)]
fn is_loopback(dst: &Destination) -> bool {
    if dst.family == AF_INET {
        return dst.addr[0] == 127;
    }
    let a = &dst.addr;
    a[..15].iter().all(|b| *b == 0) && a[15] == 1
}

/// Tags the current process with the taint source's classes when `dst` is one.
/// Returns the process's classes afterwards.
#[inline(always)]
fn apply_taint(tgid: u32, classes: u64, dst: &Destination) -> u64 {
    let Some(src) = TAINT.get(Key::new(128, dst.key)) else {
        return classes;
    };
    if dst.port < src.port_lo || dst.port > src.port_hi || src.classes & !classes == 0 {
        return classes;
    }
    let added = src.classes & !classes;
    let all = classes | src.classes;
    if TASKS.insert(tgid, TaskTag { classes: all }, 0).is_err() {
        count(TAG_MAP_FULL);
        return classes;
    }
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Tag as u8) else {
        return all;
    };
    ev.classes = added;
    ev.reason = reason::TAINT;
    ev.family = dst.family;
    ev.protocol = dst.protocol;
    ev.remote_addr = dst.addr;
    ev.remote_port = dst.port;
    ev.policy_generation = config().map_or(0, |c| c.generation);
    submit(ev);
    all
}

/// Judges the current process's call to `dst`; returns the sock_addr verdict.
#[inline(always)]
pub fn judge<C: EbpfContext>(ctx: &C, kind: FlowKind, dst: &Destination) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let tagged = unsafe { TASKS.get(tgid) }.map(|t| t.classes).unwrap_or(0);
    if is_loopback(dst) {
        return ALLOW;
    }
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let classes = if cfg.has_taint != 0 {
        apply_taint(tgid, tagged, dst)
    } else {
        tagged
    };
    if classes == 0 {
        return ALLOW;
    }
    if FAILSAFE.get(Key::new(128, dst.key)).is_some() {
        return ALLOW;
    }
    // The per-class results live in a per-CPU scratch map, read and written with
    // volatile accesses: the verifier does not track map memory, so the states
    // of different paths through one iteration are equal at the next and get
    // pruned. Kept in registers, each iteration doubled the states and a 64-class
    // loop hit the 1M-instruction limit (E2BIG, seen on 6.18).
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return ALLOW;
    };
    // SAFETY: a valid per-CPU map value for this program run.
    unsafe { write_volatile(scratch, Judgement::ZERO) };
    let mut key = VerdictKey {
        class_be: [0; 4],
        addr: dst.key,
    };
    for class in 0..MAX_CLASSES {
        if classes >> class == 0 {
            break;
        }
        let bit = 1u64 << class;
        if classes & bit == 0 {
            continue;
        }
        let m = MODES.get(class).copied().unwrap_or(mode::OFF);
        if m == mode::OFF {
            continue;
        }
        key.class_be = class.to_be_bytes();
        let lpm = Key::new(VERDICT_CLASS_BITS + 128, key);
        let found = if cfg.active_verdicts == 0 {
            VERDICTS_A.get(&lpm)
        } else {
            VERDICTS_B.get(&lpm)
        };
        let v = found.copied().unwrap_or(verdict::UNKNOWN);
        let bad = v == verdict::DENY || (v == verdict::UNKNOWN && cfg.unknown_is_violation != 0);
        // SAFETY: as above.
        unsafe {
            let mut j = read_volatile(scratch);
            j.judged |= bit;
            if bad {
                j.violating |= bit;
                if j.worst != u64::from(verdict::DENY) {
                    j.worst = u64::from(v);
                }
                if m == mode::ENFORCE {
                    j.enforce = 1;
                }
            } else if j.worst == u64::from(verdict::NONE) {
                j.worst = u64::from(v);
            }
            write_volatile(scratch, j);
        }
    }
    // SAFETY: as above.
    let j = unsafe { read_volatile(scratch) };
    let (judged, violating, worst, enforce) =
        (j.judged, j.violating, j.worst as u8, j.enforce != 0);
    if judged == 0 {
        return ALLOW;
    }
    let act = if violating == 0 {
        action::NONE
    } else if enforce {
        action::DENIED
    } else {
        action::REPORTED
    };
    if violating != 0 {
        count(VIOLATIONS);
        if enforce {
            count(DENIED);
        }
    }
    let Some(ev) = task_record(slot::PROCESS, kind as u8) else {
        return if enforce { DENY } else { ALLOW };
    };
    ev.classes = if violating != 0 { violating } else { judged };
    ev.verdict = worst;
    ev.action = act;
    ev.policy_generation = cfg.generation;
    fill_flow(ctx, ev, dst);
    if !enforce {
        track_flow(ev);
    }
    let n = aggregate(tgid, dst, act, ev.ktime_ns, cfg.agg_interval_ns);
    if n != 0 {
        ev.count = n;
        submit(ev);
    }
    if enforce { DENY } else { ALLOW }
}
