//! `sensord`: the Residency Sensor agent daemon.
//!
//! This binary parses arguments and wires components; the logic lives in the
//! `sensor_user` library (`agent`, `api`, `policy`, `kernel`).

use std::{fs::File, path::PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use sensor_user::{
    agent::{Agent, AgentConfig, Command},
    api::{self, AgentApi},
    policy::source::PolicySource,
    preflight, regions,
    system::mountinfo,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Residency Sensor agent: tags the processes that handle regulated data,
/// judges each of their connections against the residency policy in the
/// kernel, and reports (or, in enforce mode, denies) violations. Serves its API
/// to root on a Unix socket (`sensorctl`).
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
    /// The API's Unix socket (root only).
    #[arg(long, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// File mode of the API socket (octal). Whatever it is, every request is
    /// checked against the caller's credentials and only root is served; a wider
    /// mode (e.g. 666) only lets other users get a clear PERMISSION_DENIED.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Lock file that keeps a second sensord from starting on this host.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/residency/sensord.lock"
    )]
    lock: PathBuf,
    /// Records kept in memory for `sensorctl flows` / `violations`.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    history: usize,
    /// Run the host checks (privileges, bpf(), cgroup v2, BTF), print the result
    /// and exit: 0 when the sensor can run here, 1 otherwise.
    #[arg(long)]
    preflight: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "human", env = "SENSORD_LOG_FORMAT")]
    log_format: LogFormat,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 600"))
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

/// Takes the single-instance lock (released by the kernel when we exit).
fn lock(path: &PathBuf) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
    }
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("while opening the lock file {}", path.display()))?;
    if f.try_lock().is_err() {
        bail!(
            "another sensord is running on this host (it holds {}); stop it first (systemctl stop sensord)",
            path.display()
        );
    }
    Ok(f)
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
    let _lock = lock(&args.lock)?;

    let root = mountinfo::cgroup2_mount().context("while looking for the cgroup v2 mount")?;
    let cfg = AgentConfig {
        source: PolicySource {
            policy: args.policy.clone(),
            regions: args.regions.clone().unwrap_or_else(regions::default_dir),
            aws_ranges: args.aws_ranges.clone(),
        },
        attach: args.cgroup.clone().unwrap_or_else(|| root.clone()),
        cgroup_root: root,
        history: args.history,
    };
    let (agent, events, store) = Agent::start(cfg)?;
    let (handle, commands) = Agent::channel();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api_task = {
        let api = AgentApi::new(handle.clone(), store);
        let socket = args.socket.clone();
        let mode = args.socket_mode;
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = api::serve_unix(&socket, mode, api, stop).await {
                error!(error = format!("{e:#}"), "the agent API stopped");
            }
        })
    };
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::hangup()),
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => { info!("SIGHUP"); handle.send(Command::Reload).await; }
                    _ = term.recv() => { info!("SIGTERM: detaching and exiting"); break; }
                    _ = int.recv() => { info!("SIGINT: detaching and exiting"); break; }
                }
            }
            let _ = stop_tx.send(true);
        });
    }
    agent.run(events, commands, stopped(stop_rx)).await?;
    let _ = api_task.await;
    Ok(())
}
