//! A real `sensord` process for API tests: its own policy, region data, socket,
//! lock, state directory and pinned kernel state (a bpffs directory of its
//! own); stopped (SIGTERM, then SIGKILL) on drop, and its pinned state removed
//! (which detaches its programs) even when the test failed.

use super::deadline;
use residency_proto::agent::v1 as pb;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A binary of the workspace: next to the running binary (a tool in
/// target/<profile>/), or one directory up (a test in target/<profile>/deps/).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let here = exe.parent().expect("the binary is in a directory");
    let path = if here.join(name).is_file() {
        here.join(name)
    } else {
        here.parent().unwrap_or(here).join(name)
    };
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Where [`bin_for_others`] puts its copies (this test process's own
/// directory, removed when the process exits).
fn shared_bin_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!("/tmp/rs-bins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for shared binaries");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("making it reachable");
        extern "C" fn remove() {
            let _ = std::fs::remove_dir_all(format!("/tmp/rs-bins-{}", std::process::id()));
        }
        // SAFETY: registers a plain function; it runs at process exit.
        unsafe { libc::atexit(remove) };
        dir
    })
}

/// A binary of the workspace that processes of other users can execute
/// too: a copy in a world-readable directory. The checkout may live where
/// other users cannot enter (under /root, mode 0700); tests that run a
/// probe or a CLI as another uid use this.
pub fn bin_for_others(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dest = shared_bin_dir().join(name);
    if !dest.is_file() {
        // Copied under another name and renamed: tests running in parallel
        // never execute a half-written copy.
        let tmp = shared_bin_dir().join(format!(".{name}.{:?}", std::thread::current().id()));
        std::fs::copy(workspace_bin(name), &tmp).expect("copying the binary");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .expect("making it executable");
        std::fs::rename(&tmp, &dest).expect("putting the copy in place");
    }
    dest
}

/// A running sensord.
pub struct RunningAgent {
    child: Child,
    /// The command line, to start it again after a crash.
    args: Vec<std::ffi::OsString>,
    /// Environment of this sensord alone (never the test process's).
    env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// Its pinned kernel state (`--bpf-dir`).
    pub bpf_dir: PathBuf,
    pub socket: PathBuf,
    pub policy: PathBuf,
    pub log: PathBuf,
}

impl RunningAgent {
    /// Starts sensord with `policy` (TOML text) and `regions` (CSV text) and
    /// waits until its API answers.
    pub fn start(policy: &str, regions: &str) -> RunningAgent {
        Self::start_with(policy, regions, &[])
    }

    /// As `start`, with extra sensord arguments.
    pub fn start_with(policy: &str, regions: &str, extra: &[&str]) -> RunningAgent {
        Self::start_env(policy, regions, extra, &[])
    }

    /// As `start_with`, with environment variables for this sensord alone.
    pub fn start_env(
        policy: &str,
        regions: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RunningAgent {
        let mut agent = Self::launch(policy, regions, extra, env);
        agent.wait_ready();
        agent
    }

    /// As `start_env`, without waiting for the API (for a sensord expected
    /// to fail).
    pub fn launch(
        policy: &str,
        regions: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RunningAgent {
        super::privilege::require_root();
        let dir = std::env::temp_dir().join(format!(
            "rs-agent-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let policy_path = dir.join("policy.toml");
        std::fs::write(&policy_path, policy).expect("policy");
        std::fs::write(dir.join("regions.csv"), regions).expect("regions");
        let socket = dir.join("sensord.sock");
        let log = dir.join("sensord.log");
        let bpf_dir = PathBuf::from("/sys/fs/bpf").join(
            dir.file_name()
                .expect("a temp dir has a name")
                .to_string_lossy()
                .into_owned(),
        );
        let _ = std::fs::remove_dir_all(&bpf_dir);
        let mut args: Vec<std::ffi::OsString> = vec!["--policy".into(), policy_path.clone().into()];
        if !extra.contains(&"--regions") {
            args.extend(["--regions".into(), dir.join("regions.csv").into_os_string()]);
        }
        args.extend([
            "--socket".into(),
            socket.clone().into_os_string(),
            "--socket-mode".into(),
            "666".into(),
            "--lock".into(),
            dir.join("sensord.lock").into_os_string(),
            "--bpf-dir".into(),
            bpf_dir.clone().into_os_string(),
            "--state-dir".into(),
            dir.join("state").into_os_string(),
        ]);
        // Never /etc/residency/sensord.toml: a host with the package
        // installed must not change what a test agent does.
        if !extra.contains(&"--config") {
            let config = dir.join("sensord.toml");
            std::fs::write(&config, "# test agent: every setting from flags\n").expect("config");
            args.extend(["--config".into(), config.into_os_string()]);
        }
        args.extend(extra.iter().map(std::ffi::OsString::from));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn(&args, &env, &log);
        RunningAgent {
            child,
            args,
            env,
            dir,
            bpf_dir,
            socket,
            policy: policy_path,
            log,
        }
    }

    /// Waits up to `limit` for sensord to exit on its own; its status, or
    /// `None` when it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        deadline::wait_child(&mut self.child, limit)
    }

    /// Starts sensord again with the same settings (after `kill9` or
    /// `stop`), logging after what it logged before, and waits until its API
    /// answers.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.args, &self.env, &self.log);
        self.wait_ready();
    }

    /// SIGTERM, as `systemctl stop`, and waits for the exit; a sensord
    /// still running after [`deadline::STOP`] is killed and the test fails.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        match deadline::terminate(&mut self.child, deadline::STOP) {
            deadline::Stopped::Exited(status) => status,
            deadline::Stopped::Gone => panic!("sensord was not running"),
            deadline::Stopped::Killed => panic!(
                "sensord did not exit within {:?} of SIGTERM (killed); its log ends:\n{}",
                deadline::STOP,
                self.log_tail()
            ),
        }
    }

