//! Answers about the agent's state: status, tagged processes, lookups, and
//! what the collector is told about this host.

use super::*;

impl Agent {
    pub(super) fn status(&self) -> pb::Status {
        let counters = self.sensor.counters().unwrap_or_default();
        let p = &self.compiled.policy;
        let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        pb::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            host_id: p.host.id.clone(),
            modes: self.modes(),
            policy_sha256: p.hash.clone(),
            policy_path: p.source.display().to_string(),
            policy_loaded_unix_ms: unix_ms(self.loaded_at),
            policy_generation: self.sensor.generation(),
            dataset: self
                .compiled
                .provenance
                .as_ref()
                .map(|d| pb::DatasetProvenance {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    licence: d.licence.clone(),
                    attribution: d.attribution.clone(),
                }),
            tagged_processes: self
                .sensor
                .tagged_processes()
                .map(|t| t.len() as u64)
                .unwrap_or(0),
            verdict_prefixes: self.compiled.prefix_counts().1 as u64,
            events: self.events_total,
            counters: COUNTER_NAMES
                .iter()
                .zip(counters.iter())
                .map(|(n, v)| pb::Counter {
                    name: (*n).into(),
                    value: *v,
                })
                .collect(),
            spool_depth: self.spool.as_ref().map_or(0, Spool::depth),
            collector: self.collector_state.clone(),
            kernel: uname.trim().into(),
            policy_problem: self.policy_problem.clone(),
            spool_problem: self.spool_problem(),
            chain_seq: self.spool.as_ref().map_or(0, |s| s.chain_head().0),
            chain_head: self
                .spool
                .as_ref()
                .map(|s| s.chain_head().1.to_vec())
                .unwrap_or_default(),
            acked_seq: self.spool.as_ref().map_or(0, Spool::acked),
        }
    }

    pub(super) fn tagged(&self) -> pb::ListTaggedResponse {
        let mut processes: Vec<pb::TaggedProcess> = self
            .sensor
            .tagged_processes()
            .unwrap_or_default()
            .into_iter()
            // Entries for threads of tagged processes are bookkeeping, not processes.
            .filter(|(pid, _)| enrich::is_process(*pid))
            .map(|(pid, classes)| pb::TaggedProcess {
                pid,
                exe: enrich::exe(pid),
                cmdline: enrich::cmdline(pid),
                classes: enrich::class_names(&self.compiled, classes),
                reasons: self
                    .ledger
                    .explain(pid)
                    .iter()
                    .map(|r| reason_pb(&self.compiled, r))
                    .collect(),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        pb::ListTaggedResponse { processes }
    }

    pub(super) fn lookup(
        &self,
        ip: IpAddr,
        class: Option<String>,
    ) -> Result<pb::LookupResponse, CommandError> {
        if let Some(c) = &class {
            self.class_id(c)?;
        }
        let mut e = explain::explain(&self.compiled, ip, class.as_deref());
        for (answer, cls) in e.classes.iter_mut().zip(
            self.compiled
                .policy
                .classes
                .iter()
                .filter(|c| class.as_deref().is_none_or(|o| o == c.name)),
        ) {
            answer.mode = self.mode_of(cls);
        }
        Ok(lookup_pb(&e))
    }

    /// What the name rules say about `name`, and the addresses processes
    /// learned for it.
    pub(super) fn lookup_name(
        &self,
        name: &str,
        class: Option<String>,
    ) -> Result<pb::LookupResponse, CommandError> {
        if let Some(c) = &class {
            self.class_id(c)?;
        }
        let now = crate::clock::monotonic_ns();
        let classes: Vec<String> = self
            .compiled
            .policy
            .classes
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let learned = self.learned.for_name(name, now);
        Ok(crate::dns::explain::explain(
            &self.name_rules,
            &classes,
            name,
            class.as_deref(),
            Some(&learned),
            now,
        ))
    }

    /// What the collector is told about this host.
    pub(super) fn host_state(&self) -> cpb::HostState {
        let drops = self
            .sensor
            .counters()
            .ok()
            .and_then(|c| {
                c.get(sensor_common::counters::RINGBUF_RESERVE_FAILED as usize)
                    .copied()
            })
            .unwrap_or(0);
        cpb::HostState {
            policy_sha256: self.compiled.policy.hash.clone(),
            dataset: self
                .compiled
                .provenance
                .as_ref()
                .map(|d| format!("{} {}", d.name, d.version))
                .unwrap_or_default(),
            modes: self
                .compiled
                .policy
                .classes
                .iter()
                .map(|c| cpb::ClassModeState {
                    class: c.name.clone(),
                    mode: self.mode_of(c).to_string(),
                    set_unix_ns: self
                        .overrides
                        .get(&c.name)
                        .map_or(0, |o| o.at_unix_ms.saturating_mul(1_000_000)),
                })
                .collect(),
            kernel_drops: drops,
            exceptions: self.exceptions.iter().map(|e| e.state.clone()).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// An explanation as the API answers `Lookup` (also what `sensorctl lookup
/// --policy FILE --json` prints offline).
pub fn lookup_pb(e: &explain::Explanation) -> pb::LookupResponse {
    pb::LookupResponse {
        country: e
            .location
            .country
            .map(|c| c.to_string())
            .unwrap_or_default(),
        site: e.location.site.clone().unwrap_or_default(),
        source: e.location.source.clone(),
        classes: e
            .classes
            .iter()
            .map(|c| pb::ClassVerdict {
                class: c.class.clone(),
                verdict: enrich::verdict_name(c.verdict).into(),
                rule: c.rule.clone(),
                kernel_prefix: c.kernel_prefix.map(|n| n.to_string()).unwrap_or_default(),
                mode: mode_pb(c.mode),
            })
            .collect(),
        text: e.to_string(),
    }
}
