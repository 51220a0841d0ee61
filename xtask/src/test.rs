//! `cargo xtask test`: what CI runs.
//!
//! Lints, then every test in the workspace (unit and privileged end-to-end)
//! under cargo-nextest (each test in a process of its own, killed and named
//! past its time limit: see .config/nextest.toml), watched as a whole, then a
//! leak check; ends with one summary line `summary: N passed, M failed, K
//! skipped` and the slowest tests, so the result is readable at a glance.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{junit, leaks, process, workspace_root};

fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {name}: {cmd:?}");
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("while starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Runs the suite; `extra` goes to `cargo nextest run` (filters, `-p`,
/// `--test`); past `watchdog` everything is stopped and the run fails.
pub fn run(lint: bool, extra: &[String], watchdog: Duration) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "warning: not root: the end-to-end tests will fail (they load eBPF programs and create network namespaces); CI runs this as root"
        );
    }
    if lint {
        step(
            "rustfmt",
            Command::new("cargo").args(["fmt", "--all", "--check"]),
        )?;
        step(
            "rustfmt (sensor-ebpf)",
            Command::new("cargo").args([
                "fmt",
                "--manifest-path",
                "sensor-ebpf/Cargo.toml",
                "--check",
            ]),
        )?;
        // The kernel crate is linted for the host target: aya-ebpf type-checks
        // there, and host clippy needs no BPF toolchain.
        step(
            "clippy (sensor-ebpf)",
            Command::new("cargo").args([
                "clippy",
                "--manifest-path",
                "sensor-ebpf/Cargo.toml",
                "--target-dir",
                "target/ebpf-clippy",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        step(
            "clippy",
            Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // The end-to-end tests run the real sensord and sensorctl binaries.
    step(
        "build binaries",
        Command::new("cargo").args(["build", "--workspace", "--bins"]),
    )?;
    // What the packages hold (dashboard, alert rules, units, completions,
    // man pages), from the binaries just built.
    eprintln!("==> packages: built from the debug binaries and listed");
    crate::package::check().context("while checking the packages' contents")?;
    let before = leaks::snapshot();
    let nextest = NextestRun::start(extra)?;
    let (outcome, skipped) = nextest.wait(watchdog);
    if let Outcome::Expired(running) = &outcome {
        eprintln!();
        eprintln!(
            "WATCHDOG: the tests ran past {} minutes; still running:",
            watchdog.as_secs() / 60
        );
        for t in running {
            eprintln!("  {t}");
        }
    }
    // Whatever a killed test could not remove itself (its daemons, network
    // namespaces, cgroups, pins, temporary directories) is removed here; a
    // leak after a green run is a defect of its own.
    let (after, leaked) = leaks::settled(&before);
    let left = if leaked.is_empty() {
        leaked.clone()
    } else {
        leaks::clean(&before, &after)
    };
    for l in &leaked {
        eprintln!("LEAK: the test suite left {l} behind");
    }
    for l in &left {
        eprintln!("LEAK: could not remove {l}");
    }
    let report = junit::read(&workspace_root().join(JUNIT));
    println!();
    let Some(report) = report else {
        if let Outcome::Expired(_) = outcome {
            bail!(
                "the tests ran past the watchdog's {} minutes",
                watchdog.as_secs() / 60
            );
        }
        bail!(
            "cargo nextest wrote no report ({JUNIT}): the tests did not build or did not run; see above"
        );
    };
    println!(
        "summary: {} passed, {} failed, {} skipped",
        report.passed(),
        report.failed().len(),
        report.skipped.max(skipped)
    );
    for t in report.failed() {
        println!(
            "  failed: {} {} ({})",
            t.binary,
            t.name,
            t.failure.as_deref().unwrap_or("?")
        );
    }
    println!("slowest:");
    for t in report.slowest(15) {
        println!("  {:>8.1}s  {} {}", t.seconds, t.binary, t.name);
    }
    match outcome {
        Outcome::Expired(_) => bail!(
            "the tests ran past the watchdog's {} minutes (see WATCHDOG above)",
            watchdog.as_secs() / 60
        ),
        Outcome::Exited(status) if !status.success() || !report.failed().is_empty() => {
            bail!("tests failed ({status})")
        }
        Outcome::Exited(_) => {}
    }
    if report.passed() == 0 {
        bail!("no test ran: that proves nothing");
    }
    if !leaked.is_empty() {
        bail!("tests passed but leaked {} object(s)", leaked.len());
    }
    Ok(())
}

/// The skipped count of nextest's summary line (`Summary [ 467.4s] 285
/// tests run: 285 passed, 2 skipped`).
fn summary_skipped(line: &str) -> Option<u64> {
    let rest = line.trim_start().strip_prefix("Summary [")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "skipped")?;
    words.get(i.checked_sub(1)?)?.parse().ok()
}

/// Where the `ci` profile's JUnit report goes (see .config/nextest.toml).
const JUNIT: &str = "target/nextest/ci/junit.xml";

/// How the run ended.
enum Outcome {
    Exited(std::process::ExitStatus),
    /// Past the watchdog: the tests that were still running (killed).
    Expired(Vec<String>),
}

/// `cargo nextest run` with the `ci` profile, watched.
struct NextestRun {
    child: std::process::Child,
    /// What nextest's own summary line says was skipped (ignored tests are
    /// not in the JUnit report).
    skipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    echo: Option<std::thread::JoinHandle<()>>,
}

impl NextestRun {
    fn start(extra: &[String]) -> anyhow::Result<NextestRun> {
        // cargo-nextest itself, not `cargo nextest`: the watchdog's SIGTERM
        // must reach nextest (which ends its tests), not cargo.
        let Some(nextest) = sensor_build::find_executable("cargo-nextest") else {
            bail!("cargo-nextest is not installed: run `cargo xtask setup` (it installs it)");
        };
        let _ = std::fs::remove_file(workspace_root().join(JUNIT));
        let mut cmd = Command::new(nextest);
        cmd.args([
            "nextest",
            "run",
            "--workspace",
            "--profile",
            "ci",
            "--no-fail-fast",
        ])
        .args(extra)
        .current_dir(workspace_root());
        eprintln!("==> tests: {cmd:?}");
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("while starting cargo nextest")?;
        // nextest reports on stderr: passed on as it comes, its summary read.
        let stderr = child.stderr.take().expect("piped");
        let skipped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = skipped.clone();
        let echo = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if let Some(n) = summary_skipped(&line) {
                    seen.store(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Ok(NextestRun {
            child,
            skipped,
            echo: Some(echo),
        })
    }

    /// Waits for the run; past `limit`, names the tests still running,
    /// prints the process tree, stops nextest (it ends its tests) and then
    /// kills whatever is left below it.
    fn wait(mut self, limit: Duration) -> (Outcome, u64) {
        let outcome = self.wait_inner(limit);
        if let Some(echo) = self.echo.take() {
            let _ = echo.join();
        }
        (
            outcome,
            self.skipped.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn wait_inner(&mut self, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Outcome::Exited(status),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("while waiting for cargo nextest: {e}");
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let root = self.child.id() as i32;
        let tree = process::descendants(root);
        let running: Vec<String> = tree
            .iter()
            .filter_map(|p| process::test_name(&p.args))
            .collect();
        eprintln!("WATCHDOG: the process tree under cargo nextest:");
        for p in &tree {
            eprintln!("  {:>7} {:>7} {}", p.pid, p.ppid, p.args);
        }
        // nextest ends its running tests on SIGTERM (and reports them).
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(root, libc::SIGTERM) };
        let grace = Instant::now() + Duration::from_secs(20);
        while Instant::now() < grace && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
        }
        for p in process::descendants(root) {
            // SAFETY: as above.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Outcome::Expired(running)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_skipped_count_of_nextests_summary() {
        assert_eq!(
            super::summary_skipped("     Summary [ 467.441s] 285 tests run: 285 passed, 2 skipped"),
            Some(2)
        );
        assert_eq!(
            super::summary_skipped(
                "     Summary [ 180.023s] 1 test run: 0 passed, 1 timed out, 286 skipped"
            ),
            Some(286)
        );
        assert_eq!(super::summary_skipped("        PASS [ 1.0s] skipped"), None);
    }
}
