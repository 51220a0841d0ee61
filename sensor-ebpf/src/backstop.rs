//! The egress backstop: a cgroup_skb egress program that judges the packets of
//! marked sockets (`marks.rs`) by where they really go.
//!
//! The connect and sendmsg hooks judge the address a process names, once.
//! Packets can go elsewhere or outlive that judgement: NAT rewrites a service
//! VIP to its backend (cgroup egress runs after the nat OUTPUT and POSTROUTING
//! hooks), a source route takes the packet past its first hop, a socket is
//! handed to another process, a class is switched to enforce while a
//! connection is open, the kernel opens MPTCP subflows itself. Every packet of
//! a marked socket is compared with the verdict kept in its mark (one
//! comparison while nothing changed); a differing destination, policy epoch or
//! class set is judged again, a violation reported (and folded like connect
//! records) and, in enforce mode, the packet dropped.
//!
//! Unmarked sockets cost a socket-storage lookup. Unmarked non-TCP sockets
//! (UDP, ICMP, raw) also send only from the sending process's context, so a
//! tagged sender marks them here, before their first packet leaves; TCP
//! sockets are marked by their writer in `sockets.rs` (TCP also sends from
//! softirq context, where the current task is whoever was interrupted).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_socket_cookie, bpf_sk_fullsock, bpf_skb_cgroup_id, bpf_skc_to_mptcp_sock,
        },
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{
    flow::{AggKey, FlowKind, packet},
    mark::{LocalFlow, LocalFlowKey, SockMark},
    net::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, v4_mapped},
    policy::Config,
    policy::action,
};

use crate::{
    agg::{self, Decision},
    decide::{agent_loss, decide, is_loopback},
    emit::{Destination, mark_record, slot, submit},
    flows,
    maps::{AGG, LOCAL_FLOWS, MPTCP_MARKED, SOCK_ADDR, TASKS, config},
    marks, names,
    tally::tally,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// IPv4 options that route the packet (loose, strict source route).
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
/// IPv6 extension headers: hop-by-hop, routing, destination options.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;

#[cgroup_skb(egress)]
pub fn on_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own __sk_buff.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // The storage lookup takes any socket (it answers nothing for one that is
    // not a full socket): one helper call for an unmarked socket's packet.
    let m = match marks::get(sk.cast()) {
        Some(m) => m,
        None => {
            // SAFETY: a socket pointer from the context; the helper checks it.
            let sk = unsafe { bpf_sk_fullsock(sk) };
            // SAFETY: a full socket the verifier knows as one, when not null.
            let protocol = if sk.is_null() {
                0
            } else {
                unsafe { (*sk).protocol }
            };
            if protocol == u32::from(IPPROTO_TCP) {
                // A subflow the kernel opened for a tagged process's MPTCP
                // connection (marked at connect) is marked here, from its
                // first packet, as the connection's.
                return match mptcp_subflow(sk.cast()) {
                    Some(m) => judge_packet(&ctx, m),
                    None => PASS,
                };
            }
            // A user's UDP socket sends only from its sender's context (raw
            // and ICMP sockets of tagged processes are marked at creation).
            if protocol != u32::from(IPPROTO_UDP) && protocol != u32::from(IPPROTO_UDPLITE) {
                return PASS;
            }
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            // SAFETY: copied out at once.
            let Some(classes) = (unsafe { TASKS.get(tgid) }).map(|t| t.classes) else {
                return PASS;
            };
            // The kernel's own UDP sockets (tunnels) also send from softirq
            // context, where the current task is whoever was interrupted.
            if !config().is_some_and(|cfg| user_socket(cfg, sk.cast())) {
                return PASS;
            }
            let Some(m) = marks::mark_sender(sk.cast(), classes, tgid) else {
                return PASS;
            };
            m
        }
    };
    judge_packet(&ctx, m)
}

