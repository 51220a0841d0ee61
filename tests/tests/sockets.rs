//! Socket lifetime of tagged processes: inbound connections they accept (with
//! the peer), and the close record with the bytes that left and how long.

use std::{net::SocketAddr, time::Duration};

use harness::harness::{
    probe::{self, Waiting},
    scenario::{EU_BIT, Scenario},
};
use sensor_common::{
    flow::{FLOW_SLOT_COUNT, FlowKind},
    net::{AF_INET, AF_INET6, IPPROTO_TCP},
};
use sensor_user::kernel::verdicts::Mode;

fn inbound(v6: bool) {
    // Monitor mode: in enforce mode a denied peer's handshake is refused
    // (tests/tests/socket_gates.rs).
    let mut sc = Scenario::new(Mode::Monitor);
    let host_ip = if v6 {
        sc.net.virginia.host_v6.to_string()
    } else {
        sc.net.virginia.host_v4.to_string()
    };
    let bind = if v6 {
        format!("[{host_ip}]:0")
    } else {
        format!("{host_ip}:0")
    };
    let mut server = Waiting::start(sc.in_cgroup(probe::command(&["tcp-serve", &bind])));
    let line = server.read_line();
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("listening line");
    let port = v["listening"].as_u64().expect("port") as u16;
    let target = if v6 {
        format!("[{host_ip}]:{port}")
    } else {
        format!("{host_ip}:{port}")
    };
    // The "Virginia" client, in its network namespace, connects in.
    let mut client = sc
        .net
        .virginia
        .command(probe::netprobe().to_str().expect("utf-8 path"));
    client.args(["tcp-connect", &target]);
    let c = probe::run(client);
    assert_eq!(
        c.errno(),
        0,
        "monitor mode: inbound is reported, not denied: {c:?}"
    );
    let server_pid = server.pid();
    let s = server.go();
    assert_eq!(s.errno(), 0);
    let recs = sc.fx.wait_for(1, |e| {
        e.tgid == server_pid && e.flow_kind() == Some(FlowKind::Accept)
    });
    assert_eq!(recs.len(), 1, "one accept record: {recs:?}");
    let ev = recs[0];
    let peer_ip = if v6 {
        sc.net.virginia.v6.to_string()
    } else {
        sc.net.virginia.v4.to_string()
    };
    assert_eq!(
        ev.remote().ip().to_string(),
        peer_ip,
        "the peer is the Virginia client"
    );
    assert_eq!(ev.local_port, port);
    assert_eq!(ev.family, if v6 { AF_INET6 } else { AF_INET });
    assert_eq!(ev.protocol, IPPROTO_TCP);
    assert_eq!(ev.classes, EU_BIT);
    assert_eq!(ev.verdict, sensor_common::policy::verdict::DENY);
    assert_eq!(ev.action, sensor_common::policy::action::REPORTED);
    assert_eq!(ev.comm_str(), "netprobe");
    assert_eq!(
        ev.local().ip().to_string(),
        host_ip,
        "the local endpoint is the address the server listens on"
    );
}

#[test]
fn inbound_v4_connection_accepted_by_tagged_server_is_recorded() {
    inbound(false);
}

#[test]
fn inbound_v6_connection_accepted_by_tagged_server_is_recorded() {
    inbound(true);
}

fn close_record_of(sc: &mut Scenario, pid: u32) -> sensor_common::flow::FlowEvent {
    let recs = sc.fx.wait_for(1, |e| {
        e.tgid == pid && e.flow_kind() == Some(FlowKind::Close)
    });
    assert_eq!(recs.len(), 1, "one close record: {recs:?}");
    recs[0]
}

