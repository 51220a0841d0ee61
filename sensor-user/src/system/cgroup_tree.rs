//! Finds cgroups by name: the systemd unit or the container a selector
//! names, wherever in the cgroup2 tree its manager put it.
//!
//! One walk answers every name at once. Below a directory a name matched,
//! that name is not looked for again (the kernel's selector check covers the
//! cgroups below a selected one), and the walk stops at the depth the
//! kernel's check walks ([`MAX_CGROUP_DEPTH`] levels, the root included).

use std::path::{Path, PathBuf};

use sensor_common::tag::MAX_CGROUP_DEPTH;

use super::workload::container;

/// Levels below the root the walk descends at most.
const MAX_DEPTH: usize = MAX_CGROUP_DEPTH as usize - 1;

/// A cgroup name a selector asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamedCgroup {
    /// A systemd unit that has a cgroup: "nginx.service", "session-3.scope",
    /// "app.slice". Matches the directory of that exact name.
    Unit(String),
    /// A container id or a prefix of it (lowercase hex), as `docker ps` or
    /// `crictl ps` print it. Matches the container's cgroup under every
    /// runtime's naming (see [`container`]).
    Container(String),
}

impl NamedCgroup {
    /// Whether directory `name` (under `parent`) is this cgroup.
    pub fn matches(&self, name: &str, parent: Option<&str>) -> bool {
        match self {
            NamedCgroup::Unit(unit) => name == unit,
            NamedCgroup::Container(prefix) => {
                container(name, parent).is_some_and(|(_, id)| id.starts_with(prefix.as_str()))
            }
        }
    }
}

/// The directories under `root` each of `names` matches, in `names`' order
/// (an empty list: no such cgroup exists now).
pub fn find(root: &Path, names: &[NamedCgroup]) -> Vec<Vec<PathBuf>> {
    let mut found = vec![Vec::new(); names.len()];
    if names.is_empty() {
        return found;
    }
    let covered = vec![false; names.len()];
    walk(root, None, 0, names, &covered, &mut found);
    found.iter_mut().for_each(|v| v.sort());
    found
}

fn walk(
    dir: &Path,
    name: Option<&str>,
    depth: usize,
    names: &[NamedCgroup],
    covered: &[bool],
    found: &mut [Vec<PathBuf>],
) {
    if depth >= MAX_DEPTH {
        return;
    }
    // A cgroup removed while we walk is simply not there.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // cgroupfs holds directories (cgroups) and files (interfaces); no
        // symlinks to follow.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = entry.file_name();
        let Some(child) = child.to_str() else {
            continue;
        };
        let path = entry.path();
        let mut below = covered.to_vec();
        for (i, n) in names.iter().enumerate() {
            if !covered[i] && n.matches(child, name) {
                found[i].push(path.clone());
                below[i] = true;
            }
        }
        if below.iter().any(|c| !c) {
            walk(&path, Some(child), depth + 1, names, &below, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6bb7b2f3a9d1c0e5a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0d";

    #[test]
    fn units_match_their_exact_name_only() {
        let u = NamedCgroup::Unit("nginx.service".into());
        assert!(u.matches("nginx.service", Some("system.slice")));
        assert!(!u.matches("nginx-exporter.service", Some("system.slice")));
        assert!(!u.matches("nginx", Some("system.slice")));
    }

    #[test]
    fn containers_match_by_id_prefix_under_every_runtime() {
        let c = NamedCgroup::Container(ID[..12].into());
        for (name, parent) in [
            (format!("docker-{ID}.scope"), "system.slice"),
            (format!("cri-containerd-{ID}.scope"), "kubepods-pod1.slice"),
            (format!("crio-{ID}.scope"), "kubepods-pod1.slice"),
            (format!("libpod-{ID}.scope"), "machine.slice"),
            (ID.to_owned(), "docker"),
        ] {
            assert!(c.matches(&name, Some(parent)), "{name}");
        }
        let other = format!("docker-{}.scope", ID.replace('4', "5"));
        assert!(!c.matches(&other, Some("system.slice")));
        assert!(!c.matches("crio-conmon-abc.scope", Some("system.slice")));
    }

    #[test]
    fn the_walk_finds_nested_names_and_stops_at_a_match() {
        let dir = std::env::temp_dir().join(format!("cgroup-tree-{}", std::process::id()));
        let root = dir.as_path();
        let svc = root.join("system.slice/nginx.service");
        std::fs::create_dir_all(svc.join("nginx.service")).expect("mkdir");
        let ctr = root.join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(ctr.join("system.slice/nginx.service")).expect("mkdir");
        std::fs::write(root.join("cgroup.procs"), "").expect("file");
        let found = find(
            root,
            &[
                NamedCgroup::Unit("nginx.service".into()),
                NamedCgroup::Container(ID[..8].into()),
                NamedCgroup::Unit("absent.service".into()),
            ],
        );
        // The host's unit (not its nested namesake again), and the
        // container's own unit: the container selector matched above it,
        // the unit selector had not.
        assert_eq!(found[0], vec![ctr.join("system.slice/nginx.service"), svc]);
        assert_eq!(found[1], vec![ctr]);
        assert!(found[2].is_empty());
        std::fs::remove_dir_all(root).expect("cleanup");
    }
}
