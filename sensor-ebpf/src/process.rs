//! Process lifetime: tagging at exec, inheritance at fork, removal at exit.
//!
//! Selectors are evaluated at exec, when the process becomes the program it
//! will be: container runtimes and systemd move a process into its cgroup and
//! then exec, so a cgroup selector catches every unit or container process.
//! Cgroup selectors are evaluated again when a process is moved into another
//! cgroup later. A process's existing classes are kept across exec and moves
//! (tags survive both).

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel_str,
        },
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sensor_common::{
    counters::{EXEC_PATH_LOST, TAG_MAP_FULL},
    exec::{EXEC_PATH_MAX, ExecPath},
    flow::FlowKind,
    policy::Config,
    tag::{ExeKey, MAX_CGROUP_DEPTH, TaskTag, reason},
};

use crate::{
    emit::{slot, submit, task_record},
    maps::{CGROUP_SELECTORS, EXE_SELECTORS, EXEC_PATHS, TASKS, UID_SELECTORS, config, count},
};

/// Sets process `tgid`'s classes to `classes` (its old ones included).
/// A full map is counted and the process stays as it was: returns false.
#[inline(always)]
pub fn set_classes(tgid: u32, classes: u64) -> bool {
    if TASKS.insert(tgid, TaskTag { classes }, 0).is_err() {
        count(TAG_MAP_FULL);
        return false;
    }
    true
}

fn tag_record(classes: u64, why: u8, detail: u64, generation: u32) {
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Tag as u8) else {
        return;
    };
    ev.classes = classes;
    ev.reason = why;
    ev.detail = detail;
    ev.policy_generation = generation;
    submit(ev);
}

/// Reads the (dev, inode) of the current task's executable through the BTF
/// offsets user space put in the config. `None` when the offsets are unset or a
/// read fails.
#[inline(always)]
fn current_exe(cfg: &Config) -> Option<ExeKey> {
    if cfg.off_task_mm == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a bad offset only
    // makes a read fail.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 =
            bpf_probe_read_kernel(task.add(cfg.off_task_mm as usize).cast()).ok()?;
        let file: *const u8 =
            bpf_probe_read_kernel(mm.add(cfg.off_mm_exe_file as usize).cast()).ok()?;
        let inode: *const u8 =
            bpf_probe_read_kernel(file.add(cfg.off_file_inode as usize).cast()).ok()?;
        let ino: u64 = bpf_probe_read_kernel(inode.add(cfg.off_inode_ino as usize).cast()).ok()?;
        let sb: *const u8 =
            bpf_probe_read_kernel(inode.add(cfg.off_inode_sb as usize).cast()).ok()?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(cfg.off_sb_dev as usize).cast()).ok()?;
        Some(ExeKey {
            dev: u64::from(dev),
            ino,
        })
    }
}

/// Passes the path process `tgid` exec'd up (`EXEC_PATHS`), from the
/// tracepoint's `filename` (a `__data_loc`: its offset in the record in the
/// low 16 bits).
#[inline(always)]
fn exec_path(ctx: &TracePointContext, cfg: &Config, tgid: u32) {
    if cfg.tp_exec_filename == 0 {
        return;
    }
    // SAFETY: offset read from the tracepoint's format by user space.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(cfg.tp_exec_filename as usize) }) else {
        return;
    };
    let Some(mut entry) = EXEC_PATHS.reserve::<ExecPath>(0) else {
        count(EXEC_PATH_LOST);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: reserved memory of the record's size; every field written
    // before submit (the path up to `len`, which user space honours). The
    // string is read with bpf_probe_read_kernel_str, which checks the
    // address and stops at the buffer's end.
    unsafe {
        (*p).tgid = tgid;
        (*p).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let n = bpf_probe_read_kernel_str(
            (&raw mut (*p).path).cast(),
            EXEC_PATH_MAX as u32,
            src.cast(),
        );
        (*p).len = if n > 0 { n as u32 } else { 0 };
    }
    // Read with the records that follow (the drain reads this ring right
    // after theirs, before it enriches them).
    entry.submit(BPF_RB_NO_WAKEUP);
}

