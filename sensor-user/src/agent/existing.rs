//! Connections that were open before the kernel judged them: opened before
//! this agent started (or before the process got its class), or while the
//! class was not enforced. The connect hooks never saw them, so the agent
//! walks the sockets of tagged processes, judges each remote with the kernel's
//! own maps, reports violations as records of kind `existing`, and in enforce
//! mode closes the socket (`SOCK_DESTROY`): the owner's next send fails.

use residency_proto::agent::v1 as pb;
use sensor_common::net::IPPROTO_TCP;
use tracing::{error, info};

use super::{Agent, enrich};
use crate::{
    kernel::verdicts::Judgement,
    policy::explain,
    system::sockets::{self, OpenSocket},
};

impl Agent {
    /// Judges the open sockets of every tagged process. With `report_all`
    /// every violating one is reported (at start); otherwise only those an
    /// enforced class cuts (after a mode or policy change: the others were
    /// reported when they were opened).
    pub(super) fn judge_existing(&mut self, report_all: bool) {
        let tagged = self.sensor.tagged_processes().unwrap_or_default();
        let mut cut = 0usize;
        let mut reported = 0usize;
        let mut walk = sockets::Walk::default();
        for (pid, classes) in tagged {
            if !enrich::is_process(pid) {
                continue;
            }
            for sock in walk.open_sockets(pid) {
                let Some(j) = self.sensor.judge(classes, sock.remote.ip()) else {
                    continue;
                };
                if !report_all && !j.enforce {
                    continue;
                }
                let destroyed = j.enforce
                    && {
                        match sockets::destroy(pid, &sock) {
                            Ok(()) => true,
                            Err(e) => {
                                let hint = match e.raw_os_error() {
                                    Some(libc::EOPNOTSUPP) => {
                                        "this kernel lacks CONFIG_INET_DIAG_DESTROY; enforce such connections by restarting the process"
                                    }
                                    Some(libc::ENOENT) => "it closed meanwhile",
                                    _ => "it stays open and is reported",
                                };
                                error!(pid, remote = %sock.remote, error = %e, hint, "closing a connection to a disallowed destination failed");
                                false
                            }
                        }
                    };
                cut += usize::from(destroyed);
                reported += 1;
                let flow = self.existing_flow(pid, &sock, &j, destroyed);
                self.record_violation(flow);
            }
        }
        if reported > 0 {
            info!(
                reported,
                closed = cut,
                "judged connections that were open before the kernel judged them"
            );
        }
    }

    /// The record of an open connection found violating.
    fn existing_flow(
        &self,
        pid: u32,
        sock: &OpenSocket,
        j: &Judgement,
        destroyed: bool,
    ) -> pb::Flow {
        let loc = explain::location(&self.compiled, sock.remote.ip());
        let uid = crate::procscan::real_uid(pid).unwrap_or(0);
        let resolved = enrich::resolved_pb(
            self.resolved
                .lookup(pid, sock.remote.ip(), std::time::Instant::now())
                .as_deref(),
        );
        pb::Flow {
            kind: pb::FlowKind::Existing as i32,
            time_unix_ns: super::now_unix_ns(),
            ktime_ns: crate::clock::monotonic_ns(),
            pid,
            tid: pid,
            uid,
            cgroup_id: 0,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            exe: enrich::exe(pid),
            classes: enrich::class_names(&self.compiled, j.violating),
            protocol: if sock.protocol == IPPROTO_TCP {
                pb::Protocol::Tcp
            } else {
                pb::Protocol::Udp
            } as i32,
            local: sock.local.to_string(),
            remote: sock.remote.to_string(),
            community_id: residency_proto::community_id::v1(sock.protocol, sock.local, sock.remote)
                .unwrap_or_default(),
            workload: enrich::workload_pb(&crate::system::workload::Workload::of_pid(pid)),
            remote_name: resolved.0,
            remote_cnames: resolved.1,
            remote_country: loc.country.map(|c| c.to_string()).unwrap_or_default(),
            remote_site: loc.site.unwrap_or_default(),
            verdict: pb::Verdict::from_kernel(j.verdict) as i32,
            action: if destroyed {
                pb::Action::Denied
            } else {
                pb::Action::Reported
            } as i32,
            count: 1,
            bytes: 0,
            duration_ns: 0,
            cookie: 0,
            policy_generation: self.sensor.generation(),
            host_id: self.compiled.policy.host.id.clone(),
        }
    }
}
