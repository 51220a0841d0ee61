//! Records to user space: filling and submission.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, generated,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
};
use sensor_common::{
    counters::RINGBUF_RESERVE_FAILED,
    flow::{FlowEvent, FlowKind},
    policy::action,
};

use crate::maps::{EVENTS, RECORDS, count};

/// Destination of a socket operation, already unwrapped from v4-mapped IPv6.
pub struct Destination {
    pub family: u8,
    pub protocol: u8,
    /// As reported: IPv4 in the first 4 bytes, IPv6 in all 16.
    pub addr: [u8; 16],
    /// Map form (v4-mapped for IPv4), for lookups.
    pub key: [u8; 16],
    pub port: u16,
    /// The socket's own protocol when its packets are another's (MPTCP), else 0.
    pub sock_protocol: u16,
}

impl Destination {
    /// An IPv4 destination (`addr` in network order, `port` in host order).
    #[inline(always)]
    pub fn v4(addr4: [u8; 4], protocol: u8, port: u16) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&addr4);
        Self {
            family: sensor_common::net::AF_INET,
            protocol,
            addr,
            key: sensor_common::net::v4_mapped(addr4),
            port,
            sock_protocol: 0,
        }
    }

    /// An IPv6 destination, taken as it is.
    #[inline(always)]
    pub fn v6(addr: [u8; 16], protocol: u8, port: u16) -> Self {
        Self {
            family: sensor_common::net::AF_INET6,
            protocol,
            addr,
            key: addr,
            port,
            sock_protocol: 0,
        }
    }
}

/// Per-CPU scratch slots for building records (a 128-byte record on the
/// 512-byte BPF stack, copied a few times, overflows it). One slot per context
/// that can interrupt another on the same CPU: the socket hooks and
/// tracepoints run in process context, the egress backstop also in softirq
/// context (TCP retransmits and ACK-clocked sends).
pub mod slot {
    /// Process context.
    pub const PROCESS: u32 = 0;
    /// The egress backstop.
    pub const PACKET: u32 = 1;
    /// Number of slots.
    pub const COUNT: u32 = 2;
}

/// A record in scratch slot `slot` with the task fields filled in.
#[inline(always)]
pub fn task_record(slot: u32, kind: u8) -> Option<&'static mut FlowEvent> {
    // SAFETY: helper without pointer arguments.
    task_record_at(slot, kind, unsafe { bpf_ktime_get_ns() })
}

/// `task_record` for a caller that has read the clock already (`now`).
#[inline(always)]
pub fn task_record_at(slot: u32, kind: u8, now: u64) -> Option<&'static mut FlowEvent> {
    let ev = blank_at(slot, kind, now)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper without pointer arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: the helper writes at most 16 bytes into the map value.
    if unsafe { generated::bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), 16) } != 0 {
        ev.comm = [0; 16];
    }
    Some(ev)
}

/// A record in scratch slot `slot` with every field zero but the time, kind
/// and a count of one. Calls no helper about the current task (the egress
/// backstop may not).
#[inline(always)]
fn blank_at(slot: u32, kind: u8, now: u64) -> Option<&'static mut FlowEvent> {
    let ev = RECORDS.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU map value, used by one program run at a time per slot.
    let ev = unsafe { &mut *ev };
    // Every field is written here, word by word: `*ev = FlowEvent::ZERO`
    // compiles to a 128-iteration byte loop on BPF.
    ev.ktime_ns = now;
    ev.cgroup_id = 0;
    ev.cookie = 0;
    ev.classes = 0;
    ev.detail = 0;
    ev.duration_ns = 0;
    ev.pid = 0;
    ev.tgid = 0;
    ev.uid = 0;
    ev.policy_generation = 0;
    ev.count = 1;
    ev.kind = kind;
    ev.family = 0;
    ev.protocol = 0;
    ev.verdict = 0;
    ev.action = 0;
    ev.reason = 0;
    ev.local_port = 0;
    ev.remote_port = 0;
    ev.sock_protocol = 0;
    for w in 0..2 {
        // SAFETY: in bounds of the 16-byte arrays; u64 stores.
        unsafe {
            ev.local_addr
                .as_mut_ptr()
                .cast::<u64>()
                .add(w)
                .write_unaligned(0);
            ev.remote_addr
                .as_mut_ptr()
                .cast::<u64>()
                .add(w)
                .write_unaligned(0);
        }
    }
    Some(ev)
}

/// A record in scratch slot `slot` about the process that marked a socket
/// (`m`): packets leave in softirq context too, where the current task is
/// whoever was interrupted.
#[inline(always)]
pub fn mark_record(
    slot: u32,
    kind: u8,
    m: &sensor_common::mark::SockMark,
    now: u64,
) -> Option<&'static mut FlowEvent> {
    let ev = blank_at(slot, kind, now)?;
    ev.pid = m.tgid;
    ev.tgid = m.tgid;
    ev.uid = m.uid;
    ev.comm = m.comm;
    Some(ev)
}

/// Unread bytes in the ring buffer above which every record wakes the reader.
const WAKEUP_THRESHOLD: u64 = 256 * 1024;

/// Submits a record; a full ring buffer is counted, never silent.
///
/// Waking a sleeping reader costs a context switch (~9 µs of the writing
/// task's time on these machines, measured with `cargo xtask bench`), more
/// than everything else the sensor does for a connect. So:
/// - violations and tags (which explain them) use the ring buffer's adaptive
///   wake-up: only when the reader has read everything before them. The
///   reader drains at most every few milliseconds, so during a burst it lags
///   and no record wakes it;
/// - flow and close records (a close record carries its flow's action, but is
///   not a violation) never wake it: the reader's periodic poll picks them up,
///   unless the buffer is filling up.
#[inline(always)]
pub fn submit(ev: &FlowEvent) {
    const BPF_RB_ADAPTIVE: u64 = 0;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    let urgent = ev.kind == FlowKind::Tag as u8
        || (ev.action != action::NONE && ev.kind != FlowKind::Close as u8);
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKEUP_THRESHOLD {
        BPF_RB_FORCE_WAKEUP
    } else if urgent {
        BPF_RB_ADAPTIVE
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<FlowEvent>(ev, flags).is_err() {
        count(RINGBUF_RESERVE_FAILED);
    }
}

/// Fills the socket fields of a flow record.
#[inline(always)]
pub fn fill_flow<C: EbpfContext>(ctx: &C, ev: &mut FlowEvent, dst: &Destination) {
    // SAFETY: the context is the program's own.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.family = dst.family;
    ev.protocol = dst.protocol;
    ev.remote_addr = dst.addr;
    ev.remote_port = dst.port;
    ev.sock_protocol = dst.sock_protocol;
}
