//! The verdict for one destination of one process, shared by the socket hooks.
//!
//! Order: untagged and not connecting to a taint source → allow at once (one
//! TASKS lookup, and one TAINT lookup only while taint sources exist). Loopback
//! → allow, unrecorded. A verdict this process got for this destination under
//! the same policy epoch and classes (cached in `AGG`, see `agg.rs`) → reused.
//! Otherwise failsafe destinations → allow, unrecorded; every class the process
//! carries whose mode is not off is judged against its verdict trie; any
//! violating class in enforce mode denies.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_skc_to_mptcp_sock},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use sensor_common::{
    flow::{AggKey, FlowEvent, FlowKind},
    net::{AF_INET, IPPROTO_MPTCP, IPPROTO_TCP},
    policy::{Config, MAX_CLASSES, VERDICT_CLASS_BITS, action, mode, verdict},
    tag::reason,
};

use crate::{
    agg::{self, Decision},
    emit::{Destination, fill_flow, slot, submit, task_record, task_record_at},
    flows,
    maps::{
        AGG, FAILSAFE, Judgement, LIVENESS, MODES, MPTCP_MARKED, SCRATCH, TAINT, TASKS, VERDICTS_A,
        VERDICTS_B, config,
    },
    marks, names,
    process::set_classes,
    tally::tally,
};

/// sock_addr return codes.
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

