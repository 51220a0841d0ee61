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
    bench::{
        net,
        sides::{Side, interleave, report, report_programs},
        worker,
    },
    cgroup::TestCgroup,
    privilege::require_root,
};
use ipnet::IpNet;
use sensor_user::kernel::{
    KernelSensor,
    verdicts::{Mode, Verdict, VerdictEntry},
};

/// What the sensor costs a connect(): the kernel programs alone, loaded by
/// this benchmark (no sensord; see agent-bench for the product).
#[derive(clap::Parser)]
struct Options {
    /// Rounds; every round runs every side once. Many short rounds: the
    /// machine's noise hits the sides alike.
    #[arg(long, default_value_t = 1500)]
    rounds: usize,
    /// connect()+close() per side and round.
    #[arg(long, default_value_t = 40)]
    per_round: usize,
    /// Prefixes in the verdict trie.
    #[arg(long, default_value_t = 500_000)]
    prefixes: usize,
    /// Aggregation interval in seconds (0: every connect is judged afresh
    /// and recorded: no verdict is reused).
    #[arg(long, default_value_t = 10)]
    aggregation: u64,
    /// Report the kernel's run time of each program (BPF_ENABLE_STATS); the
    /// accounting itself costs every run a little, so ratios are measured
    /// without it.
    #[arg(long)]
    prog_stats: bool,
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
    let o = <Options as clap::Parser>::parse();
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
        Side::new("none", &none, target),
        Side::new("untagged", &untagged, target),
        Side::new("tagged", &tagged, target),
    ];
    interleave(
        &mut sides,
        o.rounds,
        o.per_round,
        o.prog_stats.then_some("self"),
    );
    stop.store(true, Ordering::Relaxed);
    let records = drained.join().unwrap_or(0);
    let counters = sensor.counters().unwrap_or_default();

    println!();
    println!(
        "connect()+close() to a local address, {} rounds x {} per side, {} verdict prefixes, aggregation {} s",
        o.rounds,
        o.per_round,
        table.len(),
        o.aggregation
    );
    report(&sides);
    println!(
        "records drained: {records}; ring buffer losses: {}",
        counters.first().copied().unwrap_or(0)
    );
    if o.prog_stats {
        println!();
        report_programs(&sides, o.rounds * o.per_round);
    }
}
