//! The record pipeline: kernel records in, each kept (flows), or spooled,
//! counted, logged and kept (violations). Nothing here waits for the disk or
//! the network: the spool is written once per batch (`spool_sync`).

use super::*;
use residency_proto::records::Label;

/// Name entries written into the kernel with one system call, at most: the
/// first answer of a burst waits for no more than this many behind it.
const NAMES_PER_WRITE: usize = 32;

impl Agent {
    pub(super) fn take_records(
        &mut self,
        reader: &mut EventReader,
        batch: &mut Vec<sensor_common::flow::FlowEvent>,
    ) {
        use sensor_common::flow::FlowKind;
        batch.clear();
        // The records first, then the answers and exec paths: the kernel
        // wrote a process's answer and exec path before the records that
        // follow them, so whatever this batch's records need is in those
        // rings by now (read before the records, an answer or exec path
        // that arrived between the two reads would miss its records:
        // records without their name or executable).
        let now = std::time::Instant::now();
        let mono_now = crate::clock::monotonic_ns();
        reader.drain(batch);
        self.take_dns_answers(now);
        let exes = &mut self.exes;
        self.exec_paths.drain(|p| exes.exec(p));
        self.events_total += batch.len() as u64;
        self.metrics.events.inc_by(batch.len() as u64);
        let wall_offset = crate::clock::wall_offset_ns();
        for ev in batch.iter() {
            match ev.flow_kind() {
                Some(FlowKind::Exec) => {
                    self.exes.refresh(ev);
                    continue;
                }
                Some(FlowKind::Tag) => self.exes.refresh(ev),
                Some(FlowKind::Endpoint) => {
                    self.held.learn(ev, now);
                    self.release_held(false);
                    continue;
                }
                // A flow's records stay in order: its held connect record
                // (and those held before it) go first.
                Some(FlowKind::Close) if self.held.holds(ev.cookie) => self.release_held(true),
                _ => {}
            }
            if self.ledger.record_event(ev, self.sensor.selectors()) {
                continue;
            }
            if let Some(w) = &mut self.window {
                w.count(ev);
            }
            let mut kept = enrich::Kept::new(
                ev,
                &self.compiled,
                &self.names,
                &mut self.exes,
                &mut self.workloads,
                wall_offset,
            );
            // Named as of when it happened, not when it was read: a stalled
            // agent reads records late, and the answer may have expired by
            // then (a record from after this batch's reading began is now).
            let happened = now
                .checked_sub(std::time::Duration::from_nanos(
                    mono_now.saturating_sub(ev.ktime_ns),
                ))
                .unwrap_or(now);
            kept.remote_name = self.resolved.lookup(ev.tgid, ev.remote().ip(), happened);
            if kept.remote_name.is_none()
                && let Some(service) = crate::dns::doh::endpoint(ev.remote())
            {
                kept.remote_name = Some(std::sync::Arc::new(crate::dns::Resolved {
                    name: service.to_owned(),
                    cnames: Vec::new(),
                }));
                self.note_doh(ev, service, now);
            }
            if endpoints::Held::wants(ev) {
                self.held.hold(kept, now);
            } else {
                self.keep(kept);
            }
        }
        self.release_held(false);
        self.spool_sync();
    }

