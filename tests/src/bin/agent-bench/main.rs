//! agent-bench: what the product costs a connect(), with the real `sensord`
//! in the loop (its config, the default dataset, its record pipeline), beside
//! nftables doing the same country check, sides interleaved in one run.
//!
//! The scene is a service calling a US endpoint again and again: worker
//! processes connect()+close() (SO_LINGER 0) to a remote host in a network
//! namespace whose address the default dataset places in the US. `sensord`
//! runs the example policy's shape (one class, EEA + CH allowed, monitor
//! mode) attached to one cgroup; the sides are
//! - `none`: a worker in a cgroup outside the sensor's, no nftables rule;
//! - `untagged`: a worker under the sensor's cgroup that no selector tags;
//! - `tagged`: a worker the policy tags (every connect is a violation,
//!   folded per aggregation interval; every close is a record);
//! - `nftables`: a worker in a cgroup that an nftables rule matches
//!   (`socket cgroupv2`) against interval sets of every range the class
//!   denies (the same dataset and policy).
//!
//! A second phase runs the agent with `aggregation_interval = "0"` (every
//! connect judged and recorded) beside `none`. A third (`names.rs`) runs it
//! with `allowed_names`: DNS answers from a trusted resolver at paced rates
//! (what sensord handles, loses and spends per answer), then `none`, a
//! tagged worker with no names learned and one with 10,000. Each phase reports each side's
//! median of per-round means, the ratio to `none`, and what sensord spent:
//! CPU (its threads' run time from /proc/PID/task/*/schedstat) per record it read and per tagged
//! connect, and its RSS.
//!
//! Usage: agent-bench [--rounds R] [--per-round N] [--prog-stats]   (needs root; run by
//! `cargo xtask bench`).

mod names;
mod nft;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use harness::harness::{
    agent::RunningAgent,
    bench::{
        net::Sink,
        process,
        sides::{Side, interleave, report, report_programs},
    },
    cgroup::TestCgroup,
    netns::{Place, RemoteHost},
    privilege::require_root,
};

/// An address the default dataset places in the United States (1.32.232.0/21).
const US_REMOTE: Ipv4Addr = Ipv4Addr::new(1, 32, 232, 10);
const US_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(1, 32, 232, 9);

/// The product's connect cost with the real sensord in the loop, beside
/// nftables doing the same country check.
#[derive(clap::Parser)]
struct Options {
    /// Rounds; every round runs every side once.
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// connect()+close() per side and round.
    #[arg(long, default_value_t = 40)]
    per_round: usize,
    /// Report the kernel's run time of sensord's programs per side
    /// (BPF_ENABLE_STATS; the accounting costs every run a little).
    #[arg(long)]
    prog_stats: bool,
}

/// The example policy's shape, tagging the processes of `tagged` (a cgroup
/// path below the v2 root); with `names`, the class allows the names the
/// names phase answers for, from the US host's resolver.
fn policy(aggregation: &str, tagged: &str, names: bool) -> String {
    let (host_extra, class_extra) = if names {
        (
            format!("trusted_resolvers = [\"{US_REMOTE}/32\"]\n"),
            format!("allowed_names = [\"{}\"]\n", names::ALLOWED),
        )
    } else {
        Default::default()
    };
    format!(
        r#"[host]
id = "bench"
default_mode = "monitor"
unknown_destinations = "violation"
aggregation_interval = "{aggregation}"
{host_extra}
[classes.eu_personal]
mode = "monitor"
allowed_jurisdictions = ["EEA", "CH"]
{class_extra}
[[selectors]]
class = "eu_personal"
cgroup = "/{tagged}"
"#
    )
}

/// Records the agent has read from the kernel so far.
fn agent_records(agent: &RunningAgent) -> u64 {
    agent.status().events
}

/// Runs the sides interleaved (see `bench::sides`), with sensord's programs
/// accounted per side on request.
fn run_sides(sides: &mut [Side], o: &Options, agent: &RunningAgent) {
    let pid = agent.pid().to_string();
    interleave(
        sides,
        o.rounds,
        o.per_round,
        o.prog_stats.then_some(pid.as_str()),
    );
    if o.prog_stats {
        report_programs(sides, o.rounds * o.per_round);
    }
}

