//! `sensord`: the Residency Sensor agent daemon.
//!
//! This binary parses arguments and wires components; the logic lives in the
//! `sensor_user` library (`agent`, `api`, `policy`, `kernel`).

use std::{fs::File, path::PathBuf};

/// mimalloc rather than glibc's malloc: the record path allocates and frees
/// small buffers at line rate (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail};
use clap::Parser;
use sensor_user::{
    agent::{Agent, AgentConfig, Command},
    api::{self, AgentApi},
    config,
    policy::source::PolicySource,
    preflight, regions,
    system::mountinfo,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use residency_daemon::{logging::LogFormat, tasks::Tasks};

/// Residency Sensor agent: tags the processes that handle regulated data,
/// judges each of their connections against the residency policy in the
/// kernel, and reports (or, in enforce mode, denies) violations. Serves its API
/// to root on a Unix socket (`sensorctl`).
///
/// The kernel programs and their state are pinned (bpf_dir): they keep
/// enforcing the last policy when sensord stops or crashes, and a restarted
/// sensord adopts them without a gap. `sensorctl enforce off --reason …` lifts
/// enforcement; `sensord --uninstall` removes the sensor from the host.
///
/// Settings come from the config file (default /etc/residency/sensord.toml,
/// every key optional); flags override it.
#[derive(Debug, Parser)]
#[command(name = "sensord", version = residency_daemon::cli::VERSION)]
struct Args {
    /// Config file. Without this flag /etc/residency/sensord.toml is read if it
    /// exists; a file given here must exist.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The residency policy (TOML; see docs/policy.md). Reloaded on SIGHUP: a
    /// policy that does not check keeps the running one in force.
    /// [config: policy; default /etc/residency/policy.toml]
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Region data: a directory with the default dataset, a MaxMind DB (.mmdb)
    /// or a range CSV. [config: regions; default /usr/share/residency/regions,
    /// or data/regions in a checkout]
    #[arg(long, value_name = "PATH")]
    regions: Option<PathBuf>,
    /// AWS ip-ranges.json, to place cloud prefixes in their region's country.
    /// [config: aws_ranges]
    #[arg(long, value_name = "FILE")]
    aws_ranges: Option<PathBuf>,
    /// cgroup v2 directory to attach the socket programs to. [config: cgroup;
    /// default: the cgroup v2 root, i.e. every process]
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// The API's Unix socket (root only). [config: api.socket; default
    /// /run/residency/sensord.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// File mode of the API socket (octal). Whatever it is, every request is
    /// checked against the caller's credentials and only root is served; a wider
    /// mode (e.g. 666) only lets other users get a clear PERMISSION_DENIED.
    /// [config: api.socket_mode; default 600]
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,
    /// Lock file that keeps a second sensord from starting on this host.
    /// [config: lock; default /run/residency/sensord.lock]
    #[arg(long, value_name = "PATH")]
    lock: Option<PathBuf>,
    /// The pinned kernel state, on bpffs: programs stay attached and enforce
    /// the last policy while no sensord runs (crash, restart, upgrade,
    /// `systemctl stop`); a starting sensord adopts it.
    /// [config: bpf_dir; default /sys/fs/bpf/residency]
    #[arg(long, value_name = "DIR")]
    bpf_dir: Option<PathBuf>,
    /// Operator state that outlives the agent (modes set over the API, loss
    /// already reported). [config: state_dir; default /var/lib/residency/state]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Detach every program and remove the pinned state (bpf_dir), then exit.
    /// This, not stopping the service, lifts enforcement on this host: stop
    /// sensord first (it holds the lock).
    #[arg(long)]
    uninstall: bool,
    /// Flow and close records kept in memory for `sensorctl flows`.
    /// [config: history; default 10000]
    #[arg(long, value_name = "N")]
    history: Option<usize>,
    /// Violations kept in memory for `sensorctl violations`, apart from flow
    /// records (which never push one out). [config: violation_history; default 10000]
    #[arg(long, value_name = "N")]
    violation_history: Option<usize>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    /// [config: metrics.listen; default off]
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Run the host checks (privileges, bpf(), cgroup v2, BTF), print the result
    /// and exit: 0 when the sensor can run here, 1 otherwise.
    #[arg(long)]
    preflight: bool,
    /// Log format. [config: log_format; default human]
    #[arg(long, value_enum, env = "SENSORD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 600"))
}

/// Takes the single-instance lock (released by the kernel when we exit).
fn lock(path: &std::path::Path) -> anyhow::Result<File> {
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

/// Window attestations (`[collector]`): off without delivery or with an
/// interval of 0; signed with the TLS key, or a key of the agent's own.
fn attesting(
    c: &sensor_user::config::CollectorConfig,
    state_dir: &std::path::Path,
) -> anyhow::Result<Option<sensor_user::agent::attesting::Attesting>> {
    use residency_proto::attest::Signer;
    if c.endpoints.is_empty() {
        return Ok(None);
    }
    let interval = sensor_user::policy::validate::parse_duration(&c.attestation_interval)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "collector.attestation_interval {:?}: write 90s, 5m or 1h (0 turns attestations off)",
                c.attestation_interval
            )
        })?;
    if interval.is_zero() {
        return Ok(None);
    }
    let signer = match &c.tls {
        Some(t) => Signer::from_tls(&t.cert, &t.key)
            .map_err(|e| anyhow::anyhow!("[collector.tls] key for attestations: {e}"))?,
        None => {
            // A key of its own, kept with the operator state. Enforcement
            // does not depend on it: without one, windows go unattested.
            let key = state_dir.join("attestation.key");
            match std::fs::create_dir_all(state_dir)
                .map_err(|e| e.to_string())
                .and_then(|()| Signer::host_key(&key))
            {
                Ok(s) => s,
                Err(e) => {
                    error!(key = %key.display(), error = %e, "no attestation key: windows are not attested; make the state directory writable");
                    return Ok(None);
                }
            }
        }
    };
    Ok(Some(sensor_user::agent::attesting::Attesting {
        interval,
        signer: std::sync::Arc::new(signer),
    }))
}

