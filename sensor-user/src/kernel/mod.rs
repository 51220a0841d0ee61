//! The loaded kernel side of the sensor: [`KernelSensor`] owns the eBPF object,
//! its programs and maps.
//!
//! One owner, no global lock: the daemon keeps it in one task and sends it
//! commands. Loaded with [`KernelSensor::load_pinned`] (the daemon), its maps
//! and links are pinned and outlive the process: the gates stay shut when the
//! agent dies (see [`pins`]). Loaded with [`KernelSensor::load`] (tests,
//! benchmarks), dropping it detaches every program.
//!
//! - this file: loading, attaching, configuration, counters;
//! - [`pins`]: the pinned set, adopting it, replacing programs in place;
//! - [`tagging`]: which processes carry which classes (tasks, selectors, taint);
//! - [`verdicts`]: modes and the per-class destination verdicts.

pub mod names;
pub mod offsets;
pub mod pins;
pub mod tagging;
pub mod verdicts;

use std::{fs::File, path::Path, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        CgroupSockAddr, RawTracePoint, TracePoint, links::FdLink,
    },
};
use sensor_common::{
    counters::{COUNTER_COUNT, TallyKey},
    policy::{Config, Liveness},
    tag::TaskTag,
};
use tracing::info;

use crate::{
    SensorError,
    events::EventReader,
    system::{bpffs, tracefs},
};

/// The kernel object, compiled by build.rs from sensor-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

/// cgroup sock_addr programs in the object.
pub const SOCK_ADDR_PROGRAMS: &[&str] = &[
    "on_connect4",
    "on_connect6",
    "on_sendmsg4",
    "on_sendmsg6",
    "on_bind4",
    "on_bind6",
];
/// cgroup sock programs (sock_release, sock_create) in the object.
pub const SOCK_PROGRAMS: &[&str] = &["on_sock_release", "on_sock_create"];
/// cgroup_skb egress programs (the backstop) in the object.
pub const SKB_EGRESS_PROGRAMS: &[&str] = &["on_egress"];
/// cgroup_skb ingress programs (DNS answers to tagged processes).
pub const SKB_INGRESS_PROGRAMS: &[&str] = &["on_ingress"];
/// Raw tracepoint programs: (program, tracepoint).
pub const RAW_TRACEPOINTS: &[(&str, &str)] = &[("on_cgroup_attach", "cgroup_attach_task")];
/// BTF tracepoint programs: (program, tracepoint).
pub const BTF_TRACEPOINTS: &[(&str, &str)] = &[("on_tcp_sendmsg", "tcp_sendmsg_locked")];

/// Tracepoint programs: (program, category, tracepoint).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("on_exec", "sched", "sched_process_exec"),
    ("on_fork", "sched", "sched_process_fork"),
    ("on_exit", "sched", "sched_process_exit"),
    ("on_send_length", "sock", "sock_send_length"),
    ("on_accept4_exit", "syscalls", "sys_exit_accept4"),
    ("on_accept_exit_plain", "syscalls", "sys_exit_accept"),
    ("on_socket_enter", "syscalls", "sys_enter_socket"),
];

/// Names of every host-wide (non-cgroup) program's pinned link.
fn host_link_names() -> impl Iterator<Item = String> {
    TRACEPOINTS
        .iter()
        .map(|(n, _, _)| *n)
        .chain(RAW_TRACEPOINTS.iter().map(|(n, _)| *n))
        .chain(BTF_TRACEPOINTS.iter().map(|(n, _)| *n))
        .map(|n| format!("tp-{n}"))
}

/// Capacity of the kernel's process tag map (`TASKS` in sensor-ebpf maps.rs).
pub const TASKS_CAPACITY: u32 = sensor_common::policy::capacity::TASKS;

/// The loaded kernel side of the sensor.
pub struct KernelSensor {
    ebpf: Ebpf,
    config: Config,
    selectors: tagging::Selectors,
    /// The pinned set, when loaded with `load_pinned`.
    pins: Option<pins::PinSet>,
    /// The liveness record as found at load (an earlier agent's last
    /// heartbeat), when adopted.
    adopted_liveness: Option<Liveness>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> SensorError {
    move |source| SensorError::Program { name, source }
}

/// Runs a program load, again when the kernel answers EAGAIN: the verifier gives
/// up with EAGAIN when a signal arrives while it works (a SIGCHLD is enough; seen
/// with many loads in parallel on 6.18, more often since the agent-loss check
/// made the connect programs longer to verify). libbpf retries the same way;
/// this thread also blocks signals while it loads, so that a process-directed
/// signal goes to another thread (or waits) instead of aborting the verifier.
fn retry_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    // SAFETY: sigset_t is plain data; the calls only read and write the sets
    // we own, and the old mask is restored below on every path.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    let mut attempt = 0;
    let result = loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 20 =>
            {
                attempt += 1;
            }
            other => break other,
        }
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

