//! Reading a policy file into a checked [`Policy`]. Every problem found is
//! reported (not just the first), each with file, line and column and what to
//! write instead; a policy with any problem is rejected whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use residency_proto::names::NamePattern;
use sensor_common::policy::capacity;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::model::{ClassSection, PolicyFile, SelectorSection};
use crate::{
    kernel::verdicts::Mode,
    regions::{Country, countries},
    system::cgroup_tree::NamedCgroup,
};

/// The shortest container id prefix a selector takes (`docker ps` prints 12).
pub const MIN_CONTAINER_PREFIX: usize = 6;

/// Whether `name` is a systemd unit name of a type that has a cgroup.
fn valid_unit(name: &str) -> bool {
    let stem = [".service", ".scope", ".slice"]
        .iter()
        .find_map(|t| name.strip_suffix(t));
    stem.is_some_and(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
    })
}

/// `host.agent_loss_timeout` when the policy sets none.
pub const DEFAULT_AGENT_LOSS_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub country: Country,
}

/// A checked class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub id: u8,
    pub name: String,
    pub mode: Mode,
    /// Every allowed country, groups expanded.
    pub allowed_countries: BTreeSet<Country>,
    /// As written (codes and group names), for explanations.
    pub allowed_jurisdictions: Vec<String>,
    /// Indices into `Policy::sites`.
    pub allowed_sites: Vec<usize>,
    pub allowed_cidrs: Vec<IpNet>,
    pub denied_cidrs: Vec<IpNet>,
    /// What the kernel does for this class while the agent is gone.
    pub on_agent_loss: OnAgentLoss,
    /// Raw and ICMP sockets are allowed (`allow_raw_sockets`).
    pub allow_raw_sockets: bool,
    /// AF_PACKET sockets kill the process in enforce mode (`packet_sockets = "kill"`).
    pub kill_packet_sockets: bool,
    /// Local peers that accept from the class's processes carry it (`propagate_over_local`).
    pub propagate_over_local: bool,
    /// Names whose answers' addresses are allowed, and denied.
    pub allowed_names: Vec<NamePattern>,
    pub denied_names: Vec<NamePattern>,
}

impl Class {
    /// Whether the class rules on names.
    pub fn has_names(&self) -> bool {
        !self.allowed_names.is_empty() || !self.denied_names.is_empty()
    }
}

/// A class's declared failure mode: what the kernel does for it when the
/// agent has not heartbeated for `Host::agent_loss_timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnAgentLoss {
    /// Keep enforcing the last policy (the pinned programs and maps do).
    #[default]
    Keep,
    /// Fail closed: tagged processes may reach only failsafe destinations.
    Deny,
    /// Fail open: nothing is denied (still reported); the agent records a gap
    /// for the time it was away.
    Allow,
}

impl fmt::Display for OnAgentLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnAgentLoss::Keep => "keep",
            OnAgentLoss::Deny => "deny",
            OnAgentLoss::Allow => "allow",
        })
    }
}

/// What a selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorKind {
    /// A cgroup path relative to the cgroup v2 mount.
    Cgroup(String),
    /// A cgroup by name: a systemd unit or a container id prefix, found
    /// wherever it is in the cgroup tree.
    Named(NamedCgroup),
    /// An executable's absolute path.
    Exe(PathBuf),
    /// A real uid.
    Uid(u32),
}

/// A checked selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub class: u8,
    pub kind: SelectorKind,
}

/// A checked taint source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub class: u8,
    pub net: IpNet,
    pub ports: RangeInclusive<u16>,
}

/// Host settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub id: String,
    pub default_mode: Mode,
    pub unknown_is_violation: bool,
    pub aggregation: Duration,
    pub failsafe: Vec<IpNet>,
    /// Silence after which classes' `on_agent_loss` takes effect.
    pub agent_loss_timeout: Duration,
    /// Resolvers whose answers count for name rules (`None`: the system's,
    /// see `dns::rules::system_resolvers`).
    pub trusted_resolvers: Option<Vec<IpNet>>,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub source: PathBuf,
    /// SHA-256 of the file's bytes (hex): the policy version in every status.
    pub hash: String,
    pub host: Host,
    pub sites: Vec<Site>,
    pub classes: Vec<Class>,
    pub selectors: Vec<Selector>,
    pub taint: Vec<Taint>,
}

