//! Whose flow is it: a record's cgroup id resolved to the cgroup's path,
//! and from the path's naming the systemd unit, or the container (id and
//! runtime: docker, containerd, cri-o, podman) and, under Kubernetes, the
//! pod UID and QoS class.
//!
//! The id is the cgroup directory's inode on the cgroup2 mount; the kernel
//! opens it by that id (`open_by_handle_at` with a kernfs file handle, which
//! needs CAP_DAC_READ_SEARCH, as sensord has), and the open directory's link
//! in /proc names its path. Each id is resolved once (ids are not reused
//! while the host runs); a cgroup gone before its first record keeps an
//! empty path.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
};

/// What a cgroup path says about the workload in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The cgroup's path under the cgroup2 mount ("/system.slice/nginx.service").
    pub cgroup: String,
    /// The innermost systemd unit: a service or scope ("nginx.service").
    pub unit: String,
    /// The container's id (64 hex digits, as the runtime names it).
    pub container_id: String,
    /// docker, containerd, cri-o or podman.
    pub runtime: String,
    /// The Kubernetes pod's UID (with dashes).
    pub pod_uid: String,
    /// The pod's QoS class: guaranteed, burstable or besteffort.
    pub qos: String,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container a cgroup name names, with its runtime; `parent` is the
/// name of the directory above (the cgroupfs drivers put a bare id under
/// the runtime's directory).
pub fn container(segment: &str, parent: Option<&str>) -> Option<(&'static str, String)> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    for (prefix, runtime) in [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((runtime, id.to_owned()));
        }
    }
    // cgroupfs drivers: the bare id under a runtime's directory, or under
    // a Kubernetes pod (the runtime is not in the name there).
    if is_container_id(name) {
        let runtime = match parent {
            Some("docker") => "docker",
            Some(p) if p.starts_with("libpod") => "podman",
            _ => "containerd",
        };
        return Some((runtime, name.to_owned()));
    }
    None
}

/// The pod UID and QoS a Kubernetes cgroup name names.
fn pod(segment: &str) -> Option<(String, Option<&'static str>)> {
    // systemd driver: kubepods[-QOS]-pod<uid with _>.slice
    if let Some(rest) = segment
        .strip_prefix("kubepods-")
        .and_then(|s| s.strip_suffix(".slice"))
    {
        let (qos, uid) = if let Some(u) = rest.strip_prefix("burstable-pod") {
            (Some("burstable"), u)
        } else if let Some(u) = rest.strip_prefix("besteffort-pod") {
            (Some("besteffort"), u)
        } else if let Some(u) = rest.strip_prefix("pod") {
            (Some("guaranteed"), u)
        } else {
            return None;
        };
        return Some((uid.replace('_', "-"), qos));
    }
    // cgroupfs driver: pod<uid>
    let uid = segment.strip_prefix("pod")?;
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| (uid.to_owned(), None))
}

impl Workload {
    /// Reads the workload from a cgroup path.
    pub fn of_path(cgroup: &str) -> Workload {
        let mut w = Workload {
            cgroup: cgroup.to_owned(),
            ..Default::default()
        };
        let segments: Vec<&str> = cgroup.split('/').filter(|s| !s.is_empty()).collect();
        let mut parent: Option<&str> = None;
        for (i, seg) in segments.iter().enumerate() {
            if seg.ends_with(".service") || seg.ends_with(".scope") {
                w.unit = (*seg).to_owned();
            }
            if let Some((runtime, id)) = container(seg, parent) {
                w.runtime = runtime.to_owned();
                w.container_id = id;
            }
            if let Some((uid, qos)) = pod(seg) {
                w.pod_uid = uid;
                w.qos = match qos {
                    Some(q) => q.to_owned(),
                    // cgroupfs: the QoS is the directory above the pod
                    // (none: guaranteed).
                    None => match i.checked_sub(1).map(|j| segments[j]) {
                        Some("burstable") => "burstable".into(),
                        Some("besteffort") => "besteffort".into(),
                        _ => "guaranteed".into(),
                    },
                };
            }
            parent = Some(seg);
        }
        w
    }
}

impl Workload {
    /// The workload of process `pid`, from /proc (empty when it is gone).
    pub fn of_pid(pid: u32) -> Workload {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .map(Workload::of_path)
            })
            .unwrap_or_default()
    }
}

/// Resolves cgroup ids to workloads, once per id.
#[derive(Debug)]
pub struct WorkloadCache {
    /// The cgroup2 mount and an open directory on it.
    root: PathBuf,
    mount: Option<std::fs::File>,
    by_id: HashMap<u64, Arc<Workload>>,
    none: Arc<Workload>,
}

