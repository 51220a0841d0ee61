//! Files replaced whole: a crash leaves the old contents or the new, never
//! half of either.

use std::{io::Write, path::Path};

/// Writes `bytes` to `dir/name` through a temporary file: written, fsync'd,
/// renamed over the old file, and the directory fsync'd (so the rename
/// survives a power loss too).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
