//! sensor-bench: what the sensor costs a connect(), measured on this machine.
//!
//! Three sides, interleaved round-robin over many rounds so that the machine's
//! noise hits them alike: a worker process in a cgroup without the sensor
//! (`none`), one in a cgroup with the socket programs attached but untagged
//! (`untagged`), and one tagged in monitor mode with a verdict trie of many
//! prefixes (`tagged`). Each round every worker does N connect()+close() to a
//! local, non-loopback address (loopback is exempt from judging, so it would
//! not measure the trie) with SO_LINGER 0, so no TIME_WAIT builds up. The
//! report gives each side's median of per-round means and its ratio to `none`.
//! With aggregation on (the default, 10 s) the tagged side's repeats reuse the
//! verdict its first connect got; `--aggregation 0` measures every connect
//! judged against the trie and recorded.
//!
//! Usage: sensor-bench [--rounds R] [--per-round N] [--prefixes P] [--aggregation SECS] [--prog-stats]
//! (run by `cargo xtask bench`; needs root).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use harness::harness::{
    bench::{net, progstats, stats, worker},
    cgroup::TestCgroup,
    privilege::require_root,
};
use ipnet::IpNet;
use sensor_user::kernel::{
    KernelSensor,
    verdicts::{Mode, Verdict, VerdictEntry},
};

struct Options {
    rounds: usize,
    per_round: usize,
    prefixes: usize,
    /// Aggregation interval in seconds (0: every connect is judged afresh and
    /// recorded: no verdict is reused).
    aggregation: u64,
    /// Report the kernel's run time of each program (BPF_ENABLE_STATS); the
    /// accounting itself costs every run a little, so ratios are measured
    /// without it.
    prog_stats: bool,
}

fn parse_options() -> Options {
    let mut o = Options {
        // Many short rounds: machine noise hits the three sides alike.
        rounds: 1500,
        per_round: 40,
        prefixes: 500_000,
        aggregation: 10,
        prog_stats: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || -> usize {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    eprintln!("sensor-bench: {} needs a number", args[i]);
                    std::process::exit(2);
                })
        };
        match args[i].as_str() {
            "--rounds" => o.rounds = value(),
            "--per-round" => o.per_round = value(),
            "--prefixes" => o.prefixes = value(),
            "--aggregation" => o.aggregation = value() as u64,
            "--prog-stats" => {
                o.prog_stats = true;
                i += 1;
                continue;
            }
            "-h" | "--help" => {
                println!(
                    "usage: sensor-bench [--rounds R] [--per-round N] [--prefixes P] [--aggregation SECS] [--prog-stats]\n\n\
                     --aggregation 0 judges every connect afresh (no cached verdict) and records each one"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("sensor-bench: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

/// `count` pseudo-random prefixes (a fixed-seed xorshift: the same table every
/// run), three quarters IPv4 /16../32, the rest IPv6 /32../64, none covering
/// the benchmark's own range.
fn random_table(count: usize, keep_clear: IpNet) -> Vec<VerdictEntry> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let r = next();
        let net = if r % 4 != 0 {
            let len = 16 + (r >> 8) as u8 % 17;
            IpNet::new(IpAddr::V4(Ipv4Addr::from((r >> 16) as u32)), len)
                .expect("valid")
                .trunc()
        } else {
            let len = 32 + (r >> 8) as u8 % 33;
            let hi = u128::from(next()) << 64 | u128::from(next());
            IpNet::new(IpAddr::V6(hi.into()), len)
                .expect("valid")
                .trunc()
        };
        if net.contains(&keep_clear.network()) || keep_clear.contains(&net.network()) {
            continue;
        }
        let verdict = if r % 3 == 0 {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        out.push(VerdictEntry {
            class: 0,
            net,
            verdict,
        });
    }
    out
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        worker::serve();
        return;
    }
    let o = parse_options();
    require_root();
    let dummy = net::BenchAddress::create();
    let listener = net::Sink::start(SocketAddr::new(IpAddr::V4(dummy.addr), 0));

    let none = TestCgroup::create();
    let untagged = TestCgroup::create();
    let tagged = TestCgroup::create();
    let mut sensor = KernelSensor::load().expect("loading the sensor");
    sensor.attach_tracepoints().expect("tracepoints");
    sensor
        .attach_cgroup(untagged.path())
        .expect("attach untagged");
    sensor.attach_cgroup(tagged.path()).expect("attach tagged");
    sensor
        .add_cgroup_selector(tagged.path(), 0)
        .expect("selector");
    sensor.set_mode(0, Mode::Monitor).expect("mode");
    sensor
        .set_aggregation(Duration::from_secs(o.aggregation))
        .expect("aggregation");
    let bench_net = IpNet::new(IpAddr::V4(dummy.addr), 24)
        .expect("valid")
        .trunc();
    let mut table = random_table(o.prefixes, bench_net);
    table.push(VerdictEntry {
        class: 0,
        net: bench_net,
        verdict: Verdict::Allow,
    });
    let t = std::time::Instant::now();
    sensor.replace_verdicts(&table).expect("verdicts");
    eprintln!(
        "loaded {} verdict prefixes in {:.2?}",
        table.len(),
        t.elapsed()
    );

    // Drain the ring buffer as the agent would, so the kernel never finds it full.
    let mut events = sensor.take_events().expect("events");
    let stop = Arc::new(AtomicBool::new(false));
    let drained = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut total = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let _ = events.wait(Duration::from_millis(50));
                buf.clear();
                total += events.drain(&mut buf);
            }
            total
        })
    };

    let target = listener.addr;
    let mut sides = [
        ("none", worker::Worker::start(&none, target)),
        ("untagged", worker::Worker::start(&untagged, target)),
        ("tagged", worker::Worker::start(&tagged, target)),
    ];
    // Warm-up round, not counted.
    for (_, w) in sides.iter_mut() {
        w.run(o.per_round);
    }
    let stats_fd = o.prog_stats.then(progstats::enable).flatten();
    let mut prog: Vec<progstats::Stats> = vec![Default::default(); sides.len()];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for round in 0..o.rounds {
        // Rotate the order so no side always runs first.
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let before = stats_fd.as_ref().map(|_| progstats::snapshot());
            let ns = sides[i].1.run(o.per_round);
            if let Some(before) = before {
                progstats::accumulate(&mut prog[i], &before, &progstats::snapshot());
            }
            samples[i].push(ns as f64 / o.per_round as f64);
        }
    }
    drop(stats_fd);
    stop.store(true, Ordering::Relaxed);
    let records = drained.join().unwrap_or(0);
    let counters = sensor.counters().unwrap_or_default();

    let base = stats::median(&samples[0]);
    println!();
    println!(
        "connect()+close() to a local address, {} rounds x {} per side, {} verdict prefixes, aggregation {} s",
        o.rounds,
        o.per_round,
        table.len(),
        o.aggregation
    );
    println!(
        "{:<10} {:>14} {:>14} {:>10}",
        "side", "median ns/op", "p90 ns/op", "ratio"
    );
    for (i, (name, _)) in sides.iter().enumerate() {
        let m = stats::median(&samples[i]);
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>10.3}",
            name,
            m,
            stats::percentile(&samples[i], 0.9),
            m / base
        );
    }
    println!(
        "records drained: {records}; ring buffer losses: {}",
        counters.first().copied().unwrap_or(0)
    );
    if o.prog_stats {
        println!();
        println!(
            "kernel run time of the sensor's programs per side (BPF stats; the accounting adds a little):"
        );
        for (i, (name, _)) in sides.iter().enumerate() {
            progstats::report(name, &prog[i], o.rounds * o.per_round);
        }
    }
}