/// The mark for `sk` when it is a subflow of an MPTCP connection whose
/// connection-level socket carries a mark (a tagged process opened it): a
/// copy of that mark's owner and classes. Checked only once any MPTCP
/// connection was marked (one array lookup for every other TCP packet).
#[inline(always)]
fn mptcp_subflow(sk: *mut core::ffi::c_void) -> Option<&'static mut SockMark> {
    if MPTCP_MARKED.get(0).copied().unwrap_or(0) == 0 {
        return None;
    }
    // SAFETY: a full socket the verifier knows as one; null unless MPTCP.
    let msk = unsafe { bpf_skc_to_mptcp_sock(sk) };
    if msk.is_null() {
        return None;
    }
    let parent = marks::get(msk.cast())?;
    let (classes, tgid, uid, comm) = (parent.classes, parent.tgid, parent.uid, parent.comm);
    let m = marks::mark_sender(sk, classes, tgid)?;
    m.uid = uid;
    m.comm = comm;
    Some(m)
}

/// Whether `sk` belongs to a user-space socket (its `struct socket` has a
/// file): kernel sockets (tunnels, neighbour discovery) have none. The socket
/// pointer goes through a per-CPU map slot to become a plain number the
/// verifier lets us add a BTF offset to.
#[inline(always)]
fn user_socket(cfg: &Config, sk: *const u8) -> bool {
    if cfg.off_sk_socket == 0 {
        return false;
    }
    let Some(slot) = SOCK_ADDR.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU map value; the reads below are checked by the helper.
    unsafe {
        core::ptr::write_volatile(slot, sk as u64);
        let addr = core::ptr::read_volatile(slot) as *const u8;
        let Ok(socket) = bpf_probe_read_kernel(addr.add(cfg.off_sk_socket as usize).cast::<u64>())
        else {
            return false;
        };
        if socket == 0 {
            return false;
        }
        let file = bpf_probe_read_kernel(
            (socket as *const u8)
                .add(cfg.off_socket_file as usize)
                .cast::<u64>(),
        );
        matches!(file, Ok(f) if f != 0)
    }
}

/// The packet's destination and whether it carries a source route: read
/// straight from the packet for the usual IPv4 and IPv6 headers (no helper
/// call), else with `bpf_skb_load_bytes`.
#[inline(always)]
fn destination(ctx: &SkBuffContext) -> Option<(Destination, bool)> {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own __sk_buff; data/data_end are packet pointers
    // the verifier checks every access against.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if data + 44 <= end {
        let p = data as *const u8;
        // SAFETY: 44 bytes are in bounds (checked above).
        let b0 = unsafe { *p };
        if b0 == 0x45 {
            // IPv4 without options: protocol, destination, then the ports.
            // SAFETY: as above.
            let (protocol, daddr) =
                unsafe { (*p.add(9), p.add(16).cast::<[u8; 4]>().read_unaligned()) };
            let port = if carries_ports(protocol) {
                // SAFETY: as above (bytes 22..24).
                u16::from_be(unsafe { p.add(22).cast::<u16>().read_unaligned() })
            } else {
                0
            };
            return Some((Destination::v4(daddr, protocol, port), false));
        }
        // SAFETY: as above (byte 6).
        let next = unsafe { *p.add(6) };
        if b0 >> 4 == 6 && carries_ports(next) {
            // IPv6 straight to the transport header.
            // SAFETY: as above (bytes 24..40 and 42..44).
            let (daddr, port) = unsafe {
                (
                    p.add(24).cast::<[u8; 16]>().read_unaligned(),
                    u16::from_be(p.add(42).cast::<u16>().read_unaligned()),
                )
            };
            return Some((Destination::v6(daddr, next, port), false));
        }
    }
    destination_slow(ctx)
}

