//! `cargo xtask package`: a Debian package with the binaries, the systemd unit,
//! a default config, the example policy, the default region dataset and the
//! docs. Built with dpkg-deb from a staging tree (no extra tool to install).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use sensor_build::dataset;

use crate::workspace_root;

const NAME: &str = "residency-sensor";

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("while copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Files (source relative to the workspace, destination in the package, mode).
fn files(root: &Path) -> Vec<(PathBuf, &'static str, u32)> {
    let mut f = vec![
        (
            root.join("target/release/sensord"),
            "usr/bin/sensord",
            0o755,
        ),
        (
            root.join("target/release/sensorctl"),
            "usr/bin/sensorctl",
            0o755,
        ),
        (
            root.join("packaging/sensord.service"),
            "lib/systemd/system/sensord.service",
            0o644,
        ),
        (
            root.join("packaging/sensord.toml"),
            "etc/residency/sensord.toml",
            0o644,
        ),
        (
            root.join("examples/policy.toml"),
            "etc/residency/policy.toml",
            0o644,
        ),
        (
            root.join("README.md"),
            "usr/share/doc/residency-sensor/README.md",
            0o644,
        ),
        (
            root.join("docs/policy.md"),
            "usr/share/doc/residency-sensor/policy.md",
            0o644,
        ),
    ];
    let data = root.join(dataset::WORKSPACE_DIR);
    f.push((
        data.join(dataset::FILES[0]),
        "usr/share/residency/regions/geo-whois-asn-country-ipv4.csv",
        0o644,
    ));
    f.push((
        data.join(dataset::FILES[1]),
        "usr/share/residency/regions/geo-whois-asn-country-ipv6.csv",
        0o644,
    ));
    f.push((
        data.join(dataset::LICENCE_FILE),
        "usr/share/residency/regions/NRO_LICENSE",
        0o644,
    ));
    f
}

/// Builds the package; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    crate::dataset::ensure(&root)?;
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "sensor-user", "--bins"])
        .current_dir(&root)
        .status()
        .context("while building the release binaries")?;
    if !status.success() {
        bail!("building the release binaries failed");
    }
    let version = env!("CARGO_PKG_VERSION");
    let stage = root
        .join("target/package")
        .join(format!("{NAME}_{version}_amd64"));
    let _ = std::fs::remove_dir_all(&stage);
    for (from, to, mode) in files(&root) {
        copy(&from, &stage.join(to), mode)?;
    }
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {NAME}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Residency Sensor maintainers <maintainers@residency-sensor.invalid>\nSection: admin\nPriority: optional\nDepends: libc6 (>= 2.36)\nDescription: data residency gates in the kernel (agent and CLI)\n sensord tags the processes that handle regulated data with eBPF, judges every\n connection they make against a residency policy in the kernel, and reports or\n denies violations. sensorctl is its operator CLI.\n"
        ),
    )?;
    std::fs::write(
        debian.join("conffiles"),
        "/etc/residency/sensord.toml\n/etc/residency/policy.toml\n",
    )?;
    // Start on install (monitor mode per the example policy), stop on removal.
    let postinst = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n  systemctl daemon-reload\n  systemctl enable sensord.service >/dev/null\nfi\n";
    let prerm = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n  systemctl stop sensord.service || true\nfi\n";
    for (name, body) in [("postinst", postinst), ("prerm", prerm)] {
        std::fs::write(debian.join(name), body)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(debian.join(name), std::fs::Permissions::from_mode(0o755))?;
    }
    let out = root
        .join("target/package")
        .join(format!("{NAME}_{version}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&out)
        .status()
        .context("while running dpkg-deb (Debian package dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb failed");
    }
    // Check what went in.
    let listing = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&out)
        .output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (_, to, _) in files(&root) {
        if !listing.contains(&format!("./{to}")) {
            bail!("{} lacks {to}", out.display());
        }
    }
    println!("{}", out.display());
    Ok(out)
}
