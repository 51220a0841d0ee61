//! `cargo xtask test`: what CI runs.
//!
//! Lints, then every test in the workspace (unit and privileged end-to-end) with
//! `--no-fail-fast`, then a leak check; ends with one summary line
//! `summary: N passed, M failed` so the result is readable at a glance.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{leaks, workspace_root};

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

/// Parses a libtest summary line: `test result: ok. 5 passed; 0 failed; 1 ignored; …`.
pub fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut passed = None;
    let mut failed = None;
    let mut ignored = 0;
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (n, what) = match words.as_slice() {
            [.., n, what] => match n.parse::<u64>() {
                Ok(n) => (n, *what),
                Err(_) => continue,
            },
            _ => continue,
        };
        match what {
            "passed" => passed = Some(n),
            "failed" => failed = Some(n),
            "ignored" => ignored = n,
            _ => {}
        }
    }
    Some((passed?, failed?, ignored))
}

pub fn run(lint: bool, extra: &[String]) -> anyhow::Result<()> {
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
    let before = leaks::snapshot();

    eprintln!("==> tests: cargo test --workspace --no-fail-fast");
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(if extra.is_empty() {
            vec![]
        } else {
            [vec!["--".to_owned()], extra.to_vec()].concat()
        })
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("while starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("while reading cargo test output")?;
        println!("{line}");
        if let Some((p, f, i)) = parse_result_line(&line) {
            passed += p;
            failed += f;
            ignored += i;
        }
    }
    let status = child.wait().context("while waiting for cargo test")?;
    let after = leaks::snapshot();
    let leaked = leaks::leaked(&before, &after);
    for l in &leaked {
        eprintln!("LEAK: the test suite left {l} behind");
    }
    println!();
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran: that proves nothing");
    }
    if !leaked.is_empty() {
        bail!("tests passed but leaked {} kernel object(s)", leaked.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summary() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.11s"
            ),
            Some((5, 0, 1))
        );
        assert_eq!(
            parse_result_line(
                "test result: FAILED. 0 passed; 5 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some((0, 5, 0))
        );
        assert_eq!(parse_result_line("running 5 tests"), None);
    }
}
