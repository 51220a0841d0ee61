//! No way around the gates: every way a tagged process can get data out that
//! the connect and sendmsg hooks alone do not see (issue 13). Each case runs
//! in monitor mode (detected: the record names the process, class and real
//! destination; the packet leaves) and enforce mode (the remote host's
//! sniffer sees no byte of the marker payload), and untagged processes are
//! never judged.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use harness::harness::{
    agent::workspace_bin,
    netns::Sniffer,
    probe::{self, Waiting, gateprobe},
    scenario::{EU, EU_BIT, Scenario},
};
use sensor_common::{
    flow::{FlowEvent, FlowKind, packet},
    net::{AF_INET, AF_PACKET, IPPROTO_ICMP, IPPROTO_UDP},
    policy::{action, verdict},
};
use sensor_user::kernel::verdicts::{Mode, Verdict, VerdictEntry};

/// How long an enforce test watches the remote for a packet that must not come.
const QUIET: Duration = Duration::from_millis(400);

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("gateprobe printed {line:?}: {e}"))
}

/// A gateprobe that keeps running: its JSON lines, its stdin.
struct Gate {
    w: Waiting,
}

impl Gate {
    fn start(cmd: Command) -> Gate {
        Gate {
            w: Waiting::start(cmd),
        }
    }

    fn pid(&self) -> u32 {
        self.w.pid()
    }

    fn line(&mut self) -> serde_json::Value {
        json(&self.w.read_line())
    }

    /// The errno list of the next report line.
    fn errnos(&mut self) -> Vec<i64> {
        loop {
            let v = self.line();
            if let Some(a) = v["errno"].as_array() {
                return a.iter().map(|e| e.as_i64().expect("errno")).collect();
            }
        }
    }

    /// `hold`: writes `payload` on the held socket; returns the write's errno.
    fn write(&mut self, payload: &str) -> i64 {
        self.w.send_line(payload);
        self.line()["errno"].as_i64().expect("errno")
    }
}

fn marker(name: &str) -> String {
    format!("RSMARK-{name}-{}", std::process::id())
}

/// Records of process `tgid` of `kind`.
fn records(sc: &mut Scenario, n: usize, tgid: u32, kind: FlowKind) -> Vec<FlowEvent> {
    sc.fx
        .wait_for(n, |e| e.tgid == tgid && e.flow_kind() == Some(kind))
}

/// Asserts the remote saw the marker (monitor) or not one byte of it (enforce).
fn assert_leak(mode: Mode, sniffer: &Sniffer, marker: &str) {
    match mode {
        Mode::Enforce => {
            thread::sleep(QUIET);
            assert_eq!(
                sniffer.count(marker.as_bytes()),
                0,
                "enforce mode: the remote must not see {marker}"
            );
        }
        _ => assert!(
            sniffer.wait_for(marker.as_bytes(), Duration::from_secs(3)) > 0,
            "monitor mode: the remote saw {marker}"
        ),
    }
}

fn want_action(mode: Mode) -> u8 {
    if mode == Mode::Enforce {
        action::DENIED
    } else {
        action::REPORTED
    }
}

/// One violation record of `tgid` about `remote`, with the class and action.
fn assert_packet_record(sc: &mut Scenario, mode: Mode, tgid: u32, remote: IpAddr) -> FlowEvent {
    let want = want_action(mode);
    let recs = sc.fx.wait_for(1, |e| {
        e.tgid == tgid
            && e.flow_kind() == Some(FlowKind::Packet)
            && e.remote().ip() == remote
            && e.action == want
    });
    let ev = recs.first().copied().unwrap_or_else(|| {
        panic!("a packet record of {tgid} to {remote} with action {want}: {recs:?}")
    });
    assert_eq!(ev.classes, EU_BIT);
    assert_eq!(ev.verdict, verdict::DENY);
    assert_eq!(ev.action, want_action(mode));
    ev
}

// ---------------------------------------------------------------------------
// Sockets that cannot be judged by destination.

