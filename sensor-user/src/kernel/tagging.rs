//! Which processes carry which data classes: the `TASKS` map, the selectors the
//! kernel evaluates at exec, taint sources, and failsafe destinations.
//!
//! Every selector is mirrored in user space ([`Selectors`]) so the start-up
//! /proc walk ([`crate::procscan`]) applies exactly what the kernel applies.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::maps::{
    HashMap as BpfHashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;
use sensor_common::{
    net::{map_prefix_len, to_map_form},
    policy::{MAX_CLASSES, TaintSource, capacity},
    tag::{ExeKey, TaskTag, kernel_dev},
};

use super::{KernelSensor, map_err};
use crate::SensorError;

/// A data class id (0..64).
pub type ClassId = u8;

/// The bit of a class id, or an error when out of range.
pub fn class_bit(class: ClassId) -> Result<u64, SensorError> {
    if u32::from(class) >= MAX_CLASSES {
        return Err(SensorError::ClassOutOfRange(class));
    }
    Ok(1u64 << class)
}

/// The user-space mirror of the kernel's selector maps.
#[derive(Debug, Default, Clone)]
pub struct Selectors {
    /// cgroup id → (classes, path).
    pub cgroups: HashMap<u64, (u64, PathBuf)>,
    /// uid → classes.
    pub uids: HashMap<u32, u64>,
    /// executable identity → (classes, path as given).
    pub exes: HashMap<ExeKey, (u64, PathBuf)>,
}

/// The identity the kernel sees for an executable: `stat()` follows symlinks, so a
/// selector on /usr/bin/python3 (a symlink) matches the file it points to.
pub fn exe_identity(path: &Path) -> Result<ExeKey, SensorError> {
    let meta = std::fs::metadata(path).map_err(|e| SensorError::Selector {
        what: format!("executable {}", path.display()),
        reason: format!("{e}; give the absolute path of an existing binary"),
    })?;
    if !meta.is_file() {
        return Err(SensorError::Selector {
            what: format!("executable {}", path.display()),
            reason: "not a regular file".into(),
        });
    }
    let dev = meta.dev();
    Ok(ExeKey {
        dev: kernel_dev(libc::major(dev), libc::minor(dev)),
        ino: meta.ino(),
    })
}

/// A cgroup's id is its directory's inode number on cgroup v2.
pub fn cgroup_id(path: &Path) -> Result<u64, SensorError> {
    let meta = std::fs::metadata(path).map_err(|e| SensorError::Selector {
        what: format!("cgroup {}", path.display()),
        reason: format!("{e}; give a directory under the cgroup v2 mount"),
    })?;
    if !meta.is_dir() {
        return Err(SensorError::Selector {
            what: format!("cgroup {}", path.display()),
            reason: "not a directory".into(),
        });
    }
    Ok(meta.ino())
}

impl KernelSensor {
    fn tasks(&mut self) -> Result<BpfHashMap<&mut MapData, u32, TaskTag>, SensorError> {
        let map = self
            .ebpf
            .map_mut("TASKS")
            .ok_or(SensorError::MissingMap("TASKS"))?;
        BpfHashMap::try_from(map).map_err(map_err("TASKS"))
    }

    /// Writes one selector entry (`map` is a selector map of the object).
    fn write_selector<K: aya::Pod>(
        &mut self,
        map: &'static str,
        key: K,
        classes: u64,
    ) -> Result<(), SensorError> {
        let m = self.ebpf.map_mut(map).ok_or(SensorError::MissingMap(map))?;
        let mut h: BpfHashMap<&mut MapData, K, u64> =
            BpfHashMap::try_from(m).map_err(map_err(map))?;
        h.insert(key, classes, 0).map_err(map_err(map))
    }

    /// Adds `classes` (a bit mask) to process `tgid`. The kernel keeps them across
    /// fork and exec and drops them when the process exits.
    pub fn tag_process(&mut self, tgid: u32, classes: u64) -> Result<(), SensorError> {
        let mut tasks = self.tasks()?;
        let old = tasks.get(&tgid, 0).map(|t| t.classes).unwrap_or(0);
        tasks
            .insert(
                tgid,
                TaskTag {
                    classes: old | classes,
                },
                0,
            )
            .map_err(map_err("TASKS"))
    }

    /// Removes `classes` from process `tgid` (the entry goes when none are left).
    pub fn untag_process(&mut self, tgid: u32, classes: u64) -> Result<(), SensorError> {
        let mut tasks = self.tasks()?;
        let Ok(old) = tasks.get(&tgid, 0) else {
            return Ok(());
        };
        let left = old.classes & !classes;
        if left == 0 {
            tasks.remove(&tgid).map_err(map_err("TASKS"))
        } else {
            tasks
                .insert(tgid, TaskTag { classes: left }, 0)
                .map_err(map_err("TASKS"))
        }
    }

