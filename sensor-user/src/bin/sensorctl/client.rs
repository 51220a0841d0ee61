//! Connecting to the agent's Unix socket, and turning gRPC errors into
//! messages and exit codes.

use std::path::Path;

use residency_proto::agent::v1::agent_client::AgentClient;
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::Global;

/// Connects over the Unix socket, or prints why not and returns None.
async fn connect_unix(socket: &Path) -> Option<AgentClient<Channel>> {
    match residency_proto::unix::channel(socket).await {
        Ok(ch) => Some(AgentClient::new(ch)),
        Err(e) => {
            eprintln!(
                "error: cannot reach sensord at {}: {}",
                socket.display(),
                residency_daemon::cli::causes(&e)
            );
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 {
                eprintln!(
                    "hint: you are uid {euid}; the agent's socket is for root: run sensorctl as root (sudo)"
                );
            } else {
                eprintln!(
                    "hint: is sensord running (systemctl status sensord)? use --socket if it listens elsewhere"
                );
            }
            None
        }
    }
}

/// Prints a refused or failed call and returns the exit code: 1 when the
/// request was wrong or refused, 2 when the agent could not answer.
pub fn fail(what: &str, s: Status) -> i32 {
    eprintln!("error: {what}: {}", s.message());
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::FailedPrecondition => 1,
        _ => 2,
    }
}

/// Connects as the global options say: TLS when --endpoint is given, else the
/// Unix socket.
pub async fn connect(g: &Global) -> Option<AgentClient<Channel>> {
    let Some(url) = &g.endpoint else {
        return connect_unix(&g.socket).await;
    };
    let (Some(ca), Some(cert), Some(key)) = (&g.ca, &g.cert, &g.key) else {
        eprintln!("error: --endpoint needs --ca, --cert and --key (mutual TLS)");
        return None;
    };
    let read = |p: &Path| {
        std::fs::read(p)
            .map_err(|e| eprintln!("error: {}: {e}", p.display()))
            .ok()
    };
    let (ca, cert, key) = (read(ca)?, read(cert)?, read(key)?);
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    if let Some(name) = &g.tls_name {
        tls = tls.domain_name(name.clone());
    }
    let endpoint = match Endpoint::from_shared(url.clone()).and_then(|e| e.tls_config(tls)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: endpoint {url}: {e}");
            return None;
        }
    };
    match endpoint.connect().await {
        Ok(ch) => Some(AgentClient::new(ch)),
        Err(e) => {
            eprintln!(
                "error: cannot reach sensord at {url}: {}",
                residency_daemon::cli::causes(&e)
            );
            None
        }
    }
}
