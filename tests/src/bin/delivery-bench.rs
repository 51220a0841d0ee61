//! delivery-bench (`cargo xtask bench`, as root): how fast the collector
//! stores records, and how many violations per second the whole path
//! (kernel → agent → spool → collector) sustains without losing any.
//!
//! 1. Ingest: a client streams batches of 500 realistic violation records to
//!    a real collectord the way an agent does (one batch in flight, waiting for
//!    each acknowledgement, which comes after the commit), alternating round by
//!    round between a SQLite and a PostgreSQL collector; medians and ratio.
//! 2. End to end: a real sensord and collectord on loopback; a tagged process
//!    sends UDP datagrams to a forbidden destination at rising paced rates
//!    (SENDERS processes at once, BATCH addressed datagrams per `sendmmsg`,
//!    each judged and recorded as a violation of its own); per step:
//!    datagrams sent, the kernel's drop counter, and whether every violation
//!    reached the collector. Reports the highest rate with zero drops and zero
//!    loss.
//!
//! Usage: delivery-bench [--rounds R] [--records N] [--seconds S]
//!                       [--senders SENDERS (2)] [--batch BATCH (32)]

use std::time::{Duration, Instant};

use harness::harness::{
    agent::RunningAgent,
    bench::process::cpu_ns,
    cgroup::TestCgroup,
    collector::{Delivery, RunningCollector, chained_violation},
    netns::TestNet,
    postgres::PgServer,
    probe,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};
use residency_proto::collector::v1 as pb;

const BATCH: usize = 500;

