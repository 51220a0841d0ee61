//! The `NAMES` map: addresses processes learned from answers for names the
//! policy rules on (see `sensor_common::names` and `crate::dns::rules`).

use aya::maps::{HashMap as BpfHashMap, MapData};
use sensor_common::names::{NameKey, NameRule};

use super::{KernelSensor, map_err};
use crate::SensorError;

const MAP: &str = "NAMES";

impl KernelSensor {
    fn names_map(&mut self) -> Result<BpfHashMap<&mut MapData, NameKey, NameRule>, SensorError> {
        let m = self.ebpf.map_mut(MAP).ok_or(SensorError::MissingMap(MAP))?;
        BpfHashMap::try_from(m).map_err(map_err(MAP))
    }

    /// Writes one entry (an insert into a full map fails: E2BIG).
    pub fn put_name(&mut self, key: &NameKey, rule: &NameRule) -> Result<(), SensorError> {
        self.names_map()?.insert(key, rule, 0).map_err(map_err(MAP))
    }

    /// Writes `keys[i]` = `rules[i]` with one system call
    /// (`BPF_MAP_UPDATE_BATCH`), in order; returns how many the kernel wrote
    /// (it stops at the first it cannot: a full map) and the error that
    /// stopped it.
    pub fn put_names(
        &mut self,
        keys: &[NameKey],
        rules: &[NameRule],
    ) -> (usize, Option<std::io::Error>) {
        use std::os::fd::{AsFd, AsRawFd};
        /// `union bpf_attr`'s batch member.
        #[repr(C)]
        struct Batch {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
        let n = keys.len().min(rules.len());
        if n == 0 {
            return (0, None);
        }
        let Some(aya::maps::Map::HashMap(data)) = self.ebpf.map_mut(MAP) else {
            return (0, Some(std::io::Error::other("the NAMES map is missing")));
        };
        let mut attr = Batch {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: rules.as_ptr() as u64,
            count: n as u32,
            map_fd: data.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for the command and
        // lives for the call, as do the arrays it points to (`n` elements
        // each, laid out as the map's key and value); the kernel writes the
        // count it processed back into `attr`, which is borrowed mutably.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<Batch>(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return ((attr.count as usize).min(n), Some(e));
        }
        (n, None)
    }

    /// Removes one entry (gone already is fine).
    pub fn remove_name(&mut self, key: &NameKey) -> Result<(), SensorError> {
        let _ = self.names_map()?.remove(key);
        Ok(())
    }

    /// Every entry in the map (an earlier agent's, after a restart over the
    /// pinned state).
    pub fn name_entries(&mut self) -> Result<Vec<(NameKey, NameRule)>, SensorError> {
        Ok(self.names_map()?.iter().filter_map(Result::ok).collect())
    }

    /// Whether the kernel looks into `NAMES` at all (some class rules on
    /// names).
    pub fn set_has_names(&mut self, on: bool) -> Result<(), SensorError> {
        if (self.config.has_names != 0) != on {
            self.config.has_names = u8::from(on);
            self.write_config()?;
        }
        Ok(())
    }

    /// Retires every verdict the kernel cached (an entry was added or its
    /// masks changed): the next judgement of each destination reads `NAMES`.
    pub fn bump_epoch(&mut self) -> Result<(), SensorError> {
        self.write_config()
    }
}
