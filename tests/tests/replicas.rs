//! Several collectord replicas on one PostgreSQL: an agent may deliver to
//! any of them and move between them at any time, while an older stream of
//! the same host is still committing on another, or when the replica it
//! delivers to is killed.

use std::{path::Path, time::Duration};

use harness::harness::{
    cgroup::TestCgroup,
    collector::{Delivery, RunningCollector, chained_violation},
    netns::TestNet,
    postgres::PgServer,
    probe,
    scenario::delivering_agent,
    temp::TempPath,
};
use residency_proto::collector::v1 as pb;

const HOST: &str = "replica-host";

/// `n` replicas on `url`, started at the same moment (as a deployment
/// starts them): on an empty database they all try to create the schema.
fn replicas(dir: &Path, url: &str, n: usize) -> Vec<RunningCollector> {
    std::thread::scope(|s| {
        let starting: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let d = dir.join(format!("replica-{i}"));
                    std::fs::create_dir_all(&d).expect("replica dir");
                    RunningCollector::start_with(&d, url, None)
                })
            })
            .collect();
        starting
            .into_iter()
            .map(|t| t.join().expect("a replica started"))
            .collect()
    })
}

#[test]
fn concurrent_streams_of_one_host_on_three_replicas_store_each_record_once_with_an_intact_chain() {
    let pg = PgServer::start();
    let tmp = TempPath::dir("replicas");
    let replicas = replicas(tmp.path(), &pg.url, 3);
    const BATCH: usize = 1_000;
    const N: u64 = 20_000;
    let mut prev = residency_proto::chain::ZERO;
    let records: Vec<_> = (1..=N)
        .map(|seq| chained_violation(seq, HOST, &mut prev))
        .collect();
    // Two streams at the same moment, on two replicas (both streams open
    // first): windows k and k + 1 on one, k + 1 and k + 2 on the other, as
    // an agent that gave up on a slow stream and sent everything
    // unacknowledged again elsewhere. Whichever commits second stores
    // records past what the other had not committed when it began.
    let windows: Vec<&[_]> = records.chunks(BATCH).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let two = |k: usize| -> Vec<_> {
        windows[k.min(windows.len() - 1)..(k + 2).min(windows.len())].concat()
    };
    for (round, k) in (0..windows.len()).step_by(2).enumerate() {
        let (a, b) = (&replicas[round % 3], &replicas[(round + 1) % 3]);
        let (first, second) = (two(k), two(k + 1));
        let acks = (
            first.last().map_or(0, |r| r.seq),
            second.last().map_or(0, |r| r.seq),
        );
        let got = rt.block_on(async {
            let mut on_a = Delivery::open(a.agent_client(HOST).await, HOST).await;
            let mut on_b = Delivery::open(b.agent_client(HOST).await, HOST).await;
            tokio::join!(on_a.send(first), on_b.send(second))
        });
        assert_eq!(got, acks, "round {round}'s acknowledgements");
    }

    // Each record once, whichever replica is asked.
    for r in &replicas {
        assert_eq!(r.count(HOST, "violation"), N as usize);
        let host = r
            .hosts()
            .into_iter()
            .find(|h| h.host_id == HOST)
            .expect("the host is listed");
        assert_eq!(host.violations, N, "the host's counter: {host:?}");
        assert_eq!(
            host.unexplained_jumps, 0,
            "a replica saw a jump that was only another replica's uncommitted batch: {host:?}"
        );
    }
    // And the chain is whole: no break recorded where a replica linked a
    // record to a head another replica was still replacing.
    let (report, code) = replicas[2].verify(HOST);
    assert_eq!(code, 0, "{report:?}");
    assert!(report.intact && report.findings.is_empty(), "{report:?}");
    assert_eq!((report.records, report.chained), (N, N), "{report:?}");
}

/// Waits until `replica` has stored `n` violations of `host`.
fn wait_stored(replica: &RunningCollector, host: &str, n: usize) {
    harness::harness::wait_until(
        &format!("{n} violations of {host} stored"),
        Duration::from_secs(120),
        || replica.count(host, "violation") >= n,
    );
}