/// What the agent spent over a phase.
struct Spent {
    cpu_ns: u64,
    records: u64,
    rss_kib: u64,
}

fn measure_agent<T>(agent: &RunningAgent, f: impl FnOnce() -> T) -> (T, Spent) {
    let cpu0 = process::cpu_ns(agent.pid());
    let rec0 = agent_records(agent);
    let out = f();
    // The agent drains flow and close records every 100 ms: let it catch up.
    std::thread::sleep(Duration::from_millis(500));
    let cpu1 = process::cpu_ns(agent.pid());
    let rss_kib = process::status_kib(&agent.pid().to_string(), "VmRSS:");
    let records = agent_records(agent) - rec0;
    (
        out,
        Spent {
            cpu_ns: cpu1 - cpu0,
            records,
            rss_kib,
        },
    )
}

fn print_spent(s: &Spent, tagged_connects: u64) {
    println!(
        "sensord: {} records read, {:.1} ms CPU: {:.2} µs per record, {:.2} µs per tagged connect; RSS {:.1} MiB",
        s.records,
        s.cpu_ns as f64 / 1e6,
        s.cpu_ns as f64 / 1e3 / s.records.max(1) as f64,
        s.cpu_ns as f64 / 1e3 / tagged_connects.max(1) as f64,
        s.rss_kib as f64 / 1024.0
    );
}

fn start_agent(
    aggregation: &str,
    attach: &TestCgroup,
    tagged: &TestCgroup,
    root: &Path,
    extra: &[&str],
) -> RunningAgent {
    let rel = tagged
        .path()
        .strip_prefix(root)
        .expect("test cgroups are under the v2 root")
        .display()
        .to_string();
    let dataset = sensor_user::regions::default_dir();
    let dataset = dataset.display().to_string();
    let attach = attach.path().display().to_string();
    let mut args = vec!["--regions", &dataset, "--cgroup", &attach];
    args.extend_from_slice(extra);
    let names = extra.contains(&"--metrics-listen");
    RunningAgent::start_with(&policy(aggregation, &rel, names), "", &args)
}

