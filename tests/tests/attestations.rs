//! Signed window attestations end to end: a real sensord with a short
//! window signs each window with its mutual-TLS key; the collector stores
//! the attestations in the chain and `collectorctl verify` checks each
//! signature against the CA, each statement against the stored records, and
//! that the windows leave no hole; a stopped agent shows as a hole, an
//! edited attestation as an invalid one; a bundle carries them to
//! `residency-verify`. And without TLS, with the agent's own key.

use std::time::Duration;

use harness::harness::{
    agent::workspace_bin,
    cgroup::TestCgroup,
    collector::{CollectorTls, RunningCollector, set_collector_option},
    database::{Database, Value},
    netns::TestNet,
    pki::TestCa,
    probe,
    scenario::delivering_agent,
    temp::TempPath,
    wait_until,
};
use prost::Message;
use residency_proto::collector::v1::{self as pb, chain_finding::Kind};

/// `dir/sensord.toml` with a 2 s attestation window.
fn short_windows(config: &std::path::Path) {
    set_collector_option(config, "attestation_interval", "\"2s\"");
}

/// Stored attestation records of `host`, by sequence.
fn attestations(c: &RunningCollector, host: &str) -> Vec<(u64, pb::Attestation)> {
    c.export(Some("attestation"))
        .into_iter()
        .filter(|r| r.host_id == host)
        .filter_map(|r| {
            let seq = r.seq();
            match r.record?.body? {
                pb::record::Body::Attestation(a) => Some((seq, a)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn each_window_is_signed_checked_against_the_records_and_holes_show() {
    let host = "attest-tls";
    let tmp = TempPath::dir("attest-tls");
    let ca = TestCa::create(tmp.path());
    let agent_cert = ca.issue(host, &[]);
    let db = tmp.path().join("collector.db");
    let collector = RunningCollector::start_with(
        tmp.path(),
        db.to_str().expect("utf-8"),
        Some(CollectorTls {
            ca: ca.cert.clone(),
            server: ca.issue("collector", &["localhost"]),
            auditors: vec![],
            operators: vec![],
        }),
    );
    let config = collector.agent_config(tmp.path(), host, Some(&agent_cert));
    short_windows(&config);
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    probe::violate(&cgroup, &server.addr.to_string(), 40);
    // Until an attestation covers every violation.
    wait_until(
        "an attestation after the violations",
        Duration::from_secs(60),
        || {
            collector.count(host, "violation") == 40
                && attestations(&collector, host).len() >= 2
                && collector.attested_through_last_violation(host)
        },
    );
    let (r, code) = collector.verify(host);
    assert!(r.intact && code == 0, "{r:#?}");
    assert!(r.attestations.len() >= 2, "{r:#?}");
    for a in &r.attestations {
        assert!(
            a.signature_valid && a.signer_trusted && a.records_agree,
            "{a:#?}"
        );
        assert!(a.signer.contains(host), "{a:#?}");
    }
    let attested: u64 = r
        .attestations
        .iter()
        .flat_map(|a| {
            a.attestation
                .as_ref()
                .map(|s| s.classes.clone())
                .unwrap_or_default()
        })
        .filter(|c| c.class == "eu_personal")
        .map(|c| c.violations)
        .sum();
    assert_eq!(attested, 40, "the windows state every violation once");
    // And the kernel's own per-class counters agree: 40 judged, 40
    // violations, none denied (monitor), none short.
    let kernel = |f: fn(&pb::ClassCounts) -> u64| -> u64 {
        r.attestations
            .iter()
            .filter_map(|a| a.attestation.as_ref())
            .flat_map(|a| a.classes.iter())
            .filter(|c| c.class == "eu_personal")
            .map(f)
            .sum()
    };
    assert_eq!(kernel(|c| c.kernel_violations), 40, "{r:#?}");
    assert_eq!(kernel(|c| c.kernel_judged), 40, "{r:#?}");
    assert_eq!(kernel(|c| c.kernel_denials), 0);
    assert!(
        r.attestations
            .iter()
            .filter_map(|a| a.attestation.as_ref())
            .all(|a| !a.kernel_counts_incomplete)
    );
    let windows: Vec<(i64, i64)> = r
        .attestations
        .iter()
        .filter_map(|a| a.attestation.as_ref())
        .map(|a| (a.window_start_unix_ns, a.window_end_unix_ns))
        .collect();
    assert!(
        windows.windows(2).all(|w| w[1].0 == w[0].1),
        "each window starts where the last ended: {windows:?}"
    );

    // The agent stops cleanly for 3 s (an upgrade): its last window says
    // so, and the time it was down is explained.
    agent.stop();
    std::thread::sleep(Duration::from_secs(3));
    agent.restart();
    let before = attestations(&collector, host).len();
    wait_until(
        "an attestation after the restart",
        Duration::from_secs(60),
        || attestations(&collector, host).len() >= before + 2,
    );
    let (r, code) = collector.verify(host);
    let stopped: Vec<Kind> = r
        .findings
        .iter()
        .map(pb::ChainFinding::kind)
        .filter(|k| matches!(k, Kind::AgentStopped | Kind::AttestationHole))
        .collect();
    assert_eq!(stopped, vec![Kind::AgentStopped], "{r:#?}");
    assert!(r.intact && code == 0, "{r:#?}");
    // Killed for 3 s: nothing says why, and the windows show the hole.
    agent.kill9();
    std::thread::sleep(Duration::from_secs(3));
    agent.restart();
    let before = attestations(&collector, host).len();
    wait_until(
        "an attestation after the crash",
        Duration::from_secs(60),
        || attestations(&collector, host).len() >= before + 2,
    );
    let (r, code) = collector.verify(host);
    let holes: Vec<&pb::ChainFinding> = r
        .findings
        .iter()
        .filter(|f| f.kind() == Kind::AttestationHole)
        .collect();
    assert_eq!(holes.len(), 1, "{r:#?}");
    assert!(!r.intact && code == 4);
    // The listing says the same to a person.
    let listed = std::process::Command::new(workspace_bin("collectorctl"))
        .arg("--socket")
        .arg(&collector.socket)
        .args(["attestations", "--host", host])
        .output()
        .expect("collectorctl attestations");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(4), "{text}");
    assert!(
        text.contains("HOLE: no attestation covers") && text.contains("valid"),
        "{text}"
    );
    // Killed again, and not restarted: nothing says it stopped.
    agent.kill9();

    // A bundle carries the attestations and the CA: offline, the same.
    let out = std::process::Command::new(workspace_bin("collectord"))
        .args(["--database", db.to_str().expect("utf-8")])
        .args(["export", "--format", "bundle", "--host", host, "--ca"])
        .arg(&ca.cert)
        .output()
        .expect("collectord export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = tmp.path().join("attest.bundle");
    std::fs::write(&bundle, &out.stdout).expect("bundle");
    let offline = std::process::Command::new(workspace_bin("residency-verify"))
        .arg("--json")
        .arg("--ca")
        .arg(&ca.cert)
        .arg(&bundle)
        .output()
        .expect("residency-verify");
    let report: pb::ChainReport = serde_json::from_slice(&offline.stdout).expect("report");
    assert_eq!(report.attestations.len(), r.attestations.len());
    assert!(
        report
            .attestations
            .iter()
            .all(|a| a.signature_valid && a.signer_trusted && a.records_agree),
        "{report:#?}"
    );

    // An attestation edited in the database (its violation count) no longer
    // carries a valid signature, and its record no longer its hash.
    let (seq, _) = attestations(&collector, host)[0].clone();
    let mut db = Database::open(db.to_str().expect("utf-8"));
    let blob: Vec<u8> = db.one(
        "SELECT record FROM records WHERE host = $1 AND seq = $2",
        &[Value::Text(host), Value::Int(seq as i64)],
    );
    let mut rec = pb::Record::decode(blob.as_slice()).expect("record");
    let Some(pb::record::Body::Attestation(a)) = &mut rec.body else {
        panic!("{rec:?}")
    };
    a.classes[0].violations += 1000;
    db.execute(
        "UPDATE records SET record = $1 WHERE host = $2 AND seq = $3",
        &[
            Value::Bytes(&rec.encode_to_vec()),
            Value::Text(host),
            Value::Int(seq as i64),
        ],
    );
    let (r, _) = collector.verify(host);
    let kinds: Vec<(Kind, u64)> = r
        .findings
        .iter()
        .filter(|f| f.first_seq == seq)
        .map(|f| (f.kind(), f.first_seq))
        .collect();
    assert!(
        kinds.contains(&(Kind::AttestationInvalid, seq)) && kinds.contains(&(Kind::Altered, seq)),
        "{r:#?}"
    );
    // The agent is gone (killed above): once its next attestation was due
    // (2 s, and 2 s of grace), the host shows as silent since its last one.
    std::thread::sleep(Duration::from_secs(5));
    let (r, _) = collector.verify(host);
    let last = r.attestations.last().map(|a| a.seq).expect("attestations");
    assert!(
        r.findings.iter().any(|f| f.kind() == Kind::AttestationHole
            && f.first_seq == last
            && f.detail.contains("went silent")),
        "{r:#?}"
    );
}

#[test]
fn without_tls_the_agent_signs_with_a_key_of_its_own() {
    let host = "attest-key";
    let tmp = TempPath::dir("attest-key");
    let collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    short_windows(&config);
    let cgroup = TestCgroup::create();
    let _agent = delivering_agent(host, &cgroup, &config);
    wait_until("two attestations", Duration::from_secs(60), || {
        attestations(&collector, host).len() >= 2
    });
    let (r, code) = collector.verify(host);
    assert!(r.intact && code == 0, "{r:#?}");
    let keys: Vec<&[u8]> = r
        .attestations
        .iter()
        .filter_map(|a| a.attestation.as_ref())
        .map(|a| a.public_key.as_slice())
        .collect();
    assert!(
        keys.iter().all(|k| k.len() == 32 && *k == keys[0]),
        "one Ed25519 key"
    );
    assert!(
        r.attestations.iter().all(|a| a.signature_valid
            && a.signer_trusted
            && a.signer.starts_with("host key SHA256:")),
        "{r:#?}"
    );
}

/// A clean stop delivers: on SIGTERM the agent signs its last window and
/// hands the collector what its spool holds (the stop record among it)
/// before it exits, so a host stopped for good verifies intact, shows as
/// stopped rather than silent, and leaves nothing in its spool.
#[test]
fn a_clean_stop_delivers_its_last_window_and_stop_record() {
    let host = "attest-stop";
    let tmp = TempPath::dir("attest-stop");
    let collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    short_windows(&config);
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    probe::violate(&cgroup, &server.addr.to_string(), 7);
    wait_until("the violations stored", Duration::from_secs(30), || {
        collector.count(host, "violation") == 7
    });
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    // No waiting here: what the agent delivered, it delivered before exit.
    let stored = collector.export(None);
    let mine: Vec<&pb::StoredRecord> = stored.iter().filter(|r| r.host_id == host).collect();
    let stop_audit = mine.iter().any(|r| {
        matches!(r.record.as_ref().and_then(|r| r.body.as_ref()),
            Some(pb::record::Body::Audit(a)) if a.action.contains("stopping"))
    });
    assert!(
        stop_audit,
        "the stop record reached the collector before sensord exited"
    );
    let last = attestations(&collector, host)
        .pop()
        .expect("an attestation");
    assert!(
        last.1.stopping,
        "the last attestation is the stop's: {last:?}"
    );
    assert_eq!(
        last.0,
        mine.iter().map(|r| r.seq()).max().unwrap_or(0),
        "the stop's attestation is the host's last record"
    );
    assert!(
        agent.log_text().contains("the spool is delivered"),
        "{}",
        agent.log_text()
    );
    // Long after its last window was due, the host is stopped, not silent.
    std::thread::sleep(Duration::from_secs(5));
    let (r, code) = collector.verify(host);
    assert!(r.intact && code == 0, "{r:#?}");
}

/// A collector that holds its stream open and never acknowledges (stopped
/// here) cannot hold up a stop: sensord exits within a few seconds and
/// says what it left in the spool for the next start.
#[test]
fn a_collector_that_never_acknowledges_cannot_hold_up_a_stop() {
    let host = "attest-stop-hung";
    let tmp = TempPath::dir("attest-stop-hung");
    let collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    let cgroup = TestCgroup::create();
    let mut agent = delivering_agent(host, &cgroup, &config);
    wait_until("the agent connected", Duration::from_secs(30), || {
        agent.status().collector.starts_with("connected")
    });
    let pid = collector.pid().expect("collectord runs") as i32;
    // SAFETY: signals to the collector this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let status = agent.stop();
    let took = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert!(
        agent
            .log_text()
            .contains("stopping with records the collector has not acknowledged"),
        "{}",
        agent.log_text()
    );
}
