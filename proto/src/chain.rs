//! A host's record chain (`Record.chain` in collector.proto): each record's
//! hash covers the previous record's hash, its own sequence and its own
//! encoding, so a record removed, altered or moved after the agent spooled
//! it breaks the links after it.
//!
//! - [`link`], [`content`], [`suffix`], [`split`]: the hash and where it
//!   sits in an encoded record (the agent's spool, the collector's ingest).
//! - [`Verifier`]: walks a host's records in sequence order and reports what
//!   does not hold ([`ChainReport`]); the collector's `VerifyChain` and an
//!   offline checker share it.

use prost::encoding::{self, WireType};
use sha2::{Digest, Sha256};

use crate::collector::v1::{
    Bundle, ChainFinding, ChainReport, GapSource, Record, WitnessedHead, chain_finding::Kind,
    record::Body,
};

/// A chain hash (SHA-256).
pub type Hash = [u8; 32];

/// The previous hash where a chain starts.
pub const ZERO: Hash = [0; 32];

/// `Record.chain`'s field number.
pub const FIELD: u32 = 8;

/// `Record.time_unix_ns`'s field number.
pub const TIME_FIELD: u32 = 3;

/// Bytes of the encoded chain field: key, length (32), hash.
pub const SUFFIX_LEN: usize = 34;

/// The chain hash of record `seq` whose encoding without `seq` and `chain`
/// is `content`, after a record whose hash is `prev`.
pub fn link(prev: &Hash, seq: u64, content: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(content);
    h.finalize().into()
}

/// `hash` encoded as the record's chain field, to append to its content.
pub fn suffix(hash: &Hash) -> [u8; SUFFIX_LEN] {
    let mut out = [0u8; SUFFIX_LEN];
    let mut head = Vec::with_capacity(2);
    encoding::encode_key(FIELD, WireType::LengthDelimited, &mut head);
    encoding::encode_varint(32, &mut head);
    out[..2].copy_from_slice(&head);
    out[2..].copy_from_slice(hash);
    out
}

/// An encoded record that ends with its chain field: (content, hash).
pub fn split(encoded: &[u8]) -> Option<(&[u8], Hash)> {
    let at = encoded.len().checked_sub(SUFFIX_LEN)?;
    let (content, tail) = encoded.split_at(at);
    let hash: Hash = tail[2..].try_into().ok()?;
    (tail[..2] == suffix(&hash)[..2]).then_some((content, hash))
}

/// A record's encoding without `seq` and `chain`: what its hash covers
/// (fields in number order, as prost writes them and the agent spools them).
pub fn content(r: &Record) -> Vec<u8> {
    use prost::Message;
    let mut out = Vec::with_capacity(r.encoded_len());
    if r.time_unix_ns != 0 {
        encoding::int64::encode(TIME_FIELD, &r.time_unix_ns, &mut out);
    }
    if let Some(b) = &r.body {
        b.encode(&mut out);
    }
    out
}

/// Lower-case hex, for people and logs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes `s` spells in hex (either case), as [`hex`] writes them; None
/// for anything else (an odd length, a sign, a non-hex character).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A record as the verifier sees it.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: u64,
    /// The record's encoding without `seq` and `chain` (see [`content`]).
    pub content: Vec<u8>,
    /// Its chain hash; `None` for a record from before the chain.
    pub chain: Option<Hash>,
    /// A gap record with the UNDELIVERABLE source for this very sequence (the
    /// agent's stand-in for a record too large to deliver).
    pub substitute: bool,
    /// False when the row's searchable columns disagree with its record.
    pub columns_match: bool,
    /// The record, decoded (with its sequence), when it decodes.
    pub record: Option<Record>,
}

/// What accounts for missing records and restarts: the host's gap records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explainer {
    /// The gap record's own sequence.
    pub seq: u64,
    pub source: GapSource,
    pub first_seq: u64,
    pub last_seq: u64,
    /// For SPOOL_LOST: the collector's sequence the spool numbered after.
    pub collector_last_seq: u64,
    /// The chain hash the record after the range links to, when the agent
    /// knew it.
    pub resume: Option<Hash>,
}

impl Explainer {
    /// The gap record `r` as an explainer, if it is one.
    pub fn of(r: &Record) -> Option<Explainer> {
        let Some(Body::Gap(g)) = &r.body else {
            return None;
        };
        Some(Explainer {
            seq: r.seq,
            source: g.source(),
            first_seq: g.first_seq,
            last_seq: g.last_seq,
            collector_last_seq: g.collector_last_seq,
            resume: g.resume_chain.as_slice().try_into().ok(),
        })
    }
}

/// Consecutive records whose links fail: `first..=last`, with the first
/// one's hashes. One alone whose next link holds had its content altered;
/// a longer run means hashes that belong elsewhere (records moved, swapped,
/// or hashes rewritten).
struct Run {
    first: u64,
    last: u64,
    expected: Hash,
    found: Hash,
}

