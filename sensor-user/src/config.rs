//! `sensord.toml`: the agent's own settings (the residency policy is a separate
//! file). Every key has a default next to it; unknown keys are errors; command
//! line flags override the file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Where the file is looked for when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/residency/sensord.toml";

fn default_policy() -> PathBuf {
    PathBuf::from("/etc/residency/policy.toml")
}
fn default_socket() -> PathBuf {
    PathBuf::from(crate::api::DEFAULT_SOCKET)
}
fn default_socket_mode() -> String {
    "600".into()
}
fn default_lock() -> PathBuf {
    PathBuf::from("/run/residency/sensord.lock")
}
fn default_history() -> usize {
    10_000
}
fn default_bpf_dir() -> PathBuf {
    PathBuf::from(crate::kernel::pins::DEFAULT_DIR)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/residency/state")
}
fn default_spool() -> PathBuf {
    PathBuf::from("/var/lib/residency/spool")
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The residency policy.
    #[serde(default = "default_policy")]
    pub policy: PathBuf,
    /// Region data (directory, .mmdb or .csv); default: the packaged dataset.
    pub regions: Option<PathBuf>,
    /// AWS ip-ranges.json.
    pub aws_ranges: Option<PathBuf>,
    /// cgroup v2 directory to attach to; default: the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    /// "human" or "json".
    pub log_format: Option<String>,
    /// Flow and close records kept in memory for ListFlows.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Violations kept in memory for ListViolations (and ListFlows), apart
    /// from flow records so that these never push one out.
    #[serde(default = "default_history")]
    pub violation_history: usize,
    /// Single-instance lock file.
    #[serde(default = "default_lock")]
    pub lock: PathBuf,
    /// The pinned kernel state (bpffs): programs, links and maps that keep
    /// enforcing while no agent runs.
    #[serde(default = "default_bpf_dir")]
    pub bpf_dir: PathBuf,
    /// Operator state that outlives the agent (modes set over the API).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The agent API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Delivery to the collector.
    #[serde(default)]
    pub collector: CollectorConfig,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket path.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Its file mode (octal). Only root is served whatever the mode.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Optional TCP listener with mutual TLS.
    pub tls: Option<TlsConfig>,
}

/// `[api.tls]`: the API on TCP with mutual TLS. Clients must present a
/// certificate signed by `client_ca`; those whose common name or DNS name is in
/// `operators` may change modes, tags and policy, those in `viewers` may only
/// read, and every other certificate (another host's, say: the same CA signs
/// them all) is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address to listen on, e.g. "0.0.0.0:50443".
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA that signs client certificates (PEM).
    pub client_ca: PathBuf,
    /// Client names (certificate CN or DNS SAN) with the operator role.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Client names with the read-only viewer role.
    #[serde(default)]
    pub viewers: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            tls: None,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for the Prometheus text endpoint (`/metrics`); off when unset.
    pub listen: Option<SocketAddr>,
}

/// `[collector]`: delivery of violations, audit and gap records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Collector endpoints, tried in order.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Durable outbound spool.
    #[serde(default = "default_spool")]
    pub spool_dir: PathBuf,
    /// Mutual TLS to the collector (endpoints are then https://).
    pub tls: Option<CollectorTlsConfig>,
    /// Without TLS: a file holding this agent's token, which the collector
    /// lists for this host (`collectord --agent-tokens`).
    pub token_file: Option<PathBuf>,
    /// How often the agent signs an attestation of what it recorded ("5m";
    /// "0": never). Signed with the TLS key, or without TLS with an Ed25519
    /// key of its own (`attestation.key` in the state directory).
    #[serde(default = "default_attestation_interval")]
    pub attestation_interval: String,
}

fn default_attestation_interval() -> String {
    "5m".into()
}

/// `[collector.tls]`: this agent's certificate (its common name must be the
/// policy's host id: the collector takes the host's identity from it) and the
/// CA that signed the collector's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorTlsConfig {
    /// CA that signs the collector's certificate (PEM).
    pub ca: PathBuf,
    /// This agent's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The name to expect in the collector's certificate when it differs from
    /// the endpoint's host name.
    pub server_name: Option<String>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            endpoints: Vec::new(),
            spool_dir: default_spool(),
            tls: None,
            token_file: None,
            attestation_interval: default_attestation_interval(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("an empty file is a valid config")
    }
}

/// A config file problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {msg}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        msg: String,
    },
}

/// Parses config text (`path` for messages).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let cfg: Config = toml::from_str(text).map_err(|e| {
        let (line, col) = e
            .span()
            .map_or((1, 1), |s| crate::policy::validate::line_col(text, s.start));
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            col,
            msg: e.message().trim().to_owned(),
        }
    })?;
    if let Some(f) = &cfg.log_format
        && f != "human"
        && f != "json"
    {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            line: 0,
            col: 0,
            msg: format!("log_format {f:?}: write \"human\" or \"json\""),
        });
    }
    let scheme = if cfg.collector.tls.is_some() {
        "https://"
    } else {
        "http://"
    };
    if let Some(e) = cfg
        .collector
        .endpoints
        .iter()
        .find(|e| !e.starts_with(scheme))
    {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            line: 0,
            col: 0,
            msg: format!(
                "[collector] endpoint {e:?} must start with {scheme} ({})",
                if cfg.collector.tls.is_some() {
                    "[collector.tls] is set"
                } else {
                    "add [collector.tls] for https://"
                }
            ),
        });
    }
    if !cfg.collector.endpoints.is_empty()
        && cfg.collector.tls.is_none()
        && cfg.collector.token_file.is_none()
    {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            line: 0,
            col: 0,
            msg: "[collector] needs a way to prove this host's identity: [collector.tls] (mutual TLS) or token_file (a token the collector lists for this host with --agent-tokens)".into(),
        });
    }
    Ok(cfg)
}

/// Reads the config: `explicit` must exist; the default path may be absent
/// (then every default applies).
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_PATH));
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Config::default())
        }
        Err(source) => Err(ConfigError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::default();
        assert_eq!(c.policy, PathBuf::from("/etc/residency/policy.toml"));
        assert_eq!(c.api.socket_mode, "600");
        assert!(c.metrics.listen.is_none());
        let c = parse(
            Path::new("s.toml"),
            "policy = \"/p.toml\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(c.policy, PathBuf::from("/p.toml"));
        assert_eq!(c.metrics.listen.unwrap().port(), 9464);
    }

    #[test]
    fn unknown_keys_are_located() {
        let e = parse(Path::new("s.toml"), "[api]\nsocket_path = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.toml:2:1: unknown field `socket_path`"),
            "{e}"
        );
    }

    #[test]
    fn endpoint_schemes_follow_tls() {
        let e = parse(
            Path::new("s.toml"),
            "[collector]\nendpoints = [\"https://c:1\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("must start with http://"), "{e}");
        let e = parse(
            Path::new("s.toml"),
            "[collector]\nendpoints = [\"http://c:1\"]\n[collector.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("must start with https://"), "{e}");
        parse(
            Path::new("s.toml"),
            "[collector]\nendpoints = [\"https://c:1\"]\n[collector.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
    }

    /// The shipped default config must always load.
    #[test]
    fn packaged_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sensord.toml");
        load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    }
}
