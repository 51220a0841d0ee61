//! (policy × region data × sites) → per-class verdict prefixes for the kernel.
//!
//! 1. Geography: one map saying where every address is, by precedence: sites
//!    over cloud ranges over private/reserved ranges over the country dataset;
//!    within each source the longest prefix wins.
//! 2. Per class: each place becomes allow / deny / unknown (no entry); the class's
//!    own `allowed_cidrs`/`denied_cidrs` go on top (longest prefix wins).
//! 3. Adjacent ranges with the same verdict are joined, and the fewest prefixes
//!    that give a longest-prefix table the same answer everywhere are computed
//!    (`regions::lpm`, nesting allowed). Counts before (each range covered by
//!    aligned prefixes) and after are reported.

use ipnet::IpNet;

use super::validate::{Class, Policy};
use crate::{
    kernel::verdicts::{Verdict, VerdictEntry},
    regions::{
        Country, RegionDb,
        cloud::{CloudRanges, CloudRegion},
        lpm,
        ranges::{self, RangeMap, cidrs},
        reserved::RESERVED,
    },
};

/// Where an address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The country dataset says so.
    Country(Country),
    /// A cloud region (index into `Geography::cloud_regions`).
    Cloud(u32),
    /// One of the policy's sites (index into `Policy::sites`).
    Site(u16),
    /// A private or reserved range (index into `RESERVED`).
    Reserved(u16),
}

/// The merged map of where addresses are.
#[derive(Debug, Clone, Default)]
pub struct Geography {
    pub map: RangeMap<Place>,
    pub cloud_regions: Vec<CloudRegion>,
}

fn prefix_of(net: &IpNet) -> (ranges::Addr, u8) {
    let (s, e) = ranges::net_range(net);
    let host_bits = (e - s).checked_add(1).map_or(128, |n| n.trailing_zeros());
    (s, (128 - host_bits) as u8)
}

/// Builds the geography for a policy's sites.
pub fn geography(policy: &Policy, regions: &RegionDb, cloud: &CloudRanges) -> Geography {
    let mut map = regions.countries.filter_map(|c| Some(Place::Country(*c)));
    let reserved =
        RangeMap::from_prefixes(RESERVED.iter().enumerate().filter_map(|(i, (p, _))| {
            let net: IpNet = p.parse().ok()?;
            let (s, l) = prefix_of(&net);
            Some((s, l, Place::Reserved(i as u16)))
        }));
    map = map.overlay(&reserved);
    let mut cloud_regions: Vec<CloudRegion> = Vec::new();
    for (_, _, r) in cloud.map.ranges() {
        if !cloud_regions.contains(r) {
            cloud_regions.push(r.clone());
        }
    }
    let cloud_map = cloud.map.filter_map(|r| {
        let idx = cloud_regions.iter().position(|x| x == r)?;
        Some(Place::Cloud(idx as u32))
    });
    map = map.overlay(&cloud_map);
    let sites = RangeMap::from_prefixes(policy.sites.iter().enumerate().flat_map(|(i, s)| {
        s.cidrs.iter().map(move |n| {
            let (start, len) = prefix_of(n);
            (start, len, Place::Site(i as u16))
        })
    }));
    map = map.overlay(&sites);
    Geography { map, cloud_regions }
}

/// The verdict of a place for a class (`None`: unknown).
pub fn place_verdict(
    place: &Place,
    class: &Class,
    policy: &Policy,
    geo: &Geography,
) -> Option<Verdict> {
    let allowed = |c: &Country| class.allowed_countries.contains(c);
    let v = match place {
        Place::Site(i) => {
            let site = &policy.sites[usize::from(*i)];
            class.allowed_sites.contains(&usize::from(*i)) || allowed(&site.country)
        }
        Place::Cloud(i) => allowed(&geo.cloud_regions[*i as usize].country),
        Place::Country(c) => allowed(c),
        Place::Reserved(_) => return None,
    };
    Some(if v { Verdict::Allow } else { Verdict::Deny })
}

/// The class's own CIDR rules, longest prefix wins.
pub fn explicit_rules(class: &Class) -> RangeMap<Verdict> {
    RangeMap::from_prefixes(
        class
            .allowed_cidrs
            .iter()
            .map(|n| (n, Verdict::Allow))
            .chain(class.denied_cidrs.iter().map(|n| (n, Verdict::Deny)))
            .map(|(n, v)| {
                let (s, l) = prefix_of(n);
                (s, l, v)
            }),
    )
}