/// `destination` for packets whose headers are not in the linear part, carry
/// IPv4 options or IPv6 extension headers.
#[inline(always)]
fn destination_slow(ctx: &SkBuffContext) -> Option<(Destination, bool)> {
    // The IP version nibble, not skb->protocol: it is not set yet on every
    // path that reaches cgroup egress.
    let b0: u8 = ctx.load(0).ok()?;
    let version = b0 >> 4;
    if version == 4 {
        let ihl = usize::from(b0 & 0x0f) * 4;
        let protocol: u8 = ctx.load(9).ok()?;
        let daddr: [u8; 4] = ctx.load(16).ok()?;
        let route = ihl > 20 && ipv4_source_route(ctx, ihl);
        let port = l4_port(ctx, protocol, ihl);
        return Some((Destination::v4(daddr, protocol, port), route));
    }
    if version == 6 {
        let mut next: u8 = ctx.load(6).ok()?;
        let daddr: [u8; 16] = ctx.load(24).ok()?;
        let mut off = 40usize;
        let mut route = false;
        // Up to two extension headers before the routing header or the
        // transport: hop-by-hop and destination options precede it.
        for _ in 0..2 {
            if next == NEXTHDR_ROUTING {
                route = true;
                break;
            }
            if next != NEXTHDR_HOP && next != NEXTHDR_DEST {
                break;
            }
            let n: u8 = ctx.load(off).ok()?;
            let len: u8 = ctx.load(off + 1).ok()?;
            next = n;
            off += (usize::from(len) + 1) * 8;
        }
        if next == NEXTHDR_ROUTING {
            route = true;
        }
        let port = if route { 0 } else { l4_port(ctx, next, off) };
        // A v4-mapped destination on the wire cannot happen; judge as is.
        return Some((Destination::v6(daddr, next, port), route));
    }
    None
}

/// Whether `protocol`'s header starts with source and destination ports.
#[inline(always)]
fn carries_ports(protocol: u8) -> bool {
    protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE
}

/// Destination port of a TCP/UDP/UDP-Lite header at `off` (host order), 0 for
/// other protocols.
#[inline(always)]
fn l4_port(ctx: &SkBuffContext, protocol: u8, off: usize) -> u16 {
    if !carries_ports(protocol) {
        return 0;
    }
    ctx.load::<u16>(off + 2).map(u16::from_be).unwrap_or(0)
}

/// Whether the IPv4 options (bytes 20..ihl) hold a source route.
#[inline(always)]
fn ipv4_source_route(ctx: &SkBuffContext, ihl: usize) -> bool {
    let mut off = 20usize;
    // Up to 40 option bytes: 40 steps even when every option is a one-byte
    // NOP (a sender could pad a source route past a shorter walk).
    for _ in 0..40 {
        if off >= ihl || off >= 60 {
            return false;
        }
        let Ok(t) = ctx.load::<u8>(off) else {
            return false;
        };
        match t {
            0 => return false,
            1 => off += 1,
            IPOPT_LSRR | IPOPT_SSRR => return true,
            _ => {
                let Ok(len) = ctx.load::<u8>(off + 1) else {
                    return false;
                };
                if len < 2 {
                    return false;
                }
                off += usize::from(len);
            }
        }
    }
    false
}

#[inline(always)]
fn judge_packet(ctx: &SkBuffContext, m: &mut SockMark) -> i32 {
    let Some(cfg) = config() else {
        return PASS;
    };
    let Some((dst, route)) = destination(ctx) else {
        return PASS;
    };
    // SAFETY: the program's own __sk_buff.
    let via_lo = unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX;
    if (via_lo || is_loopback(&dst)) && m.classes & cfg.local_classes != 0 {
        note_local_flow(ctx, m, &dst, m.classes & cfg.local_classes);
    }
    if is_loopback(&dst) {
        return PASS;
    }
    // SAFETY: a field of the live CONFIG value.
    let epoch = unsafe { core::ptr::addr_of!(cfg.epoch).read_volatile() };
    if !route && marks::holds(m, &dst.key, dst.port, epoch) {
        return if m.action == action::DENIED {
            DROP
        } else {
            PASS
        };
    }
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut loss = agent_loss(m.classes, now);
    if route {
        loss.forced = m.classes;
    }
    // The name the marking process resolved the destination from counts
    // while its entry exists, past its TTL: the connection was opened
    // under it (see `sensor_common::names`).
    names::lookup(m.tgid, &dst.key, None, slot::PACKET);
    let d = decide(cfg, m.classes, &dst, loss, slot::PACKET).unwrap_or(Decision::NOTHING);
    if loss.any() {
        m.judged_classes = 0;
    } else {
        marks::remember(m, &dst.key, dst.port, &d, epoch);
    }
    if d.action == action::NONE {
        return PASS;
    }
    let deny = d.action == action::DENIED;
    if reported_at_connect(ctx, &dst, &d) {
        return if deny { DROP } else { PASS };
    }
    tally(m.classes, &d);
    report(ctx, m, &dst, &d, route, epoch, now, cfg.agg_interval_ns);
    if deny { DROP } else { PASS }
}