    /// Reads the DNS answers the kernel passed up, notes the names they
    /// give, and writes the addresses of names the policy rules on into the
    /// kernel (answers from trusted resolvers only).
    pub(super) fn take_dns_answers(&mut self, now: std::time::Instant) {
        let resolved = &mut self.resolved;
        let metrics = &self.metrics;
        let rules = &self.name_rules;
        let learned = &mut self.learned;
        let sensor = &mut self.sensor;
        let now_ns = crate::clock::monotonic_ns();
        let mut changed = false;
        let mut refused = 0usize;
        self.dns_answers.drain(|a| {
            match crate::dns::parse(a.message(), a.protocol == sensor_common::net::IPPROTO_TCP) {
                Some(answer) => {
                    tracing::debug!(pid = a.tgid, name = %answer.name, cnames = ?answer.cnames, addrs = ?answer.addrs, "dns answer");
                    let what = resolved.learn(a.tgid, &answer, now);
                    metrics.dns_answers.inc();
                    if rules.is_empty() {
                        return;
                    }
                    let server = answer_server(a);
                    if !rules.trusts(server) {
                        let chain = std::iter::once(answer.name.as_str())
                            .chain(answer.cnames.iter().map(String::as_str));
                        if rules.masks(chain) != (0, 0) {
                            metrics.name_answers_untrusted.inc();
                            warn!(pid = a.tgid, name = %answer.name, server = %server, "an answer for a name the policy rules on came from a resolver not in host.trusted_resolvers: not applied (its addresses are judged by their country); add the resolver to host.trusted_resolvers if it is yours");
                        }
                        return;
                    }
                    // Written in groups: one system call for many answers,
                    // and none waits for more than a group behind it.
                    if learned.learn(rules, a.tgid, &answer, &what, now_ns) >= NAMES_PER_WRITE {
                        let l = learned.flush(sensor, now_ns);
                        metrics.name_entries_written.inc_by(l.written as u64);
                        changed |= l.changed;
                        refused += l.refused;
                    }
                }
                None => {
                    metrics.dns_ignored.inc();
                }
            }
        });
        let l = self.learned.flush(&mut self.sensor, now_ns);
        self.metrics.name_entries_written.inc_by(l.written as u64);
        changed |= l.changed;
        refused += l.refused;
        if refused != 0 {
            self.metrics.name_entries_refused.inc_by(refused as u64);
            warn!(
                refused,
                capacity = sensor_common::policy::capacity::NAMES,
                "the kernel's name map is full: addresses of allowed or denied names are judged by their country until entries expire"
            );
        }
        if changed && let Err(e) = self.sensor.bump_epoch() {
            error!(error = %e, "retiring the kernel's cached verdicts after learning names failed");
        }
        self.metrics.name_entries.set(self.learned.len() as i64);
    }

    /// A tagged process talks to a public DNS-over-HTTPS/TLS endpoint: the
    /// names it resolves there are invisible. Counted per record, warned
    /// about once an hour per process and endpoint.
    fn note_doh(
        &mut self,
        ev: &sensor_common::flow::FlowEvent,
        service: &str,
        now: std::time::Instant,
    ) {
        self.metrics.doh_flows.inc();
        let key = (ev.tgid, ev.remote().ip());
        let hour = std::time::Duration::from_secs(3600);
        if self
            .doh_seen
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < hour)
        {
            return;
        }
        if self.doh_seen.len() >= 4096 {
            self.doh_seen.retain(|_, t| now.duration_since(*t) < hour);
        }
        self.doh_seen.insert(key, now);
        warn!(pid = ev.tgid, remote = %ev.remote(), service, classes = ev.classes, "a tagged process talks to a public DNS-over-HTTPS/TLS service: the names it resolves there are not visible, and name rules do not apply to the addresses it gets (they are judged by their country); point it at a resolver on the host or in host.trusted_resolvers");
    }

    /// Keeps the held connect records that are complete or waited long
    /// enough (every one when `all`; see `endpoints`).
    pub(super) fn release_held(&mut self, all: bool) {
        if self.held.is_empty() {
            return;
        }
        for kept in self.held.release(std::time::Instant::now(), all) {
            self.keep(kept);
        }
    }

    /// Keeps an enriched record: a violation, or a flow.
    fn keep(&mut self, kept: enrich::Kept) {
        if kept.is_violation() {
            self.record_violation(kept.to_pb());
        } else {
            self.store.push_flow(kept);
        }
    }

    /// Keeps a violation: spooled for the collector, counted, logged and kept
    /// for the API.
    pub(super) fn record_violation(&mut self, flow: pb::Flow) {
        self.spool_append(flow.time_unix_ns, Spooled::Violation(&flow));
        for class in &flow.classes {
            let labels = ViolationLabels {
                class: class.clone(),
                action: flow.action().label(),
                country: flow.remote_country.clone(),
            };
            self.metrics
                .violations
                .get_or_create(&labels)
                .inc_by(u64::from(flow.count));
        }
        self.violation_log.record(&flow, std::time::Instant::now());
        self.store.push_violation(flow);
    }
}

/// The server that sent an answer.
fn answer_server(a: &sensor_common::dns::DnsAnswer) -> std::net::IpAddr {
    if a.family == sensor_common::net::AF_INET {
        let [b0, b1, b2, b3, ..] = a.server;
        std::net::IpAddr::from([b0, b1, b2, b3])
    } else {
        std::net::IpAddr::from(a.server)
    }
}
