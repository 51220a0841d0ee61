//! Installing a compiled policy into the kernel.
//!
//! The verdict table switches in one step (see `kernel::verdicts`). Modes,
//! selectors, taint sources and failsafe prefixes are rewritten after it; in the
//! few milliseconds that takes, a process may still be judged with the previous
//! policy's modes, never with an empty table.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;
use sensor_common::policy::MAX_CLASSES;

use super::{compile::Compiled, validate::SelectorKind};
use crate::{
    SensorError,
    kernel::{KernelSensor, verdicts::Mode},
    ledger::TagLedger,
    procscan,
    system::netif,
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
}

/// Installs `compiled` into `sensor`. `cgroup_root` is the cgroup v2 mount
/// (selector paths are relative to it).
pub fn apply(
    sensor: &mut KernelSensor,
    compiled: &Compiled,
    cgroup_root: &Path,
    ledger: &mut TagLedger,
) -> Result<ApplyReport, SensorError> {
    let p = &compiled.policy;
    let mut report = ApplyReport::default();
    let entries = compiled.entries();
    report.prefixes = entries.len();
    report.generation = sensor.replace_verdicts(&entries)?;
    for class in 0..MAX_CLASSES as u8 {
        let mode = p
            .classes
            .iter()
            .find(|c| c.id == class)
            .map_or(Mode::Off, |c| c.mode);
        sensor.set_mode(class, mode)?;
    }
    sensor.set_unknown_is_violation(p.host.unknown_is_violation)?;
    sensor.set_aggregation(p.host.aggregation)?;

    sensor.clear_selectors()?;
    for s in &p.selectors {
        let res = match &s.kind {
            SelectorKind::Cgroup(path) => sensor
                .add_cgroup_selector(&cgroup_root.join(path.trim_start_matches('/')), s.class)
                .map(|_| ()),
            SelectorKind::Exe(path) => sensor.add_exe_selector(path, s.class).map(|_| ()),
            SelectorKind::Uid(uid) => sensor.add_uid_selector(*uid, s.class),
        };
        match res {
            Ok(()) => report.selectors += 1,
            Err(SensorError::Selector { what, reason }) => {
                report.warnings.push(format!("{what}: {reason}"))
            }
            Err(e) => return Err(e),
        }
    }

    sensor.clear_taint_and_failsafe()?;
    for t in &p.taint {
        sensor.add_taint_source(t.net, t.ports.clone(), t.class)?;
    }
    let own = netif::local_addresses()
        .into_iter()
        .map(|ip: IpAddr| IpNet::from(ip));
    for net in p.host.failsafe.iter().copied().chain(own) {
        sensor.add_failsafe(net)?;
    }
    report.tagged_running = procscan::tag_running(sensor, cgroup_root, ledger)?;
    Ok(report)
}
