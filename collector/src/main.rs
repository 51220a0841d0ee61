//! `collectord`: the Residency Sensor collector.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use collector::{service::CollectorService, store::Store};
use residency_proto::collector::v1::collector_server::CollectorServer;
use tracing::info;

/// Residency Sensor collector: receives every agent's records, stores them
/// durably and exactly once (SQLite, WAL), and serves them to auditors.
/// Without a subcommand it serves; `collectord export` writes reports.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Address agents and auditors connect to.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:50551")]
    listen: SocketAddr,
    /// The SQLite database file (created if missing).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/residency/collector.db"
    )]
    database: PathBuf,
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
        anyhow::ensure!(
            args.database.is_file(),
            "no collector database at {} (give it with --database)",
            args.database.display()
        );
        let store = Store::open(&args.database)
            .with_context(|| format!("while opening {}", args.database.display()))?;
        let records = store
            .range(
                kind.as_deref(),
                host.as_deref(),
                since.unwrap_or(i64::MIN),
                until.unwrap_or(i64::MAX),
            )
            .context("while reading the records")?;
        let mut out = std::io::stdout().lock();
        collector::export::write(&mut out, &records, *format)
            .context("while writing the report")?;
        return Ok(());
    }
    if let Some(dir) = args.database.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
    }
    let store = Store::open(&args.database)
        .with_context(|| format!("while opening {}", args.database.display()))?;
    info!(listen = %args.listen, database = %args.database.display(), "collector listening");
    tonic::transport::Server::builder()
        .add_service(CollectorServer::new(CollectorService::new(store)))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .with_context(|| format!("while serving on {}", args.listen))?;
    Ok(())
}
