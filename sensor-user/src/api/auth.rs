//! Who is calling, and what they may do.
//!
//! - Unix socket: the peer's credentials (SO_PEERCRED) of the connection; only
//!   uid 0 is served, as an operator.
//! - TCP with mutual TLS: the verified client certificate; its common name or a
//!   DNS name listed in `operators` makes an operator, one listed in `viewers`
//!   a viewer; any other certificate is refused (one CA signs every host's
//!   certificate, and a host must not read another host's flows).

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

/// The certificate names with each role on the TLS API.
#[derive(Debug, Clone, Default)]
pub struct TlsRoles {
    pub operators: Vec<String>,
    pub viewers: Vec<String>,
}

/// Authenticates a request.
pub fn caller<T>(req: &Request<T>, roles: &Arc<TlsRoles>) -> Result<Caller, Status> {
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
        if let Some(n) = names.iter().find(|n| roles.operators.contains(n)) {
            return Ok(Caller {
                actor: format!("cert {n}"),
                role: Role::Operator,
            });
        }
        if let Some(n) = names.iter().find(|n| roles.viewers.contains(n)) {
            return Ok(Caller {
                actor: format!("cert {n}"),
                role: Role::Viewer,
            });
        }
        return Err(Status::permission_denied(format!(
            "certificate {first:?} has no role on this agent: list it in [api.tls] viewers (read-only) or operators"
        )));
    }
    Err(Status::permission_denied(
        "unauthenticated: use the Unix socket as root, or TLS with a client certificate",
    ))
}

/// For services outside the agent API (gRPC reflection): the same callers as
/// the API itself, checked before the request is served.
pub fn interceptor(
    roles: Arc<TlsRoles>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| caller(&req, &roles).map(|_| req)
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
