//! Developer and CI automation: `cargo xtask <command>`.

mod dataset;
mod junit;
mod leaks;
mod package;
mod process;

mod setup;
mod test;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Residency Sensor developer and CI tasks", long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check for, and install when missing, everything the build and tests need:
    /// Debian's BPF toolchain packages, bpf-linker built against LLVM 22, iproute2.
    /// Idempotent; returns in seconds when everything is there.
    Setup {
        /// Only report what is missing; install nothing (exit 1 when incomplete).
        #[arg(long)]
        check: bool,
    },
    /// Build the kernel object alone and print its path.
    BuildEbpf,
    /// Build the Debian packages (target/package/residency-sensor_VERSION_amd64.deb
    /// and residency-collector_…): binaries, systemd units, default config, example
    /// policy, region dataset, docs, completions, man pages, dashboard and alert rules.
    Package {
        /// Only check what they hold: build them from the debug binaries into
        /// target/package-check, uncompressed (what `cargo xtask test` does).
        #[arg(long)]
        check: bool,
    },
    /// The product in one command (as root): sensord with the default dataset,
    /// a demonstration process sending EU data to Frankfurt and Virginia, the
    /// violations it causes, and enforcement denying the transfer in the kernel.
    Demo,
    /// Benchmarks (as root): the kernel sensor's cost per connect() on three
    /// interleaved sides (no sensor, untagged, tagged with a large verdict trie),
    /// as medians and ratios; the product's cost with the real sensord in the
    /// loop beside nftables doing the same country check (agent-bench: ratios,
    /// sensord's CPU per record, RSS); one record through the agent's pipeline
    /// (criterion); policy load time and memory; collector ingest
    /// (SQLite and PostgreSQL, interleaved) and the end-to-end delivery rate
    /// without loss; a simulated fleet of 1,000 and 10,000 agents against 1
    /// and 3 collectord replicas on one PostgreSQL (fleet-bench: records/s,
    /// commit latency, memory per agent, fleet-wide enforce time). Arguments
    /// after `--` go to sensor-bench
    /// (`--rounds R --per-round N --prefixes P`).
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A throw-away certificate authority and certificates for mutual TLS
    /// between agents, collector, auditors and operators (tests and demos
    /// only: the keys are written unencrypted).
    Pki {
        /// Directory to write ca.pem and NAME.pem/NAME.key files into.
        #[arg(long, default_value = "target/pki")]
        out: std::path::PathBuf,
        /// The collector's certificate name (it also gets DNS name localhost).
        #[arg(long, default_value = "collector")]
        server: String,
        /// Agent certificates: one per host id (repeat).
        #[arg(long = "host", value_name = "HOST_ID")]
        hosts: Vec<String>,
        /// Client certificates for auditors and operators (repeat); list them
        /// with collectord --auditor/--operator.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// A long fuzzing pass over every parser of user and peer input (policy
    /// TOML, range CSV, MaxMind DB, AWS ip-ranges.json, spool segments, the
    /// collector's record decoder); `cargo xtask test` runs a short one.
    /// Seeds: tests/fuzz/corpus/<target>/.
    Fuzz {
        /// Cases per target.
        #[arg(long, default_value_t = 20_000)]
        cases: u32,
    },
    /// The full test run CI does: fmt, clippy, unit tests and privileged
    /// end-to-end tests (as root) under cargo-nextest, with a leak check of
    /// kernel objects around it. A test running past its limit (3 minutes
    /// unless .config/nextest.toml gives it more) is killed and named; past
    /// the watchdog, every test still running is named and stopped.
    ///
    /// One test: `cargo xtask test --no-lint -- -E 'test(tcp_v4_to_virginia)'`.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Minutes the whole test step may take before the watchdog stops it.
        #[arg(long, value_name = "MINUTES", default_value_t = 45)]
        watchdog: u64,
        /// Extra arguments for `cargo nextest run` (after `--`): test name
        /// filters, `-E` filter expressions, `-p PACKAGE`, `--test BINARY`.
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Setup { check } => setup::run_setup(check),
        Cmd::BuildEbpf => {
            let root = workspace_root();
            let object = sensor_build::build(&root, &root.join("target").join("bpf"))
                .context("while building sensor-ebpf")?;
            println!("{}", object.display());
            Ok(())
        }
        Cmd::Test {
            no_lint,
            watchdog,
            nextest_args,
        } => test::run(
            !no_lint,
            &nextest_args,
            std::time::Duration::from_secs(watchdog * 60),
        ),
        Cmd::Bench { args } => bench(&args),
        Cmd::Package { check: false } => package::run().map(|_| ()),
        Cmd::Package { check: true } => package::check(),
        Cmd::Pki {
            out,
            server,
            hosts,
            clients,
        } => pki(&out, &server, &hosts, &clients),
        Cmd::Demo => demo(),
        Cmd::Fuzz { cases } => fuzz(cases),
    }
}

