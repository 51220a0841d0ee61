//! Recent records for ListFlows/ListViolations, and the live feed for
//! WatchFlows. Written by the agent task, read by API handlers.
//!
//! Violations and flow records are kept apart, each bounded: a busy service's
//! close records never push a violation out. Flow records are kept as the
//! kernel sent them ([`Kept`]) and become API records only when a client asks.

use std::{collections::VecDeque, sync::RwLock};

use residency_proto::{agent::v1 as pb, records::Label};
use tokio::sync::broadcast;

use super::enrich::Kept;

/// How many records of each sort are kept.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Violations (connect, send, accept, packet, socket, existing).
    pub violations: usize,
    /// Everything else: close and flow records.
    pub flows: usize,
}

/// Bounded histories plus a broadcast feed.
pub struct FlowStore {
    violations: RwLock<VecDeque<pb::Flow>>,
    flows: RwLock<VecDeque<Kept>>,
    cap: Capacity,
    tx: broadcast::Sender<pb::FlowEvent>,
}

fn push_bounded<T>(q: &RwLock<VecDeque<T>>, cap: usize, item: T) {
    let mut q = q.write().unwrap_or_else(|e| e.into_inner());
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(item);
}

impl FlowStore {
    /// Keeps the last `cap.violations` violations and `cap.flows` other records.
    pub fn new(cap: Capacity) -> FlowStore {
        let (tx, _) = broadcast::channel(4096);
        let cap = Capacity {
            violations: cap.violations.max(1),
            flows: cap.flows.max(1),
        };
        FlowStore {
            violations: RwLock::new(VecDeque::with_capacity(cap.violations.min(4096))),
            flows: RwLock::new(VecDeque::with_capacity(cap.flows.min(4096))),
            cap,
            tx,
        }
    }

    fn broadcast(&self, flow: pb::Flow) {
        let _ = self.tx.send(pb::FlowEvent {
            event: Some(pb::flow_event::Event::Flow(flow)),
        });
    }

    /// Adds a violation and sends it to watchers.
    pub fn push_violation(&self, flow: pb::Flow) {
        if self.tx.receiver_count() > 0 {
            self.broadcast(flow.clone());
        }
        push_bounded(&self.violations, self.cap.violations, flow);
    }

    /// Adds a record that is not a violation; it is made an API record only
    /// for watchers (when there are any) and for listings.
    pub fn push_flow(&self, kept: Kept) {
        if self.tx.receiver_count() > 0 {
            self.broadcast(kept.to_pb());
        }
        push_bounded(&self.flows, self.cap.flows, kept);
    }

    /// Tells watchers that `count` records were lost at `source`.
    pub fn lost(&self, source: &str, count: u64) {
        let _ = self.tx.send(pb::FlowEvent {
            event: Some(pb::flow_event::Event::Lost(pb::Lost {
                source: source.into(),
                count,
            })),
        });
    }

    /// Matching records, oldest first, at most `filter.limit` (default 1000) of
    /// the newest: violations only, or violations and flow records merged by
    /// time.
    pub fn list(&self, filter: &pb::FlowFilter, violations_only: bool) -> Vec<pb::Flow> {
        let limit = if filter.limit == 0 {
            1000
        } else {
            filter.limit as usize
        };
        let mut out: Vec<pb::Flow> = {
            let v = self.violations.read().unwrap_or_else(|e| e.into_inner());
            v.iter()
                .rev()
                .filter(|f| matches(filter, f))
                .take(limit)
                .cloned()
                .collect()
        };
        if !violations_only {
            let f = self.flows.read().unwrap_or_else(|e| e.into_inner());
            out.extend(
                f.iter()
                    .rev()
                    .filter(|k| filter.pid == 0 || k.ev.tgid == filter.pid)
                    .map(Kept::to_pb)
                    .filter(|f| matches(filter, f))
                    .take(limit),
            );
            // Newest first across both, then the newest `limit`.
            out.sort_by_key(|f| std::cmp::Reverse(f.time_unix_ns));
            out.truncate(limit);
        }
        out.reverse();
        out
    }

    /// A new live feed.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::FlowEvent> {
        self.tx.subscribe()
    }
}

/// A violation: a connect, send, accept, packet (egress backstop) or socket
/// (raw, ICMP, packet) whose action is
/// reported or denied, or an open connection the agent found violating
/// (`existing`). (The
/// close record of a reported flow carries its action too, with the bytes; it
/// is listed with the flows, not counted as a second violation.)
pub fn is_violation(f: &pb::Flow) -> bool {
    use pb::FlowKind as K;
    matches!(
        f.kind(),
        K::Connect | K::Sendmsg | K::Accept | K::Packet | K::Socket | K::Existing
    ) && f.action().is_violation()
}

/// True when `f` passes `filter`.
pub fn matches(filter: &pb::FlowFilter, f: &pb::Flow) -> bool {
    (filter.class.is_empty() || f.classes.contains(&filter.class))
        && (filter.pid == 0 || f.pid == filter.pid)
        && (filter.verdict.is_empty() || f.verdict().is_label(&filter.verdict))
        && (filter.country.is_empty() || f.remote_country.eq_ignore_ascii_case(&filter.country))
        && (filter.since_unix_ms == 0 || f.time_unix_ns / 1_000_000 >= filter.since_unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(pid: u32, action: &str, t: i64) -> pb::Flow {
        pb::Flow {
            pid,
            kind: pb::FlowKind::Connect as i32,
            action: pb::Action::parse_label(action).unwrap() as i32,
            classes: vec!["eu".into()],
            time_unix_ns: t,
            ..Default::default()
        }
    }

    #[test]
    fn bounded_filtered_newest() {
        let s = FlowStore::new(Capacity {
            violations: 2,
            flows: 1,
        });
        for (pid, a) in [(1, "reported"), (2, "reported"), (3, "denied")] {
            s.push_violation(flow(pid, a, i64::from(pid)));
        }
        let v = s.list(&pb::FlowFilter::default(), true);
        assert_eq!(v.iter().map(|f| f.pid).collect::<Vec<_>>(), vec![2, 3]);
        let f = pb::FlowFilter {
            pid: 3,
            ..Default::default()
        };
        assert_eq!(s.list(&f, false).len(), 1);
        let f = pb::FlowFilter {
            class: "us".into(),
            ..Default::default()
        };
        assert!(s.list(&f, false).is_empty());
        // Verdict filters take the label or the proto name.
        let by_verdict = |v: &str| pb::FlowFilter {
            verdict: v.into(),
            ..Default::default()
        };
        assert_eq!(s.list(&by_verdict("none"), true).len(), 2);
        assert_eq!(s.list(&by_verdict("VERDICT_NONE"), true).len(), 2);
        assert!(s.list(&by_verdict("deny"), true).is_empty());
    }
}
