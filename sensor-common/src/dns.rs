//! DNS answers that reached tagged processes, as the kernel passes them up.
//!
//! The kernel's cgroup_skb ingress program copies the DNS message of a packet
//! from port 53 to a marked socket (one a tagged process used) into the `DNS`
//! ring buffer, bounded by [`DNS_PAYLOAD_MAX`]; the agent parses it and keeps
//! the addresses the answer names, so the process's records say which name it
//! resolved (see `sensor-user`'s `dns`).

/// Bytes of a DNS message passed up: the classic UDP limit. Longer messages
/// (EDNS0 answers with many records) are cut; the agent reads the records
/// that fit.
pub const DNS_PAYLOAD_MAX: usize = 512;

/// One DNS message to a tagged process's socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsAnswer {
    /// The receiving socket's cookie.
    pub cookie: u64,
    /// The classes the receiving socket carries.
    pub classes: u64,
    /// The process that last marked the socket.
    pub tgid: u32,
    /// Bytes of the message in `payload` (at most [`DNS_PAYLOAD_MAX`]).
    pub len: u16,
    /// `AF_INET` or `AF_INET6` (of the packet).
    pub family: u8,
    /// `IPPROTO_UDP` or `IPPROTO_TCP` (a TCP segment's message keeps its
    /// two-byte length prefix).
    pub protocol: u8,
    /// The answering server (IPv4 in the first 4 bytes).
    pub server: [u8; 16],
    /// The server's port (host order; 53).
    pub server_port: u16,
    /// The socket's local port (host order).
    pub local_port: u16,
    pub _pad: u32,
    pub payload: [u8; DNS_PAYLOAD_MAX],
}

const _: () = assert!(core::mem::size_of::<DnsAnswer>() == 48 + DNS_PAYLOAD_MAX);

impl DnsAnswer {
    /// The message bytes.
    pub fn message(&self) -> &[u8] {
        &self.payload[..usize::from(self.len).min(DNS_PAYLOAD_MAX)]
    }

    /// Decodes a ring-buffer record (`None` when it is too short).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        crate::read_record(b)
    }
}

#[cfg(feature = "user")]
crate::pod!(DnsAnswer);
