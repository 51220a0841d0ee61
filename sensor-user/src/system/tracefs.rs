//! tracefs: mounted if needed, and tracepoint record layouts read from it.
//!
//! Tracepoint record layouts change between kernels (sched_process_fork's
//! comm fields became `__data_loc` strings, moving `child_pid` from offset 44 to
//! 20), so offsets are read from the `format` files, never hard-coded.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::mountinfo;
use crate::SensorError;

/// Where tracefs is conventionally mounted.
pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";

/// Returns the tracefs mount point, mounting it at [`DEFAULT_TRACEFS`] if none
/// is mounted. Idempotent.
pub fn ensure_mounted() -> Result<PathBuf, SensorError> {
    let mounts = mountinfo::read()?;
    if let Some(p) = mountinfo::find(&mounts, "tracefs") {
        return Ok(p);
    }
    let path = Path::new(DEFAULT_TRACEFS);
    let err = |source| SensorError::Mount {
        fs: "tracefs",
        path: path.to_owned(),
        source,
    };
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| err(e.into()))?;
    // SAFETY: valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(path.to_owned())
}

/// Offset of `field` in a tracepoint's `format` text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        let off = rest
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

/// Reads the offset of `field` in tracepoint `category:name`.
pub fn tracepoint_field(tracefs: &Path, category: &str, name: &str, field: &str) -> Option<u32> {
    let text = std::fs::read_to_string(
        tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format"),
    )
    .ok()?;
    field_offset(&text, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_618: &str = "name: sched_process_fork
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";
    const EXIT: &str = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    #[test]
    fn reads_offsets() {
        assert_eq!(field_offset(FORK_618, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_618, "parent_comm"), Some(8));
        assert_eq!(field_offset(EXIT, "comm"), Some(8));
        assert_eq!(field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(field_offset(EXIT, "nope"), None);
    }
}
