//! `collectord`: the Residency Sensor collector.

use std::{net::SocketAddr, path::PathBuf};

/// mimalloc rather than glibc's malloc: the record path allocates and frees
/// small buffers at line rate (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail};
use clap::Parser;
use collector::{
    auth::Roles,
    service::CollectorService,
    store::{Store, filter::Filter, is_postgres},
};
use residency_daemon::tasks::Tasks;
use residency_proto::{collector::v1::collector_server::CollectorServer, listen};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{error, info, warn};

/// Residency Sensor collector: receives every agent's records, stores them
/// durably and exactly once (SQLite or PostgreSQL), serves them to auditors,
/// and carries operators' commands to the agents. Without a subcommand it
/// serves; `collectord export` writes reports.
///
/// Nobody is trusted for where they connect from. On TCP with
/// --tls-cert/--tls-key/--client-ca every caller presents a client certificate
/// signed by the CA: names listed with --operator may read and steer the
/// fleet, names listed with --auditor may only read, and any other certificate
/// is an agent's, which may deliver records only for the host its common name
/// names. Without TLS the TCP listener is loopback only and serves only agents
/// with a token (--agent-tokens). Local operators and auditors use the Unix
/// socket (--socket): root and --operator-group members operate,
/// --auditor-group members audit.
#[derive(Debug, Parser)]
#[command(name = "collectord", version = residency_daemon::cli::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Address agents and auditors connect to.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:50551")]
    listen: SocketAddr,
    /// Where records are stored: a SQLite file (created if missing), or a
    /// PostgreSQL URL (postgres://user@host/db; ?host=/run/postgresql for a
    /// Unix socket).
    #[arg(
        long,
        value_name = "FILE|URL",
        default_value = "/var/lib/residency/collector.db"
    )]
    database: String,
    /// Connections that store batches at once (PostgreSQL; SQLite has one
    /// writer). Several overlap their commits' waits for the WAL flush and
    /// use more of the server's cores; each is one more PostgreSQL
    /// connection per collector.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    database_writers: u64,
    /// The collector's certificate chain (PEM); turns on mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA that signs agents', auditors' and operators' certificates (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// A certificate name (common name or DNS name) with the auditor role
    /// (read-only); repeat for more.
    #[arg(long, value_name = "NAME")]
    auditor: Vec<String>,
    /// A certificate name with the operator role (read, SetEnforcement,
    /// GrantException); repeat for more.
    #[arg(long, value_name = "NAME")]
    operator: Vec<String>,
    /// Unix socket for local operators and auditors (peer credentials decide:
    /// root and --operator-group operate, --auditor-group audits).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/residency-collector/collectord.sock"
    )]
    socket: PathBuf,
    /// Members of this group are operators on the Unix socket.
    #[arg(long, value_name = "GROUP")]
    operator_group: Option<String>,
    /// Members of this group are auditors on the Unix socket.
    #[arg(long, value_name = "GROUP")]
    auditor_group: Option<String>,
    /// Agents' tokens for plain TCP without TLS: lines `HOST TOKEN` (read at
    /// every connection, so tokens are added and revoked without a restart).
    #[arg(long, value_name = "FILE")]
    agent_tokens: Option<PathBuf>,
    /// Connections each listener (TCP, socket) admits at once; more are
    /// closed at once, which is logged. Default: sized to the open-file limit
    /// (half of it, less 256 for the database and logs, at most 16,384), so a
    /// flood of clients cannot starve the database of descriptors.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections one peer (source address; uid on the socket, root exempt)
    /// may hold. Default: a quarter of --max-connections; raise it when many
    /// agents share an address (NAT).
    #[arg(long, value_name = "N")]
    max_connections_per_peer: Option<usize>,
    /// Serve the read-only web dashboard here (off by default). With
    /// --tls-cert it is HTTPS with the same certificate: auditors and
    /// operators sign in with their client certificates or with a login
    /// token (`collectorctl dashboard-token`); agents' certificates are
    /// refused. Without TLS it must be a loopback address, tokens only.
    #[arg(long, value_name = "ADDR:PORT")]
    dashboard_listen: Option<SocketAddr>,
    /// Serve the admin endpoints here (plain HTTP, off by default; keep it
    /// on loopback or a management network): GET /metrics (Prometheus),
    /// /healthz (the process serves), /readyz (the database answers).
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<SocketAddr>,
    /// Forward stored violations, audit and gap records to a SIEM, at least
    /// once, from where this target's cursor stands (kept in the database):
    /// syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT (RFC 5424, octet
    /// counting; the message is the record's ECS JSON), ecs:FILE (ECS JSON
    /// lines, rotated by size) or ecs:- (stdout). Repeat for more targets.
    #[arg(long, value_name = "URL", value_parser = collector::forward::Target::parse)]
    forward: Vec<collector::forward::Target>,
    /// Remove records older than this (400d, 90d, 12h; default: keep
    /// everything). Per host, whole signed windows go at a time (records up
    /// to an attestation older than the retention), so what stays verifies
    /// on its own and `verify` reports the removed prefix as `retained`.
    /// Records of hosts that never attest are kept. Forwarding targets that
    /// are down longer than this lose what is removed meanwhile.
    #[arg(long, value_name = "DURATION", value_parser = residency_proto::time::parse_duration)]
    retain: Option<std::time::Duration>,
    /// How often retention runs (with --retain).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = residency_proto::time::parse_duration, requires = "retain")]
    retain_every: std::time::Duration,
    /// The CA (PEM) that signed syslog+tls servers' certificates.
    #[arg(long, value_name = "PEM")]
    forward_ca: Option<PathBuf>,
    /// Rotate an ecs:FILE when it would grow past this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100_000_000)]
    forward_rotate_bytes: u64,
    /// Rotated ecs files kept (FILE.1 … FILE.N).
    #[arg(long, value_name = "N", default_value_t = 5)]
    forward_keep: usize,
    /// Log lines as human text or JSON objects (colours only on a terminal).
    #[arg(
        long,
        value_enum,
        default_value = "human",
        env = "COLLECTORD_LOG_FORMAT"
    )]
    log_format: residency_daemon::logging::LogFormat,
}

