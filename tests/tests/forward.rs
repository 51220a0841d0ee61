//! Forwarding to a SIEM (`collectord --forward`): a real rsyslog receives
//! RFC 5424 over TCP and over TLS; ECS JSON lines go to a rotated file.
//! Delivery is at-least-once from a cursor kept in the database: a
//! receiver that was down gets what it missed when it is back, and a
//! collector restart resends nothing it delivered.

use std::time::Duration;

use harness::harness::{
    collector::{CollectorOptions, RunningCollector},
    pki::TestCa,
    rsyslog::Rsyslog,
    temp::TempPath,
    wait_until,
};
use residency_proto::{
    agent::v1::{Action, Flow, Protocol, Verdict},
    collector::v1::{self as pb, record::Body},
};

const HOST: &str = "fw-eu-1";

fn violation(seq: u64, action: Action) -> pb::Record {
    pb::Record {
        seq,
        time_unix_ns: 1_795_417_200_000_000_000 + seq as i64,
        body: Some(Body::Violation(Flow {
            pid: 4242,
            exe: "/usr/bin/exporter".into(),
            classes: vec!["eu_personal".into()],
            protocol: Protocol::Tcp as i32,
            local: "10.2.0.17:48822".into(),
            remote: "198.51.100.20:443".into(),
            remote_country: "US".into(),
            verdict: Verdict::Deny as i32,
            action: action as i32,
            count: 1,
            community_id: "1:4a+cEgXBks0kRV+GhI02DlG9ynE=".into(),
            ..Default::default()
        })),
        chain: Vec::new(),
    }
}

fn audit(seq: u64) -> pb::Record {
    pb::Record {
        seq,
        time_unix_ns: 1_795_417_200_000_000_000 + seq as i64,
        body: Some(Body::Audit(pb::Audit {
            actor: "cert ops-1 via collector".into(),
            action: "eu_personal: monitor -> enforce".into(),
            reason: "ticket RS-7".into(),
        })),
        chain: Vec::new(),
    }
}

fn gap(seq: u64) -> pb::Record {
    pb::Record {
        seq,
        time_unix_ns: 1_795_417_200_000_000_000 + seq as i64,
        body: Some(Body::Gap(pb::Gap {
            count: 3,
            first_seq: 0,
            error: "ring buffer full".into(),
            ..Default::default()
        })),
        chain: Vec::new(),
    }
}

fn forwarding(dir: &std::path::Path, args: Vec<String>) -> RunningCollector {
    let db = dir.join("collector.db");
    RunningCollector::start_opts(
        dir,
        db.to_str().expect("utf-8"),
        CollectorOptions {
            args,
            ..Default::default()
        },
    )
}

