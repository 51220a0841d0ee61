//! Errors of the agent library. Each says what failed and what to do about it.

use std::path::PathBuf;

/// Everything the agent library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with systemd.unified_cgroup_hierarchy"
    )]
    NoCgroup2,
    #[error(
        "mounting {fs} at {path} failed: {source}; mount it by hand with `mount -t {fs} {fs} {path}`"
    )]
    Mount {
        fs: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cgroup {path} cannot be opened: {source} (is it a directory under the cgroup v2 mount?)"
    )]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("selector {what}: {reason}")]
    Selector { what: String, reason: String },
    #[error("class id {0} is out of range: class ids are 0..64")]
    ClassOutOfRange(u8),
    #[error("loading the kernel object failed: {0} (run `sensord --preflight` to check the host)")]
    Load(#[from] aya::EbpfError),
    #[error("kernel program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "kernel map {0} is missing from the embedded object (the build is inconsistent: rebuild)"
    )]
    MissingMap(&'static str),
    #[error(
        "kernel program {0} is missing from the embedded object (the build is inconsistent: rebuild)"
    )]
    MissingProgram(&'static str),
    #[error(
        "the policy needs {need} entries in kernel map {map}, which holds {capacity}; nothing was installed and the running policy stays in force (`sensorctl policy check --compile FILE` points at the section to shrink)"
    )]
    Capacity {
        map: &'static str,
        need: usize,
        capacity: u32,
    },
    #[error("pinned kernel state at {dir}: {reason}")]
    Pins { dir: PathBuf, reason: String },
}
