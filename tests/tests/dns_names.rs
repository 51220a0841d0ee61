//! Names on records: a real DNS server (dnsmasq) in the Frankfurt namespace
//! answers names for the fixture hosts; a tagged process resolves them with
//! its own stub resolver and connects; the agent (the real `sensord`) puts
//! the name it resolved, and the CNAME chain, on the records.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use harness::harness::{
    agent::{RunningAgent, workspace_bin},
    cgroup::TestCgroup,
    collector::RunningCollector,
    dnsmasq::{Dnsmasq, Entry},
    netns::TestNet,
    postgres::PgServer,
    probe,
    scenario::{FixturePolicy, cgroup_rel, delivering_agent},
    temp::TempPath,
};
use residency_proto::agent::v1::{Flow, FlowKind};

const REGIONS: &str = "1.0.0.0,1.0.0.255,AU\n";

fn policy(cgroup_rel: &str) -> String {
    FixturePolicy {
        host_id: "dns-host",
        aggregation: "0",
        mode: "monitor",
        allowed: r#"["EEA"]"#,
        cgroup_rel,
        class_extra: "",
    }
    .text()
}

/// The connect record of process `pid` (a tcp-connect to `remote`).
fn connect_of(agent: &RunningAgent, pid: u32, remote: SocketAddr) -> Flow {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = agent.listed(true, &["--pid", &pid.to_string()]);
        if let Some(f) = flows
            .iter()
            .find(|f| f.kind() == FlowKind::Connect && f.remote == remote.to_string())
        {
            return f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no connect record of {pid} to {remote}: {flows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn records_carry_the_name_the_process_resolved_and_forget_it_after_the_ttl() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let agent = RunningAgent::start(&policy(&cgroup_rel(&cgroup)), REGIONS);
    let us = [IpAddr::V4(net.virginia.v4), IpAddr::V6(net.virginia.v6)];
    let eu = [IpAddr::V4(net.frankfurt.v4)];
    let dns = Dnsmasq::start(
        &net.frankfurt,
        53,
        &[
            Entry::Host("us.bucket.test", &us, 1),
            Entry::Alias("cdn.test", "us.bucket.test", 30),
            Entry::Host("tcp.bucket.test", &eu, 30),
        ],
    );
    // Answers from another port than 53 are not DNS to the sensor: this one
    // names the Frankfurt host, and must not show.
    let spoof = Dnsmasq::start(&net.frankfurt, 5353, &[Entry::Host("spoof.test", &eu, 30)]);
    let v4 = net.virginia.tcp_server(false);
    let v6 = net.virginia.tcp_server(true);
    let fra = net.frankfurt.tcp_server(false);
    let resolve = |server: SocketAddr, name: &str, kind: &str, port: u16| {
        let p = probe::run(cgroup.command(probe::command(&[
            "resolve-connect",
            &server.to_string(),
            name,
            kind,
            &port.to_string(),
        ])));
        assert_eq!(p.errno(), 0, "{name}: {}", dns.log());
        p
    };

    // Through a CNAME: the name asked, and the chain to the address.
    let at = Instant::now();
    let p = resolve(dns.addr, "cdn.test", "a", v4.addr.port());
    let c = connect_of(&agent, p.pid, v4.addr);
    assert_eq!(c.remote_name, "cdn.test", "{c:?}");
    // Named though the process was gone before its records were read: by
    // the path it exec'd.
    assert!(c.exe.ends_with("/netprobe"), "{c:?}");
    assert_eq!(c.remote_cnames, ["us.bucket.test"]);
    // sensorctl's wide table shows the name and its chain.
    let out = agent.ctl(&["-o", "wide", "flows", "--pid", &p.pid.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("NAME") && table.contains("cdn.test (> us.bucket.test)"),
        "{table}"
    );
    // It is a violation (Virginia is outside the EEA): what the collector
    // gets carries the name too.
    let v = agent.listed(false, &["--pid", &p.pid.to_string()]);
    assert!(v.iter().any(|v| v.remote_name == "cdn.test"), "{v:?}");

    // An AAAA answer names the IPv6 flow.
    let p = resolve(dns.addr, "US.Bucket.test", "aaaa", v6.addr.port());
    let c = connect_of(&agent, p.pid, v6.addr);
    assert_eq!(c.remote_name, "us.bucket.test", "{c:?}");
    assert!(c.remote_cnames.is_empty());

    // The answer from port 5353 reached the process, which connected to the
    // address it gave; the record names nothing.
    let p = resolve(spoof.addr, "spoof.test", "a", fra.addr.port());
    let c = connect_of(&agent, p.pid, fra.addr);
    assert_eq!(c.remote_name, "", "{c:?}");

    // Over TCP (a resolver retrying a truncated answer does this), naming the
    // Frankfurt host (after the spoof check, which must not find it): the
    // length-prefixed message is read as well.
    let p = resolve(dns.addr, "tcp.bucket.test", "a-tcp", fra.addr.port());
    let c = connect_of(&agent, p.pid, fra.addr);
    assert_eq!(c.remote_name, "tcp.bucket.test", "{c:?}");

    // The Virginia address's answer had a TTL of 1 s (the chain's smallest):
    // once it and the agent's grace (2 s) passed, a connect to the address
    // without resolving it again carries no name.
    std::thread::sleep(
        (at + Duration::from_millis(3500)).saturating_duration_since(Instant::now()),
    );
    let p = probe::run(cgroup.command(probe::command(&["tcp-connect", &v4.addr.to_string()])));
    assert_eq!(p.errno(), 0);
    let c = connect_of(&agent, p.pid, v4.addr);
    assert_eq!(c.remote_name, "", "{c:?}");
    assert!(
        agent.counter("dns_lost") == 0,
        "no answer was lost to a full ring buffer"
    );
}

#[test]
fn untagged_processes_answers_are_not_read() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let agent = RunningAgent::start(&policy(&cgroup_rel(&cgroup)), REGIONS);
    let us = [IpAddr::V4(net.virginia.v4)];
    let dns = Dnsmasq::start(
        &net.frankfurt,
        53,
        &[Entry::Host("us.bucket.test", &us, 60)],
    );
    let v4 = net.virginia.tcp_server(false);
    // An untagged process resolves (outside the selected cgroup) ...
    let p = probe::run(probe::command(&[
        "resolve-connect",
        &dns.addr.to_string(),
        "us.bucket.test",
        "a",
        &v4.addr.port().to_string(),
    ]));
    assert_eq!(p.errno(), 0);
    // ... then a tagged one connects to the address without asking: the
    // host-wide table never heard of it.
    let p = probe::run(cgroup.command(probe::command(&["tcp-connect", &v4.addr.to_string()])));
    assert_eq!(p.errno(), 0);
    let c = connect_of(&agent, p.pid, v4.addr);
    assert_eq!(c.remote_name, "", "{c:?}");
}

/// A collector stores the names: `collectorctl violations --name` finds a
/// violation by the name asked, a `*.` pattern over its CNAME chain, and
/// nothing for another name; the chain check holds over the new column.
fn names_reach_the_collector(database: &str, dir: &std::path::Path, host: &str) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start_with(dir, database, None);
    let config = collector.agent_config(dir, host, None);
    let _agent = delivering_agent(host, &cgroup, &config);
    let us = [IpAddr::V4(net.virginia.v4)];
    let dns = Dnsmasq::start(
        &net.frankfurt,
        53,
        &[
            Entry::Host("us.bucket.test", &us, 60),
            Entry::Alias("cdn.test", "us.bucket.test", 60),
        ],
    );
    let v4 = net.virginia.tcp_server(false);
    let p = probe::run(cgroup.command(probe::command(&[
        "resolve-connect",
        &dns.addr.to_string(),
        "cdn.test",
        "a",
        &v4.addr.port().to_string(),
    ])));
    assert_eq!(p.errno(), 0, "{}", dns.log());
    let ctl = |args: &[&str]| {
        std::process::Command::new(workspace_bin("collectorctl"))
            .arg("--socket")
            .arg(&collector.socket)
            .args(args)
            .output()
            .expect("collectorctl")
    };
    let found = |name: &str| -> Vec<String> {
        let out = ctl(&["-o", "jsonl", "violations", "--host", host, "--name", name]);
        assert!(
            out.status.success(),
            "--name {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let hit = loop {
        let hit = found("CDN.test");
        if !hit.is_empty() || Instant::now() > deadline {
            break hit;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(hit.len(), 1, "{hit:?}");
    assert!(
        hit[0].contains("us.bucket.test"),
        "the chain is stored: {}",
        hit[0]
    );
    assert_eq!(
        found("*.bucket.test").len(),
        1,
        "a pattern matches the chain"
    );
    assert!(
        found("*.cdn.test").is_empty(),
        "a pattern is the names below it"
    );
    assert!(found("bucket.test").is_empty(), "an exact name is exact");
    let wide = ctl(&["-o", "wide", "violations", "--host", host]);
    let table = String::from_utf8_lossy(&wide.stdout);
    assert!(table.contains("cdn.test (> us.bucket.test)"), "{table}");
    let bad = ctl(&["violations", "--name", "no such name!"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a DNS name"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let (report, code) = collector.verify(host);
    assert!(report.intact && code == 0, "{report:?}");
}

#[test]
fn names_reach_the_collector_in_sqlite() {
    let tmp = TempPath::dir("dns-names-sqlite");
    let db = tmp.path().join("collector.db");
    names_reach_the_collector(db.to_str().expect("utf-8"), tmp.path(), "dns-sqlite");
}

#[test]
fn names_reach_the_collector_in_postgresql() {
    let pg = PgServer::start();
    let tmp = TempPath::dir("dns-names-pg");
    names_reach_the_collector(&pg.url, tmp.path(), "dns-pg");
}

/// The fixture policy in `mode` with `class_extra` in the class and
/// `trusted` as the host's trusted resolvers.
fn name_policy(cgroup_rel: &str, mode: &str, class_extra: &str, trusted: &str) -> String {
    FixturePolicy {
        host_id: "dns-host",
        aggregation: "0",
        mode,
        allowed: r#"["EEA"]"#,
        cgroup_rel,
        class_extra,
    }
    .text()
    .replacen(
        "[host]\n",
        &format!("[host]\ntrusted_resolvers = [\"{trusted}\"]\n"),
        1,
    )
}

/// A resolve-connect run in `cgroup` (see netprobe), with its retry report
/// (tries, µs waited) when `extra` asks for retries.
fn resolve_in(
    cgroup: &TestCgroup,
    server: SocketAddr,
    name: &str,
    port: u16,
    extra: &[&str],
) -> (probe::ProbeResult, Option<(u64, u64)>) {
    let port = port.to_string();
    let server = server.to_string();
    let mut args = vec!["resolve-connect", &server, name, "a", &port];
    args.extend_from_slice(extra);
    let mut cmd = cgroup.command(probe::command(&args));
    let out = cmd.output().expect("netprobe runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let retry = stdout.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        Some((v["tries"].as_u64()?, v["waited_us"].as_u64()?))
    });
    let report = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"errno\""))
        .unwrap_or_else(|| panic!("{name}: no report: {stdout}"));
    (probe::parse(report), retry)
}

#[test]
fn allowed_names_let_a_class_reach_them_while_their_answer_lasts() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let trusted = format!("{}/32", net.frankfurt.v4);
    let agent = RunningAgent::start(
        &name_policy(
            &cgroup_rel(&cgroup),
            "enforce",
            r#"allowed_names = ["*.bucket.test"]"#,
            &trusted,
        ),
        REGIONS,
    );
    let us = [IpAddr::V4(net.virginia.v4)];
    let dns = Dnsmasq::start(
        &net.frankfurt,
        53,
        &[
            Entry::Host("us.bucket.test", &us, 1),
            Entry::Host("elsewhere.test", &us, 30),
            Entry::Alias("cdn.test", "us.bucket.test", 30),
        ],
    );
    let v4 = net.virginia.tcp_server(false);
    let port = v4.addr.port();

    // An allowed name's address is reachable by the process that resolved
    // it, outside the class's jurisdictions; a connect that beats the agent
    // to the answer is refused (EPERM) and tried again.
    let (p, retry) = resolve_in(&cgroup, dns.addr, "us.bucket.test", port, &["2000", "3500"]);
    let (tries, waited_us) = retry.expect("retry report");
    eprintln!("allowed name: connected after {tries} tries, {waited_us} µs after the answer");
    assert_eq!(p.errnos[0], 0, "allowed by name: {}", agent.log_text());
    // The answer's TTL (1 s) and the grace (2 s) passed: the same process,
    // connecting again without asking, is judged by the address.
    assert_eq!(p.errnos[1], libc::EPERM, "past the answer's TTL");

    // Another process that did not ask: the address alone, outside the EEA.
    let q = probe::run(cgroup.command(probe::command(&["tcp-connect", &v4.addr.to_string()])));
    assert_eq!(q.errno(), libc::EPERM, "the address without the name");

    // Through a CNAME to an allowed name.
    let (p, _) = resolve_in(&cgroup, dns.addr, "cdn.test", port, &["2000"]);
    assert_eq!(p.errno(), 0, "a chain through an allowed name");

    // A name not allowed, for the same address: still refused after retries.
    let (p, retry) = resolve_in(&cgroup, dns.addr, "elsewhere.test", port, &["300"]);
    assert_eq!(p.errno(), libc::EPERM, "not an allowed name");
    assert!(retry.expect("retry report").0 > 1);
}

#[test]
fn denied_names_are_refused_wherever_their_address_is() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let trusted = format!("{}/32", net.frankfurt.v4);
    let agent = RunningAgent::start(
        &name_policy(
            &cgroup_rel(&cgroup),
            "enforce",
            r#"denied_names = ["exfil.bucket.test"]"#,
            &trusted,
        ),
        REGIONS,
    );
    let eu = [IpAddr::V4(net.frankfurt.v4)];
    let dns = Dnsmasq::start(
        &net.frankfurt,
        53,
        &[
            Entry::Host("exfil.bucket.test", &eu, 30),
            Entry::Host("ok.bucket.test", &eu, 30),
        ],
    );
    let fra = net.frankfurt.tcp_server(false);
    let port = fra.addr.port();
    // The Frankfurt address is in the EEA, allowed by itself; by the denied
    // name it is refused. The first connect can beat the agent to the answer
    // (judged by the address then); 200 ms later the entry is in force.
    let (p, _) = resolve_in(&cgroup, dns.addr, "exfil.bucket.test", port, &["0", "200"]);
    eprintln!(
        "denied name: first connect errno {} (0: it beat the agent)",
        p.errnos[0]
    );
    assert_eq!(
        p.errnos[1],
        libc::EPERM,
        "denied by name: {}",
        agent.log_text()
    );
    let (p, _) = resolve_in(&cgroup, dns.addr, "ok.bucket.test", port, &["0", "200"]);
    assert_eq!(p.errnos, [0, 0], "another name for the same address");
    // The violation names the denied name.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = agent.listed(false, &[]);
        if v.iter().any(|v| v.remote_name == "exfil.bucket.test") {
            break;
        }
        assert!(Instant::now() < deadline, "no violation named exfil: {v:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn answers_from_untrusted_resolvers_allow_nothing() {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    // The resolver the process asks is not the trusted one.
    let agent = RunningAgent::start(
        &name_policy(
            &cgroup_rel(&cgroup),
            "enforce",
            r#"allowed_names = ["us.bucket.test"]"#,
            "192.0.2.53/32",
        ),
        REGIONS,
    );
    let us = [IpAddr::V4(net.virginia.v4)];
    let dns = Dnsmasq::start(
        &net.frankfurt,
        53,
        &[Entry::Host("us.bucket.test", &us, 30)],
    );
    let v4 = net.virginia.tcp_server(false);
    let (p, _) = resolve_in(
        &cgroup,
        dns.addr,
        "us.bucket.test",
        v4.addr.port(),
        &["500"],
    );
    assert_eq!(
        p.errno(),
        libc::EPERM,
        "an untrusted answer allowed the address"
    );
    assert!(
        agent.wait_log("not in host.trusted_resolvers", Duration::from_secs(5)),
        "no warning about the untrusted resolver: {}",
        agent.log_text()
    );
}

/// A tagged process that talks to a public DNS-over-HTTPS service (here a
/// remote host at Quad9's address, port 443): its records name the service,
/// `doh_flows` counts it and the agent warns once.
#[test]
fn talking_to_a_public_doh_service_is_reported() {
    use harness::harness::netns::{PREFIX, Place, RemoteHost};
    let cgroup = TestCgroup::create();
    let quad9 = RemoteHost::create_named(
        Place::Virginia,
        format!("{PREFIX}doh"),
        "rsdoh".to_owned(),
        ("9.9.9.10".parse().unwrap(), "9.9.9.9".parse().unwrap()),
        ("fd00:9::2".parse().unwrap(), "fd00:9::1".parse().unwrap()),
    );
    let ip = quad9.addr(false);
    // The handshake completes in the kernel's backlog: nobody need accept.
    let _listener = quad9.inside(move || {
        std::net::TcpListener::bind(SocketAddr::new(ip, 443)).expect("bind 443 in netns")
    });
    let admin = harness::harness::collector::free_port();
    let agent = RunningAgent::start_with(
        &policy(&cgroup_rel(&cgroup)),
        REGIONS,
        &["--metrics-listen", &format!("127.0.0.1:{admin}")],
    );
    let remote = SocketAddr::new(ip, 443);
    for _ in 0..2 {
        let p = probe::run(cgroup.command(probe::command(&["tcp-connect", &remote.to_string()])));
        assert_eq!(p.errno(), 0);
        let c = connect_of(&agent, p.pid, remote);
        assert_eq!(c.remote_name, "dns.quad9.net", "{c:?}");
    }
    // A metric of the agent's (not a kernel counter of its status).
    let doh_flows =
        || harness::harness::http::metric(admin, "residency_sensor_doh_flows_total") as u64;
    harness::harness::wait_until(
        "residency_sensor_doh_flows_total to count both flows",
        Duration::from_secs(5),
        || doh_flows() >= 2,
    );
    assert!(
        agent.wait_log("DNS-over-HTTPS", Duration::from_secs(5)),
        "no warning about the DoH service: {}",
        agent.log_text()
    );
    assert_eq!(
        agent.log_text().matches("public DNS-over-HTTPS").count(),
        2,
        "one warning per process and endpoint (two processes)"
    );
}

/// An agent in `mode` with the name rule `class_extra`, trusting the
/// Frankfurt host's resolver; a tagged process holding a resolver's UDP
/// socket (netprobe udp-hold); and that resolver's socket, with the address
/// its answers go to. Fields drop in order: the process, the agent, then
/// the network and the cgroup.
struct AnswerRig {
    holder: harness::harness::probe::Waiting,
    agent: RunningAgent,
    socket: std::net::UdpSocket,
    to: SocketAddr,
    net: TestNet,
    cgroup: TestCgroup,
}

fn answer_rig(mode: &str, class_extra: &str, extra: &[&str]) -> AnswerRig {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let trusted = format!("{}/32", net.frankfurt.v4);
    let agent = RunningAgent::start_with(
        &name_policy(&cgroup_rel(&cgroup), mode, class_extra, &trusted),
        REGIONS,
        extra,
    );
    let mut holder =
        harness::harness::probe::Waiting::start(cgroup.command(probe::command(&["udp-hold"])));
    let line = holder.read_line();
    let port = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("udp-hold said {line:?}"));
    AnswerRig {
        holder,
        agent,
        socket: harness::harness::answers::resolver(&net.frankfurt),
        to: SocketAddr::from((net.frankfurt.host_v4, port)),
        net,
        cgroup,
    }
}

/// `n` answers, `NAME_i` (`name` with i for `{}`) → the address `base + i`,
/// each with `ttl`.
fn numbered_answers(name: &str, base: u32, n: u32, ttl: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            harness::harness::answers::a_answer(
                i as u16,
                &name.replace("{}", &i.to_string()),
                std::net::Ipv4Addr::from(base + i),
                ttl,
            )
        })
        .collect()
}

