//! `sensord`: the Residency Sensor agent daemon.
//!
//! This binary parses arguments and wires components; the logic lives in the
//! `sensor_user` library.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use sensor_common::flow::FlowEvent;
use sensor_user::{
    kernel::KernelSensor,
    ledger::TagLedger,
    policy::{apply, compile::Compiled, source::PolicySource},
    preflight, regions,
    system::mountinfo,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Residency Sensor agent: tags the processes that handle regulated data,
/// judges each of their connections against the residency policy in the
/// kernel, and reports (or, in enforce mode, denies) violations.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The residency policy (TOML; see docs/policy.md). Reloaded on SIGHUP: a
    /// policy that does not check keeps the running one in force.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/residency/policy.toml"
    )]
    policy: PathBuf,
    /// Region data: a directory with the default dataset, a MaxMind DB (.mmdb)
    /// or a range CSV. Default: /usr/share/residency/regions, or data/regions in
    /// a checkout.
    #[arg(long, value_name = "PATH")]
    regions: Option<PathBuf>,
    /// AWS ip-ranges.json, to place cloud prefixes in their region's country.
    #[arg(long, value_name = "FILE")]
    aws_ranges: Option<PathBuf>,
    /// cgroup v2 directory to attach the socket programs to. Default: the root
    /// of the cgroup v2 mount (found in /proc/self/mountinfo): every process.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Run the host checks (privileges, bpf(), cgroup v2, BTF), print the result
    /// and exit: 0 when the sensor can run here, 1 otherwise.
    #[arg(long)]
    preflight: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "human", env = "SENSORD_LOG_FORMAT")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs one kernel record (tags also go to the ledger).
fn log_record(ev: &FlowEvent, ledger: &mut TagLedger, sensor: &KernelSensor) {
    if ledger.record_event(ev, sensor.selectors()) {
        info!(
            tgid = ev.tgid,
            classes = ev.classes,
            reason = ev.reason,
            detail = ev.detail,
            "process tagged"
        );
        return;
    }
    info!(
        kind = ?ev.flow_kind(),
        pid = ev.pid,
        tgid = ev.tgid,
        uid = ev.uid,
        cgroup_id = ev.cgroup_id,
        comm = %ev.comm_str(),
        protocol = ev.protocol,
        local = %ev.local(),
        remote = %ev.remote(),
        cookie = ev.cookie,
        classes = ev.classes,
        verdict = ev.verdict,
        action = ev.action,
        count = ev.count,
        bytes = ev.detail,
        generation = ev.policy_generation,
        "flow"
    );
}

fn log_policy(c: &Compiled) {
    let (before, after) = c.prefix_counts();
    if let Some(p) = &c.provenance {
        info!(dataset = %p.name, version = %p.version, licence = %p.licence, attribution = %p.attribution, "region data");
    }
    info!(
        policy = %c.policy.source.display(),
        sha256 = %c.policy.hash,
        classes = c.classes.len(),
        prefixes_before_merge = before,
        prefixes = after,
        "policy compiled"
    );
}

