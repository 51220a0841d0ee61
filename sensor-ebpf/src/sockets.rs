//! Socket lifetime of tagged processes: listeners they bind, inbound
//! connections those accept, bytes their flows send, and the close record.
//!
//! - `post_bind4/6` (process context): a tagged process binding a TCP port is
//!   remembered in `LISTENERS` (by port), with a record template of the process.
//! - `sock_ops` PASSIVE_ESTABLISHED (softirq, no process context): a connection
//!   accepted on such a port is reported as an `Accept` record with the peer.
//! - `sock:sock_send_length` tracepoint: payload bytes each send() of a tagged
//!   process puts on a tracked flow (`FLOWS`, keyed by socket cookie, entries
//!   made by `decide::judge`).
//! - `sock_release`: the flow's `Close` record (bytes, duration); listener entry
//!   removed.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_socket_cookie,
    },
    macros::{cgroup_sock, sock_ops, tracepoint},
    programs::{SockContext, SockOpsContext, TracePointContext},
};
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    net::{AF_INET6, IPPROTO_TCP},
    policy::Config,
};

use crate::{
    connect::{destination4, destination6},
    emit::{slot, submit, task_record},
    maps::{FLOWS, LISTENER_PORTS, LISTENERS, RECORDS, TASKS, config},
};

/// `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`.
const PASSIVE_ESTABLISHED: u32 = 5;

#[inline(always)]
fn on_bind(ctx: &SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock to this program type.
    let sk = unsafe { &*ctx.sock };
    if sk.protocol != u32::from(IPPROTO_TCP) {
        return 1;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(tag) = (unsafe { TASKS.get(tgid) }).copied() else {
        return 1;
    };
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Accept as u8) else {
        return 1;
    };
    ev.classes = tag.classes;
    ev.local_port = sk.src_port as u16;
    // SAFETY: the program's own context.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The key must live on the stack: the verifier refuses a ctx pointer as a key.
    let port: u32 = sk.src_port;
    let cookie = ev.cookie;
    if LISTENERS.insert(port, ev, 0).is_ok() {
        let _ = LISTENER_PORTS.insert(cookie, port, 0);
    }
    1
}

#[cgroup_sock(post_bind4)]
pub fn on_post_bind4(ctx: SockContext) -> i32 {
    on_bind(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn on_post_bind6(ctx: SockContext) -> i32 {
    on_bind(&ctx)
}

#[sock_ops]
pub fn on_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != PASSIVE_ESTABLISHED {
        return 1;
    }
    let port = ctx.local_port();
    // SAFETY: copied into this context's scratch slot at once.
    let Some(listener) = (unsafe { LISTENERS.get(port) }) else {
        return 1;
    };
    let Some(ev) = RECORDS.get_ptr_mut(slot::SOFTIRQ) else {
        return 1;
    };
    // SAFETY: a per-CPU map value for this context.
    let ev = unsafe { &mut *ev };
    *ev = *listener;
    // remote_port holds the network-order port in its upper 16 bits on
    // little-endian hosts (sock_ops_convert_ctx_access shifts it left by 16).
    let rport = (ctx.remote_port() >> 16).to_be();
    let peer = if ctx.family() == u32::from(AF_INET6) {
        destination6(ctx.remote_ip6(), IPPROTO_TCP, rport)
    } else {
        destination4(ctx.remote_ip4(), IPPROTO_TCP, rport)
    };
    // SAFETY: helper without pointer arguments; the program's own context.
    ev.ktime_ns = unsafe { bpf_ktime_get_ns() };
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.kind = FlowKind::Accept as u8;
    ev.family = peer.family;
    ev.protocol = IPPROTO_TCP;
    ev.remote_addr = peer.addr;
    ev.remote_port = peer.port;
    ev.local_port = port as u16;
    ev.policy_generation = config().map_or(0, |c| c.generation);
    submit(ev);
    1
}

/// Bytes a tagged process sends on a tracked flow: the sock:sock_send_length
/// tracepoint fires in the sender's context after every sendmsg() with its
/// result. Untagged senders cost one TASKS lookup. (A cgroup_skb egress program
/// would count per packet, but merely attaching one cost every connect on the
/// host ~2%, measured with `cargo xtask bench`.)
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn on_send_length(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if cfg.off_skc_cookie == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only checked for presence.
    if unsafe { TASKS.get(tgid) }.is_none() {
        return 0;
    }
    // SAFETY: offsets read from tracefs and BTF by user space; reads are checked.
    let (sent, sk) = unsafe {
        let Ok(sent) = ctx.read_at::<i32>(cfg.tp_send_ret as usize) else {
            return 0;
        };
        let Ok(sk) = ctx.read_at::<u64>(cfg.tp_send_sk as usize) else {
            return 0;
        };
        (sent, sk as *const u8)
    };
    if sent <= 0 {
        return 0;
    }
    // SAFETY: as above.
    let cookie =
        unsafe { bpf_probe_read_kernel(sk.add(cfg.off_skc_cookie as usize).cast::<u64>()) };
    let Ok(cookie) = cookie else {
        return 0;
    };
    let Some(flow) = FLOWS.get_ptr_mut(cookie) else {
        return 0;
    };
    // SAFETY: pointer from a successful lookup, valid for this run.
    let flow = unsafe { &mut *flow };
    flow.detail += sent as u64;
    if flow.local_port == 0 {
        local_endpoint(cfg, sk, flow);
    }
    0
}

/// Fills the flow's local address and port from the socket on its first send:
/// at connect time the kernel has not chosen them yet, and sock_release may not
/// read them.
#[inline(always)]
fn local_endpoint(cfg: &Config, sk: *const u8, flow: &mut FlowEvent) {
    // SAFETY: offsets from BTF; bpf_probe_read_kernel checks the addresses.
    unsafe {
        if let Ok(port) = bpf_probe_read_kernel(sk.add(cfg.off_skc_num as usize).cast::<u16>()) {
            flow.local_port = port;
        }
        if flow.family == AF_INET6 {
            let a =
                bpf_probe_read_kernel(sk.add(cfg.off_skc_v6_rcv_saddr as usize).cast::<[u8; 16]>());
            if let Ok(a) = a {
                flow.local_addr = a;
            }
        } else {
            let a = bpf_probe_read_kernel(sk.add(cfg.off_skc_rcv_saddr as usize).cast::<[u8; 4]>());
            if let Ok(a) = a {
                flow.local_addr[..4].copy_from_slice(&a);
            }
        }
    }
}

#[cgroup_sock(sock_release)]
pub fn on_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(flow) = FLOWS.get_ptr_mut(cookie) {
        // SAFETY: pointer from a successful lookup, valid for this run; the
        // entry is ours to finish and delete.
        let ev = unsafe { &mut *flow };
        // SAFETY: helper without pointer arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        ev.duration_ns = now.wrapping_sub(ev.ktime_ns);
        ev.ktime_ns = now;
        ev.kind = FlowKind::Close as u8;
        ev.count = 1;
        submit(ev);
        let _ = FLOWS.remove(cookie);
    }
    // The listener entry goes with its socket. (sock_release may not read the
    // socket's port, hence the cookie → port map.)
    // SAFETY: copied out at once.
    if let Some(port) = unsafe { LISTENER_PORTS.get(cookie) }.copied() {
        let _ = LISTENERS.remove(port);
        let _ = LISTENER_PORTS.remove(cookie);
    }
    1
}
