//! What the kernel needs to judge a destination: verdicts, modes, failsafe and
//! taint prefixes, and the host-wide configuration.

/// Highest number of data classes (class ids are `0..MAX_CLASSES`, one bit each
/// in a `u64` class mask).
pub const MAX_CLASSES: u32 = 64;

/// How many entries each kernel map holds. The kernel crate declares its maps
/// with these; `policy check` refuses a policy that needs more, and the agent
/// checks again before it writes anything, so a policy never half-installs
/// for want of room.
pub mod capacity {
    /// Each verdict trie (`VERDICTS_A`, `VERDICTS_B`): prefixes of all classes.
    pub const VERDICTS: u32 = 1 << 20;
    /// `FAILSAFE`: the policy's failsafe prefixes and the host's own addresses.
    pub const FAILSAFE: u32 = 4096;
    /// Of [`FAILSAFE`], kept for the host's own addresses (added by the agent).
    pub const FAILSAFE_HOST_RESERVE: u32 = 256;
    /// `TAINT`: distinct taint source prefixes.
    pub const TAINT: u32 = 4096;
    /// Each selector map (`CGROUP_SELECTORS`, `UID_SELECTORS`, `EXE_SELECTORS`).
    pub const SELECTORS: u32 = 4096;
    /// `TASKS`: tagged processes (and threads of tagged processes).
    pub const TASKS: u32 = 65_536;
    /// `NAMES`: addresses processes learned for names the policy rules on.
    pub const NAMES: u32 = 65_536;
}

/// Verdict for a destination, per class.
pub mod verdict {
    /// Not evaluated (the process carried no class with a mode other than off).
    pub const NONE: u8 = 0;
    /// The destination is inside the class's allowed set.
    pub const ALLOW: u8 = 1;
    /// The destination is outside the allowed set.
    pub const DENY: u8 = 2;
    /// No prefix in the verdict table covers the destination.
    pub const UNKNOWN: u8 = 3;
}

/// What the kernel did about a flow.
pub mod action {
    /// Allowed; recorded as a flow only.
    pub const NONE: u8 = 0;
    /// A violation, reported (monitor mode).
    pub const REPORTED: u8 = 1;
    /// A violation, denied with EPERM (enforce mode).
    pub const DENIED: u8 = 2;
}

/// Per-class enforcement mode (`MODES` map values).
pub mod mode {
    /// Nothing is judged or reported for the class.
    pub const OFF: u8 = 0;
    /// Violations are reported.
    pub const MONITOR: u8 = 1;
    /// Violations are reported and denied (EPERM, no packet leaves).
    pub const ENFORCE: u8 = 2;
}

/// Key of the `VERDICTS_*` LPM tries: the class id (big-endian, so the first 32
/// bits of every prefix pin the class) followed by the map-form address.
/// Prefix length = 32 + address prefix length (v4 prefixes: 32 + 96 + len).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictKey {
    /// Class id, big-endian bytes.
    pub class_be: [u8; 4],
    /// Map-form address (see [`crate::net`]).
    pub addr: [u8; 16],
}

/// Bits of the class part of a [`VerdictKey`] prefix.
pub const VERDICT_CLASS_BITS: u32 = 32;

/// Value of the `TAINT` LPM trie (key: map-form address): connecting to this
/// prefix on a port in `port_lo..=port_hi` tags the process with `classes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaintSource {
    pub classes: u64,
    pub port_lo: u16,
    pub port_hi: u16,
    pub _pad: u32,
}

