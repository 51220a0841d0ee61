//! Throw-away cgroups, and children started inside them.

use std::{
    fs,
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use sensor_user::system::mountinfo;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Prefix of every cgroup the harness creates, directly under the v2 root.
pub const PREFIX: &str = "residency-test-";

/// A cgroup removed (after killing what is left in it) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `residency-test-<pid>-<n>` under the cgroup v2 root, after removing
    /// cgroups left behind by test processes that no longer exist.
    pub fn create() -> TestCgroup {
        let root = mountinfo::cgroup2_mount().expect("cgroup v2 must be mounted");
        remove_stale(&root);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("{PREFIX}{}-{n}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// A cgroup `name` inside this one (drop it before its parent).
    pub fn child(&self, name: &str) -> TestCgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// A handle on an existing cgroup (another `TestCgroup` owns and removes
    /// it: `std::mem::forget` this one).
    pub fn adopt(path: PathBuf) -> TestCgroup {
        TestCgroup { path }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd` start inside this cgroup: the child moves itself in between
    /// fork and exec, so the program never runs outside it.
    pub fn command(&self, mut cmd: Command) -> Command {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .expect("opening cgroup.procs");
        // SAFETY: the closure only calls write(2) on an fd opened before fork
        // (async-signal-safe); `procs` is moved in and outlives the call.
        unsafe {
            cmd.pre_exec(move || {
                let fd = procs.as_raw_fd();
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Moves the running process `pid` into this cgroup (as a container
    /// runtime or `systemctl` would, after its exec).
    pub fn enter(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }

    /// pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.path)
    }
}

fn pids_in(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The cgroups directly inside `path`.
fn child_cgroups(path: &Path) -> Vec<PathBuf> {
    fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills everything in the cgroup and removes it with every cgroup inside
/// it (leaves first), waiting up to 20 s for the processes to be reaped.
/// A cgroup that still holds cgroups of its own and is not the top of the
/// tree (an intermediate `child()` dropped early, such as a temporary) is
/// left to the top one: waiting on it could only time out.
fn destroy(path: &Path) {
    if !path.exists() {
        return;
    }
    // Only `create()` names a cgroup with the prefix: the top of a tree.
    let top = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX));
    let children = child_cgroups(path);
    if !children.is_empty() {
        if !top {
            return;
        }
        for c in children {
            destroy_subtree(&c);
        }
    }
    // cgroup.kill (5.14+) kills the whole subtree atomically; fall back to
    // signalling each pid.
    if fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"))
        .is_err()
    {
        for pid in pids_in(path) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    // Killed tasks leave the cgroup once reaped: seconds on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::remove_dir(path).is_err() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if path.exists() {
        eprintln!(
            "harness: cgroup {} could not be removed within 20 s (procs: {:?})",
            path.display(),
            pids_in(path)
        );
    }
}

fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            destroy(&entry.path());
        }
    }
}

/// Removes `path` and everything inside it, leaves first.
fn destroy_subtree(path: &Path) {
    for c in child_cgroups(path) {
        destroy_subtree(&c);
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::remove_dir(path).is_err() && path.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        destroy(&self.path);
    }
}

/// Names of harness cgroups that currently exist (for leak checks).
pub fn existing() -> Vec<String> {
    let Ok(root) = mountinfo::cgroup2_mount() else {
        return Vec::new();
    };
    fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup id of the cgroup directory at `path` (its inode number).
pub fn id_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("cgroup {}: {e}", path.display()))
        .ino()
}