impl Policy {
    /// A class by name.
    pub fn class(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

/// Every problem of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    pub file: PathBuf,
    pub diags: Vec<Diagnostic>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diags.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file.display(), d.line, d.col, d.msg)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).locate(text, offset)
}

/// Byte offsets of the starts of a text's lines, for locating many
/// diagnostics in one pass over the text (a 2 MB policy with thousands of
/// problems is located in linear time, not one rescan per problem).
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// 1-based line and column (in characters) of `offset`.
    fn locate(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|s| *s <= offset);
        let start = self.starts[line - 1];
        let col = text.get(start..offset).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }
}

struct Checker<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
    /// Built at the first diagnostic.
    lines: Option<LineIndex>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let text = self.text;
        let (line, col) = self
            .lines
            .get_or_insert_with(|| LineIndex::new(text))
            .locate(text, span.start);
        self.diags.push(Diagnostic {
            line,
            col,
            msg: msg.into(),
        });
    }

    /// Refuses more than `limit` distinct `keys` (as written; duplicates share
    /// a kernel entry), pointing at the first one past the limit.
    fn capacity<'k>(
        &mut self,
        keys: impl Iterator<Item = (&'k str, Range<usize>)>,
        limit: u32,
        msg: impl FnOnce(usize) -> String,
    ) {
        let mut seen = std::collections::HashSet::new();
        let mut first_over = None;
        for (k, span) in keys {
            if seen.insert(k) && seen.len() == limit as usize + 1 {
                first_over = Some(span);
            }
        }
        if let Some(span) = first_over {
            self.err(span, msg(seen.len()));
        }
    }

    fn cidr(&mut self, s: &Spanned<String>, what: &str) -> Option<IpNet> {
        let v = s.get_ref().trim();
        let parsed = IpNet::from_str(v).or_else(|_| {
            // A bare address is a /32 or /128.
            IpAddr::from_str(v).map(IpNet::from)
        });
        match parsed {
            Ok(n) if n.trunc() == n => Some(n),
            Ok(n) => {
                self.err(
                    s.span(),
                    format!("{what} {v:?} has host bits set: write {} (or the address alone for one host)", n.trunc()),
                );
                None
            }
            Err(_) => {
                self.err(s.span(), format!("{what} {v:?} is not a prefix: write e.g. \"10.1.0.0/16\" or \"2001:db8::/32\""));
                None
            }
        }
    }

    /// A class's name list, each entry checked where it is written.
    fn names(&mut self, list: &[Spanned<String>], class: &str, key: &str) -> Vec<NamePattern> {
        let mut out = Vec::new();
        for raw in list {
            match NamePattern::parse(raw.get_ref()) {
                Ok(p) if out.contains(&p) => {}
                Ok(p) => out.push(p),
                Err(e) => self.err(raw.span(), format!("class {class}: {key}: {e}")),
            }
        }
        out
    }

    fn mode(&mut self, s: &Spanned<String>) -> Option<Mode> {
        match Mode::from_str(s.get_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(s.span(), e);
                None
            }
        }
    }

    fn country(&mut self, s: &Spanned<String>) -> Option<Country> {
        let v = s.get_ref();
        if countries::is_country(v) {
            return Country::parse(v);
        }
        let hint = if countries::is_country(&v.to_ascii_uppercase()) {
            format!("write {:?} (upper case)", v.to_ascii_uppercase())
        } else {
            "use an ISO 3166-1 alpha-2 code such as \"IE\" or \"NO\"".to_owned()
        };
        self.err(s.span(), format!("unknown country code {v:?}: {hint}"));
        None
    }
}

/// Parses a duration in the product's one syntax ("10s", "500ms", "2m",
/// "1h", "7d", "0"; see `residency_proto::time`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    residency_proto::time::parse_duration(s).ok()
}

