//! Running `netprobe` (this crate's helper binary) and reading its report.

use std::process::Command;

/// What one netprobe run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe's pid (= tgid), as the kernel reports it.
    pub pid: u32,
    /// errno of the failed call, 0 on success.
    pub errno: i32,
    /// Which call failed ("" on success).
    pub failed_call: String,
}

/// Path of the netprobe binary. Integration tests get it from cargo
/// (`CARGO_BIN_EXE_netprobe`); pass that in.
pub fn command(netprobe: &str, args: &[&str]) -> Command {
    let mut c = Command::new(netprobe);
    c.args(args);
    c
}

/// Runs the command to completion and parses the JSON line netprobe prints.
pub fn run(mut cmd: Command) -> ProbeResult {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "{cmd:?} printed nothing; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("netprobe output {line:?}: {e}"));
    ProbeResult {
        pid: v["pid"].as_u64().expect("pid") as u32,
        errno: v["errno"].as_i64().expect("errno") as i32,
        failed_call: v["failed_call"].as_str().unwrap_or("").to_owned(),
    }
}
