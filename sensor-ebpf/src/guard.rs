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

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_send_signal},
    macros::{cgroup_sock, cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, SockContext, TracePointContext},
};
use sensor_common::{
    flow::FlowKind,
    net::{AF_PACKET, IPPROTO_ICMP, IPPROTO_ICMPV6, SOCK_RAW},
    policy::{Config, action},
};

use crate::{
    agg::Decision,
    decide::{agent_loss, decide},
    emit::{Destination, slot, submit, task_record_at},
    maps::{TASKS, config},
    marks, names,
    tally::tally,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const SIGKILL: u32 = 9;

/// Judges an operation that is a violation for each of `classes` whose mode
/// is not off, whatever the destination: the shared judgement with every
/// class's verdict forced to deny (modes and agent-loss behaviour applied as
/// for any destination). `None`: every class is off.
#[inline(always)]
fn refusal(cfg: &Config, classes: u64) -> Option<Decision> {
    // SAFETY: helper without pointer arguments.
    let mut loss = agent_loss(classes, unsafe { bpf_ktime_get_ns() });
    loss.forced = classes;
    // No destination is looked up when every verdict is forced.
    let nowhere = Destination::v4([0; 4], 0, 0);
    names::none(slot::PROCESS);
    decide(cfg, classes, &nowhere, loss, slot::PROCESS)
}

/// Reports a refused or reported operation of the current process.
#[inline(always)]
fn record(kind: FlowKind, d: &Decision, family: u8, protocol: u8, detail: u64, action: u8) {
    // Every class judged is violated here (the verdicts are forced).
    tally(d.reported, &Decision { action, ..*d });
    // SAFETY: helper without pointer arguments.
    let Some(ev) = task_record_at(slot::PROCESS, kind as u8, unsafe { bpf_ktime_get_ns() }) else {
        return;
    };
    ev.classes = d.reported;
    ev.family = family;
    ev.protocol = protocol;
    ev.detail = detail;
    ev.verdict = d.verdict;
    ev.action = action;
    ev.policy_generation = d.generation;
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
    let Some(d) = refusal(cfg, classes & !cfg.raw_allowed) else {
        return ALLOW;
    };
    record(
        FlowKind::Socket,
        &d,
        family as u8,
        protocol as u8,
        u64::from(ty),
        d.action,
    );
    if d.action == action::DENIED {
        REFUSE
    } else {
        ALLOW
    }
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
    let Some(d) = refusal(cfg, classes) else {
        return 0;
    };
    // SAFETY: as above.
    let ty = unsafe { ctx.read_at::<u64>(cfg.tp_socket_type as usize) }.unwrap_or(0);
    // Killed when a class that asks for it is enforced; reported otherwise
    // (nothing else can stop the socket).
    let kill = cfg.packet_kill & classes != 0
        && refusal(cfg, classes & cfg.packet_kill).is_some_and(|k| k.action == action::DENIED);
    let act = if kill {
        action::DENIED
    } else {
        action::REPORTED
    };
    record(FlowKind::Socket, &d, AF_PACKET, 0, ty & 0xff, act);
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