#[test]
fn a_full_name_map_makes_room_from_expired_entries_and_refuses_nothing() {
    use harness::harness::{
        answers::{a_answer, send_paced},
        http::metric,
    };
    use sensor_common::policy::capacity::NAMES;
    let admin = harness::harness::collector::free_port();
    // A tagged process with a resolver's socket; the answers come from the
    // trusted resolver's port 53.
    // (Fields used in place: destructured, they would drop in the wrong
    // order.)
    let mut rig = answer_rig(
        "enforce",
        r#"allowed_names = ["*.fill.test"]"#,
        &["--metrics-listen", &format!("127.0.0.1:{admin}")],
    );
    let (socket, to) = (&rig.socket, rig.to);
    let written = || metric(admin, "residency_sensor_name_entries_written_total") as u64;
    let refused = || metric(admin, "residency_sensor_name_entries_refused_total") as u64;
    let wait_written = |n: u64, what: &str| {
        harness::harness::wait_until(what, Duration::from_secs(60), || written() >= n);
    };

    // As many allowed names as the kernel's map holds, each answer's TTL
    // 1 s: the map is full.
    let first = numbered_answers("n{}.fill.test", 0x6440_0000, NAMES, 1);
    // In steps the agent has caught up with before the next: on a loaded
    // machine it may not run for longer than the ring buffer lasts at full
    // speed (what happens then is `an_answer_the_agent_cannot_read…`).
    for (i, step) in first.chunks(1024).enumerate() {
        send_paced(socket, to, step, 20_000);
        wait_written(
            (i * 1024 + step.len()) as u64,
            "the first wave's entries (step by step)",
        );
    }
    assert_eq!(
        rig.agent.counter("dns_lost"),
        0,
        "answers lost to a full ring buffer: the map is not full"
    );
    assert_eq!(refused(), 0, "the first wave fits the map exactly");

    // Their TTL and the agent's grace (2 s) pass; new answers, one of them
    // for the Virginia host (outside the class's EEA), find the map full of
    // expired entries: room is made, nothing is refused.
    std::thread::sleep(Duration::from_millis(3_500));
    let v4 = rig.net.virginia.tcp_server(false);
    let mut second = numbered_answers("m{}.fill.test", 0x6441_0000, 40, 60);
    second.push(a_answer(7, "us.fill.test", rig.net.virginia.v4, 60));
    send_paced(socket, to, &second, 1_000);
    wait_written(u64::from(NAMES) + 41, "the second wave's entries");
    assert_eq!(
        refused(),
        0,
        "a full map of expired entries refused new ones: {}",
        rig.agent.log_text()
    );
    // The kernel has the entry: the process that got the answer reaches
    // the Virginia host by its name; another process, without it, does not.
    rig.holder.send_line(&format!("tcp-connect {}", v4.addr));
    let line = rig.holder.read_line();
    let errno = serde_json::from_str::<serde_json::Value>(line.trim())
        .ok()
        .and_then(|v| v["errno"].as_i64());
    assert_eq!(
        errno,
        Some(0),
        "allowed by name after the map made room: {line:?}"
    );
    let other = probe::run(
        rig.cgroup
            .command(probe::command(&["tcp-connect", &v4.addr.to_string()])),
    );
    assert_eq!(other.errno(), libc::EPERM, "the address without the name");
}