/// Walks a host's records in sequence order (feed them with [`Verifier::push`]).
pub struct Verifier {
    explainers: Vec<Explainer>,
    report: ChainReport,
    /// The previous record: its sequence and chain hash.
    prev: Option<(u64, Option<Hash>)>,
    run: Option<Run>,
    attestations: crate::attest::Tracker,
    /// The end of the time checked (Unix ns; 0: unknown): a host whose last
    /// attestation was due well before it went silent.
    now: i64,
    host: String,
    /// The first chained record seen: from there on every record must be.
    chained_from: Option<u64>,
    /// Heads seen by earlier checks, kept outside the database: each must
    /// still be stored with its hash.
    /// By sequence: looked up per record, so a long witness file costs a
    /// lookup, not a scan, for each record checked.
    witness: std::collections::BTreeMap<u64, Vec<WitnessedHead>>,
    /// The highest sequence the collector counted as stored for the host
    /// (0: not known), which the stored chain must reach.
    stored_upto: u64,
    /// Records after a window signed as the agent's last before a stop,
    /// that no window covers yet: the first and last.
    unattested: Option<(u64, u64)>,
}

impl Verifier {
    /// `before`: the record just before the first to be pushed (sequence and
    /// hash), when the check starts in the middle of the chain.
    pub fn new(
        host: &str,
        explainers: Vec<Explainer>,
        before: Option<(u64, Option<Hash>)>,
    ) -> Self {
        Verifier {
            explainers,
            report: ChainReport {
                host_id: host.to_owned(),
                ..Default::default()
            },
            prev: before,
            run: None,
            attestations: crate::attest::Tracker::new(host, None),
            now: 0,
            host: host.to_owned(),
            chained_from: None,
            witness: Default::default(),
            stored_upto: 0,
            unattested: None,
        }
    }

    /// Heads an auditor witnessed before (checked when the range reaches
    /// the end of the chain: pass none for a range that stops earlier).
    pub fn witnessed(mut self, heads: Vec<WitnessedHead>) -> Self {
        for h in heads {
            self.witness.entry(h.seq).or_default().push(h);
        }
        self
    }

    /// The collector's own count of the host's highest stored sequence
    /// (for a check that reaches the end of the chain).
    pub fn stored_upto(mut self, seq: u64) -> Self {
        self.stored_upto = seq;
        self
    }

    /// Attestations are checked against `ca` (DER): the CA that signs the
    /// agents' certificates.
    pub fn with_ca(mut self, ca: Option<Vec<u8>>) -> Self {
        self.attestations = crate::attest::Tracker::new(&self.host, ca);
        self
    }

    /// The end of the time checked (the range's end, or now), for a host
    /// that went silent after its last attestation.
    pub fn until(mut self, now: i64) -> Self {
        self.now = now;
        self
    }

    fn find(&mut self, kind: Kind, first: u64, last: u64, detail: String) -> &mut ChainFinding {
        self.report.findings.push(ChainFinding {
            kind: kind as i32,
            first_seq: first,
            last_seq: last,
            detail,
            ..Default::default()
        });
        self.report.findings.last_mut().expect("pushed")
    }

