//! The gates outlive the agent: the real `sensord` is killed, stopped and
//! restarted while tagged processes keep sending, and the kernel keeps judging
//! from its pinned programs and maps the whole time.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    collector::RunningCollector,
    netns::TestNet,
    probe::{self, Waiting},
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};
use residency_proto::{
    agent::v1::{Action, Flow, FlowKind, Mode, Protocol},
    records::Label,
};

const REGIONS: &str = "5.0.0.0,5.0.0.255,DE\n";

/// The fixture policy in enforce mode, with `class_extra` keys.
fn enforcing(cgroup_rel: &str, class_extra: &str) -> String {
    FixturePolicy {
        mode: "enforce",
        class_extra,
        ..FixturePolicy::delivering("restart-host", cgroup_rel)
    }
    .text()
}

/// A process in `cgroup` that opens a TCP connection to `to` (sending 4
/// bytes) and holds it; `go()` makes it send 4 more bytes on it.
fn holding_open(cgroup: &TestCgroup, to: &str) -> Waiting {
    let mut w = Waiting::start(cgroup.command(probe::command(&[
        "tcp-open",
        to,
        "pause",
        to,
        "tcp-send-held",
        to,
    ])));
    assert!(w.read_line().contains("paused"));
    w
}

/// `netprobe udp-rate` output: {"sent":N,"errors":E,...} (sent: the calls
/// that succeeded; errors: those refused).
fn rate_report(out: &std::process::Output) -> (u64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("udp-rate printed no JSON ({e}): {text}"));
    (
        v["sent"].as_u64().expect("sent"),
        v["errors"].as_u64().expect("errors"),
    )
}

