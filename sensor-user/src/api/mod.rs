//! The agent's gRPC API (`residency.agent.v1`), standard health and reflection
//! services (so `grpcurl` works), on a Unix socket.
//!
//! Only root may use it: the socket file is mode 0600 and, because file modes
//! can be widened by mistake, every request is also checked against the peer's
//! credentials (SO_PEERCRED) of its connection. A refused caller gets
//! PERMISSION_DENIED with the reason.

pub mod auth;
mod service;

use std::{os::unix::fs::PermissionsExt, path::Path};

use residency_proto::{agent::v1::agent_server::AgentServer, listen};
pub use service::AgentApi;
use tokio::net::UnixListener;
use tracing::info;

/// Serves the API on TCP with mutual TLS until `shutdown` resolves.
pub async fn serve_tls(
    tls: &crate::config::TlsConfig,
    api: AgentApi,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("while reading {}", p.display()))
    };
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
        .client_ca_root(Certificate::from_pem(read(&tls.client_ca)?))
        .timeout(TLS_HANDSHAKE);
    let incoming = listen::bind_tcp(tls.listen, listen::Limits::default())
        .await
        .with_context(|| format!("while binding {}", tls.listen))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentApi>>().await;
    info!(listen = %tls.listen, operators = ?tls.operators, viewers = ?tls.viewers, "agent API listening (mutual TLS)");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(listen::KEEPALIVE))
        .tls_config(config)
        .context("while configuring TLS (check the certificate and key)")?
        .add_service(health)
        .add_service(AgentServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .with_context(|| format!("while serving the agent API on {}", tls.listen))
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/residency/sensord.sock";

/// Serves the API on `path` (file mode `mode`, e.g. 0o600) until `shutdown`
/// resolves.
pub async fn serve_unix(
    path: &Path,
    mode: u32,
    api: AgentApi,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
    }
    // A socket file left by a previous run (the single-instance lock guarantees
    // that run is over).
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("while binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("while restricting {} to root", path.display()))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(residency_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("while building the reflection service")?;
    // Health answers anyone who can reach the socket (it tells only that the
    // agent serves); reflection, like the API, root only.
    let reflection = tonic::service::interceptor::InterceptedService::new(
        reflection,
        auth::interceptor(api.roles()),
    );
    info!(socket = %path.display(), "agent API listening");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(listen::KEEPALIVE))
        .add_service(health)
        .add_service(reflection)
        .add_service(AgentServer::new(api))
        .serve_with_incoming_shutdown(listen::unix(listener, listen::Limits::default()), shutdown)
        .await
        .context("while serving the agent API")?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