#[test]
fn an_agent_that_fails_over_between_replicas_as_they_are_killed_stores_each_violation_once() {
    const AGENT: &str = "failover-host";
    let pg = PgServer::start();
    let tmp = TempPath::dir("replicas-failover");
    let mut replicas = replicas(tmp.path(), &pg.url, 3);
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    // The agent knows all three, in order; each accepts its token.
    let config = replicas[0].agent_config(tmp.path(), AGENT, None);
    for r in &replicas[1..] {
        r.accept_agents_of(&replicas[0]);
    }
    let endpoints: Vec<String> = replicas
        .iter()
        .map(|r| format!("{:?}", r.endpoint()))
        .collect();
    let text = std::fs::read_to_string(&config).expect("sensord.toml");
    let text = text.replacen(
        &format!("endpoints = [{}]", endpoints[0]),
        &format!("endpoints = [{}]", endpoints.join(", ")),
        1,
    );
    std::fs::write(&config, text).expect("sensord.toml");
    let agent = delivering_agent(AGENT, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();

    // On the first replica; then each replica in turn is killed with
    // violations in flight, and the agent moves to the next one (the first
    // comes back for the last move).
    probe::violate(&cgroup, &target, 5_000);
    wait_stored(&replicas[1], AGENT, 5_000);
    for (round, killed) in [0usize, 1, 2].into_iter().enumerate() {
        if killed == 2 {
            replicas[0].restart();
        }
        probe::violate(&cgroup, &target, 5_000);
        replicas[killed].kill9();
        let alive = if killed == 2 { 0 } else { killed + 1 };
        wait_stored(&replicas[alive], AGENT, 10_000 + round * 5_000);
    }

    // Exactly once: the sequences 1..=n, 20,000 violations, no gap, no jump,
    // the chain intact through three failovers.
    let alive = &replicas[0];
    let all = alive.records_once(AGENT);
    let violations = all.iter().filter_map(pb::StoredRecord::violation).count();
    assert_eq!(violations, 20_000);
    assert_eq!(agent.kernel_drops(), 0, "the kernel dropped none");
    let host = alive
        .hosts()
        .into_iter()
        .find(|h| h.host_id == AGENT)
        .expect("the host is listed");
    assert_eq!(
        (host.violations, host.gaps, host.unexplained_jumps),
        (20_000, 0, 0),
        "{host:?}"
    );
    let (report, code) = alive.verify(AGENT);
    assert_eq!(code, 0, "{report:?}");
    assert!(report.intact, "{report:?}");
}

#[test]
fn a_watcher_on_one_replica_sees_what_every_replica_stores_once() {
    use tokio_stream::StreamExt;
    let pg = PgServer::start();
    let tmp = TempPath::dir("replicas-watch");
    let replicas = replicas(tmp.path(), &pg.url, 3);
    // The watching replica follows the others once it listens.
    harness::harness::wait_until(
        "replica 1 to follow the others' records",
        Duration::from_secs(30),
        || {
            replicas[1]
                .log_text()
                .contains("following the records other replicas store")
        },
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut watch = rt
        .block_on(async {
            replicas[1]
                .client(None)
                .await
                .watch_violations(pb::ViolationQuery::default())
                .await
        })
        .expect("watch")
        .into_inner();
    // Two hosts, one delivering to replica 0 and one to replica 2, in
    // batches; the last batch of each is resent to the other replica.
    const N: u64 = 2_000;
    let mut want = Vec::new();
    for (host, to, resend_to) in [("watch-a", 0, 2), ("watch-c", 2, 0)] {
        let mut prev = residency_proto::chain::ZERO;
        let records: Vec<pb::Record> = (1..=N)
            .map(|seq| chained_violation(seq, host, &mut prev))
            .collect();
        for batch in records.chunks(250) {
            replicas[to].deliver_as(host, batch.to_vec());
        }
        let last = records[records.len() - 250..].to_vec();
        assert_eq!(replicas[resend_to].deliver_as(host, last), N);
        want.extend((1..=N).map(|s| (host.to_owned(), s)));
    }
    let mut seen = Vec::new();
    rt.block_on(async {
        // Everything arrives; then nothing more for a second.
        loop {
            let limit = if seen.len() < want.len() { 30 } else { 1 };
            match tokio::time::timeout(Duration::from_secs(limit), watch.next()).await {
                Ok(Some(r)) => {
                    let r = r.expect("a watched record");
                    seen.push((r.host_id.clone(), r.seq()));
                }
                _ => break,
            }
        }
    });
    let total = seen.len();
    seen.sort();
    assert_eq!(total, want.len(), "each record once (resent ones too)");
    assert_eq!(seen, want, "every record of both replicas");
}

/// Fleet commands go through PostgreSQL: an operator asks any replica, the
/// agent connected to another applies the command and its answer comes
/// back; a host connected nowhere is answered at once, and a replica killed
/// with SIGKILL stops counting its agents as connected.
#[test]
fn fleet_commands_to_any_replica_reach_an_agent_connected_to_another() {
    use std::time::Instant;
    const AGENT: &str = "fleet-replica-host";
    let pg = PgServer::start();
    let tmp = TempPath::dir("replicas-fleet");
    let mut replicas = replicas(tmp.path(), &pg.url, 3);
    let cgroup = TestCgroup::create();
    // The agent knows the third replica only.
    let config = replicas[2].agent_config(tmp.path(), AGENT, None);
    let agent = delivering_agent(AGENT, &cgroup, &config);
    let connected =
        |r: &RunningCollector| r.hosts().iter().any(|h| h.host_id == AGENT && h.connected);
    harness::harness::wait_until(
        "every replica lists the agent as connected",
        Duration::from_secs(30),
        || replicas.iter().all(connected),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let set = |r: &RunningCollector, host: &str, mode: &str| -> Vec<(String, String)> {
        rt.block_on(async {
            r.client(None)
                .await
                .set_enforcement(pb::FleetSetEnforcementRequest {
                    host_id: host.into(),
                    class: String::new(),
                    mode: mode.into(),
                    reason: "replica fleet test".into(),
                })
                .await
                .expect("SetEnforcement")
                .into_inner()
                .outcomes
                .into_iter()
                .map(|o| (o.host_id, o.error))
                .collect()
        })
    };
    let mode = || agent.ctl_json(&["status"])["modes"][0]["mode"].clone();
    let applied = vec![(AGENT.to_owned(), String::new())];
    assert_eq!(mode(), "MODE_MONITOR");

    // To the first replica, for the host on the third: applied.
    assert_eq!(set(&replicas[0], AGENT, "enforce"), applied);
    assert_eq!(mode(), "MODE_ENFORCE");
    // Fleet-wide, to the second: the third's agent is part of the fleet.
    assert_eq!(set(&replicas[1], "", "monitor"), applied);
    assert_eq!(mode(), "MODE_MONITOR");
    // Any database user may NOTIFY: a command written straight into the
    // channel (as a replica's would look if notifications carried them) is
    // not run, nor is a key with no stored message.
    let forged = {
        use base64::Engine;
        use prost::Message;
        let command = pb::AgentCommand {
            id: 0,
            actor: "not an operator".into(),
            reason: "forged".into(),
            command: Some(pb::agent_command::Command::SetEnforcement(
                pb::SetEnforcementCommand {
                    class: String::new(),
                    mode: "monitor".into(),
                },
            )),
        };
        let body = base64::engine::general_purpose::STANDARD.encode(command.encode_to_vec());
        format!("forged.1\tforged\t\t\t{body}")
    };
    assert_eq!(set(&replicas[0], AGENT, "enforce"), applied);
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
            .await
            .expect("connecting as another database user would");
        tokio::spawn(conn);
        for payload in [forged.as_str(), "no-such-key"] {
            client
                .execute("SELECT pg_notify('residency_fleet', $1)", &[&payload])
                .await
                .expect("NOTIFY");
        }
    });
    harness::harness::wait_until(
        "every replica ignored the forged notifications",
        Duration::from_secs(10),
        || {
            replicas.iter().all(|r| {
                r.log_text()
                    .matches("no message stored under its key")
                    .count()
                    >= 2
            })
        },
    );
    assert_eq!(mode(), "MODE_ENFORCE", "the forged command was not run");
    assert_eq!(set(&replicas[1], AGENT, "monitor"), applied);
    // A host connected to no replica: said at once.
    let asked = Instant::now();
    assert_eq!(
        set(&replicas[0], "nowhere-host", "enforce"),
        vec![(
            "nowhere-host".to_owned(),
            "not connected to any collector replica".to_owned()
        )]
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // The third replica dies: its agent counts as connected nowhere (its
    // PostgreSQL connection went with it), and a command says so.
    replicas[2].kill9();
    harness::harness::wait_until(
        "the first replica no longer lists the agent as connected",
        Duration::from_secs(20),
        || !connected(&replicas[0]),
    );
    let out = set(&replicas[0], AGENT, "enforce");
    assert_eq!(
        out,
        vec![(
            AGENT.to_owned(),
            "not connected to any collector replica".to_owned()
        )]
    );
    assert_eq!(mode(), "MODE_MONITOR", "nothing reached the agent");
}