    /// The next record (sequences must increase).
    pub fn push(&mut self, row: &Row) {
        let r = &mut self.report;
        if r.records == 0 {
            r.first_seq = row.seq;
        }
        r.records += 1;
        r.last_seq = row.seq;
        if row.chain.is_some() {
            r.chained += 1;
        }
        if !row.columns_match {
            self.find(
                Kind::ColumnsAltered,
                row.seq,
                row.seq,
                "the row's searchable columns disagree with its record".into(),
            );
        }
        let prev = self.prev.take();
        if let Some((p, _)) = prev
            && row.seq > p.saturating_add(1)
        {
            // Records an agent's gap record says it lost may have been
            // violations: the window's counts can then only be checked as
            // an upper bound. Records missing without a word are not: the
            // counts must still agree (a deleted violation shows there too).
            if self.missing(p + 1, row.seq - 1) {
                self.attestations.missing();
            }
        }
        // The host's very first stored record (nothing before it): a chain
        // must start there, or what came before it is not stored.
        if prev.is_none()
            && self.report.records == 1
            && let Some(h) = row.chain
            && link(&ZERO, row.seq, &row.content) != h
        {
            if row.seq > 1 {
                let _ = self.missing(1, row.seq - 1);
            } else {
                self.find(
                    Kind::BrokenLink,
                    row.seq,
                    row.seq,
                    "the host's first record does not start a chain".into(),
                );
            }
        }
        match (row.chain, self.chained_from) {
            (Some(_), None) => self.chained_from = Some(row.seq),
            (None, Some(from)) => {
                self.find(
                    Kind::BrokenLink,
                    row.seq,
                    row.seq,
                    format!("record {} carries no chain hash, though the host's chain started at record {from}: its hash was removed", row.seq),
                );
            }
            _ => {}
        }
        match row.record.as_ref().map(|r| (r, &r.body)) {
            Some((_, Some(Body::Attestation(a)))) => {
                let (check, hole) = self.attestations.attestation(row.seq, a, prev);
                if let Some(h) = hole {
                    let secs = a.window_start_unix_ns.saturating_sub(h.end) as f64 / 1e9;
                    let (kind, detail) = if h.stopped {
                        (
                            Kind::AgentStopped,
                            format!(
                                "the agent stopped cleanly after the window of record {} and started {secs:.0} s later; the kernel kept enforcing meanwhile",
                                h.after
                            ),
                        )
                    } else {
                        (
                            Kind::AttestationHole,
                            format!(
                                "no attestation covers {secs:.0} s between the window of record {} and this one's: the agent did not run, or attestations are missing",
                                h.after
                            ),
                        )
                    };
                    self.find(kind, h.after, row.seq, detail);
                }
                if !(check.signature_valid && check.signer_trusted && check.records_agree) {
                    self.find(
                        Kind::AttestationInvalid,
                        row.seq,
                        row.seq,
                        format!("attestation by {}: {}", check.signer, check.problem),
                    );
                }
                self.report.attestations.push(check);
            }
            Some((r, _)) => self.attestations.record(r),
            None => {}
        }
        match row.record.as_ref().map(|r| &r.body) {
            Some(Some(Body::Attestation(_))) => self.unattested = None,
            _ if self.attestations.after_stop() => {
                let first = self.unattested.map_or(row.seq, |u| u.0);
                self.unattested = Some((first, row.seq));
            }
            _ => {}
        }
        let witnessed: Vec<WitnessedHead> = self
            .witness
            .get(&row.seq)
            .into_iter()
            .flatten()
            .filter(|w| row.chain.map(|h| h.to_vec()) != Some(w.head.clone()))
            .cloned()
            .collect();
        for w in witnessed {
            self.find(
                Kind::Truncated,
                row.seq,
                row.seq,
                format!(
                    "record {} has another hash than the one {} saw {}: the tail from here was replaced, or the database restored from another copy",
                    row.seq,
                    witness_name(&w),
                    crate::time::utc(w.seen_unix_ns)
                ),
            );
        }
        if let Some(found) = row.chain {
            let adjacent = prev.is_some_and(|(p, _)| p.checked_add(1) == Some(row.seq));
            // Across a hole the link is checked too: it holds where the
            // agent dropped sequences before hashing them (a full spool
            // refusing records); where it does not, the hole is the finding.
            let expected = prev
                .and_then(|(_, ph)| ph)
                .map(|ph| link(&ph, row.seq, &row.content));
            let restart = expected != Some(found) && link(&ZERO, row.seq, &row.content) == found;
            // After a hole the agent accounted for, its gap record may say
            // which hash the chain resumes from: that link is checked too.
            if !adjacent
                && !restart
                && let Some(e) = self
                    .explainers
                    .iter()
                    .find(|e| e.last_seq.checked_add(1) == Some(row.seq) && e.resume.is_some())
                    .copied()
                && let Some(r) = e.resume
                && link(&r, row.seq, &row.content) != found
            {
                let gap = e.seq;
                let f = self.find(
                    Kind::BrokenLink,
                    row.seq,
                    row.seq,
                    format!("record {} does not follow the hash gap record {gap} says the chain resumes from: altered, or moved", row.seq),
                );
                f.expected = link(&r, row.seq, &row.content).to_vec();
                f.found = found.to_vec();
            }
            // A run of failing links goes on only while the links keep
            // failing where they can be checked.
            let fails =
                adjacent && !restart && !row.substitute && expected.is_some_and(|e| e != found);
            if !fails {
                self.close_run(adjacent && expected == Some(found));
            }
            match expected {
                Some(e) if e == found => {}
                _ if restart => {
                    if let Some((p, ph)) = prev {
                        let explained = ph.is_none() || self.spool_lost_before(row.seq);
                        let f = self.find(
                            if explained { Kind::RestartExplained } else { Kind::Restart },
                            row.seq,
                            row.seq,
                            if explained {
                                "the chain starts again here: the record before was unchained (an older agent) or the agent's spool history was lost (SPOOL_LOST gap)".into()
                            } else {
                                format!("the chain starts again here after record {p}, and no SPOOL_LOST gap record accounts for it")
                            },
                        );
                        f.found = found.to_vec();
                    }
                }
                Some(e) if adjacent && row.substitute => {
                    let f = self.find(
                        Kind::Substituted,
                        row.seq,
                        row.seq,
                        "a record too large to deliver, replaced by the agent with a gap record under its sequence and hash".into(),
                    );
                    f.expected = e.to_vec();
                    f.found = found.to_vec();
                }
                Some(e) if fails => match &mut self.run {
                    Some(r) => r.last = row.seq,
                    None => {
                        self.run = Some(Run {
                            first: row.seq,
                            last: row.seq,
                            expected: e,
                            found,
                        })
                    }
                },
                // Nothing to link to: the first record checked, the first
                // after an unchained one, or after a hole (reported as
                // missing). The next link starts here.
                _ => {}
            }
        }
        if row.chain.is_none() {
            self.close_run(false);
        }
        self.prev = Some((row.seq, row.chain));
        self.report.head = row.chain.map(|h| h.to_vec()).unwrap_or_default();
    }

