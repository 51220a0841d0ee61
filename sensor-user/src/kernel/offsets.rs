//! What the kernel programs need to know about this kernel's layouts, found at
//! load time: struct member offsets from BTF, tracepoint record offsets from
//! tracefs. Anything not found disables the one feature that needs it, with a
//! warning that names it; the sensor still loads.

use std::path::Path;

use sensor_common::policy::Config;
use tracing::{debug, warn};

use crate::system::{btf::Btf, tracefs};

fn read_btf() -> Option<Btf> {
    let data = match std::fs::read("/sys/kernel/btf/vmlinux") {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "no kernel BTF: executable selectors and byte counting are disabled");
            return None;
        }
    };
    match Btf::parse(&data) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(error = %e, "kernel BTF unreadable: executable selectors and byte counting are disabled");
            None
        }
    }
}

/// Offsets to read the executable's (dev, inode) at exec.
fn exe(btf: &Btf, config: &mut Config) {
    let get = |s, m| btf.member_offset(s, m);
    match (
        get("task_struct", "mm"),
        get("mm_struct", "exe_file"),
        get("file", "f_inode"),
        get("inode", "i_ino"),
        get("inode", "i_sb"),
        get("super_block", "s_dev"),
    ) {
        (Some(mm), Some(exe), Some(inode), Some(ino), Some(sb), Some(dev)) => {
            config.off_task_mm = mm;
            config.off_mm_exe_file = exe;
            config.off_file_inode = inode;
            config.off_inode_ino = ino;
            config.off_inode_sb = sb;
            config.off_sb_dev = dev;
            debug!(mm, exe, inode, ino, sb, dev, "exe offsets from BTF");
        }
        _ => warn!("kernel BTF lacks a struct member we need: executable selectors are disabled"),
    }
}

/// Offsets to count a flow's bytes and find its local endpoint on send.
fn sock(btf: &Btf, tracefs: &Path, config: &mut Config) {
    let get = |m| btf.member_offset("sock_common", m);
    let tp = |f| tracefs::tracepoint_field(tracefs, "sock", "sock_send_length", f);
    match (
        get("skc_cookie"),
        get("skc_num"),
        get("skc_rcv_saddr"),
        get("skc_v6_rcv_saddr"),
        tp("sk"),
        tp("ret"),
    ) {
        (Some(cookie), Some(num), Some(v4), Some(v6), Some(sk), Some(ret)) => {
            config.off_skc_cookie = cookie;
            config.off_skc_num = num;
            config.off_skc_rcv_saddr = v4;
            config.off_skc_v6_rcv_saddr = v6;
            config.tp_send_sk = sk;
            config.tp_send_ret = ret;
            debug!(cookie, num, v4, v6, sk, ret, "socket offsets");
        }
        _ => warn!(
            "sock_common offsets or the sock:sock_send_length tracepoint are missing: per-flow byte counts are disabled (close records report 0 bytes)"
        ),
    }
}

/// Fills every layout-dependent field of `config`.
pub fn discover(config: &mut Config, tracefs: &Path) {
    if let Some(btf) = read_btf() {
        exe(&btf, config);
        sock(&btf, tracefs, config);
    }
    config.tp_fork_child_pid =
        tracefs::tracepoint_field(tracefs, "sched", "sched_process_fork", "child_pid")
            .unwrap_or_else(|| {
                warn!("sched_process_fork has no child_pid field: children will not inherit tags");
                0
            });
    config.tp_exit_group_dead =
        tracefs::tracepoint_field(tracefs, "sched", "sched_process_exit", "group_dead")
            .unwrap_or(0);
}
