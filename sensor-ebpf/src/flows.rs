//! Flows of tagged processes tracked for their close record (bytes sent,
//! duration), found by socket cookie.
//!
//! A flow lives in `FLOW_SLOTS[cookie % FLOW_SLOT_COUNT]` when that slot is
//! free, else in the `FLOWS` hash map. A slot is claimed by writing the
//! cookie into it with compare-and-swap (0 → cookie) and freed by writing 0
//! back at close. Cookies come from per-CPU counters, so consecutive connects
//! land in neighbouring slots: the array is an O(1), cache-friendly home for
//! nearly every flow, and the hash map (a helper call, an allocation and a
//! bucket miss: ~1 µs per flow on these machines, measured with
//! `cargo xtask bench`) holds only flows whose slot an older open flow still
//! has.

use sensor_common::{
    counters::FLOW_MAP_FULL,
    flow::{FLOW_SLOT_COUNT, FlowEvent, FlowKind},
    net::IPPROTO_UDP,
};

use crate::{
    emit::submit,
    maps::{FLOW_SLOTS, FLOWS, count},
};

/// Where a tracked flow's record lives.
pub enum Tracked {
    Slot(*mut FlowEvent),
    Overflow(*mut FlowEvent),
}

impl Tracked {
    /// The record.
    #[inline(always)]
    pub fn record(&self) -> *mut FlowEvent {
        match self {
            Tracked::Slot(p) | Tracked::Overflow(p) => *p,
        }
    }
}

/// The slot `cookie` maps to.
#[inline(always)]
fn slot(cookie: u64) -> Option<*mut FlowEvent> {
    FLOW_SLOTS.get_ptr_mut((cookie & u64::from(FLOW_SLOT_COUNT - 1)) as u32)
}

/// The cookie a slot is claimed for (0: free). Other CPUs claim and free
/// slots: a volatile read, never a cached value.
#[inline(always)]
fn owner(rec: *mut FlowEvent) -> u64 {
    // SAFETY: `rec` is a valid map value for this program run; `cookie` is an
    // 8-byte aligned u64 field of it.
    unsafe { core::ptr::addr_of!((*rec).cookie).read_volatile() }
}

/// The tracked flow of the socket with `cookie` (non-zero), if any.
#[inline(always)]
pub fn find(cookie: u64) -> Option<Tracked> {
    if let Some(rec) = slot(cookie)
        && owner(rec) == cookie
    {
        return Some(Tracked::Slot(rec));
    }
    FLOWS.get_ptr_mut(cookie).map(Tracked::Overflow)
}

/// Starts tracking the flow `ev` describes (`ev.cookie` non-zero). A socket
/// tracked already keeps its record while it talks to the same destination;
/// an unconnected UDP socket that moves on to another destination closes the
/// record of the one before (a `Close` record with its bytes and duration)
/// and tracks the new one, so bytes are counted per destination.
#[inline(always)]
pub fn track(ev: &FlowEvent) {
    const BPF_NOEXIST: u64 = 1;
    const EEXIST: i32 = 17;
    let cookie = ev.cookie;
    if let Some(rec) = slot(cookie) {
        let current = owner(rec);
        if current == cookie {
            retarget(rec, ev);
            return;
        }
        // A TCP socket is judged once, at connect; a UDP socket again at every
        // sendto() and re-connect, and may have overflowed before its slot
        // came free.
        let elsewhere = if ev.protocol == IPPROTO_UDP {
            FLOWS.get_ptr_mut(cookie)
        } else {
            None
        };
        if let Some(other) = elsewhere {
            retarget(other, ev);
            return;
        }
        if current == 0 && claim(rec, cookie) {
            fill_slot(rec, ev);
            return;
        }
    }
    match FLOWS.insert(cookie, ev, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(other) = FLOWS.get_ptr_mut(cookie) {
                retarget(other, ev);
            }
        }
        Err(_) => count(FLOW_MAP_FULL),
    }
}

/// A tracked socket judged again for `ev`'s destination: when it is another
/// one (unconnected UDP), the record so far is sent as the destination's
/// close record and the socket tracked for the new destination.
#[inline(always)]
fn retarget(rec: *mut FlowEvent, ev: &FlowEvent) {
    // SAFETY: a map value, valid for this program run.
    let r = unsafe { &mut *rec };
    if r.remote_port == ev.remote_port && crate::marks::same(&r.remote_addr, &ev.remote_addr) {
        return;
    }
    r.duration_ns = ev.ktime_ns.wrapping_sub(r.ktime_ns);
    r.ktime_ns = ev.ktime_ns;
    r.kind = FlowKind::Close as u8;
    r.count = 1;
    submit(r);
    fill_slot(rec, ev);
}

/// Claims a free slot for `cookie`: compare-and-swap of its cookie word from 0.
/// (Rust's BPF target offers no compare_exchange on atomics; the intrinsic
/// compiles to the BPF_CMPXCHG instruction, kernel 5.12 and later.)
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn claim(rec: *mut FlowEvent, cookie: u64) -> bool {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};
    // SAFETY: as `owner`.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            core::ptr::addr_of_mut!((*rec).cookie),
            0,
            cookie,
        )
        .1
    }
}

/// The same for host builds (clippy), which never run.
#[cfg(not(target_arch = "bpf"))]
fn claim(rec: *mut FlowEvent, cookie: u64) -> bool {
    use core::sync::atomic::{AtomicU64, Ordering};
    // SAFETY: as `owner`.
    unsafe { AtomicU64::from_ptr(core::ptr::addr_of_mut!((*rec).cookie)) }
        .compare_exchange(0, cookie, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Copies `ev` into a claimed slot, word by word (a struct copy compiles to a
/// byte loop on BPF), every field but the cookie the claim wrote.
#[inline(always)]
fn fill_slot(rec: *mut FlowEvent, ev: &FlowEvent) {
    const WORDS: usize = size_of::<FlowEvent>() / 8;
    const COOKIE_WORD: usize = core::mem::offset_of!(FlowEvent, cookie) / 8;
    let src = core::ptr::from_ref(ev).cast::<u64>();
    let dst = rec.cast::<u64>();
    for i in 0..WORDS {
        if i != COOKIE_WORD {
            // SAFETY: both are 8-byte aligned records of WORDS words.
            unsafe { dst.add(i).write(src.add(i).read()) };
        }
    }
}

/// Stops tracking a flow (its close record has been sent).
#[inline(always)]
pub fn forget(flow: Tracked, cookie: u64) {
    match flow {
        // SAFETY: as `owner`.
        Tracked::Slot(rec) => unsafe { core::ptr::addr_of_mut!((*rec).cookie).write_volatile(0) },
        Tracked::Overflow(_) => {
            let _ = FLOWS.remove(cookie);
        }
    }
}
