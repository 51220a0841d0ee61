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

/// Offsets to describe an accepted connection: from the accepting process's
/// new file descriptor to its socket, then the peer and local endpoint.
fn accept(btf: &Btf, tracefs: &Path, config: &mut Config) {
    let skc = |m| btf.member_offset("sock_common", m);
    let found = (|| {
        Some([
            btf.member_offset("task_struct", "files")?,
            btf.member_offset("files_struct", "fdt")?,
            btf.member_offset("fdtable", "fd")?,
            btf.member_offset("file", "private_data")?,
            btf.member_offset("socket", "sk")?,
            skc("skc_family")?,
            skc("skc_daddr")?,
            skc("skc_dport")?,
            skc("skc_v6_daddr")?,
            skc("skc_num")?,
            skc("skc_rcv_saddr")?,
            skc("skc_v6_rcv_saddr")?,
            tracefs::tracepoint_field(tracefs, "syscalls", "sys_exit_accept4", "ret")?,
        ])
    })();
    match found {
        Some(
            [
                files,
                fdt,
                fd,
                private,
                sk,
                family,
                daddr,
                dport,
                v6,
                num,
                l4,
                l6,
                ret,
            ],
        ) if family != 0 && ret != 0 => {
            config.off_task_files = files;
            config.off_files_fdt = fdt;
            config.off_fdt_fd = fd;
            config.off_file_private_data = private;
            config.off_socket_sk = sk;
            config.off_skc_family = family;
            config.off_skc_daddr = daddr;
            config.off_skc_dport = dport;
            config.off_skc_v6_daddr = v6;
            config.off_skc_num = num;
            config.off_skc_rcv_saddr = l4;
            config.off_skc_v6_rcv_saddr = l6;
            config.tp_accept_ret = ret;
            debug!(
                files,
                fdt, fd, private, sk, family, daddr, dport, v6, ret, "accept offsets"
            );
        }
        _ => warn!(
            "a kernel struct member or the syscalls:sys_exit_accept4 tracepoint is missing: accept records are disabled"
        ),
    }
}

/// Offsets to evaluate cgroup selectors when a process moves cgroup.
fn cgroup_moves(btf: &Btf, config: &mut Config) {
    let found = (|| {
        Some([
            btf.member_offset("cgroup", "level")?,
            btf.member_offset("cgroup", "ancestors")?,
            btf.member_offset("cgroup", "kn")?,
            btf.member_offset("kernfs_node", "id")?,
            btf.member_offset("task_struct", "tgid")?,
        ])
    })();
    match found {
        Some([level, ancestors, kn, id, tgid]) if kn != 0 || ancestors != 0 => {
            config.off_cgroup_level = level;
            config.off_cgroup_ancestors = ancestors;
            config.off_cgroup_kn = kn;
            config.off_kernfs_id = id;
            config.off_task_tgid = tgid;
            debug!(level, ancestors, kn, id, tgid, "cgroup move offsets");
        }
        _ => warn!(
            "a kernel struct member for cgroup moves is missing (cgroup.ancestors needs Linux 6.1): cgroup selectors are evaluated at exec only"
        ),
    }
}

/// Fills every layout-dependent field of `config`.
pub fn discover(config: &mut Config, tracefs: &Path) {
    if let Some(btf) = read_btf() {
        exe(&btf, config);
        sock(&btf, tracefs, config);
        accept(&btf, tracefs, config);
        cgroup_moves(&btf, config);
        match (
            btf.member_offset("sock", "sk_socket"),
            btf.member_offset("socket", "file"),
        ) {
            (Some(sk_socket), Some(file)) if sk_socket != 0 => {
                config.off_sk_socket = sk_socket;
                config.off_socket_file = file;
            }
            _ => warn!(
                "kernel BTF lacks sock.sk_socket or socket.file: UDP sockets handed to a tagged process are judged only from their next judged send"
            ),
        }
    }
    match (
        tracefs::tracepoint_field(tracefs, "syscalls", "sys_enter_socket", "family"),
        tracefs::tracepoint_field(tracefs, "syscalls", "sys_enter_socket", "type"),
    ) {
        (Some(family), Some(ty)) => {
            config.tp_socket_family = family;
            config.tp_socket_type = ty;
        }
        _ => warn!(
            "syscalls:sys_enter_socket has no family/type field: packet sockets of tagged processes are not reported"
        ),
    }
    config.tp_fork_child_pid =
        tracefs::tracepoint_field(tracefs, "sched", "sched_process_fork", "child_pid")
            .unwrap_or_else(|| {
                warn!("sched_process_fork has no child_pid field: children will not inherit tags");
                0
            });
    config.tp_exec_filename =
        tracefs::tracepoint_field(tracefs, "sched", "sched_process_exec", "filename")
            .unwrap_or_else(|| {
                warn!("sched_process_exec has no filename field: records of a tagged process that exits before they are read carry no executable");
                0
            });
    config.tp_exit_group_dead =
        tracefs::tracepoint_field(tracefs, "sched", "sched_process_exit", "group_dead")
            .unwrap_or(0);
}
