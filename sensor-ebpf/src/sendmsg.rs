//! cgroup `sendmsg4`/`sendmsg6`: UDP sendto()/sendmsg() with a destination
//! address on an unconnected socket. (Connected sockets were judged at connect;
//! the kernel does not run these hooks for them.) A deny makes the call fail
//! with EPERM and nothing is sent.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sensor_common::flow::FlowKind;

use crate::{
    connect::{destination4, destination6},
    decide::judge,
};

#[cgroup_sock_addr(sendmsg4)]
pub fn on_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let sa = unsafe { &*ctx.sock_addr };
    let dst = destination4(sa.user_ip4, sa.protocol as u8, sa.user_port);
    judge(&ctx, FlowKind::Sendmsg, &dst)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn on_sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    let ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let dst = destination6(ip6, sa.protocol as u8, sa.user_port);
    judge(&ctx, FlowKind::Sendmsg, &dst)
}
