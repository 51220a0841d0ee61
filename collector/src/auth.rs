//! Who is calling the collector, and what they may do.
//!
//! With mutual TLS every caller presents a certificate signed by the client CA:
//! - a name (common name or DNS name) listed with `--operator`: an operator,
//!   who may read and steer the fleet;
//! - a name listed with `--auditor`: an auditor, who may only read;
//! - any other certificate is an agent's, and its common name is the host it
//!   may deliver records for — and nothing else.
//!
//! Without TLS (allowed on a loopback address only) every caller is trusted as
//! local: agents name their host in their hello, and every call is allowed.

use tonic::{Request, Status};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An agent's certificate: it may deliver for this host only.
    Agent { host: String },
    /// Read-only.
    Auditor { name: String },
    /// Read and steer.
    Operator { name: String },
    /// A plaintext connection on loopback: trusted.
    Local,
}

impl Caller {
    /// For agents' audit records: who asked.
    pub fn actor(&self) -> String {
        match self {
            Caller::Agent { host } => format!("cert {host} (agent) via collector"),
            Caller::Auditor { name } | Caller::Operator { name } => {
                format!("cert {name} via collector")
            }
            Caller::Local => "local caller via collector (no TLS)".into(),
        }
    }
}

/// The names that make auditors and operators.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    pub auditors: Vec<String>,
    pub operators: Vec<String>,
}

impl Roles {
    /// Authenticates a request.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let Some(names) = residency_proto::identity::peer_names(req) else {
            return Ok(Caller::Local);
        };
        if let Some(n) = names.iter().find(|n| self.operators.contains(n)) {
            return Ok(Caller::Operator { name: n.clone() });
        }
        if let Some(n) = names.iter().find(|n| self.auditors.contains(n)) {
            return Ok(Caller::Auditor { name: n.clone() });
        }
        match names.into_iter().next() {
            Some(host) => Ok(Caller::Agent { host }),
            None => Err(Status::unauthenticated(
                "the client certificate names no one (no common name, no DNS name)",
            )),
        }
    }

    /// Auditors, operators and local callers may read; agents may not.
    pub fn reader<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match self.caller(req)? {
            Caller::Agent { host } => Err(Status::permission_denied(format!(
                "certificate {host:?} is an agent's (it may only deliver records); reading needs a certificate listed with --auditor or --operator"
            ))),
            c => Ok(c),
        }
    }

    /// Only operators and local callers may steer the fleet.
    pub fn operator<T>(&self, req: &Request<T>, what: &str) -> Result<Caller, Status> {
        match self.caller(req)? {
            c @ (Caller::Operator { .. } | Caller::Local) => Ok(c),
            Caller::Auditor { name } => Err(Status::permission_denied(format!(
                "certificate {name:?} has the auditor role, which may not {what}; an operator certificate (listed with --operator) is needed"
            ))),
            Caller::Agent { host } => Err(Status::permission_denied(format!(
                "certificate {host:?} is an agent's, which may not {what}; an operator certificate (listed with --operator) is needed"
            ))),
        }
    }
}
