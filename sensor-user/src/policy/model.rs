//! The policy file format. `deny_unknown_fields` everywhere: a misspelt key is an
//! error, never silently ignored. Values that need checking beyond their type
//! are kept `Spanned` so errors can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Host-wide settings.
    #[serde(default)]
    pub host: HostSection,
    /// The operator's own data centres, by name.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteSection>,
    /// Data classes, by name.
    #[serde(default)]
    pub classes: BTreeMap<String, Spanned<ClassSection>>,
    /// Which processes carry which class.
    #[serde(default)]
    pub selectors: Vec<Spanned<SelectorSection>>,
    /// Destinations that are sources of a class's data.
    #[serde(default)]
    pub taint_sources: Vec<Spanned<TaintSection>>,
}

/// `[host]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Host identity in records (default: the hostname).
    pub id: Option<String>,
    /// Mode of classes that set none (default: monitor).
    pub default_mode: Option<Spanned<String>>,
    /// `violation` (default) or `allow`: what a destination no data covers is.
    pub unknown_destinations: Option<Spanned<String>>,
    /// Window for folding repeated flows, e.g. "10s" (default), "500ms", "0".
    pub aggregation_interval: Option<Spanned<String>>,
    /// Destinations that are never violations: collector, DNS resolvers,
    /// control plane.
    #[serde(default)]
    pub failsafe: Vec<Spanned<String>>,
    /// How long the agent may be silent before classes' `on_agent_loss`
    /// takes effect, e.g. "30s" (default).
    pub agent_loss_timeout: Option<Spanned<String>>,
    /// Resolvers (prefixes) whose answers count for `allowed_names` and
    /// `denied_names` (default: the nameservers of /etc/resolv.conf and
    /// loopback). Answers from elsewhere still name records.
    pub trusted_resolvers: Option<Vec<Spanned<String>>>,
}

/// `[sites.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// The site's prefixes.
    pub cidrs: Vec<Spanned<String>>,
    /// Its country.
    pub country: Spanned<String>,
}

/// `[classes.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSection {
    /// Kernel class id 0..64 (default: the next free one, in name order).
    pub id: Option<Spanned<u32>>,
    /// off | monitor | enforce (default: host.default_mode).
    pub mode: Option<Spanned<String>>,
    /// keep (default) | deny | allow: what the kernel does for this class
    /// while the agent is gone longer than `host.agent_loss_timeout`.
    pub on_agent_loss: Option<Spanned<String>>,
    /// Whether processes of the class may open raw and ICMP (ping) sockets,
    /// which no destination hook judges (default false: refused in enforce
    /// mode, reported in monitor mode).
    pub allow_raw_sockets: Option<bool>,
    /// report (default) | kill: what an AF_PACKET socket of a process of the
    /// class gets in enforce mode. The kernel offers no hook to refuse one
    /// here; "kill" sends SIGKILL before the socket() call returns.
    pub packet_sockets: Option<Spanned<String>>,
    /// Whether a local process (loopback, the host's own addresses) that
    /// accepts a connection from a process of the class carries the class
    /// too, so a sidecar or proxy is judged for what it forwards (default
    /// false).
    pub propagate_over_local: Option<bool>,
    /// Country codes and groups (EU27, EEA, EU_ADEQUACY).
    #[serde(default)]
    pub allowed_jurisdictions: Vec<Spanned<String>>,
    /// Sites (by name) the data may go to.
    #[serde(default)]
    pub allowed_sites: Vec<Spanned<String>>,
    /// Prefixes always allowed (they override region data).
    #[serde(default)]
    pub allowed_cidrs: Vec<Spanned<String>>,
    /// Prefixes always denied (they override region data).
    #[serde(default)]
    pub denied_cidrs: Vec<Spanned<String>>,
    /// Names ("api.example.com", "*.example.com" for the names below it)
    /// whose addresses a process of the class may reach for the answer's
    /// TTL, whatever their country.
    #[serde(default)]
    pub allowed_names: Vec<Spanned<String>>,
    /// Names whose addresses are denied for the class, whatever their
    /// country (a denied name wins over an allowed one).
    #[serde(default)]
    pub denied_names: Vec<Spanned<String>>,
}

/// `[[selectors]]`: exactly one of cgroup, unit, container, exe, uid.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorSection {
    /// The class processes get.
    pub class: Spanned<String>,
    /// A cgroup v2 path, relative to the cgroup v2 mount
    /// ("/system.slice/api.service").
    pub cgroup: Option<Spanned<String>>,
    /// A systemd unit with a cgroup ("api.service", "app.slice"), wherever
    /// in the cgroup tree it runs.
    pub unit: Option<Spanned<String>>,
    /// A container id or a prefix of it (at least 6 hex digits), under any
    /// runtime's cgroup naming (docker, containerd, cri-o, podman).
    pub container: Option<Spanned<String>>,
    /// An executable's absolute path (matched by file identity).
    pub exe: Option<Spanned<String>>,
    /// A real uid.
    pub uid: Option<Spanned<u32>>,
}

/// `[[taint_sources]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaintSection {
    /// The class a process gets by connecting.
    pub class: Spanned<String>,
    /// The source's prefix.
    pub cidr: Spanned<String>,
    /// "5432", "5000-5100" or "*" (default).
    pub ports: Option<Spanned<String>>,
}
