//! Why each process carries its classes.
//!
//! The kernel tags processes on its own (selectors at exec, inheritance at fork,
//! taint at connect) and reports each tag as a `Tag` record; user space tags
//! processes at start-up and on request. The ledger keeps every reason so the
//! agent can answer "why is pid N tagged with eu_personal?" with the selector or
//! the taint connection, and when.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::SystemTime};

use sensor_common::{flow::FlowEvent, tag::reason};

use crate::{clock::wall_from_ktime, kernel::tagging::Selectors};

/// One reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// A cgroup selector (the cgroup or an ancestor the process was in).
    Cgroup { id: u64, path: Option<PathBuf> },
    /// A uid selector.
    Uid(u32),
    /// An executable selector.
    Exe { ino: u64, path: Option<PathBuf> },
    /// The process connected to a taint source.
    Taint { source: SocketAddr },
    /// Accepted a local connection from process `from` (at `peer`), whose
    /// classes propagate over local connections.
    Local { peer: SocketAddr, from: u32 },
    /// Inherited from the parent at fork (the parent's reasons follow in the list).
    Inherited { parent: u32 },
    /// Tagged on request (API) by `actor`.
    Explicit { actor: String },
    /// Found tagged in the pinned kernel state when the agent started: the
    /// reason was recorded by an earlier agent.
    Adopted,
}

/// A reason with the classes it gave and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagReason {
    pub classes: u64,
    pub why: Why,
    pub at: SystemTime,
}

/// Reasons by tgid.
#[derive(Debug, Default)]
pub struct TagLedger {
    by_tgid: HashMap<u32, Vec<TagReason>>,
}

impl TagLedger {
    /// Records a reason.
    pub fn record(&mut self, tgid: u32, r: TagReason) {
        self.by_tgid.entry(tgid).or_default().push(r);
    }

    /// Records a kernel `Tag` record; returns false for any other record.
    pub fn record_event(&mut self, ev: &FlowEvent, selectors: &Selectors) -> bool {
        if ev.flow_kind() != Some(sensor_common::flow::FlowKind::Tag) {
            return false;
        }
        let at = wall_from_ktime(ev.ktime_ns);
        let why = match ev.reason {
            reason::CGROUP => Why::Cgroup {
                id: ev.detail,
                path: selectors.cgroups.get(&ev.detail).map(|(_, p)| p.clone()),
            },
            reason::UID => Why::Uid(ev.detail as u32),
            reason::EXE => Why::Exe {
                ino: ev.detail,
                path: selectors
                    .exes
                    .iter()
                    .find(|(k, _)| k.ino == ev.detail)
                    .map(|(_, (_, p))| p.clone()),
            },
            reason::TAINT => Why::Taint {
                source: ev.remote(),
            },
            reason::LOCAL => Why::Local {
                peer: ev.remote(),
                from: ev.detail as u32,
            },
            reason::INHERITED => {
                let parent = ev.detail as u32;
                let inherited: Vec<TagReason> =
                    self.by_tgid.get(&parent).cloned().unwrap_or_default();
                let list = self.by_tgid.entry(ev.tgid).or_default();
                list.push(TagReason {
                    classes: ev.classes,
                    why: Why::Inherited { parent },
                    at,
                });
                list.extend(inherited);
                return true;
            }
            _ => Why::Explicit {
                actor: "kernel".into(),
            },
        };
        self.record(
            ev.tgid,
            TagReason {
                classes: ev.classes,
                why,
                at,
            },
        );
        true
    }

    /// Every reason process `tgid` carries its classes for.
    pub fn explain(&self, tgid: u32) -> &[TagReason] {
        self.by_tgid.get(&tgid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Forgets processes for which `alive` is false.
    pub fn retain(&mut self, mut alive: impl FnMut(u32) -> bool) {
        self.by_tgid.retain(|tgid, _| alive(*tgid));
    }

    /// Number of processes with reasons.
    pub fn len(&self) -> usize {
        self.by_tgid.len()
    }

    /// True when no process has reasons.
    pub fn is_empty(&self) -> bool {
        self.by_tgid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::flow::FlowKind;

    fn tag(tgid: u32, classes: u64, why: u8, detail: u64) -> FlowEvent {
        let mut ev = FlowEvent::ZERO;
        ev.kind = FlowKind::Tag as u8;
        ev.tgid = tgid;
        ev.pid = tgid;
        ev.classes = classes;
        ev.reason = why;
        ev.detail = detail;
        ev
    }

    #[test]
    fn child_inherits_the_parents_reasons() {
        let mut l = TagLedger::default();
        let sel = Selectors::default();
        assert!(l.record_event(&tag(10, 1, reason::UID, 1000), &sel));
        assert!(l.record_event(&tag(11, 1, reason::INHERITED, 10), &sel));
        let why: Vec<_> = l.explain(11).iter().map(|r| r.why.clone()).collect();
        assert_eq!(why, vec![Why::Inherited { parent: 10 }, Why::Uid(1000)]);
        l.retain(|t| t != 10);
        assert_eq!(l.explain(10), &[]);
        assert_eq!(l.explain(11).len(), 2);
    }
}
