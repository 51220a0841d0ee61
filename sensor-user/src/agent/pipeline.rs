//! The record pipeline: kernel records in, each kept (flows), or spooled,
//! counted, logged and kept (violations). Nothing here waits for the disk or
//! the network: the spool is written once per batch (`spool_sync`).

use super::*;
use residency_proto::records::Label;

impl Agent {
    pub(super) fn take_records(
        &mut self,
        reader: &mut EventReader,
        batch: &mut Vec<sensor_common::flow::FlowEvent>,
    ) {
        use sensor_common::flow::FlowKind;
        batch.clear();
        reader.drain(batch);
        self.events_total += batch.len() as u64;
        self.metrics.events.inc_by(batch.len() as u64);
        let wall_offset = crate::clock::wall_offset_ns();
        for ev in batch.iter() {
            match ev.flow_kind() {
                Some(FlowKind::Exec) => {
                    self.exes.forget(ev.tgid);
                    continue;
                }
                Some(FlowKind::Tag) => self.exes.forget(ev.tgid),
                _ => {}
            }
            if self.ledger.record_event(ev, self.sensor.selectors()) {
                continue;
            }
            if let Some(w) = &mut self.window {
                w.count(ev);
            }
            let kept = enrich::Kept::new(
                ev,
                &self.compiled,
                &self.names,
                &mut self.exes,
                &mut self.workloads,
                wall_offset,
            );
            if kept.is_violation() {
                self.record_violation(kept.to_pb());
            } else {
                self.store.push_flow(kept);
            }
        }
        self.spool_sync();
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