/// One class, compiled.
#[derive(Debug, Clone)]
pub struct ClassPlan {
    pub id: u8,
    pub name: String,
    /// Verdicts by range after merging (for lookups).
    pub verdicts: RangeMap<Verdict>,
    /// What goes into the kernel.
    pub entries: Vec<VerdictEntry>,
    /// Prefixes before joining equal neighbours.
    pub prefixes_before: usize,
    pub allow_prefixes: usize,
    pub deny_prefixes: usize,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub policy: Policy,
    /// Where the region data came from (for status and records).
    pub provenance: Option<crate::regions::Provenance>,
    pub geography: Geography,
    pub classes: Vec<ClassPlan>,
}

impl Compiled {
    /// Every kernel verdict entry of every class.
    pub fn entries(&self) -> Vec<VerdictEntry> {
        self.classes
            .iter()
            .flat_map(|c| c.entries.iter().copied())
            .collect()
    }

    /// Total prefixes (before, after).
    pub fn prefix_counts(&self) -> (usize, usize) {
        (
            self.classes.iter().map(|c| c.prefixes_before).sum(),
            self.classes.iter().map(|c| c.entries.len()).sum(),
        )
    }
}

fn cover_count(m: &RangeMap<Verdict>) -> usize {
    m.ranges().iter().map(|(s, e, _)| cidrs(*s, *e).len()).sum()
}

/// Compiles one class against a geography.
pub fn compile_class(class: &Class, policy: &Policy, geo: &Geography) -> ClassPlan {
    let by_place = geo.map.filter_map(|p| place_verdict(p, class, policy, geo));
    let layered = by_place.overlay(&explicit_rules(class));
    let prefixes_before = cover_count(&layered);
    let verdicts = layered.coalesce();
    // The fewest prefixes for a longest-prefix table (holes included); the plain
    // cover when the map has more values than the optimiser handles (never for
    // allow/deny).
    let table = lpm::minimal_prefixes(&verdicts).unwrap_or_else(|| {
        verdicts
            .to_prefixes()
            .into_iter()
            .map(|(s, l, v)| (s, l, Some(v)))
            .collect()
    });
    let entries: Vec<VerdictEntry> = table
        .into_iter()
        .map(|(s, l, v)| VerdictEntry {
            class: class.id,
            net: ranges::to_net(s, l),
            verdict: v.unwrap_or(Verdict::Unknown),
        })
        .collect();
    let allow_prefixes = entries
        .iter()
        .filter(|e| e.verdict == Verdict::Allow)
        .count();
    let deny_prefixes = entries
        .iter()
        .filter(|e| e.verdict == Verdict::Deny)
        .count();
    ClassPlan {
        id: class.id,
        name: class.name.clone(),
        prefixes_before,
        allow_prefixes,
        deny_prefixes,
        verdicts,
        entries,
    }
}

