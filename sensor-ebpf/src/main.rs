//! Residency Sensor kernel programs. This file only declares them; each hook
//! family lives in its own module, the maps in `maps.rs`.
//!
//! - `connect.rs`: cgroup connect4/connect6 (TCP connect, UDP connect).
//! - `sendmsg.rs`: cgroup sendmsg4/sendmsg6 (unconnected UDP sendto/sendmsg).
//! - `process.rs`: exec/fork/exit tracepoints (tagging and its lifetime).
//! - `sockets.rs`: accepted connections, bytes, close records.
//! - `marks.rs`: classes carried by sockets (socket-local storage).
//! - `backstop.rs`: cgroup_skb egress, judging packets of marked sockets by
//!   their real destination.
//! - `dns.rs`: cgroup_skb ingress, DNS answers to tagged processes.
//! - `guard.rs`: raw, ICMP and packet sockets, source-route options.
//! - `decide.rs`: the verdict for a destination, shared by the socket hooks.
//! - `agg.rs`: aggregation of repeated flows and their cached verdicts.
//! - `emit.rs`: records to user space.
//! - `flows.rs`: flows tracked for their close record.
#![no_std]
// Compare-and-swap for flow slots (see flows.rs): the BPF target offers it
// only as an intrinsic. Host builds (clippy) use the stable atomic.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![no_main]

mod agg;
mod backstop;
mod connect;
mod decide;
mod dns;
mod emit;
mod flows;
mod guard;
mod maps;
mod marks;
mod names;
mod process;
mod sendmsg;
mod sockets;
mod tally;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that reaches here; loop to satisfy `!`.
    loop {}
}

/// The kernel refuses GPL-only helpers (ring buffer, probe_read) to non-GPL programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
