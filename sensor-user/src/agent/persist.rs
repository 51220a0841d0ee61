//! Operator state that must outlive the agent process: modes set over the API
//! or by the collector, and how much of the kernel's loss counters has been
//! reported already. Kept in `state_dir/state.json`, written atomically
//! (temporary file, fsync, rename) so a crash leaves the old or the new file,
//! never half of one.
//!
//! The kernel side survives by itself (pinned maps); this file carries what
//! only user space knows across restarts and reboots.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const FILE: &str = "state.json";

/// A mode an operator set, with who, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeOverride {
    /// off, monitor or enforce.
    pub mode: String,
    pub actor: String,
    pub reason: String,
    pub at_unix_ms: i64,
}

/// Kernel loss counters already reported upstream, and the id of the counter
/// map they were read from: a different id (a reboot, a re-created map) means
/// the counters started again from zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterBaseline {
    pub map_id: u32,
    /// The boot the map id is of (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    pub boot_id: String,
    pub values: Vec<u64>,
}

/// This boot's id (empty when unreadable).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The whole file.
/// Unknown fields are ignored (not refused): an older agent started after a
/// newer one must still start, and heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    /// Mode overrides by class name; they outlive policy reloads and restarts.
    #[serde(default)]
    pub modes: BTreeMap<String, ModeOverride>,
    /// What the previous agent reported of the kernel counters.
    #[serde(default)]
    pub counters: Option<CounterBaseline>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a state file this agent understands ({source}); move it aside to start with the policy's modes"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl OperatorState {
    /// Reads `dir/state.json`; a missing file is the empty state.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Writes `dir/state.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::system::atomic::write_atomic(dir, FILE, &body).map_err(|source| StateError::Io {
            path: dir.join(FILE),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("rs-state-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(OperatorState::load(&dir).unwrap(), OperatorState::default());
        let mut s = OperatorState::default();
        s.modes.insert(
            "eu_personal".into(),
            ModeOverride {
                mode: "enforce".into(),
                actor: "root".into(),
                reason: "audit".into(),
                at_unix_ms: 1,
            },
        );
        s.counters = Some(CounterBaseline {
            map_id: 7,
            boot_id: boot_id(),
            values: vec![1, 2],
        });
        s.save(&dir).unwrap();
        assert_eq!(OperatorState::load(&dir).unwrap(), s);
        std::fs::write(dir.join(FILE), b"{ nope").unwrap();
        let e = OperatorState::load(&dir).unwrap_err().to_string();
        assert!(e.contains("move it aside"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
