//! `cargo xtask package`: two Debian packages, built with dpkg-deb from staging
//! trees (no extra tool to install):
//! - `residency-sensor`: sensord and sensorctl, the systemd unit, a default
//!   config, the example policy, the default region dataset and the docs;
//! - `residency-collector`: collectord, collectorctl, residency-verify (the
//!   offline bundle check) and the systemd unit.
//!
//! Binaries are stripped of debug information.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use sensor_build::dataset;

use crate::workspace_root;

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
/// `bins` is the directory of the built binaries.
fn agent_files(root: &Path, bins: &Path) -> Vec<(PathBuf, &'static str, u32)> {
    let mut f = vec![
        (bins.join("sensord"), "usr/bin/sensord", 0o755),
        (bins.join("sensorctl"), "usr/bin/sensorctl", 0o755),
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

/// The collector package's files (see [`agent_files`]).
fn collector_files(root: &Path, bins: &Path) -> Vec<(PathBuf, &'static str, u32)> {
    vec![
        (bins.join("collectord"), "usr/bin/collectord", 0o755),
        (bins.join("collectorctl"), "usr/bin/collectorctl", 0o755),
        (
            bins.join("residency-verify"),
            "usr/bin/residency-verify",
            0o755,
        ),
        (
            root.join("packaging/collectord.service"),
            "lib/systemd/system/collectord.service",
            0o644,
        ),
        (
            root.join("packaging/collectord.default"),
            "etc/default/collectord",
            0o644,
        ),
        (
            root.join("packaging/agent-tokens"),
            "etc/residency/agent-tokens",
            0o600,
        ),
        (
            root.join("README.md"),
            "usr/share/doc/residency-collector/README.md",
            0o644,
        ),
        (
            root.join("collector/assets/NOTICE"),
            "usr/share/doc/residency-collector/NOTICE.world-map",
            0o644,
        ),
        // The fleet's monitoring (for the agents and the collector): one
        // package ships it, where Prometheus and Grafana are set up.
        (
            root.join("packaging/monitoring/residency-alerts.yml"),
            "usr/share/residency/monitoring/residency-alerts.yml",
            0o644,
        ),
        (
            root.join("packaging/monitoring/residency-alerts.test.yml"),
            "usr/share/residency/monitoring/residency-alerts.test.yml",
            0o644,
        ),
        (
            root.join("packaging/monitoring/residency-grafana.json"),
            "usr/share/residency/monitoring/residency-grafana.json",
            0o644,
        ),
    ]
}

/// One Debian package.
struct Deb {
    name: &'static str,
    description: &'static str,
    files: Vec<(PathBuf, &'static str, u32)>,
    conffiles: &'static str,
    service: &'static str,
    /// Shell run by prerm when the package is removed (not upgraded), after
    /// the service stopped.
    on_remove: &'static str,
    /// Shell run by postrm on purge.
    on_purge: &'static str,
}

/// Builds the release binaries and both packages; returns their paths.
pub fn run() -> anyhow::Result<Vec<PathBuf>> {
    let root = workspace_root();
    crate::dataset::ensure(&root)?;
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "sensor-user",
            "-p",
            "collector",
            "-p",
            "residency-verify",
            "--bins",
        ])
        .current_dir(&root)
        .status()
        .context("while building the release binaries")?;
    if !status.success() {
        bail!("building the release binaries failed");
    }
    build_all(
        &root,
        &root.join("target/release"),
        &root.join("target/package"),
        true,
    )
}

/// What `cargo xtask test` checks of the packages: both built from the debug
/// binaries into target/package-check (uncompressed: it is only listed), each
/// holding everything it should, generated pages included (`build` fails
/// otherwise).
pub fn check() -> anyhow::Result<()> {
    let root = workspace_root();
    crate::dataset::ensure(&root)?;
    build_all(
        &root,
        &root.join("target/debug"),
        &root.join("target/package-check"),
        false,
    )?;
    Ok(())
}

/// Builds both packages from the binaries in `bins` into `out`.
fn build_all(root: &Path, bins: &Path, out: &Path, compress: bool) -> anyhow::Result<Vec<PathBuf>> {
    let debs = [
        Deb {
            name: "residency-sensor",
            description: "data residency gates in the kernel (agent and CLI)\n sensord tags the processes that handle regulated data with eBPF, judges every\n connection they make against a residency policy in the kernel, and reports or\n denies violations. sensorctl is its operator CLI.",
            files: agent_files(root, bins),
            conffiles: "/etc/residency/sensord.toml\n/etc/residency/policy.toml\n",
            service: "sensord.service",
            // Stopping sensord leaves its pinned programs enforcing; removing
            // the package is when they go.
            on_remove: "  /usr/bin/sensord --uninstall --config /etc/residency/sensord.toml || true\n",
            on_purge: "  rm -rf /sys/fs/bpf/residency /var/lib/residency/state\n",
        },
        Deb {
            name: "residency-collector",
            description: "data residency collector (collectord)\n collectord receives every Residency Sensor agent's violations, audit and gap\n records exactly once (SQLite or PostgreSQL), serves them to auditors, and\n carries operators' enforcement changes and exceptions to the fleet.\n residency-verify checks an exported evidence bundle offline.",
            files: collector_files(root, bins),
            conffiles: "/etc/default/collectord\n/etc/residency/agent-tokens\n",
            service: "collectord.service",
            on_remove: "",
            on_purge: "",
        },
    ];
    debs.iter().map(|d| build(d, out, compress)).collect()
}

/// Shell completions (bash, zsh, fish) and the man page of the staged
/// binary `bin`, generated from its clap definition
/// (`residency_daemon::cli::generate_if_asked`).
fn generate_docs(stage: &Path, bin: &str) -> anyhow::Result<()> {
    let exe = stage.join("usr/bin").join(bin);
    for (what, dest) in doc_paths(bin) {
        let out = Command::new(&exe)
            .env("RESIDENCY_GENERATE", what)
            .output()
            .with_context(|| format!("while running {} for its {what} page", exe.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "{bin} did not generate its {what} page: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = stage.join(&dest);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, &out.stdout)
            .with_context(|| format!("while writing {}", path.display()))?;
    }
    Ok(())
}

/// The generated pages of binary `bin` (see [`generate_docs`]).
fn doc_paths(bin: &str) -> [(&'static str, String); 4] {
    [
        (
            "bash",
            format!("usr/share/bash-completion/completions/{bin}"),
        ),
        ("zsh", format!("usr/share/zsh/vendor-completions/_{bin}")),
        (
            "fish",
            format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
        ),
        ("man", format!("usr/share/man/man1/{bin}.1")),
    ]
}

/// Builds `deb` into `out` (`compress`: xz as released, or none); returns
/// its path once its listing holds every file and generated page.
fn build(deb: &Deb, out: &Path, compress: bool) -> anyhow::Result<PathBuf> {
    let name = deb.name;
    let version = env!("CARGO_PKG_VERSION");
    let stage = out.join(format!("{name}_{version}_amd64"));
    let _ = std::fs::remove_dir_all(&stage);
    for (from, to, mode) in &deb.files {
        let dest = stage.join(to);
        copy(from, &dest, *mode)?;
        if to.starts_with("usr/bin/") {
            let status = Command::new("strip")
                .arg("--strip-debug")
                .arg(&dest)
                .status()
                .context("while running strip (Debian package binutils)")?;
            if !status.success() {
                bail!("strip failed on {}", dest.display());
            }
        }
    }
    for (_, to, _) in &deb.files {
        if let Some(bin) = to.strip_prefix("usr/bin/") {
            generate_docs(&stage, bin)?;
        }
    }
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Residency Sensor maintainers <maintainers@residency-sensor.invalid>\nSection: admin\nPriority: optional\nDepends: libc6 (>= 2.36)\nDescription: {}\n",
            deb.description
        ),
    )?;
    std::fs::write(debian.join("conffiles"), deb.conffiles)?;
    let service = deb.service;
    // An upgrade does not stop the service: the new binary is started over
    // the running one's state by try-restart (for sensord: it adopts the
    // pinned programs and swaps them in place, with no instant unguarded).
    let postinst = format!(
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n  systemctl daemon-reload\n  systemctl enable {service} >/dev/null\n  systemctl try-restart {service} || true\nfi\n"
    );
    let on_remove = deb.on_remove;
    let prerm = format!(
        "#!/bin/sh\nset -e\nif [ \"$1\" = remove ] || [ \"$1\" = deconfigure ]; then\n  if [ -d /run/systemd/system ]; then\n    systemctl stop {service} || true\n  fi\n{on_remove}fi\n"
    );
    let on_purge = deb.on_purge;
    let postrm = format!("#!/bin/sh\nset -e\nif [ \"$1\" = purge ]; then\n{on_purge}  true\nfi\n");
    for (file, body) in [("postinst", postinst), ("prerm", prerm), ("postrm", postrm)] {
        std::fs::write(debian.join(file), body)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(debian.join(file), std::fs::Permissions::from_mode(0o755))?;
    }
    let out = out.join(format!("{name}_{version}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .args(if compress { None } else { Some("-Znone") })
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
    let generated = deb
        .files
        .iter()
        .filter_map(|(_, to, _)| to.strip_prefix("usr/bin/"))
        .flat_map(|bin| doc_paths(bin).map(|(_, p)| p));
    let expected = deb
        .files
        .iter()
        .map(|(_, to, _)| to.to_string())
        .chain(generated);
    for to in expected {
        if !listing.contains(&format!("./{to}")) {
            bail!("{} lacks {to}", out.display());
        }
    }
    println!("{}", out.display());
    Ok(out)
}
