//! Signed window attestations (see `Attestation` in collector.proto): per
//! window, what the agent recorded per class, its kernel losses, the range
//! of records it spooled and the chain head, signed and spooled as a record
//! of its own — every `attestation_interval` and when sensord stops.

use std::time::Duration;

use residency_proto::attest::Signer;
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    policy::MAX_CLASSES,
};

use super::*;

/// How the agent attests (`collector.attestation_interval`, and the key it
/// signs with).
#[derive(Clone)]
pub struct Attesting {
    pub interval: Duration,
    pub signer: Arc<Signer>,
}

impl std::fmt::Debug for Attesting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attesting")
            .field("interval", &self.interval)
            .field("signer", &self.signer)
            .finish()
    }
}

/// The window being counted.
#[derive(Debug, Clone)]
pub(super) struct Window {
    start_ns: i64,
    /// The spool's next sequence when the window started.
    first_seq: u64,
    /// The kernel's ring-buffer loss counter then.
    losses_at_start: u64,
    /// Per class id: (flows, violations, denials).
    counts: Vec<(u64, u64, u64)>,
}

impl Window {
    pub(super) fn new(start_ns: i64, first_seq: u64, losses_at_start: u64) -> Window {
        Window {
            start_ns,
            first_seq,
            losses_at_start,
            counts: vec![(0, 0, 0); MAX_CLASSES as usize],
        }
    }

    /// Counts a kernel record: a judged flow (connect, send, accept, packet,
    /// socket) for each class it reports, folded records with their count.
    /// (Violations and denials are counted when spooled: see
    /// `Agent::count_spooled`, so the statement matches the records.)
    pub(super) fn count(&mut self, ev: &FlowEvent) {
        let judged = matches!(
            ev.flow_kind(),
            Some(
                FlowKind::Connect
                    | FlowKind::Sendmsg
                    | FlowKind::Accept
                    | FlowKind::Packet
                    | FlowKind::Socket
            )
        );
        if !judged {
            return;
        }
        let n = u64::from(ev.count.max(1));
        let mut classes = ev.classes;
        while classes != 0 {
            let id = classes.trailing_zeros() as usize;
            classes &= classes - 1;
            let Some(c) = self.counts.get_mut(id) else {
                break;
            };
            c.0 += n;
        }
    }
}

impl Agent {
    /// A violation reached the spool: counted for its classes in the window
    /// (with its fold count; denied when it was).
    pub(super) fn count_spooled(&mut self, f: &pb::Flow) {
        let Some(w) = &mut self.window else { return };
        let n = u64::from(f.count.max(1));
        let denied = f.action == pb::Action::Denied as i32;
        for name in &f.classes {
            let id = self
                .compiled
                .policy
                .classes
                .iter()
                .find(|c| c.name == *name)
                .map(|c| usize::from(c.id));
            if let Some(c) = id.and_then(|i| w.counts.get_mut(i)) {
                c.1 += n;
                if denied {
                    c.2 += n;
                }
            }
        }
    }

    /// The window that counts from now, after `spool`'s last sequence.
    pub(super) fn new_window(&self, start_ns: i64) -> Option<Window> {
        self.cfg.attestation.as_ref()?;
        Some(Window::new(
            start_ns,
            self.spool.as_ref().map_or(0, Spool::next_seq),
            self.last_counters
                .get(sensor_common::counters::RINGBUF_RESERVE_FAILED as usize)
                .copied()
                .unwrap_or(0),
        ))
    }

    /// Attests the window when it is due (`stopping`: now, whatever its
    /// length), then starts the next.
    pub(super) fn attest_if_due(&mut self, stopping: bool) {
        let (Some(a), Some(w)) = (&self.cfg.attestation, &self.window) else {
            return;
        };
        let now = now_unix_ns();
        if !stopping && now < w.start_ns.saturating_add(a.interval.as_nanos() as i64) {
            return;
        }
        if self.spool.is_none() {
            return; // nothing to deliver it with; the window goes on
        }
        let statement = self.statement(w, now, stopping);
        match statement {
            Ok(att) => {
                info!(
                    window_start_unix_ns = att.window_start_unix_ns,
                    window_end_unix_ns = att.window_end_unix_ns,
                    first_seq = att.first_seq,
                    last_seq = att.last_seq,
                    "window attested"
                );
                self.spool_append(now, Spooled::Attestation(&att));
            }
            Err(e) => {
                error!(error = %e, "signing the window's attestation failed; the window goes on")
            }
        }
        self.window = self.new_window(now);
    }

    /// The signed statement for window `w` ending `now`.
    fn statement(&self, w: &Window, now: i64, stopping: bool) -> Result<cpb::Attestation, String> {
        let a = self
            .cfg
            .attestation
            .as_ref()
            .ok_or("attestations are off")?;
        let (last_seq, head) = self.spool.as_ref().map_or((0, [0; 32]), Spool::chain_head);
        let spooled = last_seq >= w.first_seq && w.first_seq > 0;
        let losses = self
            .last_counters
            .get(sensor_common::counters::RINGBUF_RESERVE_FAILED as usize)
            .copied()
            .unwrap_or(0);
        let p = &self.compiled.policy;
        let mut att = cpb::Attestation {
            host_id: p.host.id.clone(),
            window_start_unix_ns: w.start_ns,
            window_end_unix_ns: now,
            policy_sha256: p.hash.clone(),
            generation: self.sensor.generation(),
            dataset: self
                .compiled
                .provenance
                .as_ref()
                .map(|d| format!("{} {}", d.name, d.version))
                .unwrap_or_default(),
            classes: p
                .classes
                .iter()
                .map(|c| {
                    let (flows, violations, denials) =
                        w.counts.get(usize::from(c.id)).copied().unwrap_or_default();
                    cpb::ClassCounts {
                        class: c.name.clone(),
                        flows,
                        violations,
                        denials,
                    }
                })
                .collect(),
            kernel_losses: losses.saturating_sub(w.losses_at_start),
            first_seq: if spooled { w.first_seq } else { 0 },
            last_seq: if spooled { last_seq } else { 0 },
            chain_head: if last_seq > 0 {
                head.to_vec()
            } else {
                Vec::new()
            },
            interval_ns: a.interval.as_nanos() as i64,
            stopping,
            ..Default::default()
        };
        a.signer.sign(&mut att)?;
        Ok(att)
    }
}
