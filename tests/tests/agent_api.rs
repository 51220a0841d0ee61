//! The agent as ops run it: the real `sensord` binary, driven only through its
//! API with `sensorctl`.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    netns::TestNet,
    probe,
    scenario::{FixturePolicy, cgroup_rel},
};
use residency_proto::{
    agent::v1::{Action, FlowKind, Protocol, Verdict},
    records::Label,
};

const REGIONS: &str = "1.0.0.0,1.0.0.255,AU\n5.0.0.0,5.0.0.255,DE\n";

fn policy(cgroup_rel: &str) -> String {
    FixturePolicy {
        host_id: "test-host-1",
        aggregation: "0",
        mode: "monitor",
        allowed: r#"["EEA"]"#,
        cgroup_rel,
        class_extra: "",
    }
    .text()
}

struct Setup {
    agent: RunningAgent,
    cgroup: TestCgroup,
    net: TestNet,
}

fn setup() -> Setup {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let agent = RunningAgent::start(&policy(&rel), REGIONS);
    Setup { agent, cgroup, net }
}

fn mode_of(agent: &RunningAgent) -> String {
    agent.status().modes[0].mode().label()
}

#[test]
fn status_reports_identity_policy_dataset_and_modes() {
    let s = setup();
    let st = s.agent.status();
    assert_eq!(st.host_id, "test-host-1");
    assert_eq!(st.policy_sha256.len(), 64);
    assert_eq!(st.policy_generation, 1);
    assert_eq!(
        st.dataset.as_ref().map(|d| d.name.as_str()),
        Some("regions.csv")
    );
    assert_eq!(st.modes[0].class, "eu_personal");
    assert_eq!(mode_of(&s.agent), "monitor");
    assert!(
        st.counters
            .iter()
            .any(|c| c.name == "ringbuf_reserve_failed")
    );
    assert!(!st.kernel.is_empty());
    // The canonical protobuf JSON: enum names, 64-bit integers as strings.
    let raw = s.agent.ctl_json(&["status"]);
    assert_eq!(raw["modes"][0]["mode"], "MODE_MONITOR", "{raw}");
    assert!(raw["events"].is_string(), "{raw}");
}