    /// The classes of process `tgid`, if it carries any.
    pub fn process_classes(&self, tgid: u32) -> Option<u64> {
        let map = self.ebpf.map("TASKS")?;
        let tasks: BpfHashMap<&MapData, u32, TaskTag> = BpfHashMap::try_from(map).ok()?;
        tasks.get(&tgid, 0).ok().map(|t| t.classes)
    }

    /// Every tagged process (tgid, classes). Includes entries for threads created
    /// by tagged processes (removed when they exit).
    pub fn tagged_processes(&self) -> Result<Vec<(u32, u64)>, SensorError> {
        let map = self
            .ebpf
            .map("TASKS")
            .ok_or(SensorError::MissingMap("TASKS"))?;
        let tasks: BpfHashMap<&MapData, u32, TaskTag> =
            BpfHashMap::try_from(map).map_err(map_err("TASKS"))?;
        Ok(tasks
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.classes))
            .collect())
    }

    /// The selectors installed so far.
    pub fn selectors(&self) -> &Selectors {
        &self.selectors
    }

    /// Whether a cgroup selector's path now names another cgroup than the
    /// one installed, or none: a restarted systemd service, a recreated
    /// container, get a new cgroup (and id) under the same path.
    pub fn cgroup_selectors_stale(&self) -> bool {
        self.selectors
            .cgroups
            .iter()
            .any(|(id, (_, path))| cgroup_id(path).ok() != Some(*id))
    }

    /// Processes that exec while in the cgroup at `path` or any cgroup below it
    /// carry `class`.
    pub fn add_cgroup_selector(&mut self, path: &Path, class: ClassId) -> Result<u64, SensorError> {
        let bit = class_bit(class)?;
        let id = cgroup_id(path)?;
        let entry = self
            .selectors
            .cgroups
            .entry(id)
            .or_insert((0, path.to_owned()));
        entry.0 |= bit;
        let classes = entry.0;
        self.write_selector("CGROUP_SELECTORS", id, classes)?;
        Ok(id)
    }

    /// Processes that exec with real uid `uid` carry `class`.
    pub fn add_uid_selector(&mut self, uid: u32, class: ClassId) -> Result<(), SensorError> {
        let bit = class_bit(class)?;
        let classes = *self
            .selectors
            .uids
            .entry(uid)
            .and_modify(|c| *c |= bit)
            .or_insert(bit);
        self.write_selector("UID_SELECTORS", uid, classes)
    }

    /// Processes that exec the file at `path` (its identity: device and inode,
    /// symlinks followed) carry `class`.
    pub fn add_exe_selector(&mut self, path: &Path, class: ClassId) -> Result<ExeKey, SensorError> {
        let bit = class_bit(class)?;
        if !self.exe_selectors_supported() {
            return Err(SensorError::Selector {
                what: format!("executable {}", path.display()),
                reason: "this kernel's BTF lacks the struct offsets needed to identify executables; use a cgroup or uid selector".into(),
            });
        }
        let key = exe_identity(path)?;
        let entry = self
            .selectors
            .exes
            .entry(key)
            .or_insert((0, path.to_owned()));
        entry.0 |= bit;
        let classes = entry.0;
        self.write_selector("EXE_SELECTORS", key, classes)?;
        Ok(key)
    }

    /// A process that connects to `net` on a port in `ports` carries `class` from
    /// then on.
    pub fn add_taint_source(
        &mut self,
        net: IpNet,
        ports: RangeInclusive<u16>,
        class: ClassId,
    ) -> Result<(), SensorError> {
        let bit = class_bit(class)?;
        let map = self
            .ebpf
            .map_mut("TAINT")
            .ok_or(SensorError::MissingMap("TAINT"))?;
        let mut trie: LpmTrie<&mut MapData, [u8; 16], TaintSource> =
            LpmTrie::try_from(map).map_err(map_err("TAINT"))?;
        let key = Key::new(
            map_prefix_len(net.addr(), net.prefix_len()),
            to_map_form(net.network()),
        );
        let classes = trie.get(&key, 0).map(|t| t.classes).unwrap_or(0) | bit;
        let value = TaintSource {
            classes,
            port_lo: *ports.start(),
            port_hi: *ports.end(),
            _pad: 0,
        };
        trie.insert(&key, value, 0).map_err(map_err("TAINT"))?;
        self.set_has_taint(true)
    }

    /// Destinations in `net` are never violations (collector, DNS resolvers,
    /// control plane, the host's own addresses).
    pub fn add_failsafe(&mut self, net: IpNet) -> Result<(), SensorError> {
        let map = self
            .ebpf
            .map_mut("FAILSAFE")
            .ok_or(SensorError::MissingMap("FAILSAFE"))?;
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
            LpmTrie::try_from(map).map_err(map_err("FAILSAFE"))?;
        let key = Key::new(
            map_prefix_len(net.addr(), net.prefix_len()),
            to_map_form(net.network()),
        );
        trie.insert(&key, 1, 0).map_err(map_err("FAILSAFE"))?;
        self.write_config()
    }
}

