//! The kernel sensor's acceptance matrix: every way a tagged process can send
//! data to a denied destination, in monitor mode (reported, the packet leaves)
//! and in enforce mode (EPERM, the remote sees nothing), and the untagged process
//! that is never judged.

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use harness::harness::{
    netns::Server,
    probe::{self, ProbeResult, Waiting},
    scenario::{EU_BIT, Scenario},
};
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    net::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    policy::{action, verdict},
    tag::reason,
};
use sensor_user::kernel::verdicts::Mode;

/// How long an enforce test watches the remote for a packet that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// What the test expects of one violating call.
struct Expect {
    kind: FlowKind,
    family: u8,
    protocol: u8,
    remote: SocketAddr,
}

/// Connect and sendmsg records of process `tgid` (not tags, not closes).
fn flows_of(sc: &mut Scenario, tgid: u32, n: usize) -> Vec<FlowEvent> {
    sc.fx.wait_for(n, |e| {
        e.tgid == tgid && matches!(e.flow_kind(), Some(FlowKind::Connect | FlowKind::Sendmsg))
    })
}

/// Asserts the call's outcome, what reached the remote, and the exact record.
fn assert_violation(
    sc: &mut Scenario,
    mode: Mode,
    p: &ProbeResult,
    errno: i32,
    server: &Server,
    want: Expect,
) -> FlowEvent {
    match mode {
        Mode::Enforce => {
            assert_eq!(errno, libc::EPERM, "enforce mode denies with EPERM: {p:?}");
            thread::sleep(QUIET);
            assert_eq!(
                server.received(),
                0,
                "the remote must see nothing in enforce mode"
            );
        }
        _ => {
            assert_eq!(errno, 0, "monitor mode lets the call through: {p:?}");
            assert_eq!(
                server.wait_for(1, Duration::from_secs(2)),
                1,
                "the remote received it"
            );
        }
    }
    let recs = flows_of(sc, p.pid, 1);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    let ev = recs[0];
    assert_eq!(ev.flow_kind(), Some(want.kind));
    assert_eq!(ev.tgid, p.pid);
    assert_eq!(ev.pid, p.tid);
    assert_eq!(ev.family, want.family);
    assert_eq!(ev.protocol, want.protocol);
    assert_eq!(ev.remote(), want.remote);
    assert_eq!(ev.classes, EU_BIT, "the violating class");
    assert_eq!(ev.verdict, verdict::DENY);
    let act = if mode == Mode::Enforce {
        action::DENIED
    } else {
        action::REPORTED
    };
    assert_eq!(ev.action, act);
    assert_eq!(ev.count, 1);
    assert_eq!(ev.policy_generation, sc.fx.sensor.generation());
    assert_ne!(ev.cookie, 0);
    ev
}

fn tcp_to_virginia(mode: Mode, v6: bool, mapped: bool) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.tcp_server(v6);
    let target = if mapped {
        format!("[::ffff:{}]:{}", server.addr.ip(), server.addr.port())
    } else {
        server.addr.to_string()
    };
    let p = sc.inside(&["tcp-connect", &target]);
    let family = if v6 { AF_INET6 } else { AF_INET };
    let want = Expect {
        kind: FlowKind::Connect,
        family,
        protocol: IPPROTO_TCP,
        remote: server.addr,
    };
    assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
}

fn udp_v4_sendto(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.udp_server(false);
    let p = sc.inside(&["udp-sendto", &server.addr.to_string()]);
    let want = Expect {
        kind: FlowKind::Sendmsg,
        family: AF_INET,
        protocol: IPPROTO_UDP,
        remote: server.addr,
    };
    assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
}

fn udp_v6_connect_send(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.udp_server(true);
    let p = sc.inside(&["udp-connect-send", &server.addr.to_string()]);
    let want = Expect {
        kind: FlowKind::Connect,
        family: AF_INET6,
        protocol: IPPROTO_UDP,
        remote: server.addr,
    };
    assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
}

/// A process tagged explicitly forks; the child connects.
fn forked_child(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.tcp_server(false);
    let parent = Waiting::start(probe::command(&[
        "--wait-stdin",
        "--fork",
        "tcp-connect",
        &server.addr.to_string(),
    ]));
    sc.fx
        .sensor
        .tag_process(parent.pid(), EU_BIT)
        .expect("explicit tag");
    let parent_pid = parent.pid();
    let p = parent.go();
    assert_ne!(p.pid, parent_pid, "the child made the call");
    let want = Expect {
        kind: FlowKind::Connect,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        remote: server.addr,
    };
    assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
    let inherited = sc.fx.wait_for(1, |e| {
        e.flow_kind() == Some(FlowKind::Tag) && e.tgid == p.pid
    });
    assert_eq!(inherited.len(), 1, "one inheritance record: {inherited:?}");
    assert_eq!(inherited[0].reason, reason::INHERITED);
    assert_eq!(inherited[0].detail, u64::from(parent_pid));
}

