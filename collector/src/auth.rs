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
//! - The web dashboard (`--dashboard-listen`): the same client
//!   certificates, or a short-lived login token a reader asked for
//!   (`crate::dashboard::token`); it calls the service with the caller it
//!   authenticated.
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
    /// The tokens file as last read.
    pub token_cache: TokenCache,
}

/// The tokens file parsed, kept while the file is unchanged (its inode,
/// size and modification time) and was last changed over two seconds ago:
/// a fleet reconnecting at once does not read a file of thousands of lines
/// per connection, and an edit (a token added or revoked) counts from the
/// next connection on.
/// Tokens are kept as SHA-256 digests: looked up by digest, the time a
/// lookup takes says nothing about a secret.
#[derive(Debug, Clone, Default)]
pub struct TokenCache(std::sync::Arc<std::sync::Mutex<Option<ParsedTokens>>>);

#[derive(Debug)]
pub struct ParsedTokens {
    stamp: (u64, u64, i64, i64),
    hosts: std::collections::HashMap<[u8; 32], String>,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn stamp(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

/// The groups of user `uid` (primary `gid` and the supplementary groups the
/// system's group database gives it). Taken from the user, not from the
/// peer process: a pid can be reused once its process is gone.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid passwd; getpwuid_r fills it, pointing into
    // `buf`, which outlives every use below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above; sizes match the buffers.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return vec![gid];
    }
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: pw_name points into `buf`; `groups` holds `n` entries.
        let rc = unsafe { libc::getgrouplist(pwd.pw_name, gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        // Too small: `n` says how many there are.
        groups.resize((n as usize).max(groups.len() * 2), 0);
    }
}

impl Roles {
    /// The host whose token `token` is, from the tokens file.
    fn token_host(&self, token: &str) -> Result<String, Status> {
        let Some(path) = &self.agent_tokens else {
            return Err(Status::unauthenticated(
                "this collector takes no agents on plain TCP (no --agent-tokens file): use mutual TLS",
            ));
        };
        let unreadable = |e: std::io::Error| {
            Status::unavailable(format!("the collector cannot read its agent tokens: {e}"))
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let now = stamp(&meta);
        // A file changed in the last two seconds is read every time: file
        // times can be as coarse as a clock tick, and two edits within one
        // tick, of the same size, would look unchanged ("racy git").
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(2));
        let mut cache = self.token_cache.0.lock().unwrap_or_else(|e| e.into_inner());
        if !settled || cache.as_ref().is_none_or(|c| c.stamp != now) {
            // Stamped before reading: an edit during the read is read again
            // at the next connection.
            let text = std::fs::read_to_string(path).map_err(unreadable)?;
            let hosts = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter_map(|l| l.split_once(char::is_whitespace))
                .map(|(host, t)| (digest(t.trim()), host.to_owned()))
                .collect();
            *cache = Some(ParsedTokens { stamp: now, hosts });
        }
        cache
            .as_ref()
            .and_then(|c| c.hosts.get(&digest(token)).cloned())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "unknown agent token: it must be listed for this host in {} (a line `HOST TOKEN`)",
                    path.display()
                ))
            })
    }

    /// Authenticates a request. A request that carries a [`Caller`] in its
    /// extensions was authenticated already, in this process (the
    /// dashboard calls the service directly): a remote client cannot put a
    /// Rust value there.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if let Some(c) = req.extensions().get::<Caller>() {
            return Ok(c.clone());
        }
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
            let groups = groups_of(uid, cred.gid());
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
            return self.by_certificate(names);
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

    /// The caller a verified client certificate with `names` is: an
    /// operator or auditor by the role lists, else the agent its first name
    /// names.
    pub fn by_certificate(&self, names: Vec<String>) -> Result<Caller, Status> {
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
        match names.into_iter().next() {
            Some(host) => Ok(Caller::Agent { host }),
            None => Err(Status::unauthenticated(
                "the client certificate names no one (no common name, no DNS name)",
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
            agent_tokens: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(roles.token_host("s3cret-two").unwrap(), "web-2");
        assert!(
            roles.token_host("s3cret").is_err(),
            "a prefix is not a token"
        );
        assert!(roles.token_host("").is_err());
        // Revoked by an edit of the same size: refused from then on (the
        // parsed file is kept only while it is unchanged).
        std::fs::write(&file, "# host token\nweb-1 s3cret-one\nweb-2  s3cret-TWO\n").unwrap();
        assert!(roles.token_host("s3cret-two").is_err());
        assert_eq!(roles.token_host("s3cret-TWO").unwrap(), "web-2");
        // A clone (each connection's service) shares what was read.
        assert_eq!(roles.clone().token_host("s3cret-one").unwrap(), "web-1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
