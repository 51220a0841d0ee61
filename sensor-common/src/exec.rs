//! The path a tagged process exec'd, as the kernel passes it up.
//!
//! The agent names a record's executable from `/proc/PID/exe`, which is gone
//! once the process exits: a short-lived process (a `curl` that sends and
//! ends) is often gone before its records are read. So the exec tracepoint
//! copies the path given to exec (`filename` of sched_process_exec) of every
//! process tagged at or before its exec into the `EXEC_PATHS` ring, and the
//! agent keeps it for the process until `/proc` can say better.

/// Bytes of the path passed up, its terminating NUL included: longer paths
/// are cut (PATH_MAX is 4096; a record carries at most 1 KiB of path).
pub const EXEC_PATH_MAX: usize = 1024;

/// One exec of a tagged process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecPath {
    pub tgid: u32,
    /// Bytes of `path` the kernel wrote, its NUL included (0: it could not
    /// read the path).
    pub len: u32,
    /// The process's name after the exec.
    pub comm: [u8; 16],
    pub path: [u8; EXEC_PATH_MAX],
}

const _: () = assert!(core::mem::size_of::<ExecPath>() == 24 + EXEC_PATH_MAX);

impl ExecPath {
    /// The path bytes without the NUL, and whether they were cut (the
    /// buffer filled up).
    pub fn path_bytes(&self) -> (&[u8], bool) {
        let n = (self.len as usize).min(EXEC_PATH_MAX);
        let bytes = &self.path[..n];
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        (bytes, n == EXEC_PATH_MAX)
    }

    /// Decodes a ring-buffer record (`None` when it is too short).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        crate::read_record(b)
    }
}

#[cfg(feature = "user")]
crate::pod!(ExecPath);