#[inline(always)]
pub fn is_loopback(dst: &Destination) -> bool {
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
    if !set_classes(tgid, all) {
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

/// Classes whose declared agent-loss behaviour is in effect now: the agent has
/// not heartbeated within the timeout (see `Liveness` in sensor-common).
/// Also carries the classes judged violating whatever the destination (a
/// packet with a source route goes further than its destination says; a raw
/// or packet socket has no destination to judge).
#[derive(Clone, Copy)]
pub struct Loss {
    /// Fail closed: only failsafe destinations.
    pub deny: u64,
    /// Fail open: reported, never denied.
    pub allow: u64,
    /// Verdict `DENY` whatever the tries say (no trie or failsafe lookup),
    /// mode unchanged.
    pub forced: u64,
}

impl Loss {
    /// Whether the verdict depends on something other than the policy (it
    /// must then be neither cached nor taken from a cache).
    #[inline(always)]
    pub fn any(&self) -> bool {
        self.deny | self.allow | self.forced != 0
    }
}

#[inline(always)]
pub fn agent_loss(classes: u64, now: u64) -> Loss {
    let none = Loss {
        deny: 0,
        allow: 0,
        forced: 0,
    };
    let Some(l) = LIVENESS.get(0) else {
        return none;
    };
    if l.timeout_ns == 0 || (l.deny_classes | l.allow_classes) & classes == 0 {
        return none;
    }
    if now.saturating_sub(l.heartbeat_ns) <= l.timeout_ns {
        return none;
    }
    Loss {
        deny: l.deny_classes & classes,
        allow: l.allow_classes & classes,
        forced: 0,
    }
}

/// Whether any of `classes` is enforced now: its mode is enforce (and the
/// agent's loss does not fail it open), or the agent's loss fails it closed.
/// For what has no destination to judge (an answer the agent cannot read).
#[inline(always)]
pub fn any_enforced(classes: u64, now: u64) -> bool {
    let loss = agent_loss(classes, now);
    if loss.deny != 0 {
        return true;
    }
    for class in 0..MAX_CLASSES {
        if classes >> class == 0 {
            break;
        }
        let bit = 1u64 << class;
        if classes & bit == 0 || loss.allow & bit != 0 {
            continue;
        }
        if MODES.get(class).copied() == Some(mode::ENFORCE) {
            return true;
        }
    }
    false
}

/// Judges `dst` for a process carrying `classes` against the verdict tries,
/// and by the name the process resolved `dst` from for the classes the name
/// entry left in scratch slot `slot` by `names::lookup` (or cleared by
/// `names::none`) rules on: a denying name wins over the address, then an
/// allowing one.
/// `None`: nothing to judge or record (a failsafe destination, or every class
/// the process carries is off). `slot`: the scratch slot of the calling
/// context (`emit::slot`).
#[inline(always)]
pub fn decide(
    cfg: &Config,
    classes: u64,
    dst: &Destination,
    loss: Loss,
    slot: u32,
) -> Option<Decision> {
    let scratch = SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a valid per-CPU map value for this program run.
    // A plain store: word by word (a volatile array store goes byte by byte).
    unsafe { (*scratch).dst = dst.key };
    if residency_decide(classes, loss.forced, loss.deny, loss.allow, slot) == 0 {
        return None;
    }
    // SAFETY: as above; field by field (a struct copy goes through the stack).
    let (judged, violating, worst, enforce) = unsafe {
        (
            read_volatile(&raw const (*scratch).judged),
            read_volatile(&raw const (*scratch).violating),
            read_volatile(&raw const (*scratch).worst),
            read_volatile(&raw const (*scratch).enforce),
        )
    };
    let (reported, action) = if violating == 0 {
        (judged, action::NONE)
    } else if enforce != 0 {
        (violating, action::DENIED)
    } else {
        (violating, action::REPORTED)
    };
    Some(Decision {
        reported,
        verdict: worst as u8,
        action,
        generation: cfg.generation,
    })
}

/// [`decide`]'s class loop as a global BPF function: the verifier checks it
/// once, on its own, instead of once per state of every path that reaches a
/// judgement (inlined, the loop made up most of the connect, accept and
/// egress programs' instruction budget, and any addition before it pushed
/// them past the 1M limit). Scalar arguments; the destination and the name
/// masks come in scratch slot `slot`, the per-class results go out in it.
/// Returns 1 when something was judged, 0 for a failsafe destination or when
/// every class the process carries is off.
///
/// The per-class results are read and written with volatile accesses to map
/// memory: the verifier does not track map memory, so the states of different
/// paths through one iteration are equal at the next and get pruned. Kept in
/// registers, each iteration doubled the states and a 64-class loop hit the
/// 1M-instruction limit (E2BIG, seen on 6.18).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn residency_decide(
    classes: u64,
    forced: u64,
    deny: u64,
    allow: u64,
    slot: u32,
) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: a valid per-CPU map value for this program run (all accesses
    // to it below).
    unsafe {
        write_volatile(&raw mut (*scratch).dst_prefix, 128);
        if forced == 0 && FAILSAFE.get(Judgement::failsafe_key(scratch)).is_some() {
            return 0;
        }
        write_volatile(&raw mut (*scratch).verdict_prefix, VERDICT_CLASS_BITS + 128);
        (*scratch).verdict_addr = (*scratch).dst;
        // Classes failing closed or forced are denied whatever the address,
        // as are those a name denies.
        write_volatile(&raw mut (*scratch).judged, 0);
        write_volatile(&raw mut (*scratch).violating, 0);
        write_volatile(&raw mut (*scratch).worst, 0);
        write_volatile(&raw mut (*scratch).enforce, 0);
        let name_deny = read_volatile(&raw const (*scratch).name_deny);
        write_volatile(&raw mut (*scratch).name_deny, name_deny | forced | deny);
    }
    let unknown_is_violation = cfg.unknown_is_violation != 0;
    let active_b = cfg.active_verdicts != 0;
    for class in 0..MAX_CLASSES {
        if classes >> class == 0 {
            break;
        }
        let bit = 1u64 << class;
        if classes & bit == 0 {
            continue;
        }
        let mut m = MODES.get(class).copied().unwrap_or(mode::OFF);
        if m == mode::OFF {
            continue;
        }
        if deny & bit != 0 {
            m = mode::ENFORCE;
        } else if allow & bit != 0 && m == mode::ENFORCE {
            m = mode::MONITOR;
        }
        // SAFETY: as above.
        let v = if unsafe { read_volatile(&raw const (*scratch).name_deny) } & bit != 0 {
            verdict::DENY
        } else {
            // SAFETY: as above.
            let found = unsafe {
                write_volatile(&raw mut (*scratch).verdict_class, class.to_be_bytes());
                let key = Judgement::verdict_key(scratch);
                if active_b {
                    VERDICTS_B.get(key)
                } else {
                    VERDICTS_A.get(key)
                }
            };
            let found = found.copied().unwrap_or(verdict::UNKNOWN);
            // Allowed by name: selected without a branch.
            // SAFETY: as above.
            let by_name =
                (unsafe { read_volatile(&raw const (*scratch).name_allow) } >> class) as u8 & 1;
            let select = 0u8.wrapping_sub(by_name);
            (found & !select) | (verdict::ALLOW & select)
        };
        let bad = v == verdict::DENY || (v == verdict::UNKNOWN && unknown_is_violation);
        // SAFETY: as above.
        unsafe {
            let judged = read_volatile(&raw const (*scratch).judged);
            write_volatile(&raw mut (*scratch).judged, judged | bit);
            let worst = read_volatile(&raw const (*scratch).worst);
            if bad {
                let violating = read_volatile(&raw const (*scratch).violating);
                write_volatile(&raw mut (*scratch).violating, violating | bit);
                if worst != u64::from(verdict::DENY) {
                    write_volatile(&raw mut (*scratch).worst, u64::from(v));
                }
                if m == mode::ENFORCE {
                    write_volatile(&raw mut (*scratch).enforce, 1);
                }
            } else if worst == u64::from(verdict::NONE) {
                write_volatile(&raw mut (*scratch).worst, u64::from(v));
            }
        }
    }
    // SAFETY: as above.
    u32::from(unsafe { read_volatile(&raw const (*scratch).judged) } != 0)
}

/// A flow record of the current call to `dst` under decision `d`, in the
/// scratch slot.
#[inline(always)]
fn flow_record(
    ctx: &SockAddrContext,
    kind: FlowKind,
    dst: &Destination,
    d: &Decision,
    now: u64,
    msk: *mut c_void,
) -> Option<&'static mut FlowEvent> {
    let ev = task_record_at(slot::PROCESS, kind as u8, now)?;
    ev.classes = d.reported;
    ev.verdict = d.verdict;
    ev.action = d.action;
    ev.policy_generation = d.generation;
    fill_flow(ctx, ev, dst);
    if !msk.is_null() {
        ev.sock_protocol = IPPROTO_MPTCP;
    }
    Some(ev)
}