/// A tagged shell forks and execs the probe (`sh -c`).
fn exec_child(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.tcp_server(false);
    let script = format!(
        "read x; {} tcp-connect {}; true",
        probe::netprobe().display(),
        server.addr
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let shell = Waiting::start(cmd);
    sc.fx
        .sensor
        .tag_process(shell.pid(), EU_BIT)
        .expect("explicit tag");
    let shell_pid = shell.pid();
    let p = shell.go();
    assert_ne!(p.pid, shell_pid, "the exec'd child made the call");
    let want = Expect {
        kind: FlowKind::Connect,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        remote: server.addr,
    };
    assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
}

/// A second thread of a tagged process connects.
fn thread_connects(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.tcp_server(false);
    let p = sc.inside(&["--thread", "tcp-connect", &server.addr.to_string()]);
    assert_ne!(p.pid, p.tid, "a thread other than the main one");
    let want = Expect {
        kind: FlowKind::Connect,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        remote: server.addr,
    };
    assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
}

/// The probe connects and exits at once: the record is complete, and the tag is
/// gone with the process.
fn connect_and_exit_at_once(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let server = sc.net.virginia.udp_server(false);
    let p = sc.inside(&["udp-sendto", &server.addr.to_string()]);
    let want = Expect {
        kind: FlowKind::Sendmsg,
        family: AF_INET,
        protocol: IPPROTO_UDP,
        remote: server.addr,
    };
    let ev = assert_violation(&mut sc, mode, &p, p.errno(), &server, want);
    assert_eq!(ev.comm_str(), "netprobe");
    assert_eq!(
        sc.fx.sensor.process_classes(p.pid),
        None,
        "the tag left with the process"
    );
}

/// An untagged process connects to a taint source (the EU user database in
/// Frankfurt), then out to Virginia.
fn tainted_then_out(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let db = sc.net.frankfurt.tcp_server(false);
    let out = sc.net.virginia.tcp_server(false);
    let db_net = ipnet::IpNet::new(db.addr.ip(), 32).expect("valid");
    sc.fx
        .sensor
        .add_taint_source(db_net, db.addr.port()..=db.addr.port(), 0)
        .expect("taint source");
    let p = sc.outside(&[
        "tcp-connect",
        &db.addr.to_string(),
        "tcp-connect",
        &out.addr.to_string(),
    ]);
    assert_eq!(p.errnos[0], 0, "the taint source itself is allowed");
    assert_eq!(db.wait_for(1, Duration::from_secs(2)), 1);
    let tags = sc.fx.wait_for(1, |e| {
        e.tgid == p.pid && e.flow_kind() == Some(FlowKind::Tag)
    });
    assert_eq!(tags.len(), 1, "one taint record: {tags:?}");
    assert_eq!(tags[0].reason, reason::TAINT);
    assert_eq!(tags[0].classes, EU_BIT);
    assert_eq!(tags[0].remote(), db.addr);
    // The connect to the source was judged with the new class (allowed), the
    // one to Virginia is the violation.
    let flows = flows_of(&mut sc, p.pid, 2);
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert_eq!(flows[0].remote(), db.addr);
    assert_eq!(flows[0].verdict, verdict::ALLOW);
    let last = flows[1];
    assert_eq!(last.remote(), out.addr);
    assert_eq!(last.verdict, verdict::DENY);
    match mode {
        Mode::Enforce => {
            assert_eq!(p.errnos[1], libc::EPERM);
            assert_eq!(last.action, action::DENIED);
            thread::sleep(QUIET);
            assert_eq!(out.received(), 0);
        }
        _ => {
            assert_eq!(p.errnos[1], 0);
            assert_eq!(last.action, action::REPORTED);
            assert_eq!(out.wait_for(1, Duration::from_secs(2)), 1);
        }
    }
}

/// An untagged process reaches every denied destination, and is never recorded.
fn untagged_is_never_judged(mode: Mode) {
    let mut sc = Scenario::new(mode);
    let tcp4 = sc.net.virginia.tcp_server(false);
    let tcp6 = sc.net.virginia.tcp_server(true);
    let udp4 = sc.net.virginia.udp_server(false);
    let udp6 = sc.net.virginia.udp_server(true);
    let p = sc.outside(&[
        "tcp-connect",
        &tcp4.addr.to_string(),
        "tcp-connect",
        &tcp6.addr.to_string(),
        "udp-sendto",
        &udp4.addr.to_string(),
        "udp-connect-send",
        &udp6.addr.to_string(),
    ]);
    assert_eq!(p.errnos, vec![0, 0, 0, 0], "never denied");
    for s in [&tcp4, &tcp6, &udp4, &udp6] {
        assert_eq!(
            s.wait_for(1, Duration::from_secs(2)),
            1,
            "{} received",
            s.addr
        );
    }
    // Marker from a tagged process: everything before it is in the buffer.
    let marker = sc.inside(&["udp-sendto", &udp4.addr.to_string()]);
    assert_eq!(flows_of(&mut sc, marker.pid, 1).len(), 1, "marker arrived");
    let stray = sc.fx.all(|e| e.tgid == p.pid);
    assert!(
        stray.is_empty(),
        "no record for the untagged process: {stray:?}"
    );
}

macro_rules! both_modes {
    ($($name:ident => $body:expr;)*) => {
        mod monitor {
            use super::*;
            $(#[test] fn $name() { $body(Mode::Monitor) })*
        }
        mod enforce {
            use super::*;
            $(#[test] fn $name() { $body(Mode::Enforce) })*
        }
    };
}

both_modes! {
    tcp_v4_to_virginia => |m| tcp_to_virginia(m, false, false);
    tcp_v6_to_virginia => |m| tcp_to_virginia(m, true, false);
    v4_mapped_v6_to_virginia => |m| tcp_to_virginia(m, false, true);
    udp_v4_sendto_virginia => udp_v4_sendto;
    udp_v6_connect_send_virginia => udp_v6_connect_send;
    forked_child_inherits_and_is_judged => forked_child;
    exec_child_inherits_and_is_judged => exec_child;
    thread_is_judged_as_its_process => thread_connects;
    connect_and_exit_within_a_millisecond => connect_and_exit_at_once;
    taint_source_tags_then_violation => tainted_then_out;
    untagged_process_is_never_judged => untagged_is_never_judged;
}
