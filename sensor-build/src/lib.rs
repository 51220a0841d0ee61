//! Building the kernel object (`sensor-ebpf`) for `bpfel-unknown-none`.
//!
//! Two toolchains can do it (see shared/TOOLCHAIN.md):
//! - Debian's `rustc-web` with the prebuilt BPF `core` from
//!   `libstd-rust-web-dev-bpf` (no build-std), compiled with `RUSTC_BOOTSTRAP=1`
//!   because aya-ebpf uses `#![feature]`;
//! - a rustup nightly with `rust-src`, using `-Z build-std=core`.
//!
//! Both need `bpf-linker` linked against the same LLVM major as rustc. Nothing here
//! downloads anything: when neither toolchain is present we say exactly what is
//! missing and that `cargo xtask setup` installs it.
//!
//! This crate has no dependencies so it costs nothing as a build-dependency.

use std::{
    env,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// The BPF target we build for (the programs run on little-endian hosts).
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// bpf-linker release that matches LLVM 22 (Debian's rustc-web 1.96).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages that provide the BPF toolchain.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// LLVM prefix bpf-linker is built against with the Debian toolchain.
pub const DEBIAN_LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// A toolchain able to compile the kernel crate.
#[derive(Debug, Clone)]
pub enum Toolchain {
    /// Debian `rustc-web` + prebuilt `core` for the BPF target.
    Debian { rustc: PathBuf, cargo: PathBuf },
    /// rustup nightly with `rust-src` (`-Z build-std=core`).
    RustupNightly { rustup: PathBuf },
}

/// Everything needed to build: a toolchain and a linker.
#[derive(Debug, Clone)]
pub struct BpfToolchain {
    pub toolchain: Toolchain,
    pub linker: PathBuf,
}

/// What is missing, phrased for the person at the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub Vec<String>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the BPF toolchain for building sensor-ebpf is incomplete:"
        )?;
        for item in &self.0 {
            writeln!(f, "  - {item}")?;
        }
        write!(
            f,
            "run `cargo xtask setup` (installs Debian's {} and builds bpf-linker {BPF_LINKER_VERSION}; needs root and the Debian and crates.io registries)",
            DEBIAN_PACKAGES.join(" ")
        )
    }
}

impl std::error::Error for Missing {}

/// Searches `PATH` and then `$CARGO_HOME/bin` (or `~/.cargo/bin`) for `name`:
/// `cargo install` puts bpf-linker there, which is often not on root's PATH.
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// True when Debian's prebuilt `core` for the BPF target is installed next to
/// `/usr/bin/rustc`.
fn debian_bpf_core_present() -> bool {
    let dir = Path::new("/usr/lib/rustlib").join(BPF_TARGET).join("lib");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false)
}

fn rustup_nightly_has_rust_src(rustup: &Path) -> bool {
    Command::new(rustup)
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false)
}

