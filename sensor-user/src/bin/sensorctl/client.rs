//! Connecting to the agent's Unix socket, and turning gRPC errors into
//! messages and exit codes.

use std::path::Path;

use hyper_util::rt::TokioIo;
use residency_proto::agent::v1::agent_client::AgentClient;
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

/// Connects, or prints why not and returns None.
pub async fn connect(socket: &Path) -> Option<AgentClient<Channel>> {
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector below dials the Unix socket.
    let endpoint = Endpoint::from_static("http://sensord.local");
    match endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
    {
        Ok(ch) => Some(AgentClient::new(ch)),
        Err(e) => {
            eprintln!("error: cannot reach sensord at {}: {e}", socket.display());
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
