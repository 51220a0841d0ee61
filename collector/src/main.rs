//! `collectord`: the Residency Sensor collector.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use collector::{service::CollectorService, store::Store};
use residency_proto::collector::v1::collector_server::CollectorServer;
use tracing::info;

/// Residency Sensor collector: receives every agent's records, stores them
/// durably and exactly once (SQLite, WAL), and serves them to auditors.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
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
