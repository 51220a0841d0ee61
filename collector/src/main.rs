//! `collectord`: the Residency Sensor collector.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use collector::{
    auth::Roles,
    service::CollectorService,
    store::{Store, filter::Filter, is_postgres},
};
use residency_proto::collector::v1::collector_server::CollectorServer;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};

/// Residency Sensor collector: receives every agent's records, stores them
/// durably and exactly once (SQLite or PostgreSQL), serves them to auditors,
/// and carries operators' commands to the agents. Without a subcommand it
/// serves; `collectord export` writes reports.
///
/// With --tls-cert/--tls-key/--client-ca every caller must present a client
/// certificate signed by the CA: names listed with --operator may read and
/// steer the fleet, names listed with --auditor may only read, and any other
/// certificate is an agent's, which may deliver records only for the host its
/// common name names. Without TLS the collector listens on loopback only.
#[derive(Debug, Parser)]
#[command(version)]
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
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Write stored records as CSV or JSON lines to stdout (the database may be
    /// in use by a running collector).
    Export {
        /// csv or jsonl.
        #[arg(long, value_enum, default_value = "csv")]
        format: collector::export::Format,
        /// From this time on (Unix seconds, 2026-11-23 or 2026-11-23T07:00:00Z).
        #[arg(long, value_parser = collector::export::parse_time)]
        since: Option<i64>,
        /// Before this time (same forms).
        #[arg(long, value_parser = collector::export::parse_time)]
        until: Option<i64>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this kind (violation, audit, gap); default: all.
        #[arg(long)]
        kind: Option<String>,
    },
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(Cmd::Export {
        format,
        since,
        until,
        host,
        kind,
    }) = &args.command
    {
        let mut store = open_store(&args.database, false).await?;
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
    let store = open_store(&args.database, true).await?;
    let roles = Roles {
        auditors: args.auditor.clone(),
        operators: args.operator.clone(),
    };
    let mut server = tonic::transport::Server::builder();
    match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let read = |p: &PathBuf| {
                std::fs::read(p).with_context(|| format!("while reading {}", p.display()))
            };
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .client_ca_root(Certificate::from_pem(read(ca)?));
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
                "--auditor and --operator need mutual TLS (--tls-cert, --tls-key, --client-ca): without it every local caller may do everything"
            );
            warn!(listen = %args.listen, "no TLS: every local caller may deliver for any host and steer the fleet; use mutual TLS in production");
            info!(listen = %args.listen, database = %redact(&args.database), "collector listening");
        }
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CollectorServer<CollectorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(residency_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("while building the reflection service")?;
    server
        .add_service(health)
        .add_service(reflection)
        .add_service(CollectorServer::new(CollectorService::new(store, roles)))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .with_context(|| format!("while serving on {}", args.listen))?;
    Ok(())
}

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
