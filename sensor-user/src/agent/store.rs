//! Recent records for ListFlows/ListViolations, and the live feed for
//! WatchFlows. Written by the agent task, read by API handlers.

use std::{collections::VecDeque, sync::RwLock};

use residency_proto::agent::v1 as pb;
use tokio::sync::broadcast;

/// Bounded history plus a broadcast feed.
pub struct FlowStore {
    recent: RwLock<VecDeque<pb::Flow>>,
    cap: usize,
    tx: broadcast::Sender<pb::FlowEvent>,
}

impl FlowStore {
    /// Keeps the last `cap` records.
    pub fn new(cap: usize) -> FlowStore {
        let (tx, _) = broadcast::channel(4096);
        FlowStore {
            recent: RwLock::new(VecDeque::with_capacity(cap.min(4096))),
            cap: cap.max(1),
            tx,
        }
    }

    /// Adds a record and sends it to watchers.
    pub fn push(&self, flow: pb::Flow) {
        let _ = self.tx.send(pb::FlowEvent {
            event: Some(pb::flow_event::Event::Flow(flow.clone())),
        });
        let mut r = self.recent.write().unwrap_or_else(|e| e.into_inner());
        if r.len() == self.cap {
            r.pop_front();
        }
        r.push_back(flow);
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
    /// the newest.
    pub fn list(&self, filter: &pb::FlowFilter, violations_only: bool) -> Vec<pb::Flow> {
        let limit = if filter.limit == 0 {
            1000
        } else {
            filter.limit as usize
        };
        let r = self.recent.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<pb::Flow> = r
            .iter()
            .rev()
            .filter(|f| (!violations_only || is_violation(f)) && matches(filter, f))
            .take(limit)
            .cloned()
            .collect();
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
    matches!(
        f.kind.as_str(),
        "connect" | "sendmsg" | "accept" | "packet" | "socket" | "existing"
    ) && (f.action == "reported" || f.action == "denied")
}

/// True when `f` passes `filter`.
pub fn matches(filter: &pb::FlowFilter, f: &pb::Flow) -> bool {
    (filter.class.is_empty() || f.classes.contains(&filter.class))
        && (filter.pid == 0 || f.pid == filter.pid)
        && (filter.verdict.is_empty() || f.verdict == filter.verdict)
        && (filter.country.is_empty() || f.remote_country.eq_ignore_ascii_case(&filter.country))
        && (filter.since_unix_ms == 0 || f.time_unix_ns / 1_000_000 >= filter.since_unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(pid: u32, action: &str) -> pb::Flow {
        pb::Flow {
            pid,
            kind: "connect".into(),
            action: action.into(),
            classes: vec!["eu".into()],
            ..Default::default()
        }
    }

    #[test]
    fn bounded_filtered_newest() {
        let s = FlowStore::new(3);
        for (pid, a) in [(1, "none"), (2, "reported"), (3, "denied"), (4, "none")] {
            s.push(flow(pid, a));
        }
        let all = s.list(&pb::FlowFilter::default(), false);
        assert_eq!(all.iter().map(|f| f.pid).collect::<Vec<_>>(), vec![2, 3, 4]);
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
    }
}
