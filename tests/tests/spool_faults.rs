//! Faults of the delivery path that must never lose a record silently, reuse
//! a sequence number or wedge delivery: damaged spool bytes, a wiped spool, a
//! spool that cannot be opened, a record too large for a batch, and a flood of
//! flow records in the agent's history. Real sensord, real collectord.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use harness::harness::{
    agent::{RunningAgent, workspace_bin},
    cgroup::TestCgroup,
    collector::RunningCollector,
    netns::{Server, TestNet},
    probe,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};
use residency_proto::{
    agent::v1::FlowKind,
    collector::v1::{self as pb, GapSource, StoredRecord, chain_finding::Kind},
};

/// Waits until `done` holds for the collector's records of `host` (checked
/// every 300 ms, up to 60 s); the message says what was seen last.
fn wait_records(
    collector: &RunningCollector,
    host: &str,
    what: &str,
    done: impl Fn(&[StoredRecord]) -> bool,
) -> Vec<StoredRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all: Vec<StoredRecord> = collector
            .export(None)
            .into_iter()
            .filter(|r| r.host_id == host)
            .collect();
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in 60 s; {} records: {}",
            all.len(),
            summary(&all)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn count(all: &[StoredRecord], kind: &str) -> usize {
    all.iter().filter(|r| r.kind_name() == kind).count()
}

/// The gap records from `source`.
fn gaps(all: &[StoredRecord], source: GapSource) -> Vec<&pb::Gap> {
    all.iter()
        .filter_map(StoredRecord::gap)
        .filter(|g| g.source() == source)
        .collect()
}

/// Whether an audit record's action satisfies `what`.
fn audited(all: &[StoredRecord], what: impl Fn(&str) -> bool) -> bool {
    all.iter()
        .filter_map(StoredRecord::audit)
        .any(|a| what(&a.action))
}

fn summary(all: &[StoredRecord]) -> String {
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for r in all {
        *kinds.entry(r.kind_name()).or_default() += 1;
    }
    let g: Vec<String> = all
        .iter()
        .filter_map(StoredRecord::gap)
        .map(|g| serde_json::to_string(g).unwrap_or_default())
        .collect();
    format!("{kinds:?}; gaps {g:?}")
}

fn unexplained_jumps(collector: &RunningCollector, host: &str) -> u64 {
    collector
        .hosts()
        .into_iter()
        .find(|h| h.host_id == host)
        .map_or(0, |h| h.unexplained_jumps)
}

/// `collectorctl verify` finds the host's chain intact, with exactly these
/// (explained) findings: what the agent lost it said it lost.
fn chain_holds(collector: &RunningCollector, host: &str, expect: &[Kind]) {
    let (r, code) = collector.verify(host);
    let kinds: Vec<Kind> = r.findings.iter().map(|f| f.kind()).collect();
    assert!(r.intact && code == 0 && kinds == expect, "{r:#?}");
    assert_eq!(r.records, r.chained, "every record is chained");
}

/// The spool's segment files, oldest first.
fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(spool)
        .expect("spool dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .collect();
    s.sort();
    s
}

struct Setup {
    tmp: TempPath,
    cgroup: TestCgroup,
    net: TestNet,
    collector: RunningCollector,
    config: PathBuf,
    policy: String,
}

impl Setup {
    fn new(host: &str) -> Setup {
        let tmp = TempPath::dir(host);
        let cgroup = TestCgroup::create();
        let net = TestNet::create();
        let collector = RunningCollector::start(tmp.path());
        let config = collector.agent_config(tmp.path(), host, None);
        let policy = FixturePolicy::delivering(host, &cgroup_rel(&cgroup)).text();
        Setup {
            tmp,
            cgroup,
            net,
            collector,
            config,
            policy,
        }
    }

    fn agent(&self) -> RunningAgent {
        RunningAgent::start_with(
            &self.policy,
            DELIVERY_REGIONS,
            &["--config", self.config.to_str().expect("utf-8")],
        )
    }

    /// A UDP server on the denied (Virginia) host, and its address.
    fn denied(&self) -> (Server, String) {
        let server = self.net.virginia.udp_server(false);
        let target = server.addr.to_string();
        (server, target)
    }

    fn spool(&self) -> PathBuf {
        self.tmp.path().join("spool")
    }
}

