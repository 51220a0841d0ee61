//! The record chain in the store (see `residency_proto::chain`): each row
//! keeps its record's chain hash; a batch's records are checked against
//! the host's last one as they arrive (a break is kept with both hashes,
//! and counted in ListHosts); `verify` walks a host's stored rows and
//! recomputes every link.

use residency_proto::{
    chain::{self, Explainer, Hash, Row, Verifier},
    collector::v1::{ChainFinding, ChainReport, Record, WitnessedHead, chain_finding::Kind},
};

use super::{Store, StoreError, filter::Indexed};

/// The chain's tables: breaks found at ingest (the record, the hash the
/// chain gave for it, the hash it carried), each row's chain hash, and each
/// host's last one. `$blob` is the backend's byte-string type.
macro_rules! chain_tables {
    ($blob:literal) => {
        concat!(
            "CREATE TABLE chain_breaks (
                host TEXT NOT NULL,
                seq BIGINT NOT NULL,
                expected ",
            $blob,
            " NOT NULL,
                found ",
            $blob,
            " NOT NULL,
                stored_ns BIGINT NOT NULL,
                PRIMARY KEY (host, seq)
            );
            ALTER TABLE records ADD COLUMN chain ",
            $blob,
            ";
            ALTER TABLE host_counts ADD COLUMN chain_head ",
            $blob,
            ";"
        )
    };
}
pub(crate) const CHAIN_TABLES_SQLITE: &str = chain_tables!("BLOB");
pub(crate) const CHAIN_TABLES_POSTGRES: &str = chain_tables!("BYTEA");

/// Keeps a break ($1 host, $2 seq, $3 expected, $4 found, $5 stored).
pub(crate) const INSERT_BREAK: &str =
    "INSERT INTO chain_breaks (host, seq, expected, found, stored_ns)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host, seq) DO NOTHING";

/// A host's rows in sequence order after $2 up to $3, at most $4, of kind
/// $5 ('': every kind).
pub(crate) const CHAIN_ROWS: &str =
    "SELECT seq, time_ns, kind, classes, country, remote, exe, action, record, chain, unit, container, pod, names
    FROM records WHERE host = $1 AND seq > $2 AND seq <= $3
    AND ($5 = '' OR kind = $5)
    ORDER BY seq LIMIT $4";

/// The first and last sequence of a host's records in [$2, $3) by time: a
/// time range is checked as the sequence range it spans (records' times are
/// not in sequence order: an audit record keeps the time of its change).
pub(crate) const SEQ_RANGE: &str =
    "SELECT MIN(seq), MAX(seq) FROM records WHERE host = $1 AND time_ns >= $2 AND time_ns < $3";

/// The row just before sequence $2 (to link the first checked one to).
pub(crate) const ROW_BEFORE: &str =
    "SELECT seq, chain FROM records WHERE host = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1";

/// A host's breaks kept at ingest, from $2 to $3.
pub(crate) const BREAKS: &str = "SELECT seq, expected, found FROM chain_breaks
    WHERE host = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq";

/// Rows read per step of a check.
const PAGE: i64 = 10_000;

/// A break found at ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Break {
    pub seq: i64,
    pub expected: Vec<u8>,
    pub found: Vec<u8>,
}

/// A row's sequence and chain hash (None or empty: unchained).
pub(crate) type SeqChain = (i64, Option<Vec<u8>>);

/// The host's last stored record as the chain needs it: its sequence and
/// chain hash (empty: unchained).
pub(crate) type Last = Option<(i64, Vec<u8>)>;

/// Checks a newly stored record against the host's last one and moves
/// `last` on. A break is a record right after the last one whose hash
/// neither follows from it nor starts a chain (and is no stand-in).
pub(crate) fn check(last: &mut Last, r: &Record, ix: &Indexed) -> Option<Break> {
    let seq = r.seq as i64;
    if last.as_ref().is_some_and(|(s, _)| seq <= *s) {
        return None; // filling in below the last: nothing links to it here
    }
    let prev = last.replace((seq, ix.chain.clone()));
    let (p, ph) = prev?;
    if p.checked_add(1) != Some(seq) {
        return None;
    }
    let ph: Hash = ph.as_slice().try_into().ok()?;
    let expected = chain::link(&ph, r.seq, &ix.encoded);
    if ix.chain.is_empty() {
        // Unchained after a chained record: its hash was left out.
        return Some(Break {
            seq,
            expected: expected.to_vec(),
            found: Vec::new(),
        });
    }
    if ix.chain == expected
        || ix.chain == chain::link(&chain::ZERO, r.seq, &ix.encoded)
        || chain::is_substitute(r)
    {
        return None;
    }
    Some(Break {
        seq,
        expected: expected.to_vec(),
        found: ix.chain.clone(),
    })
}

