//! Address families, protocols, and the one address form maps use.
//!
//! Every address in a map key is 16 bytes: IPv6 as is, IPv4 as the v4-mapped
//! IPv6 address `::ffff:a.b.c.d`. One LPM trie then holds both families, and an
//! IPv4 prefix of length L is an address prefix of length 96 + L.

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;

/// `IPPROTO_ICMP`.
pub const IPPROTO_ICMP: u8 = 1;
/// `IPPROTO_ICMPV6`.
pub const IPPROTO_ICMPV6: u8 = 58;
/// `IPPROTO_UDPLITE`.
pub const IPPROTO_UDPLITE: u8 = 136;
/// `IPPROTO_RAW`.
pub const IPPROTO_RAW: u8 = 255;
/// `IPPROTO_MPTCP`: a socket protocol, not an IP one (its packets are TCP).
pub const IPPROTO_MPTCP: u16 = 262;
/// `AF_PACKET`.
pub const AF_PACKET: u8 = 17;
/// `SOCK_RAW`.
pub const SOCK_RAW: u32 = 3;

/// The usual name of a protocol: `sock_protocol` when the socket's own
/// protocol differs from the one on the wire (MPTCP), else the IP protocol.
pub const fn protocol_name(protocol: u8, sock_protocol: u16) -> &'static str {
    if sock_protocol == IPPROTO_MPTCP {
        return "mptcp";
    }
    match protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        IPPROTO_UDPLITE => "udplite",
        IPPROTO_RAW => "raw",
        0 => "ip",
        _ => "other",
    }
}

/// Bits of the v4-mapped prefix `::ffff:0:0/96`.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// The 16-byte map form of an IPv4 address (network byte order in, mapped out).
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(feature = "user")]
mod user {
    use core::net::IpAddr;

    /// Map form of any address (IPv4 becomes v4-mapped; a v4-mapped IPv6 stays).
    pub fn to_map_form(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => super::v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// The address of a map-form key (v4-mapped becomes IPv4).
    pub fn from_map_form(key: [u8; 16]) -> IpAddr {
        IpAddr::V6(core::net::Ipv6Addr::from(key)).to_canonical()
    }

    /// Map-form prefix length for a prefix of `len` bits of `ip`'s family.
    pub fn map_prefix_len(ip: IpAddr, len: u8) -> u32 {
        match ip {
            IpAddr::V4(_) => super::V4_MAPPED_PREFIX_BITS + u32::from(len),
            IpAddr::V6(_) => u32::from(len),
        }
    }
}
#[cfg(feature = "user")]
pub use user::{from_map_form, map_prefix_len, to_map_form};
