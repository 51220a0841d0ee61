//! Startup checks: say what is wrong with the host before loading anything, in
//! words an SRE can act on, instead of surfacing a raw EPERM from the verifier.

use std::{fmt, path::Path};

use crate::system::mountinfo;

/// Linux capability numbers we look for (capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name, stable for scripts (`privileges`, `bpf`, `cgroup2`, `btf`).
    pub name: &'static str,
    /// `None` when the check passed, otherwise what is wrong and what to do.
    pub problem: Option<String>,
    /// What was found, for the log.
    pub detail: String,
}

/// All checks.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.problem.is_none())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            match &c.problem {
                None => writeln!(f, "ok    {:<10} {}", c.name, c.detail)?,
                Some(p) => writeln!(f, "FAIL  {:<10} {p}", c.name)?,
            }
        }
        Ok(())
    }
}

/// Effective capability mask from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn has_cap(mask: u64, cap: u32) -> bool {
    mask & (1u64 << cap) != 0
}

fn check_privileges() -> Check {
    let euid = unsafe { libc::geteuid() };
    let caps = effective_caps().unwrap_or(0);
    let enough = has_cap(caps, CAP_SYS_ADMIN)
        || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_NET_ADMIN) && has_cap(caps, CAP_PERFMON));
    Check {
        name: "privileges",
        problem: (!enough).then(|| {
            format!(
                "running as uid {euid} without CAP_SYS_ADMIN or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON: loading and attaching eBPF programs needs them; run as root (e.g. `sudo sensord`) or grant the capabilities in the systemd unit"
            )
        }),
        detail: format!("euid {euid}, CapEff {caps:#x}"),
    }
}

/// Tries to create a one-entry array map: the cheapest proof that the bpf()
/// syscall is there and that we may use it.
fn check_bpf_syscall() -> Check {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: attr is a valid, fully initialised prefix of union bpf_attr; the
    // kernel accepts a shorter size and zero-extends it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            size_of::<MapCreate>() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned to us by the kernel and is owned here.
        unsafe { libc::close(fd as i32) };
        return Check {
            name: "bpf",
            problem: None,
            detail: "bpf() syscall works".into(),
        };
    }
    let err = std::io::Error::last_os_error();
    let problem = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no bpf() syscall (CONFIG_BPF_SYSCALL is off): this host cannot run the sensor".to_owned(),
        Some(libc::EPERM) => format!("bpf() was refused ({err}): run as root, and check that kernel lockdown or a seccomp profile (container runtimes) does not forbid bpf()"),
        _ => format!("bpf() failed: {err}"),
    };
    Check {
        name: "bpf",
        problem: Some(problem),
        detail: String::new(),
    }
}

fn check_cgroup2() -> Check {
    match mountinfo::cgroup2_mount() {
        Ok(p) => Check {
            name: "cgroup2",
            problem: None,
            detail: format!("mounted at {}", p.display()),
        },
        Err(e) => Check {
            name: "cgroup2",
            problem: Some(e.to_string()),
            detail: String::new(),
        },
    }
}

fn check_btf() -> Check {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if path.exists() {
        Check {
            name: "btf",
            problem: None,
            detail: format!("{} present", path.display()),
        }
    } else {
        Check {
            name: "btf",
            problem: Some(format!(
                "{} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF; use a distribution kernel with BTF (Debian 11+ kernels have it)",
                path.display()
            )),
            detail: String::new(),
        }
    }
}

/// Runs every check.
/// The oldest kernel the sensor can run on: the egress backstop asks for the
/// current process id in a cgroup_skb program (allowed since 6.10); bpf_link
/// for perf events (5.15, pinned tracepoint links), `cgroup.ancestors` (6.1,
/// cgroup moves), BPF compare-and-swap (5.12) and cgroup link updates (5.7)
/// are older.
pub const MIN_KERNEL: (u32, u32) = (6, 10);
/// The kernel every end-to-end test of this release ran on.
pub const TESTED_KERNEL: (u32, u32) = (6, 18);

/// "6.18.44-fc-v857" → (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel's version against what the sensor needs and what was tested.
fn check_kernel_version(release: &str) -> Check {
    let (min, tested) = (MIN_KERNEL, TESTED_KERNEL);
    let found = parse_kernel_version(release);
    let problem = match found {
        None => Some(format!(
            "cannot read a version from kernel release {release:?}; the sensor needs Linux {}.{} or newer",
            min.0, min.1
        )),
        Some(v) if v < min => Some(format!(
            "kernel {}.{} is older than {}.{}: the egress backstop that judges packets after NAT needs bpf_get_current_pid_tgid in cgroup_skb programs (6.10); upgrade the kernel",
            v.0, v.1, min.0, min.1
        )),
        Some(_) => None,
    };
    let detail = match found {
        Some(v) if v < tested => format!(
            "{} (supported; the release was tested on {}.{}: run the end-to-end tests on this kernel before relying on it)",
            release.trim(),
            tested.0,
            tested.1
        ),
        _ => release.trim().to_owned(),
    };
    Check {
        name: "kernel",
        problem,
        detail,
    }
}

pub fn run() -> Report {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Report {
        checks: vec![
            check_kernel_version(&release),
            check_privileges(),
            check_bpf_syscall(),
            check_cgroup2(),
            check_btf(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_failures_with_their_fix() {
        let r = Report {
            checks: vec![
                Check {
                    name: "btf",
                    problem: None,
                    detail: "present".into(),
                },
                Check {
                    name: "bpf",
                    problem: Some("do this".into()),
                    detail: String::new(),
                },
            ],
        };
        assert!(!r.ok());
        let text = r.to_string();
        assert!(text.contains("ok    btf"));
        assert!(text.contains("FAIL  bpf        do this"));
    }

    #[test]
    fn kernel_versions_are_checked_against_the_minimum() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v857"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert!(check_kernel_version("6.18.44").problem.is_none());
        let old = check_kernel_version("5.10.0-28-amd64");
        assert!(old.problem.as_deref().is_some_and(|p| p.contains("6.10")));
        let untested = check_kernel_version("6.12.0-18-amd64");
        assert!(untested.problem.is_none());
        assert!(untested.detail.contains("tested on 6.18"));
        assert!(check_kernel_version("garbage").problem.is_some());
    }

    #[test]
    fn capability_bits() {
        assert!(has_cap(1 << CAP_BPF, CAP_BPF));
        assert!(!has_cap(1 << CAP_BPF, CAP_SYS_ADMIN));
    }
}