/// A stored row, as `CHAIN_ROWS` returns it.
pub(crate) struct StoredRow {
    pub seq: i64,
    pub time_ns: i64,
    pub kind: String,
    pub classes: String,
    pub country: String,
    pub remote: Vec<u8>,
    pub exe: String,
    pub action: String,
    pub record: Vec<u8>,
    pub chain: Option<Vec<u8>>,
    pub unit: String,
    pub container: String,
    pub pod: String,
    pub names: String,
}

impl StoredRow {
    /// The verifier's view: the hash covers the stored bytes as they are
    /// (any change to them shows), and the columns are compared with what
    /// the record gives.
    fn row(self) -> Row {
        let record = chain::decode_stored(self.seq as u64, &self.record);
        let columns_match = record.as_ref().is_some_and(|r| {
            let ix = Indexed::of(r);
            ix.kind == self.kind
                && ix.classes == self.classes
                && ix.country == self.country
                && ix.remote == self.remote
                && ix.exe == self.exe
                && ix.action == self.action
                && ix.unit == self.unit
                && ix.container == self.container
                && ix.pod == self.pod
                && ix.names == self.names
                && r.time_unix_ns == self.time_ns
        });
        Row {
            seq: self.seq as u64,
            chain: self.chain.as_deref().and_then(chain::hash_of),
            substitute: record.as_ref().is_some_and(chain::is_substitute),
            content: self.record,
            columns_match,
            record,
        }
    }
}