/// The MPTCP connection behind a TCP connect (null for plain TCP and other
/// protocols): an MPTCP connect reaches the hook with its first subflow, a
/// TCP socket. Asked once per judged connect.
#[inline(always)]
fn mptcp_connection(ctx: &SockAddrContext, dst: &Destination) -> *mut c_void {
    if dst.protocol != IPPROTO_TCP {
        return core::ptr::null_mut();
    }
    // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs;
    // the helper checks the socket.
    unsafe { bpf_skc_to_mptcp_sock((*ctx.sock_addr).__bindgen_anon_1.sk.cast()) }.cast()
}

/// Judges the current process's call to `dst`; returns the sock_addr verdict.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, kind: FlowKind, dst: &Destination) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let tagged = unsafe { TASKS.get(tgid) }.map(|t| t.classes).unwrap_or(0);
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if is_loopback(dst) {
        // Never judged; marked when its classes propagate over local
        // connections, so the backstop notes the connection for the acceptor.
        if tagged & cfg.local_classes != 0 {
            // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs.
            let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
            let _ = marks::mark_current(sk.cast(), tagged);
        }
        return ALLOW;
    }
    let classes = if cfg.has_taint != 0 {
        apply_taint(tgid, tagged, dst)
    } else {
        tagged
    };
    if classes == 0 {
        return ALLOW;
    }
    let msk = mptcp_connection(ctx, dst);
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let loss = agent_loss(classes, now);
    // A verdict reached under a declared agent-loss behaviour is neither cached
    // nor taken from the cache: it holds only while the agent is away.
    let interval = if loss.any() { 0 } else { cfg.agg_interval_ns };
    // The epoch this judgement works under, read once and first: if user
    // space changes the policy meanwhile, what is cached below carries the old
    // epoch and is judged again at the next call.
    // SAFETY: a field of the live CONFIG value.
    let epoch = unsafe { core::ptr::addr_of!(cfg.epoch).read_volatile() };
    let named = names::lookup(tgid, &dst.key, Some(now), slot::PROCESS);
    let key = AggKey {
        tgid,
        port: dst.port,
        protocol: dst.protocol,
        _pad: 0,
        addr: dst.key,
    };
    let cached = if interval != 0 {
        AGG.get_ptr_mut(key)
    } else {
        None
    };
    let (d, n) = match cached {
        // SAFETY: pointer from a successful lookup, valid for this run.
        Some(state) if agg::holds(unsafe { &*state }, epoch, classes, named) => {
            // SAFETY: as above.
            let state = unsafe { &mut *state };
            (Decision::cached(state), agg::fold(state, now, interval))
        }
        stale => {
            if let Some(state) = stale {
                // SAFETY: as above.
                report_folded(ctx, kind, dst, unsafe { &mut *state }, now, msk);
            }
            let Some(d) = decide(cfg, classes, dst, loss, slot::PROCESS) else {
                mark_socket(ctx, classes, dst, &Decision::NOTHING, epoch, loss, msk);
                return ALLOW;
            };
            if interval != 0 {
                agg::remember(&key, stale, &d, epoch, classes, named, now);
            }
            (d, 1)
        }
    };
    mark_socket(ctx, classes, dst, &d, epoch, loss, msk);
    let deny = d.action == action::DENIED;
    // Folded and denied: a denied socket has no flow to track.
    if n != 0 || !deny {
        record_call(ctx, kind, dst, &d, n, now, msk);
    }
    // Counted last: its branches then multiply no later path the verifier
    // walks (the connect programs are near its limit).
    tally(classes, &d);
    if deny { DENY } else { ALLOW }
}

