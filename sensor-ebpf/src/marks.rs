//! Socket marks: the classes a socket carries, in socket-local storage
//! (`MARKS`), and the verdict last reached for it (see `sensor_common::mark`).

use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_sk_storage_get,
};
use sensor_common::{counters::MARK_FAILED, mark::SockMark};

use crate::{agg::Decision, maps::count};

/// A BTF map definition (the kernel refuses socket storage without BTF for
/// its key and value): the layout libbpf and aya read from `.maps`. Flags:
/// BPF_F_NO_PREALLOC (required) | BPF_F_CLONE (a marked listener's accepted
/// sockets inherit its mark).
#[repr(C)]
pub struct MarkStorage {
    r#type: *const [i32; 24],
    key: *const i32,
    value: *const SockMark,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; 513],
}

// SAFETY: placeholder pointers the loader replaces; never dereferenced.
unsafe impl Sync for MarkStorage {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "MARKS")]
pub static MARKS: MarkStorage = MarkStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

const F_CREATE: u64 = 1;

#[inline(always)]
fn map() -> *mut c_void {
    ptr::from_ref(&MARKS).cast_mut().cast()
}

/// The mark of socket `sk` (a full socket the verifier knows as one), if any.
#[inline(always)]
pub fn get(sk: *mut c_void) -> Option<&'static mut SockMark> {
    // SAFETY: `sk` is a socket pointer the verifier checks; a null result is
    // handled.
    let p = unsafe { bpf_sk_storage_get(map(), sk, ptr::null_mut(), 0) }.cast::<SockMark>();
    // SAFETY: socket storage lives as long as the socket, beyond this run.
    unsafe { p.as_mut() }
}

/// The mark of `sk`, created (zeroed) when it had none. A refusal (memory,
/// `net.core.optmem_max`) is counted: the socket goes unjudged by the
/// backstop, and that must not be silent.
#[inline(always)]
fn create(sk: *mut c_void) -> Option<&'static mut SockMark> {
    // SAFETY: as `get`; F_CREATE allocates a zeroed value.
    let p = unsafe { bpf_sk_storage_get(map(), sk, ptr::null_mut(), F_CREATE) }.cast::<SockMark>();
    // SAFETY: as `get`.
    let m = unsafe { p.as_mut() };
    if m.is_none() {
        count(MARK_FAILED);
    }
    m
}

/// Marks `sk` with `classes` for the current process (created zeroed when the
/// socket had no mark). Returns the mark.
#[inline(always)]
pub fn mark_current(sk: *mut c_void, classes: u64) -> Option<&'static mut SockMark> {
    let m = create(sk)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if m.classes & classes != classes || m.tgid != tgid {
        m.classes |= classes;
        m.tgid = tgid;
        m.uid = bpf_get_current_uid_gid() as u32;
    }
    Some(m)
}

/// Marks `sk` with `classes` for process `tgid` from a context that may not
/// ask about the current task beyond its id (the egress backstop): the
/// record's uid and comm stay empty.
#[inline(always)]
pub fn mark_sender(sk: *mut c_void, classes: u64, tgid: u32) -> Option<&'static mut SockMark> {
    let m = create(sk)?;
    m.classes |= classes;
    m.tgid = tgid;
    Some(m)
}

/// Keeps decision `d` for destination `key`/`port` under `epoch` in the mark.
#[inline(always)]
pub fn remember(m: &mut SockMark, key: &[u8; 16], port: u16, d: &Decision, epoch: u32) {
    m.judged_classes = m.classes;
    m.dst = *key;
    m.port = port;
    m.epoch = epoch;
    m.generation = d.generation;
    m.verdict = d.verdict;
    m.action = d.action;
    m.reported = d.reported;
}

/// Whether the verdict kept in `m` holds for a packet to `key`/`port` under
/// `epoch`.
#[inline(always)]
pub fn holds(m: &SockMark, key: &[u8; 16], port: u16, epoch: u32) -> bool {
    m.judged_classes == m.classes && m.epoch == epoch && m.port == port && same(&m.dst, key)
}

/// Two 16-byte addresses compared as two words (a slice comparison would be
/// a memcmp call, which BPF has not).
#[inline(always)]
pub fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let a = a.as_ptr().cast::<u64>();
    let b = b.as_ptr().cast::<u64>();
    // SAFETY: two in-bounds unaligned u64 reads of each 16-byte array.
    unsafe {
        a.read_unaligned() == b.read_unaligned()
            && a.add(1).read_unaligned() == b.add(1).read_unaligned()
    }
}