/// A selector as a policy asks for it, before it is resolved to kernel keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorSpec {
    /// A cgroup directory (absolute path).
    Cgroup(PathBuf),
    /// An executable's path.
    Exe(PathBuf),
    /// A real uid.
    Uid(u32),
}

/// A prefix as the kernel keys it: (map-form length, map-form address).
type PrefixKey = (u32, [u8; 16]);

fn prefix_key(net: &IpNet) -> PrefixKey {
    (
        map_prefix_len(net.addr(), net.prefix_len()),
        to_map_form(net.network()),
    )
}

impl KernelSensor {
    /// Makes the selectors exactly `specs` without a moment in which a selector
    /// present in both the old and the new set is missing: new and changed entries
    /// are written first, stale ones removed after. Returns the specs that could
    /// not be resolved (a cgroup or binary that does not exist), with why.
    pub fn set_selectors(
        &mut self,
        specs: &[(SelectorSpec, ClassId)],
    ) -> Result<Vec<String>, SensorError> {
        let mut want = Selectors::default();
        let mut problems = Vec::new();
        for (spec, class) in specs {
            let bit = class_bit(*class)?;
            let resolved = match spec {
                SelectorSpec::Cgroup(p) => cgroup_id(p).map(|id| {
                    want.cgroups.entry(id).or_insert((0, p.clone())).0 |= bit;
                }),
                SelectorSpec::Exe(p) if !self.exe_selectors_supported() => Err(SensorError::Selector {
                    what: format!("executable {}", p.display()),
                    reason: "this kernel's BTF lacks the offsets needed to identify executables; use a cgroup or uid selector".into(),
                }),
                SelectorSpec::Exe(p) => exe_identity(p).map(|k| {
                    want.exes.entry(k).or_insert((0, p.clone())).0 |= bit;
                }),
                SelectorSpec::Uid(u) => {
                    *want.uids.entry(*u).or_insert(0) |= bit;
                    Ok(())
                }
            };
            match resolved {
                Ok(()) => {}
                Err(SensorError::Selector { what, reason }) => {
                    problems.push(format!("{what}: {reason}"))
                }
                Err(e) => return Err(e),
            }
        }
        self.selectors = want.clone();
        let cgroups: Vec<(u64, u64)> = want.cgroups.iter().map(|(k, (c, _))| (*k, *c)).collect();
        let uids: Vec<(u32, u64)> = want.uids.iter().map(|(k, c)| (*k, *c)).collect();
        let exes: Vec<(ExeKey, u64)> = want.exes.iter().map(|(k, (c, _))| (*k, *c)).collect();
        self.replace_selectors("CGROUP_SELECTORS", &cgroups)?;
        self.replace_selectors("UID_SELECTORS", &uids)?;
        self.replace_selectors("EXE_SELECTORS", &exes)?;
        Ok(problems)
    }

    /// Makes selector map `map` hold exactly `want` (see `replace_entries`).
    /// The keys are read from the kernel, not from the user-space mirror:
    /// entries an earlier agent wrote into an adopted pinned map go too.
    fn replace_selectors<K: aya::Pod + Eq + std::hash::Hash>(
        &mut self,
        map: &'static str,
        want: &[(K, u64)],
    ) -> Result<(), SensorError> {
        let m = self.ebpf.map_mut(map).ok_or(SensorError::MissingMap(map))?;
        let h = std::cell::RefCell::new(
            BpfHashMap::<&mut MapData, K, u64>::try_from(m).map_err(map_err(map))?,
        );
        let old: Vec<K> = h.borrow().keys().filter_map(Result::ok).collect();
        replace_entries(
            &old,
            want,
            capacity::SELECTORS,
            |k, v| h.borrow_mut().insert(k, v, 0).map_err(map_err(map)),
            |k| {
                // Gone already is fine.
                let _ = h.borrow_mut().remove(k);
            },
        )
    }