#[test]
fn a_tagged_processs_violation_shows_in_violations() {
    let s = setup();
    let server = s.net.virginia.tcp_server(false);
    let p = probe::run(
        s.cgroup
            .command(probe::command(&["tcp-connect", &server.addr.to_string()])),
    );
    assert_eq!(p.errno(), 0, "monitor mode");
    let deadline = Instant::now() + Duration::from_secs(5);
    let found = loop {
        let v = s.agent.listed(false, &["--pid", &p.pid.to_string()]);
        if let Some(f) = v.into_iter().next() {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no violation for pid {} in time",
            p.pid
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found.remote, server.addr.to_string());
    assert_eq!(found.remote_site, "iad1");
    assert_eq!(found.remote_country, "US");
    assert_eq!(found.kind(), FlowKind::Connect);
    assert_eq!(found.protocol(), Protocol::Tcp);
    assert_eq!(found.action(), Action::Reported);
    assert_eq!(found.verdict(), Verdict::Deny);
    assert_eq!(found.classes[0], "eu_personal");
    assert_eq!(found.comm, "netprobe");
    assert_eq!(found.host_id, "test-host-1");
    // And the process is listed as tagged, with why.
    let tagged = s.agent.ctl_json(&["tagged"]);
    assert!(tagged.as_array().is_some(), "{tagged}");
}

#[test]
fn enforce_flips_the_kernel_and_back() {
    let s = setup();
    let server = s.net.virginia.tcp_server(false);
    let target = server.addr.to_string();
    let connect =
        || probe::run(s.cgroup.command(probe::command(&["tcp-connect", &target]))).errno();
    assert_eq!(connect(), 0, "monitor");
    let out = s.agent.ctl(&[
        "enforce",
        "on",
        "--class",
        "eu_personal",
        "--reason",
        "incident 42: stop transfers",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_of(&s.agent), "enforce");
    assert_eq!(connect(), libc::EPERM, "enforce denies in the kernel");
    let before = server.received();
    let out = s.agent.ctl(&[
        "enforce",
        "monitor",
        "--class",
        "eu_personal",
        "--reason",
        "incident 42 closed",
    ]);
    assert!(out.status.success());
    assert_eq!(connect(), 0, "back to monitor");
    assert_eq!(
        server.wait_for(before + 1, Duration::from_secs(2)),
        before + 1
    );
    assert!(
        s.agent.log_text().contains("incident 42: stop transfers"),
        "the change is an audit record"
    );
}

#[test]
fn non_root_and_reasonless_enforcement_changes_are_refused() {
    let s = setup();
    let mut cmd = std::process::Command::new(harness::harness::agent::bin_for_others("sensorctl"));
    cmd.arg("--socket")
        .arg(&s.agent.socket)
        .args(["enforce", "on", "--reason", "let me"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 4242);
    let out = cmd.output().expect("sensorctl as uid 4242");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(err.contains("caller uid 4242 is not root"), "{err}");
    let out = s.agent.ctl(&["enforce", "on", "--class", "eu_personal"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a reason is required"), "{err}");
    assert_eq!(mode_of(&s.agent), "monitor", "nothing changed");
}

#[test]
fn on_the_root_only_socket_others_get_health_and_nothing_else() {
    let s = setup();
    let probe = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new(match uid {
            Some(_) => harness::harness::agent::bin_for_others("grpc-probe"),
            None => harness::harness::agent::workspace_bin("grpc-probe"),
        });
        cmd.arg(&s.agent.socket);
        if let Some(u) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, u);
        }
        let out = cmd.output().expect("grpc-probe");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "grpc-probe printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let root = probe(None);
    assert_eq!(root["health"], "SERVING");
    assert!(
        root["reflection"]
            .as_str()
            .is_some_and(|r| r.starts_with("ok")),
        "{root}"
    );
    let nobody = probe(Some(65534));
    assert_eq!(nobody["health"], "SERVING", "health only says it serves");
    assert_eq!(
        nobody["reflection"], "error: PermissionDenied",
        "reflection is for root, like the API: {nobody}"
    );
}

#[test]
fn sighup_with_a_broken_policy_keeps_the_old_one_and_says_why() {
    let s = setup();
    let before = s.agent.status();
    std::fs::write(
        &s.agent.policy,
        "[classes.eu_personal]\nallowed_jurisdictions = [\"EU28\"]\n",
    )
    .expect("break the policy");
    s.agent.hup();
    assert!(
        s.agent
            .wait_log("policy reload rejected", Duration::from_secs(10)),
        "the rejection is logged: {}",
        s.agent.log_text()
    );
    assert!(
        s.agent.log_text().contains("unknown jurisdiction \"EU28\""),
        "with why"
    );
    let after = s.agent.status();
    assert_eq!(after.policy_sha256, before.policy_sha256);
    assert_eq!(after.policy_generation, before.policy_generation);
    // Still enforcing the old policy.
    let server = s.net.virginia.tcp_server(false);
    let out = s
        .agent
        .ctl(&["enforce", "on", "--reason", "check the old policy holds"]);
    assert!(out.status.success());
    let p = probe::run(
        s.cgroup
            .command(probe::command(&["tcp-connect", &server.addr.to_string()])),
    );
    assert_eq!(p.errno(), libc::EPERM);
}

#[test]
fn a_second_sensord_on_the_host_is_refused() {
    let s = setup();
    let out = std::process::Command::new(harness::harness::agent::workspace_bin("sensord"))
        .arg("--policy")
        .arg(&s.agent.policy)
        .arg("--lock")
        .arg(s.agent.dir().join("sensord.lock"))
        .arg("--socket")
        .arg(s.agent.dir().join("second.sock"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("second sensord");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another sensord is running"), "{err}");
}

#[test]
fn metrics_endpoint_counts_violations() {
    use std::io::{Read, Write};
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    // A free port on loopback for the metrics endpoint.
    let port = harness::harness::collector::free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = RunningAgent::start_with(&policy(&rel), REGIONS, &["--metrics-listen", &listen]);
    let scrape = || {
        let mut s = std::net::TcpStream::connect(&listen).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("response");
        body
    };
    assert!(scrape().contains("residency_sensor_verdict_prefixes"));
    let server = net.virginia.tcp_server(false);
    let p = probe::run(cgroup.command(probe::command(&["tcp-connect", &server.addr.to_string()])));
    assert_eq!(p.errno(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape();
        // Labelled with the destination's country too (whatever the test
        // regions make of the Virginia host).
        if body.lines().any(|l| {
            l.starts_with(
                r#"residency_sensor_violations_total{class="eu_personal",action="reported",country=""#,
            ) && l.ends_with("} 1")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "violation not counted:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection's close record states both endpoints and carries
    // their Community ID (joinable with Zeek's or Suricata's). The connect
    // record, made before the kernel picked the local port, is completed
    // from the flow's first send: the same endpoints and ID.
    let deadline = Instant::now() + Duration::from_secs(5);
    let close = loop {
        let flows = agent.listed(true, &[]);
        if let Some(c) = flows
            .iter()
            .find(|f| f.kind == FlowKind::Close as i32 && f.remote == server.addr.to_string())
        {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "no close record: {flows:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let want = residency_proto::community_id::v1(
        6,
        close.local.parse().expect("local address"),
        server.addr,
    )
    .expect("a TCP flow has an ID");
    assert!(want.starts_with("1:"));
    assert_eq!(close.community_id, want, "{close:?}");
    let flows = agent.listed(true, &[]);
    let connect = flows
        .iter()
        .find(|f| f.kind == FlowKind::Connect as i32 && f.remote == server.addr.to_string())
        .expect("the connect is listed");
    assert_eq!(
        (connect.local.as_str(), connect.community_id.as_str()),
        (close.local.as_str(), want.as_str()),
        "{connect:?}"
    );
    assert_eq!(connect.cookie, close.cookie);
    // The violation itself (what the collector and the SIEM get) carries it.
    let violations = agent.listed(false, &[]);
    let v = violations
        .iter()
        .find(|v| v.remote == server.addr.to_string())
        .expect("the violation");
    assert_eq!(v.community_id, want, "{v:?}");
    drop(agent);
}

#[test]
fn tls_viewer_may_read_but_not_change_enforcement_operator_may() {
    let cgroup = TestCgroup::create();
    let rel = cgroup_rel(&cgroup);
    let pki_dir = harness::harness::temp::TempPath::dir("pki");
    let dir = pki_dir.path().to_owned();
    let ca = harness::harness::pki::TestCa::create(&dir);
    let server = ca.issue("sensord", &["localhost"]);
    let operator = ca.issue("ops-alice", &[]);
    let viewer = ca.issue("auditor-bob", &[]);
    let port = harness::harness::collector::free_port();
    let config = dir.join("sensord.toml");
    std::fs::write(
        &config,
        format!(
            "[api.tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\noperators = [\"ops-alice\"]\nviewers = [\"auditor-bob\"]\n",
            server.cert.display(),
            server.key.display(),
            ca.cert.display()
        ),
    )
    .expect("config");
    let agent = RunningAgent::start_with(
        &policy(&rel),
        REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    let endpoint = format!("https://localhost:{port}");
    let tls = |who: &harness::harness::pki::Pem, args: &[&str]| {
        let mut all = vec![
            "--endpoint",
            endpoint.as_str(),
            "--ca",
            ca.cert.to_str().expect("utf-8"),
            "--cert",
            who.cert.to_str().expect("utf-8"),
            "--key",
            who.key.to_str().expect("utf-8"),
        ];
        all.extend_from_slice(args);
        agent.ctl(&all)
    };
    // Wait for the TLS listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tls(&viewer, &["status"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "TLS API did not come up: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = tls(&viewer, &["enforce", "on", "--reason", "viewer tries"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cert auditor-bob has the viewer role, which may not change enforcement"),
        "{err}"
    );
    assert_eq!(mode_of(&agent), "monitor");
    let out = tls(
        &operator,
        &["enforce", "on", "--reason", "operator over TLS"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_of(&agent), "enforce");
    assert!(
        agent.log_text().contains("cert ops-alice"),
        "the audit record names the certificate"
    );
    // Another host's certificate from the same CA is no viewer: it may not
    // read this host's flows.
    let host = ca.issue("host-7.dc1", &[]);
    let out = tls(&host, &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("certificate \"host-7.dc1\" has no role on this agent"),
        "{err}"
    );
    let out = tls(&host, &["violations"]);
    assert!(!out.status.success());
    // A client without a certificate from the CA gets nowhere.
    let other_pki = harness::harness::temp::TempPath::dir("pki-other");
    let other_dir = other_pki.path().to_owned();
    let other_ca = harness::harness::pki::TestCa::create(&other_dir);
    let stranger = other_ca.issue("mallory", &[]);
    assert!(!tls(&stranger, &["status"]).status.success());
    drop(agent);
}

#[test]
fn policies_the_kernel_cannot_hold_are_refused_and_enforcement_stays() {
    // 5,000 taint sources (SIGHUP reload) and 100,000 failsafe prefixes
    // (ApplyPolicy) do not fit the kernel's 4,096-entry maps: both are refused
    // with their place in the file, the denied destination stays denied, and
    // status names the policy the kernel enforces.
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let base = FixturePolicy {
        mode: "enforce",
        ..FixturePolicy::delivering("test-host-1", &rel)
    }
    .text();
    let agent = RunningAgent::start(&base, REGIONS);
    let hash = agent.status().policy_sha256;
    let server = net.virginia.udp_server(false);
    let send = || {
        probe::run(cgroup.command(probe::command(&["udp-sendto", &server.addr.to_string()])))
            .errno()
    };
    assert_eq!(send(), libc::EPERM);

    let taint: String = (0..5000u32)
        .map(|i| {
            format!(
                "[[taint_sources]]\nclass = \"eu_personal\"\ncidr = \"10.{}.{}.0/24\"\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    std::fs::write(&agent.policy, format!("{base}\n{taint}")).expect("policy");
    agent.hup();
    assert!(
        agent.wait_log("distinct taint source prefixes", Duration::from_secs(20)),
        "{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("the kernel holds 4096"));
    assert_eq!(send(), libc::EPERM, "still denied after the refused reload");
    assert_eq!(agent.status().policy_sha256, hash);

    let failsafe: Vec<String> = (0..100_000u32)
        .map(|i| format!("\"10.{}.{}.{}/32\"", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let text = base.replace(
        "aggregation_interval",
        &format!("failsafe = [{}]\naggregation_interval", failsafe.join(", ")),
    );
    let file = agent.dir().join("huge.toml");
    std::fs::write(&file, &text).expect("policy");
    let out = agent.ctl(&[
        "policy",
        "apply",
        file.to_str().expect("utf-8"),
        "--reason",
        "capacity test",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("host.failsafe: 100000 distinct prefixes; the kernel holds 3840"),
        "{err}"
    );
    assert_eq!(send(), libc::EPERM, "still denied after the refused apply");
    let st = agent.status();
    assert_eq!(st.policy_sha256, hash);
    assert_eq!(st.policy_problem, "", "{st:?}");
    assert_eq!(server.received(), 0);
}

#[test]
fn a_slow_policy_compile_does_not_stall_the_agent() {
    // A dry run of a policy with many classes over the full default dataset
    // compiles for seconds. It runs off the agent's task: status answers
    // meanwhile, as often as it is asked.
    let cgroup = TestCgroup::create();
    let rel = cgroup_rel(&cgroup);
    let agent = RunningAgent::start_with(
        &policy(&rel),
        "",
        &[
            "--regions",
            sensor_user::regions::default_dir().to_str().expect("utf-8"),
        ],
    );
    let classes: String = ["US", "CN", "JP", "BR", "IN", "ZA", "AU", "CA"]
        .iter()
        .map(|cc| format!("[classes.only_{cc}]\nallowed_jurisdictions = [\"{cc}\"]\n"))
        .collect();
    let file = agent.dir().join("many-classes.toml");
    std::fs::write(&file, format!("{}\n{classes}", policy(&rel))).expect("policy");
    let mut dry = agent
        .ctl_cmd(&[
            "policy",
            "apply",
            file.to_str().expect("utf-8"),
            "--dry-run",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sensorctl");
    let mut answered_meanwhile = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        if let Some(status) = dry.try_wait().expect("waiting") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = dry.kill();
            panic!(
                "the dry run did not finish in 120 s (killed); sensord's log ends:\n{}",
                agent.log_tail()
            );
        }
        let st = agent.ctl(&["status"]);
        assert!(st.status.success(), "status answers during the compile");
        // Counted only if the compile was still running after the answer.
        if dry.try_wait().expect("waiting").is_none() {
            answered_meanwhile += 1;
        }
    };
    let out = dry.wait_with_output().expect("sensorctl");
    assert!(done.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        answered_meanwhile >= 2,
        "status answered {answered_meanwhile} times while the dry run compiled"
    );
}

#[test]
fn a_dry_run_shows_which_recent_flows_a_policy_would_change() {
    // A service sent to Virginia (US: reported) and Frankfurt (DE: allowed).
    // Before switching anything, ops ask what a new policy would do to the
    // flows the agent saw: each answer names the process, destination and
    // class whose outcome changes, with counts; nothing is applied.
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let agent = RunningAgent::start_with(&policy(&rel), REGIONS, &[]);
    let (us, de) = (
        net.virginia.udp_server(false),
        net.frankfurt.udp_server(false),
    );
    let netprobe = probe::netprobe();
    probe::run_all_ok(&netprobe, &cgroup, "udp-sendto", &us.addr.to_string(), 3);
    probe::run_all_ok(&netprobe, &cgroup, "udp-sendto", &de.addr.to_string(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.listed(true, &[]).len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", agent.listed(true, &[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let hash = agent.status().policy_sha256;
    let what_if = |mode: &str, allowed: &str| {
        let file = agent.dir().join("what-if.toml");
        let text = FixturePolicy {
            host_id: "test-host-1",
            aggregation: "0",
            mode,
            allowed,
            cgroup_rel: &rel,
            class_extra: "",
        }
        .text();
        std::fs::write(&file, text).expect("policy");
        let r = agent.ctl_json(&[
            "policy",
            "apply",
            file.to_str().expect("utf-8"),
            "--dry-run",
        ]);
        let mut changes: Vec<(String, String, String, String)> = r["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(|c| {
                assert_eq!(c["class"], "eu_personal");
                assert!(
                    c["exe"].as_str().is_some_and(|e| e.ends_with("netprobe")),
                    "{c}"
                );
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (s("destination"), s("before"), s("after"), s("flows"))
            })
            .collect();
        changes.sort();
        assert!(
            r["flows_replayed"].as_str().is_some_and(|n| n != "0"),
            "{r}"
        );
        changes
    };
    let (us_ip, de_ip) = (us.addr.ip().to_string(), de.addr.ip().to_string());
    let change = |ip: &str, before: &str, after: &str, n: &str| {
        (
            ip.to_owned(),
            before.to_owned(),
            after.to_owned(),
            n.to_owned(),
        )
    };
    assert_eq!(
        what_if("monitor", r#"["EEA", "US"]"#),
        vec![change(&us_ip, "ACTION_REPORTED", "ACTION_NONE", "3")],
        "allowing the US allows the Virginia flows"
    );
    assert_eq!(
        what_if("enforce", r#"["EEA"]"#),
        vec![change(&us_ip, "ACTION_REPORTED", "ACTION_DENIED", "3")],
        "enforcing denies them"
    );
    assert_eq!(
        what_if("monitor", r#"["CH"]"#),
        vec![change(&de_ip, "ACTION_NONE", "ACTION_REPORTED", "2")],
        "dropping Germany reports the Frankfurt flows"
    );
    // The table says the same to a person, and nothing was applied.
    let file = agent.dir().join("what-if.toml");
    let out = agent.ctl(&[
        "policy",
        "apply",
        file.to_str().expect("utf-8"),
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("allowed -> reported") && text.contains("newly reported: 2,"),
        "{text}"
    );
    assert_eq!(
        agent.status().policy_sha256,
        hash,
        "a dry run changes nothing"
    );
}

#[test]
fn the_collector_asks_the_hosts_agent_what_a_policy_would_change_for_stored_violations() {
    // Violations stored at the collector; an operator there asks what a
    // policy would do to them. The host's agent (it has the region data)
    // judges the collector's groups; nothing is applied.
    use harness::harness::{agent::workspace_bin, collector::RunningCollector, temp::TempPath};
    let host = "what-if-collector";
    let tmp = TempPath::dir(host);
    let collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let fixture = |mode: &'static str, allowed: &'static str| FixturePolicy {
        host_id: host,
        aggregation: "0",
        mode,
        allowed,
        cgroup_rel: &rel,
        class_extra: "",
    };
    let agent = RunningAgent::start_with(
        &fixture("monitor", r#"["EEA"]"#).text(),
        harness::harness::scenario::DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    let us = net.virginia.udp_server(false);
    probe::run_all_ok(
        &probe::netprobe(),
        &cgroup,
        "udp-sendto",
        &us.addr.to_string(),
        3,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.count(host, "violation") < 3 {
        assert!(Instant::now() < deadline, "the violations did not arrive");
        std::thread::sleep(Duration::from_millis(200));
    }
    let hash = agent.status().policy_sha256;
    let ask = |target: &str, mode: &'static str, allowed: &'static str| {
        let file = tmp.path().join("what-if.toml");
        std::fs::write(&file, fixture(mode, allowed).text()).expect("policy");
        std::process::Command::new(workspace_bin("collectorctl"))
            .arg("--socket")
            .arg(&collector.socket)
            .args(["--json", "what-if", "--host", target, "--policy"])
            .arg(&file)
            .output()
            .expect("collectorctl what-if")
    };
    let changes = |out: std::process::Output| -> Vec<(String, String, String, String)> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(r["violations_replayed"], "3", "{r}");
        r["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (s("destination"), s("before"), s("after"), s("flows"))
            })
            .collect()
    };
    let ip = us.addr.ip().to_string();
    assert_eq!(
        changes(ask(host, "monitor", r#"["EEA", "US"]"#)),
        vec![(
            ip.clone(),
            "ACTION_REPORTED".into(),
            "ACTION_NONE".into(),
            "3".into()
        )]
    );
    assert_eq!(
        changes(ask(host, "enforce", r#"["EEA"]"#)),
        vec![(
            ip,
            "ACTION_REPORTED".into(),
            "ACTION_DENIED".into(),
            "3".into()
        )]
    );
    assert_eq!(agent.status().policy_sha256, hash, "nothing applied");
    let out = ask("no-such-host", "monitor", r#"["EEA"]"#);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not connected to this collector"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn records_name_the_unit_container_and_pod_their_cgroup_names() {
    let s = setup();
    let id = "4f6bb7b2f3a9d1c0e5a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0d";
    let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    // Cgroups named the way systemd, docker (systemd driver) and a
    // Kubernetes node with containerd name theirs, inside the selected one.
    let system = s.cgroup.child("system.slice");
    let service = system.child("billing.service");
    let docker = system.child(&format!("docker-{id}.scope"));
    let kubepods = s.cgroup.child("kubepods.slice");
    let burstable = kubepods.child("kubepods-burstable.slice");
    let pod = burstable.child(&format!(
        "kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ));
    let ctr = pod.child(&format!("cri-containerd-{id}.scope"));
    let server = s.net.virginia.tcp_server(false);
    let target = server.addr.to_string();
    let run_in = |cg: &TestCgroup| {
        let p = probe::run(cg.command(probe::command(&["tcp-connect", &target])));
        assert_eq!(p.errno(), 0);
        p.pid
    };
    let (in_service, in_docker, in_pod) = (run_in(&service), run_in(&docker), run_in(&ctr));
    let workload_of = |pid: u32| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let flows = s.agent.listed(true, &["--pid", &pid.to_string()]);
            if let Some(w) = flows.iter().find_map(|f| f.workload.clone()) {
                return w;
            }
            assert!(
                Instant::now() < deadline,
                "no record with a workload for {pid}: {flows:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let w = workload_of(in_service);
    assert!(w.cgroup.ends_with("/system.slice/billing.service"), "{w:?}");
    assert_eq!(
        (w.unit.as_str(), w.container_id.as_str()),
        ("billing.service", "")
    );
    let w = workload_of(in_docker);
    assert_eq!(
        (w.container_runtime.as_str(), w.container_id.as_str()),
        ("docker", id)
    );
    let w = workload_of(in_pod);
    assert_eq!(
        (
            w.pod_uid.as_str(),
            w.pod_qos.as_str(),
            w.container_runtime.as_str(),
            w.container_id.as_str()
        ),
        (uid, "burstable", "containerd", id)
    );
    // And sensorctl's table shows them.
    let table = String::from_utf8_lossy(&s.agent.ctl(&["flows"]).stdout).into_owned();
    assert!(
        table.lines().next().is_some_and(|h| h.contains("WORKLOAD")),
        "{table}"
    );
    assert!(table.contains("billing.service"), "{table}");
    assert!(
        table.contains(&format!("pod/{} containerd:{}", &uid[..8], &id[..12])),
        "{table}"
    );
}
