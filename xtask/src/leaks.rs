//! Leak check around the test suite: kernel objects the harness creates must all
//! be gone when it ends (network namespaces, veths, cgroups, pinned objects), and
//! so must the processes it starts (sensord, collectord, PostgreSQL servers)
//! and their temporary directories.

use std::{collections::BTreeSet, process::Command};

/// What the harness could leave behind, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub netns: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    pub pins: BTreeSet<String>,
    /// "pid comm" of sensord, collectord and harness PostgreSQL processes.
    pub processes: BTreeSet<String>,
    /// The harness's temporary directories (`/tmp/rs-*`).
    pub temp: BTreeSet<String>,
}

/// Processes the harness starts: our daemons, and PostgreSQL servers whose
/// data lives in a harness directory (not the machine's own cluster).
fn harness_processes() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = matches!(comm, "sensord" | "collectord")
            || (comm == "postgres" && cmdline.contains("/rs-"));
        if ours {
            out.insert(format!("{pid} {comm}"));
        }
    }
    out
}

fn dir_names(path: &str, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

fn cgroup2_root() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        (after.split(' ').next()? == "cgroup2")
            .then(|| before.split(' ').nth(4).map(str::to_owned))?
    })
}

/// Takes a snapshot now.
pub fn snapshot() -> Snapshot {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    l.split(": ")
                        .nth(1)
                        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
                })
                .filter(|n| n.starts_with("rs"))
                .collect()
        })
        .unwrap_or_default();
    Snapshot {
        netns: dir_names("/run/netns", |n| n.starts_with("rs-")),
        links,
        cgroups: cgroup2_root()
            .map(|r| dir_names(&r, |n| n.starts_with("residency-test-")))
            .unwrap_or_default(),
        pins: dir_names("/sys/fs/bpf", |n| n != "maps.debug" && n != "progs.debug"),
        processes: harness_processes(),
        temp: dir_names(&std::env::temp_dir().to_string_lossy(), |n| {
            n.starts_with("rs-")
        }),
    }
}

/// Objects present in `after` but not in `before`, described for a human.
pub fn leaked(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, b, a) in [
        ("network namespace", &before.netns, &after.netns),
        ("network link", &before.links, &after.links),
        ("cgroup", &before.cgroups, &after.cgroups),
        ("bpffs entry", &before.pins, &after.pins),
        ("process", &before.processes, &after.processes),
        ("temporary file", &before.temp, &after.temp),
    ] {
        out.extend(a.difference(b).map(|n| format!("{kind} {n}")));
    }
    out
}

/// Removes what `after` holds beyond `before` (what a killed test could not
/// clean up itself): processes first (they hold the rest), then network
/// namespaces and links, cgroups (their remaining tasks killed), pins and
/// temporary directories. Returns what could not be removed.
pub fn clean(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    for p in after.processes.difference(&before.processes) {
        if let Some(pid) = p.split(' ').next().and_then(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for n in after.netns.difference(&before.netns) {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    for l in after.links.difference(&before.links) {
        // Gone already when its peer's namespace went.
        let _ = Command::new("ip").args(["link", "del", l]).output();
    }
    if let Some(root) = cgroup2_root() {
        for c in after.cgroups.difference(&before.cgroups) {
            remove_cgroup(&std::path::Path::new(&root).join(c));
        }
    }
    for p in after.pins.difference(&before.pins) {
        let path = std::path::Path::new("/sys/fs/bpf").join(p);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    let tmp = std::env::temp_dir();
    for t in after.temp.difference(&before.temp) {
        let path = tmp.join(t);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    // Exiting processes release cgroups and links a moment later.
    settled(before).1
}

/// A snapshot and what it holds beyond `before`, taken again each second
/// for up to 10 s while anything is left: what exiting processes still tear
/// down (a daemon in its graceful stop, a cgroup whose last task is being
/// reaped) gets a few seconds before it counts.
pub fn settled(before: &Snapshot) -> (Snapshot, Vec<String>) {
    let mut after = snapshot();
    let mut left = leaked(before, &after);
    for _ in 0..10 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        after = snapshot();
        left = leaked(before, &after);
    }
    (after, left)
}

/// Kills every task of a cgroup tree (cgroup.kill) and removes it, leaves
/// first.
fn remove_cgroup(dir: &std::path::Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