/// Entries the cache holds at most; past this it starts over.
const CACHE_MAX: usize = 65_536;

/// `struct file_handle` with room for a kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// `FILEID_KERNFS`: a kernfs node by its 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

impl WorkloadCache {
    /// Resolves ids on the cgroup2 mount at `root`.
    pub fn new(root: &Path) -> WorkloadCache {
        WorkloadCache {
            root: root.to_owned(),
            mount: std::fs::File::open(root).ok(),
            by_id: HashMap::new(),
            none: Arc::new(Workload::default()),
        }
    }

    /// The workload of cgroup `id` (empty when it cannot be resolved).
    pub fn get(&mut self, id: u64) -> Arc<Workload> {
        if id == 0 {
            return self.none.clone();
        }
        if let Some(w) = self.by_id.get(&id) {
            return w.clone();
        }
        if self.by_id.len() >= CACHE_MAX {
            self.by_id.clear();
        }
        let w = Arc::new(
            self.path_of(id)
                .map(|p| Workload::of_path(&p))
                .unwrap_or_default(),
        );
        self.by_id.insert(id, w.clone());
        w
    }

    /// The path of cgroup `id` under the mount ("/" for the root).
    fn path_of(&self, id: u64) -> Option<String> {
        let mount = self.mount.as_ref()?;
        let handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: a valid file_handle (8 bytes of f_handle follow the
        // header), a valid directory fd; the result is a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount.as_raw_fd(),
                &handle as *const KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd owned here.
        let dir = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let full = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let rel = full.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }
}

/// The cgroup id of the directory at `path` (its inode), for tests and
/// selectors.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6bb7b2f3a9d1c0e5a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0d";

    #[test]
    fn systemd_units() {
        let w = Workload::of_path("/system.slice/nginx.service");
        assert_eq!(
            (w.unit.as_str(), w.container_id.as_str()),
            ("nginx.service", "")
        );
        let w = Workload::of_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(w.unit, "session-3.scope");
        let w = Workload::of_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-foo.scope",
        );
        assert_eq!(w.unit, "app-gnome-foo.scope");
        assert_eq!(Workload::of_path("/").unit, "");
    }

    #[test]
    fn containers_of_each_runtime_and_driver() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "docker"),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                "podman",
            ),
            (format!("/libpod_parent/libpod-{ID}"), "podman"),
            (format!("/system.slice/crio-{ID}.scope"), "cri-o"),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                "containerd",
            ),
        ];
        for (path, runtime) in cases {
            let w = Workload::of_path(&path);
            assert_eq!(
                (w.runtime.as_str(), w.container_id.as_str()),
                (runtime, ID),
                "{path}"
            );
            assert_eq!(w.pod_uid, "", "{path}");
        }
        assert_eq!(Workload::of_path("/docker/not-an-id").container_id, "");
    }

    #[test]
    fn kubernetes_pods_with_their_qos() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let u = uid.replace('-', "_");
        let w = Workload::of_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(
            (
                w.pod_uid.as_str(),
                w.qos.as_str(),
                w.runtime.as_str(),
                w.container_id.as_str()
            ),
            (uid, "burstable", "containerd", ID)
        );
        assert_eq!(w.unit, format!("cri-containerd-{ID}.scope"));
        let w = Workload::of_path(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
        ));
        assert_eq!(
            (w.qos.as_str(), w.runtime.as_str()),
            ("besteffort", "cri-o")
        );
        let w = Workload::of_path(&format!(
            "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!((w.pod_uid.as_str(), w.qos.as_str()), (uid, "guaranteed"));
        // cgroupfs driver.
        let w = Workload::of_path(&format!("/kubepods/burstable/pod{uid}/{ID}"));
        assert_eq!(
            (w.pod_uid.as_str(), w.qos.as_str(), w.container_id.as_str()),
            (uid, "burstable", ID)
        );
        let w = Workload::of_path(&format!("/kubepods/pod{uid}/{ID}"));
        assert_eq!(w.qos, "guaranteed");
    }

    #[test]
    fn this_process_cgroup_resolves_by_id() {
        let Ok(root) = crate::system::mountinfo::cgroup2_mount() else {
            return; // no cgroup2 here
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return;
        };
        let dir = root.join(rel.trim_start_matches('/'));
        let Ok(id) = cgroup_id(&dir) else { return };
        // Root (CAP_DAC_READ_SEARCH) resolves it; others get nothing.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let mut cache = WorkloadCache::new(&root);
        let w = cache.get(id);
        let want = if rel.is_empty() { "/" } else { rel };
        assert_eq!(w.cgroup, want);
        assert!(Arc::ptr_eq(&w, &cache.get(id)), "cached");
        assert_eq!(cache.get(0).cgroup, "");
    }
}