fn raw_socket(mode: Mode, op: &str) {
    let mut sc = Scenario::new(mode);
    let sniffer = sc.net.virginia.sniffer();
    let m = marker(op);
    let target = match op {
        "raw-udp" => SocketAddr::new(IpAddr::V4(sc.net.virginia.v4), 9).to_string(),
        _ => sc.net.virginia.v4.to_string(),
    };
    let mut g = Gate::start(sc.in_cgroup(gateprobe(&[op, &target, &m])));
    let errno = g.errnos()[0];
    let pid = g.pid();
    let recs = records(&mut sc, 1, pid, FlowKind::Socket);
    assert_eq!(recs.len(), 1, "one socket record: {recs:?}");
    let ev = recs[0];
    assert_eq!(ev.classes, EU_BIT);
    assert_eq!(ev.family, AF_INET);
    assert_eq!(ev.action, want_action(mode));
    if op == "raw-udp" {
        assert_eq!(ev.protocol, IPPROTO_UDP);
        assert_eq!(ev.detail, libc::SOCK_RAW as u64);
    } else {
        assert_eq!(ev.protocol, IPPROTO_ICMP);
    }
    if mode == Mode::Enforce {
        assert_eq!(errno, i64::from(libc::EPERM), "socket() refused");
    } else {
        assert_eq!(errno, 0, "monitor mode lets the send through");
        // The socket is marked: its packet is judged by destination too.
        {
            let ip = IpAddr::V4(sc.net.virginia.v4);
            assert_packet_record(&mut sc, mode, pid, ip)
        };
    }
    assert_leak(mode, &sniffer, &m);
}

/// Ping sockets need the caller's group in net.ipv4.ping_group_range; the
/// guard puts the old range back.
struct PingRange(String);

impl PingRange {
    const PATH: &'static str = "/proc/sys/net/ipv4/ping_group_range";
    fn open() -> PingRange {
        let old = std::fs::read_to_string(Self::PATH).expect("ping_group_range");
        std::fs::write(Self::PATH, "0 2147483647").expect("setting ping_group_range");
        PingRange(old.trim().replace('\t', " "))
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

mod raw {
    use super::*;

    #[test]
    fn raw_udp_monitor() {
        raw_socket(Mode::Monitor, "raw-udp");
    }
    #[test]
    fn raw_udp_enforce() {
        raw_socket(Mode::Enforce, "raw-udp");
    }
    #[test]
    fn raw_icmp_monitor() {
        raw_socket(Mode::Monitor, "raw-icmp");
    }
    #[test]
    fn raw_icmp_enforce() {
        raw_socket(Mode::Enforce, "raw-icmp");
    }
    #[test]
    fn ping_socket_monitor_and_enforce() {
        let _range = PingRange::open();
        raw_socket(Mode::Monitor, "ping");
        raw_socket(Mode::Enforce, "ping");
    }

    #[test]
    fn policy_can_allow_raw_sockets_per_class() {
        let mut sc = Scenario::new(Mode::Enforce);
        sc.fx
            .sensor
            .set_socket_rules(EU_BIT, 0, 0)
            .expect("socket rules");
        let sniffer = sc.net.frankfurt.sniffer();
        let m = marker("raw-allowed");
        let target = SocketAddr::new(IpAddr::V4(sc.net.frankfurt.v4), 9).to_string();
        let mut g = Gate::start(sc.in_cgroup(gateprobe(&["raw-udp", &target, &m])));
        assert_eq!(g.errnos(), vec![0], "allowed raw socket to an allowed host");
        assert!(sniffer.wait_for(m.as_bytes(), Duration::from_secs(3)) > 0);
        thread::sleep(Duration::from_millis(200));
        assert!(records(&mut sc, 0, g.pid(), FlowKind::Socket).is_empty());
    }

    #[test]
    fn packet_socket_reported_and_killed_on_request() {
        let mut sc = Scenario::new(Mode::Enforce);
        // Reported, not killed, by default.
        let mut g = Gate::start(sc.in_cgroup(gateprobe(&["packet"])));
        assert_eq!(g.errnos(), vec![0]);
        let recs = records(&mut sc, 1, g.pid(), FlowKind::Socket);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].family, AF_PACKET);
        assert_eq!(recs[0].classes, EU_BIT);
        assert_eq!(recs[0].action, action::REPORTED);
        // packet_sockets = "kill": the process dies before socket() returns.
        sc.fx
            .sensor
            .set_socket_rules(0, EU_BIT, 0)
            .expect("socket rules");
        let mut child = sc
            .in_cgroup(gateprobe(&["packet"]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gateprobe");
        let pid = child.id();
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed: {status:?}");
        let mut out = String::new();
        let _ = child.stdout.take().expect("piped").read_to_string(&mut out);
        assert!(!out.contains("errno"), "socket() never returned: {out}");
        let recs = records(&mut sc, 1, pid, FlowKind::Socket);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].action, action::DENIED);
    }