/// Host-wide configuration, index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Generation of the policy in force; copied into every record.
    pub generation: u32,
    /// Which verdict trie is live: 0 = `VERDICTS_A`, 1 = `VERDICTS_B`.
    pub active_verdicts: u32,
    /// Window in which repeated flows of one process to one destination are
    /// folded into one record with a count (0 = no aggregation).
    pub agg_interval_ns: u64,
    /// 1 when a destination with no verdict counts as a violation (the default).
    pub unknown_is_violation: u8,
    /// 1 when the TAINT trie has entries: untagged calls skip its lookup
    /// otherwise.
    pub has_taint: u8,
    /// 1 when a class has `allowed_names` or `denied_names`: judgements of
    /// tagged processes look into `NAMES` (see [`crate::names`]) then.
    pub has_names: u8,
    pub _pad: u8,
    /// Bumped by user space with every change that can alter a verdict (the
    /// verdict table, modes, the unknown setting, failsafe destinations). A
    /// verdict cached in `AGG` is reused only while the epoch is unchanged.
    pub epoch: u32,
    /// Offsets (from BTF, filled by user space) to read the executable's inode:
    /// task_struct.mm, mm_struct.exe_file, file.f_inode, inode.i_ino,
    /// inode.i_sb, super_block.s_dev. All zero: exe selectors are off.
    pub off_task_mm: u32,
    pub off_mm_exe_file: u32,
    pub off_file_inode: u32,
    pub off_inode_ino: u32,
    pub off_inode_sb: u32,
    pub off_sb_dev: u32,
    /// Offset of `child_pid` in the sched_process_fork tracepoint record (from
    /// tracefs; it moved between kernels). 0: fork inheritance is off.
    pub tp_fork_child_pid: u32,
    /// Offset of `group_dead` in sched_process_exit (0: absent; the process entry
    /// is then removed when the thread-group leader exits).
    pub tp_exit_group_dead: u32,
    /// Offset of the `filename` data_loc in sched_process_exec (0: the path
    /// a tagged process exec'd is not passed up; see `exec`).
    pub tp_exec_filename: u32,
    /// Offsets of `sk` and `ret` in the sock:sock_send_length tracepoint record
    /// (0: per-flow byte counting is off).
    pub tp_send_sk: u32,
    pub tp_send_ret: u32,
    /// Offsets (from BTF) in `struct sock_common` (at offset 0 of every socket):
    /// skc_cookie, skc_num (local port), skc_rcv_saddr, skc_v6_rcv_saddr.
    /// `off_skc_cookie == 0` disables byte counting.
    pub off_skc_cookie: u32,
    pub off_skc_num: u32,
    pub off_skc_rcv_saddr: u32,
    pub off_skc_v6_rcv_saddr: u32,
    /// More of `struct sock_common`, for accept records: skc_family,
    /// skc_daddr, skc_dport, skc_v6_daddr. `off_skc_family == 0` disables
    /// accept records.
    pub off_skc_family: u32,
    pub off_skc_daddr: u32,
    pub off_skc_dport: u32,
    pub off_skc_v6_daddr: u32,
    /// From the accepting process's new fd to its socket: task_struct.files,
    /// files_struct.fdt, fdtable.fd, file.private_data, socket.sk (BTF), and
    /// `ret` in the syscalls:sys_exit_accept(4) records (tracefs).
    pub off_task_files: u32,
    pub off_files_fdt: u32,
    pub off_fdt_fd: u32,
    pub off_file_private_data: u32,
    pub off_socket_sk: u32,
    pub tp_accept_ret: u32,
    /// Classes whose processes may open raw and ICMP sockets
    /// (`allow_raw_sockets` in the policy). Other classes: refused in enforce
    /// mode, reported in monitor mode (`sock_create`).
    pub raw_allowed: u64,
    /// Classes whose processes are killed (SIGKILL) when they open an
    /// AF_PACKET socket in enforce mode (`packet_sockets = "kill"`); the kernel
    /// has no hook to refuse one. Every tagged process's packet socket is
    /// reported.
    pub packet_kill: u64,
    /// Classes that propagate over local connections (`propagate_over_local`):
    /// a process that accepts a loopback or host-local connection from a
    /// process carrying them carries them too.
    pub local_classes: u64,
    /// Offsets of `family` and `type` in the syscalls:sys_enter_socket record
    /// (tracefs). 0: packet sockets are not seen.
    pub tp_socket_family: u32,
    pub tp_socket_type: u32,
    /// For selectors evaluated when a task moves cgroup (BTF):
    /// cgroup.level, cgroup.ancestors, cgroup.kn, kernfs_node.id,
    /// task_struct.tgid. `off_cgroup_kn == 0`: cgroup moves are not seen.
    pub off_cgroup_level: u32,
    pub off_cgroup_ancestors: u32,
    pub off_cgroup_kn: u32,
    pub off_kernfs_id: u32,
    pub off_task_tgid: u32,
    /// sock.sk_socket and socket.file (BTF): a socket without a file is the
    /// kernel's own (tunnels, neighbour discovery), never marked from the
    /// current task. `off_sk_socket == 0`: non-TCP sockets are not marked by
    /// the backstop.
    pub off_sk_socket: u32,
    pub off_socket_file: u32,
    pub _pad2: u32,
}

