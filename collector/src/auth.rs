//! Who is calling the collector, and what they may do. Nobody is trusted for
//! where they connect from alone.
//!
//! - Mutual TLS: every caller presents a certificate signed by the client CA.
//!   A name (common name or DNS name) listed with `--operator` is an operator,
//!   who may read and steer the fleet; one listed with `--auditor` an auditor,
//!   who may only read; any other certificate is an agent's, and its common
//!   name is the host it may deliver records for — and nothing else.
//! - The Unix socket (`--socket`): the peer's credentials (SO_PEERCRED). root
//!   and members of `--operator-group` are operators, members of
//!   `--auditor-group` auditors; everyone else is refused. This is how local
//!   operators and auditors reach a collector without TLS.
//! - Plain TCP (loopback only, without TLS): agents only, each with its own
//!   token (`--agent-tokens FILE`, lines `HOST TOKEN`; the agent's
//!   `collector.token_file`), sent as `authorization: Bearer TOKEN`. The file is
//!   read at every authentication, so tokens are added and revoked without a
//!   restart.

use std::path::PathBuf;

use tonic::{Request, Status, transport::server::UdsConnectInfo};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An agent (by certificate or token): it may deliver for this host only.
    Agent { host: String },
    /// Read-only.
    Auditor { name: String },
    /// Read and steer.
    Operator { name: String },
}

impl Caller {
    /// For agents' audit records: who asked.
    pub fn actor(&self) -> String {
        match self {
            Caller::Agent { host } => format!("agent {host} via collector"),
            Caller::Auditor { name } | Caller::Operator { name } => {
                format!("{name} via collector")
            }
        }
    }
}

/// Who has which role.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// Certificate names with the auditor role.
    pub auditors: Vec<String>,
    /// Certificate names with the operator role.
    pub operators: Vec<String>,
    /// Unix group whose members are operators on the socket (root always is).
    pub operator_group: Option<u32>,
    /// Unix group whose members are auditors on the socket.
    pub auditor_group: Option<u32>,
    /// `HOST TOKEN` lines: agents on plain TCP.
    pub agent_tokens: Option<PathBuf>,
}

/// The groups (primary and supplementary) of process `pid`.
fn groups_of(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut out = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            out.extend(
                rest.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(rest) = line.strip_prefix("Gid:") {
            out.extend(
                rest.split_whitespace()
                    .next()
                    .and_then(|g| g.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Equality that takes as long whatever the contents (token comparison).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Roles {
    /// The host whose token `token` is, from the tokens file.
    fn token_host(&self, token: &str) -> Result<String, Status> {
        let Some(path) = &self.agent_tokens else {
            return Err(Status::unauthenticated(
                "this collector takes no agents on plain TCP (no --agent-tokens file): use mutual TLS",
            ));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Status::unavailable(format!("the collector cannot read its agent tokens: {e}"))
        })?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(_, t)| same_secret(t.trim().as_bytes(), token.as_bytes()))
            .map(|(host, _)| host.to_owned())
            .ok_or_else(|| Status::unauthenticated("unknown agent token"))
    }

    /// Authenticates a request.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
            let Some(cred) = info.peer_cred else {
                return Err(Status::permission_denied(
                    "the caller's credentials could not be read (SO_PEERCRED)",
                ));
            };
            let uid = cred.uid();
            let name = format!("uid {uid}");
            if uid == 0 {
                return Ok(Caller::Operator { name });
            }
            let groups = cred.pid().map(groups_of).unwrap_or_default();
            let member = |g: Option<u32>| g.is_some_and(|g| groups.contains(&g));
            if member(self.operator_group) {
                return Ok(Caller::Operator { name });
            }
            if member(self.auditor_group) {
                return Ok(Caller::Auditor { name });
            }
            return Err(Status::permission_denied(format!(
                "{name} may not use the collector's socket: root, or a member of the group given with --operator-group or --auditor-group"
            )));
        }
        if let Some(names) = residency_proto::identity::peer_names(req) {
            if let Some(n) = names.iter().find(|n| self.operators.contains(n)) {
                return Ok(Caller::Operator {
                    name: format!("cert {n}"),
                });
            }
            if let Some(n) = names.iter().find(|n| self.auditors.contains(n)) {
                return Ok(Caller::Auditor {
                    name: format!("cert {n}"),
                });
            }
            return match names.into_iter().next() {
                Some(host) => Ok(Caller::Agent { host }),
                None => Err(Status::unauthenticated(
                    "the client certificate names no one (no common name, no DNS name)",
                )),
            };
        }
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(t) => self.token_host(t.trim()).map(|host| Caller::Agent { host }),
            None => Err(Status::unauthenticated(
                "on plain TCP only agents with a token are served; operators and auditors use the collector's Unix socket (collectorctl --socket) or mutual TLS",
            )),
        }
    }

    /// Auditors and operators may read; agents may not.
    pub fn reader<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match self.caller(req)? {
            Caller::Agent { host } => Err(Status::permission_denied(format!(
                "{host:?} is an agent (it may only deliver records); reading needs an auditor or operator"
            ))),
            c => Ok(c),
        }
    }

    /// Only operators may steer the fleet.
    pub fn operator<T>(&self, req: &Request<T>, what: &str) -> Result<Caller, Status> {
        match self.caller(req)? {
            c @ Caller::Operator { .. } => Ok(c),
            Caller::Auditor { name } => Err(Status::permission_denied(format!(
                "{name} has the auditor role, which may not {what}; an operator (--operator certificate, root or --operator-group on the socket) is needed"
            ))),
            Caller::Agent { host } => Err(Status::permission_denied(format!(
                "{host:?} is an agent, which may not {what}; an operator is needed"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_looked_up_in_the_file_and_compared_whole() {
        let dir = std::env::temp_dir().join(format!("rs-tokens-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# host token\nweb-1 s3cret-one\nweb-2  s3cret-two\n").unwrap();
        let roles = Roles {
            agent_tokens: Some(file),
            ..Default::default()
        };
        assert_eq!(roles.token_host("s3cret-two").unwrap(), "web-2");
        assert!(
            roles.token_host("s3cret").is_err(),
            "a prefix is not a token"
        );
        assert!(roles.token_host("").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
    }
}