    #[test]
    fn untagged_process_is_never_judged() {
        let mut sc = Scenario::new(Mode::Enforce);
        let sniffer = sc.net.virginia.sniffer();
        let m = marker("untagged-raw");
        let target = SocketAddr::new(IpAddr::V4(sc.net.virginia.v4), 9).to_string();
        let mut raw = Gate::start(gateprobe(&["raw-udp", &target, &m]));
        assert_eq!(raw.errnos(), vec![0]);
        let mut pkt = Gate::start(gateprobe(&["packet"]));
        assert_eq!(pkt.errnos(), vec![0]);
        let m2 = marker("untagged-lsrr");
        let mut opt = Gate::start(gateprobe(&["lsrr", &target, &m2]));
        assert_eq!(opt.errnos(), vec![0, 0]);
        assert!(sniffer.wait_for(m.as_bytes(), Duration::from_secs(3)) > 0);
        thread::sleep(Duration::from_millis(200));
        for pid in [raw.pid(), pkt.pid(), opt.pid()] {
            assert!(
                sc.fx.all(|e| e.tgid == pid).is_empty(),
                "no record for an untagged process"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Source routes.

mod source_route {
    use super::*;

    /// A datagram to an allowed host that carries a source route: the
    /// backstop judges the packet a violation whatever its destination (the
    /// route, not the destination, says where it goes).
    fn routed(mode: Mode, v6: bool) {
        routed_after(mode, v6, &[]);
    }

    /// `routed`, with extra gateprobe arguments (the IPv4 option padding).
    fn routed_after(mode: Mode, v6: bool, extra: &[&str]) {
        let mut sc = Scenario::new(mode);
        let sniffer = sc.net.frankfurt.sniffer();
        let m = marker(if v6 { "srh" } else { "lsrr" });
        let ip = sc.net.frankfurt.addr(v6);
        let target = SocketAddr::new(ip, 9).to_string();
        let op = if v6 { "srh" } else { "lsrr" };
        let mut args = vec![op, target.as_str(), m.as_str()];
        args.extend_from_slice(extra);
        let mut g = Gate::start(sc.in_cgroup(gateprobe(&args)));
        let errnos = g.errnos();
        assert_eq!(errnos[0], 0, "the option itself is accepted: {errnos:?}");
        let ev = assert_packet_record(&mut sc, mode, g.pid(), ip);
        assert_eq!(ev.detail, packet::SOURCE_ROUTE);
        if mode == Mode::Enforce {
            assert_eq!(errnos[1], i64::from(libc::EPERM), "the datagram is dropped");
        } else {
            assert_eq!(errnos[1], 0);
        }
        assert_leak(mode, &sniffer, &m);
    }

    #[test]
    fn ipv4_loose_source_route_monitor() {
        routed(Mode::Monitor, false);
    }
    #[test]
    fn ipv4_loose_source_route_enforce() {
        routed(Mode::Enforce, false);
    }
    /// 32 one-byte NOPs before the route (the option area holds 40 bytes):
    /// the backstop reads every option, not only the first few.
    #[test]
    fn ipv4_source_route_behind_padding_enforce() {
        routed_after(Mode::Enforce, false, &["32"]);
    }

    #[test]
    fn ipv6_segment_routing_header_monitor() {
        routed(Mode::Monitor, true);
    }
    #[test]
    fn ipv6_segment_routing_header_enforce() {
        routed(Mode::Enforce, true);
    }
}

// ---------------------------------------------------------------------------
// Sockets that change hands or outlive their judgement.

mod handed_over {
    use super::*;

    /// A server on the Virginia host counting what arrives: TCP (bytes, held
    /// connections) or UDP (datagrams).
    fn denied_server(sc: &Scenario, proto: &str) -> harness::harness::netns::Server {
        if proto == "tcp" {
            sc.net.virginia.tcp_hold_server(false)
        } else {
            sc.net.virginia.udp_server(false)
        }
    }

    fn scm_rights(mode: Mode, proto: &str) {
        let mut sc = Scenario::new(mode);
        let sniffer = sc.net.virginia.sniffer();
        let server = denied_server(&sc, proto);
        let path = format!("/tmp/rs-gate-{}-{proto}-{mode:?}.sock", std::process::id());
        // An untagged process connects (allowed: it carries no class)…
        let mut owner = Gate::start(gateprobe(&[
            "fd-serve",
            &path,
            proto,
            &server.addr.to_string(),
        ]));
        assert_eq!(owner.line()["ready"], true);
        // …and hands the socket to a tagged one, which writes.
        let m = marker(&format!("scm-{proto}"));
        let mut taker = Gate::start(sc.in_cgroup(gateprobe(&["fd-recv", &path, &m])));
        let errno = taker.errnos()[0];
        if proto == "udp" && mode == Mode::Enforce {
            assert_eq!(
                errno,
                i64::from(libc::EPERM),
                "the datagram is dropped on its way out"
            );
        }
        assert_leak(mode, &sniffer, &m);
        {
            let ip = IpAddr::V4(sc.net.virginia.v4);
            assert_packet_record(&mut sc, mode, taker.pid(), ip)
        };
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn scm_rights_tcp_monitor() {
        scm_rights(Mode::Monitor, "tcp");
    }
    #[test]
    fn scm_rights_tcp_enforce() {
        scm_rights(Mode::Enforce, "tcp");
    }
    #[test]
    fn scm_rights_udp_monitor() {
        scm_rights(Mode::Monitor, "udp");
    }
    #[test]
    fn scm_rights_udp_enforce() {
        scm_rights(Mode::Enforce, "udp");
    }

    fn pidfd_getfd(mode: Mode, proto: &str) {
        let mut sc = Scenario::new(mode);
        let sniffer = sc.net.virginia.sniffer();
        let server = denied_server(&sc, proto);
        let mut owner = Gate::start(gateprobe(&["hold", proto, &server.addr.to_string()]));
        let held = owner.line();
        assert_eq!(held["errno"], 0);
        let (pid, fd) = (held["pid"].to_string(), held["fd"].to_string());
        let m = marker(&format!("getfd-{proto}"));
        let mut taker = Gate::start(sc.in_cgroup(gateprobe(&["getfd", &pid, &fd, &m])));
        assert_eq!(taker.errnos().len(), 1);
        assert_leak(mode, &sniffer, &m);
        {
            let ip = IpAddr::V4(sc.net.virginia.v4);
            assert_packet_record(&mut sc, mode, taker.pid(), ip)
        };
    }

    #[test]
    fn pidfd_getfd_tcp_monitor() {
        pidfd_getfd(Mode::Monitor, "tcp");
    }
    #[test]
    fn pidfd_getfd_tcp_enforce() {
        pidfd_getfd(Mode::Enforce, "tcp");
    }
    #[test]
    fn pidfd_getfd_udp_enforce() {
        pidfd_getfd(Mode::Enforce, "udp");
    }

    fn opened_before_tagging(mode: Mode, proto: &str) {
        let mut sc = Scenario::new(mode);
        let sniffer = sc.net.virginia.sniffer();
        let server = denied_server(&sc, proto);
        let mut pool = Gate::start(gateprobe(&["hold", proto, &server.addr.to_string()]));
        assert_eq!(pool.line()["errno"], 0);
        // Before the tag: it may send.
        let before = marker(&format!("pool-before-{proto}"));
        assert_eq!(pool.write(&before), 0);
        assert!(sniffer.wait_for(before.as_bytes(), Duration::from_secs(3)) > 0);
        sc.fx
            .sensor
            .tag_process(pool.pid(), EU_BIT)
            .expect("tagging the process");
        let after = marker(&format!("pool-after-{proto}"));
        pool.write(&after);
        assert_leak(mode, &sniffer, &after);
        {
            let ip = IpAddr::V4(sc.net.virginia.v4);
            assert_packet_record(&mut sc, mode, pool.pid(), ip)
        };
    }

    #[test]
    fn connection_opened_before_tagging_tcp_monitor() {
        opened_before_tagging(Mode::Monitor, "tcp");
    }
    #[test]
    fn connection_opened_before_tagging_tcp_enforce() {
        opened_before_tagging(Mode::Enforce, "tcp");
    }
    #[test]
    fn connection_opened_before_tagging_udp_enforce() {
        opened_before_tagging(Mode::Enforce, "udp");
    }

    #[test]
    fn switching_to_enforce_stops_an_open_transfer() {
        let mut sc = Scenario::new(Mode::Monitor);
        let sniffer = sc.net.virginia.sniffer();
        let server = sc.net.virginia.tcp_hold_server(false);
        let mut g =
            Gate::start(sc.in_cgroup(gateprobe(&["hold", "tcp", &server.addr.to_string()])));
        assert_eq!(g.line()["errno"], 0);
        let first = marker("transfer-first");
        assert_eq!(g.write(&first), 0);
        assert!(sniffer.wait_for(first.as_bytes(), Duration::from_secs(3)) > 0);
        sc.fx.sensor.set_mode(EU, Mode::Enforce).expect("enforce");
        let second = marker("transfer-second");
        g.write(&second);
        assert_leak(Mode::Enforce, &sniffer, &second);
        {
            let ip = IpAddr::V4(sc.net.virginia.v4);
            assert_packet_record(&mut sc, Mode::Enforce, g.pid(), ip)
        };
    }

    #[test]
    fn unconnected_udp_bytes_are_counted_per_destination() {
        let mut sc = Scenario::new(Mode::Monitor);
        let a = sc.net.frankfurt.udp_server(false);
        let b = sc.net.frankfurt.udp_server(false);
        let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
        let mut g = Gate::start(sc.in_cgroup(gateprobe(&[
            "udp-multi",
            &sa,
            "10",
            &sb,
            "20",
            &sa,
            "30",
            &sa,
            "5",
        ])));
        assert_eq!(g.errnos(), vec![0, 0, 0, 0]);
        let pid = g.pid();
        drop(g);
        // A at 10 bytes, B at 20, A again at 30 + 5 (closed with the socket).
        let closes = records(&mut sc, 3, pid, FlowKind::Close);
        let sum = |port: u16| -> u64 {
            closes
                .iter()
                .filter(|e| e.remote_port == port)
                .map(|e| e.detail)
                .sum()
        };
        assert_eq!(closes.len(), 3, "{closes:?}");
        assert_eq!(
            (sum(a.addr.port()), sum(b.addr.port())),
            (45, 20),
            "{closes:?}"
        );
    }

    #[test]
    fn bytes_of_another_writer_are_counted() {
        let mut sc = Scenario::new(Mode::Monitor);
        let server = sc.net.frankfurt.tcp_hold_server(false);
        let mut owner =
            Gate::start(sc.in_cgroup(gateprobe(&["hold", "tcp", &server.addr.to_string()])));
        let held = owner.line();
        let (pid, fd) = (held["pid"].to_string(), held["fd"].to_string());
        let payload = "x".repeat(50);
        // An untagged process writes 50 bytes on the tagged process's socket.
        let mut other = Gate::start(gateprobe(&["getfd", &pid, &fd, &payload]));
        assert_eq!(other.errnos(), vec![0]);
        drop(other);
        drop(owner);
        let close = records(
            &mut sc,
            1,
            held["pid"].as_u64().expect("pid") as u32,
            FlowKind::Close,
        );
        assert_eq!(close.len(), 1, "{close:?}");
        assert_eq!(close[0].detail, 50, "bytes of every writer");
    }
}

// ---------------------------------------------------------------------------
// NAT, inbound, cgroup moves.

/// An nftables table for one test; deleted on drop.
struct Nft(String);

impl Nft {
    fn new(name: &str, rules: &str) -> Nft {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", name])
            .output();
        let script = format!("table ip {name} {{\n{rules}\n}}\n");
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())
            .expect("nft script");
        assert!(child.wait().expect("nft").success(), "nft -f: {script}");
        Nft(name.to_owned())
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .output();
    }
}

mod nat_inbound_moves {
    use super::*;

    fn service_vip(mode: Mode) {
        let mut sc = Scenario::new(mode);
        let server = sc.net.virginia.tcp_hold_server(false);
        // A service VIP (198.18/15, the benchmark range), allowed by the
        // policy, DNAT'd to the Virginia backend like a Kubernetes Service
        // (masqueraded, so the backend can answer).
        let vip = format!("198.18.{}.{}", std::process::id() % 250, 10 + (mode as u8));
        let table = format!("rs_vip_{}_{}", std::process::id(), mode as u8);
        let _nft = Nft::new(
            &table,
            &format!(
                "chain out {{\n type nat hook output priority -100;\n ip daddr {vip} tcp dport {port} dnat to {backend}\n}}\n\
                 chain post {{\n type nat hook postrouting priority 100;\n ip daddr {ip} tcp dport {port} masquerade\n}}",
                port = server.addr.port(),
                backend = server.addr,
                ip = server.addr.ip(),
            ),
        );
        let mut table_entries = vec![VerdictEntry {
            class: EU,
            net: format!("{vip}/32").parse().expect("vip"),
            verdict: Verdict::Allow,
        }];
        for (host, v) in [
            (&sc.net.frankfurt, Verdict::Allow),
            (&sc.net.virginia, Verdict::Deny),
        ] {
            for net in harness::harness::scenario::host_nets(host) {
                table_entries.push(VerdictEntry {
                    class: EU,
                    net,
                    verdict: v,
                });
            }
        }
        sc.fx
            .sensor
            .replace_verdicts(&table_entries)
            .expect("verdicts");
        let sniffer = sc.net.virginia.sniffer();
        let target = format!("{vip}:{}", server.addr.port());
        let mut g = Gate::start(sc.in_cgroup(gateprobe(&["hold", "tcp", &target])));
        assert_eq!(
            g.line()["errno"],
            0,
            "the VIP is allowed: the connect succeeds"
        );
        let m = marker("vip");
        g.write(&m);
        assert_leak(mode, &sniffer, &m);
        let ev = {
            let ip = IpAddr::V4(sc.net.virginia.v4);
            assert_packet_record(&mut sc, mode, g.pid(), ip)
        };
        assert_eq!(
            ev.remote_port,
            server.addr.port(),
            "the backend, not the VIP"
        );
    }

    #[test]
    fn service_vip_dnat_monitor() {
        service_vip(Mode::Monitor);
    }
    #[test]
    fn service_vip_dnat_enforce() {
        service_vip(Mode::Enforce);
    }

    fn tagged_server(mode: Mode) {
        let mut sc = Scenario::new(mode);
        let sniffer = sc.net.virginia.sniffer();
        let m = marker("reply");
        let bind = SocketAddr::new(IpAddr::V4(sc.net.virginia.host_v4), 0).to_string();
        let mut srv = Gate::start(sc.in_cgroup(gateprobe(&["serve", &bind, &m])));
        let port = srv.line()["port"].as_u64().expect("port") as u16;
        let to = SocketAddr::new(IpAddr::V4(sc.net.virginia.host_v4), port);
        // A client in the disallowed country connects and reads the reply.
        let got = sc.net.virginia.inside(move || {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
                return None;
            };
            s.set_read_timeout(Some(Duration::from_millis(800)))
                .expect("timeout");
            let mut buf = vec![0u8; 256];
            let n = s.read(&mut buf).unwrap_or(0);
            buf.truncate(n);
            Some(buf)
        });
        if mode == Mode::Enforce {
            // The listener is marked: its SYN-ACK to the denied peer is
            // dropped, so the handshake never completes and accept() never
            // returns.
            assert_eq!(got, None, "the handshake is refused");
            let ev = {
                let ip = IpAddr::V4(sc.net.virginia.v4);
                assert_packet_record(&mut sc, mode, srv.pid(), ip)
            };
            assert_eq!(ev.local_port, 0);
        } else {
            assert_eq!(got.as_deref(), Some(m.as_bytes()));
            let recs = records(&mut sc, 1, srv.pid(), FlowKind::Accept);
            assert_eq!(recs.len(), 1, "{recs:?}");
            assert_eq!(recs[0].remote().ip(), IpAddr::V4(sc.net.virginia.v4));
            assert_eq!(recs[0].classes, EU_BIT);
            assert_eq!(recs[0].verdict, verdict::DENY);
            assert_eq!(recs[0].action, action::REPORTED);
        }
        assert_leak(mode, &sniffer, &m);
    }

    #[test]
    fn tagged_server_with_disallowed_client_monitor() {
        tagged_server(Mode::Monitor);
    }
    #[test]
    fn tagged_server_with_disallowed_client_enforce() {
        tagged_server(Mode::Enforce);
    }

    fn moved_into_selected_cgroup(mode: Mode) {
        let mut sc = Scenario::new(mode);
        let server = sc.net.virginia.tcp_server(false);
        let w = Waiting::start(probe::command(&[
            "--wait-stdin",
            "tcp-connect",
            &server.addr.to_string(),
        ]));
        let pid = w.pid();
        // Started outside: untagged. Moved in after its exec: tagged.
        sc.cgroup.enter(pid);
        let tags = sc
            .fx
            .wait_for(1, |e| e.tgid == pid && e.flow_kind() == Some(FlowKind::Tag));
        assert_eq!(tags.len(), 1, "tagged by the move: {tags:?}");
        assert_eq!(tags[0].classes, EU_BIT);
        let p = w.go();
        let connects = records(&mut sc, 1, pid, FlowKind::Connect);
        assert_eq!(connects.len(), 1, "{connects:?}");
        assert_eq!(connects[0].action, want_action(mode));
        if mode == Mode::Enforce {
            assert_eq!(p.errno(), libc::EPERM);
            thread::sleep(QUIET);
            assert_eq!(server.received(), 0);
        } else {
            assert_eq!(p.errno(), 0);
        }
    }

    #[test]
    fn moved_into_selected_cgroup_monitor() {
        moved_into_selected_cgroup(Mode::Monitor);
    }
    #[test]
    fn moved_into_selected_cgroup_enforce() {
        moved_into_selected_cgroup(Mode::Enforce);
    }
}

// ---------------------------------------------------------------------------
// Local relays.

mod local_relay {
    use super::*;

    /// A tagged client hands its data to an untagged relay on 127.0.0.1,
    /// which sends it on to Virginia.
    fn relay(mode: Mode, propagate: bool) {
        let mut sc = Scenario::new(mode);
        if propagate {
            sc.fx
                .sensor
                .set_socket_rules(0, 0, EU_BIT)
                .expect("socket rules");
        }
        let sniffer = sc.net.virginia.sniffer();
        let server = sc.net.virginia.tcp_hold_server(false);
        let m = marker(&format!("relay-{propagate}"));
        let mut relay = Gate::start(gateprobe(&[
            "relay",
            "127.0.0.1:0",
            &server.addr.to_string(),
            &m,
        ]));
        let port = relay.line()["port"].as_u64().expect("port");
        let client = sc.inside(&["tcp-connect", &format!("127.0.0.1:{port}")]);
        assert_eq!(client.errno(), 0, "loopback is always allowed");
        let errnos = relay.errnos();
        let pid = relay.pid();
        if !propagate {
            assert_eq!(errnos, vec![0, 0], "an untagged relay is not judged");
            assert!(sniffer.wait_for(m.as_bytes(), Duration::from_secs(3)) > 0);
            assert!(sc.fx.all(|e| e.tgid == pid).is_empty());
            return;
        }
        let tags = records(&mut sc, 1, pid, FlowKind::Tag);
        assert_eq!(tags.len(), 1, "{tags:?}");
        assert_eq!(tags[0].classes, EU_BIT);
        assert_eq!(tags[0].reason, sensor_common::tag::reason::LOCAL);
        assert_eq!(
            tags[0].detail,
            u64::from(client.pid),
            "carried from the client"
        );
        let connects = records(&mut sc, 1, pid, FlowKind::Connect);
        assert_eq!(
            connects.len(),
            1,
            "the relay's connect is judged: {connects:?}"
        );
        assert_eq!(connects[0].action, want_action(mode));
        if mode == Mode::Enforce {
            assert_eq!(errnos[0], i64::from(libc::EPERM));
        }
        assert_leak(mode, &sniffer, &m);
    }

    #[test]
    fn relay_carries_the_class_monitor() {
        relay(Mode::Monitor, true);
    }
    #[test]
    fn relay_carries_the_class_enforce() {
        relay(Mode::Enforce, true);
    }
    #[test]
    fn relay_without_propagate_over_local_is_not_judged() {
        relay(Mode::Enforce, false);
    }
}

/// An MPTCP connection's records say MPTCP, not TCP (its packets are TCP).
#[test]
fn mptcp_records_say_mptcp() {
    if std::fs::read_to_string("/proc/sys/net/mptcp/enabled").map_or(true, |v| v.trim() != "1") {
        eprintln!("MPTCP is disabled on this host (net.mptcp.enabled): nothing to check");
        return;
    }
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.virginia.tcp_hold_server(false);
    let target = server.addr.to_string();
    let mut g = Gate::start(sc.in_cgroup(gateprobe(&["mptcp", &target, &marker("mptcp")])));
    assert_eq!(g.errnos(), vec![0]);
    let pid = g.pid();
    let recs = records(&mut sc, 1, pid, FlowKind::Connect);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].protocol, sensor_common::net::IPPROTO_TCP);
    assert_eq!(recs[0].sock_protocol, sensor_common::net::IPPROTO_MPTCP);
    assert_eq!(recs[0].action, action::REPORTED);
}

/// `ip` with `args`, asserting success.
fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host's MPTCP limits, raised so that this host accepts an address its
/// peer announces, and put back on drop. Host-wide (the limits, and the
/// route to the announced address): one test at a time, in any process.
struct MptcpLimits {
    before: String,
    _serial: harness::harness::slot::HostLock,
}

impl MptcpLimits {
    fn accept_announced() -> MptcpLimits {
        let guard = harness::harness::slot::HostLock::take("mptcp");
        let out = Command::new("ip")
            .args(["mptcp", "limits", "show"])
            .output()
            .expect("ip mptcp");
        let before = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ip_cmd(&[
            "mptcp",
            "limits",
            "set",
            "add_addr_accepted",
            "4",
            "subflows",
            "4",
        ]);
        MptcpLimits {
            before,
            _serial: guard,
        }
    }
}

impl Drop for MptcpLimits {
    fn drop(&mut self) {
        let mut args = vec!["mptcp", "limits", "set"];
        args.extend(self.before.split_whitespace());
        let _ = Command::new("ip").args(&args).output();
    }
}

/// A Frankfurt (allowed) MPTCP server that announces a second address of its
/// own, 192.0.2.77, which the policy denies: the tagged client's kernel opens
/// an additional subflow to it and sends part of the stream there.
fn mptcp_announcing_server(sc: &mut Scenario) -> (Waiting, SocketAddr, std::net::Ipv4Addr) {
    let extra = std::net::Ipv4Addr::new(192, 0, 2, 77);
    let host = &sc.net.frankfurt;
    let peer = format!("{}p", host.veth);
    ip_cmd(&[
        "-n",
        &host.netns,
        "addr",
        "add",
        &format!("{extra}/32"),
        "dev",
        &peer,
    ]);
    ip_cmd(&["route", "add", &format!("{extra}/32"), "dev", &host.veth]);
    ip_cmd(&[
        "-n",
        &host.netns,
        "mptcp",
        "limits",
        "set",
        "subflows",
        "4",
        "add_addr_accepted",
        "4",
    ]);
    ip_cmd(&[
        "-n",
        &host.netns,
        "mptcp",
        "endpoint",
        "add",
        &extra.to_string(),
        "dev",
        &peer,
        "signal",
    ]);
    let mut table = Vec::new();
    for (h, verdict) in [
        (&sc.net.frankfurt, Verdict::Allow),
        (&sc.net.virginia, Verdict::Deny),
    ] {
        for n in harness::harness::scenario::host_nets(h) {
            table.push(VerdictEntry {
                class: EU,
                net: n,
                verdict,
            });
        }
    }
    table.push(VerdictEntry {
        class: EU,
        net: format!("{extra}/32").parse().expect("prefix"),
        verdict: Verdict::Deny,
    });
    sc.fx.sensor.replace_verdicts(&table).expect("verdicts");
    let mut sink = Waiting::start({
        let mut c = host.command(workspace_bin("gateprobe").to_str().expect("utf-8"));
        // Any address: the additional subflow arrives at the announced one.
        c.args(["mptcp-sink", "0.0.0.0:0"]);
        c
    });
    let port = json(&sink.read_line())["port"].as_u64().expect("port") as u16;
    (sink, SocketAddr::new(IpAddr::V4(host.v4), port), extra)
}

fn mptcp_enabled() -> bool {
    let on = std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|v| v.trim() == "1");
    if !on {
        eprintln!("MPTCP is disabled on this host (net.mptcp.enabled): nothing to check");
    }
    on
}

