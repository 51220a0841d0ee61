//! Signed window attestations (see `Attestation` in collector.proto): per
//! window, what the agent recorded per class, its kernel losses, the range
//! of records it spooled and the chain head, signed and spooled as a record
//! of its own — every `attestation_interval` and when sensord stops.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use residency_proto::attest::Signer;
use sensor_common::{
    counters::{TALLY_MAP_FULL, TallyKey},
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

/// The kernel's judgement counters as read (None: they could not be).
pub(super) type Tally = Option<HashMap<TallyKey, u64>>;

/// Class names by id, per policy generation, of the last few installed.
#[derive(Debug, Default)]
pub(crate) struct ClassTables(BTreeMap<u32, Vec<Option<String>>>);

/// Generations whose class names are kept.
const TABLES_KEPT: usize = 32;

impl ClassTables {
    /// Generation `generation` judges `classes`.
    pub(super) fn installed(
        &mut self,
        generation: u32,
        classes: &[crate::policy::validate::Class],
    ) {
        let mut names = vec![None; MAX_CLASSES as usize];
        for c in classes {
            if let Some(n) = names.get_mut(usize::from(c.id)) {
                *n = Some(c.name.clone());
            }
        }
        self.0.insert(generation, names);
        while self.0.len() > TABLES_KEPT {
            self.0.pop_first();
        }
    }

    /// The name of class `id` under `generation` (the newest table when that
    /// generation is unknown: an earlier agent's).
    fn name(&self, generation: u32, id: usize) -> Option<&str> {
        let table = self
            .0
            .get(&generation)
            .or_else(|| self.0.values().next_back())?;
        table.get(id)?.as_deref()
    }
}

/// Per class name: judged, violations, denials the kernel counted between
/// two reads (a key that is new, or fell, counts from zero).
fn kernel_counts(
    start: &HashMap<TallyKey, u64>,
    now: &HashMap<TallyKey, u64>,
    tables: &ClassTables,
) -> BTreeMap<String, (u64, u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (k, &v) in now {
        let before = start.get(k).copied().unwrap_or(0);
        let n = if v >= before { v - before } else { v };
        if n == 0 {
            continue;
        }
        let mut bits = k.judged | k.violating;
        while bits != 0 {
            let id = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(name) = tables.name(k.generation, id) else {
                continue;
            };
            let c = out.entry(name.to_owned()).or_default();
            let bit = 1u64 << id;
            if k.judged & bit != 0 {
                c.0 += n;
            }
            if k.violating & bit != 0 {
                c.1 += n;
                if k.denied != 0 {
                    c.2 += n;
                }
            }
        }
    }
    out
}

/// The window being counted.
#[derive(Debug, Clone)]
pub(super) struct Window {
    start_ns: i64,
    /// The spool's next sequence when the window started.
    first_seq: u64,
    /// The kernel's ring-buffer loss counter then.
    losses_at_start: u64,
    /// The kernel's tally-map-full counter then.
    tally_full_at_start: u64,
    /// The kernel's judgement counters then.
    tally: Tally,
    /// Per class id: (flows, violations, denials).
    counts: Vec<(u64, u64, u64)>,
}

impl Window {
    pub(super) fn new(start_ns: i64, first_seq: u64, counters: &[u64], tally: Tally) -> Window {
        let at = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
        Window {
            start_ns,
            first_seq,
            losses_at_start: at(sensor_common::counters::RINGBUF_RESERVE_FAILED),
            tally_full_at_start: at(TALLY_MAP_FULL),
            tally,
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
        let tally = self.read_tally();
        Some(self.window_from(start_ns, tally))
    }

    fn window_from(&self, start_ns: i64, tally: Tally) -> Window {
        Window::new(
            start_ns,
            self.spool.as_ref().map_or(0, Spool::next_seq),
            &self.last_counters,
            tally,
        )
    }

    /// The kernel's judgement counters now.
    fn read_tally(&self) -> Tally {
        match self.sensor.class_tally() {
            Ok(t) => Some(t.into_iter().collect()),
            Err(e) => {
                warn!(error = %e, "reading the kernel's per-class judgement counters failed; this window's kernel counts will be marked incomplete");
                None
            }
        }
    }

    /// Removes the counters of generations no longer in force from the
    /// kernel (they were read into the window just attested) and from
    /// `tally`, which the next window starts from.
    fn forget_old_generations(&mut self, tally: &mut Tally) {
        let current = self.sensor.generation();
        let Some(t) = tally else { return };
        let old: Vec<TallyKey> = t
            .keys()
            .filter(|k| k.generation != current)
            .copied()
            .collect();
        if old.is_empty() {
            return;
        }
        match self.sensor.forget_tally(&old) {
            Ok(()) => {
                for k in &old {
                    t.remove(k);
                }
            }
            Err(e) => warn!(error = %e, "removing old judgement counters failed; they stay"),
        }
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
        let mut tally = self.read_tally();
        let statement = self.statement(w, now, stopping, &tally);
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
        self.forget_old_generations(&mut tally);
        self.window = Some(self.window_from(now, tally));
    }

    /// Its chain head and what a collector acknowledged, signed with the
    /// attestation key, answering `nonce` (see `SignedHead`).
    pub(super) fn signed_head(&self, nonce: Vec<u8>) -> Result<cpb::SignedHead, CommandError> {
        residency_proto::attest::check_nonce(&nonce).map_err(CommandError::Invalid)?;
        let a = self.cfg.attestation.as_ref().ok_or_else(|| {
            CommandError::Invalid("attestations are off on this host: nothing to sign with".into())
        })?;
        let spool = self.spool.as_ref().ok_or_else(|| {
            CommandError::Invalid("this host delivers no records: it has no chain".into())
        })?;
        let (seq, head) = spool.chain_head();
        let mut h = cpb::SignedHead {
            host_id: self.compiled.policy.host.id.clone(),
            seq,
            head: if seq > 0 { head.to_vec() } else { Vec::new() },
            acked_seq: spool.acked(),
            time_unix_ns: now_unix_ns(),
            nonce,
            ..Default::default()
        };
        a.signer.sign(&mut h).map_err(CommandError::Internal)?;
        Ok(h)
    }

    /// The signed statement for window `w` ending `now`, when the kernel's
    /// judgement counters are `tally`.
    fn statement(
        &self,
        w: &Window,
        now: i64,
        stopping: bool,
        tally: &Tally,
    ) -> Result<cpb::Attestation, String> {
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
        let (mut kernel, incomplete) = match (&w.tally, tally) {
            (Some(start), Some(now)) => (
                kernel_counts(start, now, &self.class_tables),
                self.last_counters
                    .get(TALLY_MAP_FULL as usize)
                    .is_some_and(|&n| n > w.tally_full_at_start),
            ),
            _ => (BTreeMap::new(), true),
        };
        let mut classes: Vec<cpb::ClassCounts> = p
            .classes
            .iter()
            .map(|c| {
                let (flows, violations, denials) =
                    w.counts.get(usize::from(c.id)).copied().unwrap_or_default();
                let (kj, kv, kd) = kernel.remove(&c.name).unwrap_or_default();
                cpb::ClassCounts {
                    class: c.name.clone(),
                    flows,
                    violations,
                    denials,
                    kernel_judged: kj,
                    kernel_violations: kv,
                    kernel_denials: kd,
                }
            })
            .collect();
        // Classes of a policy replaced during the window.
        classes.extend(
            kernel
                .into_iter()
                .map(|(class, (kj, kv, kd))| cpb::ClassCounts {
                    class,
                    kernel_judged: kj,
                    kernel_violations: kv,
                    kernel_denials: kd,
                    ..Default::default()
                }),
        );
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
            classes,
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
            kernel_counts_incomplete: incomplete,
            ..Default::default()
        };
        a.signer.sign(&mut att)?;
        Ok(att)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(judged: u64, violating: u64, generation: u32, denied: u8) -> TallyKey {
        TallyKey {
            judged,
            violating,
            generation,
            denied,
            _pad: [0; 3],
        }
    }

    #[test]
    fn kernel_counts_split_per_class_by_the_generation_that_judged() {
        let mut tables = ClassTables::default();
        tables.0.insert(
            1,
            vec![Some("eu".into()), Some("health".into()), None, None],
        );
        // Generation 2 renumbered the classes.
        tables
            .0
            .insert(2, vec![Some("health".into()), Some("eu".into())]);
        let start = HashMap::from([(key(0b11, 0, 1, 0), 10), (key(0b11, 0b01, 1, 1), 4)]);
        let now = HashMap::from([
            (key(0b11, 0, 1, 0), 15),     // +5 judged, allowed
            (key(0b11, 0b01, 1, 1), 6),   // +2 denied for eu
            (key(0b01, 0b01, 2, 0), 3),   // new: 3 reported for health
            (key(0b100, 0b100, 1, 0), 9), // a class id gen 1 does not name
        ]);
        let c = kernel_counts(&start, &now, &tables);
        assert_eq!(c.get("eu"), Some(&(7, 2, 2)));
        assert_eq!(c.get("health"), Some(&(10, 3, 0)));
        assert_eq!(c.len(), 2);
        // A counter that fell (removed and created again) counts from zero.
        let fell = HashMap::from([(key(0b01, 0, 1, 0), 2)]);
        let c = kernel_counts(&HashMap::from([(key(0b01, 0, 1, 0), 50)]), &fell, &tables);
        assert_eq!(c.get("eu"), Some(&(2, 0, 0)));
    }
}