fn pins_err(pins: &pins::PinSet, name: &str, e: &dyn std::error::Error) -> SensorError {
    SensorError::Pins {
        dir: pins.dir().to_owned(),
        reason: format!(
            "program {name}: {} (pinning needs bpf_link, kernel 5.15 or newer; `sensord --preflight` checks)",
            pins::chain(e)
        ),
    }
}

/// The process tag map, writable.
fn tasks_map(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut MapData, u32, TaskTag>, SensorError> {
    let map = ebpf
        .map_mut("TASKS")
        .ok_or(SensorError::MissingMap("TASKS"))?;
    BpfHashMap::try_from(map).map_err(map_err("TASKS"))
}

/// The array map `name`, writable.
pub(crate) fn array_mut<'a, T: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, T>, SensorError> {
    let map = ebpf.map_mut(name).ok_or(SensorError::MissingMap(name))?;
    Array::try_from(map).map_err(map_err(name))
}

/// Index 0 of the array map `name`, when it was ever written.
fn read_array<T: aya::Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Option<T>, SensorError> {
    let map = ebpf.map(name).ok_or(SensorError::MissingMap(name))?;
    let array: Array<&MapData, T> = Array::try_from(map).map_err(map_err(name))?;
    Ok(array.get(&0, 0).ok())
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
    /// Nothing is pinned: dropping the sensor detaches it (tests, benchmarks).
    pub fn load() -> Result<Self, SensorError> {
        bpffs::ensure_mounted()?;
        Self::load_with(&mut EbpfLoader::new(), None)
    }

    /// Loads the programs against the pinned set in `dir` (on bpffs), adopting
    /// the maps an earlier agent left there: tags, verdicts, modes, flows and
    /// unread records carry over. Attach with [`KernelSensor::attach`], which
    /// then swaps the programs of the pinned links in place.
    pub fn load_pinned(dir: &Path) -> Result<Self, SensorError> {
        bpffs::ensure_mounted()?;
        let (set, paths) = pins::PinSet::prepare(dir, OBJECT)?;
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        if !set.adopted.is_empty() {
            info!(dir = %dir.display(), adopted = ?set.adopted, created = ?set.created, "adopting the pinned kernel state of an earlier agent");
        }
        Self::load_with(&mut loader, Some(set))
    }

    fn load_with(
        loader: &mut EbpfLoader<'_>,
        pins: Option<pins::PinSet>,
    ) -> Result<Self, SensorError> {
        let tracefs = tracefs::ensure_mounted()?;
        let mut ebpf = loader.load(OBJECT)?;
        for &name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        for &name in SOCK_PROGRAMS {
            let prog: &mut CgroupSock = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        for &name in SKB_EGRESS_PROGRAMS.iter().chain(SKB_INGRESS_PROGRAMS) {
            let prog: &mut CgroupSkb = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        for &(name, _, _) in TRACEPOINTS {
            let prog: &mut TracePoint = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        for &(name, _) in RAW_TRACEPOINTS {
            let prog: &mut RawTracePoint = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load()).map_err(prog_err(name))?;
        }
        let vmlinux = aya::Btf::from_sys_fs()
            .map_err(|e| prog_err(BTF_TRACEPOINTS[0].0)(aya::programs::ProgramError::Btf(e)))?;
        for &(name, tp) in BTF_TRACEPOINTS {
            let prog: &mut BtfTracePoint = load_program(&mut ebpf, name)?;
            retry_eagain(|| prog.load(tp, &vmlinux)).map_err(prog_err(name))?;
        }
        let adopted = |m: &str| pins.as_ref().is_some_and(|p| p.adopted(m));
        // An adopted configuration is continued, not restarted: its verdict
        // table switch says which trie the running programs read (writing the
        // next table into that one would open the gates), and its generation
        // and epoch must keep counting up.
        let mut config = if adopted("CONFIG") {
            read_array::<Config>(&ebpf, "CONFIG")?.unwrap_or(Config::DEFAULT)
        } else {
            Config::DEFAULT
        };
        offsets::discover(&mut config, &tracefs);
        let adopted_liveness = if adopted("LIVENESS") {
            read_array::<Liveness>(&ebpf, "LIVENESS")?
        } else {
            None
        };
        let mut sensor = Self {
            ebpf,
            config,
            selectors: tagging::Selectors::default(),
            pins,
            adopted_liveness,
        };
        sensor.write_config()?;
        Ok(sensor)
    }

    /// The pinned set, when loaded with `load_pinned`.
    pub fn pins(&self) -> Option<&pins::PinSet> {
        self.pins.as_ref()
    }

    /// What an earlier agent last wrote to the liveness record, when its
    /// pinned state was adopted.
    pub fn adopted_liveness(&self) -> Option<Liveness> {
        self.adopted_liveness
    }

    /// Writes the liveness record: a heartbeat now, and what each class does
    /// when heartbeats stop for `timeout` (zero: every class keeps the last
    /// policy).
    pub fn heartbeat(
        &mut self,
        timeout: Duration,
        deny_classes: u64,
        allow_classes: u64,
    ) -> Result<(), SensorError> {
        let value = Liveness {
            heartbeat_ns: crate::clock::monotonic_ns(),
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            deny_classes,
            allow_classes,
        };
        array_mut(&mut self.ebpf, "LIVENESS")?
            .set(0, value, 0)
            .map_err(map_err("LIVENESS"))
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
            let prog: &mut TracePoint = load_program(&mut self.ebpf, name)?;
            let id = prog.attach(category, tp).map_err(prog_err(name))?;
            if let Some(pins) = &mut self.pins {
                let link = prog.take_link(id).map_err(prog_err(name))?;
                let link = FdLink::try_from(link).map_err(|e| pins_err(pins, name, &e))?;
                pins.add_link(&format!("tp-{name}"), link)?;
            }
        }
        for &(name, tp) in RAW_TRACEPOINTS {
            let prog: &mut RawTracePoint = load_program(&mut self.ebpf, name)?;
            let id = prog.attach(tp).map_err(prog_err(name))?;
            if let Some(pins) = &mut self.pins {
                let link = prog.take_link(id).map_err(prog_err(name))?;
                pins.add_link(&format!("tp-{name}"), FdLink::from(link))?;
            }
        }
        for &(name, _) in BTF_TRACEPOINTS {
            let prog: &mut BtfTracePoint = load_program(&mut self.ebpf, name)?;
            let id = prog.attach().map_err(prog_err(name))?;
            if let Some(pins) = &mut self.pins {
                let link = prog.take_link(id).map_err(prog_err(name))?;
                pins.add_link(&format!("tp-{name}"), FdLink::from(link))?;
            }
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
        let cgroup_id = tagging::cgroup_id(cgroup_path)?;
        if let Some(pins) = &self.pins {
            // A new layout's programs start with the old set's process tags.
            let carried = pins.carry_tasks(&mut tasks_map(&mut self.ebpf)?);
            if carried > 0 {
                info!(
                    processes = carried,
                    "process tags carried over from the older layout"
                );
            }
        }
        let mut pinned = Vec::new();
        // One body for both program types (aya gives them no common trait):
        // attach, or, pinned, swap the program of the link pinned for this
        // cgroup in place and pin a new link only where there is none.
        macro_rules! attach_all {
            ($ty:ty, $names:expr) => {
                attach_all!($ty, $names, |prog: &mut $ty| prog
                    .attach(&cgroup, CgroupAttachMode::Single))
            };
            ($ty:ty, $names:expr, $attach:expr) => {
                for &name in $names {
                    let prog: &mut $ty = load_program(&mut self.ebpf, name)?;
                    let Some(pins) = &self.pins else {
                        ($attach)(&mut *prog).map_err(prog_err(name))?;
                        continue;
                    };
                    let link_name = format!("cg-{cgroup_id}-{name}");
                    let fd = prog
                        .fd()
                        .map_err(prog_err(name))?
                        .try_clone()
                        .map_err(|e| pins_err(pins, name, &e))?;
                    pins.cgroup_link(&link_name, &fd, || {
                        let id = ($attach)(&mut *prog).map_err(prog_err(name))?;
                        let link = prog.take_link(id).map_err(prog_err(name))?;
                        FdLink::try_from(link).map_err(|e| pins_err(pins, name, &e))
                    })?;
                    pinned.push(link_name);
                }
            };
        }
        attach_all!(CgroupSock, SOCK_PROGRAMS);
        // The backstop before the connect hooks: every socket they mark is
        // judged again on the way out from its first packet.
        attach_all!(CgroupSkb, SKB_EGRESS_PROGRAMS, |prog: &mut CgroupSkb| prog
            .attach(
                &cgroup,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single
            ));
        attach_all!(CgroupSkb, SKB_INGRESS_PROGRAMS, |prog: &mut CgroupSkb| prog
            .attach(
                &cgroup,
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single
            ));
        // Socket hooks last: by the time connects are judged, exec/fork
        // tracking and flow accounting are in place.
        attach_all!(CgroupSockAddr, SOCK_ADDR_PROGRAMS);
        if let Some(pins) = &mut self.pins {
            // The new programs run everywhere now: the old tracepoint links
            // go, so do links to a cgroup no longer configured and the maps
            // of an older layout (after a last copy of its process tags).
            pins.commit_links()?;
            pinned.extend(host_link_names());
            pins.remove_links_except(&pinned)?;
            pins.retire(&mut tasks_map(&mut self.ebpf)?)?;
        }
        Ok(())
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

    /// Takes the DNS answers' ring buffer out of the object; call once.
    pub fn take_dns(&mut self) -> Result<crate::events::DnsReader, SensorError> {
        self.take_ring("DNS")
    }

    /// Takes the exec paths' ring buffer out of the object; call once.
    pub fn take_exec_paths(&mut self) -> Result<crate::events::ExecPathReader, SensorError> {
        self.take_ring("EXEC_PATHS")
    }

    fn take_ring<T: Copy>(
        &mut self,
        name: &'static str,
    ) -> Result<crate::events::RecordRing<T>, SensorError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(SensorError::MissingMap(name))?;
        let ring = RingBuf::try_from(map).map_err(map_err(name))?;
        Ok(crate::events::RecordRing::new(ring))
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

    /// The per-class judgement counters, summed over all CPUs (see
    /// `sensor_common::counters::TallyKey`).
    pub fn class_tally(&self) -> Result<Vec<(TallyKey, u64)>, SensorError> {
        let map = self
            .ebpf
            .map("CLASS_TALLY")
            .ok_or(SensorError::MissingMap("CLASS_TALLY"))?;
        let tally: PerCpuHashMap<&MapData, TallyKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err("CLASS_TALLY"))?;
        tally
            .iter()
            .map(|r| {
                r.map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
                    .map_err(map_err("CLASS_TALLY"))
            })
            .collect()
    }

    /// Removes judgement counters (of policy generations no longer in
    /// force, once read); a key that is gone already is fine.
    pub fn forget_tally(&mut self, keys: &[TallyKey]) -> Result<(), SensorError> {
        let map = self
            .ebpf
            .map_mut("CLASS_TALLY")
            .ok_or(SensorError::MissingMap("CLASS_TALLY"))?;
        let mut tally: PerCpuHashMap<&mut MapData, TallyKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err("CLASS_TALLY"))?;
        for k in keys {
            match tally.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("CLASS_TALLY")(e)),
            }
        }
        Ok(())
    }

    /// The kernel id of the counter map: it changes when the map is created
    /// afresh (a reboot, a new layout), and the counters with it.
    pub fn counters_map_id(&self) -> Result<u32, SensorError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(SensorError::MissingMap("COUNTERS"))?;
        let data: &MapData = match map {
            aya::maps::Map::PerCpuArray(d) => d,
            _ => return Err(SensorError::MissingMap("COUNTERS")),
        };
        data.info().map(|i| i.id()).map_err(map_err("COUNTERS"))
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
    /// Per-class socket rules (class bit masks): raw and ICMP sockets
    /// allowed, AF_PACKET sockets kill in enforce mode, classes carried over
    /// local connections.
    pub fn set_socket_rules(
        &mut self,
        raw_allowed: u64,
        packet_kill: u64,
        local_classes: u64,
    ) -> Result<(), SensorError> {
        let c = &mut self.config;
        if (c.raw_allowed, c.packet_kill, c.local_classes)
            == (raw_allowed, packet_kill, local_classes)
        {
            return Ok(());
        }
        c.raw_allowed = raw_allowed;
        c.packet_kill = packet_kill;
        c.local_classes = local_classes;
        self.write_config()
    }

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
        let mut array = array_mut::<Config>(&mut self.ebpf, "CONFIG")?;
        for _ in 0..2 {
            self.config.epoch = self.config.epoch.wrapping_add(1);
            array.set(0, self.config, 0).map_err(map_err("CONFIG"))?;
        }
        Ok(())
    }
}
