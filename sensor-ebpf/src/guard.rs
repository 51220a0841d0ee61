//! What cannot be judged by destination is refused (enforce) or reported
//! (monitor) for tagged processes:
//!
//! - `sock_create` (cgroup): raw sockets and ICMP sockets (ping sockets send
//!   with `sendto` and no sendmsg hook sees them), unless the policy allows
//!   them for every class the process carries (`Config::raw_allowed`).
//! - `bind4`/`bind6` (cgroup): a socket a tagged process binds (a listener)
//!   is marked, so the backstop refuses its handshakes with denied peers and
//!   its accepted sockets inherit the mark.
//! - Source routes (`IP_OPTIONS`, `IPV6_RTHDR`, set with setsockopt or per
//!   packet with a cmsg) are judged per packet by the egress backstop: a cgroup
//!   setsockopt program would cost every setsockopt() on the host a socket lock
//!   (~1% of a connect in `cargo xtask bench`) and still miss the cmsg.
//! - `syscalls:sys_enter_socket`: AF_PACKET sockets bypass the IP stack and
//!   every cgroup hook; there is no hook to refuse one here (no LSM), so they
//!   are reported and, for classes with `packet_sockets = "kill"` in enforce
//!   mode, the process is killed before the call returns.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_send_signal},
    macros::{cgroup_sock, cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, SockContext, TracePointContext},
};
use sensor_common::{
    counters::{DENIED, VIOLATIONS},
    flow::FlowKind,
    net::{AF_PACKET, IPPROTO_ICMP, IPPROTO_ICMPV6, SOCK_RAW},
    policy::{MAX_CLASSES, action, mode, verdict},
};

use crate::{
    decide::agent_loss,
    emit::{slot, submit, task_record_at},
    maps::{Judgement, MODES, SCRATCH, TASKS, config, count},
    marks,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const SIGKILL: u32 = 9;

/// Judgement of an operation that is a violation for every class not off.
struct Refusal {
    /// Classes judged (their mode is not off).
    classes: u64,
    /// Classes in enforce mode among them (agent-loss behaviour applied).
    enforced: u64,
}

/// Judges an operation that is a violation for each of `classes` whose mode
/// is not off.
#[inline(always)]
fn refusal(classes: u64) -> Refusal {
    let none = Refusal {
        classes: 0,
        enforced: 0,
    };
    // SAFETY: helper without pointer arguments.
    let loss = agent_loss(classes, unsafe { bpf_ktime_get_ns() });
    // Per-class results in the per-CPU scratch map with volatile accesses,
    // as in `decide::decide`: kept in registers, every iteration doubles the
    // verifier's states and the 64-class loop exceeds its limit.
    let Some(scratch) = SCRATCH.get_ptr_mut(slot::PROCESS) else {
        return none;
    };
    // SAFETY: a valid per-CPU map value for this program run.
    unsafe { write_volatile(scratch, Judgement::ZERO) };
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
        let enforced = loss.deny & bit != 0 || (m == mode::ENFORCE && loss.allow & bit == 0);
        // SAFETY: as above.
        unsafe {
            let mut j = read_volatile(scratch);
            j.judged |= bit;
            if enforced {
                j.enforce |= bit;
            }
            write_volatile(scratch, j);
        }
    }
    // SAFETY: as above.
    let j = unsafe { read_volatile(scratch) };
    Refusal {
        classes: j.judged,
        enforced: j.enforce,
    }
}

/// Reports a refused or reported operation of the current process.
#[inline(always)]
fn record(kind: FlowKind, r: &Refusal, family: u8, protocol: u8, detail: u64, denied: bool) {
    count(VIOLATIONS);
    if denied {
        count(DENIED);
    }
    // SAFETY: helper without pointer arguments.
    let Some(ev) = task_record_at(slot::PROCESS, kind as u8, unsafe { bpf_ktime_get_ns() }) else {
        return;
    };
    ev.classes = r.classes;
    ev.family = family;
    ev.protocol = protocol;
    ev.detail = detail;
    ev.verdict = verdict::DENY;
    ev.action = if denied {
        action::DENIED
    } else {
        action::REPORTED
    };
    ev.policy_generation = config().map_or(0, |c| c.generation);
    submit(ev);
}

#[inline(always)]
fn current_classes() -> u64 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    unsafe { TASKS.get(tgid) }.map_or(0, |t| t.classes)
}

#[cgroup_sock(sock_create)]
pub fn on_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the kernel hands a valid bpf_sock to sock programs.
    let (family, ty, protocol) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    // Socket type first: every other socket on the host stops here, before
    // any map lookup.
    let icmp = protocol == u32::from(IPPROTO_ICMP) || protocol == u32::from(IPPROTO_ICMPV6);
    if ty != SOCK_RAW && !icmp {
        return ALLOW;
    }
    let classes = current_classes();
    if classes == 0 {
        return ALLOW;
    }
    // Marked: its packets are judged by destination too (monitor mode).
    let _ = marks::mark_current(sk.cast(), classes);
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let r = refusal(classes & !cfg.raw_allowed);
    if r.classes == 0 {
        return ALLOW;
    }
    let deny = r.enforced != 0;
    record(
        FlowKind::Socket,
        &r,
        family as u8,
        protocol as u8,
        u64::from(ty),
        deny,
    );
    if deny { REFUSE } else { ALLOW }
}

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn on_socket_enter(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if cfg.tp_socket_family == 0 {
        return 0;
    }
    // SAFETY: offsets from the tracepoint's format file.
    let Ok(family) = (unsafe { ctx.read_at::<u64>(cfg.tp_socket_family as usize) }) else {
        return 0;
    };
    if family != u64::from(AF_PACKET) {
        return 0;
    }
    let classes = current_classes();
    if classes == 0 {
        return 0;
    }
    let r = refusal(classes);
    if r.classes == 0 {
        return 0;
    }
    // SAFETY: as above.
    let ty = unsafe { ctx.read_at::<u64>(cfg.tp_socket_type as usize) }.unwrap_or(0);
    let kill = r.enforced & cfg.packet_kill != 0;
    record(FlowKind::Socket, &r, AF_PACKET, 0, ty & 0xff, kill);
    if kill {
        // SAFETY: helper without pointer arguments; signals the whole
        // process on return to user space, before the socket is used.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

/// A tagged process binds a socket (typically a listener): marked with its
/// classes. Only bind() pays for this; connects and plain sockets do not.
#[inline(always)]
fn mark_bound(ctx: &SockAddrContext) -> i32 {
    let classes = current_classes();
    if classes != 0 {
        // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs.
        let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
        let _ = marks::mark_current(sk.cast(), classes);
    }
    ALLOW
}

#[cgroup_sock_addr(bind4)]
pub fn on_bind4(ctx: SockAddrContext) -> i32 {
    mark_bound(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn on_bind6(ctx: SockAddrContext) -> i32 {
    mark_bound(&ctx)
}
