//! Issue 2's first end-to-end scenarios: the connect programs, attached to a test
//! cgroup, report exactly the flows of processes inside it, and nothing of
//! processes outside it.

use std::time::Duration;

use harness::harness::{
    cgroup::TestCgroup,
    netns::TestNet,
    privilege::require_root,
    probe::{self, ProbeResult},
};
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    net::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
};
use sensor_user::{events::EventReader, loader::KernelSensor};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

struct Fixture {
    cgroup: TestCgroup,
    // Field order is drop order: detach before the cgroup goes away.
    _sensor: KernelSensor,
    events: EventReader,
}

fn attached() -> Fixture {
    require_root();
    let cgroup = TestCgroup::create();
    let mut sensor = KernelSensor::load().expect("loading the kernel programs");
    sensor
        .attach_cgroup(cgroup.path())
        .expect("attaching to the test cgroup");
    let events = sensor.take_events().expect("ring buffer");
    Fixture {
        cgroup,
        _sensor: sensor,
        events,
    }
}

/// Runs netprobe inside the test cgroup.
fn probe_inside(fx: &Fixture, op: &str, target: &str) -> ProbeResult {
    probe::run(fx.cgroup.command(probe::command(NETPROBE, &[op, target])))
}

/// Records of process `tgid`, waiting until `n` have arrived (or 3 s).
fn records_of(fx: &mut Fixture, tgid: u32, n: usize) -> Vec<FlowEvent> {
    fx.events
        .collect_until(Duration::from_secs(3), |evs| {
            evs.iter().filter(|e| e.tgid == tgid).count() >= n
        })
        .into_iter()
        .filter(|e| e.tgid == tgid)
        .collect()
}

fn assert_connect_record(
    ev: &FlowEvent,
    probe: &ProbeResult,
    family: u8,
    protocol: u8,
    remote: std::net::SocketAddr,
) {
    assert_eq!(ev.flow_kind(), Some(FlowKind::Connect));
    assert_eq!(ev.tgid, probe.pid, "tgid");
    assert_eq!(ev.pid, probe.pid, "single-threaded probe: pid == tgid");
    assert_eq!(ev.uid, 0);
    assert_eq!(ev.family, family);
    assert_eq!(ev.protocol, protocol);
    assert_eq!(ev.remote(), remote);
    assert_eq!(ev.comm_str(), "netprobe");
    assert_ne!(ev.cgroup_id, 0);
    assert_ne!(ev.cookie, 0);
    assert_ne!(ev.ktime_ns, 0);
}

#[test]
fn tcp_v4_connect_in_cgroup_is_recorded() {
    let mut fx = attached();
    let net = TestNet::create();
    let server = net.frankfurt.tcp_server(false);
    let p = probe_inside(&fx, "tcp-connect", &server.addr.to_string());
    assert_eq!(p.errno, 0, "connect failed: {p:?}");
    assert_eq!(
        server.wait_for(1, Duration::from_secs(2)),
        1,
        "the remote saw the connection"
    );
    let recs = records_of(&mut fx, p.pid, 1);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_connect_record(&recs[0], &p, AF_INET, IPPROTO_TCP, server.addr);
}

#[test]
fn tcp_v6_connect_in_cgroup_is_recorded() {
    let mut fx = attached();
    let net = TestNet::create();
    let server = net.virginia.tcp_server(true);
    let p = probe_inside(&fx, "tcp-connect", &server.addr.to_string());
    assert_eq!(p.errno, 0, "connect failed: {p:?}");
    assert_eq!(server.wait_for(1, Duration::from_secs(2)), 1);
    let recs = records_of(&mut fx, p.pid, 1);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_connect_record(&recs[0], &p, AF_INET6, IPPROTO_TCP, server.addr);
}

#[test]
fn udp_v4_and_v6_connected_send_is_recorded() {
    let mut fx = attached();
    let net = TestNet::create();
    for (host, v6, family) in [
        (&net.frankfurt, false, AF_INET),
        (&net.virginia, true, AF_INET6),
    ] {
        let server = host.udp_server(v6);
        let p = probe_inside(&fx, "udp-connect-send", &server.addr.to_string());
        assert_eq!(p.errno, 0, "udp send failed: {p:?}");
        assert_eq!(
            server.wait_for(1, Duration::from_secs(2)),
            1,
            "the datagram arrived"
        );
        let recs = records_of(&mut fx, p.pid, 1);
        assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
        assert_connect_record(&recs[0], &p, family, IPPROTO_UDP, server.addr);
    }
}

#[test]
fn v4_mapped_v6_connect_is_recorded_as_ipv4() {
    let mut fx = attached();
    let net = TestNet::create();
    let server = net.frankfurt.tcp_server(false);
    let mapped = format!("[::ffff:{}]:{}", server.addr.ip(), server.addr.port());
    let p = probe_inside(&fx, "tcp-connect", &mapped);
    assert_eq!(p.errno, 0, "connect failed: {p:?}");
    let recs = records_of(&mut fx, p.pid, 1);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_connect_record(&recs[0], &p, AF_INET, IPPROTO_TCP, server.addr);
}

#[test]
fn process_outside_the_cgroup_produces_no_record() {
    let mut fx = attached();
    let net = TestNet::create();
    let server = net.frankfurt.tcp_server(false);
    let target = server.addr.to_string();
    let outside = probe::run(probe::command(NETPROBE, &["tcp-connect", &target]));
    assert_eq!(outside.errno, 0, "connect failed: {outside:?}");
    // A marker from inside the cgroup: once its record is here, anything the
    // outside process could have caused is here too (one ring buffer, in order).
    let marker = probe_inside(&fx, "tcp-connect", &target);
    let all = fx.events.collect_until(Duration::from_secs(3), |evs| {
        evs.iter().any(|e| e.tgid == marker.pid)
    });
    assert!(
        all.iter().any(|e| e.tgid == marker.pid),
        "marker record arrived"
    );
    assert!(
        all.iter().all(|e| e.tgid != outside.pid),
        "no record for the process outside the cgroup: {all:?}"
    );
    assert_eq!(
        server.wait_for(2, Duration::from_secs(2)),
        2,
        "both connections reached the remote"
    );
}