/// Streams `n` records for `host` as an agent would; returns records/s.
async fn ingest(c: &RunningCollector, host: &str, n: u64) -> f64 {
    let mut stream = Delivery::open(c.agent_client(host).await, host).await;
    let mut prev = residency_proto::chain::ZERO;
    let batches: Vec<Vec<pb::Record>> = (1..=n)
        .collect::<Vec<u64>>()
        .chunks(BATCH)
        .map(|c| {
            c.iter()
                .map(|&seq| chained_violation(seq, "bench", &mut prev))
                .collect()
        })
        .collect();
    let start = Instant::now();
    for records in batches {
        stream.send(records).await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ingest_bench(rt: &tokio::runtime::Runtime, rounds: u64, records: u64) {
    let dir = TempPath::dir("ingest-bench");
    let pg = PgServer::start();
    let db = dir.path().join("bench.db");
    let sqlite = RunningCollector::start_with(dir.path(), db.to_str().expect("utf-8"), None);
    let pg_dir = TempPath::dir("ingest-bench-pg");
    let postgres = RunningCollector::start_with(pg_dir.path(), &pg.url, None);
    let (mut s, mut p) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Interleaved, and the order alternates, so drift hits both sides.
        let host = format!("bench-{r}");
        if r % 2 == 0 {
            s.push(rt.block_on(ingest(&sqlite, &host, records)));
            p.push(rt.block_on(ingest(&postgres, &host, records)));
        } else {
            p.push(rt.block_on(ingest(&postgres, &host, records)));
            s.push(rt.block_on(ingest(&sqlite, &host, records)));
        }
    }
    let (ms, mp) = (median(&mut s), median(&mut p));
    println!(
        "collector ingest ({rounds} rounds x {records} violation records, batches of {BATCH}, ack after commit):"
    );
    println!(
        "  SQLite (WAL, synchronous=FULL)   median {ms:>9.0} records/s  (min {:.0}, max {:.0})",
        s[0],
        s[s.len() - 1]
    );
    println!(
        "  PostgreSQL 15 (local socket)     median {mp:>9.0} records/s  (min {:.0}, max {:.0})",
        p[0],
        p[p.len() - 1]
    );
    println!("  ratio PostgreSQL/SQLite          {:.2}", mp / ms);
    println!(
        "  target SQLite >= 50,000 records/s: {}",
        if ms >= 50_000.0 { "met" } else { "NOT met" }
    );
}

fn e2e_bench(rt: &tokio::runtime::Runtime, seconds: u64, senders: u64, batch: u64) {
    let host = "e2e-bench";
    let dir = TempPath::dir("e2e-bench");
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start(dir.path());
    let config = collector.agent_config(dir.path(), host, None);
    let cgroup_rel = cgroup_rel(&cgroup);
    let agent = RunningAgent::start_with(
        &FixturePolicy::delivering(host, &cgroup_rel).text(),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    let collector_pid = collector.pid().expect("collectord runs");
    // The destination discards (a socket nobody reads): the benchmark
    // measures the sensor's path, not a receiver's.
    let sink = net.virginia.udp_sink(false);
    let target = sink.local_addr().expect("sink address").to_string();
    let drops = || agent.kernel_drops();
    let stored = || {
        rt.block_on(async {
            collector
                .client(None)
                .await
                .list_hosts(pb::ListHostsRequest {})
                .await
                .map(|r| {
                    r.into_inner()
                        .hosts
                        .iter()
                        .find(|h| h.host_id == host)
                        .map_or((0, 0), |h| (h.violations, h.gaps))
                })
                .unwrap_or((0, 0))
        })
    };
    println!(
        "end to end, kernel -> sensord -> spool -> collectord (SQLite), loopback, {seconds} s per step, {senders} sender process(es), {batch} datagram(s) per system call:"
    );
    println!(
        "  {:>8} {:>9} {:>8} {:>10} {:>6} {:>11} {:>8} {:>12} {:>12}",
        "target/s",
        "sent/s",
        "drops",
        "stored",
        "gaps",
        "catch-up s",
        "lossless",
        "sensord us",
        "collectord us"
    );
    let mut best = 0u64;
    let mut expected = 0u64;
    for rate in [
        1_000u64, 2_000, 5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 150_000, 200_000,
        300_000,
    ] {
        let d0 = drops();
        let cpu0 = (cpu_ns(agent.pid()), cpu_ns(collector_pid));
        // The senders run at once, each with its share of the rate.
        let children: Vec<std::process::Child> = (0..senders)
            .map(|_| {
                let mut c = cgroup.command(std::process::Command::new(probe::netprobe()));
                c.args([
                    "udp-rate",
                    &target,
                    &(rate / senders).max(1).to_string(),
                    &seconds.to_string(),
                    &batch.to_string(),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("netprobe udp-rate")
            })
            .collect();
        let (mut sent, mut secs) = (0u64, 0f64);
        for child in children {
            let out = child.wait_with_output().expect("netprobe udp-rate");
            let r: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("netprobe prints JSON");
            sent += r["sent"].as_u64().unwrap_or(0);
            secs = secs.max(r["seconds"].as_f64().unwrap_or(1.0));
        }
        let t = Instant::now();
        // Everything that was not dropped in the kernel must arrive.
        let dropped = drops() - d0;
        expected += sent - dropped.min(sent);
        let (mut got, mut gaps) = stored();
        while got < expected && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(250));
            (got, gaps) = stored();
        }
        let lossless = dropped == 0 && got == expected;
        // Each daemon's CPU over the step and its catch-up, per violation.
        let per = |now: u64, then: u64| (now - then) as f64 / 1000.0 / sent.max(1) as f64;
        let (agent_us, collector_us) = (
            per(cpu_ns(agent.pid()), cpu0.0),
            per(cpu_ns(collector_pid), cpu0.1),
        );
        let achieved = sent as f64 / secs;
        println!(
            "  {rate:>8} {achieved:>9.0} {dropped:>8} {:>10} {gaps:>6} {:>11.1} {:>8} {agent_us:>12.2} {collector_us:>12.2}",
            got,
            t.elapsed().as_secs_f64(),
            if lossless { "yes" } else { "NO" }
        );
        if !lossless {
            break;
        }
        // What the sender achieved, not what it was asked for: past its
        // own limit the paced target overstates the rate.
        best = best.max(achieved as u64);
    }
    println!(
        "  highest sent rate with zero kernel drops and every violation stored: {best}/s (stored is cumulative over the steps;"
    );
    println!(
        "  sensord us / collectord us: each daemon's CPU over the step and its catch-up, per violation sent)"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = arg(&args, "--rounds", 7);
    let records = arg(&args, "--records", 20_000);
    let seconds = arg(&args, "--seconds", 3);
    let senders = arg(&args, "--senders", 2).max(1);
    let batch = arg(&args, "--batch", 32).clamp(1, 1024);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    ingest_bench(&rt, rounds, records);
    e2e_bench(&rt, seconds, senders, batch);
}
