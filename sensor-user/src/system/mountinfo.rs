//! Finding mounts by filesystem type in `/proc/self/mountinfo`.
//!
//! cgroup v2 is at /sys/fs/cgroup on unified hosts but at /sys/fs/cgroup/unified
//! on hybrid ones (these project machines), so it is never hard-coded.

use std::path::{Path, PathBuf};

use crate::SensorError;

/// One line of mountinfo, the fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel uses in mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text (see proc(5)): `id parent maj:min root mount-point
/// options [optional fields...] - fstype source super-options`.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let fs_type = after.split(' ').next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_owned(),
            })
        })
        .collect()
}

/// Reads the current process's mount table.
pub fn read() -> Result<Vec<Mount>, SensorError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| SensorError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse(&text))
}

/// The first mount point of a filesystem type, if mounted.
pub fn find(mounts: &[Mount], fs_type: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == fs_type)
        .map(|m| m.mount_point.clone())
}

/// The cgroup v2 mount point.
pub fn cgroup2_mount() -> Result<PathBuf, SensorError> {
    find(&read()?, "cgroup2").ok_or(SensorError::NoCgroup2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/vdb rw
";

    #[test]
    fn finds_cgroup2_on_hybrid_layout() {
        let mounts = parse(HYBRID);
        assert_eq!(
            find(&mounts, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find(&mounts, "bpf"), None);
    }

    #[test]
    fn optional_fields_and_escapes() {
        let mounts = parse(HYBRID);
        assert_eq!(mounts[1].fs_type, "cgroup");
        assert_eq!(mounts[3].mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn unified_layout() {
        let m = parse(
            "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(find(&m, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup")));
    }
}