    /// Ends the run of failing links; `next_holds`: the link after its last
    /// record holds (so a run of one is that record's content altered).
    fn close_run(&mut self, next_holds: bool) {
        let Some(r) = self.run.take() else { return };
        let (kind, detail) = if r.first == r.last && next_holds {
            (
                Kind::Altered,
                format!(
                    "record {}'s content does not give its hash: altered after the agent spooled it",
                    r.first
                ),
            )
        } else if r.first == r.last {
            (
                Kind::BrokenLink,
                format!(
                    "record {} does not follow from the record before it: altered, moved, or its hash rewritten",
                    r.first
                ),
            )
        } else {
            (
                Kind::BrokenLink,
                format!(
                    "records {}..{} do not follow one from another: records removed, swapped or moved, or hashes rewritten (the first is where the chain was cut)",
                    r.first, r.last
                ),
            )
        };
        let f = self.find(kind, r.first, r.last, detail);
        f.expected = r.expected.to_vec();
        f.found = r.found.to_vec();
    }

    /// A SPOOL_LOST gap says the spool numbered afresh from `seq`.
    fn spool_lost_before(&self, seq: u64) -> bool {
        self.explainers
            .iter()
            .any(|e| e.source == GapSource::SpoolLost && e.collector_last_seq + 1 == seq)
    }

    /// Sequences `first..=last` are not stored: explained by the gap records
    /// that cover them, missing otherwise (split at what is covered). True
    /// when every one is explained.
    fn missing(&mut self, first: u64, last: u64) -> bool {
        let mut all = true;
        let mut at = first;
        while at <= last {
            let cover = self
                .explainers
                .iter()
                .filter(|e| e.first_seq > 0 && e.first_seq <= at && e.last_seq >= at)
                .max_by_key(|e| e.last_seq)
                .copied();
            match cover {
                Some(e) => {
                    let end = e.last_seq.min(last);
                    let f = self.find(
                        Kind::MissingExplained,
                        at,
                        end,
                        format!(
                            "not stored; gap record {} ({}) says the agent lost them",
                            e.seq,
                            e.source.as_str_name()
                        ),
                    );
                    f.explained_by = e.seq;
                    let Some(next) = end.checked_add(1) else {
                        break;
                    };
                    at = next;
                }
                None => {
                    let next = self
                        .explainers
                        .iter()
                        .filter(|e| e.first_seq > at && e.first_seq <= last)
                        .map(|e| e.first_seq)
                        .min()
                        .unwrap_or(last + 1);
                    self.find(
                        Kind::Missing,
                        at,
                        next - 1,
                        "not stored, and no gap record accounts for them: deleted, or never delivered".into(),
                    );
                    all = false;
                    at = next;
                }
            }
        }
        all
    }

    /// Findings the caller knows of (breaks the collector kept at ingest).
    pub fn add(&mut self, f: ChainFinding) {
        self.report.findings.push(f);
    }

    /// The report: findings in sequence order; intact when all are explained.
    pub fn finish(mut self) -> ChainReport {
        self.close_run(false);
        if let Some((seq, end)) = self.attestations.silent_since(self.now) {
            let silent = self.now.saturating_sub(end) as f64 / 1e9;
            self.find(
                Kind::AttestationHole,
                seq,
                seq,
                format!(
                    "no attestation for {silent:.0} s after the window of record {seq}, though one was due: the host went silent or its attestations are missing"
                ),
            );
        }
        if let Some((first, last)) = self.unattested {
            self.find(
                Kind::Unattested,
                first,
                last,
                format!(
                    "records {first}..{last} follow the agent's clean stop and no signed window covers them yet: nothing vouches for them until the restarted agent attests its first window"
                ),
            );
        }
        let end = self.report.last_seq;
        if self.stored_upto > end {
            self.find(
                Kind::Truncated,
                end,
                self.stored_upto,
                format!(
                    "the collector stored records of this host up to {}, but the stored chain ends at record {end}: records were removed from the tail",
                    self.stored_upto
                ),
            );
        }
        let signed: Vec<WitnessedHead> = self
            .witness
            .values()
            .flatten()
            .filter(|w| w.signed.is_some())
            .cloned()
            .collect();
        for w in &signed {
            let Some(h) = &w.signed else { continue };
            let sig = self.attestations.head(h);
            if !(sig.valid && sig.trusted) {
                self.find(
                    Kind::HeadInvalid,
                    h.seq,
                    h.seq,
                    format!(
                        "{} (record {}, {}) does not hold: {}",
                        witness_name(w),
                        h.seq,
                        crate::time::utc(h.time_unix_ns),
                        sig.problem
                    ),
                );
                continue;
            }
            if h.acked_seq > end {
                self.find(
                    Kind::Truncated,
                    end,
                    h.acked_seq,
                    format!(
                        "{} says a collector acknowledged its records up to {} (signed {}), but the stored chain ends at record {end}: records were removed from the tail, or the database was restored from an older copy",
                        witness_name(w),
                        h.acked_seq,
                        crate::time::utc(h.time_unix_ns)
                    ),
                );
            }
        }
        // A signed head past the stored end is still in the agent's spool
        // (what it must have delivered is checked above); any other head
        // past the end was stored once.
        let beyond: Vec<WitnessedHead> = self
            .witness
            .range(end.saturating_add(1)..)
            .flat_map(|(_, ws)| ws)
            .filter(|w| w.signed.is_none())
            .cloned()
            .collect();
        for w in beyond {
            self.find(
                Kind::Truncated,
                end,
                w.seq,
                format!(
                    "{} saw record {} stored {}, but the stored chain ends at record {end}: records were removed from the tail (and perhaps others forged after the cut), or the database was restored from an older copy",
                    witness_name(&w),
                    w.seq,
                    crate::time::utc(w.seen_unix_ns)
                ),
            );
        }
        let mut r = self.report;
        r.findings.sort_by_key(|f| (f.first_seq, f.kind));
        r.intact = r.findings.iter().all(|f| explained(f.kind()));
        r
    }
}