/// The gid of group `name`.
fn gid_of(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("a group name has no NUL byte")?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result is copied out
    // at once (single-threaded at start-up).
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    anyhow::ensure!(!g.is_null(), "no group named {name:?} on this host");
    // SAFETY: non-null pointer from getgrnam.
    Ok(unsafe { (*g).gr_gid })
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Write stored records as CSV or JSON lines to stdout (the database may be
    /// in use by a running collector); or, with --format bundle and --host,
    /// one host's records exactly as stored with what `residency-verify`
    /// needs to check their chain offline (binary: redirect it to a file).
    Export {
        /// csv, jsonl or bundle.
        #[arg(long, value_enum, default_value = "csv")]
        format: collector::export::Format,
        /// From this time on: Unix seconds, 2026-11-23, 2026-11-23T07:00:00Z,
        /// 2026-11-23T08:00:00+01:00, or 24h (that long ago).
        #[arg(long, value_parser = collector::export::parse_time)]
        since: Option<i64>,
        /// Before this time (same forms).
        #[arg(long, value_parser = collector::export::parse_time)]
        until: Option<i64>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this kind (violation, audit, gap, attestation); default: all.
        #[arg(long)]
        kind: Option<String>,
        /// Bundles: the CA that signs the agents' certificates (PEM, the
        /// collector's --client-ca), included so that `residency-verify`
        /// checks attestations against it.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
    },
}

/// `export --format bundle`: one host, every kind, to stdout (not a terminal).
async fn export_bundle(
    store: Store,
    host: Option<&str>,
    kind: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
    ca: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let Some(host) = host else {
        anyhow::bail!("--format bundle needs --host: a bundle holds one host's chain");
    };
    anyhow::ensure!(
        kind.is_none(),
        "--kind does not apply to bundles: a chain holds every kind of record"
    );
    let stdout = std::io::stdout();
    anyhow::ensure!(
        !stdout.is_terminal(),
        "a bundle is binary: redirect it to a file (collectord export --format bundle --host {host} > {host}.bundle)"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let store = tokio::sync::Mutex::new(store);
    let mut out = std::io::BufWriter::new(stdout.lock());
    let w = collector::bundle::write(
        &store,
        host,
        since.unwrap_or(0),
        until.unwrap_or(0),
        now,
        ca.as_deref(),
        &mut out,
    )
    .await
    .context("while writing the bundle")?;
    anyhow::ensure!(
        w.records > 0,
        "no records of host {host:?} in that time range (collectorctl hosts lists the hosts)"
    );
    info!(
        host,
        records = w.records,
        gap_records = w.gaps,
        "bundle written; check it with residency-verify FILE"
    );
    Ok(())
}

/// The first certificate of a PEM file, as DER.
fn pem_certificate(p: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    residency_proto::attest::pem_certificate(p).map_err(anyhow::Error::msg)
}

/// `--client-ca` as DER (attestations are checked against it).
fn client_ca_der(args: &Args) -> anyhow::Result<Option<Vec<u8>>> {
    args.client_ca
        .as_deref()
        .map(|p| pem_certificate(p).context("--client-ca"))
        .transpose()
}

async fn open_store(spec: &str, create: bool) -> anyhow::Result<Store> {
    if !is_postgres(spec) {
        let path = std::path::Path::new(spec);
        if !create {
            anyhow::ensure!(
                path.is_file(),
                "no collector database at {spec} (give it with --database)"
            );
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("while creating {}", dir.display()))?;
        }
    }
    Store::open(spec)
        .await
        .with_context(|| format!("while opening the database {}", redact(spec)))
}

/// A database URL without its password, for messages.
fn redact(spec: &str) -> String {
    match (spec.find("://"), spec.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &spec[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &spec[..s + 3], &spec[at..])
        }
        _ => spec.to_owned(),
    }
}