/// Whether the socket's tracked flow already reported this very verdict for
/// this destination (a monitor-mode connect whose socket was marked at its
/// first write): one transfer, one violation record.
#[inline(always)]
fn reported_at_connect(ctx: &SkBuffContext, dst: &Destination, d: &Decision) -> bool {
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(flow) = flows::find(cookie) else {
        return false;
    };
    // SAFETY: a map value, valid for this run.
    let rec = unsafe { &*flow.record() };
    rec.remote_port == dst.port
        && marks::same(&rec.remote_addr, &dst.addr)
        && rec.action == d.action
        && rec.verdict == d.verdict
        && rec.classes == d.reported
}

/// The loopback device's ifindex (1 in every network namespace).
const LOOPBACK_IFINDEX: u32 = 1;

/// Notes a local TCP connection of a process whose classes propagate over
/// local connections, at its SYN: the process that accepts it carries the
/// classes too (`sockets.rs`), so a relay on the host is judged for what it
/// forwards.
#[inline(always)]
fn note_local_flow(ctx: &SkBuffContext, m: &SockMark, dst: &Destination, classes: u64) {
    if dst.protocol != IPPROTO_TCP {
        return;
    }
    let Ok(b0) = ctx.load::<u8>(0) else {
        return;
    };
    let (saddr, l4) = if dst.family == AF_INET {
        let Ok(s) = ctx.load::<[u8; 4]>(12) else {
            return;
        };
        (v4_mapped(s), usize::from(b0 & 0x0f) * 4)
    } else {
        let Ok(s) = ctx.load::<[u8; 16]>(8) else {
            return;
        };
        (s, 40)
    };
    // SYN without ACK: the connection's first packet.
    let Ok(flags) = ctx.load::<u8>(l4 + 13) else {
        return;
    };
    if flags & 0x12 != 0x02 {
        return;
    }
    let Ok(sport) = ctx.load::<u16>(l4) else {
        return;
    };
    let key = LocalFlowKey {
        saddr,
        daddr: dst.key,
        sport: u16::from_be(sport),
        dport: dst.port,
        _pad: 0,
    };
    let value = LocalFlow {
        classes,
        tgid: m.tgid,
        _pad: 0,
    };
    let _ = LOCAL_FLOWS.insert(key, value, 0);
}

/// A `Packet` record of a violation, folded with the same process's earlier
/// packet records to the same destination within the aggregation interval.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &SkBuffContext,
    m: &SockMark,
    dst: &Destination,
    d: &Decision,
    route: bool,
    epoch: u32,
    now: u64,
    interval: u64,
) {
    let key = AggKey {
        tgid: m.tgid,
        port: dst.port,
        protocol: dst.protocol,
        // Packet records fold apart from the connect records of the key.
        _pad: 1,
        addr: dst.key,
    };
    let n = match AGG.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup, valid for this run.
        Some(state) if interval != 0 && agg::holds(unsafe { &*state }, epoch, m.classes, 0) => {
            // SAFETY: as above.
            agg::fold(unsafe { &mut *state }, now, interval)
        }
        stale => {
            if interval != 0 {
                agg::remember(&key, stale, d, epoch, m.classes, 0, now);
            }
            1
        }
    };
    if n == 0 {
        return;
    }
    let Some(ev) = mark_record(slot::PACKET, FlowKind::Packet as u8, m, now) else {
        return;
    };
    let skb = ctx.skb.skb;
    // SAFETY: the program's own context.
    unsafe {
        ev.cgroup_id = bpf_skb_cgroup_id(skb);
        ev.cookie = bpf_get_socket_cookie(skb.cast());
    }
    ev.classes = d.reported;
    ev.verdict = d.verdict;
    ev.action = d.action;
    ev.policy_generation = d.generation;
    ev.family = dst.family;
    ev.protocol = dst.protocol;
    ev.remote_addr = dst.addr;
    ev.remote_port = dst.port;
    ev.detail = if route { packet::SOURCE_ROUTE } else { 0 };
    ev.count = n;
    submit(ev);
}