#[test]
fn syslog_over_tcp_reaches_rsyslog_at_least_once_across_outages_and_restarts() {
    let tmp = TempPath::dir("forward-tcp");
    let mut rsyslog = Rsyslog::start(None);
    let mut collector = forwarding(
        tmp.path(),
        vec![
            "--forward".into(),
            format!("syslog+tcp://127.0.0.1:{}", rsyslog.port),
        ],
    );
    // An attestation is stored but not forwarded (it is for auditors).
    let attestation = pb::Record {
        seq: 6,
        time_unix_ns: 1_795_417_200_000_000_006,
        body: Some(Body::Attestation(pb::Attestation::default())),
        chain: Vec::new(),
    };
    let first = vec![
        violation(1, Action::Reported),
        violation(2, Action::Denied),
        audit(3),
        gap(4),
        violation(5, Action::Reported),
        attestation,
    ];
    assert_eq!(collector.deliver_as(HOST, first), 6);
    wait_until("5 messages at rsyslog", Duration::from_secs(30), || {
        rsyslog.received().len() == 5
    });
    let got = rsyslog.received();
    let fields: Vec<Vec<&str>> = got.iter().map(|l| l.splitn(6, '|').collect()).collect();
    for f in &fields {
        assert_eq!((f[0], f[2]), (HOST, "residency-sensor"), "{f:?}");
    }
    // Severity: data that left 4 (warning), denied 5 (notice), audit 6,
    // gap 3; the kind is the MSGID; the sequence in the structured data.
    let sev_kind: Vec<(&str, &str)> = fields.iter().map(|f| (f[1], f[3])).collect();
    assert_eq!(
        sev_kind,
        [
            ("4", "violation"),
            ("5", "violation"),
            ("6", "audit"),
            ("3", "gap"),
            ("4", "violation")
        ]
    );
    assert!(
        fields[0][4].contains(r#"seq="1""#) && fields[0][4].contains(r#"country="US""#),
        "{:?}",
        fields[0]
    );
    // The message is the record's ECS document.
    let doc: serde_json::Value = serde_json::from_str(fields[0][5].trim()).expect("ECS JSON");
    assert_eq!(doc["event"]["action"], "residency-violation");
    assert_eq!(doc["event"]["outcome"], "success");
    assert_eq!(doc["destination"]["geo"]["country_iso_code"], "US");
    assert_eq!(doc["destination"]["ip"], "198.51.100.20");
    assert_eq!(
        doc["network"]["community_id"],
        "1:4a+cEgXBks0kRV+GhI02DlG9ynE="
    );
    assert_eq!(doc["host"]["name"], HOST);
    let audit_doc: serde_json::Value = serde_json::from_str(fields[2][5].trim()).expect("JSON");
    assert_eq!(audit_doc["event"]["reason"], "ticket RS-7");
    assert_eq!(audit_doc["user"]["name"], "cert ops-1 via collector");

    // The SIEM is down while records arrive: nothing is lost.
    rsyslog.stop();
    assert_eq!(
        collector.deliver_as(HOST, vec![violation(7, Action::Reported), audit(8)]),
        8
    );
    std::thread::sleep(Duration::from_secs(2));
    rsyslog.restart();
    wait_until(
        "the two records sent during the outage",
        Duration::from_secs(30),
        || rsyslog.received().len() == 7,
    );
    // A restart of the collector resends nothing that was delivered.
    assert!(collector.terminate().is_some_and(|s| s.success()));
    collector.restart();
    std::thread::sleep(Duration::from_secs(3));
    let all = rsyslog.received();
    assert_eq!(all.len(), 7, "{all:#?}");
    let seqs: Vec<String> = all
        .iter()
        .filter_map(|l| l.split("seq=\"").nth(1))
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5", "7", "8"]);
}

#[test]
fn syslog_over_tls_checks_the_servers_certificate() {
    let tmp = TempPath::dir("forward-tls");
    let ca = TestCa::create(tmp.path());
    let server = ca.issue("localhost", &["localhost"]);
    let rsyslog = Rsyslog::start(Some((&server, &ca.cert)));
    let collector = forwarding(
        tmp.path(),
        vec![
            "--forward".into(),
            format!("syslog+tls://localhost:{}", rsyslog.port),
            "--forward-ca".into(),
            ca.cert.display().to_string(),
        ],
    );
    assert_eq!(
        collector.deliver_as(HOST, vec![violation(1, Action::Denied), audit(2)]),
        2
    );
    wait_until("2 messages over TLS", Duration::from_secs(30), || {
        rsyslog.received().len() == 2
    });
    assert!(rsyslog.received()[0].starts_with(&format!("{HOST}|5|residency-sensor|violation|")));
    // Another CA's server is refused: nothing arrives, the collector says why.
    let other = TempPath::dir("forward-tls-other");
    let other_ca = TestCa::create(other.path());
    let impostor = other_ca.issue("localhost", &["localhost"]);
    let fake = Rsyslog::start(Some((&impostor, &other_ca.cert)));
    let tmp2 = TempPath::dir("forward-tls-2");
    let refused = forwarding(
        tmp2.path(),
        vec![
            "--forward".into(),
            format!("syslog+tls://localhost:{}", fake.port),
            "--forward-ca".into(),
            ca.cert.display().to_string(),
        ],
    );
    assert_eq!(refused.deliver_as(HOST, vec![audit(1)]), 1);
    wait_until("the refusal in the log", Duration::from_secs(30), || {
        refused.log_text().contains("forwarding failed")
    });
    assert!(fake.received().is_empty());
}

#[test]
fn ecs_json_lines_go_to_a_rotated_file_once_each() {
    let tmp = TempPath::dir("forward-ecs");
    let file = tmp.path().join("siem/records.json");
    let mut collector = forwarding(
        tmp.path(),
        vec![
            "--forward".into(),
            format!("ecs:{}", file.display()),
            "--forward-rotate-bytes".into(),
            "4000".into(),
            "--forward-keep".into(),
            "20".into(),
        ],
    );
    let lines = || -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(file.parent().expect("dir"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                out.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")));
            }
        }
        out
    };
    // Five deliveries of four, each forwarded before the next: the file
    // rotates between batches.
    for b in 0..5u64 {
        let records: Vec<pb::Record> = (1..=4)
            .map(|i| violation(b * 4 + i, Action::Reported))
            .collect();
        assert_eq!(collector.deliver_as(HOST, records), b * 4 + 4);
        wait_until("the batch forwarded", Duration::from_secs(30), || {
            lines().len() as u64 == b * 4 + 4
        });
    }
    let rotated = std::fs::read_dir(file.parent().expect("dir"))
        .expect("dir")
        .count();
    assert!(rotated > 1, "the file was rotated ({rotated} files)");
    let mut seqs: Vec<u64> = lines()
        .iter()
        .map(|d| d["event"]["sequence"].as_u64().expect("event.sequence"))
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    let d = &lines()[0];
    assert!(
        d["@timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-11-23T07:00:00.0000000")),
        "{d}"
    );
    assert_eq!(d["process"]["executable"], "/usr/bin/exporter");
    assert_eq!(d["source"]["ip"], "10.2.0.17");
    // Restarted, it sends nothing again.
    assert!(collector.terminate().is_some_and(|s| s.success()));
    collector.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines().len(), 20);
}
