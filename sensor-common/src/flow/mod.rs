//! Flow records: what the kernel reports about a socket operation.

#[cfg(feature = "user")]
mod user;

/// Length of a task's `comm` as the kernel keeps it (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// What happened to the socket.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// `connect()` (TCP, or UDP connecting its socket).
    Connect = 1,
    /// `sendto()`/`sendmsg()` with a destination address on an unconnected UDP socket.
    Sendmsg = 2,
    /// An inbound connection accepted by the process.
    Accept = 3,
    /// The socket closed; `bytes` and `duration_ns` are filled.
    Close = 4,
    /// The process got classes (`classes`), for `reason`
    /// ([`crate::tag::reason`]); `detail` says which selector.
    Tag = 5,
    /// A packet of a marked socket judged on its way out (egress backstop):
    /// its post-NAT destination differs from the one judged at connect, the
    /// policy or the socket's classes changed since, or the socket came from
    /// another process. `detail` is [`packet::SOURCE_ROUTE`] when the packet
    /// carries a source route.
    Packet = 6,
    /// A tagged process opened a socket that cannot be judged by destination
    /// (raw, ICMP, AF_PACKET): `protocol`/`sock_protocol` and `family` say
    /// which, `detail` the socket type.
    Socket = 7,
    /// A tagged process called exec() and kept its classes (a process tagged
    /// by this exec gets `Tag` records instead): user space resolves its
    /// executable afresh. Not shown to users.
    Exec = 8,
    /// The local address and port of a tagged flow, from its first send: the
    /// kernel picks them after the connect hook, so the flow's connect record
    /// went out without them. User space completes that record (same
    /// `cookie`) with them and its Community ID. Not shown to users.
    Endpoint = 9,
}

/// Flags in the `detail` of [`FlowKind::Packet`] records.
pub mod packet {
    /// The packet carries a source route (IPv4 LSRR/SSRR option, IPv6
    /// routing header): the destination judged is only its first hop.
    pub const SOURCE_ROUTE: u64 = 1;
}

impl FlowKind {
    /// Decodes the raw `kind` byte of a [`FlowEvent`].
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::Connect),
            2 => Some(Self::Sendmsg),
            3 => Some(Self::Accept),
            4 => Some(Self::Close),
            5 => Some(Self::Tag),
            6 => Some(Self::Packet),
            7 => Some(Self::Socket),
            8 => Some(Self::Exec),
            9 => Some(Self::Endpoint),
            _ => None,
        }
    }
}

/// One record in the `EVENTS` ring buffer.
///
/// Addresses are in network byte order: IPv4 in `*_addr[..4]` (the rest zero),
/// IPv6 in all 16 bytes. Ports are in host byte order. Layout is fixed (see the
/// size test) because user space reads it straight out of the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` when the hook ran (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// `bpf_get_socket_cookie()`: stable id of the socket for its lifetime.
    pub cookie: u64,
    /// Data classes: for flows, the classes whose verdict is reported (the
    /// violating ones for a violation, all judged ones otherwise); for tags,
    /// the classes added.
    pub classes: u64,
    /// Close records: bytes sent on the socket. Tag records: the selector detail
    /// (cgroup id, uid or inode, see [`crate::tag::reason`]).
    pub detail: u64,
    /// Socket lifetime in ns (close records).
    pub duration_ns: u64,
    /// Thread id (kernel pid).
    pub pid: u32,
    /// Process id (kernel tgid).
    pub tgid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// Generation of the policy maps that decided.
    pub policy_generation: u32,
    /// How many occurrences this record stands for (aggregation).
    pub count: u32,
    /// A [`FlowKind`] as `u8`.
    pub kind: u8,
    /// [`crate::net::AF_INET`] or [`crate::net::AF_INET6`], after v4-mapped
    /// addresses are unwrapped.
    pub family: u8,
    /// IP protocol number on the wire ([`crate::net::IPPROTO_TCP`],
    /// [`crate::net::IPPROTO_UDP`], ICMP, UDP-Lite, ...).
    pub protocol: u8,
    /// Verdict for the destination ([`crate::policy::verdict`]).
    pub verdict: u8,
    /// Action taken ([`crate::policy::action`]).
    pub action: u8,
    /// Tag records: why ([`crate::tag::reason`]); 0 otherwise.
    pub reason: u8,
    /// Local port, host byte order (0 when not yet bound).
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// The socket's own protocol when it differs from `protocol` on the wire
    /// (`IPPROTO_MPTCP` = 262, whose packets are TCP), else 0.
    pub sock_protocol: u16,
    /// Local address (zero when not yet bound).
    pub local_addr: [u8; 16],
    /// Remote address.
    pub remote_addr: [u8; 16],
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl FlowEvent {
    /// An all-zero record, the starting point the kernel fills in.
    pub const ZERO: Self = Self {
        ktime_ns: 0,
        cgroup_id: 0,
        cookie: 0,
        classes: 0,
        detail: 0,
        duration_ns: 0,
        pid: 0,
        tgid: 0,
        uid: 0,
        policy_generation: 0,
        count: 0,
        kind: 0,
        family: 0,
        protocol: 0,
        verdict: 0,
        action: 0,
        reason: 0,
        local_port: 0,
        remote_port: 0,
        sock_protocol: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        comm: [0; COMM_LEN],
    };
}

