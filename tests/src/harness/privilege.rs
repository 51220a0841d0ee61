//! Privileged tests never skip silently: a skipped suite would look green and
//! prove nothing.

/// Panics with an explanation unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these end-to-end tests load eBPF programs, create cgroups and network namespaces: run them as root (e.g. `sudo -E cargo xtask test`); they fail rather than skip so a non-root run cannot pass by proving nothing"
    );
}
