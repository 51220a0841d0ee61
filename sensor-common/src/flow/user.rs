//! User-space half of flow records: Pod impl and conversions to std types.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::string::String;

use super::{FlowEvent, FlowKind};
use crate::net::AF_INET;

crate::pod!(FlowEvent, super::AggKey, super::AggState);

fn ip_from(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

impl FlowEvent {
    /// Decodes a record from the bytes of a ring-buffer entry, or `None` when the
    /// entry is too short to be one (it never is unless the kernel object and this
    /// crate disagree).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked above; FlowEvent is Pod, read_unaligned copes
        // with the ring buffer's 8-byte alignment or any other.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The decoded [`FlowKind`], if the kernel wrote a known one.
    pub fn flow_kind(&self) -> Option<FlowKind> {
        FlowKind::from_raw(self.kind)
    }

    /// The remote endpoint.
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(ip_from(self.family, &self.remote_addr), self.remote_port)
    }

    /// The local endpoint (unspecified address/port 0 when not yet bound).
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(ip_from(self.family, &self.local_addr), self.local_port)
    }

    /// The task's `comm` as text (lossy for non-UTF-8 bytes).
    pub fn comm_str(&self) -> String {
        let end = self
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}