const BPF_RB_NO_WAKEUP: u64 = 1;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn on_exec(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let existing = unsafe { TASKS.get(tgid) }.map(|t| t.classes).unwrap_or(0);
    let Some(cfg) = config() else {
        return 0;
    };
    let mut added = 0u64;

    let mut cgroup_match = 0u64;
    let mut cgroup_id = 0u64;
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: helper without pointer arguments; 0 past the task's depth.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: copied out at once.
        if let Some(c) = unsafe { CGROUP_SELECTORS.get(id) } {
            cgroup_match |= *c;
            cgroup_id = id;
        }
    }
    let uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: copied out at once.
    let uid_match = unsafe { UID_SELECTORS.get(uid) }.copied().unwrap_or(0);
    let exe = current_exe(cfg);
    let exe_match = match &exe {
        // SAFETY: copied out at once.
        Some(k) => unsafe { EXE_SELECTORS.get(k) }.copied().unwrap_or(0),
        None => 0,
    };
    added |= cgroup_match | uid_match | exe_match;
    let new = added & !existing;
    if new == 0 {
        if existing != 0 {
            exec_path(&ctx, cfg, tgid);
        }
        if existing != 0
            && let Some(ev) = task_record(slot::PROCESS, FlowKind::Exec as u8)
        {
            ev.classes = existing;
            ev.policy_generation = cfg.generation;
            submit(ev);
        }
        return 0;
    }
    if !set_classes(tgid, existing | added) {
        return 0;
    }
    exec_path(&ctx, cfg, tgid);
    if cgroup_match & new != 0 {
        tag_record(
            cgroup_match & new,
            reason::CGROUP,
            cgroup_id,
            cfg.generation,
        );
    }
    if uid_match & new != 0 {
        tag_record(uid_match & new, reason::UID, u64::from(uid), cfg.generation);
    }
    if exe_match & new != 0 {
        tag_record(
            exe_match & new,
            reason::EXE,
            exe.map(|e| e.ino).unwrap_or(0),
            cfg.generation,
        );
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn on_fork(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if cfg.tp_fork_child_pid == 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(tag) = (unsafe { TASKS.get(parent) }).copied() else {
        return 0;
    };
    // SAFETY: offset read from the tracepoint's format by user space.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg.tp_fork_child_pid as usize) }) else {
        return 0;
    };
    // For a new thread child is a thread id: the entry is unused (lookups are by
    // tgid) and removed when the thread exits.
    if !set_classes(child as u32, tag.classes) {
        return 0;
    }
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Tag as u8) else {
        return 0;
    };
    ev.pid = child as u32;
    ev.tgid = child as u32;
    ev.classes = tag.classes;
    ev.reason = reason::INHERITED;
    ev.detail = u64::from(parent);
    ev.policy_generation = cfg.generation;
    submit(ev);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn on_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    if pid != tgid {
        let _ = TASKS.remove(pid);
    }
    let Some(cfg) = config() else {
        return 0;
    };
    let group_dead = if cfg.tp_exit_group_dead != 0 {
        // SAFETY: offset read from the tracepoint's format by user space.
        unsafe { ctx.read_at::<u8>(cfg.tp_exit_group_dead as usize) }
            .map(|b| b != 0)
            .unwrap_or(pid == tgid)
    } else {
        pid == tgid
    };
    if group_dead {
        let _ = TASKS.remove(tgid);
    }
    0
}

/// A process moved into another cgroup (cgroup:cgroup_attach_task, raw: its
/// arguments are the destination `struct cgroup *`, the path, the
/// `struct task_struct *` and whether the whole thread group moves). Cgroup
/// selectors are evaluated for the moved process as at exec: a process moved
/// into a selected cgroup after its exec carries the class from the move on.
/// (The mover, not the moved process, is the current task: the selected
/// cgroup and its ancestors are read from the destination cgroup.)
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn on_cgroup_attach(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = config() else {
        return 0;
    };
    if cfg.off_cgroup_kn == 0 {
        return 0;
    }
    let cgrp: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    // SAFETY: offsets from BTF; bpf_probe_read_kernel checks every address.
    let (level, tgid) = unsafe {
        let Ok(level) =
            bpf_probe_read_kernel(cgrp.add(cfg.off_cgroup_level as usize).cast::<i32>())
        else {
            return 0;
        };
        let Ok(tgid) = bpf_probe_read_kernel(task.add(cfg.off_task_tgid as usize).cast::<i32>())
        else {
            return 0;
        };
        (level, tgid as u32)
    };
    let mut cgroup_match = 0u64;
    let mut cgroup_id = 0u64;
    for l in 0..MAX_CGROUP_DEPTH {
        if l > level {
            break;
        }
        // SAFETY: as above; `ancestors[l]` for l <= level is a valid cgroup.
        let id = unsafe {
            let slot = cgrp.add(cfg.off_cgroup_ancestors as usize + (l as usize) * 8);
            let Ok(anc) = bpf_probe_read_kernel(slot.cast::<*const u8>()) else {
                break;
            };
            let Ok(kn) =
                bpf_probe_read_kernel(anc.add(cfg.off_cgroup_kn as usize).cast::<*const u8>())
            else {
                break;
            };
            let Ok(id) = bpf_probe_read_kernel(kn.add(cfg.off_kernfs_id as usize).cast::<u64>())
            else {
                break;
            };
            id
        };
        // SAFETY: copied out at once.
        if let Some(c) = unsafe { CGROUP_SELECTORS.get(id) } {
            cgroup_match |= *c;
            cgroup_id = id;
        }
    }
    if cgroup_match == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    let existing = unsafe { TASKS.get(tgid) }.map(|t| t.classes).unwrap_or(0);
    let new = cgroup_match & !existing;
    if new == 0 {
        return 0;
    }
    if !set_classes(tgid, existing | cgroup_match) {
        return 0;
    }
    let Some(ev) = task_record(slot::PROCESS, FlowKind::Tag as u8) else {
        return 0;
    };
    // The record is about the moved process, not the mover.
    ev.pid = tgid;
    ev.tgid = tgid;
    ev.comm = [0; 16];
    ev.cgroup_id = cgroup_id;
    ev.classes = new;
    ev.reason = reason::CGROUP;
    ev.detail = cgroup_id;
    ev.policy_generation = cfg.generation;
    submit(ev);
    0
}