/// Holds `r` (a whole-chain check) against the live agent's signed head
/// `h`, asked after the records were read: everything legitimately stored
/// by then was numbered by the agent before, so a stored record past its
/// head, or one at its head with another hash, was forged. (The head asked
/// before the records were read cannot show this: records stored in
/// between would look forged.) `h`'s signature is checked by the caller.
pub fn hold_against_agent(r: &mut ChainReport, h: &crate::collector::v1::SignedHead) {
    let end = r.last_seq;
    let finding = if h.seq < end {
        Some((
            h.seq.saturating_add(1),
            end,
            format!(
                "records {}..{end} are stored, but the live agent's signed head ({}) is record {}: it never numbered them, so they were forged in the database",
                h.seq.saturating_add(1),
                crate::time::utc(h.time_unix_ns),
                h.seq
            ),
        ))
    } else if h.seq == end && !h.head.is_empty() && !r.head.is_empty() && h.head != r.head {
        Some((
            end,
            end,
            format!(
                "record {end} has another hash than the live agent's signed head ({}) states: the tail was forged in the database",
                crate::time::utc(h.time_unix_ns)
            ),
        ))
    } else {
        None
    };
    if let Some((first, last, detail)) = finding {
        r.findings.push(ChainFinding {
            kind: Kind::Forged as i32,
            first_seq: first,
            last_seq: last,
            expected: h.head.clone(),
            found: if h.seq == end {
                r.head.clone()
            } else {
                Vec::new()
            },
            detail,
            ..Default::default()
        });
        r.findings.sort_by_key(|f| (f.first_seq, f.kind));
        r.intact = false;
    }
}

/// Who saw a witnessed head, for findings.
fn witness_name(w: &WitnessedHead) -> &str {
    if w.by.is_empty() {
        "a check with the witness file"
    } else {
        &w.by
    }
}

/// Findings that do not break "intact": what the agent itself said it lost,
/// a chain restarted where its spool's history was lost, and the time
/// between a clean stop the agent signed and its next start. (A stand-in
/// for an undeliverable record does break it: its content cannot be
/// checked, and anyone could claim one.)
pub fn explained(k: Kind) -> bool {
    matches!(
        k,
        Kind::MissingExplained | Kind::RestartExplained | Kind::AgentStopped | Kind::Retained
    )
}

/// The format name a bundle carries.
pub const BUNDLE_FORMAT: &str = "residency-bundle/1";

/// Whether `r` is the agent's stand-in for a record too large to deliver
/// (an UNDELIVERABLE gap for its own sequence).
pub fn is_substitute(r: &Record) -> bool {
    matches!(&r.body, Some(Body::Gap(g))
        if g.source() == GapSource::Undeliverable && g.first_seq == r.seq && g.last_seq == r.seq)
}

/// A stored record's bytes as the record (with its sequence), if they decode.
pub fn decode_stored(seq: u64, content: &[u8]) -> Option<Record> {
    use prost::Message;
    let mut r = Record::decode(content).ok()?;
    r.seq = seq;
    Some(r)
}

/// A stored chain field as a hash: None when empty (unchained); one of the
/// wrong length is kept as a hash that cannot match.
pub fn hash_of(chain: &[u8]) -> Option<Hash> {
    (!chain.is_empty()).then(|| chain.try_into().unwrap_or([0xff; 32]))
}