#[test]
fn damaged_spool_bytes_cost_only_their_records_each_a_gap_and_no_number_is_reused() {
    let host = "spool-damage";
    let mut s = Setup::new(host);
    let (_server, target) = s.denied();
    let mut agent = s.agent();
    // The collector is down: 300 violations wait in the spool.
    s.collector.kill9();
    probe::violate(&s.cgroup, &target, 300);
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    // Damage one byte in the middle of the spool's records.
    let seg = segments(&s.spool()).pop().expect("a segment");
    let mut data = std::fs::read(&seg).expect("segment");
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&seg, &data).expect("damaging the segment");
    agent.restart();
    s.collector.restart();
    probe::violate(&s.cgroup, &target, 10);
    // Every violation arrives, or is counted in a spool_damage gap with its
    // sequence range; nothing else is lost, no number is handed out twice
    // (a reused number would be dropped by the collector as a duplicate).
    let all = wait_records(&s.collector, host, "310 violations accounted for", |all| {
        let lost: u64 = gaps(all, GapSource::SpoolDamage)
            .iter()
            .map(|g| g.count)
            .sum();
        lost > 0 && count(all, "violation") as u64 + lost >= 310
    });
    let damage = gaps(&all, GapSource::SpoolDamage);
    let lost: u64 = damage.iter().map(|g| g.count).sum();
    assert!(
        lost <= 2,
        "one damaged byte costs one record (two if it hits a frame boundary), not the rest of the segment: {}",
        summary(&all)
    );
    assert_eq!(
        count(&all, "violation") as u64 + lost,
        310,
        "{}",
        summary(&all)
    );
    let (first, last) = (damage[0].first_seq, damage[0].last_seq);
    assert!(first > 0, "the gap names a sequence range");
    let stored: std::collections::BTreeSet<u64> = all.iter().map(StoredRecord::seq).collect();
    assert!(
        (first..=last).all(|q| !stored.contains(&q)),
        "the gap names the numbers that were lost"
    );
    assert_eq!(
        unexplained_jumps(&s.collector, host),
        0,
        "the gap explains the jump"
    );
    // Stopped cleanly: its window over the records since the restart is
    // signed and delivered (until then they are unattested).
    agent.stop();
    chain_holds(
        &s.collector,
        host,
        &[Kind::MissingExplained, Kind::AgentStopped],
    );
    assert!(
        agent
            .log_text()
            .contains("damaged spool records were cut out"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_wiped_spool_continues_after_the_collector_instead_of_being_ignored() {
    let host = "spool-wiped";
    let s = Setup::new(host);
    let (_server, target) = s.denied();
    let mut agent = s.agent();
    probe::violate(&s.cgroup, &target, 50);
    wait_records(&s.collector, host, "50 violations", |all| {
        count(all, "violation") == 50
    });
    agent.stop();
    std::fs::remove_dir_all(s.spool()).expect("wiping the spool");
    agent.restart();
    probe::violate(&s.cgroup, &target, 20);
    let all = wait_records(&s.collector, host, "70 violations", |all| {
        count(all, "violation") == 70
    });
    assert_eq!(
        gaps(&all, GapSource::SpoolLost).len(),
        1,
        "{}",
        summary(&all)
    );
    assert!(
        audited(&all, |a| a.starts_with("spool history lost")),
        "the discontinuity is an audit record: {}",
        summary(&all)
    );
    assert_eq!(unexplained_jumps(&s.collector, host), 0);
    // Stopped cleanly, its window over the records since the restart
    // signed and delivered (until then they are unattested). The renumbered
    // records start a new chain; the SPOOL_LOST gap says why. The time
    // between the stop before the wipe and the restart is a clean stop.
    agent.stop();
    chain_holds(
        &s.collector,
        host,
        &[Kind::AgentStopped, Kind::RestartExplained],
    );
}

#[test]
fn a_spool_that_cannot_be_opened_costs_records_not_enforcement() {
    let host = "spool-broken";
    let s = Setup::new(host);
    let (_server, target) = s.denied();
    // A file where the spool directory should be.
    std::fs::write(s.spool(), b"not a directory").expect("blocking the spool");
    let agent = s.agent();
    let st = agent.status();
    assert!(
        st.spool_problem.contains("cannot be opened"),
        "status says so: {st:?}"
    );
    probe::violate(&s.cgroup, &target, 5);
    // Records reach the agent within its 100 ms drain.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = agent.listed(false, &[]);
        if v.len() == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent records all the same: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The spool becomes available: what it could not take arrives as a
    // counted gap.
    std::fs::remove_file(s.spool()).expect("unblocking");
    let all = wait_records(&s.collector, host, "the spool_write gap", |all| {
        !gaps(all, GapSource::SpoolWrite).is_empty()
    });
    let counted: u64 = gaps(&all, GapSource::SpoolWrite)
        .iter()
        .map(|g| g.count)
        .sum();
    assert!(
        counted >= 5,
        "the 5 violations (and the start's audit record) are counted: {}",
        summary(&all)
    );
    assert_eq!(agent.status().spool_problem, "", "the problem clears");
    chain_holds(&s.collector, host, &[]);
}

#[test]
fn a_hostile_executable_path_neither_wedges_delivery_nor_grows_records() {
    let host = "spool-oversized";
    let s = Setup::new(host);
    let (_server, target) = s.denied();
    // netprobe copied to a 3.8 KB path of control characters.
    let mut dir = s.tmp.path().to_owned();
    for _ in 0..15 {
        dir.push("\u{1}".repeat(250));
    }
    std::fs::create_dir_all(&dir).expect("the long path");
    let exe = dir.join("\u{2}probe");
    std::fs::copy(workspace_bin("netprobe"), &exe).expect("copying netprobe");
    assert!(exe.as_os_str().len() > 3700);
    let _agent = s.agent();
    probe::run_all_ok(&exe, &s.cgroup, "udp-sendto", &target, 600);
    probe::violate(&s.cgroup, &target, 10);
    let all = wait_records(&s.collector, host, "610 violations", |all| {
        count(all, "violation") == 610
    });
    let long: Vec<&str> = all
        .iter()
        .filter_map(StoredRecord::violation)
        .map(|f| f.exe.as_str())
        .filter(|e| e.contains("[cut, "))
        .collect();
    assert_eq!(long.len(), 600, "the long path is cut and says so");
    assert!(long.iter().all(|e| e.len() < 1100));
    chain_holds(&s.collector, host, &[]);
}

#[test]
fn twenty_thousand_close_records_leave_the_violation_before_them_listed() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let policy = FixturePolicy::delivering("spool-history", &cgroup_rel(&cgroup)).text();
    let agent = RunningAgent::start(&policy, DELIVERY_REGIONS);
    let denied = net.virginia.udp_server(false);
    let allowed = net.frankfurt.udp_server(false);
    probe::violate(&cgroup, &denied.addr.to_string(), 1);
    // Each a socket of its own: connect, send, close (a close record each).
    let target = allowed.addr.to_string();
    for _ in 0..4 {
        probe::run_all_ok(
            &probe::netprobe(),
            &cgroup,
            "udp-connect-send",
            &target,
            5000,
        );
    }
    // Every record is read (the flow history holds 10,000 of them) and the
    // newest are close records.
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.status().events < 20_000 {
        assert!(
            Instant::now() < deadline,
            "the agent read fewer than 20,000 records"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let closes = agent
        .listed(true, &["--limit", "2000"])
        .iter()
        .filter(|f| f.kind() == FlowKind::Close)
        .count();
    assert!(
        closes >= 1000,
        "the newest records are close records ({closes}): the test means something"
    );
    let listed = agent.listed(false, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].remote, denied.addr.to_string());
}

#[test]
fn violations_while_no_agent_runs_reach_the_collector_after_its_restart() {
    // The pinned ring buffer keeps what the kernel records while sensord is
    // down (crash, upgrade); the next sensord drains it.
    let host = "spool-outage";
    let s = Setup::new(host);
    let (_server, target) = s.denied();
    let mut agent = s.agent();
    probe::violate(&s.cgroup, &target, 100);
    wait_records(&s.collector, host, "100 violations", |all| {
        count(all, "violation") == 100
    });
    agent.kill9();
    probe::violate(&s.cgroup, &target, 3000);
    agent.restart();
    probe::violate(&s.cgroup, &target, 100);
    let all = wait_records(&s.collector, host, "3,200 violations", |all| {
        count(all, "violation") == 3200
    });
    assert!(
        audited(&all, |a| a.contains("no agent ran for")),
        "the outage is in the audit trail: {}",
        summary(&all)
    );
    assert_eq!(unexplained_jumps(&s.collector, host), 0);
    chain_holds(&s.collector, host, &[]);
}

#[test]
fn violations_the_spool_holds_are_listed_again_after_a_restart() {
    // The collector is away, so the spool holds the violations: a restarted
    // sensord lists them again (sensorctl violations), not an empty history.
    let host = "spool-history";
    let mut s = Setup::new(host);
    let (_server, target) = s.denied();
    let mut agent = s.agent();
    s.collector.kill9();
    probe::violate(&s.cgroup, &target, 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.listed(false, &[]).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the agent lists the 5 violations"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    agent.restart();
    let listed = agent.listed(false, &[]);
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(
        agent
            .log_text()
            .contains("violations the spool still holds are back in the history"),
        "{}",
        agent.log_text()
    );
}