/// A bulk MPTCP stream to an allowed server that announces a denied address
/// of its own: the kernel opens a subflow there (no connect call of the
/// process's), and part of the stream would leave through it.
fn mptcp_subflow_case(
    mode: Mode,
) -> (Scenario, Sniffer, String, u32, std::net::Ipv4Addr, Vec<i64>) {
    let mut sc = Scenario::new(mode);
    let (sink, server, extra) = mptcp_announcing_server(&mut sc);
    let sniff = sc.net.frankfurt.sniffer();
    let m = marker("mptcp-subflow");
    let mut g = Gate::start(sc.in_cgroup(gateprobe(&[
        "mptcp-stream",
        &server.to_string(),
        &m,
        "1500",
    ])));
    let errnos = g.errnos();
    let pid = g.pid();
    drop(g);
    drop(sink);
    (sc, sniff, m, pid, extra, errnos)
}

#[test]
fn mptcp_subflow_to_an_announced_address_is_judged_monitor() {
    if !mptcp_enabled() {
        return;
    }
    let _limits = MptcpLimits::accept_announced();
    let (mut sc, sniff, m, pid, extra, errnos) = mptcp_subflow_case(Mode::Monitor);
    assert_eq!(errnos, vec![0, 0]);
    assert!(
        sniff.count_to(m.as_bytes(), extra) > 0,
        "monitor mode: the subflow to {extra} carried part of the stream (the case is real)"
    );
    let recs = records(&mut sc, 1, pid, FlowKind::Packet);
    let r = recs
        .iter()
        .find(|r| r.remote().ip() == IpAddr::V4(extra))
        .unwrap_or_else(|| panic!("a packet record for the subflow to {extra}: {recs:?}"));
    assert_eq!((r.action, r.classes), (action::REPORTED, EU_BIT));
}

#[test]
fn mptcp_subflow_to_an_announced_address_is_judged_enforce() {
    if !mptcp_enabled() {
        return;
    }
    let _limits = MptcpLimits::accept_announced();
    let (mut sc, sniff, m, pid, extra, errnos) = mptcp_subflow_case(Mode::Enforce);
    assert_eq!(errnos, vec![0, 0], "the allowed path carries the stream");
    assert!(
        sniff.count_to(m.as_bytes(), sc.net.frankfurt.v4) > 0,
        "the stream reached the allowed address"
    );
    assert_eq!(
        sniff.count_to(b"", extra),
        0,
        "not one packet of the subflow to the denied {extra} left"
    );
    let recs = records(&mut sc, 1, pid, FlowKind::Packet);
    assert!(
        recs.iter()
            .any(|r| r.remote().ip() == IpAddr::V4(extra) && r.action == action::DENIED),
        "the refused subflow is recorded: {recs:?}"
    );
}
