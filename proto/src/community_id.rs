//! The Community ID flow hash (version 1, seed 0): the identifier Zeek,
//! Suricata, Elastic and others put on a flow, so that a record of this
//! product joins with network data about the same connection.
//!
//! `1:` + base64(SHA-1(seed, source address, destination address, protocol,
//! 0, source port, destination port)), with the endpoints ordered so that
//! both directions of a flow get the same ID.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;

/// IANA protocol numbers with ports the hash covers.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// An address in the form the hash takes: IPv4 (also when mapped into
/// IPv6) as 4 bytes, IPv6 as 16.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The Community ID of a flow from `local` to `remote` over `protocol`;
/// None for protocols without ports, unspecified endpoints, or endpoints
/// of different families.
pub fn v1(protocol: u8, local: SocketAddr, remote: SocketAddr) -> Option<String> {
    if !matches!(protocol, TCP | UDP | SCTP) {
        return None;
    }
    let (a, b) = (canonical(local.ip()), canonical(remote.ip()));
    if a.is_unspecified() || b.is_unspecified() || a.is_ipv4() != b.is_ipv4() {
        return None;
    }
    let (a, b) = ((octets(a), local.port()), (octets(b), remote.port()));
    let (src, dst) = if a <= b { (a, b) } else { (b, a) };
    let mut input = Vec::with_capacity(2 + 32 + 6);
    input.extend_from_slice(&0u16.to_be_bytes()); // seed
    input.extend_from_slice(&src.0);
    input.extend_from_slice(&dst.0);
    input.push(protocol);
    input.push(0);
    input.extend_from_slice(&src.1.to_be_bytes());
    input.extend_from_slice(&dst.1.to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    Some(format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    /// Values computed by the reference implementation (the `communityid`
    /// Python package, 1.5.0).
    #[test]
    fn matches_the_reference_implementation_in_both_directions() {
        let cases = [
            (
                TCP,
                "128.232.110.120:34855",
                "66.35.250.204:80",
                "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            ),
            (
                UDP,
                "192.168.1.52:54585",
                "8.8.8.8:53",
                "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
            ),
            (
                TCP,
                "[2001:db8::1]:443",
                "[2001:db8::2]:51000",
                "1:2TiKiiiSIuDma9IxOEOpx4wCXWM=",
            ),
        ];
        for (p, a, b, want) in cases {
            assert_eq!(v1(p, at(a), at(b)).as_deref(), Some(want), "{a} -> {b}");
            assert_eq!(v1(p, at(b), at(a)).as_deref(), Some(want), "{b} -> {a}");
        }
        // An IPv4 peer seen through an IPv6 socket is the same flow.
        assert_eq!(
            v1(
                TCP,
                at("[::ffff:128.232.110.120]:34855"),
                at("[::ffff:66.35.250.204]:80")
            )
            .as_deref(),
            Some("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")
        );
    }

    #[test]
    fn no_id_without_ports_or_endpoints() {
        assert_eq!(v1(1, at("10.0.0.1:0"), at("10.0.0.2:0")), None);
        assert_eq!(v1(TCP, at("0.0.0.0:1234"), at("10.0.0.2:80")), None);
        assert_eq!(v1(TCP, at("10.0.0.1:1234"), at("[2001:db8::2]:80")), None);
    }
}
