//! Which processes carry which data classes.
//!
//! `TASKS` maps a tgid to its [`TaskTag`]. The kernel fills it at exec (cgroup,
//! uid and executable selectors), at fork (children inherit), at connect (taint
//! sources) and removes the entry at exit; user space fills it for processes
//! already running at start and for explicit API requests.

/// The deepest cgroup nesting (levels, the root included) a cgroup selector
/// is looked for through, by the kernel's check and user space's walk alike.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Value of the `TASKS` map (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskTag {
    /// One bit per class id.
    pub classes: u64,
}

/// Key of the `EXE_SELECTORS` map: the executable file's identity as the kernel
/// resolved it at exec (symlinks followed, relative paths irrelevant).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExeKey {
    /// `super_block.s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// Why a process got a class (`FlowEvent::reason` of a `Tag` record).
pub mod reason {
    /// Inherited from the parent at fork.
    pub const INHERITED: u8 = 1;
    /// A cgroup selector matched at exec; `detail` = the selector's cgroup id.
    pub const CGROUP: u8 = 2;
    /// A uid selector matched at exec; `detail` = the uid.
    pub const UID: u8 = 3;
    /// An executable selector matched at exec; `detail` = inode number.
    pub const EXE: u8 = 4;
    /// Connected to a taint source; the record's remote is the source.
    pub const TAINT: u8 = 5;
    /// Tagged by user space (explicit API request or start-up /proc walk).
    pub const USER: u8 = 6;
    /// Accepted a local connection (loopback, the host's own addresses) from a
    /// process carrying classes that propagate over local connections; the
    /// record's remote is that peer, `detail` its tgid.
    pub const LOCAL: u8 = 7;
}

/// Convert a user-space `st_dev` (glibc encoding) to the kernel's `s_dev`.
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | (minor as u64)
}

#[cfg(feature = "user")]
crate::pod!(TaskTag, ExeKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<TaskTag>(), 8);
        assert_eq!(core::mem::size_of::<ExeKey>(), 16);
        assert_eq!(kernel_dev(8, 1), (8 << 20) | 1);
    }
}