#[test]
fn a_crashed_agent_keeps_enforcing_and_its_successor_reads_what_happened_meanwhile() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let mut agent = RunningAgent::start(&enforcing(&rel, ""), REGIONS);
    let server = net.virginia.udp_server(false);
    // A tagged process sends to the denied host every 2 ms for 5 s; the agent
    // is killed after 1 s and started again 2 s later.
    let sender = cgroup
        .command(probe::command(&[
            "udp-rate",
            &server.addr.to_string(),
            "500",
            "5",
        ]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("udp-rate");
    std::thread::sleep(Duration::from_secs(1));
    agent.kill9();
    let killed_at = now_unix_ns();
    std::thread::sleep(Duration::from_secs(2));
    let restarted_at = now_unix_ns();
    agent.restart();
    let out = sender.wait_with_output().expect("udp-rate");
    let (sent, refused) = rate_report(&out);
    assert_eq!(sent, 0, "no datagram to the denied host was let through");
    assert_eq!(refused, 2500, "every one of the 2,500 calls was refused");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.received(), 0, "nothing reached the denied host");

    // The successor adopted the pinned state and read the records the kernel
    // wrote while no agent ran.
    assert!(
        agent.log_text().contains("adopted the pinned kernel state"),
        "{}",
        agent.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let during = agent
            .listed(false, &["--limit", "10000"])
            .iter()
            .filter(|f| f.action() == Action::Denied)
            .filter(|f| f.time_unix_ns > killed_at && f.time_unix_ns < restarted_at)
            .count();
        if during > 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the denials made while no agent ran were not reported ({during} found)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The kernel's counters carried over too: every refusal is counted.
    let denied = agent.counter("denied");
    assert_eq!(denied, refused, "the denial counter survived the crash");
}

#[test]
fn tags_by_taint_by_api_and_by_inheritance_survive_a_crash() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let taint = format!(
        "\n[[taint_sources]]\nclass = \"eu_personal\"\ncidr = \"{}/32\"\n",
        net.frankfurt.v4
    );
    let policy = enforcing(&rel, "") + &taint;
    let mut agent = RunningAgent::start(&policy, REGIONS);
    let source = net.frankfurt.tcp_server(false);
    let server = net.virginia.udp_server(false);
    let (src, dst) = (source.addr.to_string(), server.addr.to_string());

    // Tainted: connects to the declared source, then waits.
    let mut tainted = Waiting::start(probe::command(&[
        "tcp-connect",
        &src,
        "pause",
        &dst,
        "udp-sendto",
        &dst,
    ]));
    assert!(tainted.read_line().contains("paused"));
    // Tagged over the API.
    let mut explicit = Waiting::start(probe::command(&["pause", &dst, "udp-sendto", &dst]));
    assert!(explicit.read_line().contains("paused"));
    let out = agent.ctl(&["tag", &explicit.pid().to_string(), "--class", "eu_personal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Inherited: a child forked in the selected cgroup, then moved out of it
    // (so no selector would tag it again).
    let mut inherited = Waiting::start(cgroup.command(probe::command(&[
        "--fork",
        "pause",
        &dst,
        "udp-sendto",
        &dst,
    ])));
    assert!(inherited.read_line().contains("paused"));
    let root = sensor_user::system::mountinfo::cgroup2_mount().expect("cgroup v2");
    for pid in cgroup.pids() {
        std::fs::write(root.join("cgroup.procs"), pid.to_string()).expect("moving out");
    }
    assert!(cgroup.pids().is_empty());

    agent.kill9();
    agent.restart();

    let tagged = agent.ctl_json(&["tagged"]);
    let pids: Vec<u64> = tagged
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default();
    for (what, pid) in [("tainted", tainted.pid()), ("explicit", explicit.pid())] {
        assert!(
            pids.contains(&u64::from(pid)),
            "the {what} process {pid} is no longer tagged: {tagged}"
        );
    }
    for (what, w) in [
        ("tainted", tainted),
        ("explicit", explicit),
        ("inherited", inherited),
    ] {
        let p = w.go();
        assert_eq!(
            p.errnos.last().copied(),
            Some(libc::EPERM),
            "the {what} process's transfer to the denied host after the restart"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.received(), 0, "nothing reached the denied host");
}

#[test]
fn stopping_the_agent_keeps_enforcing_modes_survive_and_uninstall_lifts_the_gates() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let policy = FixturePolicy::delivering("restart-host", &rel).text();
    let mut agent = RunningAgent::start(&policy, REGIONS);
    let server = net.virginia.udp_server(false);
    let dst = server.addr.to_string();
    let send = || probe::run(cgroup.command(probe::command(&["udp-sendto", &dst]))).errno();
    assert_eq!(send(), 0, "monitor mode lets it through");
    let out = agent.ctl(&["enforce", "on", "--reason", "restart test"]);
    assert!(out.status.success());
    assert_eq!(send(), libc::EPERM);

    // systemctl stop: the kernel keeps enforcing.
    agent.stop();
    assert!(agent.log_text().contains("keep enforcing"));
    assert_eq!(send(), libc::EPERM, "denied while no agent runs");

    // The mode set over the API comes back with the agent, not the file's.
    agent.restart();
    let st = agent.status();
    assert_eq!(
        st.modes[0].mode(),
        Mode::Enforce,
        "enforce survived the restart: {st:?}"
    );
    assert_eq!(send(), libc::EPERM);
    assert_eq!(server.wait_for(1, Duration::from_millis(300)), 1);

    // Removing the sensor is explicit, and it detaches everything.
    agent.stop();
    let refused = agent.sensord_once(&["--uninstall"]);
    assert!(
        refused.status.success(),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!agent.bpf_dir.exists(), "the pinned state is gone");
    assert_eq!(send(), 0, "nothing judges any more");
    assert_eq!(server.wait_for(2, Duration::from_secs(2)), 2);
}

#[test]
fn each_class_fails_as_its_policy_declares_while_the_agent_is_gone() {
    let (deny_cg, allow_cg, keep_cg) = (
        TestCgroup::create(),
        TestCgroup::create(),
        TestCgroup::create(),
    );
    let net = TestNet::create();
    let class = |name: &str, id: u32, loss: &str, cg: &TestCgroup| {
        format!(
            "[classes.{name}]\nid = {id}\nmode = \"enforce\"\nallowed_jurisdictions = [\"EEA\"]\non_agent_loss = \"{loss}\"\n\n[[selectors]]\nclass = \"{name}\"\ncgroup = \"{}\"\n\n",
            cgroup_rel(cg)
        )
    };
    let policy = format!(
        "[host]\nid = \"loss-host\"\naggregation_interval = \"10s\"\nagent_loss_timeout = \"4s\"\n\n[sites.fra1]\ncidrs = [\"198.51.100.0/24\", \"2001:db8:de::/48\"]\ncountry = \"DE\"\n\n[sites.iad1]\ncidrs = [\"203.0.113.0/24\", \"2001:db8:a5::/48\"]\ncountry = \"US\"\n\n{}{}{}",
        class("fail_closed", 0, "deny", &deny_cg),
        class("fail_open", 1, "allow", &allow_cg),
        class("kept", 2, "keep", &keep_cg),
    );
    let mut agent = RunningAgent::start(&policy, REGIONS);
    let fra = net.frankfurt.udp_server(false);
    let iad = net.virginia.udp_server(false);
    let (f, v) = (fra.addr.to_string(), iad.addr.to_string());
    let errnos = |cg: &TestCgroup| {
        probe::run(cg.command(probe::command(&["udp-sendto", &f, "udp-sendto", &v]))).errnos
    };
    let eperm = libc::EPERM;
    // With the agent: every class reaches Frankfurt, none Virginia.
    for cg in [&deny_cg, &allow_cg, &keep_cg] {
        assert_eq!(errnos(cg), vec![0, eperm]);
    }
    agent.kill9();
    let killed = Instant::now();
    // Within the timeout (4 s from the last heartbeat, at most 1 s before
    // the kill) nothing changes.
    for cg in [&deny_cg, &allow_cg, &keep_cg] {
        assert_eq!(errnos(cg), vec![0, eperm], "within the timeout");
    }
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "the machine is too slow for this test's timing"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(errnos(&deny_cg), vec![eperm, eperm], "deny: failsafe only");
    assert_eq!(errnos(&allow_cg), vec![0, 0], "allow: fail open");
    assert_eq!(errnos(&keep_cg), vec![0, eperm], "keep: the last policy");
    assert_eq!(
        iad.wait_for(1, Duration::from_secs(1)),
        1,
        "only the fail-open class reached Virginia"
    );

    agent.restart();
    for cg in [&deny_cg, &allow_cg, &keep_cg] {
        assert_eq!(errnos(cg), vec![0, eperm], "after the agent returned");
    }
    assert!(
        agent.log_text().contains("on_agent_loss = allow"),
        "the open window is reported: {}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(iad.received(), 1);
}

#[test]
fn an_upgrade_to_another_layout_switches_without_a_gap_and_carries_tags_over() {
    // A build with another LAYOUT_VERSION finds the pinned maps under another
    // directory name: renaming this build's set to `maps-v1` while the agent
    // is stopped makes the same binary meet an "older layout", running.
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let mut agent = RunningAgent::start(&enforcing(&rel, ""), REGIONS);
    let server = net.virginia.udp_server(false);
    let dst = server.addr.to_string();
    // Tagged over the API only: after the upgrade only the carried-over
    // process tags can say it carries the class.
    let mut explicit = Waiting::start(probe::command(&["pause", &dst, "udp-sendto", &dst]));
    assert!(explicit.read_line().contains("paused"));
    let out = agent.ctl(&["tag", &explicit.pid().to_string(), "--class", "eu_personal"]);
    assert!(out.status.success());
    agent.stop();
    let current = std::fs::read_dir(&agent.bpf_dir)
        .expect("pinned set")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("maps-v"))
        })
        .expect("a maps directory");
    let old = agent.bpf_dir.join("maps-v1");
    std::fs::rename(&current, &old).expect("renaming the maps directory on bpffs");

    let sender = cgroup
        .command(probe::command(&["udp-rate", &dst, "500", "3"]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("udp-rate");
    std::thread::sleep(Duration::from_millis(500));
    agent.restart();
    let (sent, refused) = rate_report(&sender.wait_with_output().expect("udp-rate"));
    assert_eq!(
        (sent, refused),
        (0, 1500),
        "every send refused across the upgrade"
    );
    assert!(!old.exists(), "the old layout's maps were removed");
    assert!(current.exists(), "the new layout's maps are pinned");
    assert!(
        agent.log_text().contains("process tags carried over"),
        "{}",
        agent.log_text()
    );
    let p = explicit.go();
    assert_eq!(
        p.errnos,
        vec![0, libc::EPERM],
        "the API tag was carried over"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.received(), 0);
}

#[test]
fn connections_open_before_the_agent_started_are_judged_and_cut_in_enforce_mode() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let denied = net.virginia.tcp_hold_server(false);
    let allowed = net.frankfurt.tcp_hold_server(false);
    // Both connections are opened while no agent runs: nothing judges them.
    let open =
        |server: &harness::harness::netns::Server| holding_open(&cgroup, &server.addr.to_string());
    let (to_us, to_de) = (open(&denied), open(&allowed));
    assert_eq!(denied.wait_for(4, Duration::from_secs(2)), 4);
    assert_eq!(allowed.wait_for(4, Duration::from_secs(2)), 4);

    let agent = RunningAgent::start(&enforcing(&rel, ""), REGIONS);
    let v = agent.listed(false, &[]);
    let existing: Vec<&Flow> = v
        .iter()
        .filter(|f| f.kind() == FlowKind::Existing)
        .collect();
    assert_eq!(
        existing.len(),
        1,
        "one open connection violates: {v:?}\n{}",
        agent.log_text()
    );
    assert_eq!(existing[0].remote, denied.addr.to_string());
    assert_eq!(existing[0].pid, to_us.pid());
    assert_eq!(existing[0].action(), Action::Denied);
    assert_eq!(existing[0].protocol(), Protocol::Tcp);

    let cut = to_us.go();
    assert_eq!(
        cut.errnos,
        vec![0, 0, libc::ECONNABORTED],
        "the agent closed it"
    );
    let kept = to_de.go();
    assert_eq!(kept.errnos, vec![0, 0, 0], "the allowed one stays open");
    assert_eq!(allowed.wait_for(8, Duration::from_secs(2)), 8);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(denied.received(), 4, "nothing more reached the denied host");
}

#[test]
fn switching_to_enforce_cuts_a_violating_connection_already_open() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let policy = FixturePolicy::delivering("restart-host", &rel).text();
    let agent = RunningAgent::start(&policy, REGIONS);
    let denied = net.virginia.tcp_hold_server(false);
    let w = holding_open(&cgroup, &denied.addr.to_string());
    assert_eq!(denied.wait_for(4, Duration::from_secs(2)), 4, "monitor");
    let out = agent.ctl(&["enforce", "on", "--reason", "cut test"]);
    assert!(out.status.success());
    let p = w.go();
    assert_eq!(p.errnos, vec![0, 0, libc::ECONNABORTED]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        denied.received(),
        4,
        "nothing more left after enforcement began"
    );
    let v = agent.listed(false, &[]);
    let kinds: Vec<(String, String)> = v
        .iter()
        .map(|f| (f.kind().label(), f.action().label()))
        .collect();
    // The connect reported in monitor mode, the open connection denied when
    // enforcement began; the backstop may also report the packets of the
    // closing connection it dropped (its FIN/RST to the denied host).
    let (packets, rest): (Vec<_>, Vec<_>) = kinds.into_iter().partition(|k| k.0 == "packet");
    assert_eq!(
        rest,
        vec![
            ("connect".into(), "reported".into()),
            ("existing".into(), "denied".into())
        ],
        "{v:?}"
    );
    assert!(packets.iter().all(|k| k.1 == "denied"), "{v:?}");
}