/// What the agent reads an answer's sent to it through: a ring buffer of
/// about 1,900 answers. When it is full (the agent stalled or flooded), an
/// answer to a process of an enforced class is not delivered while name
/// rules are in force: the kernel would never learn its names, and the
/// address of a denied name would pass on its country. Monitored classes
/// get every answer. Each one the ring could not hold is counted.
#[test]
fn an_answer_the_agent_cannot_read_is_not_delivered_to_an_enforced_class() {
    use harness::harness::{answers::send_paced, probe::Waiting};
    let mut rig = answer_rig("monitor", r#"denied_names = ["*.exfil.test"]"#, &[]);
    let (socket, to) = (&rig.socket, rig.to);
    const SENT: u64 = 4_000;
    let answers = numbered_answers("n{}.exfil.test", 0x6442_0000, SENT as u32, 60);
    // The datagrams the holder read, once it stopped reading more.
    let received = |holder: &mut Waiting| -> u64 {
        let mut last = u64::MAX;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            holder.send_line("received");
            let line = holder.read_line();
            let n = serde_json::from_str::<serde_json::Value>(line.trim())
                .ok()
                .and_then(|v| v["received"].as_u64())
                .unwrap_or_else(|| panic!("udp-hold said {line:?}"));
            if n == last {
                return n;
            }
            assert!(Instant::now() < deadline, "the holder kept reading");
            last = n;
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // The agent stalls (stopped) while more answers come than its ring
    // buffer holds.
    let flood = |agent: &RunningAgent| {
        let pid = agent.pid() as i32;
        // SAFETY: signals to the agent this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        send_paced(socket, to, &answers, 40_000);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    };

    // Monitor: every answer reaches the process; some did not fit.
    flood(&rig.agent);
    let got = received(&mut rig.holder);
    let lost = rig.agent.counter("dns_lost");
    assert_eq!(got, SENT, "a monitored class gets every answer");
    assert!(
        lost > 0 && lost < SENT,
        "the ring buffer was to fill: {lost} lost"
    );

    // Enforce: what did not fit is not delivered, and only that.
    let out = rig.agent.ctl(&["enforce", "on", "--reason", "ring test"]);
    assert!(out.status.success(), "{out:?}");
    flood(&rig.agent);
    let got_now = received(&mut rig.holder) - got;
    let lost_now = rig.agent.counter("dns_lost") - lost;
    assert!(lost_now > 0, "the ring buffer was to fill again");
    assert_eq!(
        got_now + lost_now,
        SENT,
        "each answer is either delivered or refused and counted"
    );
}
