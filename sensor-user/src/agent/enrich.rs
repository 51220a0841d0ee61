//! Kernel records → API records: what the kernel cannot cheaply know (class
//! names, country, site, executable, wall-clock time) is added here.

use std::{collections::HashMap, sync::Arc};

use residency_proto::agent::v1 as pb;
use sensor_common::{
    exec::ExecPath,
    flow::{COMM_LEN, FlowEvent, FlowKind},
    policy::action,
};

use crate::{
    kernel::verdicts::Verdict,
    policy::{compile::Compiled, explain},
    regions::Country,
    system::workload::{Workload, WorkloadCache},
};

/// Names of the classes in `mask`.
pub fn class_names(c: &Compiled, mask: u64) -> Vec<String> {
    c.policy
        .classes
        .iter()
        .filter(|cl| mask & (1 << cl.id) != 0)
        .map(|cl| cl.name.clone())
        .collect()
}

/// True when `pid` is a live process (not a thread of one).
pub fn is_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
        })
        == Some(pid)
}

/// Bytes of an executable path a record carries at most (PATH_MAX is 4096;
/// a longer or hostile path is cut, and says so).
pub const EXE_MAX: usize = 1024;

/// Bytes of a command line a listing carries at most.
pub const CMDLINE_MAX: usize = 4096;

/// `s` cut to at most `max` bytes (at a character boundary), marked as cut
/// with its full length: a process controls its path and arguments, and no
/// record may grow past what delivery can carry.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let full = s.len();
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!("…[cut, {full} bytes]"));
    s
}

/// The executable path of a live process ("" once it is gone), bounded.
pub fn exe(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| bounded(p.display().to_string(), EXE_MAX))
        .unwrap_or_default()
}

/// The command line of a live process, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .map(|c| bounded(c, CMDLINE_MAX))
        .unwrap_or_default()
}

/// "allow", "deny", "unknown".
pub fn verdict_name(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Allow) => "allow",
        Some(Verdict::Deny) => "deny",
        Some(Verdict::Unknown) | None => "unknown",
    }
}

