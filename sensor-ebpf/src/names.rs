//! Name verdicts: what the policy's `allowed_names` and `denied_names` say
//! about a destination a process learned from a DNS answer (`NAMES`, filled
//! by the agent; see `sensor_common::names`).
//!
//! The entry's masks go to the judgement's scratch slot, where
//! `decide::decide` reads them. The lookup is a global BPF function: its
//! paths (no rules, no entry, expired, live) are verified once, not once per
//! state of every path of the connect and egress programs that reaches it.

use core::ptr::write_volatile;

use crate::maps::{NAMES, SCRATCH, config};

/// Looks up the name entry process `tgid` has for `addr` and leaves its
/// masks in scratch slot `slot` for `decide::decide`. With `now`, an entry
/// counts until it expires (a new connect or send); without, while it exists
/// (the packets of a connection judged again). Returns 1 when an entry
/// counts, 0 otherwise.
#[inline(always)]
pub fn lookup(tgid: u32, addr: &[u8; 16], now: Option<u64>, slot: u32) -> u64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: a valid per-CPU map value for this program run.
    // A plain store: word by word (a volatile array store goes byte by byte).
    unsafe { (*scratch).dst = *addr };
    u64::from(residency_names(tgid, now.unwrap_or(0), slot))
}

/// [`lookup`]'s body: the address comes in scratch slot `slot`; `now` 0
/// means "while the entry exists".
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn residency_names(tgid: u32, now: u64, slot: u32) -> u32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(slot) else {
        return 0;
    };
    let (mut allow, mut deny, mut live) = (0u64, 0u64, 0u32);
    if config().is_some_and(|c| c.has_names != 0) {
        // SAFETY: as below.
        let rule = unsafe {
            write_volatile(&raw mut (*scratch).name.tgid, tgid);
            write_volatile(&raw mut (*scratch).name._pad, 0);
            (*scratch).name.addr = (*scratch).dst;
            // The key stays in map memory: by value it would be copied to
            // the stack, which the connect programs have no room for.
            #[allow(clippy::needless_borrows_for_generic_args)]
            NAMES.get(&(*scratch).name)
        };
        if let Some(rule) = rule
            && (now == 0 || rule.expires_ns > now)
        {
            (allow, deny, live) = (rule.allow, rule.deny, 1);
        }
    }
    // SAFETY: a valid per-CPU map value for this program run.
    unsafe {
        write_volatile(&raw mut (*scratch).name_allow, allow);
        write_volatile(&raw mut (*scratch).name_deny, deny);
    }
    live
}

/// No name entry counts for the judgement in scratch slot `slot` (an
/// accept, a refused socket).
#[inline(always)]
pub fn none(slot: u32) {
    if let Some(scratch) = SCRATCH.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            write_volatile(&raw mut (*scratch).name_allow, 0);
            write_volatile(&raw mut (*scratch).name_deny, 0);
        }
    }
}