#[test]
fn udp_close_record_counts_exact_bytes() {
    let mut sc = Scenario::new(Mode::Monitor);
    for v6 in [false, true] {
        let server = sc.net.frankfurt.udp_server(v6);
        let p = sc.inside(&[
            "udp-sendto",
            &server.addr.to_string(),
            "udp-sendto",
            &server.addr.to_string(),
        ]);
        assert_eq!(p.errnos, vec![0, 0]);
        assert_eq!(server.wait_for(2, Duration::from_secs(2)), 2);
        // netprobe opens one socket per sendto: two close records, each for one
        // 4-byte datagram (payload bytes, as send() returned them).
        let closes = sc.fx.wait_for(2, |e| {
            e.tgid == p.pid && e.flow_kind() == Some(FlowKind::Close)
        });
        assert_eq!(closes.len(), 2, "{closes:?}");
        assert_ne!(closes[0].cookie, closes[1].cookie);
        for ev in closes {
            assert_eq!(ev.detail, 4, "payload bytes sent");
            // An unconnected UDP socket is bound to a port, not an address:
            // each datagram's source address is chosen by routing.
            assert!(ev.local().ip().is_unspecified(), "{:?}", ev.local());
            assert_ne!(ev.local_port, 0);

            assert_eq!(ev.remote(), server.addr);
            assert!(ev.duration_ns > 0);
        }
    }
}

#[test]
fn tcp_close_record_has_bytes_and_duration() {
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.frankfurt.tcp_server(false);
    let p = sc.inside(&["tcp-connect", &server.addr.to_string()]);
    assert_eq!(p.errno(), 0);
    let ev = close_record_of(&mut sc, p.pid);
    let remote: SocketAddr = server.addr;
    assert_eq!(ev.remote(), remote);
    assert_eq!(ev.detail, 4, "payload bytes sent");
    assert_ne!(ev.local_port, 0, "the local endpoint from the first send");
    assert_eq!(
        ev.local().ip(),
        std::net::IpAddr::V4(sc.net.frankfurt.host_v4)
    );

    assert!(ev.duration_ns > 0);
    assert_eq!(ev.classes, EU_BIT);
}

#[test]
fn flows_whose_cookies_share_a_slot_both_get_their_close_record() {
    // A tracked flow lives in the kernel slot its socket cookie names; a second
    // open flow on the same slot goes to the overflow map. Both must close
    // with their own bytes.
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.frankfurt.tcp_server(false);
    let mut w =
        Waiting::start(sc.in_cgroup(probe::command(&["tcp-collide", &server.addr.to_string()])));
    let line = w.read_line();
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("cookies line");
    let cookies = [&v["cookies"][0], &v["cookies"][1]].map(|c| c.as_u64().expect("cookie"));
    let slots = u64::from(FLOW_SLOT_COUNT);
    assert_ne!(cookies[0], cookies[1]);
    assert_eq!(cookies[0] % slots, cookies[1] % slots, "{line}");
    let p = w.go();
    assert_eq!(p.errno(), 0);
    let closes = sc.fx.wait_for(2, |e| {
        e.tgid == p.pid && e.flow_kind() == Some(FlowKind::Close)
    });
    assert_eq!(closes.len(), 2, "{closes:?}");
    for (cookie, bytes) in [(cookies[0], 4), (cookies[1], 8)] {
        let ev = closes
            .iter()
            .find(|e| e.cookie == cookie)
            .unwrap_or_else(|| panic!("no close record for cookie {cookie}: {closes:?}"));
        assert_eq!(ev.detail, bytes, "payload bytes of cookie {cookie}");
        assert_ne!(ev.local_port, 0, "{ev:?}");
        assert_eq!(ev.remote(), server.addr);
        assert_eq!(ev.classes, EU_BIT);
        assert!(ev.duration_ns > 0);
    }
}

#[test]
fn denied_flow_has_no_close_record() {
    let mut sc = Scenario::new(Mode::Enforce);
    let server = sc.net.virginia.udp_server(false);
    let allowed = sc.net.frankfurt.udp_server(false);
    let p = sc.inside(&["udp-sendto", &server.addr.to_string()]);
    assert_eq!(p.errno(), libc::EPERM);
    // A marker flow that is tracked: its close record proves the denied one's
    // would have arrived by now.
    let m = sc.inside(&["udp-sendto", &allowed.addr.to_string()]);
    close_record_of(&mut sc, m.pid);
    let closes = sc
        .fx
        .all(|e| e.tgid == p.pid && e.flow_kind() == Some(FlowKind::Close));
    assert!(closes.is_empty(), "{closes:?}");
}
