//! Socket lifetime of tagged processes: inbound connections they accept, bytes
//! their flows send, and the close record.
//!
//! - `syscalls:sys_exit_accept4`/`sys_exit_accept` tracepoints, in the
//!   accepting process: a connection a tagged process accepts is reported as an
//!   `Accept` record with the peer (the socket is found from the returned fd).
//!   They run only when something accepts; the sock_ops program they replace
//!   ran five times for every TCP connection on the host, about 300 ns per
//!   connect (measured with `cargo xtask bench`). (kprobes and fexit, which
//!   could see `inet_csk_accept` directly, are not available on these kernels.)
//! - `sock:sock_send_length` tracepoint: payload bytes each send() of a tagged
//!   process puts on a tracked flow (found by socket cookie, see `flows.rs`;
//!   tracked by `decide::judge`).
//! - `sock_release`: the flow's `Close` record (bytes, duration).

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_get_socket_cookie},
    },
    macros::{btf_tracepoint, cgroup_sock, tracepoint},
    programs::{BtfTracePointContext, SockContext, TracePointContext},
};
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    mark::LocalFlowKey,
    net::v4_mapped,
    net::{AF_INET6, IPPROTO_TCP},
    policy::Config,
    tag::{TaskTag, reason},
};

use crate::{
    connect::{destination4, destination6},
    decide::{agent_loss, decide, is_loopback},
    emit::Destination,
    emit::{slot, submit, task_record},
    flows,
    maps::{LOCAL_FLOWS, TASKS, config},
    marks, names,
    process::set_classes,
    tally::tally,
};

/// A field of a kernel socket at `off` (offsets from BTF; the read is checked).
#[inline(always)]
unsafe fn sk_field<T>(sk: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel(sk.add(off as usize).cast::<T>()).ok() }
}

/// A pointer field of kernel memory at `p + off`.
#[inline(always)]
unsafe fn ptr_at(p: *const u8, off: u32) -> Option<*const u8> {
    // SAFETY: as sk_field.
    unsafe { sk_field::<u64>(p, off) }.map(|v| v as *const u8)
}

/// The socket behind the current process's file descriptor `fd`:
/// task->files->fdt->fd[fd]->private_data (struct socket)->sk.
#[inline(always)]
unsafe fn sock_of_fd(cfg: &Config, fd: u64) -> Option<*const u8> {
    // SAFETY: offsets from BTF; every read is checked by the helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files = ptr_at(task, cfg.off_task_files)?;
        let fdt = ptr_at(files, cfg.off_files_fdt)?;
        let fds = ptr_at(fdt, cfg.off_fdt_fd)?;
        let file = ptr_at(fds, (fd as u32).checked_mul(8)?)?;
        let socket = ptr_at(file, cfg.off_file_private_data)?;
        let sk = ptr_at(socket, cfg.off_socket_sk)?;
        (!sk.is_null()).then_some(sk)
    }
}

