//! `sensord`: the Residency Sensor agent daemon.
//!
//! This binary parses arguments and wires components; the logic lives in the
//! `sensor_user` library.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use sensor_common::flow::FlowEvent;
use sensor_user::{kernel::KernelSensor, ledger::TagLedger, preflight, system::mountinfo};
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

/// Residency Sensor agent: observes the socket flows of processes in a cgroup
/// through eBPF and reports them.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// cgroup v2 directory to attach to. Defaults to the root of the cgroup v2
    /// mount (found in /proc/self/mountinfo), i.e. every process on the host.
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

    let cgroup = match args.cgroup {
        Some(p) => p,
        None => mountinfo::cgroup2_mount().context("while looking for the cgroup v2 mount")?,
    };
    let mut sensor = KernelSensor::load().context("while loading the kernel programs")?;
    let mut ledger = TagLedger::default();
    sensor
        .attach(&cgroup)
        .with_context(|| format!("while attaching to cgroup {}", cgroup.display()))?;
    info!(cgroup = %cgroup.display(), "sensor attached");

    // SAFETY: the EventReader owns the ring buffer's fd and keeps it open for as
    // long as the AsyncFd that wraps it lives.
    let mut reader =
        unsafe { AsyncFd::register_with_interest(sensor.take_events()?, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("while registering the ring buffer: {e}"))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut counter_tick = tokio::time::interval(Duration::from_secs(10));
    // The kernel wakes us only for violations and tags, or when the buffer fills
    // (see sensor-ebpf emit.rs); flow and close records are picked up here.
    let mut drain_tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_lost = 0u64;
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
                        let lost = c[sensor_common::counters::RINGBUF_RESERVE_FAILED as usize];
                        if lost > last_lost {
                            warn!(lost = lost - last_lost, total = lost, "kernel dropped flow records: ring buffer full");
                            last_lost = lost;
                        }
                    }
                    Err(e) => error!(error = %e, "reading kernel counters failed"),
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
