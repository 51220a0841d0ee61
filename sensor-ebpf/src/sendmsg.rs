//! cgroup `sendmsg4`/`sendmsg6`: UDP sendto()/sendmsg() with a destination
//! address on an unconnected socket. (Connected sockets were judged at connect;
//! the kernel does not run these hooks for them.) A deny makes the call fail
//! with EPERM and nothing is sent.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sensor_common::flow::FlowKind;

use crate::connect::judge_call;

#[cgroup_sock_addr(sendmsg4)]
pub fn on_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_call(&ctx, FlowKind::Sendmsg, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn on_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_call(&ctx, FlowKind::Sendmsg, true)
}