/// A tagged process's accept()/accept4() returned a connection: one `Accept`
/// record with the peer and the local endpoint.
#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if cfg.tp_accept_ret == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let tagged = (unsafe { TASKS.get(tgid) }).map_or(0, |t| t.classes);
    // Untagged acceptors matter only while some class propagates over local
    // connections.
    if tagged == 0 && cfg.local_classes == 0 {
        return 0;
    }
    // SAFETY: the offset of `ret` comes from the tracepoint's format file.
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(cfg.tp_accept_ret as usize) }) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    // SAFETY: reads checked by the helper.
    let Some(sk) = (unsafe { sock_of_fd(cfg, fd as u64) }) else {
        return 0;
    };
    // SAFETY: offsets from BTF; every read is checked by the helper.
    let (family, dport, lport) = unsafe {
        (
            sk_field::<u16>(sk, cfg.off_skc_family).unwrap_or(0),
            sk_field::<u16>(sk, cfg.off_skc_dport).unwrap_or(0),
            sk_field::<u16>(sk, cfg.off_skc_num).unwrap_or(0),
        )
    };
    let peer = if family == u16::from(AF_INET6) {
        // SAFETY: as above.
        let a = unsafe { sk_field::<[u32; 4]>(sk, cfg.off_skc_v6_daddr) }.unwrap_or([0; 4]);
        destination6(a, IPPROTO_TCP, u32::from(dport))
    } else {
        // SAFETY: as above.
        let a = unsafe { sk_field::<u32>(sk, cfg.off_skc_daddr) }.unwrap_or(0);
        destination4(a, IPPROTO_TCP, u32::from(dport))
    };
    let classes = if cfg.local_classes != 0 {
        carry_local(cfg, tgid, tagged, sk, &peer, lport)
    } else {
        tagged
    };
    if classes == 0 {
        return 0;
    }
    let tag = TaskTag { classes };
    // Inbound is a transfer too: the reply carries the process's data to the
    // peer. A peer denied for its classes is a violation; in enforce mode the
    // egress backstop drops every packet of the socket (it is marked when
    // the process writes, or inherited from a marked listener).
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let d = if is_loopback(&peer) {
        None
    } else {
        names::none(slot::PROCESS);
        decide(
            cfg,
            tag.classes,
            &peer,
            agent_loss(tag.classes, now),
            slot::PROCESS,
        )
    };
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Accept as u8) else {
        return 0;
    };
    ev.classes = tag.classes;
    if let Some(d) = d {
        ev.classes = d.reported;
        ev.verdict = d.verdict;
        ev.action = d.action;
        tally(tag.classes, &d);
    }
    ev.family = peer.family;
    ev.protocol = IPPROTO_TCP;
    ev.remote_addr = peer.addr;
    ev.remote_port = peer.port;
    ev.local_port = lport;
    // SAFETY: as above.
    unsafe {
        if peer.family == AF_INET6 {
            if let Some(a) = sk_field::<[u8; 16]>(sk, cfg.off_skc_v6_rcv_saddr) {
                ev.local_addr = a;
            }
        } else if let Some(a) = sk_field::<[u8; 4]>(sk, cfg.off_skc_rcv_saddr) {
            ev.local_addr[..4].copy_from_slice(&a);
        }
        // The cookie, when the kernel has assigned one already (0 otherwise).
        if cfg.off_skc_cookie != 0 {
            ev.cookie = sk_field::<u64>(sk, cfg.off_skc_cookie).unwrap_or(0);
        }
    }
    ev.policy_generation = cfg.generation;
    submit(ev);
    0
}

