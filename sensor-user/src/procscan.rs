//! Tagging processes that were already running when the agent started.
//!
//! The kernel evaluates selectors at exec; a process that exec'd before the agent
//! loaded would never be seen. So at start the agent walks /proc once and applies
//! the same selectors: cgroup (the process's cgroup or any ancestor), real uid,
//! and executable identity (`/proc/PID/exe`, which names the file the kernel
//! resolved at exec, even if it was since deleted or replaced).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use sensor_common::tag::{ExeKey, kernel_dev};

use crate::{
    kernel::tagging::Selectors,
    ledger::{TagReason, Why},
};

/// A running process that matches selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub tgid: u32,
    pub classes: u64,
    pub reasons: Vec<TagReason>,
}

/// The cgroup v2 path of a process ("/system.slice/foo.service").
fn cgroup_path(tgid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

pub(crate) fn real_uid(tgid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn exe_key(tgid: u32) -> Option<ExeKey> {
    let meta = std::fs::metadata(format!("/proc/{tgid}/exe")).ok()?;
    let dev = meta.dev();
    Some(ExeKey {
        dev: kernel_dev(libc::major(dev), libc::minor(dev)),
        ino: meta.ino(),
    })
}

/// Walks /proc and returns every process that matches `selectors`.
pub fn scan(selectors: &Selectors, cgroup_root: &Path) -> Vec<Match> {
    let now = SystemTime::now();
    let mut ids: HashMap<PathBuf, Option<u64>> = HashMap::new();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(tgid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let mut classes = 0u64;
        let mut reasons = Vec::new();
        if !selectors.cgroups.is_empty()
            && let Some(path) = cgroup_path(tgid)
        {
            // The process's cgroup and each ancestor up to the root.
            let mut dir = cgroup_root.join(path.trim_start_matches('/'));
            loop {
                let id = *ids
                    .entry(dir.clone())
                    .or_insert_with(|| std::fs::metadata(&dir).ok().map(|m| m.ino()));
                if let Some(id) = id
                    && let Some((c, sel_path)) = selectors.cgroups.get(&id)
                {
                    classes |= c;
                    let why = Why::Cgroup {
                        id,
                        path: Some(sel_path.clone()),
                    };
                    reasons.push(TagReason {
                        classes: *c,
                        why,
                        at: now,
                    });
                }
                if dir == cgroup_root || !dir.pop() || !dir.starts_with(cgroup_root) {
                    break;
                }
            }
        }
        if !selectors.uids.is_empty()
            && let Some(uid) = real_uid(tgid)
            && let Some(c) = selectors.uids.get(&uid)
        {
            classes |= c;
            reasons.push(TagReason {
                classes: *c,
                why: Why::Uid(uid),
                at: now,
            });
        }
        if !selectors.exes.is_empty()
            && let Some(key) = exe_key(tgid)
            && let Some((c, path)) = selectors.exes.get(&key)
        {
            classes |= c;
            reasons.push(TagReason {
                classes: *c,
                why: Why::Exe {
                    ino: key.ino,
                    path: Some(path.clone()),
                },
                at: now,
            });
        }
        if classes != 0 {
            out.push(Match {
                tgid,
                classes,
                reasons,
            });
        }
    }
    out
}

/// Tags every running process that matches the sensor's selectors and records
/// why in `ledger`. Returns how many processes were tagged.
pub fn tag_running(
    sensor: &mut crate::kernel::KernelSensor,
    cgroup_root: &Path,
    ledger: &mut crate::ledger::TagLedger,
) -> Result<usize, crate::SensorError> {
    let matches = scan(sensor.selectors(), cgroup_root);
    for m in &matches {
        sensor.tag_process(m.tgid, m.classes)?;
        for r in &m.reasons {
            ledger.record(m.tgid, r.clone());
        }
    }
    Ok(matches.len())
}
