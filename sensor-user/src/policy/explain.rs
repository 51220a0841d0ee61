//! Why an address gets the verdict it gets, per class: the answer behind
//! `sensorctl lookup`.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use super::{
    compile::{Compiled, Place, explicit_rules, place_verdict},
    validate::Class,
};
use crate::{
    kernel::verdicts::{Mode, Verdict},
    regions::{Country, ranges, reserved::RESERVED},
};

/// Where the address is, and by which source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub country: Option<Country>,
    pub site: Option<String>,
    /// "country dataset 5.0.1.10-5.0.3.255", "site dub1", "aws eu-west-2",
    /// "reserved: private (RFC 1918)", "no region data".
    pub source: String,
}

/// One class's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassAnswer {
    pub class: String,
    pub id: u8,
    pub mode: Mode,
    /// `None`: unknown (no data).
    pub verdict: Option<Verdict>,
    /// The rule that decided, in words.
    pub rule: String,
    /// The prefix in the kernel table that matches the address.
    pub kernel_prefix: Option<IpNet>,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub ip: IpAddr,
    pub location: Location,
    pub classes: Vec<ClassAnswer>,
    pub unknown_is_violation: bool,
}

fn locate(c: &Compiled, ip: IpAddr) -> (Location, Option<Place>) {
    let a = ranges::addr(ip);
    let Some((s, e, place)) = c.geography.map.get_range(a).cloned() else {
        return (
            Location {
                country: None,
                site: None,
                source: "no region data".into(),
            },
            None,
        );
    };
    let loc = match &place {
        Place::Country(cc) => Location {
            country: Some(*cc),
            site: None,
            source: format!("country dataset range {}-{}", ranges::ip(s), ranges::ip(e)),
        },
        Place::Cloud(i) => {
            let r = &c.geography.cloud_regions[*i as usize];
            Location {
                country: Some(r.country),
                site: None,
                source: format!("{} {} ({})", r.provider, r.region, r.country),
            }
        }
        Place::Site(i) => {
            let site = &c.policy.sites[usize::from(*i)];
            let net = site
                .cidrs
                .iter()
                .find(|n| n.contains(&ip))
                .map(|n| n.to_string())
                .unwrap_or_default();
            Location {
                country: Some(site.country),
                site: Some(site.name.clone()),
                source: format!("site {} ({net})", site.name),
            }
        }
        Place::Reserved(i) => {
            let (p, what) = RESERVED[usize::from(*i)];
            Location {
                country: None,
                site: None,
                source: format!("reserved {p}: {what}"),
            }
        }
    };
    (loc, Some(place))
}

fn rule(c: &Compiled, class: &Class, ip: IpAddr, place: Option<&Place>, loc: &Location) -> String {
    let a = ranges::addr(ip);
    if explicit_rules(class).get(a).is_some() {
        let best = class
            .allowed_cidrs
            .iter()
            .map(|n| (n, "allowed_cidrs"))
            .chain(class.denied_cidrs.iter().map(|n| (n, "denied_cidrs")))
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len());
        if let Some((n, list)) = best {
            return format!("class {} {list} contains {n}", class.name);
        }
    }
    let jur = if class.allowed_jurisdictions.is_empty() {
        "none".to_owned()
    } else {
        class.allowed_jurisdictions.join(", ")
    };
    match place {
        Some(Place::Site(i)) => {
            let site = &c.policy.sites[usize::from(*i)];
            if class.allowed_sites.contains(&usize::from(*i)) {
                format!("site {} is in allowed_sites", site.name)
            } else if class.allowed_countries.contains(&site.country) {
                format!(
                    "site {} is in {}, which allowed_jurisdictions [{jur}] include",
                    site.name, site.country
                )
            } else {
                format!(
                    "site {} ({}) is not in allowed_sites and {} is not in allowed_jurisdictions [{jur}]",
                    site.name, site.country, site.country
                )
            }
        }
        Some(Place::Reserved(_)) | None => {
            format!("{}: no country; unknown destination", loc.source)
        }
        Some(_) => {
            let cc = loc.country.map(|c| c.to_string()).unwrap_or_default();
            if loc
                .country
                .is_some_and(|c| class.allowed_countries.contains(&c))
            {
                format!("{cc} ({}) is in allowed_jurisdictions [{jur}]", loc.source)
            } else {
                format!(
                    "{cc} ({}) is not in allowed_jurisdictions [{jur}]",
                    loc.source
                )
            }
        }
    }
}