/// Checks a bundle's chain offline (no columns to compare: a bundle holds
/// the records only), attestations against `ca` — the auditor's own copy
/// of the CA, not the one the bundle carries. Errors name what makes the
/// file no bundle.
/// `witness`: heads an auditor saw before (see `witness`), checked when
/// the bundle's range is open at the end.
pub fn verify_bundle(
    b: &Bundle,
    ca: Option<Vec<u8>>,
    witness: Vec<WitnessedHead>,
) -> Result<ChainReport, String> {
    if b.format != BUNDLE_FORMAT {
        return Err(format!(
            "not a bundle this version reads: format {:?} (expected {BUNDLE_FORMAT:?})",
            b.format
        ));
    }
    let explainers = b
        .gaps
        .iter()
        .filter_map(|g| decode_stored(g.seq, &g.content))
        .filter_map(|r| Explainer::of(&r))
        .collect();
    let before = b.before.as_ref().map(|r| (r.seq, hash_of(&r.chain)));
    let end = if b.until_unix_ns > 0 {
        b.until_unix_ns.min(b.created_unix_ns)
    } else {
        b.created_unix_ns
    };
    let mut v = Verifier::new(&b.host_id, explainers, before)
        .with_ca(ca)
        .until(end);
    if b.until_unix_ns <= 0 {
        v = v.stored_upto(b.stored_upto).witnessed(witness);
    }
    let mut last = 0;
    for r in &b.records {
        if r.seq <= last {
            return Err(format!(
                "record {} follows record {last}: a bundle lists records in increasing sequence",
                r.seq
            ));
        }
        last = r.seq;
        let record = decode_stored(r.seq, &r.content);
        v.push(&Row {
            seq: r.seq,
            chain: hash_of(&r.chain),
            substitute: record.as_ref().is_some_and(is_substitute),
            content: r.content.clone(),
            columns_match: true,
            record,
        });
    }
    let mut report = v.finish();
    if report.records == 0 {
        report.intact = false;
    }
    Ok(report)
}

