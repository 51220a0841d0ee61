//! The monitoring the packages ship (`packaging/monitoring`): the alert
//! rules pass Debian's `promtool check rules` and their unit tests
//! (`promtool test rules`), the Grafana dashboard is valid JSON, and every
//! metric the rules and the dashboard use is one the daemons export (read
//! from a real sensord's and collectord's /metrics).

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use residency_proto::collector::v1 as pb;

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    collector::{CollectorOptions, RunningCollector, free_port},
    http::http_get,
    netns::TestNet,
    probe,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("promtool (Debian's prometheus package; cargo xtask setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The metric families the text names (`residency_…`), without the
/// suffixes a family's samples carry.
fn families_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("residency_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.insert(base.to_owned());
    }
    out
}

fn get(port: u16, path: &str) -> String {
    let a = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(http_get(port, path))
        .expect("GET");
    assert_eq!(a.status, 200, "{path}: {a:?}");
    a.body
}

#[test]
fn the_shipped_rules_and_dashboard_hold_and_use_only_metrics_the_daemons_export() {
    let checked = promtool(&["check", "rules", "residency-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "residency-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules =
        std::fs::read_to_string(monitoring_dir().join("residency-alerts.yml")).expect("rules");
    let dashboard = std::fs::read_to_string(monitoring_dir().join("residency-grafana.json"))
        .expect("dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let mut used = families_used(&rules);
    used.extend(families_used(&dashboard));

    // What the daemons export.
    let tmp = TempPath::dir("monitoring");
    let collector_admin = free_port();
    let db = tmp.path().join("collector.db");
    let collector = RunningCollector::start_opts(
        tmp.path(),
        db.to_str().expect("utf-8"),
        CollectorOptions {
            args: vec![
                "--admin-listen".into(),
                format!("127.0.0.1:{collector_admin}"),
            ],
            ..Default::default()
        },
    );
    let cgroup = TestCgroup::create();
    let rel = cgroup_rel(&cgroup);
    let agent_admin = free_port();
    let _agent = RunningAgent::start_with(
        &FixturePolicy::delivering("monitoring-1", &rel).text(),
        DELIVERY_REGIONS,
        &["--metrics-listen", &format!("127.0.0.1:{agent_admin}")],
    );
    // Families with labels show once they have a sample: a violation on
    // the agent, a record stored by the collector.
    let net = TestNet::create();
    let server = net.virginia.tcp_server(false);
    let p = probe::run(cgroup.command(probe::command(&["tcp-connect", &server.addr.to_string()])));
    assert_eq!(p.errno(), 0);
    let audit = pb::Record {
        seq: 1,
        time_unix_ns: 1,
        body: Some(pb::record::Body::Audit(pb::Audit {
            actor: "test".into(),
            action: "noted".into(),
            reason: "monitoring".into(),
        })),
        chain: Vec::new(),
    };
    assert_eq!(collector.deliver_as("monitoring-1", vec![audit]), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exported = loop {
        let text = format!(
            "{}{}",
            get(collector_admin, "/metrics"),
            get(agent_admin, "/metrics")
        );
        if text.contains("residency_sensor_violations_total{") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no violation counted:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let families: BTreeSet<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = used.iter().filter(|u| !families.contains(*u)).collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard use metrics no daemon exports: {missing:?}\nexported: {families:?}"
    );
    assert!(used.len() >= 12, "{used:?}");
}