/// The call's flow record (tracked for its close unless denied), sent
/// unless it was folded (`n` 0).
#[inline(always)]
fn record_call(
    ctx: &SockAddrContext,
    kind: FlowKind,
    dst: &Destination,
    d: &Decision,
    n: u32,
    now: u64,
    msk: *mut c_void,
) {
    let Some(ev) = flow_record(ctx, kind, dst, d, now, msk) else {
        return;
    };
    if d.action != action::DENIED {
        flows::track(ev);
    }
    if n != 0 {
        ev.count = n;
        submit(ev);
    }
}

/// The socket carries the process's classes from now on, with the verdict
/// just reached: the egress backstop judges its packets again only when their
/// real destination, the policy or the classes differ.
#[inline(always)]
fn mark_socket(
    ctx: &SockAddrContext,
    classes: u64,
    dst: &Destination,
    d: &Decision,
    epoch: u32,
    loss: Loss,
    msk: *mut c_void,
) {
    // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let mark = if dst.protocol == IPPROTO_TCP {
        // A TCP socket is marked when a tagged process first writes to it
        // (`sockets.rs`), before its first byte is queued: creating the mark
        // here would cost every tagged connect a socket-storage allocation
        // (~0.8 µs) and guard nothing more (a handshake carries no data). An
        // existing mark (a socket bound by a tagged process) gets the verdict.
        let existing = marks::get(sk.cast());
        // An MPTCP connection: its connection-level socket is marked, so
        // that the egress backstop judges every subflow the kernel opens for
        // it later (to addresses the peer announces) by its own destination.
        if !msk.is_null()
            && marks::mark_current(msk, classes).is_some()
            && let Some(flag) = MPTCP_MARKED.get_ptr_mut(0)
        {
            // SAFETY: a map value; a racing write stores the same value.
            unsafe { write_volatile(flag, 1) };
        }
        if let Some(m) = existing {
            m.classes |= classes;
            Some(m)
        } else {
            None
        }
    } else {
        marks::mark_current(sk.cast(), classes)
    };
    if let Some(m) = mark {
        if loss.any() {
            m.judged_classes = 0;
        } else {
            marks::remember(m, &dst.key, dst.port, d, epoch);
        }
    }
}

/// Occurrences folded under a verdict that no longer holds (the policy or the
/// process's classes changed since) are reported with that verdict before the
/// destination is judged again: a policy change loses no count. The record describes
/// the current call's process and destination; it has no socket (cookie 0).
#[inline(always)]
fn report_folded(
    ctx: &SockAddrContext,
    kind: FlowKind,
    dst: &Destination,
    state: &mut sensor_common::flow::AggState,
    now: u64,
    msk: *mut c_void,
) {
    let folded = state.suppressed;
    if folded == 0 {
        return;
    }
    state.suppressed = 0;
    let Some(ev) = flow_record(ctx, kind, dst, &Decision::cached(state), now, msk) else {
        return;
    };
    ev.cookie = 0;
    ev.count = folded;
    submit(ev);
}
