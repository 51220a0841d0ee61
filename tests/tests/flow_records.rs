//! The foundation's end-to-end scenarios: processes in a selected cgroup have
//! exactly their flows recorded (TCP v4/v6, v4-mapped, connected UDP v4/v6),
//! and a process outside it produces no record.

use harness::harness::{
    netns::Server,
    probe::ProbeResult,
    scenario::{EU_BIT, Scenario},
};
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    net::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    policy::{action, verdict},
};
use sensor_user::kernel::verdicts::Mode;
use std::{net::SocketAddr, time::Duration};

fn one_record(sc: &mut Scenario, p: &ProbeResult) -> FlowEvent {
    let recs = sc.fx.wait_for(1, |e| {
        e.tgid == p.pid && e.flow_kind() == Some(FlowKind::Connect)
    });
    assert_eq!(
        recs.len(),
        1,
        "exactly one flow record for pid {}: {recs:?}",
        p.pid
    );
    recs[0]
}

fn assert_flow(ev: &FlowEvent, p: &ProbeResult, family: u8, protocol: u8, remote: SocketAddr) {
    assert_eq!(ev.flow_kind(), Some(FlowKind::Connect));
    assert_eq!(ev.tgid, p.pid, "tgid");
    assert_eq!(ev.pid, p.tid, "pid is the calling thread");
    assert_eq!(ev.uid, 0);
    assert_eq!(ev.family, family);
    assert_eq!(ev.protocol, protocol);
    assert_eq!(ev.remote(), remote);
    assert_eq!(ev.comm_str(), "netprobe");
    assert_eq!(ev.classes, EU_BIT);
    assert_eq!(ev.verdict, verdict::ALLOW, "Frankfurt is allowed");
    assert_eq!(ev.action, action::NONE);
    assert_eq!(ev.count, 1);
    assert_ne!(ev.cgroup_id, 0);
    assert_ne!(ev.cookie, 0);
    assert_ne!(ev.ktime_ns, 0);
}

fn connect_ok(sc: &mut Scenario, server: &Server, op: &str, target: &str) -> ProbeResult {
    let p = sc.inside(&[op, target]);
    assert_eq!(p.errno(), 0, "{op} {target} failed: {p:?}");
    assert_eq!(
        server.wait_for(1, Duration::from_secs(2)),
        1,
        "the remote received it"
    );
    p
}

#[test]
fn tcp_v4_connect_in_cgroup_is_recorded() {
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.frankfurt.tcp_server(false);
    let p = connect_ok(&mut sc, &server, "tcp-connect", &server.addr.to_string());
    let ev = one_record(&mut sc, &p);
    assert_flow(&ev, &p, AF_INET, IPPROTO_TCP, server.addr);
}

#[test]
fn tcp_v6_connect_in_cgroup_is_recorded() {
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.frankfurt.tcp_server(true);
    let p = connect_ok(&mut sc, &server, "tcp-connect", &server.addr.to_string());
    let ev = one_record(&mut sc, &p);
    assert_flow(&ev, &p, AF_INET6, IPPROTO_TCP, server.addr);
}

#[test]
fn udp_v4_and_v6_connected_send_is_recorded() {
    let mut sc = Scenario::new(Mode::Monitor);
    for (v6, family) in [(false, AF_INET), (true, AF_INET6)] {
        let server = sc.net.frankfurt.udp_server(v6);
        let p = connect_ok(
            &mut sc,
            &server,
            "udp-connect-send",
            &server.addr.to_string(),
        );
        let ev = one_record(&mut sc, &p);
        assert_flow(&ev, &p, family, IPPROTO_UDP, server.addr);
    }
}

#[test]
fn v4_mapped_v6_connect_is_recorded_as_ipv4() {
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.frankfurt.tcp_server(false);
    let mapped = format!("[::ffff:{}]:{}", server.addr.ip(), server.addr.port());
    let p = connect_ok(&mut sc, &server, "tcp-connect", &mapped);
    let ev = one_record(&mut sc, &p);
    assert_flow(&ev, &p, AF_INET, IPPROTO_TCP, server.addr);
}

#[test]
fn process_outside_the_cgroup_produces_no_record() {
    let mut sc = Scenario::new(Mode::Monitor);
    let server = sc.net.frankfurt.tcp_server(false);
    let target = server.addr.to_string();
    let outside = sc.outside(&["tcp-connect", &target]);
    assert_eq!(outside.errno(), 0, "connect failed: {outside:?}");
    // A marker from inside the cgroup: once its record is here, anything the
    // outside process could have caused is here too (one ring buffer, in order).
    let marker = sc.inside(&["tcp-connect", &target]);
    let marker_flows = sc.fx.wait_for(1, |e| {
        e.tgid == marker.pid && e.flow_kind() == Some(FlowKind::Connect)
    });
    assert_eq!(marker_flows.len(), 1, "marker record arrived");
    let stray = sc.fx.all(|e| e.tgid == outside.pid);
    assert!(
        stray.is_empty(),
        "no record for the process outside the cgroup: {stray:?}"
    );
    assert_eq!(
        server.wait_for(2, Duration::from_secs(2)),
        2,
        "both connections reached the remote"
    );
}
