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
