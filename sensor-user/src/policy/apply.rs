//! Installing a compiled policy into the kernel.
//!
//! The verdict table switches in one step (see `kernel::verdicts`). Modes,
//! selectors, taint sources and failsafe prefixes are updated after it, each by
//! writing new entries before removing stale ones, so nothing both policies
//! share is ever missing; in the milliseconds that takes, a class may still run
//! in its previous mode, never with an empty table.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use sensor_common::policy::{MAX_CLASSES, capacity};

use super::{
    compile::Compiled,
    validate::{Class, SelectorKind},
};
use crate::{
    SensorError,
    kernel::{KernelSensor, tagging::SelectorSpec, verdicts::Mode},
    ledger::TagLedger,
    procscan,
    system::{
        cgroup_tree::{self, NamedCgroup},
        netif,
    },
};

/// What applying did, and what it could not.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub generation: u32,
    pub prefixes: usize,
    pub selectors: usize,
    /// Running processes tagged by the /proc walk.
    pub tagged_running: usize,
    /// Selectors that could not be installed (a cgroup or binary that does not
    /// exist yet), with why. The rest of the policy is in force.
    pub warnings: Vec<String>,
    /// The cgroups the unit and container selectors named (see
    /// [`find_named`]).
    pub named_cgroups: Vec<Vec<PathBuf>>,
}

/// Installs `compiled` into `sensor`, each class in the mode `mode_of` gives
/// (the policy's, or an operator's override: written once, never the policy's
/// first, so a restart does not flip an enforced class to monitor even for a
/// moment). `cgroup_root` is the cgroup v2 mount (selector paths are relative
/// to it).
pub fn apply(
    sensor: &mut KernelSensor,
    compiled: &Compiled,
    mode_of: &dyn Fn(&Class) -> Mode,
    cgroup_root: &Path,
    ledger: &mut TagLedger,
) -> Result<ApplyReport, SensorError> {
    let p = &compiled.policy;
    let mut report = ApplyReport::default();
    let entries = compiled.entries();
    let failsafe: Vec<IpNet> = p
        .host
        .failsafe
        .iter()
        .copied()
        .chain(netif::local_addresses().into_iter().map(IpNet::from))
        .collect();
    // Everything that could run out of room is counted before the first
    // write: a policy is installed whole or not at all.
    check_capacity(compiled, entries.len(), &failsafe)?;
    report.prefixes = entries.len();
    report.generation = sensor.replace_verdicts(&entries)?;
    for class in 0..MAX_CLASSES as u8 {
        let mode = p
            .classes
            .iter()
            .find(|c| c.id == class)
            .map_or(Mode::Off, mode_of);
        sensor.set_mode(class, mode)?;
    }
    sensor.set_unknown_is_violation(p.host.unknown_is_violation)?;
    sensor.set_aggregation(p.host.aggregation)?;
    let mask = |f: fn(&crate::policy::validate::Class) -> bool| {
        p.classes
            .iter()
            .filter(|c| f(c))
            .fold(0u64, |m, c| m | 1u64 << c.id)
    };
    sensor.set_socket_rules(
        mask(|c| c.allow_raw_sockets),
        mask(|c| c.kill_packet_sockets),
        mask(|c| c.propagate_over_local),
    )?;

    report.named_cgroups = find_named(compiled, cgroup_root);
    report.warnings =
        install_selectors(sensor, compiled, cgroup_root, report.named_cgroups.clone())?;
    report.selectors = p.selectors.len() - report.warnings.len();
    let taint: Vec<_> = p
        .taint
        .iter()
        .map(|t| (t.net, t.ports.clone(), t.class))
        .collect();
    sensor.set_taint_sources(&taint)?;
    sensor.set_failsafe(&failsafe)?;
    report.tagged_running = procscan::tag_running(sensor, cgroup_root, ledger)?;
    Ok(report)
}