/// Where `ip` is: its country and, inside one of the policy's sites, the
/// site's index. What records carry; no string is built (see [`location`]
/// for the words).
pub fn place_of(c: &Compiled, ip: IpAddr) -> (Option<Country>, Option<u16>) {
    match c.geography.map.get(ranges::addr(ip)) {
        Some(Place::Country(cc)) => (Some(*cc), None),
        Some(Place::Cloud(i)) => (
            c.geography
                .cloud_regions
                .get(*i as usize)
                .map(|r| r.country),
            None,
        ),
        Some(Place::Site(i)) => (
            c.policy.sites.get(usize::from(*i)).map(|s| s.country),
            Some(*i),
        ),
        Some(Place::Reserved(_)) | None => (None, None),
    }
}

/// Where `ip` is (country, site, and which source says so).
pub fn location(c: &Compiled, ip: IpAddr) -> Location {
    locate(c, ip).0
}

/// Explains `ip` for every class, or only `only` (a class name).
pub fn explain(c: &Compiled, ip: IpAddr, only: Option<&str>) -> Explanation {
    let (location, place) = locate(c, ip);
    let a = ranges::addr(ip);
    let classes = c
        .policy
        .classes
        .iter()
        .zip(&c.classes)
        .filter(|(cls, _)| only.is_none_or(|o| o == cls.name))
        .map(|(cls, plan)| {
            let verdict = explicit_rules(cls).get(a).copied().or_else(|| {
                place
                    .as_ref()
                    .and_then(|p| place_verdict(p, cls, &c.policy, &c.geography))
            });
            // The entry the kernel's longest-prefix lookup finds.
            let kernel_prefix = plan
                .entries
                .iter()
                .filter(|e| {
                    let (s, end) = ranges::net_range(&e.net);
                    s <= a && a <= end
                })
                .min_by_key(|e| {
                    let (s, end) = ranges::net_range(&e.net);
                    end - s
                })
                .map(|e| e.net);
            ClassAnswer {
                class: cls.name.clone(),
                id: cls.id,
                mode: cls.mode,
                verdict,
                rule: rule(c, cls, ip, place.as_ref(), &location),
                kernel_prefix,
            }
        })
        .collect();
    Explanation {
        ip,
        location,
        classes,
        unknown_is_violation: c.policy.host.unknown_is_violation,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "address:  {}", self.ip)?;
        writeln!(
            f,
            "country:  {}",
            self.location
                .country
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        )?;
        writeln!(
            f,
            "site:     {}",
            self.location.site.as_deref().unwrap_or("-")
        )?;
        writeln!(f, "source:   {}", self.location.source)?;
        for c in &self.classes {
            let verdict = match c.verdict {
                Some(Verdict::Allow) => "allow".to_owned(),
                Some(Verdict::Unknown) | None if !self.unknown_is_violation => {
                    "unknown (allowed)".to_owned()
                }
                Some(Verdict::Unknown) => "unknown (violation)".to_owned(),
                Some(Verdict::Deny) => "deny (violation)".to_owned(),
                None if self.unknown_is_violation => "unknown (violation)".to_owned(),
                None => "unknown (allowed)".to_owned(),
            };
            writeln!(f, "class {} (id {}, {}): {verdict}", c.class, c.id, c.mode)?;
            writeln!(f, "  rule:   {}", c.rule)?;
            writeln!(
                f,
                "  kernel: {}",
                c.kernel_prefix
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "no prefix (unknown)".into())
            )?;
        }
        Ok(())
    }
}
