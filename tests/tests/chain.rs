//! The record chain end to end: a real sensord spools chained records, a
//! real collectord checks and stores them, `collectorctl verify` recomputes
//! the chain; then the database is edited behind the collector's back, the
//! way whoever runs it could (a row altered, one deleted, two moved, a
//! column changed), and a record with a forged hash is delivered with the
//! host's token. Each is caught. On SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::workspace_bin,
    cgroup::TestCgroup,
    collector::{CollectorOptions, RunningCollector},
    database::{Database, Value},
    netns::TestNet,
    postgres::PgServer,
    probe,
    scenario::delivering_agent,
    temp::TempPath,
    wait_until,
};
use prost::Message;
use residency_proto::collector::v1::{self as pb, chain_finding::Kind};

fn kinds(r: &pb::ChainReport) -> Vec<(Kind, u64, u64)> {
    r.findings
        .iter()
        .map(|f| (f.kind(), f.first_seq, f.last_seq))
        .collect()
}

/// Runs `residency-verify` on `bundle`: its report and exit status.
fn offline(bundle: &std::path::Path) -> (pb::ChainReport, i32) {
    offline_with(bundle, None)
}

/// As [`offline`], with `--witness FILE` when given.
fn offline_with(
    bundle: &std::path::Path,
    witness: Option<&std::path::Path>,
) -> (pb::ChainReport, i32) {
    let mut cmd = std::process::Command::new(workspace_bin("residency-verify"));
    cmd.arg("--json");
    if let Some(w) = witness {
        cmd.arg("--witness").arg(w);
    }
    let out = cmd.arg(bundle).output().expect("residency-verify");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "residency-verify prints a ChainReport ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code().unwrap_or(-1))
}

