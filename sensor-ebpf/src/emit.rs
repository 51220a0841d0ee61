//! Filling and submitting flow records.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
};
use sensor_common::{counters::RINGBUF_RESERVE_FAILED, flow::FlowEvent};

use crate::maps::{EVENTS, count};

/// Destination of a socket operation, already unwrapped from v4-mapped IPv6.
pub struct Destination {
    pub family: u8,
    pub protocol: u8,
    pub addr: [u8; 16],
    pub port: u16,
}

/// Reserves a record, fills the task and socket fields, and submits it. When the
/// ring buffer is full the loss is counted, never silent.
#[inline(always)]
pub fn flow_record<C: EbpfContext>(ctx: &C, kind: u8, dst: &Destination) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(RINGBUF_RESERVE_FAILED);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = FlowEvent::ZERO;
    ev.ktime_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain helper calls without pointer arguments other than the context.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.count = 1;
    ev.kind = kind;
    ev.family = dst.family;
    ev.protocol = dst.protocol;
    ev.remote_addr = dst.addr;
    ev.remote_port = dst.port;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.write(ev);
    entry.submit(0);
}