/// Parses "5432", "5000-5100" or "*".
pub fn parse_ports(s: &str) -> Option<RangeInclusive<u16>> {
    let s = s.trim();
    if s == "*" {
        return Some(0..=u16::MAX);
    }
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some(a..=b)
        }
        None => s.parse().ok().map(|p| p..=p),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Reads and checks a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyErrors {
        file: path.to_owned(),
        diags: vec![Diagnostic {
            line: 0,
            col: 0,
            msg: format!("cannot read the policy: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Checks policy text (`path` names it in messages).
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyErrors> {
    let fail = |diags| PolicyErrors {
        file: path.to_owned(),
        diags,
    };
    let file: PolicyFile = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        fail(vec![Diagnostic {
            line,
            col,
            msg: e.message().trim().to_owned(),
        }])
    })?;
    let mut c = Checker {
        text,
        diags: Vec::new(),
        lines: None,
    };

    // Host.
    let default_mode = file
        .host
        .default_mode
        .as_ref()
        .and_then(|m| c.mode(m))
        .unwrap_or(Mode::Monitor);
    let unknown_is_violation = match file.host.unknown_destinations.as_ref() {
        None => true,
        Some(s) => match s.get_ref().as_str() {
            "violation" => true,
            "allow" => false,
            other => {
                c.err(
                    s.span(),
                    format!("unknown_destinations {other:?}: write \"violation\" or \"allow\""),
                );
                true
            }
        },
    };
    let aggregation = match file.host.aggregation_interval.as_ref() {
        None => Duration::from_secs(10),
        Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|| {
            c.err(s.span(), format!("aggregation_interval {:?}: write a duration like \"10s\", \"500ms\", \"2m\" or \"0\"", s.get_ref()));
            Duration::from_secs(10)
        }),
    };
    let failsafe: Vec<IpNet> = file
        .host
        .failsafe
        .iter()
        .filter_map(|s| c.cidr(s, "failsafe"))
        .collect();
    let room = capacity::FAILSAFE - capacity::FAILSAFE_HOST_RESERVE;
    c.capacity(
        file.host.failsafe.iter().map(|s| (s.get_ref().trim(), s.span())),
        room,
        |n| format!("host.failsafe: {n} distinct prefixes; the kernel holds {room} for the policy ({} in all, {} kept for the host's own addresses): merge them into fewer, wider prefixes", capacity::FAILSAFE, capacity::FAILSAFE_HOST_RESERVE),
    );
    let agent_loss_timeout = match file.host.agent_loss_timeout.as_ref() {
        None => DEFAULT_AGENT_LOSS_TIMEOUT,
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if d >= Duration::from_secs(2) => d,
            _ => {
                c.err(s.span(), format!("agent_loss_timeout {:?}: write a duration of at least \"2s\" (the agent heartbeats every second), e.g. \"30s\"", s.get_ref()));
                DEFAULT_AGENT_LOSS_TIMEOUT
            }
        },
    };
    let trusted_resolvers = file.host.trusted_resolvers.as_ref().map(|list| {
        list.iter()
            .filter_map(|s| c.cidr(s, "trusted_resolvers entry"))
            .collect()
    });
    let host = Host {
        id: file
            .host
            .id
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(hostname),
        default_mode,
        unknown_is_violation,
        aggregation,
        failsafe,
        agent_loss_timeout,
        trusted_resolvers,
    };

    // Sites.
    let mut sites = Vec::new();
    let mut site_nets: Vec<(IpNet, usize, Range<usize>)> = Vec::new();
    for (name, s) in &file.sites {
        let country = c.country(&s.country);
        let mut cidrs = Vec::new();
        for raw in &s.cidrs {
            if let Some(n) = c.cidr(raw, &format!("site {name} cidr")) {
                site_nets.push((n, sites.len(), raw.span()));
                cidrs.push(n);
            }
        }
        sites.push(Site {
            name: name.clone(),
            cidrs,
            country: country.unwrap_or(Country(*b"??")),
        });
    }
    // Overlapping sites would make an address belong to two data centres.
    for (i, (a, ai, _)) in site_nets.iter().enumerate() {
        for (b, bi, span) in &site_nets[i + 1..] {
            if ai != bi && (a.contains(&b.network()) || b.contains(&a.network())) {
                let msg = format!(
                    "site {} prefix {b} overlaps site {} prefix {a}: an address can be in one site only; split the prefixes",
                    sites[*bi].name, sites[*ai].name
                );
                c.err(span.clone(), msg);
            }
        }
    }

    // Classes: ids first (explicit ones are fixed, the rest get the free ones in
    // name order).
    let mut used: BTreeMap<u32, String> = BTreeMap::new();
    for (name, cls) in &file.classes {
        if let Some(id) = &cls.get_ref().id {
            let v = *id.get_ref();
            if v >= sensor_common::policy::MAX_CLASSES {
                c.err(
                    id.span(),
                    format!("class {name}: id {v} is out of range: class ids are 0..64"),
                );
            } else if let Some(other) = used.insert(v, name.clone()) {
                c.err(id.span(), format!("class {name}: id {v} is already used by class {other}; give each class its own id"));
            }
        }
    }
    let mut next_free = 0u32;
    let mut classes = Vec::new();
    for (name, cls) in &file.classes {
        let section: &ClassSection = cls.get_ref();
        let id = match &section.id {
            Some(id) => *id.get_ref(),
            None => {
                while used.contains_key(&next_free) {
                    next_free += 1;
                }
                if next_free >= sensor_common::policy::MAX_CLASSES {
                    c.err(
                        cls.span(),
                        format!("class {name}: more than 64 classes; the kernel holds 64"),
                    );
                }
                used.insert(next_free, name.clone());
                next_free
            }
        };
        let mode = section
            .mode
            .as_ref()
            .and_then(|m| c.mode(m))
            .unwrap_or(default_mode);
        let on_agent_loss = match section.on_agent_loss.as_ref() {
            None => OnAgentLoss::Keep,
            Some(s) => match s.get_ref().as_str() {
                "keep" => OnAgentLoss::Keep,
                "deny" => OnAgentLoss::Deny,
                "allow" => OnAgentLoss::Allow,
                other => {
                    c.err(
                        s.span(),
                        format!("class {name}: on_agent_loss {other:?}: write \"keep\" (the kernel goes on enforcing the last policy), \"deny\" (fail closed) or \"allow\" (fail open)"),
                    );
                    OnAgentLoss::Keep
                }
            },
        };
        let kill_packet_sockets = match section.packet_sockets.as_ref() {
            None => false,
            Some(s) => match s.get_ref().as_str() {
                "report" => false,
                "kill" => true,
                other => {
                    c.err(
                        s.span(),
                        format!("class {name}: packet_sockets {other:?}: write \"report\" (recorded as a violation) or \"kill\" (in enforce mode the process is killed before socket() returns)"),
                    );
                    false
                }
            },
        };
        let mut allowed_countries = BTreeSet::new();
        let mut written = Vec::new();
        for j in &section.allowed_jurisdictions {
            let v = j.get_ref();
            written.push(v.clone());
            if let Some(members) = countries::group(v) {
                allowed_countries.extend(members.iter().filter_map(|m| Country::parse(m)));
            } else if countries::is_country(v) {
                allowed_countries.extend(Country::parse(v));
            } else {
                let upper = v.to_ascii_uppercase();
                let hint = if countries::is_country(&upper) || countries::group(&upper).is_some() {
                    format!("write {upper:?}")
                } else {
                    format!(
                        "use ISO country codes (\"IE\", \"NO\") or a group: {}",
                        countries::GROUP_NAMES.join(", ")
                    )
                };
                c.err(
                    j.span(),
                    format!("class {name}: unknown jurisdiction {v:?}: {hint}"),
                );
            }
        }
        let mut allowed_sites = Vec::new();
        for s in &section.allowed_sites {
            match sites.iter().position(|x| &x.name == s.get_ref()) {
                Some(i) => allowed_sites.push(i),
                None => {
                    let known: Vec<&str> = sites.iter().map(|x| x.name.as_str()).collect();
                    c.err(
                        s.span(),
                        format!(
                            "class {name}: no site named {:?}; sites: {}",
                            s.get_ref(),
                            if known.is_empty() {
                                "(none defined; add a [sites.NAME] table)".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
        }
        let allowed: Vec<(IpNet, Range<usize>)> = section
            .allowed_cidrs
            .iter()
            .filter_map(|s| c.cidr(s, "allowed_cidrs entry").map(|n| (n, s.span())))
            .collect();
        let denied: Vec<(IpNet, Range<usize>)> = section
            .denied_cidrs
            .iter()
            .filter_map(|s| c.cidr(s, "denied_cidrs entry").map(|n| (n, s.span())))
            .collect();
        for (d, span) in &denied {
            if allowed.iter().any(|(a, _)| a == d) {
                c.err(
                    span.clone(),
                    format!("class {name}: {d} is both allowed and denied; keep it in one list"),
                );
            }
        }
        let allowed_names = c.names(&section.allowed_names, name, "allowed_names");
        let denied_names = c.names(&section.denied_names, name, "denied_names");
        for raw in &section.denied_names {
            if let Ok(d) = NamePattern::parse(raw.get_ref())
                && allowed_names.contains(&d)
            {
                c.err(
                    raw.span(),
                    format!(
                        "class {name}: name {d} is both allowed and denied; keep it in one list"
                    ),
                );
            }
        }
        classes.push(Class {
            id: id.min(63) as u8,
            name: name.clone(),
            mode,
            allowed_countries,
            allowed_jurisdictions: written,
            allowed_sites,
            allowed_cidrs: allowed.into_iter().map(|(n, _)| n).collect(),
            denied_cidrs: denied.into_iter().map(|(n, _)| n).collect(),
            on_agent_loss,
            allow_raw_sockets: section.allow_raw_sockets.unwrap_or(false),
            kill_packet_sockets,
            propagate_over_local: section.propagate_over_local.unwrap_or(false),
            allowed_names,
            denied_names,
        });
    }
    let class_id = |c: &mut Checker, name: &Spanned<String>, what: &str| -> Option<u8> {
        let found = classes
            .iter()
            .find(|x| &x.name == name.get_ref())
            .map(|x| x.id);
        if found.is_none() {
            let known: Vec<&str> = classes.iter().map(|x| x.name.as_str()).collect();
            c.err(
                name.span(),
                format!(
                    "{what} names class {:?}, which does not exist; classes: {}",
                    name.get_ref(),
                    if known.is_empty() {
                        "(none: add a [classes.NAME] table)".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        found
    };

    // Selectors.
    let mut selectors = Vec::new();
    for sel in &file.selectors {
        let s = sel.get_ref();
        let class = class_id(&mut c, &s.class, "selector");
        let kinds = [
            s.cgroup.is_some(),
            s.unit.is_some(),
            s.container.is_some(),
            s.exe.is_some(),
            s.uid.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if kinds != 1 {
            c.err(sel.span(), "a selector needs exactly one of cgroup, unit, container, exe, uid (write one [[selectors]] table per match)");
            continue;
        }
        let kind = if let Some(unit) = &s.unit {
            let u = unit.get_ref();
            if !valid_unit(u) {
                c.err(unit.span(), format!("unit {u:?}: write a systemd unit name with its type, one of .service, .scope or .slice (e.g. \"api.service\"), as `systemctl status` shows it"));
            }
            SelectorKind::Named(NamedCgroup::Unit(u.clone()))
        } else if let Some(ctr) = &s.container {
            let id = ctr.get_ref();
            if !(MIN_CONTAINER_PREFIX..=64).contains(&id.len())
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                c.err(ctr.span(), format!("container {id:?}: write the container id or a prefix of it, {MIN_CONTAINER_PREFIX} to 64 lowercase hex digits, as `docker ps` or `crictl ps` prints it"));
            }
            SelectorKind::Named(NamedCgroup::Container(id.clone()))
        } else if let Some(cg) = &s.cgroup {
            if !cg.get_ref().starts_with('/') {
                c.err(cg.span(), format!("cgroup {:?}: write the path from the cgroup v2 root, starting with / (e.g. \"/system.slice/api.service\")", cg.get_ref()));
            }
            SelectorKind::Cgroup(cg.get_ref().clone())
        } else if let Some(exe) = &s.exe {
            if !exe.get_ref().starts_with('/') {
                c.err(
                    exe.span(),
                    format!("exe {:?}: write an absolute path", exe.get_ref()),
                );
            }
            SelectorKind::Exe(PathBuf::from(exe.get_ref()))
        } else {
            SelectorKind::Uid(*s.uid.as_ref().expect("counted above").get_ref())
        };
        if let Some(class) = class {
            selectors.push(Selector { class, kind });
        }
    }

    // Taint sources.
    let mut taint = Vec::new();
    for t in &file.taint_sources {
        let s = t.get_ref();
        let class = class_id(&mut c, &s.class, "taint source");
        let net = c.cidr(&s.cidr, "taint source cidr");
        let ports = match &s.ports {
            None => Some(0..=u16::MAX),
            Some(p) => parse_ports(p.get_ref()).or_else(|| {
                c.err(
                    p.span(),
                    format!(
                        "ports {:?}: write one port (\"5432\"), a range (\"5000-5100\") or \"*\"",
                        p.get_ref()
                    ),
                );
                None
            }),
        };
        if let (Some(class), Some(net), Some(ports)) = (class, net, ports) {
            taint.push(Taint { class, net, ports });
        }
    }

    // Kernel capacities (see sensor_common::policy::capacity).
    let cap = capacity::SELECTORS;
    for (kind, pick) in [
        (
            "cgroup",
            (|s: &SelectorSection| s.cgroup.as_ref().map(|v| (v.get_ref().clone(), v.span())))
                as fn(&SelectorSection) -> Option<(String, Range<usize>)>,
        ),
        ("exe", |s: &SelectorSection| {
            s.exe.as_ref().map(|v| (v.get_ref().clone(), v.span()))
        }),
        // Each names at least one cgroup: a lower bound of what they need.
        ("unit or container", |s: &SelectorSection| {
            s.unit
                .as_ref()
                .or(s.container.as_ref())
                .map(|v| (v.get_ref().clone(), v.span()))
        }),
        ("uid", |s: &SelectorSection| {
            s.uid.as_ref().map(|v| (v.get_ref().to_string(), v.span()))
        }),
    ] {
        let keys: Vec<(String, Range<usize>)> = file
            .selectors
            .iter()
            .filter_map(|s| pick(s.get_ref()))
            .collect();
        c.capacity(
            keys.iter().map(|(k, span)| (k.as_str(), span.clone())),
            cap,
            |n| format!("{n} distinct {kind} selectors; the kernel holds {cap}: select a parent cgroup, a uid or fewer binaries instead"),
        );
    }
    let cap = capacity::TAINT;
    c.capacity(
        file.taint_sources
            .iter()
            .map(|t| (t.get_ref().cidr.get_ref().trim(), t.span())),
        cap,
        |n| format!("{n} distinct taint source prefixes; the kernel holds {cap}: merge them into fewer, wider prefixes"),
    );

    if !c.diags.is_empty() {
        c.diags.sort_by_key(|d| (d.line, d.col));
        return Err(fail(c.diags));
    }
    let hash = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Policy {
        source: path.to_owned(),
        hash,
        host,
        sites,
        classes,
        selectors,
        taint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Policy, String> {
        parse(Path::new("p.toml"), text).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[host]
id = "dub1-web-17"
default_mode = "monitor"
aggregation_interval = "5s"
failsafe = ["10.0.0.53/32"]

[sites.dub1]
cidrs = ["10.1.0.0/16"]
country = "IE"

[classes.eu_personal]
mode = "enforce"
allowed_jurisdictions = ["EEA", "CH"]
allowed_sites = ["dub1"]
denied_cidrs = ["52.94.0.0/16"]

[[selectors]]
class = "eu_personal"
cgroup = "/system.slice/api.service"

[[taint_sources]]
class = "eu_personal"
cidr = "10.20.0.0/16"
ports = "5432"
"#;

    #[test]
    fn a_good_policy() {
        let p = check(GOOD).unwrap();
        assert_eq!(p.host.id, "dub1-web-17");
        assert_eq!(p.host.aggregation, Duration::from_secs(5));
        let c = p.class("eu_personal").unwrap();
        assert_eq!(c.id, 0);
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.allowed_countries.len(), 31);
        assert_eq!(p.taint[0].ports, 5432..=5432);
        assert_eq!(p.hash.len(), 64);
    }

    #[test]
    fn name_rules_are_checked_where_written() {
        let good = check(
            "[host]\ntrusted_resolvers = [\"10.0.0.2\"]\n[classes.eu]\nallowed_names = [\"*.S3.eu-west-1.amazonaws.com.\", \"api.example.com\"]\ndenied_names = [\"*.example.net\"]\n",
        )
        .unwrap();
        let c = good.class("eu").unwrap();
        assert_eq!(
            c.allowed_names[0].to_string(),
            "*.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(c.denied_names.len(), 1);
        assert_eq!(
            good.host.trusted_resolvers,
            Some(vec!["10.0.0.2/32".parse().unwrap()])
        );
        let e = check(
            "[classes.eu]\nallowed_names = [\"a..b\", \"x.example\"]\ndenied_names = [\"X.example\"]\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines[0].starts_with(
                "p.toml:2:18: class eu: allowed_names: name \"a..b\" is not a DNS name"
            ),
            "{e}"
        );
        assert!(
            lines[1]
                .starts_with("p.toml:3:17: class eu: name x.example is both allowed and denied"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let e = check("[host]\nid = \"x\"\ndefualt_mode = \"enforce\"\n").unwrap_err();
        assert!(
            e.starts_with("p.toml:3:1: unknown field `defualt_mode`"),
            "{e}"
        );
    }

    #[test]
    fn every_semantic_error_is_reported_with_a_fix() {
        let text = r#"
[sites.dub1]
cidrs = ["10.1.0.0/16"]
country = "IRL"

[classes.eu]
allowed_jurisdictions = ["EU28", "ie"]
allowed_cidrs = ["10.9.0.1/16", "52.94.0.0/16"]
denied_cidrs = ["52.94.0.0/16", "not-a-cidr"]

[[selectors]]
class = "us"
uid = 1000
"#;
        let e = check(text).unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines[0].starts_with("p.toml:4:11: unknown country code \"IRL\""),
            "{e}"
        );
        assert!(
            lines[1].contains("p.toml:7:26: class eu: unknown jurisdiction \"EU28\""),
            "{e}"
        );
        assert!(
            lines[2].contains("7:34: class eu: unknown jurisdiction \"ie\": write \"IE\""),
            "{e}"
        );
        assert!(
            lines[3].contains(
                "8:18: allowed_cidrs entry \"10.9.0.1/16\" has host bits set: write 10.9.0.0/16"
            ),
            "{e}"
        );
        assert!(
            lines[4].contains("9:17: class eu: 52.94.0.0/16 is both allowed and denied"),
            "{e}"
        );
        assert!(
            lines[5].contains("9:33: denied_cidrs entry \"not-a-cidr\" is not a prefix"),
            "{e}"
        );
        assert!(
            lines[6]
                .contains("12:9: selector names class \"us\", which does not exist; classes: eu"),
            "{e}"
        );
        assert_eq!(lines.len(), 7, "{e}");
    }

    #[test]
    fn unit_and_container_selectors_are_checked_where_written() {
        let text = r#"
[classes.eu]
allowed_jurisdictions = ["EEA"]

[[selectors]]
class = "eu"
unit = "nginx"

[[selectors]]
class = "eu"
container = "4F6BB7"

[[selectors]]
class = "eu"
container = "4f6b"

[[selectors]]
class = "eu"
unit = "api.service"
container = "4f6bb7b2f3a9"
"#;
        let e = check(text).unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines[0]
                .starts_with("p.toml:7:8: unit \"nginx\": write a systemd unit name with its type"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("p.toml:11:13: container \"4F6BB7\": write the container id or a prefix of it, 6 to 64 lowercase hex digits"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("p.toml:15:13: container \"4f6b\""),
            "{e}"
        );
        assert!(
            lines[3].contains(
                "17:1: a selector needs exactly one of cgroup, unit, container, exe, uid"
            ),
            "{e}"
        );
        assert_eq!(lines.len(), 4, "{e}");

        let good = r#"
[classes.eu]
allowed_jurisdictions = ["EEA"]

[[selectors]]
class = "eu"
unit = "user@1000.service"

[[selectors]]
class = "eu"
container = "4f6bb7b2f3a9"
"#;
        let p = check(good).expect("valid");
        assert_eq!(
            p.selectors
                .iter()
                .map(|s| s.kind.clone())
                .collect::<Vec<_>>(),
            vec![
                SelectorKind::Named(NamedCgroup::Unit("user@1000.service".into())),
                SelectorKind::Named(NamedCgroup::Container("4f6bb7b2f3a9".into())),
            ]
        );
    }

    #[test]
    fn overlapping_sites_are_contradictory() {
        let text = "[sites.a]\ncidrs = [\"10.0.0.0/8\"]\ncountry = \"IE\"\n[sites.b]\ncidrs = [\"10.1.0.0/16\"]\ncountry = \"US\"\n";
        let e = check(text).unwrap_err();
        assert!(
            e.contains("5:10: site b prefix 10.1.0.0/16 overlaps site a prefix 10.0.0.0/8"),
            "{e}"
        );
    }

    #[test]
    fn durations_and_ports() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_ports("5000-5100"), Some(5000..=5100));
        assert_eq!(parse_ports("*"), Some(0..=65535));
        assert_eq!(parse_ports("9-1"), None);
    }
    #[test]
    fn policies_beyond_a_kernel_capacity_are_refused_at_the_first_entry_too_many() {
        let sel: String = (0..4097)
            .map(|i| format!("[[selectors]]\nclass = \"c\"\nuid = {i}\n"))
            .collect();
        let text = format!("[classes.c]\nallowed_jurisdictions = [\"EEA\"]\n{sel}");
        let e = check(&text).unwrap_err();
        // The 4,097th selector's uid is on line 2 + 3 * 4096 + 3.
        assert!(
            e.contains(&format!(
                "p.toml:{}:7: 4097 distinct uid selectors; the kernel holds 4096",
                2 + 3 * 4096 + 3
            )),
            "{e}"
        );
        // Duplicates share an entry and do not count.
        let dup: String = (0..5000)
            .map(|_| "[[taint_sources]]\nclass = \"c\"\ncidr = \"10.0.0.0/8\"\n".to_owned())
            .collect();
        check(&format!(
            "[classes.c]\nallowed_jurisdictions = [\"EEA\"]\n{dup}"
        ))
        .unwrap();
        let fs: Vec<String> = (0..3841)
            .map(|i| format!("\"10.0.{}.{}/32\"", i / 256, i % 256))
            .collect();
        let e = check(&format!("[host]\nfailsafe = [{}]\n", fs.join(","))).unwrap_err();
        assert!(
            e.contains("host.failsafe: 3841 distinct prefixes; the kernel holds 3840"),
            "{e}"
        );
    }

    #[test]
    fn the_line_index_locates_like_a_rescan() {
        // The straightforward way, as the oracle.
        let rescan = |text: &str, offset: usize| {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, col)
        };
        let text = "a = 1\n\nbé = \"x\"\nlast";
        let idx = LineIndex::new(text);
        for off in 0..=text.len() {
            if text.is_char_boundary(off) {
                assert_eq!(idx.locate(text, off), rescan(text, off), "offset {off}");
            }
        }
    }
}

#[cfg(test)]
mod example_tests {
    /// The shipped example must always be a valid policy.
    #[test]
    fn example_policy_checks() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
        let p = super::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.classes.len(), 1);
        assert_eq!(p.sites.len(), 3);
        assert_eq!(p.selectors.len(), 3);
        assert_eq!(p.taint.len(), 1);
    }
}
