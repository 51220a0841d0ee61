//! Slots: small integers that make kernel object names and fixture addresses
//! unique across tests running in parallel, in one process or several.
//!
//! A slot is held by an exclusive `flock` on /run/residency-tests/slot-N.lock;
//! the kernel releases it when the holder dies, so a crashed run never blocks a
//! slot forever, and the next holder cleans whatever the dead one left.

use std::{fs::File, path::PathBuf};

/// How many slots exist (each holds a /30 in each fixture IPv4 range).
pub const SLOT_COUNT: u8 = 60;

/// Where the lock files live.
const LOCK_DIR: &str = "/run/residency-tests";

/// The lock file `name` under /run/residency-tests (created if need be),
/// opened for `flock`.
pub fn lock_file(name: &str) -> File {
    let path = PathBuf::from(LOCK_DIR).join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// A held slot; the lock is released on drop.
#[derive(Debug)]
pub struct Slot {
    pub index: u8,
    _lock: File,
}

impl Slot {
    /// Claims the first free slot; panics when all are taken.
    pub fn claim() -> Slot {
        for index in 0..SLOT_COUNT {
            let file = lock_file(&format!("slot-{index}.lock"));
            if file.try_lock().is_ok() {
                return Slot { index, _lock: file };
            }
        }
        panic!("all {SLOT_COUNT} test slots are in use: too many tests in parallel");
    }
}

/// An exclusive, host-wide lock, held until drop: tests that change a
/// setting of the whole host (MPTCP limits, a host route) take it, in
/// whichever process they run (nextest runs each test in its own).
#[derive(Debug)]
pub struct HostLock {
    _lock: File,
}

impl HostLock {
    /// Waits (up to two minutes, then panics naming the lock) for `name`.
    pub fn take(name: &str) -> HostLock {
        let file = lock_file(&format!("host-{name}.lock"));
        let limit = std::time::Duration::from_secs(120);
        let deadline = std::time::Instant::now() + limit;
        while file.try_lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for the host-wide lock {name}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        HostLock { _lock: file }
    }
}
