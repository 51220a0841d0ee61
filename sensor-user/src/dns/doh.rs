//! Well-known public DNS-over-HTTPS and DNS-over-TLS endpoints. Their
//! answers travel encrypted, so the sensor cannot see which names a process
//! resolved through them (name rules then do not apply: the addresses are
//! judged by their country). A tagged process that talks to one is reported
//! (a warning, `residency_sensor_doh_flows`) and its records name the service.

use std::net::{IpAddr, SocketAddr};

/// Address → the service's name (the name clients are configured with).
const ENDPOINTS: &[(&str, &str)] = &[
    ("1.1.1.1", "cloudflare-dns.com"),
    ("1.0.0.1", "cloudflare-dns.com"),
    ("2606:4700:4700::1111", "cloudflare-dns.com"),
    ("2606:4700:4700::1001", "cloudflare-dns.com"),
    ("8.8.8.8", "dns.google"),
    ("8.8.4.4", "dns.google"),
    ("2001:4860:4860::8888", "dns.google"),
    ("2001:4860:4860::8844", "dns.google"),
    ("9.9.9.9", "dns.quad9.net"),
    ("149.112.112.112", "dns.quad9.net"),
    ("2620:fe::fe", "dns.quad9.net"),
    ("2620:fe::9", "dns.quad9.net"),
    ("208.67.222.222", "doh.opendns.com"),
    ("208.67.220.220", "doh.opendns.com"),
    ("94.140.14.14", "dns.adguard-dns.com"),
    ("94.140.15.15", "dns.adguard-dns.com"),
    ("45.90.28.0", "dns.nextdns.io"),
    ("45.90.30.0", "dns.nextdns.io"),
    ("194.242.2.2", "dns.mullvad.net"),
    ("185.222.222.222", "dns.sb"),
    ("76.76.2.0", "freedns.controld.com"),
];

/// Ports of DNS over HTTPS (443, also HTTP/3) and over TLS or QUIC (853).
const PORTS: [u16; 2] = [443, 853];

/// The DoH/DoT service `remote` is, when it is a well-known one.
pub fn endpoint(remote: SocketAddr) -> Option<&'static str> {
    if !PORTS.contains(&remote.port()) {
        return None;
    }
    let ip = remote.ip().to_canonical();
    ENDPOINTS
        .iter()
        .find(|(a, _)| a.parse::<IpAddr>().is_ok_and(|x| x == ip))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_endpoints_on_their_ports_only() {
        assert_eq!(
            endpoint("1.1.1.1:443".parse().unwrap()),
            Some("cloudflare-dns.com")
        );
        assert_eq!(
            endpoint("[::ffff:8.8.8.8]:853".parse().unwrap()),
            Some("dns.google")
        );
        assert_eq!(
            endpoint("[2620:fe::fe]:443".parse().unwrap()),
            Some("dns.quad9.net")
        );
        assert_eq!(
            endpoint("1.1.1.1:53".parse().unwrap()),
            None,
            "plain DNS is seen"
        );
        assert_eq!(endpoint("1.1.1.2:443".parse().unwrap()), None);
        for (a, _) in ENDPOINTS {
            assert!(a.parse::<IpAddr>().is_ok(), "{a}");
        }
    }
}
