//! The peer a user would pick instead of the sensor: nftables doing the same
//! country check. The set holds every range the policy's class denies,
//! compiled from the same dataset and policy the agent runs (interval sets,
//! one per family), matched for the sockets of one cgroup (`socket cgroupv2`)
//! on the output hook, with a counter (monitor mode's equivalent: it counts,
//! it does not drop).

use std::{fmt::Write as _, path::Path, process::Command};

use sensor_user::{
    kernel::verdicts::Verdict,
    policy::{compile, validate},
    regions::{self, cloud::CloudRanges, ranges},
};

const TABLE: &str = "rsbench";

/// The nftables table, removed on drop.
pub struct CountrySet {
    pub ranges: usize,
}

/// `policy`'s first class's denied ranges over `dataset`, as nftables
/// interval elements per family (IPv4, IPv6).
fn denied_elements(policy: &Path, dataset: &Path) -> (Vec<String>, Vec<String>) {
    let db = regions::load_any(dataset).unwrap_or_else(|e| panic!("{}: {e}", dataset.display()));
    let policy = validate::load(policy).unwrap_or_else(|e| panic!("{e}"));
    let compiled = compile::compile(policy, &db, &CloudRanges::default());
    let class = compiled
        .classes
        .first()
        .expect("the bench policy has a class");
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (start, end, verdict) in class.verdicts.ranges() {
        if *verdict != Verdict::Deny {
            continue;
        }
        let (a, b) = (ranges::ip(*start), ranges::ip(*end));
        let element = if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        };
        if a.is_ipv4() && b.is_ipv4() {
            v4.push(element);
        } else if a.is_ipv6() && b.is_ipv6() {
            v6.push(element);
        }
    }
    (v4, v6)
}

fn nft(args: &[&str]) -> std::process::Output {
    Command::new("nft")
        .args(args)
        .output()
        .expect("running nft (apt install nftables; cargo xtask setup does)")
}

impl CountrySet {
    /// Loads the table; `cgroup` is the v2 path below the root (level 1).
    pub fn load(policy: &Path, dataset: &Path, cgroup: &str, scratch: &Path) -> CountrySet {
        let (v4, v6) = denied_elements(policy, dataset);
        let _ = nft(&["delete", "table", "inet", TABLE]);
        let mut text = String::new();
        let _ = writeln!(text, "table inet {TABLE} {{");
        for (name, ty, elements) in [("deny4", "ipv4_addr", &v4), ("deny6", "ipv6_addr", &v6)] {
            let _ = writeln!(
                text,
                "  set {name} {{\n    type {ty}; flags interval;\n    elements = {{ {} }}\n  }}",
                elements.join(",\n      ")
            );
        }
        let _ = writeln!(
            text,
            "  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             socket cgroupv2 level 1 \"{cgroup}\" ip daddr @deny4 counter\n    \
             socket cgroupv2 level 1 \"{cgroup}\" ip6 daddr @deny6 counter\n  }}\n}}"
        );
        let file = scratch.join("rsbench.nft");
        std::fs::write(&file, text).expect("writing the nftables ruleset");
        let out = nft(&["-f", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "nft -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        CountrySet {
            ranges: v4.len() + v6.len(),
        }
    }

    /// Packets the rules counted (matched the denied set).
    pub fn matched(&self) -> u64 {
        let out = nft(&["list", "chain", "inet", TABLE, "out"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let rest = l.split("counter packets ").nth(1)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for CountrySet {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", TABLE]);
    }
}