/// `collectord export --format bundle` of `host` from `database`, written
/// to `path`; the bundle's bytes.
fn export_bundle(database: &str, host: &str, path: &std::path::Path) -> Vec<u8> {
    let out = std::process::Command::new(workspace_bin("collectord"))
        .args([
            "--database",
            database,
            "export",
            "--format",
            "bundle",
            "--host",
            host,
        ])
        .output()
        .expect("collectord export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).expect("bundle");
    out.stdout
}

/// The auditor's take-away: a bundle exported from the database checks
/// offline with the collector's verdict and head; the same bundle edited
/// (a record's bytes changed, one removed) does not.
fn bundle_checks_offline(
    dir: &std::path::Path,
    database: &str,
    host: &str,
    online: &pb::ChainReport,
) {
    let path = dir.join("audit.bundle");
    let bytes = export_bundle(database, host, &path);
    let (r, code) = offline(&path);
    assert!(r.intact && r.findings.is_empty() && code == 0, "{r:#?}");
    assert_eq!(
        (r.records, &r.head, r.last_seq),
        (online.records, &online.head, online.last_seq),
        "offline, the same chain and head as the collector's"
    );

    let mut b = pb::Bundle::decode(bytes.as_slice()).expect("a bundle");
    let (edited, removed) = (b.records[10].seq, b.records[20].seq);
    let last = b.records[10].content.len() - 1;
    b.records[10].content[last] ^= 1;
    b.records.remove(20);
    let tampered = dir.join("tampered.bundle");
    std::fs::write(&tampered, b.encode_to_vec()).expect("bundle");
    let (r, code) = offline(&tampered);
    assert_eq!(
        kinds(&r),
        vec![
            (Kind::Altered, edited, edited),
            (Kind::Missing, removed, removed),
            // The stop's window states the removed violation.
            (Kind::AttestationInvalid, online.last_seq, online.last_seq),
        ],
        "{r:#?}"
    );
    assert_eq!(code, 4);

    std::fs::write(&tampered, b"not a bundle at all").expect("file");
    let out = std::process::Command::new(workspace_bin("residency-verify"))
        .arg(&tampered)
        .output()
        .expect("residency-verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a bundle"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chain_catches_tampering(host: &str, dir: &std::path::Path, database: &str) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start_with(dir, database, None);
    let config = collector.agent_config(dir, host, None);
    let agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    probe::violate(&cgroup, &server.addr.to_string(), 600);
    let deadline = Instant::now() + Duration::from_secs(60);
    while collector.count(host, "violation") < 600 || agent.status().spool_depth > 0 {
        assert!(Instant::now() < deadline, "the violations did not arrive");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Intact, and its head is the agent's.
    let st = agent.status();
    let (r, code) = collector.verify(host);
    assert!(r.intact && r.findings.is_empty() && code == 0, "{r:#?}");
    assert_eq!(r.records, r.chained, "every record is chained");
    assert_eq!(
        (r.last_seq, &r.head),
        (st.chain_seq, &st.chain_head),
        "the collector's head is the agent's"
    );
    let listed = collector.hosts();
    let h = listed.iter().find(|h| h.host_id == host).expect("listed");
    assert_eq!((h.chain_breaks, &h.chain_head), (0, &r.head));
    // A clean stop delivers its stop record and last window before exit:
    // still intact, two records on.
    drop(agent);
    let (r, code) = collector.verify(host);
    assert!(r.intact && code == 0, "{r:#?}");
    assert_eq!(r.last_seq, st.chain_seq + 2, "{r:#?}");
    let stop_window = r.last_seq;
    bundle_checks_offline(dir, database, host, &r);

    // Edit the database behind the collector's back.
    let violations: Vec<u64> = collector
        .export(Some("violation"))
        .iter()
        .filter(|r| r.host_id == host)
        .map(pb::StoredRecord::seq)
        .collect();
    let (altered, deleted, moved, column) = (
        violations[100] as i64,
        violations[200] as i64,
        violations[300] as i64,
        violations[400] as i64,
    );
    assert_eq!(violations[301] as i64, moved + 1);
    let mut db = Database::open(database);
    // A violation's destination country rewritten, its record and its
    // column both (a careful forger).
    let blob: Vec<u8> = db.one(
        "SELECT record FROM records WHERE host = $1 AND seq = $2",
        &[Value::Text(host), Value::Int(altered)],
    );
    let mut rec = pb::Record::decode(blob.as_slice()).expect("a stored record");
    let Some(pb::record::Body::Violation(f)) = &mut rec.body else {
        panic!("{rec:?}")
    };
    f.remote_country = "DE".into();
    assert_eq!(
        db.execute(
            "UPDATE records SET record = $1, country = 'DE' WHERE host = $2 AND seq = $3",
            &[
                Value::Bytes(&rec.encode_to_vec()),
                Value::Text(host),
                Value::Int(altered)
            ],
        ),
        1
    );
    // One deleted.
    db.execute(
        "DELETE FROM records WHERE host = $1 AND seq = $2",
        &[Value::Text(host), Value::Int(deleted)],
    );
    // Two neighbours swapped (whole rows, hashes and all).
    for (from, to) in [(moved, -1), (moved + 1, moved), (-1, moved + 1)] {
        db.execute(
            "UPDATE records SET seq = $1 WHERE host = $2 AND seq = $3",
            &[Value::Int(to), Value::Text(host), Value::Int(from)],
        );
    }
    // A searchable column changed (the executable an auditor filters by).
    db.execute(
        "UPDATE records SET exe = '/usr/bin/innocent' WHERE host = $1 AND seq = $2",
        &[Value::Text(host), Value::Int(column)],
    );
    let (r, code) = collector.verify(host);
    assert_eq!(
        kinds(&r),
        vec![
            (Kind::Altered, altered as u64, altered as u64),
            (Kind::Missing, deleted as u64, deleted as u64),
            (Kind::BrokenLink, moved as u64, moved as u64 + 2),
            (Kind::ColumnsAltered, column as u64, column as u64),
            // The stop's window states one violation more than is stored
            // (the deleted one, which no gap record explains).
            (Kind::AttestationInvalid, stop_window, stop_window),
        ],
        "{r:#?}"
    );
    assert!(!r.intact);
    assert_eq!(
        code, 4,
        "collectorctl verify exits 4 when the chain does not hold"
    );

    // A record forged with the host's token: its hash does not follow.
    let last = r.last_seq;
    let forged = pb::Record {
        seq: last + 1,
        time_unix_ns: 1,
        body: Some(pb::record::Body::Audit(pb::Audit {
            actor: "nobody".into(),
            action: "set mode off".into(),
            reason: "forged".into(),
        })),
        chain: vec![7; 32],
    };
    assert_eq!(collector.deliver_as(host, vec![forged]), last + 1);
    let listed = collector.hosts();
    let h = listed.iter().find(|h| h.host_id == host).expect("listed");
    assert_eq!(h.chain_breaks, 1, "the break is counted when it arrives");
    let (r, _) = collector.verify(host);
    let at_ingest = r
        .findings
        .iter()
        .find(|f| f.kind() == Kind::BreakAtIngest)
        .expect("the break kept at ingest is reported");
    assert_eq!(
        (at_ingest.first_seq, at_ingest.found.as_slice()),
        (last + 1, [7u8; 32].as_slice())
    );
    assert_eq!(at_ingest.expected.len(), 32, "with the hash the chain gave");
}

#[test]
fn the_chain_holds_end_to_end_and_catches_edits_in_sqlite() {
    on_sqlite("chain-sqlite", chain_catches_tampering);
}

#[test]
fn the_chain_holds_end_to_end_and_catches_edits_in_postgresql() {
    on_postgresql("chain-pg", chain_catches_tampering);
}

/// A check of host `host` in directory `dir` against a collector on
/// `database`.
type Check = fn(&str, &std::path::Path, &str);

/// Runs `check` for host `name` on a SQLite file in a directory of its own.
fn on_sqlite(name: &str, check: Check) {
    let tmp = TempPath::dir(name);
    let db = tmp.path().join("collector.db");
    check(name, tmp.path(), db.to_str().expect("utf-8"));
}

/// Runs `check` for host `name` on a PostgreSQL server of its own.
fn on_postgresql(name: &str, check: Check) {
    let pg = PgServer::start();
    let tmp = TempPath::dir(name);
    check(name, tmp.path(), &pg.url);
}

fn has(r: &pb::ChainReport, kind: Kind) -> bool {
    r.findings.iter().any(|f| f.kind() == kind)
}

/// An insider with the database cuts the tail of a host's chain back to a
/// clean stop, covers the cut in the collector's own counts, and forges a
/// new tail with correct links: the collector's count catches the plain
/// cut, the auditor's witness file catches the covered one, a forged tail
/// after a stop is unattested, and offline the bundle fails the same way.
fn a_cut_tail_is_caught(host: &str, dir: &std::path::Path, database: &str) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start_with(dir, database, None);
    let config = collector.agent_config(dir, host, None);
    harness::harness::collector::set_collector_option(&config, "attestation_interval", "\"2s\"");
    let mut agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    probe::violate(&cgroup, &target, 5);
    wait_until("5 violations stored", Duration::from_secs(60), || {
        collector.count(host, "violation") == 5
    });
    // A clean stop (its last window signed and delivered), a restart, more
    // violations, and a window after them.
    agent.stop();
    let stop_seq = collector.verify_with(host, None).0.last_seq;
    agent.restart();
    probe::violate(&cgroup, &target, 5);
    wait_until(
        "10 violations stored and attested",
        Duration::from_secs(60),
        || {
            collector.count(host, "violation") == 10
                && collector.attested_through_last_violation(host)
        },
    );
    drop(agent);
    // The auditor checks and keeps the head outside the database.
    let witness = dir.join("witness.jsonl");
    let (r, code) = collector.verify_with(host, Some(&witness));
    assert!(r.intact && code == 0, "{r:#?}");
    let full = r.last_seq;
    assert!(full > stop_seq + 5);
    let lines = std::fs::read_to_string(&witness).expect("the witness file");
    assert!(lines.contains(&format!("\"seq\":{full}")), "{lines}");

    // Cut back to the clean stop.
    let mut db = Database::open(database);
    db.execute(
        "DELETE FROM records WHERE host = $1 AND seq > $2",
        &[Value::Text(host), Value::Int(stop_seq as i64)],
    );
    let (r, code) = collector.verify_with(host, None);
    assert!(
        has(&r, Kind::Truncated) && !r.intact && code == 4,
        "the collector's own count: {r:#?}"
    );
    let (code, text) = collector.attestations_with(host, None);
    assert!(code == 4 && text.contains("TRUNCATED: "), "{text}");
    // The hosts list (and the dashboard) show the stored chain's state.
    let listed = collector.hosts();
    let last = listed
        .iter()
        .find(|h| h.host_id == host)
        .and_then(|h| h.last_verify.clone())
        .expect("the last check is listed");
    assert!(
        !last.intact && last.problems >= 1 && last.first_problem.contains("TRUNCATED"),
        "{last:?}"
    );
    // The count covered too: only the witness knows (and this collector,
    // which remembers what it acknowledged since it started).
    db.execute(
        "UPDATE host_counts SET last_seq = $1 WHERE host = $2",
        &[Value::Int(stop_seq as i64), Value::Text(host)],
    );
    let (r, code) = collector.verify_with(host, Some(&witness));
    let cut = r
        .findings
        .iter()
        .find(|f| f.kind() == Kind::Truncated)
        .unwrap_or_else(|| panic!("the witness catches the cut: {r:#?}"));
    assert_eq!((cut.first_seq, cut.last_seq), (stop_seq, full), "{cut:#?}");
    assert!(!r.intact && code == 4);

    // A forged tail with correct links after the stop.
    forge_after(&mut db, host, stop_seq);
    let (r, code) = collector.verify_with(host, None);
    assert!(
        has(&r, Kind::Unattested) && !has(&r, Kind::BrokenLink) && !r.intact && code == 4,
        "the forged tail links, and nothing vouches for it: {r:#?}"
    );
    let (code, text) = collector.attestations_with(host, Some(&witness));
    assert!(code == 4 && text.contains("UNATTESTED: "), "{text}");

    // Offline: the bundle of the forged database fails with the witness.
    let bundle = dir.join("cut.bundle");
    export_bundle(database, host, &bundle);
    let (report, code) = offline_with(&bundle, Some(&witness));
    assert!(
        has(&report, Kind::Truncated) && has(&report, Kind::Unattested) && code == 4,
        "{report:#?}"
    );

    // A host never stored is an error of its own, not an empty "intact".
    let out = std::process::Command::new(workspace_bin("collectorctl"))
        .arg("--socket")
        .arg(&collector.socket)
        .args(["verify", "--host", "no-such-host"])
        .output()
        .expect("collectorctl verify");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-host"));
}

/// Forges record `seq + 1` of `host` the way an insider with the database
/// can: the host's first violation copied to it, its chain hash recomputed
/// over the stored record `seq`, and the collector's count moved to it.
fn forge_after(db: &mut Database, host: &str, seq: u64) {
    let (blob, chain): (Vec<u8>, Vec<u8>) = (
        db.one(
            "SELECT record FROM records WHERE host = $1 AND kind = 'violation' ORDER BY seq LIMIT 1",
            &[Value::Text(host)],
        ),
        db.one(
            "SELECT chain FROM records WHERE host = $1 AND seq = $2",
            &[Value::Text(host), Value::Int(seq as i64)],
        ),
    );
    let mut rec = pb::Record::decode(blob.as_slice()).expect("a stored record");
    rec.seq = seq + 1;
    let prev: [u8; 32] = chain.as_slice().try_into().expect("a hash");
    let link = residency_proto::chain::link(&prev, rec.seq, &residency_proto::chain::content(&rec));
    let seq = seq as i64;
    db.execute("CREATE TEMP TABLE forged AS SELECT * FROM records WHERE host = $1 AND seq = (SELECT MIN(seq) FROM records WHERE host = $1 AND kind = 'violation')", &[Value::Text(host)]);
    db.execute(
        "UPDATE forged SET seq = $1, chain = $2",
        &[Value::Int(seq + 1), Value::Bytes(&link)],
    );
    db.execute("INSERT INTO records SELECT * FROM forged", &[]);
    db.execute("DROP TABLE forged", &[]);
    db.execute(
        "UPDATE host_counts SET last_seq = $1, chain_head = $2 WHERE host = $3",
        &[Value::Int(seq + 1), Value::Bytes(&link), Value::Text(host)],
    );
}

/// The live agent's signed head: `verify` asks the connected agent how far
/// it is (a nonce, its signature) and holds the stored chain to it. A tail
/// forged while the agent runs, with correct links and the collector's
/// count moved along (nothing else in the database shows it), is records
/// the agent never numbered; a signed head kept in the witness file and
/// edited afterwards does not verify.
fn the_live_agent_vouches_for_its_head(host: &str, dir: &std::path::Path, database: &str) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start_with(dir, database, None);
    // The default window (5 minutes): no attestation is due during the
    // test, so nothing is spooled behind its back and the host's first
    // window is still open (its head signed with a key no stored
    // attestation shows yet).
    let config = collector.agent_config(dir, host, None);
    let agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    probe::violate(&cgroup, &server.addr.to_string(), 5);
    wait_until(
        "5 violations stored and acknowledged",
        Duration::from_secs(60),
        || collector.count(host, "violation") == 5 && agent.status().spool_depth == 0,
    );
    let witness = dir.join("witness.jsonl");
    let (r, code) = collector.verify_with(host, Some(&witness));
    assert!(r.intact && code == 0, "{r:#?}");
    let head = r
        .agent_head
        .clone()
        .unwrap_or_else(|| panic!("the connected agent's signed head: {r:#?}"));
    assert_eq!(head.host_id, host);
    assert!(
        head.seq >= r.last_seq && head.acked_seq <= head.seq && head.acked_seq >= 5,
        "{head:#?} against stored {}",
        r.last_seq
    );
    assert!(!head.signature.is_empty() && head.nonce.len() == 16);
    let lines = std::fs::read_to_string(&witness).expect("the witness file");
    assert!(lines.contains("\"signed\""), "{lines}");

    // Forged while everything runs: a violation at the next sequence with a
    // correct link, the collector's count moved to it.
    let mut db = Database::open(database);
    let last = r.last_seq.max(head.seq);
    let end: i64 = db.one(
        "SELECT MAX(seq) FROM records WHERE host = $1",
        &[Value::Text(host)],
    );
    assert_eq!(end as u64, last, "nothing stored past the agent's head");
    forge_after(&mut db, host, last);
    let (r, code) = collector.verify_with(host, None);
    let forged = r
        .findings
        .iter()
        .find(|f| f.kind() == Kind::Forged)
        .unwrap_or_else(|| panic!("the agent never numbered record {}: {r:#?}", last + 1));
    assert_eq!((forged.first_seq, forged.last_seq), (last + 1, last + 1));
    assert!(!r.intact && code == 4, "{r:#?}");
    let (code, text) = collector.attestations_with(host, None);
    assert!(code == 4 && text.contains("FORGED: "), "{text}");

    // A signed head kept in the witness file, edited: it no longer holds.
    let edited: String = lines
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json");
            if let Some(hex) = v["signed"].as_str() {
                let bytes = residency_proto::chain::unhex(hex).expect("hex");
                let mut h = pb::SignedHead::decode(bytes.as_slice()).expect("a signed head");
                h.acked_seq = 1;
                v["signed"] = residency_proto::chain::hex(&h.encode_to_vec()).into();
            }
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&witness, edited).expect("the edited witness file");
    let (r, code) = collector.verify_with(host, Some(&witness));
    assert!(
        has(&r, Kind::HeadInvalid) && code == 4,
        "an edited signed head: {r:#?}"
    );
    drop(agent);
}