    /// Makes the taint sources exactly `sources`, new ones first (see
    /// `set_selectors`).
    pub fn set_taint_sources(
        &mut self,
        sources: &[(IpNet, RangeInclusive<u16>, ClassId)],
    ) -> Result<(), SensorError> {
        let mut want: HashMap<PrefixKey, TaintSource> = HashMap::new();
        for (net, ports, class) in sources {
            let bit = class_bit(*class)?;
            let e = want.entry(prefix_key(net)).or_insert(TaintSource {
                classes: 0,
                port_lo: *ports.start(),
                port_hi: *ports.end(),
                _pad: 0,
            });
            e.classes |= bit;
        }
        // The kernel looks at the trie only while the flag is on: on before
        // entries appear, off after the last one is gone.
        if !want.is_empty() {
            self.set_has_taint(true)?;
        }
        self.replace_prefixes("TAINT", &want, capacity::TAINT)?;
        if want.is_empty() {
            self.set_has_taint(false)?;
        }
        Ok(())
    }

    /// Makes the failsafe prefixes exactly `nets`, new ones first.
    pub fn set_failsafe(&mut self, nets: &[IpNet]) -> Result<(), SensorError> {
        let want: HashMap<PrefixKey, u8> = nets.iter().map(|n| (prefix_key(n), 1)).collect();
        self.replace_prefixes("FAILSAFE", &want, capacity::FAILSAFE)?;
        // Verdicts cached for destinations that are now failsafe (or no longer)
        // must not outlive the change.
        self.write_config()
    }

    /// Makes the LPM trie `name` hold exactly `want`: new and changed entries
    /// are written first, stale ones removed after, so an entry both sets share
    /// is never missing.
    fn replace_prefixes<V: aya::Pod>(
        &mut self,
        name: &'static str,
        want: &HashMap<PrefixKey, V>,
        cap: u32,
    ) -> Result<(), SensorError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(SensorError::MissingMap(name))?;
        let trie: LpmTrie<&mut MapData, [u8; 16], V> =
            LpmTrie::try_from(map).map_err(map_err(name))?;
        let old: Vec<PrefixKey> = trie
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let want: Vec<(PrefixKey, V)> = want.iter().map(|(k, v)| (*k, *v)).collect();
        let trie = std::cell::RefCell::new(trie);
        replace_entries(
            &old,
            &want,
            cap,
            |k, v| {
                trie.borrow_mut()
                    .insert(&Key::new(k.0, k.1), v, 0)
                    .map_err(map_err(name))
            },
            |k| {
                let _ = trie.borrow_mut().remove(&Key::new(k.0, k.1));
            },
        )
    }
}

/// Makes a map that holds `old` hold exactly `want`: new and changed entries
/// first, stale ones after, so an entry both sets share is never missing and
/// no destination is briefly uncovered that a new entry covers. When old and
/// new together would not fit the map's `cap`, stale entries go first
/// instead: an install must not fail half-way on a full map.
fn replace_entries<K: Copy + Eq + std::hash::Hash, V: Copy>(
    old: &[K],
    want: &[(K, V)],
    cap: u32,
    mut insert: impl FnMut(K, V) -> Result<(), SensorError>,
    mut remove: impl FnMut(&K),
) -> Result<(), SensorError> {
    let wanted: std::collections::HashSet<&K> = want.iter().map(|(k, _)| k).collect();
    let had: std::collections::HashSet<&K> = old.iter().collect();
    let stale: Vec<&K> = old.iter().filter(|k| !wanted.contains(k)).collect();
    let union = old.len() + wanted.iter().filter(|k| !had.contains(*k)).count();
    let stale_first = union > cap as usize;
    if stale_first {
        stale.iter().for_each(|k| remove(k));
    }
    for (k, v) in want {
        insert(*k, *v)?;
    }
    if !stale_first {
        stale.iter().for_each(|k| remove(k));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operations `replace_entries` does, in order.
    fn ops(old: &[u32], want: &[u32], cap: u32) -> Vec<String> {
        let log = std::cell::RefCell::new(Vec::new());
        let want: Vec<(u32, ())> = want.iter().map(|k| (*k, ())).collect();
        replace_entries(
            old,
            &want,
            cap,
            |k, ()| {
                log.borrow_mut().push(format!("+{k}"));
                Ok(())
            },
            |k| log.borrow_mut().push(format!("-{k}")),
        )
        .unwrap();
        log.into_inner()
    }

    #[test]
    fn new_entries_go_in_before_stale_ones_leave_unless_that_overfills_the_map() {
        assert_eq!(ops(&[1, 2], &[2, 3], 4), ["+2", "+3", "-1"]);
        assert_eq!(
            ops(&[1, 2], &[2, 3], 2),
            ["-1", "+2", "+3"],
            "1, 2 and 3 at once do not fit 2"
        );
    }
}
