//! How processes come to carry a class, why, and how they stop: executable,
//! uid and cgroup selectors (including processes already running at start),
//! explicit tags, failsafe and loopback destinations, aggregation, tag lifetime
//! over 10,000 processes, and a full tag map.

use std::{os::unix::process::CommandExt, time::Duration};

use harness::harness::{
    netns::Server,
    probe::{self, Waiting},
    scenario::{EU, EU_BIT, Scenario},
    temp::TempPath,
};
use sensor_common::{
    counters,
    flow::FlowKind,
    policy::{action, verdict},
    tag::reason,
};
use sensor_user::{
    kernel::verdicts::Mode,
    ledger::{TagLedger, Why},
    procscan,
    system::mountinfo,
};

fn flows(sc: &mut Scenario, tgid: u32, n: usize) -> Vec<sensor_common::flow::FlowEvent> {
    sc.fx.wait_for(n, |e| {
        e.tgid == tgid && matches!(e.flow_kind(), Some(FlowKind::Connect | FlowKind::Sendmsg))
    })
}

#[test]
fn exe_selector_matches_the_file_through_a_symlink_but_not_a_copy() {
    let mut sc = Scenario::without_selector(Mode::Monitor);
    let netprobe = probe::netprobe();
    sc.fx
        .sensor
        .add_exe_selector(&netprobe, 0)
        .expect("exe selector");
    let link = TempPath::new("netprobe-link");
    std::os::unix::fs::symlink(&netprobe, link.path()).expect("symlink");
    let copy = TempPath::new("netprobe-copy");
    std::fs::copy(&netprobe, copy.path()).expect("copy");
    let server = sc.net.virginia.udp_server(false);
    let target = server.addr.to_string();

    let via_link = probe::run({
        let mut c = std::process::Command::new(link.path());
        c.args(["udp-sendto", &target]);
        c
    });
    let tags = sc.fx.wait_for(1, |e| {
        e.tgid == via_link.pid && e.flow_kind() == Some(FlowKind::Tag)
    });
    assert_eq!(tags.len(), 1, "tagged at exec: {tags:?}");
    assert_eq!(tags[0].reason, reason::EXE);
    let mut ledger = TagLedger::default();
    assert!(ledger.record_event(&tags[0], sc.fx.sensor.selectors()));
    match &ledger.explain(via_link.pid)[0].why {
        Why::Exe { path, .. } => assert_eq!(path.as_deref(), Some(netprobe.as_path())),
        other => panic!("wrong reason {other:?}"),
    }
    let f = flows(&mut sc, via_link.pid, 1);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].action, action::REPORTED);

    let via_copy = probe::run({
        let mut c = std::process::Command::new(copy.path());
        c.args(["udp-sendto", &target]);
        c
    });
    let marker = probe::run({
        let mut c = std::process::Command::new(&netprobe);
        c.args(["udp-sendto", &target]);
        c
    });
    assert_eq!(
        flows(&mut sc, marker.pid, 1).len(),
        1,
        "marker (the real binary) is tagged"
    );
    let stray = sc.fx.all(|e| e.tgid == via_copy.pid);
    assert!(
        stray.is_empty(),
        "a copy is another file: not tagged {stray:?}"
    );
}

#[test]
fn uid_selector_tags_processes_of_that_user() {
    let mut sc = Scenario::without_selector(Mode::Monitor);
    sc.fx
        .sensor
        .add_uid_selector(4242, 0)
        .expect("uid selector");
    let server = sc.net.virginia.udp_server(false);
    let mut cmd = std::process::Command::new(harness::harness::agent::bin_for_others("netprobe"));
    cmd.args(["udp-sendto", &server.addr.to_string()]);
    cmd.uid(4242).gid(4242);
    let p = probe::run(cmd);
    assert_eq!(p.errno(), 0);
    let f = flows(&mut sc, p.pid, 1);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].uid, 4242);
    assert_eq!(f[0].classes, EU_BIT);
    let tags = sc
        .fx
        .all(|e| e.tgid == p.pid && e.flow_kind() == Some(FlowKind::Tag));
    assert_eq!(tags[0].reason, reason::UID);
    assert_eq!(tags[0].detail, 4242);
}