/// The report for people: each finding in sequence order (unexplained ones
/// in capitals, with both hashes), then `intact: N records, head HASH` or
/// `NOT INTACT: first at record N (kind)`.
pub fn render(r: &ChainReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if r.records == 0 {
        let _ = writeln!(out, "{}: no records stored in that time range", r.host_id);
        return out;
    }
    let _ = writeln!(
        out,
        "{}: records {}..{} ({} stored, {} chained)",
        r.host_id, r.first_seq, r.last_seq, r.records, r.chained
    );
    let name = |k: Kind| k.as_str_name().trim_start_matches("KIND_").to_lowercase();
    for f in &r.findings {
        let at = if f.first_seq == f.last_seq {
            format!("record {}", f.first_seq)
        } else {
            format!("records {}..{}", f.first_seq, f.last_seq)
        };
        let what = if explained(f.kind()) {
            name(f.kind())
        } else {
            name(f.kind()).to_uppercase()
        };
        let _ = writeln!(out, "  {what:<18} {at}: {}", f.detail);
        if !f.expected.is_empty() || !f.found.is_empty() {
            let _ = writeln!(
                out,
                "  {:<18} expected {} found {}",
                "",
                hex(&f.expected),
                hex(&f.found)
            );
        }
    }
    match (&r.agent_head, r.agent_head_missing.as_str()) {
        (Some(h), _) => {
            let _ = writeln!(
                out,
                "  live agent: signed head at record {} ({}), collector acknowledged up to {}, {} in its spool, {}",
                h.seq,
                hex(&h.head),
                h.acked_seq,
                h.seq.saturating_sub(r.last_seq.max(h.acked_seq)),
                crate::time::utc(h.time_unix_ns)
            );
        }
        (None, "") => {}
        (None, why) => {
            let _ = writeln!(out, "  live agent: not asked ({why})");
        }
    }
    let _ = match r.findings.iter().find(|f| !explained(f.kind())) {
        None => writeln!(
            out,
            "intact: {} records, head {} (record {})",
            r.records,
            if r.head.is_empty() {
                "-".into()
            } else {
                hex(&r.head)
            },
            r.last_seq
        ),
        Some(f) => writeln!(
            out,
            "NOT INTACT: first at record {} ({})",
            f.first_seq,
            name(f.kind())
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::v1::Gap;

    fn chain_of(n: u64) -> Vec<Row> {
        let mut prev = ZERO;
        (1..=n)
            .map(|seq| {
                let content = format!("record {seq}").into_bytes();
                let h = link(&prev, seq, &content);
                prev = h;
                Row {
                    seq,
                    content,
                    chain: Some(h),
                    substitute: false,
                    columns_match: true,
                    record: None,
                }
            })
            .collect()
    }

    fn check(rows: &[Row], explainers: Vec<Explainer>) -> ChainReport {
        let mut v = Verifier::new("h", explainers, None);
        for r in rows {
            v.push(r);
        }
        v.finish()
    }

    fn kinds(r: &ChainReport) -> Vec<(Kind, u64, u64)> {
        r.findings
            .iter()
            .map(|f| (f.kind(), f.first_seq, f.last_seq))
            .collect()
    }

    /// A host key's signed head over `rows`' chain at `seq`, `acked`
    /// acknowledged, and an attestation signed with the same key (which
    /// shows the verifier the host's key).
    fn signed_head(
        dir: &std::path::Path,
        rows: &[Row],
        seq: u64,
        acked: u64,
    ) -> (crate::collector::v1::SignedHead, crate::attest::Signer) {
        let signer = crate::attest::Signer::host_key(&dir.join("host.key")).unwrap();
        let mut h = crate::collector::v1::SignedHead {
            host_id: "h".into(),
            seq,
            head: rows[seq as usize - 1].chain.unwrap().to_vec(),
            acked_seq: acked,
            time_unix_ns: 1,
            ..Default::default()
        };
        signer.sign(&mut h).unwrap();
        (h, signer)
    }

    #[test]
    fn a_signed_head_holds_the_stored_chain_to_what_the_agent_said() {
        let dir = std::env::temp_dir().join(format!("rs-head-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Rows 1..=10, the first an attestation signed by the host key.
        let mut rows = chain_of(10);
        let (_, signer) = signed_head(&dir, &rows, 1, 0);
        let mut att = crate::collector::v1::Attestation {
            host_id: "h".into(),
            window_end_unix_ns: 1,
            ..Default::default()
        };
        signer.sign(&mut att).unwrap();
        let record = Record {
            seq: 1,
            body: Some(Body::Attestation(att)),
            ..Default::default()
        };
        rows[0].content = content(&record);
        rows[0].record = Some(record);
        let mut prev = ZERO;
        for r in &mut rows {
            let h = link(&prev, r.seq, &r.content);
            r.chain = Some(h);
            prev = h;
        }
        let run = |rows: &[Row], h: &crate::collector::v1::SignedHead| {
            let mut v = Verifier::new("h", vec![], None).witnessed(vec![WitnessedHead {
                seq: h.seq,
                head: h.head.clone(),
                by: "the live agent's signed head".into(),
                signed: Some(h.clone()),
                ..Default::default()
            }]);
            for r in rows {
                v.push(r);
            }
            v.finish()
        };
        // Its head still in its spool (past the stored end), everything
        // acknowledged stored: intact.
        let (h, _) = signed_head(&dir, &rows, 10, 8);
        let r = run(&rows[..8], &h);
        assert!(r.intact, "{r:#?}");
        // Acknowledged records cut from the tail.
        let r = run(&rows[..6], &h);
        assert_eq!(kinds(&r), vec![(Kind::Truncated, 6, 8)], "{r:#?}");
        // Its head stored with another hash.
        let mut other = rows.clone();
        other[7].chain = Some([7; 32]);
        let (h8, _) = signed_head(&dir, &rows, 8, 8);
        let r = run(&other[..8], &h8);
        assert!(kinds(&r).contains(&(Kind::Truncated, 8, 8)), "{r:#?}");
        // An edited head, and one for another host.
        let mut edited = h.clone();
        edited.acked_seq = 2;
        assert_eq!(
            kinds(&run(&rows[..8], &edited)),
            vec![(Kind::HeadInvalid, 10, 10)]
        );
        let mut stranger = h.clone();
        stranger.host_id = "other".into();
        signer.sign(&mut stranger).unwrap();
        assert_eq!(
            kinds(&run(&rows[..8], &stranger)),
            vec![(Kind::HeadInvalid, 10, 10)]
        );
        // Asked after the records were read: records past its head forged.
        let mut r = run(&rows[..10], &h8);
        assert!(r.intact);
        hold_against_agent(&mut r, &h8);
        assert_eq!(kinds(&r), vec![(Kind::Forged, 9, 10)]);
        assert!(!r.intact);
        let mut r = run(&other[..8], &h8);
        hold_against_agent(&mut r, &h8);
        assert!(kinds(&r).contains(&(Kind::Forged, 8, 8)), "{r:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hex_goes_both_ways_and_refuses_what_is_not_hex() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(unhex("ABff"), Some(vec![0xab, 0xff]));
        for bad in ["abc", "+f", "zz", "0x"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_intact_chain_and_each_kind_of_tampering() {
        let rows = chain_of(10);
        let r = check(&rows, vec![]);
        assert!(r.intact && r.findings.is_empty(), "{r:?}");
        assert_eq!((r.records, r.chained), (10, 10));
        assert_eq!(r.head, rows[9].chain.unwrap().to_vec());

        let mut deleted = rows.clone();
        deleted.remove(4);
        let r = check(&deleted, vec![]);
        assert!(!r.intact);
        assert_eq!(kinds(&r), vec![(Kind::Missing, 5, 5)]);

        let mut altered = rows.clone();
        altered[3].content = b"record 4, edited".to_vec();
        let r = check(&altered, vec![]);
        assert_eq!(kinds(&r), vec![(Kind::Altered, 4, 4)]);
        assert!(!r.intact);

        // Two rows' contents swapped under their sequences: both altered.
        let mut swapped = rows.clone();
        let c = swapped[2].content.clone();
        swapped[2].content = swapped[6].content.clone();
        swapped[6].content = c;
        assert_eq!(
            kinds(&check(&swapped, vec![])),
            vec![(Kind::Altered, 3, 3), (Kind::Altered, 7, 7)]
        );

        // Whole records (content and hash) moved to other sequences.
        let mut moved = rows.clone();
        let (a, b) = (moved[2].clone(), moved[3].clone());
        moved[2] = Row { seq: 3, ..b };
        moved[3] = Row { seq: 4, ..a };
        let r = check(&moved, vec![]);
        assert_eq!(
            kinds(&r),
            vec![(Kind::BrokenLink, 3, 5)],
            "the links from 3 to 5 fail; 3 is where the chain was cut"
        );
        // Adjacent contents swapped: both links fail, the next holds.
        let mut adjacent = rows.clone();
        let c = adjacent[4].content.clone();
        adjacent[4].content = adjacent[5].content.clone();
        adjacent[5].content = c;
        assert_eq!(
            kinds(&check(&adjacent, vec![])),
            vec![(Kind::BrokenLink, 5, 6)]
        );
        // The last record altered: nothing after it to tell content from
        // hash.
        let mut last = rows.clone();
        last[9].content = b"edited".to_vec();
        assert_eq!(
            kinds(&check(&last, vec![])),
            vec![(Kind::BrokenLink, 10, 10)]
        );

        // A row's hash removed (and its content edited): the missing hash
        // is the finding.
        let mut unchained = rows.clone();
        unchained[3].chain = None;
        unchained[3].content = b"edited".to_vec();
        assert_eq!(
            kinds(&check(&unchained, vec![])),
            vec![(Kind::BrokenLink, 4, 4)]
        );
        // The first records deleted: the chain does not start where the
        // stored records do.
        assert_eq!(
            kinds(&check(&rows[3..], vec![])),
            vec![(Kind::Missing, 1, 3)]
        );

        let mut columns = rows.clone();
        columns[1].columns_match = false;
        assert_eq!(
            kinds(&check(&columns, vec![])),
            vec![(Kind::ColumnsAltered, 2, 2)]
        );
    }

    #[test]
    fn losses_and_restarts_the_agent_reported_are_explained() {
        let rows = chain_of(10);
        let mut lost = rows.clone();
        lost.drain(3..6); // 4, 5, 6
        let gap = Explainer {
            seq: 11,
            source: GapSource::SpoolWrite,
            first_seq: 4,
            last_seq: 6,
            collector_last_seq: 0,
            resume: None,
        };
        let r = check(&lost, vec![gap]);
        assert_eq!(kinds(&r), vec![(Kind::MissingExplained, 4, 6)]);
        assert!(r.intact);
        assert_eq!(r.findings[0].explained_by, 11);
        // The gap says which hash the chain resumes from: the record after
        // the hole is checked against it.
        let resumed = Explainer {
            resume: rows[5].chain,
            ..gap
        };
        assert!(check(&lost, vec![resumed]).intact);
        let mut edited = lost.clone();
        edited[3].content = b"record 7, edited".to_vec(); // seq 7
        assert_eq!(
            kinds(&check(&edited, vec![resumed])),
            vec![(Kind::MissingExplained, 4, 6), (Kind::BrokenLink, 7, 7)]
        );
        // Half covered: the rest is missing.
        let half = Explainer { last_seq: 5, ..gap };
        let r = check(&lost, vec![half]);
        assert_eq!(
            kinds(&r),
            vec![(Kind::MissingExplained, 4, 5), (Kind::Missing, 6, 6)]
        );
        assert!(!r.intact);

        // A restart (hash over ZERO) after record 5: explained only by a
        // SPOOL_LOST gap that numbered after 5.
        let mut restarted = chain_of(5);
        let mut prev = ZERO;
        for seq in 6..=8 {
            let content = format!("new {seq}").into_bytes();
            prev = link(&prev, seq, &content);
            restarted.push(Row {
                seq,
                content,
                chain: Some(prev),
                substitute: false,
                columns_match: true,
                record: None,
            });
        }
        let r = check(&restarted, vec![]);
        assert_eq!(kinds(&r), vec![(Kind::Restart, 6, 6)]);
        assert!(!r.intact);
        let lost_spool = Explainer {
            seq: 9,
            source: GapSource::SpoolLost,
            first_seq: 0,
            last_seq: 0,
            collector_last_seq: 5,
            resume: None,
        };
        let r = check(&restarted, vec![lost_spool]);
        assert_eq!(kinds(&r), vec![(Kind::RestartExplained, 6, 6)]);
        assert!(r.intact);
    }

    #[test]
    fn the_chain_field_round_trips_through_prost() {
        use prost::Message;
        let r = Record {
            seq: 7,
            time_unix_ns: 42,
            body: Some(Body::Gap(Gap {
                count: 2,
                ..Default::default()
            })),
            chain: vec![9; 32],
        };
        let encoded = r.encode_to_vec();
        let mut unsequenced = r.clone();
        unsequenced.seq = 0;
        let bytes = unsequenced.encode_to_vec();
        let (c, h) = split(&bytes).expect("ends with the chain field");
        assert_eq!(h, [9; 32]);
        assert_eq!(c, content(&r).as_slice());
        let mut appended = content(&r);
        appended.extend_from_slice(&suffix(&[9; 32]));
        assert_eq!(appended, bytes);
        assert_eq!(Record::decode(encoded.as_slice()).unwrap(), r);
        assert!(split(b"short").is_none());
    }
}