/// Binds the Unix socket (replacing a stale one). Mode 0666: whoever connects
/// is told by their credentials what they may do, or why not.
fn bind_socket(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another collectord serves {} already; stop it or give --socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("while binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("while setting the mode of {}", path.display()))?;
    Ok(l)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    residency_daemon::cli::generate_if_asked::<Args>();
    let args = Args::parse();
    residency_daemon::logging::init(args.log_format);
    if let Some(Cmd::Export {
        format,
        since,
        until,
        host,
        kind,
        ca,
    }) = &args.command
    {
        let mut store = open_store(&args.database, false).await?;
        if *format == collector::export::Format::Bundle {
            let ca = ca.as_deref().map(pem_certificate).transpose()?;
            return export_bundle(store, host.as_deref(), kind.as_deref(), *since, *until, ca)
                .await;
        }
        let filter = Filter {
            kind: kind.clone(),
            host: host.clone(),
            since: *since,
            until: *until,
            ..Default::default()
        };
        let records = store
            .all(&filter)
            .await
            .context("while reading the records")?;
        let mut out = std::io::stdout().lock();
        collector::export::write(&mut out, &records, *format)
            .context("while writing the report")?;
        return Ok(());
    }
    if args.retain.is_some_and(|r| r.is_zero()) || args.retain_every.is_zero() {
        anyhow::bail!(
            "--retain and --retain-every must be longer than 0 (e.g. --retain 400d --retain-every 1h); leave --retain out to keep every record"
        );
    }
    let store = open_store(&args.database, true).await?;
    let fds = residency_proto::listen::raise_fd_limit();
    let max_connections = args
        .max_connections
        .unwrap_or_else(|| (fds.saturating_sub(256) / 2).clamp(64, 16_384) as usize);
    let limits = listen::Limits {
        max_connections,
        per_peer: args
            .max_connections_per_peer
            .unwrap_or((max_connections / 4).max(32)),
        ..listen::Limits::default()
    };
    info!(
        open_files = fds,
        max_connections = limits.max_connections,
        per_peer = limits.per_peer,
        "connection limits"
    );
    let roles = Roles {
        auditors: args.auditor.clone(),
        operators: args.operator.clone(),
        operator_group: args.operator_group.as_deref().map(gid_of).transpose()?,
        auditor_group: args.auditor_group.as_deref().map(gid_of).transpose()?,
        agent_tokens: args.agent_tokens.clone(),
        token_cache: Default::default(),
    };
    if let Some(t) = &roles.agent_tokens {
        anyhow::ensure!(
            t.is_file(),
            "--agent-tokens {}: no such file (lines `HOST TOKEN`)",
            t.display()
        );
    }
    let mut server = tonic::transport::Server::builder();
    let mut dashboard_tls = None;
    match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let read = |p: &PathBuf| {
                std::fs::read(p).with_context(|| format!("while reading {}", p.display()))
            };
            if args.dashboard_listen.is_some() {
                let config =
                    collector::dashboard::tls_config(&read(cert)?, &read(key)?, &read(ca)?)
                        .map_err(anyhow::Error::msg)
                        .context("while configuring the dashboard's TLS")?;
                dashboard_tls = Some(std::sync::Arc::new(config));
            }
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .timeout(std::time::Duration::from_secs(10));
            server = server
                .tls_config(tls)
                .context("while configuring TLS (check the certificate and key)")?;
            info!(listen = %args.listen, database = %redact(&args.database), auditors = ?roles.auditors, operators = ?roles.operators, "collector listening (mutual TLS)");
        }
        _ => {
            anyhow::ensure!(
                args.listen.ip().is_loopback(),
                "refusing to listen on {} without TLS: agents would be unauthenticated. Give --tls-cert, --tls-key and --client-ca (cargo xtask pki makes test ones), or listen on a loopback address",
                args.listen
            );
            anyhow::ensure!(
                roles.auditors.is_empty() && roles.operators.is_empty(),
                "--auditor and --operator name certificates: they need mutual TLS (--tls-cert, --tls-key, --client-ca); without TLS use --operator-group/--auditor-group on the Unix socket"
            );
            if let Some(d) = args.dashboard_listen {
                anyhow::ensure!(
                    d.ip().is_loopback(),
                    "refusing to serve the dashboard on {d} without TLS: login tokens and records would cross the network in clear. Give --tls-cert, --tls-key and --client-ca, or a loopback --dashboard-listen"
                );
            }
            if roles.agent_tokens.is_none() {
                warn!(listen = %args.listen, "no TLS and no --agent-tokens: no agent can deliver on TCP");
            }
            info!(listen = %args.listen, database = %redact(&args.database), "collector listening (agents with tokens only)");
        }
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CollectorServer<CollectorService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(residency_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("while building the reflection service")
    };
    // Reflection, like reading, is for auditors and operators.
    let readers = {
        let roles = roles.clone();
        move |req: tonic::Request<()>| roles.reader(&req).map(|_| req)
    };
    let feed = store.feed();
    let more = store
        .more_writers(args.database_writers.saturating_sub(1) as usize)
        .await
        .context("while connecting the --database-writers")?;
    let service = CollectorService::new(store, roles)
        .with_client_ca(client_ca_der(&args)?)
        .with_retain(args.retain);
    service.add_writers(more);
    for target in &args.forward {
        service
            .forward(
                target.clone(),
                collector::forward::Options {
                    ca: args.forward_ca.clone(),
                    rotate_bytes: args.forward_rotate_bytes,
                    keep: args.forward_keep,
                },
            )
            .map_err(anyhow::Error::msg)?;
    }
    let dashboard_service = service.clone();
    let service_for_feed = service.clone();
    let dashboard_incoming =
        match args.dashboard_listen {
            Some(addr) => Some(collector::dashboard::bind(addr).await.with_context(|| {
                format!("while binding the dashboard's --dashboard-listen {addr}")
            })?),
            None => None,
        };
    let unix = bind_socket(&args.socket)?;
    info!(socket = %args.socket.display(), "collector socket for local operators and auditors");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_dashboard = stop_rx.clone();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let incoming = listen::bind_tcp(args.listen, limits)
        .await
        .with_context(|| format!("while binding {}", args.listen))?;
    let tcp = server
        .http2_keepalive_interval(Some(listen::KEEPALIVE))
        .add_service(health.clone())
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection()?,
            readers.clone(),
        ))
        .add_service(CollectorServer::new(service.clone()))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let local = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(listen::KEEPALIVE))
        .add_service(health)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection()?,
            readers,
        ))
        .add_service(CollectorServer::new(service))
        .serve_with_incoming_shutdown(listen::unix(unix, limits), stopped(stop_rx.clone()));
    // Every task collectord starts is owned here: one that ends before the
    // stop ends collectord with an error (the service manager starts it
    // again; agents keep their records spooled meanwhile).
    let mut tasks = Tasks::new();
    let (listen_addr, socket_path) = (args.listen, args.socket.clone());
    tasks.spawn("gRPC on TCP", async move {
        tcp.await
            .map_err(|e| format!("while serving on {listen_addr}: {e}"))
    });
    tasks.spawn("gRPC on the Unix socket", async move {
        local
            .await
            .map_err(|e| format!("while serving on {}: {e}", socket_path.display()))
    });
    if let Some(addr) = args.admin_listen {
        let incoming = residency_daemon::admin::bind(addr)
            .await
            .with_context(|| format!("while binding --admin-listen {addr}"))?;
        let metrics = dashboard_service.metrics();
        let ready_service = dashboard_service.clone();
        let admin = residency_daemon::admin::Admin {
            metrics: std::sync::Arc::new(move || metrics.render()),
            ready: std::sync::Arc::new(move || {
                let s = ready_service.clone();
                Box::pin(async move { s.database_ready().await })
            }),
        };
        let stop = stop_rx.clone();
        tasks.spawn("admin endpoints", async move {
            residency_daemon::admin::serve(incoming, addr, admin, stop).await;
            Ok(())
        });
    }
    if let Some(retain) = args.retain {
        let (service, stop, every) = (service_for_feed.clone(), stop_rx.clone(), args.retain_every);
        tasks.spawn("retention", async move {
            service.retain(retain, every, stop).await;
            Ok(())
        });
    }
    if let Some((url, origin)) = feed {
        // Replicas on one PostgreSQL: operators' commands reach the agents
        // connected to the others, and what the others store reaches the
        // watchers here too.
        let across = service_for_feed.across_replicas(url.clone(), origin.clone());
        let stop = stop_rx.clone();
        tasks.spawn("fleet commands across replicas", async move {
            across.run(stop).await;
            Ok(())
        });
        let watchers = service_for_feed.watchers();
        let mut stop = stop_rx.clone();
        tasks.spawn("following other replicas' records", async move {
            tokio::select! {
                () = collector::store::stored_feed::follow(url, origin, watchers) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }
    let stopping_service = dashboard_service.clone();
    if let (Some(addr), Some(incoming)) = (args.dashboard_listen, dashboard_incoming) {
        tasks.spawn("dashboard", async move {
            collector::dashboard::serve(
                incoming,
                addr,
                dashboard_tls,
                dashboard_service,
                stop_rx_dashboard,
            )
            .await;
            Ok(())
        });
    }
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).context("while installing the SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("while installing the SIGINT handler")?,
    );
    residency_daemon::notify::ready(&format!(
        "serving on {} (database {})",
        args.listen,
        redact(&args.database)
    ));
    residency_daemon::notify::spawn_watchdog();
    let failed = tokio::select! {
        _ = term.recv() => { info!(signal = "SIGTERM", "shutting down: each delivery stream ends after its batch in flight is committed and acknowledged"); None }
        _ = int.recv() => { info!(signal = "SIGINT", "shutting down: each delivery stream ends after its batch in flight is committed and acknowledged"); None }
        (task, outcome) = tasks.next_end() => {
            let why = outcome.err().unwrap_or_else(|| "returned".into());
            error!(task, error = %why, "a task of collectord ended unexpectedly: exiting so that the service manager starts collectord again; agents keep their records spooled meanwhile");
            Some(format!("the {task} task ended unexpectedly: {why}"))
        }
    };
    residency_daemon::notify::stopping("finishing the batches in flight");
    stopping_service.shut_down();
    let _ = stop_tx.send(true);
    // Whatever does not finish in time is resent by its agent.
    let cancelled = tasks.shut_down(SHUTDOWN_GRACE).await;
    if !cancelled.is_empty() {
        warn!(
            tasks = ?cancelled,
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period: closed (their agents resend what was not acknowledged)"
        );
    }
    let _ = std::fs::remove_file(&args.socket);
    if let Some(f) = failed {
        bail!("{f}");
    }
    info!("collector stopped");
    Ok(())
}

/// How long a shutdown waits for streams and requests to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    #[test]
    fn database_passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("postgres://collector:s3cret@db.example/residency"),
            "postgres://collector@db.example/residency"
        );
        assert_eq!(
            super::redact("/var/lib/residency/collector.db"),
            "/var/lib/residency/collector.db"
        );
    }
}