#[test]
fn processes_running_before_the_selector_are_tagged_by_the_proc_walk() {
    let mut sc = Scenario::without_selector(Mode::Enforce);
    let server = sc.net.virginia.tcp_server(false);
    let waiting = Waiting::start(sc.in_cgroup(probe::command(&[
        "--wait-stdin",
        "tcp-connect",
        &server.addr.to_string(),
    ])));
    // Give it time to exec: the exec-time check ran before any selector existed.
    std::thread::sleep(Duration::from_millis(100));
    sc.select_cgroup();
    assert_eq!(
        sc.fx.sensor.process_classes(waiting.pid()),
        None,
        "not tagged yet"
    );
    let mut ledger = TagLedger::default();
    let root = mountinfo::cgroup2_mount().expect("cgroup2");
    let n = procscan::tag_running(&mut sc.fx.sensor, &root, &mut ledger).expect("proc walk");
    assert!(n >= 1);
    let pid = waiting.pid();
    assert_eq!(sc.fx.sensor.process_classes(pid), Some(EU_BIT));
    match &ledger.explain(pid)[0].why {
        Why::Cgroup { path, .. } => assert_eq!(path.as_deref(), Some(sc.cgroup.path())),
        other => panic!("wrong reason {other:?}"),
    }
    let p = waiting.go();
    assert_eq!(
        p.errno(),
        libc::EPERM,
        "enforced on a process that predates the selector"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.received(), 0);
}

#[test]
fn explicit_tag_then_untag() {
    let mut sc = Scenario::without_selector(Mode::Enforce);
    let server = sc.net.virginia.tcp_server(false);
    let w = Waiting::start(probe::command(&[
        "--wait-stdin",
        "tcp-connect",
        &server.addr.to_string(),
    ]));
    sc.fx.sensor.tag_process(w.pid(), EU_BIT).expect("tag");
    assert_eq!(sc.fx.sensor.process_classes(w.pid()), Some(EU_BIT));
    sc.fx.sensor.untag_process(w.pid(), EU_BIT).expect("untag");
    assert_eq!(sc.fx.sensor.process_classes(w.pid()), None);
    let p = w.go();
    assert_eq!(p.errno(), 0, "untagged again: never denied");
    assert_eq!(server.wait_for(1, Duration::from_secs(2)), 1);
}

#[test]
fn failsafe_and_loopback_destinations_are_never_violations() {
    let mut sc = Scenario::new(Mode::Enforce);
    let collector = sc.net.virginia.tcp_server(false);
    let net = ipnet::IpNet::new(collector.addr.ip(), 32).expect("valid");
    sc.fx.sensor.add_failsafe(net).expect("failsafe");
    let local = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let local6 = std::net::TcpListener::bind("[::1]:0").expect("loopback v6 listener");
    let p = sc.inside(&[
        "tcp-connect",
        &collector.addr.to_string(),
        "tcp-connect",
        &local.local_addr().expect("addr").to_string(),
        "tcp-connect",
        &local6.local_addr().expect("addr").to_string(),
    ]);
    assert_eq!(
        p.errnos,
        vec![0, 0, 0],
        "failsafe and loopback pass in enforce mode"
    );
    assert_eq!(collector.wait_for(1, Duration::from_secs(2)), 1);
    // Marker: a violation after them (Virginia over IPv6: not failsafe); nothing
    // before it was recorded.
    let blocked = sc.net.virginia.udp_server(true);
    let m = sc.inside(&["udp-sendto", &blocked.addr.to_string()]);
    assert_eq!(m.errno(), libc::EPERM);
    assert_eq!(flows(&mut sc, m.pid, 1).len(), 1);
    let stray = flows(&mut sc, p.pid, 0);
    assert!(stray.is_empty(), "no flow records: {stray:?}");
}

/// A monitor-mode scenario that folds repeats for a minute, and a UDP server
/// in "Virginia" (a denied destination).
fn aggregating() -> (Scenario, Server) {
    let mut sc = Scenario::new(Mode::Monitor);
    sc.fx
        .sensor
        .set_aggregation(Duration::from_secs(60))
        .expect("aggregation");
    let server = sc.net.virginia.udp_server(false);
    (sc, server)
}

/// netprobe arguments: `n` sendto()s to `target`.
fn sendtos(target: &str, n: usize) -> Vec<&str> {
    std::iter::repeat_n(["udp-sendto", target], n)
        .flatten()
        .collect()
}

