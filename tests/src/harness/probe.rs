//! Running `netprobe` (this crate's helper binary) and reading its report.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
};

/// Path of the netprobe binary. Cargo builds it next to the test binaries'
/// directory (`target/<profile>/netprobe`, tests in `target/<profile>/deps/`).
pub fn netprobe() -> std::path::PathBuf {
    super::agent::workspace_bin("netprobe")
}

/// What one netprobe run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The pid (= tgid) of the process that made the calls.
    pub pid: u32,
    /// The thread that made the calls.
    pub tid: u32,
    /// One errno per operation, 0 on success.
    pub errnos: Vec<i32>,
}

impl ProbeResult {
    /// The errno of the first operation.
    pub fn errno(&self) -> i32 {
        self.errnos[0]
    }
}

/// A netprobe command: `args` as on its command line.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(netprobe());
    c.args(args);
    c
}

/// A gateprobe command (the ways around the connect hooks): `args` as on its
/// command line.
pub fn gateprobe(args: &[&str]) -> Command {
    let mut c = Command::new(super::agent::workspace_bin("gateprobe"));
    c.args(args);
    c
}

/// Parses netprobe's report line.
pub fn parse(line: &str) -> ProbeResult {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("netprobe output {line:?}: {e}"));
    ProbeResult {
        pid: v["pid"].as_u64().expect("pid") as u32,
        tid: v["tid"].as_u64().expect("tid") as u32,
        errnos: v["errno"]
            .as_array()
            .expect("errno")
            .iter()
            .map(|e| e.as_i64().expect("errno") as i32)
            .collect(),
    }
}

/// Runs the command to completion and parses its report.
pub fn run(mut cmd: Command) -> ProbeResult {
    let out = super::deadline::output_within(&mut cmd, super::deadline::CLI, String::new);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"errno\""))
        .unwrap_or_else(|| {
            panic!(
                "{cmd:?} printed no report; stdout: {stdout} stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    parse(line)
}

/// `n` UDP datagrams from `cgroup` to `target` (netprobe udp-sendto), each
/// checked to have gone through: one violation each under a monitoring
/// policy without aggregation.
pub fn violate(cgroup: &super::cgroup::TestCgroup, target: &str, n: usize) {
    run_all_ok(&netprobe(), cgroup, "udp-sendto", target, n);
}

/// Runs `exe` (netprobe, or a copy of it) in `cgroup` doing `op` to `target`
/// `n` times in one process, and checks that each one ran and succeeded
/// (monitor mode lets them through).
pub fn run_all_ok(
    exe: &std::path::Path,
    cgroup: &super::cgroup::TestCgroup,
    op: &str,
    target: &str,
    n: usize,
) -> ProbeResult {
    let mut cmd = Command::new(exe);
    for _ in 0..n {
        cmd.args([op, target]);
    }
    let p = run(cgroup.command(cmd));
    assert_eq!(p.errnos.len(), n, "the probe ran every operation");
    assert!(
        p.errnos.iter().all(|e| *e == 0),
        "monitor mode lets them through: {p:?}"
    );
    p
}

/// A probe started with `--wait-stdin` (or any command reading a line): it waits
/// until [`Waiting::go`], so the test can tag it first.
pub struct Waiting {
    pub child: Child,
    what: String,
    stdin: Option<ChildStdin>,
    /// Lines the process prints, read on a thread of their own so that every
    /// read has a deadline.
    lines: std::sync::mpsc::Receiver<String>,
}

/// How long a waiting process may take to print its next line.
const LINE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl Waiting {
    /// Starts `cmd` with piped stdin/stdout.
    pub fn start(mut cmd: Command) -> Waiting {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut line = String::new();
                match stdout.read_line(&mut line) {
                    Ok(n) if n > 0 => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Waiting {
            child,
            what,
            stdin,
            lines,
        }
    }

    /// The waiting process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line, or a panic naming the process when none comes within
    /// [`LINE_DEADLINE`] (`None`: it closed its output).
    fn next_line(&mut self) -> Option<String> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.lines.recv_timeout(LINE_DEADLINE) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!(
                    "timed out after {LINE_DEADLINE:?} waiting for a line from {} (killed)",
                    self.what
                )
            }
        }
    }

    /// Lets it go and returns its report.
    pub fn go(mut self) -> ProbeResult {
        if let Some(mut stdin) = self.stdin.take() {
            // A process that does not wait for stdin may have closed it already.
            let _ = stdin.write_all(b"go\n");
        }
        loop {
            let line = self.next_line().expect("probe exited without a report");
            if line.contains("\"errno\"") {
                let _ = super::deadline::wait_child(&mut self.child, LINE_DEADLINE);
                return parse(line.trim());
            }
        }
    }

    /// Writes `line` (and a newline) to the process's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to the probe");
    }

    /// Reads the next line the process prints (e.g. `{"listening":PORT}`);
    /// empty when it closed its output.
    pub fn read_line(&mut self) -> String {
        self.next_line().unwrap_or_default()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