/// `cargo xtask fuzz`: the fuzz targets with many cases, optimised.
fn fuzz(cases: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "residency-tests",
            "--test",
            "fuzz",
        ])
        .env("PROPTEST_CASES", cases.to_string())
        .current_dir(workspace_root())
        .status()
        .context("while starting cargo test")?;
    anyhow::ensure!(
        status.success(),
        "a fuzz target failed ({status}); proptest printed the minimal input above"
    );
    Ok(())
}

/// Builds and runs the benchmark binaries in release mode.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    let build = [
        "build",
        "--release",
        "-p",
        "residency-tests",
        "-p",
        "collector",
        "-p",
        "sensor-user",
        "--bin",
        "sensor-bench",
        "--bin",
        "agent-bench",
        "--bin",
        "policy-bench",
        "--bin",
        "delivery-bench",
        "--bin",
        "fleet-bench",
        "--bin",
        "collectord",
        "--bin",
        "sensord",
        "--bin",
        "sensorctl",
        "--bin",
        "netprobe",
    ];
    let status = std::process::Command::new("cargo")
        .args(build)
        .current_dir(&root)
        .status()
        .context("while building the benchmarks")?;
    anyhow::ensure!(status.success(), "building the benchmarks failed");
    crate::dataset::ensure(&root)?;
    let status = std::process::Command::new(root.join("target/release/policy-bench"))
        .status()
        .context("while running policy-bench")?;
    anyhow::ensure!(status.success(), "policy-bench failed ({status})");
    let status = std::process::Command::new(root.join("target/release/sensor-bench"))
        .args(args)
        .status()
        .context("while running sensor-bench")?;
    anyhow::ensure!(status.success(), "sensor-bench failed ({status})");
    let status = std::process::Command::new("cargo")
        .args(["bench", "-p", "sensor-user", "--bench", "record"])
        .current_dir(&root)
        .status()
        .context("while running the record micro-benchmark")?;
    anyhow::ensure!(
        status.success(),
        "the record micro-benchmark failed ({status})"
    );
    let status = std::process::Command::new("cargo")
        .args(["bench", "-p", "sensor-user", "--bench", "dns"])
        .current_dir(&root)
        .status()
        .context("while running the DNS micro-benchmark")?;
    anyhow::ensure!(
        status.success(),
        "the DNS micro-benchmark failed ({status})"
    );
    let status = std::process::Command::new(root.join("target/release/agent-bench"))
        .status()
        .context("while running agent-bench")?;
    anyhow::ensure!(status.success(), "agent-bench failed ({status})");
    let status = std::process::Command::new(root.join("target/release/delivery-bench"))
        .status()
        .context("while running delivery-bench")?;
    anyhow::ensure!(status.success(), "delivery-bench failed ({status})");
    let status = std::process::Command::new(root.join("target/release/fleet-bench"))
        .status()
        .context("while running fleet-bench")?;
    anyhow::ensure!(status.success(), "fleet-bench failed ({status})");
    Ok(())
}

/// Writes a test CA and certificates.
fn pki(
    out: &std::path::Path,
    server: &str,
    hosts: &[String],
    clients: &[String],
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("while creating {}", out.display()))?;
    let ca = residency_pki::TestCa::create(out);
    println!("CA           {}", ca.cert.display());
    let s = ca.issue(server, &[server, "localhost"]);
    println!("collector    {} {}", s.cert.display(), s.key.display());
    for h in hosts {
        let p = ca.issue(h, &[]);
        println!("agent {h:<6} {} {}", p.cert.display(), p.key.display());
    }
    for c in clients {
        let p = ca.issue(c, &[]);
        println!("client {c:<5} {} {}", p.cert.display(), p.key.display());
    }
    Ok(())
}

/// Builds and runs the demonstration.
fn demo() -> anyhow::Result<()> {
    let root = workspace_root();
    crate::dataset::ensure(&root)?;
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--workspace", "--bins"])
        .current_dir(&root)
        .status()
        .context("while building")?;
    anyhow::ensure!(status.success(), "the build failed");
    let status = std::process::Command::new(root.join("target/release/residency-demo"))
        .status()
        .context("while running the demo")?;
    anyhow::ensure!(status.success(), "the demo failed ({status})");
    Ok(())
}
