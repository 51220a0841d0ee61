//! fleet-bench (`cargo xtask bench`, as root): a simulated fleet against
//! collectord replicas on one PostgreSQL (issue 18).
//!
//! Each simulated agent is a task in this process with its own token and
//! HTTP/2 connection, speaking the real delivery protocol (hello, batches
//! with one in flight, acknowledgements after the commit, answers to
//! commands), not a sensord process. Per fleet size (`--hosts`, each size
//! once per replica count) the sides — 1 replica and 3 replicas, the agents
//! spread evenly — alternate round by round on one PostgreSQL:
//!
//! - every agent connects (collectord's memory with every agent connected,
//!   over its memory before the first round: RSS per connected agent);
//! - all send their records at once (`--records` per round in all, batches
//!   of up to 100): records/s stored, and each batch's commit latency (sent
//!   → acknowledged), p50 and p99;
//! - one fleet-wide SetEnforcement to the first replica: the time until it
//!   returned with every host's answer (every host must have applied it).
//!
//! At the end: the bytes a stored record takes in PostgreSQL (the records
//! table with its indexes, over its rows).
//!
//! Usage: fleet-bench [--hosts 1000,10000] [--records 200000] [--rounds 2]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use harness::harness::{
    bench::{
        process::status_kib,
        stats::{median, percentile},
    },
    collector::{CollectorOptions, RunningCollector, chained_violation, hello_message},
    postgres::PgServer,
    temp::TempPath,
};
use residency_proto::collector::v1::{
    self as pb, agent_message::Message as Out, collector_client::CollectorClient,
    collector_message::Message as In,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::StreamExt;

/// Records per batch at most (an agent sends up to 500; a host of a large
/// fleet has fewer at a time).
const BATCH: usize = 100;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// What one simulated agent measured.
struct AgentReport {
    latencies_us: Vec<f64>,
}

/// One simulated agent of `host`: connects (then gives `opening` back and
/// says `connected`), waits for `go`, sends `batches`, then answers
/// commands until `stop`.
#[allow(clippy::too_many_arguments)]
async fn agent(
    opening: tokio::sync::OwnedSemaphorePermit,
    endpoint: String,
    token: String,
    host: String,
    batches: Vec<Vec<pb::Record>>,
    connected: mpsc::Sender<()>,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<AgentReport>,
) {
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse().expect("ascii");
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .expect("endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{host}: connecting: {e}"));
    let mut client = CollectorClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello_message(&host)).await.expect("hello");
    let mut incoming = client
        .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{host}: deliver: {e}"))
        .into_inner();
    match incoming.next().await {
        Some(Ok(pb::CollectorMessage {
            message: Some(In::Welcome(_)),
        })) => {}
        other => panic!("{host}: expected a welcome, got {other:?}"),
    }
    drop(opening);
    let _ = connected.send(()).await;
    if !*go.borrow() {
        let _ = go.changed().await;
    }
    let answer = |id: u64| pb::AgentMessage {
        message: Some(Out::Result(pb::CommandResult {
            id,
            ..Default::default()
        })),
    };
    let mut latencies_us = Vec::with_capacity(batches.len());
    for records in batches {
        let upto = records.iter().map(|r| r.seq).max().unwrap_or(0);
        let sent = Instant::now();
        tx.send(pb::AgentMessage {
            message: Some(Out::Batch(pb::Batch { records })),
        })
        .await
        .expect("batch");
        loop {
            match incoming.next().await {
                Some(Ok(pb::CollectorMessage {
                    message: Some(In::Ack(a)),
                })) if a.seq >= upto => break,
                Some(Ok(pb::CollectorMessage {
                    message: Some(In::Command(c)),
                })) => tx.send(answer(c.id)).await.expect("answer"),
                Some(Ok(_)) => {}
                other => panic!("{host}: expected an acknowledgement, got {other:?}"),
            }
        }
        latencies_us.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    let _ = reports.send(AgentReport { latencies_us });
    loop {
        tokio::select! {
            m = incoming.next() => match m {
                Some(Ok(pb::CollectorMessage { message: Some(In::Command(c)) })) => {
                    if tx.send(answer(c.id)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// One round's numbers.
struct Round {
    records_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_per_agent_kib: f64,
    enforce_s: f64,
}

fn rss_kib(replicas: &[RunningCollector]) -> u64 {
    replicas
        .iter()
        .filter_map(RunningCollector::pid)
        .map(|p| status_kib(&p.to_string(), "VmRSS:"))
        .sum()
}

/// `hosts` simulated agents spread over `replicas`, `records` in all.
fn round(
    rt: &tokio::runtime::Runtime,
    replicas: &[RunningCollector],
    tag: &str,
    hosts: usize,
    records: usize,
    rss_base: u64,
) -> Round {
    let names: Vec<String> = (0..hosts).map(|i| format!("sim-{tag}-{i}")).collect();
    let tokens = replicas[0].tokens_for(&names);
    for r in &replicas[1..] {
        r.accept_agents_of(&replicas[0]);
    }
    let per_host = (records / hosts).max(1);
    let work: Vec<Vec<Vec<pb::Record>>> = names
        .iter()
        .map(|h| {
            let mut prev = residency_proto::chain::ZERO;
            let all: Vec<pb::Record> = (1..=per_host as u64)
                .map(|seq| chained_violation(seq, h, &mut prev))
                .collect();
            all.chunks(BATCH).map(<[pb::Record]>::to_vec).collect()
        })
        .collect();
    let (connected_tx, mut connected_rx) = mpsc::channel(hosts);
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    // Connections are opened a few hundred at a time (the listen backlog).
    let opening = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(hosts);
    for (i, ((host, token), batches)) in names.into_iter().zip(tokens).zip(work).enumerate() {
        let endpoint = replicas[i % replicas.len()].endpoint();
        let (c, g, s, r) = (
            connected_tx.clone(),
            go_rx.clone(),
            stop_rx.clone(),
            report_tx.clone(),
        );
        let opening = opening.clone();
        tasks.push(rt.spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore");
            agent(permit, endpoint, token, host, batches, c, g, s, r).await;
        }));
    }
    rt.block_on(async {
        for _ in 0..hosts {
            tokio::time::timeout(Duration::from_secs(300), connected_rx.recv())
                .await
                .expect("every simulated agent connected within 5 minutes");
        }
    });
    // Settled memory with every agent connected.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(replicas);
    let start = Instant::now();
    let _ = go_tx.send(true);
    let mut latencies = Vec::new();
    rt.block_on(async {
        for _ in 0..hosts {
            let r = tokio::time::timeout(Duration::from_secs(600), report_rx.recv())
                .await
                .expect("every simulated agent delivered within 10 minutes")
                .expect("a report");
            latencies.extend(r.latencies_us);
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let stored = per_host * hosts;
    // One fleet-wide enforce, to the first replica.
    let asked = Instant::now();
    let outcomes = rt.block_on(async {
        replicas[0]
            .client(None)
            .await
            .set_enforcement(pb::FleetSetEnforcementRequest {
                host_id: String::new(),
                class: String::new(),
                mode: "enforce".into(),
                reason: "fleet-bench".into(),
            })
            .await
            .expect("SetEnforcement")
            .into_inner()
            .outcomes
    });
    let enforce_s = asked.elapsed().as_secs_f64();
    let applied = outcomes
        .iter()
        .filter(|o| o.host_id.starts_with(&format!("sim-{tag}-")) && o.error.is_empty())
        .count();
    assert_eq!(
        applied,
        hosts,
        "every simulated host applies the fleet command: {:?}",
        outcomes.iter().find(|o| !o.error.is_empty())
    );
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    });
    Round {
        records_per_s: stored as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5) / 1e3,
        p99_ms: percentile(&latencies, 0.99) / 1e3,
        rss_per_agent_kib: rss_after.saturating_sub(rss_base) as f64 / hosts as f64,
        enforce_s,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = arg(&args, "--hosts")
        .unwrap_or_else(|| "1000,10000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("--hosts: numbers separated by commas")
        })
        .collect();
    let records: usize =
        arg(&args, "--records").map_or(200_000, |s| s.parse().expect("--records: a number"));
    let rounds: usize =
        arg(&args, "--rounds").map_or(2, |s| s.parse().expect("--rounds: a number"));
    // Room for every simulated agent's connection here and in collectord
    // (which inherits the limit): the soft limit up to the hard one.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let most = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        (most as u64) + 1_000 < lim.rlim_max,
        "{most} simulated agents need more open files than the hard limit {} allows",
        lim.rlim_max
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pg = PgServer::start();
    let dir = TempPath::dir("fleet-bench");
    let limits = vec![
        "--max-connections".to_owned(),
        "100000".to_owned(),
        "--max-connections-per-peer".to_owned(),
        "100000".to_owned(),
    ];
    let start = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("replica dir");
        RunningCollector::start_opts(
            &d,
            &pg.url,
            CollectorOptions {
                args: limits.clone(),
                ..Default::default()
            },
        )
    };
    let one = [start("single")];
    let three = [start("r0"), start("r1"), start("r2")];
    // Memory per agent: over the replicas' memory before any agent came
    // (what earlier rounds left allocated counts: it is held for agents).
    std::thread::sleep(Duration::from_secs(1));
    let base = [rss_kib(&one), rss_kib(&three)];
    println!(
        "fleet-bench: simulated agents (tasks, real delivery protocol, a token and HTTP/2 connection each) against collectord on one PostgreSQL; {records} records per round, batches of up to {BATCH}"
    );
    for &hosts in &sizes {
        let mut sides: [(&str, &[RunningCollector], Vec<Round>); 2] = [
            ("1 replica", &one, Vec::new()),
            ("3 replicas", &three, Vec::new()),
        ];
        for r in 0..rounds {
            // Interleaved, the order alternating.
            let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (name, replicas, results) = &mut sides[i];
                let tag = format!("{hosts}-{}-{r}", name.replace(' ', ""));
                let got = round(&rt, replicas, &tag, hosts, records, base[i]);
                println!(
                    "  {hosts} hosts, {name}, round {r}: {:.0} records/s, commit p50 {:.1} ms p99 {:.1} ms, {:.1} KiB per connected agent, fleet enforce applied everywhere in {:.2} s",
                    got.records_per_s, got.p50_ms, got.p99_ms, got.rss_per_agent_kib, got.enforce_s
                );
                results.push(got);
            }
        }
        for (name, _, results) in &sides {
            let m = |f: fn(&Round) -> f64| median(&results.iter().map(f).collect::<Vec<_>>());
            println!(
                "{hosts} hosts, {name} (median of {rounds}): {:.0} records/s stored, commit p50 {:.1} ms p99 {:.1} ms, {} agent connections, {:.1} KiB collectord RSS per connected agent, fleet enforce applied by every host in {:.2} s",
                m(|r| r.records_per_s),
                m(|r| r.p50_ms),
                m(|r| r.p99_ms),
                hosts,
                m(|r| r.rss_per_agent_kib),
                m(|r| r.enforce_s)
            );
        }
        let rate = |i: usize| {
            median(
                &sides[i]
                    .2
                    .iter()
                    .map(|r| r.records_per_s)
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "{hosts} hosts: 3 replicas / 1 replica records/s = {:.2}",
            rate(1) / rate(0)
        );
    }
    // What a stored record takes on disk, with its indexes and TOAST.
    let (bytes, rows) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
            .await
            .expect("connecting to the bench's PostgreSQL");
        tokio::spawn(conn);
        client
            .batch_execute("VACUUM ANALYZE records")
            .await
            .expect("vacuum");
        let row = client
            .query_one(
                "SELECT pg_total_relation_size('records'), count(*) FROM records",
                &[],
            )
            .await
            .expect("the records table's size");
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    });
    println!(
        "storage: {rows} records in {:.1} MiB with indexes: {:.0} bytes per stored record",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / rows.max(1) as f64
    );
}