#[test]
fn the_live_agent_vouches_for_its_head_in_sqlite() {
    on_sqlite("head-sqlite", the_live_agent_vouches_for_its_head);
}

#[test]
fn the_live_agent_vouches_for_its_head_in_postgresql() {
    on_postgresql("head-pg", the_live_agent_vouches_for_its_head);
}

#[test]
fn a_cut_tail_is_caught_in_sqlite() {
    on_sqlite("cut-sqlite", a_cut_tail_is_caught);
}

#[test]
fn a_cut_tail_is_caught_in_postgresql() {
    on_postgresql("cut-pg", a_cut_tail_is_caught);
}

/// Where the collector keeps its records, for a backup and a restore.
enum Backend<'a> {
    Sqlite(&'a std::path::Path),
    Postgres(&'a mut PgServer),
}

impl Backend<'_> {
    fn url(&self) -> String {
        match self {
            Backend::Sqlite(db) => db.to_str().expect("utf-8").to_owned(),
            Backend::Postgres(pg) => pg.url.clone(),
        }
    }

    /// SQLite's files (database, WAL, shared memory) or the PostgreSQL
    /// cluster's, copied while the collector is down.
    fn backup(&mut self) {
        match self {
            Backend::Sqlite(db) => {
                for f in sqlite_files(db) {
                    if f.exists() {
                        std::fs::copy(&f, bak(&f)).expect("backup");
                    }
                }
            }
            Backend::Postgres(pg) => pg.backup("older"),
        }
    }

    /// The older copy put back over the newer one.
    fn restore(&mut self) {
        match self {
            Backend::Sqlite(db) => {
                for f in sqlite_files(db) {
                    let _ = std::fs::remove_file(&f);
                    if bak(&f).exists() {
                        std::fs::rename(bak(&f), &f).expect("restore");
                    }
                }
            }
            Backend::Postgres(pg) => pg.restore("older"),
        }
    }
}

