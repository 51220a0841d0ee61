//! Delivery to the collector: every violation reaches it exactly once, through
//! collector crashes (SIGKILL) and an agent crash, with the durable spool in
//! between. Real sensord, real collectord, real kernel.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    collector::RunningCollector,
    netns::TestNet,
    probe,
    scenario::{FixturePolicy, cgroup_rel},
    temp::TempPath,
};

const HOST: &str = "delivery-host";

/// Sends `n` UDP datagrams to `target` from the cgroup, one violation each
/// (aggregation is off), and checks the agent let them through (monitor mode).
fn violate(cgroup: &TestCgroup, target: &str, n: usize) {
    let args: Vec<&str> = std::iter::repeat_n(["udp-sendto", target], n)
        .flatten()
        .collect();
    let p = probe::run(cgroup.command(probe::command(&args)));
    assert!(
        p.errnos.iter().all(|e| *e == 0),
        "monitor mode lets them through"
    );
}

fn wait_for_violations(c: &RunningCollector, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = c.store().count_kind(HOST, "violation").expect("count");
        if got == want {
            return;
        }
        assert!(
            got < want,
            "more violations than sent: {got} > {want} (duplicates?)"
        );
        assert!(
            Instant::now() < deadline,
            "only {got} of {want} violations arrived in time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_violation_arrives_exactly_once_through_collector_and_agent_crashes() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let tmp = TempPath::dir("delivery");
    let dir = tmp.path().to_owned();
    let mut collector = RunningCollector::start(&dir);
    let config = dir.join("sensord.toml");
    std::fs::write(
        &config,
        format!(
            "[collector]\nendpoints = [\"{}\"]\nspool_dir = \"{}\"\n",
            collector.endpoint(),
            dir.join("spool").display()
        ),
    )
    .expect("config");
    let policy = FixturePolicy {
        host_id: HOST,
        aggregation: "0",
        mode: "monitor",
        allowed: r#"["EEA"]"#,
        cgroup_rel: &cgroup_rel(&cgroup),
        class_extra: "",
    }
    .text();
    let regions = "5.0.0.0,5.0.0.255,DE\n";
    let cfg = ["--config", config.to_str().expect("utf-8")];
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();

    let mut agent = RunningAgent::start_with(&policy, regions, &cfg);
    violate(&cgroup, &target, 6000);
    wait_for_violations(&collector, 6000);

    // The collector crashes; violations keep coming and wait in the spool.
    collector.kill9();
    violate(&cgroup, &target, 6000);
    std::thread::sleep(Duration::from_millis(500));
    let st = agent.ctl_json(&["status"]);
    assert!(
        st["spool_depth"].as_u64().unwrap_or(0) >= 6000,
        "spooled while the collector is down: {st}"
    );
    collector.restart();
    wait_for_violations(&collector, 12_000);

    // Crash it again, mid-delivery this time.
    violate(&cgroup, &target, 6000);
    collector.kill9();
    collector.restart();
    wait_for_violations(&collector, 18_000);

    // The agent crashes; a new one resumes from the same spool.
    agent.kill9();
    drop(agent);
    let agent = RunningAgent::start_with(&policy, regions, &cfg);
    violate(&cgroup, &target, 2000);
    wait_for_violations(&collector, 20_000);

    // Exactly once, and no sequence missing (violations, audit and gap records
    // share one sequence per host).
    let store = collector.store();
    let last = store.last_seq(HOST).expect("last seq");
    assert_eq!(
        store.count(HOST).expect("count"),
        last,
        "sequences 1..={last} all stored, none twice"
    );
    // What an auditor's host listing shows: every violation, and no gap (no loss
    // anywhere on the way).
    let hosts = store.hosts().expect("hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        (hosts[0].violations, hosts[0].gaps, hosts[0].last_seq),
        (20_000, 0, last)
    );
    drop(agent);
    drop(collector);
}