impl Config {
    /// The configuration before user space writes one: no aggregation, unknown
    /// destinations are violations, exe selectors off.
    pub const DEFAULT: Self = Self {
        generation: 0,
        active_verdicts: 0,
        agg_interval_ns: 0,
        unknown_is_violation: 1,
        has_taint: 0,
        has_names: 0,
        _pad: 0,
        epoch: 0,
        off_task_mm: 0,
        off_mm_exe_file: 0,
        off_file_inode: 0,
        off_inode_ino: 0,
        off_inode_sb: 0,
        off_sb_dev: 0,
        tp_fork_child_pid: 0,
        tp_exit_group_dead: 0,
        tp_exec_filename: 0,
        tp_send_sk: 0,
        tp_send_ret: 0,
        off_skc_cookie: 0,
        off_skc_num: 0,
        off_skc_rcv_saddr: 0,
        off_skc_v6_rcv_saddr: 0,
        off_skc_family: 0,
        off_skc_daddr: 0,
        off_skc_dport: 0,
        off_skc_v6_daddr: 0,
        off_task_files: 0,
        off_files_fdt: 0,
        off_fdt_fd: 0,
        off_file_private_data: 0,
        off_socket_sk: 0,
        tp_accept_ret: 0,
        raw_allowed: 0,
        packet_kill: 0,
        local_classes: 0,
        tp_socket_family: 0,
        tp_socket_type: 0,
        off_cgroup_level: 0,
        off_cgroup_ancestors: 0,
        off_cgroup_kn: 0,
        off_kernfs_id: 0,
        off_task_tgid: 0,
        off_sk_socket: 0,
        off_socket_file: 0,
        _pad2: 0,
    };
}

/// What the kernel does when the agent stops heartbeating: index 0 of the
/// `LIVENESS` array. The agent writes `heartbeat_ns` (CLOCK_MONOTONIC, the
/// clock of `bpf_ktime_get_ns`) every second; when it is older than
/// `timeout_ns`, classes in `deny_classes` may reach only failsafe
/// destinations (fail closed) and classes in `allow_classes` are not denied
/// (fail open, still reported). Every other class keeps the last policy.
/// `timeout_ns == 0` switches the check off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub heartbeat_ns: u64,
    pub timeout_ns: u64,
    pub deny_classes: u64,
    pub allow_classes: u64,
}

impl Liveness {
    /// No loss behaviour: every class keeps the last policy.
    pub const KEEP: Self = Self {
        heartbeat_ns: 0,
        timeout_ns: 0,
        deny_classes: 0,
        allow_classes: 0,
    };
}

/// Version of the pinned kernel state's layout (map keys, values and their
/// meaning). Bump it with any change to a type in this crate that a pinned map
/// holds, or to what a map's entries mean: a starting agent then re-creates
/// the maps it cannot adopt instead of feeding new programs old bytes.
pub const LAYOUT_VERSION: u32 = 5;

#[cfg(feature = "user")]
crate::pod!(VerdictKey, TaintSource, Config, Liveness);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<VerdictKey>(), 20);
        assert_eq!(core::mem::size_of::<TaintSource>(), 16);
        assert_eq!(core::mem::size_of::<Config>(), 192);
        assert_eq!(core::mem::size_of::<Liveness>(), 32);

        assert_eq!(core::mem::offset_of!(Config, off_task_mm), 24);
    }
}