/// The live process's `comm` (for records the kernel left it empty in:
/// packet records, the kernel does not copy it into every socket mark).
fn live_comm(tgid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// The protocol a record names: the socket's own for sockets that cannot be
/// judged by destination ("packet" for AF_PACKET, "raw" for raw IP sockets),
/// else the protocol on the wire ("mptcp" for MPTCP sockets).
fn protocol(ev: &FlowEvent) -> pb::Protocol {
    if ev.flow_kind() == Some(FlowKind::Socket) {
        if ev.family == sensor_common::net::AF_PACKET {
            return pb::Protocol::Packet;
        }
        if ev.detail == u64::from(sensor_common::net::SOCK_RAW) {
            return pb::Protocol::Raw;
        }
    }
    pb::Protocol::from_kernel(ev.protocol, ev.sock_protocol)
}

/// What naming a record needs from the policy in force: class and site
/// names, the host id. Built once per policy and shared by every record kept
/// under it, so a record holds a pointer, not strings.
#[derive(Debug, Default)]
pub struct Names {
    classes: Vec<(u8, String)>,
    sites: Vec<String>,
    host_id: String,
}

impl Names {
    /// The names of `c`.
    pub fn of(c: &Compiled) -> Arc<Names> {
        Arc::new(Names {
            classes: c
                .policy
                .classes
                .iter()
                .map(|cl| (cl.id, cl.name.clone()))
                .collect(),
            sites: c.policy.sites.iter().map(|s| s.name.clone()).collect(),
            host_id: c.policy.host.id.clone(),
        })
    }

    fn class_names(&self, mask: u64) -> Vec<String> {
        self.classes
            .iter()
            .filter(|(id, _)| mask & (1 << id) != 0)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// A workload as the API shows it (absent when nothing is known).
pub fn workload_pb(w: &Workload) -> Option<pb::Workload> {
    (!w.cgroup.is_empty()).then(|| pb::Workload {
        cgroup: w.cgroup.clone(),
        unit: w.unit.clone(),
        container_id: w.container_id.clone(),
        container_runtime: w.runtime.clone(),
        pod_uid: w.pod_uid.clone(),
        pod_qos: w.qos.clone(),
    })
}

/// Executables of the processes records came from, resolved once per
/// process and exec: the kernel sends an `Exec` record when a tagged process
/// calls exec() and a `Tag` record when a process gets classes, and both drop
/// the entry. An entry whose `comm` no longer matches the record's is
/// resolved again (a pid reused by a process that sent neither).
#[derive(Debug, Default)]
pub struct ExeCache {
    by_tgid: HashMap<u32, ([u8; COMM_LEN], Arc<str>)>,
    /// The paths tagged processes exec'd, until their first record.
    exec_paths: HashMap<u32, ([u8; COMM_LEN], Arc<str>)>,
}

/// Entries the cache holds at most; past this it starts over.
const EXE_CACHE_MAX: usize = 65_536;

impl ExeCache {
    /// The executable of `ev`'s process.
    pub fn get(&mut self, ev: &FlowEvent) -> Arc<str> {
        // Packet records carry no comm: they take the entry as it is.
        if let Some((comm, exe)) = self.by_tgid.get(&ev.tgid)
            && (*comm == ev.comm || ev.comm == [0; COMM_LEN])
        {
            return exe.clone();
        }
        if self.by_tgid.len() >= EXE_CACHE_MAX {
            self.by_tgid.clear();
        }
        let mut exe: Arc<str> = exe(ev.tgid).into();
        if let Some((comm, path)) = self.exec_paths.remove(&ev.tgid)
            && exe.is_empty()
            && (comm == ev.comm || ev.comm == [0; COMM_LEN])
        {
            exe = path;
        }
        self.by_tgid.insert(ev.tgid, (ev.comm, exe.clone()));
        exe
    }

    /// A tagged process exec'd `p.path` (read right after the records ring,
    /// before its records are enriched): the entry records carry when the
    /// process is gone by the time they are read (`/proc/PID/exe` then
    /// says nothing; a short-lived process often is).
    pub fn exec(&mut self, p: &ExecPath) {
        let (bytes, cut) = p.path_bytes();
        if bytes.is_empty() {
            return;
        }
        let mut path = bounded(String::from_utf8_lossy(bytes).into_owned(), EXE_MAX);
        if cut {
            path.push_str(&format!("…[cut, more than {} bytes]", bytes.len()));
        }
        self.exec_paths.insert(p.tgid, (p.comm, path.into()));
        if self.exec_paths.len() >= EXE_CACHE_MAX {
            self.exec_paths.clear();
        }
    }

    /// `ev`'s process exec'd or got classes: its executable is resolved
    /// now, from `/proc` while the process runs, else from the path it
    /// exec'd (as given to exec: relative when the caller wrote it so).
    pub fn refresh(&mut self, ev: &FlowEvent) {
        self.by_tgid.remove(&ev.tgid);
        let _ = self.get(ev);
    }

    /// Drops the entries of processes that are gone.
    pub fn retain_live(&mut self) {
        self.by_tgid
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

/// A kernel record with what the agent adds (wall-clock time, executable,
/// where the remote is), kept as it came: strings are built only when a
/// client asks for it ([`Kept::to_pb`]).
#[derive(Debug, Clone)]
pub struct Kept {
    pub ev: FlowEvent,
    pub time_unix_ns: i64,
    pub exe: Arc<str>,
    pub country: Option<Country>,
    /// Index into the policy's sites.
    pub site: Option<u16>,
    pub names: Arc<Names>,
    /// The process's workload (from its cgroup).
    pub workload: Arc<Workload>,
    /// The name the process resolved the remote address from (`dns`).
    pub remote_name: Option<Arc<crate::dns::Resolved>>,
}

/// A resolved name as the API's `remote_name` and `remote_cnames`.
pub fn resolved_pb(r: Option<&crate::dns::Resolved>) -> (String, Vec<String>) {
    r.map(|r| (r.name.clone(), r.cnames.clone()))
        .unwrap_or_default()
}

impl Kept {
    /// Enriches a kernel record: `wall_offset_ns` from
    /// [`crate::clock::wall_offset_ns`], read once per batch.
    pub fn new(
        ev: &FlowEvent,
        c: &Compiled,
        names: &Arc<Names>,
        exes: &mut ExeCache,
        workloads: &mut WorkloadCache,
        wall_offset_ns: i64,
    ) -> Kept {
        let (country, site) = explain::place_of(c, ev.remote().ip());
        Kept {
            ev: *ev,
            time_unix_ns: wall_offset_ns.saturating_add(ev.ktime_ns as i64),
            exe: exes.get(ev),
            country,
            site,
            names: names.clone(),
            workload: workloads.get(ev.cgroup_id),
            remote_name: None,
        }
    }

    /// A violation: a connect, send, accept, packet or socket record whose
    /// action is reported or denied (a close record carries its flow's action
    /// with the bytes; it is not a second violation).
    pub fn is_violation(&self) -> bool {
        matches!(
            self.ev.flow_kind(),
            Some(
                FlowKind::Connect
                    | FlowKind::Sendmsg
                    | FlowKind::Accept
                    | FlowKind::Packet
                    | FlowKind::Socket
            )
        ) && matches!(self.ev.action, action::REPORTED | action::DENIED)
    }

    /// The API record.
    pub fn to_pb(&self) -> pb::Flow {
        let resolved = resolved_pb(self.remote_name.as_deref());
        let ev = &self.ev;
        let comm = ev.comm_str();
        pb::Flow {
            kind: ev
                .flow_kind()
                .map_or(pb::FlowKind::Unspecified, pb::FlowKind::from) as i32,
            time_unix_ns: self.time_unix_ns,
            ktime_ns: ev.ktime_ns,
            pid: ev.tgid,
            tid: ev.pid,
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
            comm: if comm.is_empty() {
                live_comm(ev.tgid)
            } else {
                comm
            },
            exe: self.exe.to_string(),
            classes: self.names.class_names(ev.classes),
            protocol: protocol(ev) as i32,
            local: if ev.local_port == 0 {
                String::new()
            } else {
                ev.local().to_string()
            },
            remote: if ev.flow_kind() == Some(FlowKind::Socket) {
                String::new()
            } else {
                ev.remote().to_string()
            },
            remote_country: self.country.map(|cc| cc.to_string()).unwrap_or_default(),
            remote_site: self
                .site
                .and_then(|i| self.names.sites.get(usize::from(i)))
                .cloned()
                .unwrap_or_default(),
            verdict: pb::Verdict::from_kernel(ev.verdict) as i32,
            action: pb::Action::from_kernel(ev.action) as i32,
            count: ev.count,
            bytes: if ev.flow_kind() == Some(FlowKind::Close) {
                ev.detail
            } else {
                0
            },
            duration_ns: ev.duration_ns,
            cookie: ev.cookie,
            policy_generation: ev.policy_generation,
            host_id: self.names.host_id.clone(),
            community_id: if ev.local_port == 0 || ev.flow_kind() == Some(FlowKind::Socket) {
                String::new()
            } else {
                residency_proto::community_id::v1(ev.protocol, ev.local(), ev.remote())
                    .unwrap_or_default()
            },
            workload: workload_pb(&self.workload),
            remote_name: resolved.0,
            remote_cnames: resolved.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_resolved_once_per_process_and_comm() {
        let mut cache = ExeCache::default();
        let mut ev = FlowEvent::ZERO;
        ev.tgid = std::process::id();
        ev.comm[..4].copy_from_slice(b"test");
        let first = cache.get(&ev);
        assert!(!first.is_empty(), "this process's executable");
        assert!(Arc::ptr_eq(&first, &cache.get(&ev)), "cached");
        // A record without comm (packet records) takes the entry as it is.
        let mut packet = ev;
        packet.comm = [0; COMM_LEN];
        assert!(Arc::ptr_eq(&first, &cache.get(&packet)));
        // Another comm (a reused pid, an exec) resolves again, as does an
        // entry refreshed for an Exec or Tag record (at once: the cached
        // entry is the new one).
        let mut other = ev;
        other.comm[..4].copy_from_slice(b"else");
        assert!(!Arc::ptr_eq(&first, &cache.get(&other)));
        let again = cache.get(&other);
        cache.refresh(&other);
        let refreshed = cache.get(&other);
        assert!(!Arc::ptr_eq(&again, &refreshed) && *refreshed == *first);
        assert!(Arc::ptr_eq(&refreshed, &cache.get(&other)));
    }

    #[test]
    fn a_process_gone_before_its_records_is_named_by_the_path_it_execd() {
        let mut cache = ExeCache::default();
        let mut ev = FlowEvent::ZERO;
        ev.tgid = u32::MAX - 2;
        ev.comm[..4].copy_from_slice(b"curl");
        let mut p = ExecPath {
            tgid: ev.tgid,
            len: 14,
            comm: ev.comm,
            path: [0; sensor_common::exec::EXEC_PATH_MAX],
        };
        p.path[..13].copy_from_slice(b"/usr/bin/curl");
        cache.exec(&p);
        cache.refresh(&ev);
        assert_eq!(&*cache.get(&ev), "/usr/bin/curl");
        // Another process with the pid (another comm) does not take it.
        let mut q = p;
        q.tgid = ev.tgid - 1;
        cache.exec(&q);
        let mut other = ev;
        other.tgid = q.tgid;
        other.comm[..4].copy_from_slice(b"wget");
        assert_eq!(&*cache.get(&other), "");
        // A path that filled the buffer says it was cut.
        let mut long = p;
        long.tgid = ev.tgid - 3;
        long.len = sensor_common::exec::EXEC_PATH_MAX as u32;
        long.path = [b'a'; sensor_common::exec::EXEC_PATH_MAX];
        cache.exec(&long);
        let mut l = ev;
        l.tgid = long.tgid;
        assert!(cache.get(&l).ends_with("[cut, more than 1024 bytes]"));
    }

    #[test]
    fn long_fields_are_cut_and_say_so() {
        assert_eq!(bounded("short".into(), 10), "short");
        let long = "\u{1}".repeat(3800);
        let b = bounded(long, EXE_MAX);
        assert!(b.len() < EXE_MAX + 40, "{}", b.len());
        assert!(b.ends_with("…[cut, 3800 bytes]"), "{b}");
        // Never inside a character.
        let b = bounded("é".repeat(600), 5);
        assert!(b.starts_with("éé…"), "{b}");
    }
}