fn bak(f: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.bak", f.display()))
}

fn sqlite_files(db: &std::path::Path) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{}{s}", db.display())))
        .collect()
}

/// The whole database restored from an older backup (its counts and all):
/// consistent in itself, so only the auditor's witness file shows it.
fn a_database_restored_from_an_older_backup_is_caught_by_the_witness(
    host: &str,
    dir: &std::path::Path,
    mut store: Backend<'_>,
) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut collector = RunningCollector::start_with(dir, &store.url(), None);
    let config = collector.agent_config(dir, host, None);
    let mut agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    let wait = |c: &RunningCollector, n: usize| {
        wait_until("the violations stored", Duration::from_secs(60), || {
            c.count(host, "violation") >= n
        })
    };
    probe::violate(&cgroup, &target, 5);
    wait(&collector, 5);
    // The backup, while the collector is down.
    collector.kill9();
    store.backup();
    collector.restart();
    probe::violate(&cgroup, &target, 5);
    wait(&collector, 10);
    agent.stop();
    let witness = dir.join("witness.jsonl");
    let (r, code) = collector.verify_with(host, Some(&witness));
    assert!(r.intact && code == 0, "{r:#?}");
    let witnessed = r.last_seq;
    // Restored: the older copy over the newer one.
    collector.kill9();
    store.restore();
    collector.restart();
    let (r, code) = collector.verify_with(host, None);
    assert!(r.last_seq < witnessed, "the restored copy is older: {r:#?}");
    assert!(
        !has(&r, Kind::Truncated),
        "without a witness the copy is consistent in itself: {r:#?}"
    );
    let (r, code_w) = collector.verify_with(host, Some(&witness));
    assert!(
        has(&r, Kind::Truncated) && !r.intact && code_w == 4,
        "the witness saw record {witnessed}: {r:#?} (without it: exit {code})"
    );
    let (code, text) = collector.attestations_with(host, Some(&witness));
    assert!(code == 4 && text.contains("TRUNCATED: "), "{text}");
    // Offline, the bundle of the restored copy with the witness file.
    let bundle = dir.join("restored.bundle");
    export_bundle(&store.url(), host, &bundle);
    let (report, code) = offline_with(&bundle, Some(&witness));
    assert!(has(&report, Kind::Truncated) && code == 4, "{report:#?}");
}

