//! The agent's side of the spool: appending records, accounting for every
//! one the spool could not take (gap records), opening it (and retrying), and
//! a lost spool history.

use super::*;

/// How long a stopping agent waits for the collector to acknowledge what
/// its spool holds (its stop record and last attestation among it).
const STOP_DELIVERY: Duration = Duration::from_secs(3);

/// Gap records held while the spool cannot take them; past this many, the
/// records a gap stands for are added to the SPOOL_WRITE count instead.
const HELD_GAPS: usize = 1024;

impl Agent {
    /// At a clean stop, after the stop record and the last window's
    /// attestation are spooled: while a collector is connected, delivery goes
    /// on (only its commands are served) until everything is acknowledged
    /// or [`STOP_DELIVERY`] passed. What is left waits for the next start,
    /// and the log says how much.
    pub(super) async fn deliver_before_stop(&mut self, commands: &mut mpsc::Receiver<Command>) {
        let depth = |a: &Agent| a.spool.as_ref().map_or(0, Spool::depth);
        if depth(self) == 0 {
            return;
        }
        if !self.collector_state.starts_with("connected") {
            warn!(records = depth(self), collector = %self.collector_state, "stopping with records in the spool while no collector is connected: they are delivered after the next start");
            return;
        }
        let deadline = tokio::time::Instant::now() + STOP_DELIVERY;
        loop {
            let left = depth(self);
            if left == 0 {
                info!("the spool is delivered: nothing left for the next start");
                return;
            }
            tokio::select! {
                Some(c) = commands.recv() => {
                    if c.is_delivery() {
                        self.handle(c);
                        self.spool_sync();
                    } else {
                        c.refuse("sensord is stopping");
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    warn!(records = left, waited_s = STOP_DELIVERY.as_secs(), collector = %self.collector_state, "stopping with records the collector has not acknowledged: they are delivered after the next start");
                    return;
                }
            }
        }
    }

    /// Appends a record to the spool (when delivering to a collector). A
    /// record that cannot be written (disk full, no file descriptor left) is
    /// counted, and the count goes out as a gap record as soon as the spool
    /// takes writes again.
    pub(super) fn spool_append(&mut self, time_unix_ns: i64, body: Spooled<'_>) {
        if self.cfg.spool_dir.is_none() {
            return;
        }
        let mut payload = encode_spooled(time_unix_ns, body);
        if payload.len() > crate::export::MAX_RECORD_BYTES {
            // Never delivered whole: a chained gap record says so in its place
            // (a stand-in made at delivery could not be told from a forgery).
            error!(
                kind = body.kind_name(),
                bytes = payload.len(),
                limit = crate::export::MAX_RECORD_BYTES,
                "a record too large to deliver is spooled as an UNDELIVERABLE gap record instead"
            );
            let gap = cpb::Gap {
                source: cpb::GapSource::Undeliverable as i32,
                count: 1,
                bytes: payload.len() as u64,
                note: format!("a {} record too large to deliver", body.kind_name()),
                ..Default::default()
            };
            payload = encode_spooled(time_unix_ns, Spooled::Gap(&gap));
        }
        let written = match &mut self.spool {
            // A gap record is written at once: should that fail, it is held
            // (below) rather than lost in a batch whose failure counts only
            // records, not the records a gap stands for.
            Some(s) if matches!(body, Spooled::Gap(_)) => {
                s.append_now(&payload).map(drop).map_err(|e| e.to_string())
            }
            Some(s) => s.append(&payload).map(drop).map_err(|e| e.to_string()),
            None => Err(format!("the spool is not open: {}", self.spool_open_error)),
        };
        if let (Ok(()), Spooled::Violation(f)) = (&written, body)
            && payload.len() <= crate::export::MAX_RECORD_BYTES
        {
            self.count_spooled(f);
        }
        if let Err(e) = written {
            if let Spooled::Gap(g) = body
                && self.unspooled_gaps.len() < HELD_GAPS
            {
                // Spooled again once the spool takes writes, count and all.
                if self.unspooled_gaps.is_empty() {
                    error!(error = %e, source = g.source().as_str_name(), count = g.count, "a gap record could not be spooled; it is held and spooled once the spool takes writes again");
                }
                self.unspooled_gaps.push((time_unix_ns, g.clone()));
                self.unspooled.2 = e;
                self.metrics.spool_unwritable.set(1);
                return;
            }
            if self.unspooled.0 == 0 {
                error!(error = %e, kind = body.kind_name(), "appending to the spool failed; records are counted and reported as a gap once it works again; free space on collector.spool_dir's filesystem or fix its permissions");
                self.unspooled.1 = now_unix_ns();
            }
            // A gap past the held ones: the records it stands for count.
            self.unspooled.0 += match body {
                Spooled::Gap(g) => g.count.max(1),
                _ => 1,
            };
            self.unspooled.2 = e;
            self.metrics.unspooled.inc();
            self.metrics.spool_unwritable.set(1);
        }
    }

    /// A collector that starts a session claiming fewer of this host's
    /// records (`holds`) than it acknowledged before lost stored records:
    /// its database was cut or restored from an older copy. Said loudly and
    /// in an audit record (which goes to the collector after the hole, so
    /// `verify` shows the hole as missing records); what the spool still
    /// holds past `holds` is delivered again.
    pub(super) fn collector_lost_acknowledged(&mut self, endpoint: &str, holds: u64) {
        let acked = self.spool.as_ref().map_or(0, Spool::acked);
        // 0: also what delivery passes for a collector it does not believe
        // (one claiming records this host never wrote), logged there.
        if holds >= acked || holds == 0 {
            return;
        }
        error!(
            endpoint,
            collector_holds = holds,
            acknowledged = acked,
            "the collector holds fewer of this host's records than it acknowledged: records were removed from its database or it was restored from an older copy; what the spool still holds is delivered again, the rest is missing there"
        );
        self.audit.record(
            "agent",
            &format!(
                "collector {endpoint} holds this host's records only up to {holds}, though it acknowledged records up to {acked}: records {}..{acked} were removed from its store",
                holds + 1
            ),
            "the collector's store lost acknowledged records",
        );
    }

    /// See [`Command::CollectorAhead`].
    pub(super) fn collector_ahead(&mut self, last_seq: u64) -> bool {
        let Some(s) = self.spool.as_mut().filter(|s| s.history_unknown()) else {
            return false;
        };
        let from = s.next_seq();
        match s.continue_after(last_seq) {
            Ok(held) => {
                warn!(
                    collector_last_seq = last_seq,
                    spool_next_seq = from,
                    renumbered = held,
                    "the spool's history was lost (new or wiped spool directory) and the collector holds records up to {last_seq}: numbering continues after it"
                );
                self.audit.record(
                    "agent",
                    &format!("spool history lost: the collector held records up to {last_seq} while the spool would have numbered from {from}; {held} spooled records renumbered after {last_seq}"),
                    "spool directory new or wiped",
                );
                let gap = cpb::Gap {
                    source: cpb::GapSource::SpoolLost as i32,
                    collector_last_seq: last_seq,
                    until_unix_ns: now_unix_ns(),
                    note: "records the lost spool held that the collector had not stored are lost; their number is unknown".into(),
                    ..Default::default()
                };
                self.spool_append(now_unix_ns(), Spooled::Gap(&gap));
                true
            }
            Err(e) => {
                error!(error = %e, "renumbering the spool after the collector's sequence failed");
                false
            }
        }
    }

    /// Records appended but not written (the disk filled before the batch
    /// was written): each range becomes a gap record once one can be
    /// written, with the sequence numbers the collector will not see.
    pub(super) fn report_unwritten(&mut self) {
        let Some(s) = &mut self.spool else { return };
        for u in s.take_unwritten() {
            let (first, last) = (u.first, u.last);
            let count = last - first + 1;
            let gap = cpb::Gap {
                source: cpb::GapSource::SpoolWrite as i32,
                count,
                first_seq: first,
                last_seq: last,
                until_unix_ns: now_unix_ns(),
                error: u.why.clone(),
                resume_chain: u.resume.map(|h| h.to_vec()).unwrap_or_default(),
                ..Default::default()
            };
            if s.append_now(&encode_spooled(now_unix_ns(), Spooled::Gap(&gap)))
                .is_ok()
            {
                warn!(count, first_seq = first, last_seq = last, error = %u.why, "spooled records could not be written; reported as a gap");
                self.metrics.unspooled.inc_by(count);
            } else {
                self.metrics.spool_unwritable.set(1);
                s.keep_unwritten(u);
            }
        }
    }

    /// Why records do not reach the spool now ("" when they do).
    pub(super) fn spool_problem(&self) -> String {
        if self.cfg.spool_dir.is_none() {
            String::new()
        } else if self.spool.is_none() {
            format!(
                "the spool in {} cannot be opened ({}); records are counted and reported as a gap once it opens (retried every 10 s); enforcement is not affected. Make it a writable directory with free space, or set collector.spool_dir to one",
                self.cfg
                    .spool_dir
                    .as_deref()
                    .map_or_else(String::new, |d| d.display().to_string()),
                self.spool_open_error
            )
        } else if self.unspooled.0 > 0 || !self.unspooled_gaps.is_empty() {
            format!(
                "appending to the spool fails ({}): {} records counted so far and {} gap records held, spooled once it takes writes again; enforcement is not affected. Free space on the spool's filesystem or fix its permissions",
                self.unspooled.2,
                self.unspooled.0,
                self.unspooled_gaps.len()
            )
        } else {
            String::new()
        }
    }

    /// Opens the spool (at start, and every 10 s while it cannot be opened);
    /// records what recovery found: damaged records as gap records with
    /// their sequence ranges.
    pub(super) fn open_spool(&mut self) {
        let Some(dir) = self.cfg.spool_dir.clone() else {
            return;
        };
        let opts = SpoolOptions {
            fsync: Fsync::EveryN(u32::MAX),
            chain: true,
            ..Default::default()
        };
        let (spool, rec) = match Spool::open(&dir, opts) {
            Ok(opened) => opened,
            Err(e) => {
                if self.spool_open_error.is_empty() {
                    error!(dir = %dir.display(), error = %e, "the spool cannot be opened; sensord enforces all the same, counts the records it cannot spool and retries every 10 s; make collector.spool_dir a writable directory with free space");
                }
                self.spool_open_error = e.to_string();
                self.metrics.spool_unwritable.set(1);
                return;
            }
        };
        info!(dir = %dir.display(), records = rec.records, torn_bytes = rec.torn_bytes, damaged_bytes = rec.quarantined_bytes, next_seq = spool.next_seq(), "spool opened");
        for w in &rec.warnings {
            warn!(dir = %dir.display(), "spool recovery: {w}");
        }
        let mut spool = spool;
        self.restore_history(&mut spool);
        self.spool = Some(spool);
        if self.window.is_none() {
            // Attestation windows count from the moment records can be spooled.
            self.window = self.new_window(now_unix_ns());
        }
        self.spool_open_error.clear();
        self.metrics.spool_unwritable.set(0);
        self.collector_state = "connecting".into();
        let now = now_unix_ns();
        for (first, last) in &rec.lost {
            warn!(dir = %dir.display(), first_seq = first, last_seq = last, "damaged spool records were cut out (copied to quarantine/ when there was room); reported as a gap");
            let gap = cpb::Gap {
                source: cpb::GapSource::SpoolDamage as i32,
                count: last - first + 1,
                first_seq: *first,
                last_seq: *last,
                ..Default::default()
            };
            self.spool_append(now, Spooled::Gap(&gap));
        }
        if rec.torn_bytes > 0 {
            warn!(dir = %dir.display(), bytes = rec.torn_bytes, "the record being written when sensord stopped was cut short; reported as a gap");
            let gap = cpb::Gap {
                source: cpb::GapSource::SpoolTorn as i32,
                count: 1,
                bytes: rec.torn_bytes,
                ..Default::default()
            };
            self.spool_append(now, Spooled::Gap(&gap));
        }
    }

    /// The violations the spool still holds (the newest, up to the
    /// history's capacity) go back into the history `sensorctl violations`
    /// lists, so a restart does not empty it while they are on disk (once
    /// the collector acknowledged every record, the spool holds none).
    fn restore_history(&mut self, spool: &mut Spool) {
        let cap = self.cfg.history.violations;
        let from = spool.next_seq().saturating_sub(cap as u64).max(1);
        let held = match spool.read_from(from, cap) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "reading the spool's violations back into the history failed; sensorctl violations lists only those after this start");
                return;
            }
        };
        let mut restored = 0;
        for (_, payload) in held {
            use prost::Message;
            let content =
                residency_proto::chain::split(&payload).map_or(payload.as_slice(), |(c, _)| c);
            if let Ok(cpb::Record {
                body: Some(cpb::record::Body::Violation(flow)),
                ..
            }) = cpb::Record::decode(content)
            {
                self.store.push_violation(flow);
                restored += 1;
            }
        }
        if restored > 0 {
            info!(
                violations = restored,
                "violations the spool still holds are back in the history"
            );
        }
    }

    /// Reports records the spool could not take, once it takes one again,
    /// and spools the gap records it held meanwhile.
    pub(super) fn report_unspooled(&mut self) {
        if self.report_unspooled_count() && self.spool.is_some() {
            let held = std::mem::take(&mut self.unspooled_gaps);
            if !held.is_empty() {
                warn!(
                    gaps = held.len(),
                    "the spool takes writes again; the gap records it could not take are spooled"
                );
            }
            for (t, g) in held {
                // One that fails again is held again.
                self.spool_append(t, Spooled::Gap(&g));
            }
        }
    }

    /// The count of records the spool could not take as a SPOOL_WRITE gap
    /// record; false while it still cannot be written.
    fn report_unspooled_count(&mut self) -> bool {
        let (count, from, why) = &self.unspooled;
        if *count == 0 {
            return true;
        }
        let Some(s) = self.spool.as_mut() else {
            return false;
        };
        let now = now_unix_ns();
        let gap = cpb::Gap {
            source: cpb::GapSource::SpoolWrite as i32,
            count: *count,
            from_unix_ns: *from,
            until_unix_ns: now,
            error: why.clone(),
            ..Default::default()
        };
        // Still failing: the count stays for the next try (logged once, when
        // the failures began).
        if s.append_now(&encode_spooled(now, Spooled::Gap(&gap)))
            .is_ok()
        {
            warn!(count, error = %why, "the spool takes writes again; the records it could not take are reported as a gap");
            self.unspooled = (0, 0, String::new());
            self.metrics.spool_unwritable.set(0);
            return true;
        }
        false
    }

    /// Makes what was appended durable and records gaps: audit records waiting,
    /// records the full spool dropped.
    pub(super) fn spool_sync(&mut self) {
        self.report_unspooled();
        for a in self.audit.take_pending() {
            let t =
                a.at.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
            self.spool_append(t, Spooled::Audit(&cpb::Audit::from(&a)));
        }
        let Some(s) = &mut self.spool else { return };
        if let Some(d) = s.take_dropped() {
            warn!(
                count = d.count,
                first_seq = d.first_seq,
                last_seq = d.last_seq,
                "the spool was full: records dropped (reported as a gap)"
            );
            let gap = cpb::Gap {
                source: cpb::GapSource::SpoolFull as i32,
                count: d.count,
                first_seq: d.first_seq,
                last_seq: d.last_seq,
                resume_chain: d.resume.map(|h| h.to_vec()).unwrap_or_default(),
                ..Default::default()
            };
            self.spool_append(now_unix_ns(), Spooled::Gap(&gap));
        }
        if let Some(s) = &mut self.spool {
            match s.write_out() {
                Err(e) => error!(error = %e, "writing the spool failed"),
                Ok(()) => {
                    if let Some(f) = s.tail_for_sync() {
                        self.syncer.request(f, s.written());
                    }
                }
            }
        }
        self.report_unwritten();
        self.metrics
            .spool_depth
            .set(self.spool.as_ref().map_or(0, Spool::depth) as i64);
    }
}
