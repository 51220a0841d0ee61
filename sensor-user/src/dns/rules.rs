//! Name rules: which classes a resolved name allows or denies
//! (`allowed_names`, `denied_names`), and the addresses processes learned for
//! such names, written into the kernel's `NAMES` map as answers arrive.
//!
//! Only answers from trusted resolvers teach the kernel anything: a tagged
//! process that asks a server of its own choosing (one that answers
//! "eu-bucket.example is 198.51.100.7") must not make any address allowed.
//! Every answer still names records (`cache`).
//!
//! The agent mirrors the map: per (process, address) the names that gave it
//! and the masks written. An entry is written again when an answer renews it
//! (a new expiry; the kernel sees it without more ado) and the kernel's
//! cached verdicts are retired (an epoch bump) only when an entry is new or
//! its masks change. An entry stays in the map [`LINGER`] past its expiry,
//! or until its process is gone: the packets of a connection opened under
//! it are judged with it when a reload judges them again.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use ipnet::IpNet;
use residency_proto::names::NamePattern;
use sensor_common::{
    names::{NameKey, NameRule},
    net::to_map_form,
};

use super::{Answer, Resolved, cache::GRACE};
use crate::{kernel::KernelSensor, policy::validate::Policy};

/// How long an entry stays in the kernel map past its expiry.
pub const LINGER: Duration = Duration::from_secs(600);

/// What one class says about names.
#[derive(Debug, Clone)]
struct ClassNames {
    id: u8,
    name: String,
    allowed: Vec<NamePattern>,
    denied: Vec<NamePattern>,
}

/// One class's rule that matched a name (`sensorctl lookup NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRuling {
    pub class: String,
    /// Whether the name is allowed (else denied).
    pub allowed: bool,
    /// The pattern as written (normalised).
    pub pattern: String,
}

/// The policy's name rules.
#[derive(Debug, Clone, Default)]
pub struct NameRules {
    classes: Vec<ClassNames>,
    trusted: Vec<IpNet>,
}

impl NameRules {
    /// The rules of `policy` (its trusted resolvers, or the system's).
    pub fn of(policy: &Policy) -> Self {
        let classes: Vec<ClassNames> = policy
            .classes
            .iter()
            .filter(|c| c.has_names())
            .map(|c| ClassNames {
                id: c.id,
                name: c.name.clone(),
                allowed: c.allowed_names.clone(),
                denied: c.denied_names.clone(),
            })
            .collect();
        let trusted = if classes.is_empty() {
            Vec::new()
        } else {
            policy
                .host
                .trusted_resolvers
                .clone()
                .unwrap_or_else(system_resolvers)
        };
        Self { classes, trusted }
    }

    /// Whether no class rules on names.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The resolvers whose answers count.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether an answer from `server` counts.
    pub fn trusts(&self, server: IpAddr) -> bool {
        let server = server.to_canonical();
        self.trusted.iter().any(|n| n.contains(&server))
    }

    /// The classes that allow and that deny an address resolved through
    /// `names` (the name asked for and its CNAME chain): a class whose rules
    /// match any of them.
    pub fn masks<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> (u64, u64) {
        let (mut allow, mut deny) = (0u64, 0u64);
        for c in &self.classes {
            let hit =
                |list: &[NamePattern]| names.clone().any(|n| list.iter().any(|p| p.matches(n)));
            if hit(&c.denied) {
                deny |= 1 << c.id;
            } else if hit(&c.allowed) {
                allow |= 1 << c.id;
            }
        }
        (allow, deny)
    }

    /// Every class's rule that covers `name`.
    pub fn explain(&self, name: &str) -> Vec<NameRuling> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut out = Vec::new();
        for c in &self.classes {
            let found = |list: &[NamePattern]| {
                list.iter()
                    .find(|p| p.matches(&name))
                    .map(|p| p.to_string())
            };
            if let Some(p) = found(&c.denied) {
                out.push(NameRuling {
                    class: c.name.clone(),
                    allowed: false,
                    pattern: p,
                });
            } else if let Some(p) = found(&c.allowed) {
                out.push(NameRuling {
                    class: c.name.clone(),
                    allowed: true,
                    pattern: p,
                });
            }
        }
        out
    }
}

/// The system's resolvers: the nameservers of /etc/resolv.conf, and loopback
/// (a local cache such as systemd-resolved or dnsmasq).
pub fn system_resolvers() -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("a prefix"),
        "::1/128".parse().expect("a prefix"),
    ];
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    nets.extend(conf.lines().filter_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            .and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok())
            .map(IpNet::from)
    }));
    nets
}