/// Fails the run unless the tagged worker's connects reach the agent as
/// violations of the US address (else the bench would measure nothing).
fn check_recorded(agent: &RunningAgent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = agent.listed(false, &[]);
        if v.iter()
            .any(|f| f.remote.starts_with(&format!("{US_REMOTE}:")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the tagged worker's connects to {US_REMOTE} were not recorded as violations: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Phase 3: the agent with `allowed_names`; what DNS answers cost it, then
/// the connect cost of a tagged process that learned no names beside one
/// that learned 10,000.
fn names_phase(
    o: &Options,
    remote: &RemoteHost,
    none: &TestCgroup,
    attach: &TestCgroup,
    tagged: &TestCgroup,
    root: &Path,
    target: SocketAddr,
) {
    let admin = harness::harness::collector::free_port();
    let listen = format!("127.0.0.1:{admin}");
    let agent = start_agent("10s", attach, tagged, root, &["--metrics-listen", &listen]);
    let mut sides = vec![
        Side::new("none", none, target),
        Side::new("tagged", tagged, target),
        Side::new("named-10k", tagged, target),
    ];
    let port = sides[2].worker.open_udp();
    let to = SocketAddr::from((US_HOST_SIDE, port));
    let resolver = harness::harness::answers::resolver(remote);
    let msgs = names::answers(10_000);
    println!();
    println!(
        "DNS answers (one A record each, for names under {}) from a trusted resolver to a tagged process, 10,000 per step",
        names::ALLOWED
    );
    names::steps(
        &agent,
        admin,
        &resolver,
        to,
        &msgs,
        &[5_000, 20_000, 50_000, 100_000, 1_000_000_000],
    );
    let entries = names::metric(admin, names::ENTRIES);
    assert!(
        entries >= 10_000,
        "sensord learned {entries} name entries from 10,000 answers for allowed names: the connect sides would not measure a full map"
    );
    let ((), spent) = measure_agent(&agent, || run_sides(&mut sides, o, &agent));
    check_recorded(&agent);
    println!();
    println!(
        "connect()+close() to the US address with allowed_names in the policy: a tagged process with no names learned, and one with {entries} (the kernel's NAMES map; the address is not among them)"
    );
    report(&sides);
    let per_side = (o.rounds + 1) * o.per_round;
    print_spent(&spent, 2 * per_side as u64);
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        harness::harness::bench::worker::serve();
        return;
    }
    let o = <Options as clap::Parser>::parse();
    require_root();
    let root = sensor_user::system::mountinfo::cgroup2_mount().expect("cgroup v2");
    let remote = RemoteHost::create_named(
        Place::Virginia,
        "rs-bench-us".into(),
        "rsbenchus".into(),
        (US_HOST_SIDE, US_REMOTE),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, 2),
        ),
    );
    let listener = remote.inside(|| {
        TcpListener::bind(SocketAddr::new(IpAddr::V4(US_REMOTE), 0)).expect("bind in the netns")
    });
    let sink = Sink::serve(listener);
    let target = sink.addr;

    let none = TestCgroup::create();
    let nft_cg = TestCgroup::create();
    let attach = TestCgroup::create();
    let untagged = attach.child("untagged");
    let tagged = attach.child("tagged");

    // Phase 1: the default aggregation interval, against nftables.
    let agent = start_agent("10s", &attach, &tagged, &root, &[]);
    let t = Instant::now();
    // nft resolves the path under /sys/fs/cgroup (where a hybrid host
    // mounts v2 at unified/); the level counts from the v2 root.
    let nft_rel = nft_cg
        .path()
        .strip_prefix("/sys/fs/cgroup")
        .expect("cgroup v2 is mounted under /sys/fs/cgroup")
        .display()
        .to_string();
    let set = nft::CountrySet::load(
        &agent.policy,
        &sensor_user::regions::default_dir(),
        &nft_rel,
        agent.dir(),
    );
    eprintln!(
        "nftables: {} denied ranges loaded in {:.1?}",
        set.ranges,
        t.elapsed()
    );
    let mut sides = vec![
        Side::new("none", &none, target),
        Side::new("untagged", &untagged, target),
        Side::new("tagged", &tagged, target),
        Side::new("nftables", &nft_cg, target),
    ];
    let ((), spent) = measure_agent(&agent, || run_sides(&mut sides, &o, &agent));
    check_recorded(&agent);
    let matched = set.matched();
    assert!(
        matched > 0,
        "the nftables rule matched nothing: the nftables side measured no set lookup"
    );
    let per_side = (o.rounds + 1) * o.per_round;
    println!();
    println!(
        "connect()+close() to a US address on a veth peer, sensord with the default dataset, aggregation 10 s; {} rounds x {} per side",
        o.rounds, o.per_round
    );
    report(&sides);
    print_spent(&spent, per_side as u64);
    println!("nftables: {} ranges, {matched} packets matched", set.ranges);
    drop(sides);
    drop(set);
    drop(agent);

    // Phase 2: every connect judged and recorded.
    let agent = start_agent("0", &attach, &tagged, &root, &[]);
    let mut sides = vec![
        Side::new("none", &none, target),
        Side::new("tagged-0", &tagged, target),
    ];
    let ((), spent) = measure_agent(&agent, || run_sides(&mut sides, &o, &agent));
    check_recorded(&agent);
    println!();
    println!("the same with aggregation_interval = \"0\" (every connect a record)");
    report(&sides);
    print_spent(&spent, per_side as u64);
    drop(sides);
    drop(agent);

    // Phase 3: name rules, DNS answers, and a process with 10,000 names.
    names_phase(&o, &remote, &none, &attach, &tagged, &root, target);
    drop((tagged, untagged));
    drop(sink);
    drop(remote);
}
