//! Classes carried by sockets, not only by processes.
//!
//! The kernel's `MARKS` map is socket-local storage: one [`SockMark`] per
//! socket, freed with the socket, copied to the sockets a marked listener
//! accepts. A socket is marked when a tagged process creates it, connects or
//! sends on it, or writes to it (so a socket opened before the process was
//! tagged, or handed over by another process, carries the writer's classes
//! from its first byte). The egress backstop judges every packet of a marked
//! socket by its real destination (after NAT and routing); the verdict last
//! reached is kept in the mark, so a packet costs one comparison while
//! nothing changed.

/// Value of the kernel's `MARKS` socket storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockMark {
    /// Classes the socket carries (the union of every tagged process that used it).
    pub classes: u64,
    /// Classes the cached verdict was reached for (0: none cached).
    pub judged_classes: u64,
    /// Map-form destination of the cached verdict.
    pub dst: [u8; 16],
    /// The process that last marked the socket (records of packets sent from
    /// softirq context name it).
    pub tgid: u32,
    /// Its real uid.
    pub uid: u32,
    /// `Config::epoch` of the cached verdict.
    pub epoch: u32,
    /// `Config::generation` of the cached verdict.
    pub generation: u32,
    /// Destination port of the cached verdict (host order).
    pub port: u16,
    /// Cached verdict and action ([`crate::policy::verdict`], [`crate::policy::action`]).
    pub verdict: u8,
    pub action: u8,
    pub _pad: u32,
    /// Classes reported with the cached verdict.
    pub reported: u64,
    /// The marking process's `comm` (left empty by the kernel, which would
    /// pay for it on every marked socket; the agent fills records from
    /// /proc).
    pub comm: [u8; crate::flow::COMM_LEN],
}

impl SockMark {
    /// An unused mark: no classes, nothing cached.
    pub const ZERO: Self = Self {
        classes: 0,
        judged_classes: 0,
        dst: [0; 16],
        tgid: 0,
        uid: 0,
        epoch: 0,
        generation: 0,
        port: 0,
        verdict: 0,
        action: 0,
        _pad: 0,
        reported: 0,
        comm: [0; crate::flow::COMM_LEN],
    };
}

/// Key of the kernel's `LOCAL_FLOWS` map: a local TCP connection opened by a
/// process whose classes propagate over local connections, as its SYN left
/// (map-form addresses, host-order ports). The accepting side finds it from
/// its accepted socket's peer and local endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}

/// Value of `LOCAL_FLOWS`: the classes to carry over and who carried them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFlow {
    pub classes: u64,
    pub tgid: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
crate::pod!(SockMark, LocalFlowKey, LocalFlow);

#[cfg(test)]
mod tests {
    #[test]
    fn layout_is_fixed() {
        assert_eq!(core::mem::size_of::<super::SockMark>(), 80);
    }
}
