//! The loaded kernel side of the sensor: [`KernelSensor`] owns the eBPF object,
//! its programs and maps.
//!
//! One owner, no global lock: the daemon keeps it in one task and sends it
//! commands. Dropping it detaches every program (aya detaches the links it
//! holds), so a crashed test or a stopped agent leaves nothing attached.
//!
//! - this file: loading, attaching, configuration, counters;
//! - [`tagging`]: which processes carry which classes (tasks, selectors, taint);
//! - [`verdicts`]: modes and the per-class destination verdicts.

pub mod offsets;
pub mod tagging;
pub mod verdicts;

use std::{fs::File, path::Path, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, TracePoint},
};
use sensor_common::{counters::COUNTER_COUNT, policy::Config};

use crate::{
    SensorError,
    events::EventReader,
    system::{bpffs, tracefs},
};

/// The kernel object, compiled by build.rs from sensor-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

/// cgroup sock_addr programs in the object.
pub const SOCK_ADDR_PROGRAMS: &[&str] =
    &["on_connect4", "on_connect6", "on_sendmsg4", "on_sendmsg6"];
/// cgroup sock programs (sock_release) in the object.
pub const SOCK_PROGRAMS: &[&str] = &["on_sock_release"];

/// Tracepoint programs: (program, category, tracepoint).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("on_exec", "sched", "sched_process_exec"),
    ("on_fork", "sched", "sched_process_fork"),
    ("on_exit", "sched", "sched_process_exit"),
    ("on_send_length", "sock", "sock_send_length"),
    ("on_accept4_exit", "syscalls", "sys_exit_accept4"),
    ("on_accept_exit_plain", "syscalls", "sys_exit_accept"),
];

/// Capacity of the kernel's process tag map (`TASKS` in sensor-ebpf maps.rs).
pub const TASKS_CAPACITY: u32 = 65_536;

/// The loaded kernel side of the sensor.
pub struct KernelSensor {
    ebpf: Ebpf,
    config: Config,
    selectors: tagging::Selectors,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> SensorError {
    move |source| SensorError::Program { name, source }
}

/// Runs a program load, again when the kernel answers EAGAIN: the verifier gives
/// up with EAGAIN when a signal arrives while it works (a SIGCHLD is enough; seen
/// with many loads in parallel on 6.18). libbpf retries the same way.
fn retry_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 0;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 5 =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A program of `ebpf` by name, as its concrete type.
fn load_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, SensorError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SensorError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

impl KernelSensor {
    /// Loads every program into the kernel (not yet attached) and writes the
    /// initial configuration (struct and tracepoint offsets of this kernel).
    pub fn load() -> Result<Self, SensorError> {
        bpffs::ensure_mounted()?;
        let tracefs = tracefs::ensure_mounted()?;
        let mut ebpf = Ebpf::load(OBJECT)?;
        for &name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        for &name in SOCK_PROGRAMS {
            let prog: &mut CgroupSock = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        for &(name, _, _) in TRACEPOINTS {
            let prog: &mut TracePoint = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        let mut config = Config::DEFAULT;
        offsets::discover(&mut config, &tracefs);
        let mut sensor = Self {
            ebpf,
            config,
            selectors: tagging::Selectors::default(),
        };
        sensor.write_config()?;
        Ok(sensor)
    }

    /// Attaches the socket programs to the cgroup at `path` (a directory under the
    /// cgroup v2 mount; the mount itself means every process on the host), and
    /// the process tracepoints. Other programs attached there keep running: aya
    /// attaches through bpf_link on kernels >= 5.7, and cgroup links always
    /// coexist. The mode must stay `Single` (flags 0): the kernel rejects any
    /// flag on a cgroup `bpf_link_create` with EINVAL (seen on 6.18).
    pub fn attach(&mut self, cgroup_path: &Path) -> Result<(), SensorError> {
        self.attach_tracepoints()?;
        self.attach_cgroup(cgroup_path)
    }

    /// Attaches the host-wide programs alone: the tracepoints for processes
    /// (exec, fork, exit), byte counting and accepts. Attach them once per
    /// loaded object.
    pub fn attach_tracepoints(&mut self) -> Result<(), SensorError> {
        for &(name, category, tp) in TRACEPOINTS {
            let prog: &mut TracePoint = self.program(name)?;
            prog.attach(category, tp).map_err(prog_err(name))?;
        }
        Ok(())
    }

    /// Attaches the socket programs alone to one more cgroup (benchmarks compare
    /// cgroups with and without them).
    pub fn attach_cgroup(&mut self, cgroup_path: &Path) -> Result<(), SensorError> {
        let cgroup = File::open(cgroup_path).map_err(|source| SensorError::OpenCgroup {
            path: cgroup_path.to_owned(),
            source,
        })?;
        for &name in SOCK_PROGRAMS {
            let prog: &mut CgroupSock = self.program(name)?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
        }
        // Socket hooks last: by the time connects are judged, exec/fork
        // tracking and flow accounting are in place.
        for &name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = self.program(name)?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
        }
        Ok(())
    }

    /// A program of the object by name and type.
    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, SensorError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        load_program(&mut self.ebpf, name)
    }

    /// Takes the ring buffer out of the object; call once, hand it to the drain task.
    pub fn take_events(&mut self) -> Result<EventReader, SensorError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(SensorError::MissingMap("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(map_err("EVENTS"))?;
        Ok(EventReader::new(ring))
    }

    /// The loss and activity counters summed over all CPUs, indexed by
    /// `sensor_common::counters`.
    pub fn counters(&self) -> Result<Vec<u64>, SensorError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(SensorError::MissingMap("COUNTERS"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err("COUNTERS"))?;
        (0..COUNTER_COUNT)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(map_err("COUNTERS"))
            })
            .collect()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Folds repeated flows of one process to one destination into one record
    /// per `interval` (zero: every flow is its own record).
    pub fn set_aggregation(&mut self, interval: Duration) -> Result<(), SensorError> {
        self.config.agg_interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        self.write_config()
    }

    /// Whether a destination no verdict covers is a violation (default: yes).
    pub fn set_unknown_is_violation(&mut self, yes: bool) -> Result<(), SensorError> {
        self.config.unknown_is_violation = u8::from(yes);
        self.write_config()
    }

    /// Whether executable selectors can work on this kernel (BTF offsets found).
    pub fn exe_selectors_supported(&self) -> bool {
        self.config.off_task_mm != 0
    }

    /// Tells the kernel whether any taint source exists.
    pub(crate) fn set_has_taint(&mut self, on: bool) -> Result<(), SensorError> {
        if (self.config.has_taint != 0) != on {
            self.config.has_taint = u8::from(on);
            self.write_config()?;
        }
        Ok(())
    }

    /// Writes the configuration. Every write bumps the policy epoch: the
    /// kernel then judges each destination afresh instead of reusing the
    /// verdict it cached for it (see `AggState` in sensor-common).
    ///
    /// Written twice, the second time with only the epoch bumped again: the
    /// kernel copies a map value without a lock, so a judgement running during
    /// the first write may see the new epoch with old fields and cache what it
    /// decided under it. The second write's other fields are all settled, and
    /// its epoch retires anything cached during the first.
    fn write_config(&mut self) -> Result<(), SensorError> {
        let map = self
            .ebpf
            .map_mut("CONFIG")
            .ok_or(SensorError::MissingMap("CONFIG"))?;
        let mut array: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(map_err("CONFIG"))?;
        for _ in 0..2 {
            self.config.epoch = self.config.epoch.wrapping_add(1);
            array.set(0, self.config, 0).map_err(map_err("CONFIG"))?;
        }
        Ok(())
    }
}
