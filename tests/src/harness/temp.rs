//! Temporary files and directories that are removed on drop, also when a test
//! panics.

use std::path::{Path, PathBuf};

/// A path under the system temp directory, unique to this process, removed
/// (file or whole directory) on drop.
pub struct TempPath(PathBuf);

impl TempPath {
    /// `rs-<pid>-<name>` under the temp directory (not created).
    pub fn new(name: &str) -> TempPath {
        let p = std::env::temp_dir().join(format!("rs-{}-{name}", std::process::id()));
        remove(&p);
        TempPath(p)
    }

    /// A file with `text`.
    pub fn file(name: &str, text: &str) -> TempPath {
        let t = TempPath::new(name);
        std::fs::write(&t.0, text).expect("writing a temp file");
        t
    }

    /// An empty directory.
    pub fn dir(name: &str) -> TempPath {
        let t = TempPath::new(name);
        std::fs::create_dir_all(&t.0).expect("creating a temp directory");
        t
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

fn remove(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        remove(&self.0);
    }
}