impl Store {
    /// Every gap record of `host` as stored (they explain missing sequences
    /// and restarts wherever they are).
    pub(crate) async fn gap_rows(
        store: &tokio::sync::Mutex<Store>,
        host: &str,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map_or(0, |r: &StoredRow| r.seq);
            let page = store
                .lock()
                .await
                .chain_rows(host, after, i64::MAX, PAGE, "gap")
                .await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// Recomputes `host`'s chain over its records in [since, until) (0: no
    /// bound); the host's gap records explain what is missing.
    /// A check that reaches the end of the chain (`until` 0) also holds it
    /// against the collector's own count of what it stored and against the
    /// heads in `witness`. A prefix removed as retained is judged against
    /// the collector's retention `retain_ns` (0: none). None: no record of
    /// the host was ever stored.
    pub async fn verify_chain(
        store: &tokio::sync::Mutex<Store>,
        host: &str,
        since: i64,
        until: i64,
        ca: Option<Vec<u8>>,
        witness: Vec<WitnessedHead>,
        retain_ns: i64,
    ) -> Result<Option<ChainReport>, StoreError> {
        let Some(counted) = store.lock().await.counted_last_seq(host).await? else {
            return Ok(None);
        };
        let to_end = until <= 0;
        let Some((mut rows, before)) = RangeRows::open(store, host, since, until).await? else {
            let empty = Verifier::new(host, Vec::new(), None);
            return Ok(Some(
                match to_end {
                    true => empty.stored_upto(counted).witnessed(witness),
                    false => empty,
                }
                .finish(),
            ));
        };
        let explainers = Store::gap_rows(store, host)
            .await?
            .iter()
            .filter_map(|g| chain::decode_stored(g.seq as u64, &g.record))
            .filter_map(|r| Explainer::of(&r))
            .collect();
        let before = before.map(|(s, c)| (s as u64, c.as_deref().and_then(chain::hash_of)));
        let mut v = Verifier::new(host, explainers, before)
            .with_ca(ca)
            .until(rows.until.min(super::now_ns()));
        if to_end {
            v = v.stored_upto(counted).witnessed(witness);
        }
        let (first, mut last) = (rows.after + 1, 0);
        loop {
            let page = rows.next(store).await?;
            let Some(end) = page.last().map(|r| r.seq) else {
                break;
            };
            last = end;
            for r in page {
                v.push(&r.row());
            }
        }
        let breaks = store.lock().await.chain_breaks(host, first, last).await?;
        for b in breaks {
            v.add(ChainFinding {
                kind: Kind::BreakAtIngest as i32,
                first_seq: b.seq as u64,
                last_seq: b.seq as u64,
                expected: b.expected,
                found: b.found,
                detail: "when it arrived, its hash did not follow from the record before it".into(),
                ..Default::default()
            });
        }
        let mut report = v.finish();
        if let Some(r) = rows.retained.as_ref().filter(|_| since <= 0) {
            report
                .findings
                .push(retained_finding(&report, r, retain_ns));
            report.findings.sort_by_key(|f| (f.first_seq, f.kind));
            report.intact = report.findings.iter().all(|f| chain::explained(f.kind()));
        }
        Ok(Some(report))
    }
}

/// The finding for a prefix removed as retained (`r`), judged by the first
/// kept window: its start, signed by the agent, is where the removed
/// records end, and retention (`retain_ns`; 0: none here) only removes
/// windows that ended longer ago than that.
fn retained_finding(
    report: &ChainReport,
    r: &super::retention::Retained,
    retain_ns: i64,
) -> ChainFinding {
    let now = super::now_ns();
    let ended = report
        .attestations
        .iter()
        .filter(|c| c.signature_valid && c.signer_trusted)
        .find_map(|c| c.attestation.as_ref())
        .map(|a| a.window_start_unix_ns);
    let early = match ended {
        _ if retain_ns <= 0 => Some(
            "this collector keeps every record (no --retain), so retention did not remove them"
                .to_owned(),
        ),
        Some(end) if end > now.saturating_sub(retain_ns) => Some(format!(
            "the first kept window starts {}, less than the retention ago: retention would have kept them",
            residency_proto::time::utc(end)
        )),
        _ => None,
    };
    let (kind, detail) = match early {
        None => (
            Kind::Retained,
            format!(
                "removed by this collector's retention (--retain), {} records in all, last {}: the chain goes on from the hash of record {} it kept",
                r.removed,
                residency_proto::time::utc(r.at_ns),
                r.upto_seq
            ),
        ),
        Some(why) => (
            Kind::RemovedEarly,
            format!(
                "records 1..{} are marked as removed by retention ({} records, {}), but {why}: they were removed behind the collector's back",
                r.upto_seq,
                r.removed,
                residency_proto::time::utc(r.at_ns)
            ),
        ),
    };
    ChainFinding {
        kind: kind as i32,
        first_seq: 1,
        last_seq: r.upto_seq,
        expected: r.chain.clone(),
        detail,
        ..Default::default()
    }
}

/// A host's stored rows over the sequence range a time range spans (see
/// `SEQ_RANGE`), read a page at a time (verify, bundles).
pub(crate) struct RangeRows {
    host: String,
    /// The last sequence read.
    after: i64,
    upto: i64,
    /// The end of the time range (i64::MAX: none).
    pub until: i64,
    /// What retention removed right before the range, when the range starts
    /// where the stored records start (the first row links to its hash).
    pub retained: Option<super::retention::Retained>,
}

impl RangeRows {
    /// `host`'s rows in [since, until) (`until` ≤ 0: unbounded), with the
    /// row just before them (sequence and chain hash); None when there is
    /// no row in the range.
    pub(crate) async fn open(
        store: &tokio::sync::Mutex<Store>,
        host: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<(RangeRows, Option<SeqChain>)>, StoreError> {
        let until = if until <= 0 { i64::MAX } else { until };
        let mut s = store.lock().await;
        let Some((first, upto)) = s.seq_range(host, since, until).await? else {
            return Ok(None);
        };
        // The row before, or the last one retention removed (its hash kept).
        let (before, retained) = match s.row_before(host, first).await? {
            Some(b) => (Some(b), None),
            None => {
                let r = s
                    .retained(host)
                    .await?
                    .filter(|r| (r.upto_seq as i64) < first);
                let before = r.as_ref().map(|r| {
                    (
                        r.upto_seq as i64,
                        Some(r.chain.clone()).filter(|c| !c.is_empty()),
                    )
                });
                (before, r)
            }
        };
        let rows = RangeRows {
            host: host.to_owned(),
            after: first - 1,
            upto,
            until,
            retained,
        };
        Ok(Some((rows, before)))
    }

    /// The next page (empty at the end).
    pub(crate) async fn next(
        &mut self,
        store: &tokio::sync::Mutex<Store>,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let page = store
            .lock()
            .await
            .chain_rows(&self.host, self.after, self.upto, PAGE, "")
            .await?;
        if let Some(r) = page.last() {
            self.after = r.seq;
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use residency_proto::collector::v1::{Gap, record::Body};

    fn rec(seq: u64, prev: &Hash) -> (Record, Indexed) {
        let mut r = Record {
            seq,
            time_unix_ns: seq as i64,
            body: Some(Body::Gap(Gap {
                count: seq,
                ..Default::default()
            })),
            chain: Vec::new(),
        };
        r.chain = chain::link(prev, seq, &chain::content(&r)).to_vec();
        let ix = Indexed::of(&r);
        (r, ix)
    }

    #[test]
    fn ingest_finds_a_record_whose_hash_does_not_follow() {
        let (r1, ix1) = rec(1, &chain::ZERO);
        let h1: Hash = r1.chain.as_slice().try_into().unwrap();
        let (r2, ix2) = rec(2, &h1);
        let mut last = None;
        assert_eq!(check(&mut last, &r1, &ix1), None, "a chain starts");
        assert_eq!(check(&mut last, &r2, &ix2), None);
        // Record 3 linked to the wrong predecessor (a forged or reordered
        // record): a break with both hashes.
        let (r3, ix3) = rec(3, &h1);
        let b = check(&mut last, &r3, &ix3).expect("a break");
        assert_eq!((b.seq, b.found.clone()), (3, r3.chain.clone()));
        assert_ne!(b.expected, b.found);
        // A resent duplicate is not checked again; after a jump nothing
        // links (the jump is the finding).
        assert_eq!(check(&mut last, &r2, &ix2), None);
        let (r9, ix9) = rec(9, &h1);
        assert_eq!(check(&mut last, &r9, &ix9), None);
    }
}