/// Slots of the kernel's `FLOW_SLOTS` array (a power of two): a tracked flow
/// lives in slot `cookie % FLOW_SLOT_COUNT` unless another open flow holds it
/// (then in the `FLOWS` hash map).
pub const FLOW_SLOT_COUNT: u32 = 32_768;

/// Key of the kernel's `AGG` LRU map: one process's flows to one destination.
/// Repeats within `Config::agg_interval_ns` are folded into one record with a
/// count, and reuse the verdict cached in the [`AggState`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggKey {
    pub tgid: u32,
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// Map-form remote address.
    pub addr: [u8; 16],
}

/// Value of the `AGG` map: the verdict last reached for the key, and the
/// aggregation state of its records.
///
/// The verdict is reused without consulting the verdict tries while
/// `epoch` equals `Config::epoch` (no policy change since) and `classes`
/// equals the process's classes (no new tag since).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggState {
    /// When the last record for this key was sent.
    pub last_ns: u64,
    /// The classes the process carried when the verdict was reached.
    pub classes: u64,
    /// The classes the records report (the violating ones, or all judged).
    pub reported: u64,
    /// Occurrences folded since then (reported as `count - 1` of the next record).
    pub suppressed: u32,
    /// `Config::epoch` when the verdict was reached.
    pub epoch: u32,
    /// `Config::generation` when the verdict was reached.
    pub generation: u32,
    /// Worst verdict ([`crate::policy::verdict`]).
    pub verdict: u8,
    /// Action ([`crate::policy::action`]).
    pub action: u8,
    /// 1 when the verdict was reached with a live `NAMES` entry for the
    /// destination (see [`crate::names`]): it holds only while that is so.
    pub named: u8,
    pub _pad: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_event_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<FlowEvent>(), 128);
        assert_eq!(core::mem::align_of::<FlowEvent>(), 8);
        assert_eq!(core::mem::offset_of!(FlowEvent, pid), 48);
        assert_eq!(core::mem::offset_of!(FlowEvent, kind), 68);
        assert_eq!(core::mem::offset_of!(FlowEvent, local_port), 74);
        assert_eq!(core::mem::offset_of!(FlowEvent, local_addr), 80);
        assert_eq!(core::mem::offset_of!(FlowEvent, remote_addr), 96);
        assert_eq!(core::mem::offset_of!(FlowEvent, comm), 112);
        assert_eq!(core::mem::size_of::<AggKey>(), 24);
        assert_eq!(core::mem::size_of::<AggState>(), 40);
    }

    #[test]
    fn flow_kind_round_trips() {
        for k in [
            FlowKind::Connect,
            FlowKind::Sendmsg,
            FlowKind::Accept,
            FlowKind::Close,
            FlowKind::Tag,
            FlowKind::Packet,
            FlowKind::Socket,
            FlowKind::Exec,
        ] {
            assert_eq!(FlowKind::from_raw(k as u8), Some(k));
        }
        assert_eq!(FlowKind::from_raw(0), None);
    }
}