/// Compiles a policy.
pub fn compile(policy: Policy, regions: &RegionDb, cloud: &CloudRanges) -> Compiled {
    let geography = geography(&policy, regions, cloud);
    let classes = policy
        .classes
        .iter()
        .map(|c| compile_class(c, &policy, &geography))
        .collect();
    Compiled {
        policy,
        geography,
        classes,
        provenance: regions.provenance.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::Path};

    use proptest::prelude::*;

    use super::*;
    use crate::{policy::validate, regions::csv};

    const POLICY: &str = r#"
[sites.dub1]
cidrs = ["10.1.0.0/16"]
country = "IE"
[sites.iad1]
cidrs = ["10.2.0.0/16"]
country = "US"
[classes.eu]
allowed_jurisdictions = ["EEA"]
allowed_sites = ["iad1"]
denied_cidrs = ["5.0.0.128/25"]
allowed_cidrs = ["8.8.8.0/24"]
"#;

    // Three countries over a few non-aligned ranges, both families.
    const DATA: &str = "5.0.0.0,5.0.0.255,DE\n5.0.1.0,5.0.1.9,US\n5.0.1.10,5.0.3.255,IE\n8.0.0.0,8.255.255.255,US\n2a00::,2a00::ffff,NO\n2600::,2600:ffff::,US\n";

    fn setup() -> (Compiled, RegionDb) {
        let policy = validate::parse(Path::new("p.toml"), POLICY).unwrap();
        let regions = RegionDb {
            countries: RangeMap::from_disjoint(csv::parse(Path::new("d.csv"), DATA).unwrap())
                .unwrap(),
            provenance: None,
        };
        (compile(policy, &regions, &CloudRanges::default()), regions)
    }

    /// The naive reference: a linear scan of the sources in precedence order.
    fn reference(ip: IpAddr, c: &Compiled, regions: &RegionDb) -> Option<Verdict> {
        let class = &c.policy.classes[0];
        let mut best: Option<(u8, Verdict)> = None;
        for (n, v) in class
            .allowed_cidrs
            .iter()
            .map(|n| (n, Verdict::Allow))
            .chain(class.denied_cidrs.iter().map(|n| (n, Verdict::Deny)))
        {
            if n.contains(&ip) && best.is_none_or(|(l, _)| n.prefix_len() > l) {
                best = Some((n.prefix_len(), v));
            }
        }
        if let Some((_, v)) = best {
            return Some(v);
        }
        for (i, s) in c.policy.sites.iter().enumerate() {
            if s.cidrs.iter().any(|n| n.contains(&ip)) {
                let ok = class.allowed_sites.contains(&i)
                    || class.allowed_countries.contains(&s.country);
                return Some(if ok { Verdict::Allow } else { Verdict::Deny });
            }
        }
        for (p, _) in RESERVED {
            let n: IpNet = p.parse().unwrap();
            if n.contains(&ip) {
                return None;
            }
        }
        let a = ranges::addr(ip);
        for (s, e, cc) in regions.countries.ranges() {
            if *s <= a && a <= *e {
                return Some(if class.allowed_countries.contains(cc) {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                });
            }
        }
        None
    }

    /// The kernel's view: the longest (smallest) compiled prefix containing `ip`.
    fn kernel(ip: IpAddr, c: &Compiled) -> Option<Verdict> {
        c.classes[0]
            .entries
            .iter()
            .filter(|e| {
                let (s, end) = ranges::net_range(&e.net);
                (s..=end).contains(&ranges::addr(ip))
            })
            .min_by_key(|e| {
                let (s, e) = ranges::net_range(&e.net);
                e - s
            })
            .and_then(|e| (e.verdict != Verdict::Unknown).then_some(e.verdict))
    }

    #[test]
    fn precedence_and_edges() {
        let (c, regions) = setup();
        for (ip, want) in [
            ("5.0.0.1", Some(Verdict::Allow)),  // DE
            ("5.0.0.200", Some(Verdict::Deny)), // denied_cidrs beats DE
            ("5.0.1.9", Some(Verdict::Deny)),   // US, non-aligned edge
            ("5.0.1.10", Some(Verdict::Allow)), // IE
            ("8.8.8.8", Some(Verdict::Allow)),  // allowed_cidrs beats US
            ("8.8.9.1", Some(Verdict::Deny)),
            ("10.1.2.3", Some(Verdict::Allow)), // site dub1 (IE)
            ("10.2.2.3", Some(Verdict::Allow)), // site iad1, allowed by name
            ("10.3.2.3", None),                 // private, no site
            ("0.0.0.0", None),
            ("255.255.255.255", None),
            ("2a00::1", Some(Verdict::Allow)),
            ("2600::1", Some(Verdict::Deny)),
            ("::", None),
            ("9.9.9.9", None), // no data
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(kernel(ip, &c), want, "{ip}");
            assert_eq!(reference(ip, &c, &regions), want, "reference {ip}");
        }
        let plan = &c.classes[0];
        assert!(plan.entries.len() <= plan.prefixes_before);
    }

    proptest! {
        #[test]
        fn compiled_table_matches_reference(v4 in any::<u32>(), v6hi in 0u16..3, v6lo in any::<u64>()) {
            let (c, regions) = setup();
            // Bias the probes to where the data is.
            let four = IpAddr::from((v4 & 0x0fff_ffff | if v4 & 1 == 0 { 0x0500_0000 } else { 0x0800_0000 }).to_be_bytes());
            let base: u128 = [0x2a00u128 << 112, 0x2600u128 << 112, 0][v6hi as usize];
            let six = IpAddr::from((base | u128::from(v6lo >> (v4 % 64))).to_be_bytes());
            for ip in [four, six, IpAddr::from(v4.to_be_bytes())] {
                prop_assert_eq!(kernel(ip, &c), reference(ip, &c, &regions), "{}", ip);
            }
        }
    }
}
