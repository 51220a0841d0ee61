//! cgroup `connect4`/`connect6`: every connect() (TCP, and UDP connecting its
//! socket). Attached at the cgroup v2 root, so every process on the host passes.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sensor_common::flow::FlowKind;

use crate::{decide::judge, emit::Destination};

#[cgroup_sock_addr(connect4)]
pub fn on_connect4(ctx: SockAddrContext) -> i32 {
    judge_call(&ctx, FlowKind::Connect, false)
}

#[cgroup_sock_addr(connect6)]
pub fn on_connect6(ctx: SockAddrContext) -> i32 {
    judge_call(&ctx, FlowKind::Connect, true)
}

/// Reads the destination of a sock_addr call (IPv4 or IPv6 fields) and judges it.
#[inline(always)]
pub fn judge_call(ctx: &SockAddrContext, kind: FlowKind, v6: bool) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    let dst = if v6 {
        // Four 4-byte loads: the verifier refuses wider reads of user_ip6.
        let ip6 = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        destination6(ip6, sa.protocol as u8, sa.user_port)
    } else {
        destination4(sa.user_ip4, sa.protocol as u8, sa.user_port)
    };
    judge(ctx, kind, &dst)
}

/// Destination of an IPv4 call (`ip4`, `port_be` as in bpf_sock_addr).
#[inline(always)]
pub fn destination4(ip4: u32, protocol: u8, port_be: u32) -> Destination {
    Destination::v4(ip4.to_ne_bytes(), protocol, u16::from_be(port_be as u16))
}

/// Destination of an IPv6 call. A v4-mapped address (::ffff:a.b.c.d, a
/// dual-stack socket talking IPv4) is judged and reported as the IPv4 address
/// it is.
#[inline(always)]
pub fn destination6(ip6: [u32; 4], protocol: u8, port_be: u32) -> Destination {
    let w2 = ip6[2].to_ne_bytes();
    if ip6[0] == 0 && ip6[1] == 0 && w2 == [0, 0, 0xff, 0xff] {
        return destination4(ip6[3], protocol, port_be);
    }
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w2);
    addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    Destination::v6(addr, protocol, u16::from_be(port_be as u16))
}