/// Refuses a policy whose entries do not fit the kernel's maps (see
/// `sensor_common::policy::capacity`; `policy check` refuses them too, this
/// guards the host's own addresses and any policy that bypassed the check).
fn check_capacity(
    compiled: &Compiled,
    verdicts: usize,
    failsafe: &[IpNet],
) -> Result<(), SensorError> {
    use std::collections::HashSet;
    let p = &compiled.policy;
    let distinct = |nets: &mut dyn Iterator<Item = IpNet>| nets.collect::<HashSet<_>>().len();
    // Distinct keys per selector map, as the kernel stores them.
    let mut cgroups = HashSet::new();
    let mut exes = HashSet::new();
    let mut uids = HashSet::new();
    for s in &p.selectors {
        match &s.kind {
            SelectorKind::Cgroup(c) => cgroups.insert(c.as_str()),
            SelectorKind::Exe(e) => exes.insert(e.as_path()),
            SelectorKind::Uid(u) => uids.insert(*u),
            // Resolved at install: the kernel map's capacity bounds them.
            SelectorKind::Named(_) => false,
        };
    }
    for (map, need, cap) in [
        ("VERDICTS", verdicts, capacity::VERDICTS),
        (
            "FAILSAFE",
            distinct(&mut failsafe.iter().copied()),
            capacity::FAILSAFE,
        ),
        (
            "TAINT",
            distinct(&mut p.taint.iter().map(|t| t.net)),
            capacity::TAINT,
        ),
        ("CGROUP_SELECTORS", cgroups.len(), capacity::SELECTORS),
        ("EXE_SELECTORS", exes.len(), capacity::SELECTORS),
        ("UID_SELECTORS", uids.len(), capacity::SELECTORS),
    ] {
        if need > cap as usize {
            return Err(SensorError::Capacity {
                map,
                need,
                capacity: cap,
            });
        }
    }
    Ok(())
}

/// Installs the policy's selectors (new entries first, stale ones removed),
/// the unit and container selectors as the cgroups `found` lists (see
/// [`find_named`]). Returns the selectors that could not be resolved yet: a
/// cgroup whose unit has not started, a binary not installed yet. The agent
/// calls this again periodically, so they take effect once they exist.
pub fn install_selectors(
    sensor: &mut KernelSensor,
    compiled: &Compiled,
    cgroup_root: &Path,
    found: Vec<Vec<PathBuf>>,
) -> Result<Vec<String>, SensorError> {
    let (specs, mut absent) = selector_specs(compiled, cgroup_root, found);
    let mut problems = sensor.set_selectors(&specs)?;
    problems.append(&mut absent);
    Ok(problems)
}

/// The cgroups each unit and container selector of the policy names now, in
/// the policy's order: one walk of the tree, none when the policy has no
/// such selectors.
pub fn find_named(compiled: &Compiled, cgroup_root: &Path) -> Vec<Vec<PathBuf>> {
    let names: Vec<NamedCgroup> = compiled
        .policy
        .selectors
        .iter()
        .filter_map(|s| match &s.kind {
            SelectorKind::Named(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    cgroup_tree::find(cgroup_root, &names)
}

/// The policy's selectors as the kernel keys them, the named ones resolved
/// to the cgroups `found` lists (see [`find_named`]), with the names no
/// cgroup has yet.
fn selector_specs(
    compiled: &Compiled,
    cgroup_root: &Path,
    found: Vec<Vec<PathBuf>>,
) -> (Vec<(SelectorSpec, u8)>, Vec<String>) {
    let selectors = &compiled.policy.selectors;
    let mut found = found.into_iter();
    let mut specs = Vec::new();
    let mut absent = Vec::new();
    for s in selectors {
        match &s.kind {
            SelectorKind::Cgroup(path) => specs.push((
                SelectorSpec::Cgroup(cgroup_root.join(path.trim_start_matches('/'))),
                s.class,
            )),
            SelectorKind::Exe(path) => specs.push((SelectorSpec::Exe(path.clone()), s.class)),
            SelectorKind::Uid(uid) => specs.push((SelectorSpec::Uid(*uid), s.class)),
            SelectorKind::Named(n) => {
                let paths = found.next().unwrap_or_default();
                if paths.is_empty() {
                    absent.push(format!(
                        "{}: no cgroup under {} has this name yet (not running); selected once it starts (checked every second)",
                        describe(n),
                        cgroup_root.display()
                    ));
                }
                specs.extend(
                    paths
                        .into_iter()
                        .map(|p| (SelectorSpec::Cgroup(p), s.class)),
                );
            }
        }
    }
    (specs, absent)
}

/// A named cgroup as messages name it.
fn describe(n: &NamedCgroup) -> String {
    match n {
        NamedCgroup::Unit(u) => format!("unit {u}"),
        NamedCgroup::Container(c) => format!("container {c}"),
    }
}
