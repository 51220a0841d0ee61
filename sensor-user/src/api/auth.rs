//! Who is calling, and what they may do.
//!
//! - Unix socket: the peer's credentials (SO_PEERCRED) of the connection; only
//!   uid 0 is served, as an operator.
//! - TCP with mutual TLS: the verified client certificate; its common name or a
//!   DNS name listed in `operators` makes an operator, any other is a viewer.

use std::sync::Arc;

use tonic::{Request, Status, transport::server::UdsConnectInfo};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read-only: status, flows, violations, tagged, policy, lookup.
    Viewer,
    /// Also change modes, tags and policy.
    Operator,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// For audit records: "uid 0 (pid 1234)", "cert CN=ops-alice".
    pub actor: String,
    pub role: Role,
}

/// Authenticates a request.
pub fn caller<T>(req: &Request<T>, operators: &Arc<Vec<String>>) -> Result<Caller, Status> {
    if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
        return match info.peer_cred {
            Some(c) if c.uid() == 0 => Ok(Caller {
                actor: format!("uid 0 (pid {})", c.pid().unwrap_or(0)),
                role: Role::Operator,
            }),
            Some(c) => Err(Status::permission_denied(format!(
                "caller uid {} is not root: the agent's Unix socket is for root only (run sensorctl as root)",
                c.uid()
            ))),
            None => Err(Status::permission_denied(
                "the caller's credentials could not be read (SO_PEERCRED)",
            )),
        };
    }
    if let Some(names) = residency_proto::identity::peer_names(req) {
        let Some(first) = names.first().cloned() else {
            return Err(Status::permission_denied(
                "the client certificate names no one (no CN, no DNS name)",
            ));
        };
        let operator = names.iter().find(|n| operators.contains(n));
        return Ok(match operator {
            Some(n) => Caller {
                actor: format!("cert {n}"),
                role: Role::Operator,
            },
            None => Caller {
                actor: format!("cert {first}"),
                role: Role::Viewer,
            },
        });
    }
    Err(Status::permission_denied(
        "unauthenticated: use the Unix socket as root, or TLS with a client certificate",
    ))
}

/// Refuses non-operators, saying what they would need.
pub fn require_operator(c: &Caller, what: &str) -> Result<(), Status> {
    match c.role {
        Role::Operator => Ok(()),
        Role::Viewer => Err(Status::permission_denied(format!(
            "{} has the viewer role, which may not {what}; an operator certificate (listed in [api.tls] operators) is needed",
            c.actor
        ))),
    }
}