#[test]
fn a_sqlite_database_restored_from_an_older_backup_is_caught_by_the_witness() {
    let tmp = TempPath::dir("rollback");
    let db = tmp.path().join("collector.db");
    a_database_restored_from_an_older_backup_is_caught_by_the_witness(
        "rollback",
        tmp.path(),
        Backend::Sqlite(&db),
    );
}

#[test]
fn a_postgresql_cluster_restored_from_an_older_backup_is_caught_by_the_witness() {
    let mut pg = PgServer::start();
    let tmp = TempPath::dir("rollback-pg");
    a_database_restored_from_an_older_backup_is_caught_by_the_witness(
        "rollback-pg",
        tmp.path(),
        Backend::Postgres(&mut pg),
    );
}

/// The tail cut while the agent runs (collector restarted, its count
/// edited), or while it was stopped: when its next session starts, the
/// agent finds the collector holding fewer of its records than it was
/// acknowledged (kept in its spool directory across its restarts), says so
/// in the log and in an audit record, and the hole shows as missing
/// records, not as an intact chain.
fn a_cut_of_acknowledged_records_is_reported_by_the_agent(host: &str, agent_runs: bool) {
    let tmp = TempPath::dir(host);
    let db = tmp.path().join("collector.db");
    let database = db.to_str().expect("utf-8");
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut collector = RunningCollector::start_with(tmp.path(), database, None);
    let config = collector.agent_config(tmp.path(), host, None);
    let mut agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    probe::violate(&cgroup, &server.addr.to_string(), 10);
    wait_until(
        "the violations acknowledged",
        Duration::from_secs(60),
        || collector.count(host, "violation") == 10 && agent.status().spool_depth == 0,
    );
    if !agent_runs {
        agent.stop();
    }
    collector.kill9();
    let mut d = Database::open(database);
    let last: i64 = d.one(
        "SELECT MAX(seq) FROM records WHERE host = $1",
        &[Value::Text(host)],
    );
    let keep = last - 4;
    d.execute(
        "DELETE FROM records WHERE host = $1 AND seq > $2",
        &[Value::Text(host), Value::Int(keep)],
    );
    d.execute(
        "UPDATE host_counts SET last_seq = $1 WHERE host = $2",
        &[Value::Int(keep), Value::Text(host)],
    );
    drop(d);
    collector.restart();
    if !agent_runs {
        agent.restart();
        // What was acknowledged before the stop, kept in the spool directory.
        let acked = agent.status().acked_seq;
        assert!(
            acked > keep as u64,
            "acknowledged up to {acked}, cut to {keep}"
        );
    }
    assert!(
        agent.wait_log(
            "the collector holds fewer of this host's records than it acknowledged",
            // The idle agent notices the stream ended and reconnects at
            // once (it used to wait for its next record).
            Duration::from_secs(30)
        ),
        "{}",
        agent.log_text()
    );
    wait_until("the agent's audit record", Duration::from_secs(30), || {
        collector
            .export(Some("audit"))
            .iter()
            .filter(|r| r.host_id == host)
            .filter_map(pb::StoredRecord::audit)
            .any(|a| a.action.contains(&format!("only up to {keep}")))
    });
    let (r, code) = collector.verify_with(host, None);
    let missing = r
        .findings
        .iter()
        .find(|f| f.kind() == Kind::Missing)
        .unwrap_or_else(|| panic!("the hole shows: {r:#?}"));
    assert_eq!(missing.first_seq, keep as u64 + 1, "{r:#?}");
    assert!(!r.intact && code == 4);
    drop(agent);
}

