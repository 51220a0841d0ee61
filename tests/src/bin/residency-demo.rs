//! residency-demo: the product in one command (`cargo xtask demo`).
//!
//! Starts collectord and the real sensord with the default region dataset and a policy whose
//! EU-personal-data class is carried by a demonstration cgroup; makes two
//! "remote hosts" in network namespaces, one in Frankfurt and one in Virginia;
//! runs a process in the cgroup that sends data to both; shows what the agent
//! saw with sensorctl; an operator switches enforcement on for the fleet
//! through the collector (mutual TLS, collectorctl) and the kernel refuses the
//! transfer to Virginia before any packet leaves; the auditor reads what the
//! collector stored. Everything it creates is removed when it ends.

use std::io::IsTerminal;
use std::{process::Command, time::Duration};

use harness::harness::{
    agent::{RunningAgent, workspace_bin},
    cgroup::TestCgroup,
    collector::{CollectorTls, RunningCollector, set_collector_option},
    netns::TestNet,
    pki::{Pem, TestCa},
    privilege::require_root,
    probe,
    scenario::cgroup_rel,
};
use sensor_user::regions;

/// The shipped example policy, plus what the demonstration needs: its two
/// "remote" hosts as sites and its cgroup as a selector of eu_personal.
fn policy(cgroup_rel: &str) -> String {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy.toml"
    ))
    .expect("examples/policy.toml");
    format!(
        r#"{example}
# --- added by the demonstration ---
[sites.demo-fra]
cidrs = ["198.51.100.0/24", "2001:db8:de::/48"]
country = "DE"

[sites.demo-iad]
cidrs = ["203.0.113.0/24", "2001:db8:a5::/48"]
country = "US"

[[selectors]]
class = "eu_personal"
cgroup = "{cgroup_rel}"
"#
    )
}

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn ctl(agent: &RunningAgent, args: &[&str]) {
    let mut c = Command::new(workspace_bin("sensorctl"));
    c.arg("--socket").arg(&agent.socket).args(args);
    println!("$ sensorctl {}", args.join(" "));
    let _ = c.status();
}

fn collectorctl(c: &RunningCollector, ca: &TestCa, who: &Pem, name: &str, args: &[&str]) {
    println!("$ collectorctl   # as {name}\n    {}", args.join(" "));
    let _ = Command::new(workspace_bin("collectorctl"))
        .arg("--endpoint")
        .arg(c.endpoint())
        .arg("--ca")
        .arg(&ca.cert)
        .arg("--cert")
        .arg(&who.cert)
        .arg("--key")
        .arg(&who.key)
        .args(args)
        .status();
}

