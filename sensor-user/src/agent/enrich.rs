//! Kernel records → API records: what the kernel cannot cheaply know (class
//! names, country, site, executable, wall-clock time) is added here.

use residency_proto::agent::v1 as pb;
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    policy::{action, verdict},
};

use crate::{
    clock::wall_from_ktime,
    kernel::verdicts::Verdict,
    policy::{compile::Compiled, explain},
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

/// The executable path of a live process ("" once it is gone).
pub fn exe(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
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

/// The record's `comm`, or the live process's when the kernel left it empty
/// (packet records: the kernel does not copy it into every socket mark).
fn comm(ev: &FlowEvent) -> String {
    let c = ev.comm_str();
    if !c.is_empty() {
        return c;
    }
    std::fs::read_to_string(format!("/proc/{}/comm", ev.tgid))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// The protocol a record names: the socket's own for sockets that cannot be
/// judged by destination ("packet" for AF_PACKET, "raw" for raw IP sockets),
/// else the protocol on the wire ("mptcp" for MPTCP sockets).
fn protocol(ev: &FlowEvent) -> &'static str {
    if ev.flow_kind() == Some(FlowKind::Socket) {
        if ev.family == sensor_common::net::AF_PACKET {
            return "packet";
        }
        if ev.detail == u64::from(sensor_common::net::SOCK_RAW) {
            return "raw";
        }
    }
    sensor_common::net::protocol_name(ev.protocol, ev.sock_protocol)
}

/// The API record for a kernel record.
pub fn flow(ev: &FlowEvent, c: &Compiled) -> pb::Flow {
    let remote = ev.remote();
    let loc = explain::location(c, remote.ip());
    let time = wall_from_ktime(ev.ktime_ns)
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    pb::Flow {
        kind: match ev.flow_kind() {
            Some(FlowKind::Connect) => "connect",
            Some(FlowKind::Sendmsg) => "sendmsg",
            Some(FlowKind::Accept) => "accept",
            Some(FlowKind::Close) => "close",
            Some(FlowKind::Tag) => "tag",
            Some(FlowKind::Packet) => "packet",
            Some(FlowKind::Socket) => "socket",
            None => "unknown",
        }
        .into(),
        time_unix_ns: time,
        ktime_ns: ev.ktime_ns,
        pid: ev.tgid,
        tid: ev.pid,
        uid: ev.uid,
        cgroup_id: ev.cgroup_id,
        comm: comm(ev),
        exe: exe(ev.tgid),
        classes: class_names(c, ev.classes),
        protocol: protocol(ev).into(),
        local: if ev.local_port == 0 {
            String::new()
        } else {
            ev.local().to_string()
        },
        remote: if matches!(ev.flow_kind(), Some(FlowKind::Socket)) {
            String::new()
        } else {
            remote.to_string()
        },
        remote_country: loc.country.map(|cc| cc.to_string()).unwrap_or_default(),
        remote_site: loc.site.unwrap_or_default(),
        verdict: match ev.verdict {
            verdict::ALLOW => "allow",
            verdict::DENY => "deny",
            verdict::UNKNOWN => "unknown",
            _ => "none",
        }
        .into(),
        action: match ev.action {
            action::REPORTED => "reported",
            action::DENIED => "denied",
            _ => "none",
        }
        .into(),
        count: ev.count,
        bytes: if ev.flow_kind() == Some(FlowKind::Close) {
            ev.detail
        } else {
            0
        },
        duration_ns: ev.duration_ns,
        cookie: ev.cookie,
        policy_generation: ev.policy_generation,
        host_id: c.policy.host.id.clone(),
    }
}