/// Returns the installed bpf-linker's version string (e.g. "0.13.0"), if any.
pub fn bpf_linker_version(linker: &Path) -> Option<String> {
    let out = Command::new(linker).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// Finds a usable toolchain, preferring Debian's (it needs no downloads at build
/// time), or reports everything that is missing.
pub fn detect() -> Result<BpfToolchain, Missing> {
    let mut missing = Vec::new();
    let debian_rustc = PathBuf::from("/usr/bin/rustc");
    let debian_cargo = PathBuf::from("/usr/bin/cargo");
    let toolchain = if debian_rustc.is_file() && debian_cargo.is_file() && debian_bpf_core_present()
    {
        Some(Toolchain::Debian {
            rustc: debian_rustc,
            cargo: debian_cargo,
        })
    } else if let Some(rustup) =
        find_executable("rustup").filter(|r| rustup_nightly_has_rust_src(r))
    {
        Some(Toolchain::RustupNightly { rustup })
    } else {
        if !debian_rustc.is_file() || !debian_cargo.is_file() {
            missing.push(
                "Debian's rustc-web/cargo-web (/usr/bin/rustc, /usr/bin/cargo) are not installed"
                    .to_owned(),
            );
        }
        if !debian_bpf_core_present() {
            missing.push(format!(
                "no prebuilt core for {BPF_TARGET} in /usr/lib/rustlib (Debian package libstd-rust-web-dev-bpf)"
            ));
        }
        missing.push(
            "no rustup nightly with the rust-src component (the alternative to the Debian packages)"
                .to_owned(),
        );
        None
    };
    let linker = find_executable("bpf-linker");
    if linker.is_none() {
        missing.push(format!(
            "bpf-linker {BPF_LINKER_VERSION} is not on PATH or in ~/.cargo/bin"
        ));
    }
    match (toolchain, linker) {
        (Some(toolchain), Some(linker)) if missing.is_empty() => {
            Ok(BpfToolchain { toolchain, linker })
        }
        _ => Err(Missing(missing)),
    }
}

/// Error from building the kernel crate.
#[derive(Debug)]
pub enum BuildError {
    Missing(Missing),
    Spawn(String, std::io::Error),
    Failed(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(m) => m.fmt(f),
            Self::Spawn(what, e) => write!(f, "could not run {what}: {e}"),
            Self::Failed(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for BuildError {}

/// Where the kernel crate lives relative to the workspace root.
pub fn ebpf_crate_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("sensor-ebpf")
}

/// Files whose change must rebuild the object (for `cargo:rerun-if-changed`).
pub fn inputs(workspace_root: &Path) -> Vec<PathBuf> {
    let ebpf = ebpf_crate_dir(workspace_root);
    let common = workspace_root.join("sensor-common");
    vec![
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        ebpf.join("Cargo.lock"),
        common.join("src"),
        common.join("Cargo.toml"),
    ]
}

/// Builds `sensor-ebpf` (always with its release profile: the verifier needs
/// optimised code) into `target_dir` and returns the path of the ELF object.
pub fn build(workspace_root: &Path, target_dir: &Path) -> Result<PathBuf, BuildError> {
    let tc = detect().map_err(BuildError::Missing)?;
    let crate_dir = ebpf_crate_dir(workspace_root);
    let mut cmd = match &tc.toolchain {
        Toolchain::Debian { rustc, cargo } => {
            let mut c = Command::new(cargo);
            c.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
            c.args(["build", "--release", "--target", BPF_TARGET]);
            c
        }
        Toolchain::RustupNightly { rustup } => {
            let mut c = Command::new(rustup);
            c.args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--release",
                "--target",
                BPF_TARGET,
            ]);
            c.args(["-Z", "build-std=core"]);
            c
        }
    };
    // The outer cargo (and rustup's proxy) leave variables that would make the
    // inner build use the host compiler, flags or target dir: drop them all.
    let inherited: Vec<OsString> = env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            (k.starts_with("CARGO_") && k != "CARGO_HOME")
                || k.starts_with("RUSTC")
                || k == "RUSTUP_TOOLCHAIN"
                || k == "RUSTFLAGS"
                || k == "RUSTDOCFLAGS"
        })
        .collect();
    for k in inherited {
        cmd.env_remove(k);
    }
    if let Toolchain::Debian { rustc, .. } = &tc.toolchain {
        cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tc.linker)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(&crate_dir);
    let out = cmd
        .output()
        .map_err(|e| BuildError::Spawn(format!("{cmd:?}"), e))?;
    if !out.status.success() {
        return Err(BuildError::Failed(format!(
            "building sensor-ebpf failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("sensor-ebpf");
    if !object.is_file() {
        return Err(BuildError::Failed(format!(
            "sensor-ebpf built but {} is missing",
            object.display()
        )));
    }
    Ok(object)
}

/// The offline default region dataset: ip-location-db's geo-whois-asn-country,
/// built from the regional internet registries' delegation data. Defined here
/// once: `cargo xtask setup` fetches it, the agent reports it as provenance.
pub mod dataset {
    /// npm package name (fetched with `npm pack`, by name).
    pub const PACKAGE: &str = "@ip-location-db/geo-whois-asn-country";
    /// Pinned version (the data's date is in it: 2026-06-17).
    pub const VERSION: &str = "2.3.2026061719";
    /// SHA-256 of the package tarball.
    pub const SHA256: &str = "2a3e609015884c93c2d398e777ce1d2d34cab026054c43559bff32b25669f606";
    /// The files used from it (in the package's `package/` directory).
    pub const FILES: [&str; 2] = [
        "geo-whois-asn-country-ipv4.csv",
        "geo-whois-asn-country-ipv6.csv",
    ];
    /// The licence file shipped next to them.
    pub const LICENCE_FILE: &str = "NRO_LICENSE";
    /// Licence of the package.
    pub const LICENCE: &str = "CC0-1.0 (package); underlying statistics CC-BY-4.0";
    /// Attribution required by the NRO data licence.
    pub const ATTRIBUTION: &str = "Contains data from the Number Resource Organization (NRO), nro.net, licensed under CC BY 4.0";
    /// Where setup puts it, relative to the workspace root.
    pub const WORKSPACE_DIR: &str = "data/regions";
    /// Where the package installs it.
    pub const SYSTEM_DIR: &str = "/usr/share/residency/regions";
}