#[test]
fn a_cut_of_acknowledged_records_is_reported_by_the_live_agent() {
    a_cut_of_acknowledged_records_is_reported_by_the_agent("cut-live", true);
}

#[test]
fn a_cut_made_while_the_agent_was_stopped_is_reported_when_it_starts() {
    a_cut_of_acknowledged_records_is_reported_by_the_agent("cut-stopped", false);
}

/// Retention (`--retain`) removes a host's oldest records a whole signed
/// window at a time: what stays verifies intact (online, offline, and with
/// a witness file holding heads that retention removed since), the removed
/// prefix is reported as `retained`, and the host's counts follow the rows.
fn retention_keeps_what_stays_verifiable(host: &str, dir: &std::path::Path, database: &str) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start_opts(
        dir,
        database,
        CollectorOptions {
            args: ["--retain", "12s", "--retain-every", "1s"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    );
    let config = collector.agent_config(dir, host, None);
    harness::harness::collector::set_collector_option(&config, "attestation_interval", "\"2s\"");
    let agent = delivering_agent(host, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    probe::violate(&cgroup, &target, 5);
    wait_until("the first 5 attested", Duration::from_secs(60), || {
        collector.count(host, "violation") == 5 && collector.attested_through_last_violation(host)
    });
    let witness = dir.join("witness.jsonl");
    let (r, code) = collector.verify_with(host, Some(&witness));
    assert!(r.intact && code == 0, "{r:#?}");
    let first_head = r.last_seq;
    std::thread::sleep(Duration::from_secs(10));
    probe::violate(&cgroup, &target, 5);
    // The first five age out (with the windows around them); the second
    // five are younger than the retention for a while.
    wait_until(
        "the first five removed, the second five kept",
        Duration::from_secs(60),
        || {
            let (r, _) = collector.verify(host);
            r.findings
                .iter()
                .any(|f| f.kind() == Kind::Retained && f.last_seq >= first_head)
                && collector.count(host, "violation") == 5
        },
    );
    let (r, code) = collector.verify_with(host, Some(&witness));
    let retained = r
        .findings
        .iter()
        .find(|f| f.kind() == Kind::Retained)
        .unwrap_or_else(|| panic!("the removed prefix is reported: {r:#?}"));
    assert_eq!(retained.first_seq, 1);
    assert!(
        r.intact && code == 0,
        "what stays verifies, a witnessed head that retention removed is no finding: {r:#?}"
    );
    assert!(r.first_seq > first_head, "{r:#?}");
    // The host's counts follow the rows (dashboard and ListHosts).
    wait_until(
        "the counts follow the rows",
        Duration::from_secs(30),
        || {
            let stored = collector.count(host, "violation") as u64;
            collector
                .hosts()
                .iter()
                .any(|h| h.host_id == host && h.violations == stored)
        },
    );
    // Offline: the bundle starts after the removed prefix and holds.
    let bundle = dir.join("retained.bundle");
    export_bundle(database, host, &bundle);
    let (report, code) = offline(&bundle);
    assert!(report.intact && code == 0, "{report:#?}");

    // An insider removes recent records and writes a retention marker to
    // cover it: the first kept window (signed) started less than the
    // retention ago, so retention would have kept them.
    let mut db = Database::open(database);
    let (upto, chain): (i64, Vec<u8>) = (
        db.one(
            "SELECT seq FROM records WHERE host = $1 AND kind = 'attestation' ORDER BY seq DESC LIMIT 1 OFFSET 1",
            &[Value::Text(host)],
        ),
        db.one(
            "SELECT chain FROM records WHERE host = $1 AND seq = (SELECT seq FROM records WHERE host = $1 AND kind = 'attestation' ORDER BY seq DESC LIMIT 1 OFFSET 1)",
            &[Value::Text(host)],
        ),
    );
    db.execute(
        "DELETE FROM records WHERE host = $1 AND seq <= $2",
        &[Value::Text(host), Value::Int(upto)],
    );
    db.execute(
        "UPDATE retention SET upto_seq = $2, chain = $3 WHERE host = $1",
        &[Value::Text(host), Value::Int(upto), Value::Bytes(&chain)],
    );
    let (r, code) = collector.verify(host);
    assert!(
        has(&r, Kind::RemovedEarly) && !has(&r, Kind::Retained) && !r.intact && code == 4,
        "a marker covering recent records: {r:#?}"
    );
    drop(agent);
}

#[test]
fn retention_keeps_what_stays_verifiable_in_sqlite() {
    on_sqlite("retain-sqlite", retention_keeps_what_stays_verifiable);
}

#[test]
fn retention_keeps_what_stays_verifiable_in_postgresql() {
    on_postgresql("retain-pg", retention_keeps_what_stays_verifiable);
}
