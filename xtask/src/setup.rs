//! `cargo xtask setup`: make this machine able to build and test the project.
//!
//! Only registries are used (Debian's packages, crates.io); nothing downloads a
//! prebuilt toolchain. The fast path (everything present) runs a few `dpkg-query`
//! and `--version` calls and returns in well under a second.

use std::process::Command;

use anyhow::{Context, bail};
use sensor_build::{BPF_LINKER_VERSION, DEBIAN_LLVM_PREFIX, DEBIAN_PACKAGES};

/// Packages the tests need besides the toolchain: chromium and its
/// WebDriver server drive the dashboard's tests in a real browser;
/// prometheus brings promtool, which checks the shipped alert rules;
/// rsyslog (with its OpenSSL driver) receives what the collector forwards;
/// binutils' strip goes into the packages `cargo xtask test` builds and lists.
const TEST_PACKAGES: &[&str] = &[
    "binutils",
    "iproute2",
    "postgresql",
    "nftables",
    "chromium",
    "chromium-driver",
    "prometheus",
    "rsyslog",
    "rsyslog-openssl",
    "dnsmasq-base",
];

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn is_debian() -> bool {
    std::path::Path::new("/etc/debian_version").exists()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask setup: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("while starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The test runner `cargo xtask test` uses (installed from crates.io when
/// missing or older than [`NEXTEST_MIN`]).
const NEXTEST_VERSION: &str = "0.9.143";
/// The oldest cargo-nextest with everything .config/nextest.toml uses.
const NEXTEST_MIN: (u32, u32, u32) = (0, 9, 100);

/// The installed cargo-nextest's version, if any.
fn nextest_version() -> Option<(u32, u32, u32)> {
    let exe = sensor_build::find_executable("cargo-nextest")?;
    let out = Command::new(exe)
        .args(["nextest", "--version"])
        .output()
        .ok()?;
    parse_nextest_version(&String::from_utf8_lossy(&out.stdout))
}

/// `cargo-nextest 0.9.143 (60fa45f63 2026-08-04)` → (0, 9, 143).
fn parse_nextest_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().nth(1)?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn nextest_ok() -> bool {
    nextest_version().is_some_and(|v| v >= NEXTEST_MIN)
}

fn linker_ok() -> bool {
    sensor_build::find_executable("bpf-linker")
        .and_then(|l| sensor_build::bpf_linker_version(&l))
        .is_some_and(|v| v == BPF_LINKER_VERSION)
}

/// Entry point.
pub fn run_setup(check_only: bool) -> anyhow::Result<()> {
    let missing_pkgs: Vec<&str> = if is_debian() {
        DEBIAN_PACKAGES
            .iter()
            .chain(TEST_PACKAGES)
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect()
    } else {
        Vec::new()
    };
    let toolchain = sensor_build::detect();
    let linker = linker_ok();
    let nextest = nextest_ok();
    let root = crate::workspace_root();
    let data = crate::dataset::present(&root);
    if let (true, Ok(tc), true, true, true) =
        (missing_pkgs.is_empty(), &toolchain, linker, data, nextest)
    {
        println!(
            "xtask setup: everything is present ({:?}, bpf-linker {BPF_LINKER_VERSION} at {})",
            tc.toolchain,
            tc.linker.display()
        );
        return Ok(());
    }
    if check_only {
        if !data {
            eprintln!(
                "missing the region dataset in {}",
                sensor_build::dataset::WORKSPACE_DIR
            );
        }
        if !missing_pkgs.is_empty() {
            eprintln!("missing Debian packages: {}", missing_pkgs.join(" "));
        }
        if !linker {
            eprintln!("missing bpf-linker {BPF_LINKER_VERSION}");
        }
        if !nextest {
            eprintln!(
                "missing cargo-nextest (>= {NEXTEST_MIN:?}; setup installs {NEXTEST_VERSION})"
            );
        }
        if let Err(m) = &toolchain {
            eprintln!("{m}");
        }
        bail!("the machine is not set up; run `cargo xtask setup`");
    }
    if let (false, Err(m)) = (is_debian(), &toolchain) {
        bail!(
            "{m}\n(this is not a Debian machine, so setup cannot install the toolchain itself: install a rustup nightly with `rustup toolchain install nightly --component rust-src` and bpf-linker {BPF_LINKER_VERSION} with `cargo install bpf-linker`, built against your rustc's LLVM)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !missing_pkgs.is_empty() {
        if !root {
            bail!(
                "missing Debian packages: {}; run setup as root, or `sudo apt-get install -y {}`",
                missing_pkgs.join(" "),
                missing_pkgs.join(" ")
            );
        }
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing_pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !linker_ok() {
        // bpf-linker must link the same LLVM major as rustc (22 for rustc-web);
        // without LLVM_PREFIX its build script looks in /usr and fails.
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", DEBIAN_LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", DEBIAN_LLVM_PREFIX)
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    if !nextest_ok() {
        // The test runner: every test in a process of its own, killed and
        // named past its time limit (see .config/nextest.toml).
        run(Command::new("cargo").args([
            "install",
            "cargo-nextest",
            "--version",
            NEXTEST_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    crate::dataset::ensure(&crate::workspace_root())?;
    match sensor_build::detect() {
        Ok(tc) => {
            println!(
                "xtask setup: ready ({:?}, bpf-linker at {})",
                tc.toolchain,
                tc.linker.display()
            );
            Ok(())
        }
        Err(m) => bail!("{m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nextests_version() {
        assert_eq!(
            parse_nextest_version("cargo-nextest 0.9.143 (60fa45f63 2026-08-04)\n"),
            Some((0, 9, 143))
        );
        assert_eq!(parse_nextest_version("error: no such command"), None);
        assert!((0, 9, 143) >= NEXTEST_MIN && (0, 9, 99) < NEXTEST_MIN);
    }
}