/// A local connection from a process whose classes propagate over local
/// connections (noted by the egress backstop at its SYN): the acceptor
/// carries those classes from now on. Returns the acceptor's classes.
#[inline(always)]
fn carry_local(
    cfg: &Config,
    tgid: u32,
    classes: u64,
    sk: *const u8,
    peer: &Destination,
    lport: u16,
) -> u64 {
    // SAFETY: offsets from BTF; every read is checked by the helper.
    let local = unsafe {
        if peer.family == AF_INET6 {
            sk_field::<[u8; 16]>(sk, cfg.off_skc_v6_rcv_saddr)
        } else {
            sk_field::<[u8; 4]>(sk, cfg.off_skc_rcv_saddr).map(v4_mapped)
        }
    };
    let Some(local) = local else {
        return classes;
    };
    let key = LocalFlowKey {
        saddr: peer.key,
        daddr: local,
        sport: peer.port,
        dport: lport,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(from) = (unsafe { LOCAL_FLOWS.get(key) }).copied() else {
        return classes;
    };
    let _ = LOCAL_FLOWS.remove(key);
    let new = from.classes & !classes;
    if new == 0 {
        return classes;
    }
    let all = classes | from.classes;
    if !set_classes(tgid, all) {
        return classes;
    }
    if let Some(ev) = task_record(slot::PROCESS, FlowKind::Tag as u8) {
        ev.classes = new;
        ev.reason = reason::LOCAL;
        ev.detail = u64::from(from.tgid);
        ev.family = peer.family;
        ev.protocol = IPPROTO_TCP;
        ev.remote_addr = peer.addr;
        ev.remote_port = peer.port;
        ev.local_port = lport;
        ev.policy_generation = cfg.generation;
        submit(ev);
    }
    all
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn on_accept4_exit(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn on_accept_exit_plain(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

/// A tagged process is about to write to a TCP socket (tp_btf
/// tcp:tcp_sendmsg_locked fires before the data is queued, in the writer's
/// context, for send(), write(), sendfile, splice and io_uring alike): the
/// socket is marked with its classes, so the egress backstop judges the
/// socket's packets from the first byte this process writes, whoever opened
/// the socket and whenever (a connection opened before the process was
/// tagged, a pooled connection, a socket received over SCM_RIGHTS or taken
/// with pidfd_getfd, an accepted connection). Untagged writers cost one TASKS
/// lookup.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn on_tcp_sendmsg(ctx: BtfTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(classes) = (unsafe { TASKS.get(tgid) }).map(|t| t.classes) else {
        return 0;
    };
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    let _ = marks::mark_current(sk, classes);
    0
}

/// Bytes sent on a tracked flow, by any writer (a socket handed to another
/// process counts its bytes too): the sock:sock_send_length tracepoint fires
/// in the sender's context after every sendmsg() with its result. A socket
/// without a cookie was never tracked: nearly every socket on the host stops
/// at that read.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn on_send_length(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if cfg.off_skc_cookie == 0 {
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
    if cookie == 0 {
        return 0;
    }
    let Some(flow) = flows::find(cookie) else {
        return 0;
    };
    // SAFETY: a map value, valid for this run.
    let flow = unsafe { &mut *flow.record() };
    flow.detail += sent as u64;
    if flow.local_port == 0 {
        local_endpoint(cfg, sk, flow);
        report_endpoint(flow);
    }
    0
}

/// Tells user space the local endpoint of a flow whose connect record went
/// out without it: user space puts it, and the flow's Community ID, on that
/// record (see `FlowKind::Endpoint`). Once per tagged flow.
#[inline(always)]
fn report_endpoint(flow: &FlowEvent) {
    if flow.local_port == 0 {
        return;
    }
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Endpoint as u8) else {
        return;
    };
    ev.cookie = flow.cookie;
    ev.classes = flow.classes;
    ev.family = flow.family;
    ev.protocol = flow.protocol;
    ev.sock_protocol = flow.sock_protocol;
    ev.local_port = flow.local_port;
    ev.remote_port = flow.remote_port;
    ev.local_addr = flow.local_addr;
    ev.remote_addr = flow.remote_addr;
    submit(ev);
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
    // A tracked flow's socket has a cookie (judging it asked for one). Reading
    // the field instead of asking bpf_get_socket_cookie keeps sockets without
    // one — nearly all of them — from getting one and from a FLOWS lookup:
    // ~250 ns of every socket close on the host (measured with cargo xtask
    // bench). The context of a sock program is the kernel's struct sock.
    let cookie = match config() {
        Some(cfg) if cfg.off_skc_cookie != 0 => {
            // SAFETY: offset from BTF; the read is checked by the helper.
            match unsafe { sk_field::<u64>(ctx.as_ptr() as *const u8, cfg.off_skc_cookie) } {
                Some(0) => return 1,
                Some(c) => c,
                None => return 1,
            }
        }
        // SAFETY: the program's own context.
        _ => unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    if let Some(flow) = flows::find(cookie) {
        // SAFETY: a map value, valid for this run; the flow is ours to finish
        // and forget.
        let ev = unsafe { &mut *flow.record() };
        // SAFETY: helper without pointer arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        ev.duration_ns = now.wrapping_sub(ev.ktime_ns);
        ev.ktime_ns = now;
        ev.kind = FlowKind::Close as u8;
        ev.count = 1;
        submit(ev);
        flows::forget(flow, cookie);
    }
    1
}