#[derive(Debug, Clone)]
struct Learned {
    /// The names that gave the address (`None`: adopted from an earlier
    /// agent, which knew them).
    what: Option<Arc<Resolved>>,
    rule: NameRule,
}

/// What learning changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Learning {
    /// Entries written.
    pub written: usize,
    /// Entries new or with new masks: the kernel's cached verdicts must go.
    pub changed: bool,
    /// Entries the full map could not take.
    pub refused: usize,
}

/// An entry learned and not written yet.
struct Pending {
    key: NameKey,
    rule: NameRule,
    what: Arc<Resolved>,
}

/// The agent's mirror of the kernel's `NAMES` map.
#[derive(Default)]
pub struct LearnedNames {
    entries: foldhash::HashMap<NameKey, Learned>,
    /// Queued by `learn`, written by `flush`.
    pending: Vec<Pending>,
}

impl LearnedNames {
    /// Takes over what an earlier agent left in the map.
    pub fn adopt(&mut self, sensor: &mut KernelSensor) {
        if let Ok(found) = sensor.name_entries() {
            for (key, rule) in found {
                self.entries.insert(key, Learned { what: None, rule });
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues the addresses of `answer`, which reached process `tgid` at
    /// `now_ns` (CLOCK_MONOTONIC), when a class rules on its names; [`flush`]
    /// writes them. Returns how many are queued now.
    ///
    /// [`flush`]: Self::flush
    pub fn learn(
        &mut self,
        rules: &NameRules,
        tgid: u32,
        answer: &Answer,
        what: &Arc<Resolved>,
        now_ns: u64,
    ) -> usize {
        let chain =
            std::iter::once(answer.name.as_str()).chain(answer.cnames.iter().map(String::as_str));
        let (allow, deny) = rules.masks(chain);
        if allow | deny == 0 {
            return self.pending.len();
        }
        for &(addr, ttl) in &answer.addrs {
            let keep = Duration::from_secs(u64::from(ttl)) + GRACE;
            self.pending.push(Pending {
                key: NameKey {
                    tgid,
                    _pad: 0,
                    addr: to_map_form(addr.to_canonical()),
                },
                rule: NameRule {
                    allow,
                    deny,
                    expires_ns: now_ns.saturating_add(keep.as_nanos() as u64),
                },
                what: what.clone(),
            });
        }
        self.pending.len()
    }

    /// Writes what [`learn`](Self::learn) queued into the kernel: one system
    /// call for all of it; what a full map refused is written one by one
    /// after expired entries make room, or counted as refused.
    pub fn flush(&mut self, sensor: &mut KernelSensor, now_ns: u64) -> Learning {
        let mut out = Learning::default();
        if self.pending.is_empty() {
            return out;
        }
        let pending = std::mem::take(&mut self.pending);
        let keys: Vec<NameKey> = pending.iter().map(|p| p.key).collect();
        let rules: Vec<NameRule> = pending.iter().map(|p| p.rule).collect();
        let (written, _) = sensor.put_names(&keys, &rules);
        for (i, p) in pending.into_iter().enumerate() {
            if i >= written && !self.write(sensor, &p.key, &p.rule, now_ns) {
                out.refused += 1;
                continue;
            }
            out.written += 1;
            let same_masks = self
                .entries
                .get(&p.key)
                .is_some_and(|l| (l.rule.allow, l.rule.deny) == (p.rule.allow, p.rule.deny));
            out.changed |= !same_masks;
            self.entries.insert(
                p.key,
                Learned {
                    what: Some(p.what),
                    rule: p.rule,
                },
            );
        }
        out
    }

    /// Writes one entry; a full map first loses what expired.
    fn write(
        &mut self,
        sensor: &mut KernelSensor,
        key: &NameKey,
        rule: &NameRule,
        now_ns: u64,
    ) -> bool {
        if sensor.put_name(key, rule).is_ok() {
            return true;
        }
        let expired: Vec<NameKey> = self
            .entries
            .iter()
            .filter(|(_, l)| l.rule.expires_ns <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            let _ = sensor.remove_name(k);
            self.entries.remove(k);
        }
        !expired.is_empty() && sensor.put_name(key, rule).is_ok()
    }

    /// Recomputes every entry's masks under new rules; entries no class
    /// rules on any more go. Returns whether anything changed.
    pub fn rules_changed(&mut self, rules: &NameRules, sensor: &mut KernelSensor) -> bool {
        let mut changed = false;
        let mut gone = Vec::new();
        for (key, l) in self.entries.iter_mut() {
            let (allow, deny) = match &l.what {
                Some(w) if !rules.is_empty() => rules.masks(
                    std::iter::once(w.name.as_str()).chain(w.cnames.iter().map(String::as_str)),
                ),
                _ => (0, 0),
            };
            if (allow, deny) == (l.rule.allow, l.rule.deny) {
                continue;
            }
            changed = true;
            if allow | deny == 0 {
                gone.push(*key);
                continue;
            }
            l.rule.allow = allow;
            l.rule.deny = deny;
            if sensor.put_name(key, &l.rule).is_err() {
                gone.push(*key);
            }
        }
        for k in gone {
            let _ = sensor.remove_name(&k);
            self.entries.remove(&k);
        }
        changed
    }

    /// Removes entries [`LINGER`] past their expiry, and those of processes
    /// that are gone (`alive` says).
    pub fn sweep(&mut self, sensor: &mut KernelSensor, now_ns: u64, alive: impl Fn(u32) -> bool) {
        let linger = LINGER.as_nanos() as u64;
        let mut verdicts: HashMap<u32, bool> = HashMap::new();
        let gone: Vec<NameKey> = self
            .entries
            .iter()
            .filter(|(k, l)| {
                l.rule.expires_ns.saturating_add(linger) <= now_ns
                    || !*verdicts.entry(k.tgid).or_insert_with(|| alive(k.tgid))
            })
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            let _ = sensor.remove_name(&k);
            self.entries.remove(&k);
        }
    }

    /// The live entries for `name` (or whose CNAME chain holds it):
    /// process, address, whether it is still in force at `now_ns`.
    pub fn for_name(&self, name: &str, now_ns: u64) -> Vec<(u32, IpAddr, NameRule, bool)> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut out: Vec<(u32, IpAddr, NameRule, bool)> = self
            .entries
            .iter()
            .filter(|(_, l)| {
                l.what
                    .as_ref()
                    .is_some_and(|w| w.name == name || w.cnames.contains(&name))
            })
            .map(|(k, l)| {
                (
                    k.tgid,
                    sensor_common::net::from_map_form(k.addr),
                    l.rule,
                    l.rule.expires_ns > now_ns,
                )
            })
            .collect();
        out.sort_by_key(|e| (e.0, e.1));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;

    fn rules(text: &str) -> NameRules {
        NameRules::of(&parse(std::path::Path::new("p.toml"), text).unwrap())
    }

    #[test]
    fn a_denying_name_of_the_chain_wins_and_classes_stay_apart() {
        let r = rules(
            "[host]\ntrusted_resolvers = [\"10.0.0.2\", \"fd00::/64\"]\n[classes.eu]\nid = 0\nallowed_names = [\"*.eu.example\"]\ndenied_names = [\"cdn.us.example\"]\n[classes.hr]\nid = 3\nallowed_names = [\"cdn.us.example\"]\n[classes.plain]\nid = 5\n",
        );
        assert_eq!(r.masks(["api.eu.example"].into_iter()), (1, 0));
        assert_eq!(
            r.masks(["api.eu.example", "cdn.us.example"].into_iter()),
            (1 << 3, 1),
            "deny wins for eu, hr allows by its CNAME"
        );
        assert_eq!(
            r.masks(["eu.example"].into_iter()),
            (0, 0),
            "*. is the names below"
        );
        assert!(r.trusts("10.0.0.2".parse().unwrap()) && r.trusts("fd00::53".parse().unwrap()));
        assert!(r.trusts("::ffff:10.0.0.2".parse().unwrap()));
        assert!(!r.trusts("10.0.0.3".parse().unwrap()));
        let why = r.explain("CDN.us.example.");
        assert_eq!(why.len(), 2);
        assert!(!why[0].allowed && why[0].class == "eu" && why[0].pattern == "cdn.us.example");
        assert!(why[1].allowed && why[1].class == "hr");
    }

    #[test]
    fn without_name_rules_nothing_is_trusted_and_system_resolvers_include_loopback() {
        let r = rules("[classes.eu]\n");
        assert!(r.is_empty() && r.trusted().is_empty());
        let sys = system_resolvers();
        assert!(
            sys.iter()
                .any(|n| n.contains(&"127.0.0.53".parse::<IpAddr>().unwrap()))
        );
    }
}
