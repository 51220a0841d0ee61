//! cgroup `connect4`/`connect6`: every connect() (TCP, and UDP connecting its
//! socket) of a process in the attached cgroup.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sensor_common::{
    flow::FlowKind,
    net::{AF_INET, AF_INET6},
};

use crate::emit::{Destination, flow_record};

/// Let the call proceed (a sock_addr program returns 0 to deny with EPERM).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn on_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    let dst = Destination {
        family: AF_INET,
        protocol: sa.protocol as u8,
        addr,
        port: u16::from_be(sa.user_port as u16),
    };
    flow_record(&ctx, FlowKind::Connect as u8, &dst);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn on_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    let dst = destination6(sa.user_ip6, sa.protocol as u8, sa.user_port);
    flow_record(&ctx, FlowKind::Connect as u8, &dst);
    ALLOW
}

/// Builds the destination of an IPv6 call. A v4-mapped address (::ffff:a.b.c.d,
/// a dual-stack socket talking IPv4) is judged as the IPv4 address it is.
#[inline(always)]
pub fn destination6(ip6: [u32; 4], protocol: u8, port_be: u32) -> Destination {
    let mut addr = [0u8; 16];
    let port = u16::from_be(port_be as u16);
    let w2 = ip6[2].to_ne_bytes();
    if ip6[0] == 0 && ip6[1] == 0 && w2 == [0, 0, 0xff, 0xff] {
        addr[..4].copy_from_slice(&ip6[3].to_ne_bytes());
        return Destination {
            family: AF_INET,
            protocol,
            addr,
            port,
        };
    }
    addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w2);
    addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    Destination {
        family: AF_INET6,
        protocol,
        addr,
        port,
    }
}
