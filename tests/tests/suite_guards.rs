//! The suite and the daemons fail loudly instead of hanging or running on
//! half-dead:
//!
//! - a sensord whose delivery task dies exits non-zero within seconds (the
//!   service manager starts it again) instead of running on without
//!   delivering;
//! - a sensord that ignores SIGTERM is killed by the harness, and the test
//!   that stopped it fails naming it, with the daemon's log;
//! - an API client holding a stream open does not keep SIGTERM from ending
//!   sensord.
//!
//! Two self-tests prove the runner's limits and are never run by CI (they
//! are ignored, and do nothing unless `RESIDENCY_SELF_TEST` names them):
//! `RESIDENCY_SELF_TEST=hang cargo xtask test --no-lint -- --run-ignored only
//! -E 'test(self_test_)'` must fail within 5 minutes naming
//! `self_test_a_test_that_hangs`, and leave nothing behind.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    collector::free_port,
    netns::TestNet,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};

/// The fixture policy for `cgroup` (monitor mode).
fn policy(host: &str, cgroup: &TestCgroup) -> String {
    FixturePolicy::delivering(host, &cgroup_rel(cgroup)).text()
}

/// An agent config delivering to a collector nobody serves: the delivery
/// task starts (and retries) regardless.
fn unreachable_collector(tmp: &TempPath) -> std::path::PathBuf {
    let token = tmp.path().join("collector-token");
    std::fs::write(&token, "not-checked-by-anyone\n").expect("token");
    let config = tmp.path().join("sensord.toml");
    std::fs::write(
        &config,
        format!(
            "[collector]\nendpoints = [\"http://127.0.0.1:{}\"]\nspool_dir = \"{}\"\ntoken_file = \"{}\"\n",
            free_port(),
            tmp.path().join("spool").display(),
            token.display()
        ),
    )
    .expect("config");
    config
}

#[test]
fn sensord_exits_non_zero_within_seconds_when_its_delivery_task_panics() {
    let tmp = TempPath::dir("guards-delivery");
    let cgroup = TestCgroup::create();
    let config = unreachable_collector(&tmp);
    let mut agent = RunningAgent::launch(
        &policy("guards-1", &cgroup),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
        &[("RESIDENCY_FAULT", "delivery-panic")],
    );
    let started = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "sensord still runs 60 s after its delivery task panicked; its log ends:\n{}",
            agent.log_tail()
        )
    });
    assert!(
        !status.success(),
        "exit status {status}: {}",
        agent.log_tail()
    );
    let log = agent.log_text();
    assert!(
        log.contains("ended unexpectedly") && log.contains("delivery"),
        "the log names the task: {log}"
    );
    assert!(log.contains("fault injected"), "and why it ended: {log}");
    eprintln!(
        "sensord exited {status} {:?} after start",
        started.elapsed()
    );
}

#[test]
fn the_same_sensord_without_the_fault_keeps_running() {
    // The control for the test above: the delivery task does not end on its
    // own when the collector is unreachable.
    let tmp = TempPath::dir("guards-control");
    let cgroup = TestCgroup::create();
    let config = unreachable_collector(&tmp);
    let mut agent = RunningAgent::start_with(
        &policy("guards-2", &cgroup),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    assert_eq!(
        agent.wait_exit(Duration::from_secs(3)),
        None,
        "{}",
        agent.log_tail()
    );
    let status = agent.stop();
    assert!(status.success(), "{status}: {}", agent.log_tail());
}

#[test]
fn stopping_a_sensord_that_ignores_sigterm_kills_it_and_fails_naming_it() {
    let cgroup = TestCgroup::create();
    let mut agent = RunningAgent::start_env(
        &policy("guards-3", &cgroup),
        DELIVERY_REGIONS,
        &[],
        &[("RESIDENCY_FAULT", "ignore-sigterm")],
    );
    let pid = agent.pid();
    let started = Instant::now();
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.stop()))
        .expect_err("stop() fails the test");
    let msg = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        msg.contains("did not exit") && msg.contains("SIGTERM ignored"),
        "the failure names the daemon and shows its log: {msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "bounded: {:?}",
        started.elapsed()
    );
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
    assert!(!alive, "sensord {pid} was killed");
}

#[test]
fn a_client_holding_a_stream_open_does_not_keep_sensord_from_stopping() {
    let cgroup = TestCgroup::create();
    let mut agent = RunningAgent::start(&policy("guards-4", &cgroup), DELIVERY_REGIONS);
    // `sensorctl flows --follow` holds a server stream open until killed.
    let mut watch = agent
        .ctl_cmd(&["flows", "--follow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sensorctl watch");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = agent.stop();
    let took = started.elapsed();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(status.success(), "{status}: {}", agent.log_tail());
    assert!(
        took < Duration::from_secs(12),
        "SIGTERM took {took:?} with a stream open: {}",
        agent.log_tail()
    );
}

/// Whether the self-test `name` was asked for.
fn self_test(name: &str) -> bool {
    let asked = std::env::var("RESIDENCY_SELF_TEST").is_ok_and(|v| v == name);
    if !asked {
        eprintln!("RESIDENCY_SELF_TEST={name} not set: nothing to do");
    }
    asked
}

#[test]
#[ignore = "a self-test of the runner: it hangs on purpose (RESIDENCY_SELF_TEST=hang)"]
fn self_test_a_test_that_hangs() {
    if !self_test("hang") {
        return;
    }
    // Everything a real test holds: a daemon, pins, a cgroup, namespaces.
    let cgroup = TestCgroup::create();
    let _net = TestNet::create();
    let _agent = RunningAgent::start(&policy("guards-hang", &cgroup), DELIVERY_REGIONS);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[test]
#[ignore = "a self-test of the harness: it fails on purpose (RESIDENCY_SELF_TEST=ignore-sigterm)"]
fn self_test_a_daemon_that_ignores_sigterm() {
    if !self_test("ignore-sigterm") {
        return;
    }
    let cgroup = TestCgroup::create();
    let mut agent = RunningAgent::start_env(
        &policy("guards-term", &cgroup),
        DELIVERY_REGIONS,
        &[],
        &[("RESIDENCY_FAULT", "ignore-sigterm")],
    );
    agent.stop();
}