/// The admin endpoints' view of the agent: its metrics, and ready while a
/// policy is in force and the programs are attached.
fn admin(agent: &Agent) -> residency_daemon::admin::Admin {
    let metrics = agent.metrics();
    let ready = agent.readiness();
    residency_daemon::admin::Admin {
        metrics: std::sync::Arc::new(move || metrics.render()),
        ready: std::sync::Arc::new(move || {
            let now = ready.borrow().clone();
            Box::pin(async move { now })
        }),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    residency_daemon::cli::generate_if_asked::<Args>();
    let args = Args::parse();
    let file = config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let log_format = args
        .log_format
        .unwrap_or(LogFormat::from_config(file.log_format.as_deref()));
    residency_daemon::logging::init(log_format);

    let lock_path = args.lock.clone().unwrap_or(file.lock.clone());
    let bpf_dir = args.bpf_dir.clone().unwrap_or(file.bpf_dir.clone());
    // Before the host checks: removing the sensor must work on any host.
    if args.uninstall {
        let _lock = lock(&lock_path)?;
        let removed = sensor_user::kernel::pins::uninstall(&bpf_dir)
            .with_context(|| format!("while removing {}", bpf_dir.display()))?;
        if removed {
            info!(target: "audit", dir = %bpf_dir.display(), "uninstalled: every program detached, pinned state removed; this host no longer judges or enforces");
        } else {
            info!(dir = %bpf_dir.display(), "nothing pinned there: nothing to uninstall");
        }
        return Ok(());
    }
    let report = preflight::run();
    if args.preflight {
        print!("{report}");
        std::process::exit(if report.ok() { 0 } else { 1 });
    }
    if !report.ok() {
        bail!("this host cannot run the sensor:\n{report}");
    }
    let socket_mode = parse_mode(args.socket_mode.as_deref().unwrap_or(&file.api.socket_mode))
        .map_err(|e| anyhow::anyhow!("socket mode: {e}"))?;
    let _lock = lock(&lock_path)?;
    let fds = residency_proto::listen::raise_fd_limit();
    info!(open_files = fds, "file descriptor limit");

    let root = mountinfo::cgroup2_mount().context("while looking for the cgroup v2 mount")?;
    let cfg = AgentConfig {
        source: PolicySource {
            policy: args.policy.clone().unwrap_or(file.policy.clone()),
            regions: args
                .regions
                .clone()
                .or(file.regions.clone())
                .unwrap_or_else(regions::default_dir),
            aws_ranges: args.aws_ranges.clone().or(file.aws_ranges.clone()),
        },
        attach: args
            .cgroup
            .clone()
            .or(file.cgroup.clone())
            .unwrap_or_else(|| root.clone()),
        cgroup_root: root,
        history: sensor_user::agent::store::Capacity {
            flows: args.history.unwrap_or(file.history),
            violations: args.violation_history.unwrap_or(file.violation_history),
        },
        spool_dir: (!file.collector.endpoints.is_empty()).then(|| file.collector.spool_dir.clone()),
        bpf_dir,
        state_dir: args.state_dir.clone().unwrap_or(file.state_dir.clone()),
        attestation: attesting(
            &file.collector,
            &args.state_dir.clone().unwrap_or(file.state_dir.clone()),
        )?,
    };
    let (agent, events, store) = Agent::start(cfg)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every task sensord starts is owned here: one that ends before the
    // stop ends sensord (non-zero, so the service manager starts it again;
    // the pinned programs keep enforcing meanwhile).
    let mut tasks = Tasks::new();
    if let Some(addr) = args.metrics_listen.or(file.metrics.listen) {
        let incoming = residency_daemon::admin::bind(addr).await.with_context(|| {
            format!("while binding the admin endpoints' [metrics] listen {addr}")
        })?;
        let admin = admin(&agent);
        let stop = stop_rx.clone();
        tasks.spawn("admin endpoints", async move {
            residency_daemon::admin::serve(incoming, addr, admin, stop).await;
            Ok(())
        });
    }
    let (handle, commands) = Agent::channel();
    if !file.collector.endpoints.is_empty() {
        let endpoints = file.collector.endpoints.clone();
        use sensor_user::export::deliver;
        let creds = deliver::Credentials {
            tls: file
                .collector
                .tls
                .as_ref()
                .map(deliver::tls_config)
                .transpose()?,
            token: file
                .collector
                .token_file
                .as_deref()
                .map(deliver::token)
                .transpose()?,
        };
        let host = agent.host_id();
        let h = handle.clone();
        let compiler = agent.compiler();
        tasks.spawn("delivery", async move {
            if residency_daemon::fault::armed("delivery-panic") {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                panic!(
                    "fault injected ({}=delivery-panic)",
                    residency_daemon::fault::VAR
                );
            }
            deliver::run(endpoints, creds, host, h, compiler).await;
            Err("the delivery loop returned".into())
        });
    }

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let roles = file
        .api
        .tls
        .as_ref()
        .map(|t| sensor_user::api::auth::TlsRoles {
            operators: t.operators.clone(),
            viewers: t.viewers.clone(),
        })
        .unwrap_or_default();
    let api = AgentApi::new(handle.clone(), store, agent.compiler(), roles);
    if let Some(tls) = file.api.tls.clone() {
        let api = api.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn("TLS API", async move {
            api::serve_tls(&tls, api, stop)
                .await
                .map_err(|e| format!("{e:#}"))
        });
    }
    {
        let socket = args.socket.clone().unwrap_or(file.api.socket.clone());
        let stop = stopped(stop_rx.clone());
        tasks.spawn("API", async move {
            api::serve_unix(&socket, socket_mode, api, stop)
                .await
                .map_err(|e| format!("{e:#}"))
        });
    }
    let (mut hup, mut term, mut int) = (
        signal(SignalKind::hangup()).context("while installing the SIGHUP handler")?,
        signal(SignalKind::terminate()).context("while installing the SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("while installing the SIGINT handler")?,
    );
    let ignore_term = residency_daemon::fault::armed("ignore-sigterm");
    residency_daemon::notify::ready(&format!(
        "enforcing policy {} on {}",
        agent.policy_sha256(),
        agent.host_id()
    ));
    residency_daemon::notify::spawn_watchdog();
    let run = agent.run(events, (handle.clone(), commands), stopped(stop_rx));
    tokio::pin!(run);
    let mut failed: Option<String> = None;
    let stop = |why: &str| {
        info!(
            "{why}: exiting; the pinned programs keep enforcing the last policy (sensord --uninstall removes them)"
        );
        let _ = stop_tx.send(true);
    };
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = hup.recv() => { info!("SIGHUP"); handle.send(Command::Reload).await; }
            _ = term.recv() => {
                if ignore_term {
                    warn!("SIGTERM ignored (fault injected: {}=ignore-sigterm)", residency_daemon::fault::VAR);
                } else {
                    stop("SIGTERM");
                }
            }
            _ = int.recv() => stop("SIGINT"),
            (task, outcome) = tasks.next_end(), if failed.is_none() && !*stop_tx.borrow() => {
                let why = outcome.err().unwrap_or_else(|| "returned".into());
                error!(task, error = %why, "a task of sensord ended unexpectedly: exiting so that the service manager starts sensord again; the pinned programs keep enforcing meanwhile");
                failed = Some(format!("the {task} task ended unexpectedly: {why}"));
                let _ = stop_tx.send(true);
            }
        }
    };
    residency_daemon::notify::stopping("stopping; the pinned programs keep enforcing");
    let cancelled = tasks.shut_down(SHUTDOWN_GRACE).await;
    if !cancelled.is_empty() {
        warn!(tasks = ?cancelled, grace_s = SHUTDOWN_GRACE.as_secs(), "still running after the grace period (an API client holding a stream open, say): cancelled");
    }
    result?;
    if let Some(f) = failed {
        bail!("{f}");
    }
    Ok(())
}

/// How long the stop waits for the API and delivery tasks to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