#[test]
fn repeated_violations_are_aggregated_and_counted() {
    let (mut sc, server) = aggregating();
    let t = server.addr.to_string();
    let p = sc.inside(&sendtos(&t, 5));
    assert_eq!(p.errnos, vec![0; 5]);
    assert_eq!(server.wait_for(5, Duration::from_secs(2)), 5);
    // Marker from another process: everything of the first is in by then.
    let m = sc.inside(&["udp-sendto", &t]);
    assert_eq!(flows(&mut sc, m.pid, 1).len(), 1);
    let f = flows(&mut sc, p.pid, 1);
    assert_eq!(
        f.len(),
        1,
        "one record per (process, destination) per interval: {f:?}"
    );
    assert_eq!(f[0].count, 1);
    assert_eq!(f[0].verdict, verdict::DENY);
    let c = sc.fx.sensor.counters().expect("counters");
    assert_eq!(
        c[counters::VIOLATIONS as usize],
        6,
        "every occurrence is counted"
    );
    assert_eq!(c[counters::DENIED as usize], 0);
}

#[test]
fn a_mode_change_applies_at_once_and_what_was_folded_before_is_reported() {
    // Repeats reuse the verdict cached with their aggregation state; a policy
    // change must end that at the very next call, and the occurrences folded
    // under the old verdict must still be reported, with it.
    let (mut sc, server) = aggregating();
    let t = server.addr.to_string();
    let args = [sendtos(&t, 3), vec!["pause", &t], sendtos(&t, 1)].concat();
    let mut w = Waiting::start(sc.in_cgroup(probe::command(&args)));
    assert!(w.read_line().contains("paused"));
    sc.fx.sensor.set_mode(EU, Mode::Enforce).expect("mode");
    let p = w.go();
    assert_eq!(p.errnos, vec![0, 0, 0, 0, libc::EPERM]);
    assert_eq!(server.wait_for(3, Duration::from_secs(2)), 3);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.received(), 3, "the denied datagram never left");
    let f = flows(&mut sc, p.pid, 3);
    let got: Vec<(u32, u8)> = f.iter().map(|e| (e.count, e.action)).collect();
    assert_eq!(
        got,
        vec![
            (1, action::REPORTED),
            (2, action::REPORTED),
            (1, action::DENIED)
        ],
        "the first violation, the two folded under monitor, then the denial: {f:?}"
    );
    let c = sc.fx.sensor.counters().expect("counters");
    assert_eq!(c[counters::VIOLATIONS as usize], 4);
    assert_eq!(c[counters::DENIED as usize], 1);
}

#[test]
fn tags_of_10000_short_lived_processes_are_removed() {
    let sc = Scenario::new(Mode::Monitor);
    let before = sc.fx.sensor.tagged_processes().expect("tasks").len();
    let mut cmd = sc.in_cgroup(probe::command(&["fork-exit", "10000"]));
    let out = cmd.output().expect("fork-exit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"reaped\":10000"), "{text}");
    // The last exits may still be in flight for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut after = usize::MAX;
    while std::time::Instant::now() < deadline {
        after = sc.fx.sensor.tagged_processes().expect("tasks").len();
        if after == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        after, before,
        "the process map is back to its starting size"
    );
}

#[test]
fn a_full_tag_map_is_counted_never_silent() {
    let mut sc = Scenario::new(Mode::Enforce);
    // Fill TASKS with tgids no process has (beyond pid_max).
    let mut filled = 0u32;
    while sc
        .fx
        .sensor
        .tag_process(0x4000_0000 + filled, EU_BIT)
        .is_ok()
    {
        filled += 1;
        assert!(filled <= 1 << 20, "TASKS never filled up");
    }
    assert_eq!(filled, 65_536, "the documented capacity");
    let server = sc.net.virginia.udp_server(false);
    let p = sc.inside(&["udp-sendto", &server.addr.to_string()]);
    let c = sc.fx.sensor.counters().expect("counters");
    assert!(
        c[counters::TAG_MAP_FULL as usize] >= 1,
        "the failed tag is counted: {c:?}"
    );
    // Defined behaviour: the process could not be tagged, so it runs untagged.
    assert_eq!(p.errno(), 0);
}
