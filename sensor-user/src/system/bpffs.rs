//! Making sure a BPF filesystem is mounted (a fresh machine may have none).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::mountinfo;
use crate::SensorError;

/// Where bpffs is conventionally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Returns the bpffs mount point, mounting it at [`DEFAULT_BPFFS`] if none is
/// mounted. Idempotent.
pub fn ensure_mounted() -> Result<PathBuf, SensorError> {
    if let Some(p) = mountinfo::find(&mountinfo::read()?, "bpf") {
        return Ok(p);
    }
    let path = Path::new(DEFAULT_BPFFS);
    let mount_err = |source| SensorError::Mount {
        fs: "bpf",
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(mount_err)?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| mount_err(e.into()))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(mount_err(std::io::Error::last_os_error()));
    }
    Ok(path.to_owned())
}