/// Applies a compiled policy and logs what happened; returns whether some
/// selectors still wait for their cgroup or binary to exist.
fn install(
    sensor: &mut KernelSensor,
    c: &Compiled,
    root: &std::path::Path,
    ledger: &mut TagLedger,
) -> anyhow::Result<bool> {
    let t = std::time::Instant::now();
    let report = apply::apply(sensor, c, root, ledger)
        .context("while installing the policy in the kernel")?;
    for w in &report.warnings {
        warn!(policy = %c.policy.source.display(), "selector not installed: {w}");
    }
    info!(
        generation = report.generation,
        prefixes = report.prefixes,
        selectors = report.selectors,
        tagged_running = report.tagged_running,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "policy in force"
    );
    Ok(!report.warnings.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let report = preflight::run();
    if args.preflight {
        print!("{report}");
        std::process::exit(if report.ok() { 0 } else { 1 });
    }
    if !report.ok() {
        bail!("this host cannot run the sensor:\n{report}");
    }

    let source = PolicySource {
        policy: args.policy.clone(),
        regions: args.regions.clone().unwrap_or_else(regions::default_dir),
        aws_ranges: args.aws_ranges.clone(),
    };
    // Check the policy before loading anything into the kernel.
    let compiled = source.build().context("while building the policy")?;
    log_policy(&compiled);

    let root = mountinfo::cgroup2_mount().context("while looking for the cgroup v2 mount")?;
    let cgroup = args.cgroup.clone().unwrap_or_else(|| root.clone());
    let mut sensor = KernelSensor::load().context("while loading the kernel programs")?;
    let mut ledger = TagLedger::default();
    sensor
        .attach(&cgroup)
        .with_context(|| format!("while attaching to cgroup {}", cgroup.display()))?;
    info!(cgroup = %cgroup.display(), "sensor attached");
    let mut pending_selectors = install(&mut sensor, &compiled, &root, &mut ledger)?;
    let mut current = compiled;

    // SAFETY: the EventReader owns the ring buffer's fd and keeps it open for as
    // long as the AsyncFd that wraps it lives.
    let mut reader =
        unsafe { AsyncFd::register_with_interest(sensor.take_events()?, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("while registering the ring buffer: {e}"))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut counter_tick = tokio::time::interval(Duration::from_secs(10));
    // The kernel wakes us only for violations and tags, or when the buffer fills
    // (see sensor-ebpf emit.rs); flow and close records are picked up here.
    let mut drain_tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = vec![0u64; sensor_common::counters::COUNTER_COUNT as usize];
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            guard = reader.readable_mut() => {
                let mut guard = guard?;
                batch.clear();
                guard.get_inner_mut().drain(&mut batch);
                guard.clear_ready();
                for ev in &batch {
                    log_record(ev, &mut ledger, &sensor);
                }
            }
            _ = drain_tick.tick() => {
                batch.clear();
                reader.get_mut().drain(&mut batch);
                for ev in &batch {
                    log_record(ev, &mut ledger, &sensor);
                }
            }
            _ = counter_tick.tick() => {
                match sensor.counters() {
                    Ok(c) => {
                        for (i, name) in sensor_common::counters::COUNTER_NAMES.iter().enumerate() {
                            let grew = c[i].saturating_sub(last[i]);
                            let is_loss = i <= sensor_common::counters::AGG_MAP_FULL as usize;
                            if grew > 0 && is_loss {
                                warn!(counter = *name, new = grew, total = c[i], "kernel could not record everything");
                            }
                        }
                        last = c;
                    }
                    Err(e) => error!(error = %e, "reading kernel counters failed"),
                }
                ledger.retain(|tgid| std::path::Path::new(&format!("/proc/{tgid}")).exists());
                // Selectors whose cgroup or binary did not exist yet: try again,
                // and tag what already runs there once they resolve.
                if pending_selectors {
                    match apply::install_selectors(&mut sensor, &current, &root) {
                        Ok(w) => {
                            pending_selectors = !w.is_empty();
                            if !pending_selectors {
                                info!("all selectors are installed now");
                                if let Err(e) = sensor_user::procscan::tag_running(&mut sensor, &root, &mut ledger) {
                                    error!(error = %e, "tagging running processes failed");
                                }
                            }
                        }
                        Err(e) => error!(error = %e, "installing selectors failed"),
                    }
                }
            }
            _ = hangup.recv() => {
                info!(policy = %source.policy.display(), "SIGHUP: reloading the policy");
                match source.build() {
                    Ok(c) => {
                        log_policy(&c);
                        match install(&mut sensor, &c, &root, &mut ledger) {
                            Ok(pending) => {
                                current = c;
                                pending_selectors = pending;
                            }
                            Err(e) => error!(error = format!("{e:#}"), "policy reload failed; the previous policy's verdict table stays in force"),
                        }
                    }
                    Err(e) => error!(error = %e, sha256 = %current.policy.hash, "policy reload rejected; the running policy stays in force"),
                }
            }
            _ = term.recv() => { info!("SIGTERM: detaching and exiting"); break; }
            _ = interrupt.recv() => { info!("SIGINT: detaching and exiting"); break; }
        }
    }
    drop(reader);
    drop(sensor);
    Ok(())
}