#[test]
fn what_the_ring_buffer_could_not_hold_while_no_agent_ran_arrives_as_a_gap() {
    // Every violation the kernel saw while the agent was down reaches the
    // collector, either as a record or counted in a gap record: 60,000
    // sends overflow the 4 MiB ring buffer (32k records) before an agent
    // drains it.
    let dir = TempPath::dir("rs-ring-gap");
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start(dir.path());
    let host = "ring-gap-host";
    let config = collector.agent_config(dir.path(), host, None);
    let rel = cgroup_rel(&cgroup);
    let policy = FixturePolicy::delivering(host, &rel).text();
    let cfg = ["--config", config.to_str().expect("utf-8")];
    let mut agent = RunningAgent::start_with(&policy, DELIVERY_REGIONS, &cfg);
    let server = net.virginia.udp_server(false);
    agent.kill9();
    let out = cgroup
        .command(probe::command(&[
            "udp-rate",
            &server.addr.to_string(),
            "1000000",
            "0.06",
        ]))
        .output()
        .expect("udp-rate");
    let (sent, refused) = rate_report(&out);
    assert_eq!((sent, refused), (60_000, 0), "monitor mode");
    agent.restart();
    let drops = agent.kernel_drops();
    assert!(drops > 0, "the ring buffer overflowed");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let violations = collector.count(host, "violation") as u64;
        let gaps: u64 = collector
            .export(Some("gap"))
            .iter()
            .filter(|r| r.host_id == host)
            .filter_map(|r| r.gap())
            .map(|g| g.count)
            .sum();
        // A gap counts every record the kernel could not keep, of any kind
        // (the sender's exec tag and its socket's close record compete for
        // the same ring): every violation is either stored or counted.
        if violations + gaps >= sent {
            assert_eq!(gaps, drops, "the gap counts exactly the kernel's loss");
            assert!(
                violations <= sent,
                "{violations} violations of {sent} sends"
            );
            assert!(
                violations + gaps <= sent + 2,
                "{violations} + {gaps}: more than the sends, their tag and close"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {violations} violations and {gaps} in gaps of {sent} arrived"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_restart_with_a_changed_policy_leaves_nothing_of_the_old_one_in_the_kernel() {
    // The pinned maps hold the old policy's selectors; the new agent's policy
    // must replace them, not add to them.
    let (old_cg, new_cg) = (TestCgroup::create(), TestCgroup::create());
    let net = TestNet::create();
    let mut agent = RunningAgent::start(&enforcing(&cgroup_rel(&old_cg), ""), REGIONS);
    let server = net.virginia.udp_server(false);
    let dst = server.addr.to_string();
    let send =
        |cg: &TestCgroup| probe::run(cg.command(probe::command(&["udp-sendto", &dst]))).errno();
    assert_eq!(send(&old_cg), libc::EPERM);
    assert_eq!(send(&new_cg), 0);
    agent.stop();
    std::fs::write(&agent.policy, enforcing(&cgroup_rel(&new_cg), "")).expect("policy");
    agent.restart();
    assert_eq!(send(&old_cg), 0, "the old selector is gone");
    assert_eq!(send(&new_cg), libc::EPERM, "the new one is in force");
}

#[test]
fn a_policy_with_a_bad_failure_mode_is_refused_with_its_place() {
    let dir = std::env::temp_dir().join(format!("rs-loss-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        "[host]\nagent_loss_timeout = \"1s\"\n\n[classes.c]\nallowed_jurisdictions = [\"EEA\"]\non_agent_loss = \"maybe\"\n",
    )
    .expect("policy");
    let out = std::process::Command::new(harness::harness::agent::workspace_bin("sensorctl"))
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .expect("sensorctl");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("p.toml:2:22: agent_loss_timeout"), "{err}");
    assert!(
        err.contains("p.toml:6:17: class c: on_agent_loss \"maybe\""),
        "{err}"
    );
}

fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The egress backstop and the socket marks are pinned like every other
/// program and map: with the agent killed, a socket an untagged process
/// opened to the denied host and handed to a tagged one still carries no
/// byte of the tagged process's data out.
#[test]
fn with_the_agent_killed_a_handed_over_socket_is_still_judged() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let mut agent = RunningAgent::start(&enforcing(&rel, ""), REGIONS);
    let sink = net.virginia.tcp_hold_server(false);
    let sniffer = net.virginia.sniffer();
    let gate = probe::gateprobe;
    let mut owner = Waiting::start(gate(&["hold", "tcp", &sink.addr.to_string()]));
    let held: serde_json::Value =
        serde_json::from_str(owner.read_line().trim()).expect("gateprobe json");
    assert_eq!(held["errno"], 0, "untagged: the connection opens");
    agent.kill9();
    let marker = format!("RSMARK-killed-{}", std::process::id());
    let (pid, fd) = (held["pid"].to_string(), held["fd"].to_string());
    let mut taker = Waiting::start(cgroup.command(gate(&["getfd", &pid, &fd, &marker])));
    let _ = taker.read_line();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sniffer.count(marker.as_bytes()),
        0,
        "no byte left while no agent ran"
    );
    agent.restart();
}
