//! DNS answers to tagged processes: a cgroup_skb ingress program that passes
//! the DNS message of every packet from port 53 to a marked socket up to user
//! space (`DNS` ring buffer), bounded by `DNS_PAYLOAD_MAX`, for the agent to
//! learn which names the process resolved.
//!
//! It drops only an answer the agent cannot get (the ring buffer is full:
//! the agent is stalled or flooded) when name rules are in force and a class
//! of the socket is enforced: delivered, the process would have an address
//! whose name the kernel never learns, and a denied name's address would be
//! judged by its country alone. The resolver asks again; what the ring could
//! not hold is counted (`dns_lost`) either way.
//!
//! Packets to unmarked sockets cost one socket-storage lookup, as on egress.
//! Only the source port says DNS: an answer from another port is not one the
//! process's resolver asked port 53 for (a connected socket would not even get
//! it), so it teaches nothing.

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{
    counters::DNS_LOST,
    dns::{DNS_PAYLOAD_MAX, DnsAnswer},
    net::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    decide::any_enforced,
    maps::{DNS, config, count},
    marks,
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const DNS_PORT: u16 = 53;
/// A DNS header: shorter payloads (a bare TCP ACK) are not messages.
const DNS_HEADER: usize = 12;
const _: () = assert!(DNS_PAYLOAD_MAX.is_power_of_two());

#[cgroup_skb(ingress)]
pub fn on_ingress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own __sk_buff.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    let Some(m) = marks::get(sk.cast()) else {
        return PASS;
    };
    if m.classes != 0 {
        let (classes, tgid) = (m.classes, m.tgid);
        if capture(&ctx, classes, tgid) == Some(false) {
            return DROP;
        }
    }
    PASS
}

/// Copies the packet's DNS message up, when it is one. `Some(false)`: it is
/// one, the ring buffer had no room, and it must not reach the process (see
/// the module's comment).
#[inline(always)]
fn capture(ctx: &SkBuffContext, classes: u64, tgid: u32) -> Option<bool> {
    // On ingress the packet starts at its network header.
    let b0: u8 = ctx.load(0).ok()?;
    let mut server = [0u8; 16];
    let (family, protocol, l4) = match b0 >> 4 {
        4 => {
            let saddr: [u8; 4] = ctx.load(12).ok()?;
            server[..4].copy_from_slice(&saddr);
            (AF_INET, ctx.load::<u8>(9).ok()?, usize::from(b0 & 0x0f) * 4)
        }
        // Extension headers before the transport: not DNS as resolvers send it.
        6 => {
            server = ctx.load(8).ok()?;
            (AF_INET6, ctx.load::<u8>(6).ok()?, 40)
        }
        _ => return None,
    };
    if !(20..=60).contains(&l4) {
        return None;
    }
    let sport = u16::from_be(ctx.load::<u16>(l4).ok()?);
    if sport != DNS_PORT {
        return None;
    }
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
    let payload = match protocol {
        IPPROTO_UDP => l4 + 8,
        IPPROTO_TCP => l4 + usize::from(ctx.load::<u8>(l4 + 12).ok()? >> 4) * 4,
        _ => return None,
    };
    let total = ctx.len() as usize;
    if total < payload + DNS_HEADER || payload > 120 {
        return None;
    }
    let Some(mut entry) = DNS.reserve::<DnsAnswer>(0) else {
        count(DNS_LOST);
        let names = config().is_some_and(|c| c.has_names != 0);
        // SAFETY: helper without pointer arguments.
        let refuse = names && any_enforced(classes, unsafe { bpf_ktime_get_ns() });
        return Some(!refuse);
    };
    let p = entry.as_mut_ptr();
    // SAFETY: reserved memory of the record's size; every field written
    // before submit (the payload up to `len`, which user space honours).
    let copied = unsafe {
        (*p).cookie = bpf_get_socket_cookie(ctx.skb.skb.cast());
        (*p).classes = classes;
        (*p).tgid = tgid;
        (*p).family = family;
        (*p).protocol = protocol;
        (*p).server = server;
        (*p).server_port = sport;
        (*p).local_port = dport;
        (*p)._pad = 0;
        // The verifier must see a length in [1, DNS_PAYLOAD_MAX]; the
        // volatile read keeps LLVM from folding the checks away.
        let n = (total - payload).min(DNS_PAYLOAD_MAX) as u64;
        let len = core::ptr::read_volatile(&n);
        if len == 0 || len > DNS_PAYLOAD_MAX as u64 {
            entry.discard(BPF_RB_NO_WAKEUP);
            return None;
        }
        (*p).len = len as u16;
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            payload as u32,
            (&raw mut (*p).payload).cast(),
            len as u32,
        )
    };
    match copied {
        0 => {
            // With name rules in the policy the agent is woken at once: the
            // kernel learns the answer's addresses from it (`NAMES`) while
            // the process reads the answer. Otherwise read with the records
            // that follow (the drain reads this ring right after theirs).
            let wake = config().is_some_and(|c| c.has_names != 0);
            entry.submit(if wake { 0 } else { BPF_RB_NO_WAKEUP });
        }
        _ => entry.discard(BPF_RB_NO_WAKEUP),
    }
    Some(true)
}

const BPF_RB_NO_WAKEUP: u64 = 1;