fn main() {
    require_root();
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let rel = cgroup_rel(&cgroup);
    let regions_dir = regions::default_dir();
    assert!(
        regions_dir
            .join(regions::default_dataset::FILES[0])
            .is_file(),
        "the default region dataset is missing in {}: run `cargo xtask setup`",
        regions_dir.display()
    );
    let regions_arg = regions_dir.display().to_string();
    say(
        "starting sensord with the default region dataset and examples/policy.toml (class eu_personal, monitor mode) plus the demo's sites and cgroup",
    );
    let dir = std::env::temp_dir().join(format!("rs-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("demo directory");
    // A throw-away PKI (cargo xtask pki makes the same): the collector, this
    // host (its certificate names the policy's host id, the hostname), an
    // auditor and an operator.
    let ca = TestCa::create(&dir);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let host_cert = ca.issue(&hostname, &[]);
    let auditor = ca.issue("audit-1", &[]);
    let operator = ca.issue("ops-1", &[]);
    let db = dir.join("collector.db");
    let collector = RunningCollector::start_with_dashboard(
        &dir,
        db.to_str().expect("utf-8"),
        Some(CollectorTls {
            ca: ca.cert.clone(),
            server: ca.issue("collector", &["localhost"]),
            auditors: vec!["audit-1".into()],
            operators: vec!["ops-1".into()],
        }),
    );
    println!(
        "collectord listening on {} with mutual TLS (database {}; auditor audit-1, operator ops-1)",
        collector.endpoint(),
        collector.database
    );
    let config = collector.agent_config(&dir, &hostname, Some(&host_cert));
    // Short attestation windows, so the demonstration sees several.
    set_collector_option(&config, "attestation_interval", "\"3s\"");
    let config_arg = config.display().to_string();
    let agent = RunningAgent::start_with(
        &policy(&rel),
        "",
        &["--regions", &regions_arg, "--config", &config_arg],
    );
    ctl(&agent, &["status"]);

    let fra = net.frankfurt.tcp_server(false);
    let iad = net.virginia.tcp_server(false);
    say(&format!(
        "a process in {} (carries eu_personal) sends data to Frankfurt {} and Virginia {}",
        cgroup.path().display(),
        fra.addr,
        iad.addr
    ));
    let p = probe::run(cgroup.command(probe::command(&[
        "tcp-connect",
        &fra.addr.to_string(),
        "tcp-connect",
        &iad.addr.to_string(),
    ])));
    println!(
        "pid {}: Frankfurt errno {}, Virginia errno {} (monitor mode: both go through)",
        p.pid, p.errnos[0], p.errnos[1]
    );
    std::thread::sleep(Duration::from_millis(300));
    ctl(&agent, &["violations"]);
    ctl(&agent, &["lookup", &iad.addr.ip().to_string()]);

    say("an operator switches enforcement on for the whole fleet, through the collector");
    std::thread::sleep(Duration::from_millis(500));
    collectorctl(
        &collector,
        &ca,
        &operator,
        "ops-1",
        &[
            "enforce",
            "on",
            "--class",
            "eu_personal",
            "--reason",
            "demo: transfers to the US are not allowed",
        ],
    );
    let before = iad.received();
    let p = probe::run(cgroup.command(probe::command(&[
        "tcp-connect",
        &fra.addr.to_string(),
        "tcp-connect",
        &iad.addr.to_string(),
    ])));
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "pid {}: Frankfurt errno {}, Virginia errno {} ({}), Virginia saw {} new connections",
        p.pid,
        p.errnos[0],
        p.errnos[1],
        if p.errnos[1] == libc::EPERM {
            "EPERM: denied in the kernel"
        } else {
            "not denied?"
        },
        iad.received() - before
    );
    ctl(&agent, &["violations"]);
    say("what the collector stored (durably, exactly once), as the auditor sees it");
    std::thread::sleep(Duration::from_millis(1500));
    collectorctl(&collector, &ca, &auditor, "audit-1", &["hosts"]);
    collectorctl(
        &collector,
        &ca,
        &auditor,
        "audit-1",
        &["violations", "--class", "eu_personal", "--limit", "10"],
    );
    say("an auditor may not steer the fleet");
    collectorctl(
        &collector,
        &ca,
        &auditor,
        "audit-1",
        &["set-enforcement", "--mode", "off", "--reason", "curious"],
    );
    say(
        "the auditor checks the host's record chain and its signed windows (attestations every 3 s here)",
    );
    std::thread::sleep(Duration::from_secs(4));
    collectorctl(
        &collector,
        &ca,
        &auditor,
        "audit-1",
        &["verify", "--host", &hostname],
    );
    collectorctl(
        &collector,
        &ca,
        &auditor,
        "audit-1",
        &["attestations", "--host", &hostname],
    );
    say("and takes the evidence away: a bundle, checked offline with residency-verify");
    let bundle = dir.join(format!("{hostname}.bundle"));
    let exported = Command::new(workspace_bin("collectord"))
        .args([
            "--database",
            &collector.database,
            "export",
            "--format",
            "bundle",
        ])
        .args(["--host", &hostname, "--ca"])
        .arg(&ca.cert)
        .output()
        .map(|o| std::fs::write(&bundle, o.stdout));
    println!(
        "$ collectord export --format bundle --host {hostname} --ca ca.pem > {}",
        bundle.display()
    );
    if let Ok(Ok(())) = exported {
        println!("$ residency-verify --ca ca.pem {}", bundle.display());
        let _ = Command::new(workspace_bin("residency-verify"))
            .arg("--ca")
            .arg(&ca.cert)
            .arg(&bundle)
            .status();
    }
    say("the same, in a browser: the collector's read-only dashboard, for a login token");
    let port = collector.dashboard.expect("the demo serves the dashboard");
    let url = format!("https://localhost:{port}");
    collectorctl(
        &collector,
        &ca,
        &auditor,
        "audit-1",
        &["dashboard-token", "--ttl", "1h", "--url", &url],
    );
    let page = tokio::runtime::Runtime::new().expect("runtime").block_on(
        harness::harness::http::https_get(port, &ca.cert, Some(&auditor), "/", None),
    );
    match page {
        Ok(a) => println!(
            "dashboard: {url} (GET / as audit-1: HTTP {}, {} bytes; the demo's CA is {})",
            a.status,
            a.body.len(),
            ca.cert.display()
        ),
        Err(e) => println!("dashboard: {url} did not answer: {e}"),
    }
    if std::io::stdin().is_terminal() {
        println!("press Enter to stop the demo (the dashboard stays up until then)");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    say("done: stopping sensord and collectord, removing the demo cgroup and network namespaces");
    drop(agent);
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}
