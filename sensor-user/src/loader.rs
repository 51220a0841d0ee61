//! Loading the embedded kernel object and attaching it to cgroups.
//!
//! [`KernelSensor`] owns the loaded object; dropping it detaches every program
//! (aya detaches links when the program data is dropped) so a crashed test or a
//! stopped agent leaves nothing attached.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use sensor_common::counters::COUNTER_COUNT;

use crate::{SensorError, events::EventReader, system::bpffs};

/// The kernel object, compiled by build.rs from sensor-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

/// cgroup sock_addr programs in the object, in attach order.
pub const SOCK_ADDR_PROGRAMS: &[&str] = &["on_connect4", "on_connect6"];

/// The loaded kernel side of the sensor.
pub struct KernelSensor {
    ebpf: Ebpf,
}

impl KernelSensor {
    /// Loads every program into the kernel (not yet attached).
    pub fn load() -> Result<Self, SensorError> {
        bpffs::ensure_mounted()?;
        let mut ebpf = Ebpf::load(OBJECT)?;
        for &name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(SensorError::MissingProgram(name))?
                .try_into()
                .map_err(|source| SensorError::Program { name, source })?;
            prog.load()
                .map_err(|source| SensorError::Program { name, source })?;
        }
        Ok(Self { ebpf })
    }

    /// Attaches the socket programs to the cgroup at `path` (a directory under the
    /// cgroup v2 mount). Other programs attached there keep running: aya attaches
    /// through bpf_link on kernels >= 5.7, and cgroup links always coexist. The
    /// mode must stay `Single` (flags 0): the kernel rejects any flag on a cgroup
    /// `bpf_link_create` with EINVAL (seen on 6.18).
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<(), SensorError> {
        let cgroup = File::open(path).map_err(|source| SensorError::OpenCgroup {
            path: path.to_owned(),
            source,
        })?;
        for &name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(SensorError::MissingProgram(name))?
                .try_into()
                .map_err(|source| SensorError::Program { name, source })?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| SensorError::Program { name, source })?;
        }
        Ok(())
    }

    /// Takes the ring buffer out of the object; call once, hand it to the drain task.
    pub fn take_events(&mut self) -> Result<EventReader, SensorError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(SensorError::MissingMap("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(|source| SensorError::Map {
            name: "EVENTS",
            source,
        })?;
        Ok(EventReader::new(ring))
    }

    /// The loss counters summed over all CPUs, indexed by
    /// `sensor_common::counters`.
    pub fn counters(&self) -> Result<Vec<u64>, SensorError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(SensorError::MissingMap("COUNTERS"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| SensorError::Map {
                name: "COUNTERS",
                source,
            })?;
        (0..COUNTER_COUNT)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(|source| SensorError::Map {
                        name: "COUNTERS",
                        source,
                    })
            })
            .collect()
    }
}