    fn wait_ready(&mut self) {
        let limit = Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        loop {
            if self.socket.exists() {
                let left = deadline.saturating_duration_since(Instant::now());
                let out = deadline::output_within(
                    &mut self.ctl_cmd(&["status"]),
                    left.max(Duration::from_secs(1)),
                    || format!("sensord's log ends:\n{}", self.log_tail()),
                );
                if out.status.success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sensord exited ({status}) before its API answered; its log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sensord did not come up in {limit:?}; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sensord process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs sensord with `args` once (e.g. `--uninstall`) with this agent's
    /// lock and pinned state directory; returns what it did.
    pub fn sensord_once(&self, args: &[&str]) -> Output {
        deadline::output_within(
            Command::new(workspace_bin("sensord"))
                .args(args)
                .arg("--lock")
                .arg(self.dir.join("sensord.lock"))
                .arg("--bpf-dir")
                .arg(&self.bpf_dir)
                .env("RUST_BACKTRACE", "0"),
            deadline::CLI,
            String::new,
        )
    }

    /// Runs sensorctl against this agent (killed, and the test failed with
    /// the agent's log tail, if it does not answer within [`deadline::CLI`]).
    pub fn ctl(&self, args: &[&str]) -> Output {
        deadline::output_within(&mut self.ctl_cmd(args), deadline::CLI, || {
            format!("sensord's log ends:\n{}", self.log_tail())
        })
    }

    /// A sensorctl command against this agent (to change its uid, say).
    pub fn ctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(workspace_bin("sensorctl"));
        c.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("RUST_BACKTRACE", "0");
        c
    }

    /// Runs sensorctl with `--json` and parses what it prints; panics with its
    /// stderr when it fails.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "sensorctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sensorctl {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `sensorctl --json ARGS` read back into the typed proto message (the
    /// canonical protobuf JSON mapping, so its shape is checked too).
    pub fn ctl_as<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let v = self.ctl_json(args);
        serde_json::from_value(v.clone()).unwrap_or_else(|e| {
            panic!(
                "sensorctl {args:?} printed JSON that is not a {} ({e}): {v}",
                std::any::type_name::<T>()
            )
        })
    }

    /// `sensorctl status`.
    pub fn status(&self) -> pb::Status {
        self.ctl_as(&["status"])
    }

    /// `sensorctl violations ARGS` (or `flows`, when `flows`).
    pub fn listed(&self, flows: bool, args: &[&str]) -> Vec<pb::Flow> {
        let mut all = vec![if flows { "flows" } else { "violations" }];
        all.extend_from_slice(args);
        self.ctl_as(&all)
    }

    /// A kernel counter from the agent's status (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.status()
            .counters
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.value)
    }

    /// The kernel's ring-buffer drop counter, from the agent's status.
    pub fn kernel_drops(&self) -> u64 {
        self.counter("ringbuf_reserve_failed")
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the agent's log (for failure messages).
    pub fn log_tail(&self) -> String {
        deadline::tail(&self.log_text(), 40)
    }

    /// SIGKILL, as a crash (the temporary directory is kept until drop).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGHUP (policy reload).
    pub fn hup(&self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The temp directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        // Bounded, and never a second panic while unwinding: what matters
        // here is that the process and its pins are gone.
        let _ = deadline::terminate(&mut self.child, Duration::from_secs(5));
        // The pinned links keep the programs attached after the process is
        // gone: removing them is what detaches this agent from the host.
        let _ = std::fs::remove_dir_all(&self.bpf_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(args: &[std::ffi::OsString], env: &[(String, String)], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(workspace_bin("sensord"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting sensord")
}
