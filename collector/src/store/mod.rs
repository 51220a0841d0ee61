//! Durable storage of records: SQLite (one file, the default) or PostgreSQL
//! (`postgres://…`, for fleets), with the same tables. A batch is one
//! transaction, acknowledged only after it commits; inserting a (host,
//! sequence) that is already stored does nothing, which makes delivery
//! exactly-once across agent retries and collector restarts.
//!
//! - [`filter`]: indexed columns, auditors' filters as SQL, page tokens.
//! - [`sqlite`], [`postgres`]: the backends.

pub mod chain;
pub mod filter;
mod postgres;
pub mod retention;
mod sqlite;
pub mod stored_feed;

use std::path::Path;

use prost::Message;
use residency_proto::collector::v1::{HostState, HostSummary, Record, StoredRecord};

use filter::{Filter, Indexed, NEWEST_FIRST};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Per-host counters, kept in the same transaction as the records (so
/// ListHosts does not scan every record), and migrations' backfill of them.
const HOST_COUNTS_TABLE: &str = "CREATE TABLE host_counts (
        host TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        last_stored_ns BIGINT NOT NULL,
        violations BIGINT NOT NULL,
        gaps BIGINT NOT NULL,
        audits BIGINT NOT NULL
    );
    INSERT INTO host_counts
    SELECT host, MAX(seq), MAX(stored_ns),
        SUM(CASE WHEN kind = 'violation' THEN 1 ELSE 0 END),
        SUM(CASE WHEN kind = 'gap' THEN 1 ELSE 0 END),
        SUM(CASE WHEN kind = 'audit' THEN 1 ELSE 0 END)
    FROM records GROUP BY host;";

/// New records of one host in one batch, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewCounts {
    pub total: i64,
    pub last_seq: i64,
    pub violations: i64,
    pub gaps: i64,
    pub audits: i64,
}

impl NewCounts {
    fn add(&mut self, kind: &str, seq: i64) {
        self.total += 1;
        self.last_seq = self.last_seq.max(seq);
        match kind {
            "violation" => self.violations += 1,
            "gap" => self.gaps += 1,
            "audit" => self.audits += 1,
            _ => {}
        }
    }
}

/// Jumps in a host's sequence (see [`jumps`]); `explained_by` is the sequence
/// of the spool gap record that accounts for one (0: none yet).
const SEQUENCE_JUMPS_TABLE: &str = "CREATE TABLE sequence_jumps (
        host TEXT NOT NULL,
        from_seq BIGINT NOT NULL,
        to_seq BIGINT NOT NULL,
        stored_ns BIGINT NOT NULL,
        explained_by BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (host, from_seq)
    );";

/// The last fleet-wide or per-host mode command per (target, class): target
/// '' is every host, class '' every class. Replayed to a host that missed it
/// (see `Store::fleet_modes`).
const FLEET_MODES_TABLE: &str = "CREATE TABLE fleet_modes (
        target TEXT NOT NULL,
        class TEXT NOT NULL,
        mode TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        issued_ns BIGINT NOT NULL,
        PRIMARY KEY (target, class)
    );";

/// Keeps a fleet mode command ($1 target, $2 class, $3 mode, $4 actor,
/// $5 reason, $6 issued): a newer command for the same target and class
/// replaces it, and one for every class replaces that target's per-class
/// ones (`CLEAR_CLASS_MODES` first).
const PUT_FLEET_MODE: &str =
    "INSERT INTO fleet_modes (target, class, mode, actor, reason, issued_ns)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (target, class) DO UPDATE SET mode = excluded.mode, actor = excluded.actor,
      reason = excluded.reason, issued_ns = excluded.issued_ns";
const CLEAR_CLASS_MODES: &str = "DELETE FROM fleet_modes WHERE target = $1 AND class <> ''";

/// The fleet mode commands that apply to host $1.
const FLEET_MODES_FOR: &str = "SELECT target, class, mode, actor, reason, issued_ns
    FROM fleet_modes WHERE target = '' OR target = $1";

/// A fleet mode command as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetMode {
    /// '' for every host.
    pub target: String,
    /// '' for every class.
    pub class: String,
    pub mode: String,
    pub actor: String,
    pub reason: String,
    pub issued_ns: i64,
}

/// Which kept commands a host missed: for each of its classes, the newest
/// command that applies, if it is newer than the mode the host reports and
/// says otherwise. Returns (class, command).
pub fn missed_modes(
    kept: &[FleetMode],
    state: &residency_proto::collector::v1::HostState,
) -> Vec<(String, FleetMode)> {
    state
        .modes
        .iter()
        .filter_map(|m| {
            let newest = kept
                .iter()
                .filter(|k| k.class.is_empty() || k.class == m.class)
                .max_by_key(|k| k.issued_ns)?;
            (newest.issued_ns > m.set_unix_ns && newest.mode != m.mode)
                .then(|| (m.class.clone(), newest.clone()))
        })
        .collect()
}

/// Records a jump (the same statement text on both backends, with `$n`
/// turned into the backend's placeholders).
const INSERT_JUMP: &str = "INSERT INTO sequence_jumps (host, from_seq, to_seq, stored_ns)
    VALUES ($1, $2, $3, $4) ON CONFLICT (host, from_seq) DO NOTHING";

/// Marks jumps a spool gap record (sequence $2) covers ($3..=$4) explained.
const EXPLAIN_JUMPS: &str = "UPDATE sequence_jumps SET explained_by = $2
    WHERE host = $1 AND explained_by = 0 AND from_seq >= $3 AND to_seq <= $4";

/// Sequences `from..=to` of a host that were skipped: never stored, and
/// beyond what was stored before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Jump {
    pub from: i64,
    pub to: i64,
}

/// The jumps the newly stored sequences `new` make past `last` (the host's
/// highest stored sequence before them). Sequences below `last` fill in and
/// are no jump.
pub(crate) fn jumps(last: i64, new: &[i64]) -> Vec<Jump> {
    let mut sorted: Vec<i64> = new.iter().copied().filter(|s| *s > last).collect();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut expect = last + 1;
    for s in sorted {
        if s > expect {
            out.push(Jump {
                from: expect,
                to: s - 1,
            });
        }
        expect = expect.max(s + 1);
    }
    out
}

/// `jumps` past the host's highest stored sequence, or, for a host with none
/// stored yet, past the first new one (a spool that starts beyond 1, because
/// an earlier collector acknowledged what came before, is no jump).
pub(crate) fn jumps_after(stored: Option<i64>, new: &[i64]) -> Vec<Jump> {
    let base = stored.or_else(|| new.iter().min().map(|m| m - 1));
    base.map_or_else(Vec::new, |b| jumps(b, new))
}

/// The ranges the agent's spool gap records among `records` account for
/// (any gap record from the spool with a sequence range):
/// (gap record's sequence, first, last).
pub(crate) fn spool_gaps(records: &[(Record, Indexed)]) -> Vec<(i64, i64, i64)> {
    use residency_proto::collector::v1::{GapSource as S, record::Body};
    records
        .iter()
        .filter_map(|(r, _)| match &r.body {
            Some(Body::Gap(g))
                if g.first_seq > 0
                    && matches!(
                        g.source(),
                        S::SpoolFull
                            | S::SpoolWrite
                            | S::SpoolDamage
                            | S::SpoolTorn
                            | S::SpoolLost
                            | S::Undeliverable
                    ) =>
            {
                Some((r.seq as i64, g.first_seq as i64, g.last_seq as i64))
            }
            _ => None,
        })
        .collect()
}

/// Rows converted per step when a database from before typed records is
/// migrated.
const CONVERT_BATCH: usize = 10_000;

/// The typed record and columns of a row stored before records were typed.
pub(crate) fn legacy_row(seq: i64, kind: &str, time_ns: i64, body: &str) -> Indexed {
    Indexed::of(&residency_proto::legacy::record(
        seq as u64, kind, time_ns, body,
    ))
}

/// A stored row (`host, seq, time_ns, record, chain`) as returned to
/// clients: the record with the row's sequence and chain hash. A record
/// that no longer decodes is returned with its sequence and time and no
/// body (listed as kind "unknown"), never left out.
pub(crate) fn stored(
    host: String,
    seq: i64,
    time_ns: i64,
    encoded: &[u8],
    chain: Option<Vec<u8>>,
) -> StoredRecord {
    let mut record = Record::decode(encoded).unwrap_or_else(|e| {
        tracing::warn!(host, seq, error = %e, "a stored record does not decode; returned without its body");
        Record {
            seq: seq as u64,
            time_unix_ns: time_ns,
            body: None,
            chain: Vec::new(),
        }
    });
    record.seq = seq as u64;
    record.chain = chain.unwrap_or_default();
    StoredRecord {
        host_id: host,
        record: Some(record),
    }
}

/// Per host: its counters, unexplained jumps, and the state it last reported.
const HOSTS_SQL: &str = "SELECT a.host,
        COALESCE(c.last_stored_ns, 0), COALESCE(c.last_seq, 0),
        COALESCE(c.violations, 0), COALESCE(c.gaps, 0), COALESCE(c.audits, 0),
        h.state, h.state_ns,
        (SELECT COUNT(*) FROM sequence_jumps j WHERE j.host = a.host AND j.explained_by = 0),
        c.chain_head,
        (SELECT COUNT(*) FROM chain_breaks b WHERE b.host = a.host)
    FROM (SELECT host FROM host_counts UNION SELECT host FROM hosts) AS a
    LEFT JOIN host_counts c ON c.host = a.host
    LEFT JOIN hosts h ON h.host = a.host
    ORDER BY a.host";

/// One row of [`HOSTS_SQL`].
pub(crate) struct HostRow {
    host: String,
    last_seen_ns: i64,
    last_seq: i64,
    violations: i64,
    gaps: i64,
    audits: i64,
    state: Option<Vec<u8>>,
    state_ns: Option<i64>,
    unexplained_jumps: i64,
    chain_head: Option<Vec<u8>>,
    chain_breaks: i64,
}

/// The migration that adds each record's workload columns (empty for rows
/// stored before it: no agent sent a workload then).
pub(crate) const WORKLOAD_COLUMNS: &str =
    "ALTER TABLE records ADD COLUMN unit TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN container TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN pod TEXT NOT NULL DEFAULT '';";

/// The migration that adds each record's names (the resolved name and its
/// CNAME chain; empty for rows stored before it: no agent sent names then).
pub(crate) const NAMES_COLUMN: &str =
    "ALTER TABLE records ADD COLUMN names TEXT NOT NULL DEFAULT '';";

/// Where each forwarding sink stands per host (the last sequence it
/// delivered): forwarding is at-least-once and survives restarts.
pub(crate) const FORWARD_CURSORS_TABLE: &str = "CREATE TABLE forward_cursors (
        sink TEXT NOT NULL,
        host TEXT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (sink, host)
    );";

/// Hosts with records past sink $1's cursor: host, cursor, last sequence.
pub(crate) const FORWARD_PENDING: &str = "SELECT h.host, COALESCE(f.seq, 0), h.last_seq
    FROM host_counts h LEFT JOIN forward_cursors f ON f.sink = $1 AND f.host = h.host
    WHERE h.last_seq > COALESCE(f.seq, 0) ORDER BY h.host";

/// Moves sink $1's cursor for host $2 to $3.
pub(crate) const SET_FORWARD_CURSOR: &str =
    "INSERT INTO forward_cursors (sink, host, seq) VALUES ($1, $2, $3)
    ON CONFLICT (sink, host) DO UPDATE SET seq = excluded.seq";

/// Records counted by [`Store::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRow {
    pub bucket_ns: i64,
    /// As stored: ";eu;health;".
    pub classes: String,
    pub country: String,
    pub count: i64,
}

/// The counting query over a filter's `WHERE` clause. The bucket width is
/// a number this process computed, written into the SQL (not user text).
fn stats_sql(clause: &str, bucket_ns: i64) -> String {
    let bucket = if bucket_ns > 0 {
        format!("time_ns - (time_ns % {bucket_ns})")
    } else {
        "0".into()
    };
    format!(
        "SELECT {bucket} AS bucket, classes, country, COUNT(*) FROM records WHERE {clause} GROUP BY 1, 2, 3 ORDER BY 1"
    )
}

/// The store.
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Whether a `--database` value names a PostgreSQL server.
pub fn is_postgres(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

impl Store {
    /// Opens (creating and migrating) the database `spec`: a postgres:// URL,
    /// or a SQLite file path.
    pub async fn open(spec: &str) -> Result<Store, StoreError> {
        if is_postgres(spec) {
            Ok(Store::Postgres(postgres::Postgres::open(spec).await?))
        } else {
            Ok(Store::Sqlite(sqlite::Sqlite::open(Path::new(spec))?))
        }
    }

    /// `n` more connections to the same database for more writers
    /// (PostgreSQL; none for SQLite, which takes one writer at a time).
    pub async fn more_writers(&self, n: usize) -> Result<Vec<Store>, StoreError> {
        let mut out = Vec::new();
        if let Store::Postgres(p) = self {
            for _ in 0..n {
                out.push(Store::Postgres(p.sibling().await?));
            }
        }
        Ok(out)
    }

    /// Where other replicas' records are announced, for a PostgreSQL store
    /// (its URL, and this collector's origin in the announcements); `None`
    /// for SQLite, which one collector holds alone.
    pub fn feed(&self) -> Option<(String, String)> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(p) => Some(p.feed()),
        }
    }

    /// Highest sequence stored for `host` (0: none).
    pub async fn last_seq(&mut self, host: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.last_seq(host),
            Store::Postgres(p) => p.last_seq(host).await,
        }
    }

    /// The highest sequence the collector counted as stored for `host`
    /// when it stored it (kept apart from the records: the stored chain
    /// must reach it); None: no record of the host was ever stored.
    pub async fn counted_last_seq(&mut self, host: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.counted_last_seq(host),
            Store::Postgres(p) => p.counted_last_seq(host).await,
        }
    }

    /// Stores a batch in one transaction; returns how many were new.
    pub async fn insert(
        &mut self,
        host: &str,
        records: &[(Record, Indexed)],
    ) -> Result<usize, StoreError> {
        Ok(self
            .insert_group(&[(host, records)])
            .await?
            .iter()
            .map(Vec::len)
            .sum())
    }

    /// Stores batches of several hosts in one transaction (group commit: one
    /// fsync for all of them); returns the sequences of each that were new
    /// (the rest were stored before).
    pub async fn insert_group(
        &mut self,
        groups: &[(&str, &[(Record, Indexed)])],
    ) -> Result<Vec<Vec<i64>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert(groups),
            Store::Postgres(p) => p.insert(groups).await,
        }
    }

    async fn select(
        &mut self,
        filter: &Filter,
        order: &str,
        limit: Option<u32>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.select(filter, order, limit),
            Store::Postgres(p) => p.select(filter, order, limit).await,
        }
    }

    /// Hosts with records sink `sink` has not forwarded: (host, cursor,
    /// last sequence stored).
    pub async fn forward_pending(
        &mut self,
        sink: &str,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.forward_pending(sink),
            Store::Postgres(p) => p.forward_pending(sink).await,
        }
    }

    /// Sink `sink` delivered `host`'s records up to `seq`.
    pub async fn set_forward_cursor(
        &mut self,
        sink: &str,
        host: &str,
        seq: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.set_forward_cursor(sink, host, seq),
            Store::Postgres(p) => p.set_forward_cursor(sink, host, seq).await,
        }
    }

    /// Up to `limit` records of `host` after sequence `after`, in sequence
    /// order, decoded (for forwarding).
    pub async fn records_after(
        &mut self,
        host: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = self.chain_rows(host, after, i64::MAX, limit, "").await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| residency_proto::chain::decode_stored(r.seq as u64, &r.record))
            .collect())
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping(),
            Store::Postgres(p) => p.ping().await,
        }
    }

    /// Matching records counted per time bucket (`bucket_ns`; 0: one
    /// bucket), class set and country.
    pub async fn stats(
        &mut self,
        filter: &Filter,
        bucket_ns: i64,
    ) -> Result<Vec<StatsRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.stats(filter, bucket_ns),
            Store::Postgres(p) => p.stats(filter, bucket_ns).await,
        }
    }

    /// One page of matching records, newest first.
    pub async fn page(
        &mut self,
        filter: &Filter,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.select(filter, NEWEST_FIRST, Some(limit)).await
    }

    /// Every matching record, by host and sequence (for exports and checks).
    pub async fn all(&mut self, filter: &Filter) -> Result<Vec<StoredRecord>, StoreError> {
        self.select(filter, "host, seq", None).await
    }

    /// Up to `limit` rows of `host` after sequence `after` up to `upto`, of
    /// `kind` ("": all), in sequence order, as stored (for chain checks and
    /// bundles).
    pub(crate) async fn chain_rows(
        &mut self,
        host: &str,
        after: i64,
        upto: i64,
        limit: i64,
        kind: &str,
    ) -> Result<Vec<chain::StoredRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.chain_rows(host, after, upto, limit, kind),
            Store::Postgres(p) => p.chain_rows(host, after, upto, limit, kind).await,
        }
    }

    /// The first and last sequence of `host`'s records in [since, until)
    /// by time (None: no record there).
    pub(crate) async fn seq_range(
        &mut self,
        host: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.seq_range(host, since, until),
            Store::Postgres(p) => p.seq_range(host, since, until).await,
        }
    }

    /// The sequence and chain hash of `host`'s row just before `seq`.
    pub(crate) async fn row_before(
        &mut self,
        host: &str,
        seq: i64,
    ) -> Result<Option<chain::SeqChain>, StoreError> {
        match self {
            Store::Sqlite(s) => s.row_before(host, seq),
            Store::Postgres(p) => p.row_before(host, seq).await,
        }
    }

    /// The breaks kept at ingest for `host`'s sequences `from..=to`.
    pub(crate) async fn chain_breaks(
        &mut self,
        host: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<chain::Break>, StoreError> {
        match self {
            Store::Sqlite(s) => s.chain_breaks(host, from, to),
            Store::Postgres(p) => p.chain_breaks(host, from, to).await,
        }
    }

    /// Remembers what a host last reported about itself.
    pub async fn put_state(&mut self, host: &str, state: &HostState) -> Result<(), StoreError> {
        let bytes = state.encode_to_vec();
        match self {
            Store::Sqlite(s) => s.put_state(host, &bytes),
            Store::Postgres(p) => p.put_state(host, &bytes).await,
        }
    }

    /// Every host that delivered records or reported its state.
    /// Keeps a fleet mode command (replacing older ones it covers).
    pub async fn put_fleet_mode(&mut self, m: &FleetMode) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_fleet_mode(m),
            Store::Postgres(p) => p.put_fleet_mode(m).await,
        }
    }

    /// The fleet mode commands that apply to `host`.
    pub async fn fleet_modes(&mut self, host: &str) -> Result<Vec<FleetMode>, StoreError> {
        match self {
            Store::Sqlite(s) => s.fleet_modes(host),
            Store::Postgres(p) => p.fleet_modes(host).await,
        }
    }

    pub async fn hosts(&mut self) -> Result<Vec<HostSummary>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.hosts()?,
            Store::Postgres(p) => p.hosts().await?,
        };
        Ok(rows
            .into_iter()
            .map(|r| HostSummary {
                host_id: r.host,
                last_seen_unix_ns: r.last_seen_ns.max(r.state_ns.unwrap_or(0)),
                last_seq: r.last_seq as u64,
                violations: r.violations as u64,
                gaps: r.gaps as u64,
                audits: r.audits as u64,
                unexplained_jumps: r.unexplained_jumps as u64,
                chain_breaks: r.chain_breaks as u64,
                chain_head: r.chain_head.unwrap_or_default(),
                connected: false,
                last_attestation: None,
                last_verify: None,
                state: r.state.and_then(|b| HostState::decode(b.as_slice()).ok()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use residency_proto::collector::v1::record;

    fn rec(seq: u64) -> (Record, Indexed) {
        let r = Record {
            seq,
            time_unix_ns: seq as i64,
            body: Some(record::Body::Violation(residency_proto::agent::v1::Flow {
                cookie: seq,
                classes: vec!["eu".into()],
                ..Default::default()
            })),
            chain: Vec::new(),
        };
        let ix = Indexed::of(&r);
        (r, ix)
    }

    #[tokio::test]
    async fn violations_are_found_by_unit_container_prefix_and_pod() {
        use residency_proto::agent::v1::Workload;
        let dir = std::env::temp_dir().join(format!("rs-store-workload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = Store::open(dir.join("c.db").to_str().unwrap())
            .await
            .unwrap();
        let with = |seq: u64, unit: &str, container: &str, pod: &str| {
            let (mut r, _) = rec(seq);
            if let Some(record::Body::Violation(f)) = &mut r.body {
                f.workload = Some(Workload {
                    unit: unit.into(),
                    container_id: container.into(),
                    pod_uid: pod.into(),
                    ..Default::default()
                });
            }
            let ix = Indexed::of(&r);
            (r, ix)
        };
        let rows = vec![
            with(1, "billing.service", "", ""),
            with(2, "cri-containerd-abc123.scope", "abc123ff", "pod-1"),
            with(3, "", "abd999", ""),
            rec(4),
        ];
        store.insert("h", &rows).await.unwrap();
        async fn find(store: &mut Store, f: Filter) -> Vec<u64> {
            let mut seqs: Vec<u64> = store
                .page(&f, 100)
                .await
                .unwrap()
                .iter()
                .map(|s| s.seq())
                .collect();
            seqs.sort();
            seqs
        }
        let q = |unit: &str, container: &str, pod: &str| {
            Filter::violations(&residency_proto::collector::v1::ViolationQuery {
                unit: unit.into(),
                container: container.into(),
                pod: pod.into(),
                ..Default::default()
            })
            .unwrap()
        };
        assert_eq!(
            find(&mut store, q("billing.service", "", "")).await,
            vec![1]
        );
        assert_eq!(find(&mut store, q("", "ab", "")).await, vec![2, 3]);
        assert_eq!(
            find(&mut store, q("", "ABC", "")).await,
            vec![2],
            "ids are matched in lower case"
        );
        assert_eq!(find(&mut store, q("", "", "pod-1")).await, vec![2]);
        assert_eq!(
            find(&mut store, q("", "a%", "")).await,
            Vec::<u64>::new(),
            "no wildcards"
        );
        // The watch filter agrees with the SQL one.
        let f = q("", "abd", "");
        let hits: Vec<u64> = rows
            .iter()
            .filter(|(r, ix)| f.matches("h", r, ix))
            .map(|(r, _)| r.seq)
            .collect();
        assert_eq!(hits, vec![3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn idempotent_by_host_and_sequence_across_reopen_with_pages() {
        let path = std::env::temp_dir().join(format!("rs-collector-{}.db", std::process::id()));
        let spec = path.to_str().unwrap().to_owned();
        let _ = std::fs::remove_file(&path);
        {
            let mut s = Store::open(&spec).await.unwrap();
            assert_eq!(s.last_seq("a").await.unwrap(), 0);
            assert_eq!(s.insert("a", &[rec(1), rec(2), rec(3)]).await.unwrap(), 3);
            assert_eq!(
                s.insert("a", &[rec(2), rec(3), rec(4)]).await.unwrap(),
                1,
                "re-sent records are ignored"
            );
            assert_eq!(
                s.insert("b", &[rec(1)]).await.unwrap(),
                1,
                "sequences are per host"
            );
            s.put_state(
                "c",
                &HostState {
                    policy_sha256: "ab".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        let mut s = Store::open(&spec).await.unwrap();
        assert_eq!(s.last_seq("a").await.unwrap(), 4);
        let hosts = s.hosts().await.unwrap();
        assert_eq!(
            hosts
                .iter()
                .map(|h| (h.host_id.as_str(), h.last_seq, h.violations))
                .collect::<Vec<_>>(),
            vec![("a", 4, 4), ("b", 1, 1), ("c", 0, 0)]
        );
        assert!(hosts[0].last_seen_unix_ns > 0);
        assert_eq!(hosts[2].state.as_ref().unwrap().policy_sha256, "ab");
        // Pages of two, newest first, never overlapping: a4 a3 | b1? no: by time.
        let mut f = Filter {
            class: Some("eu".into()),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = s.page(&f, 2).await.unwrap();
            seen.extend(page.iter().map(|r| (r.host_id.clone(), r.seq())));
            let Some(last) = page.last().filter(|_| page.len() == 2) else {
                break;
            };
            f.after = Some(filter::Cursor {
                time_ns: last.time_unix_ns(),
                host: last.host_id.clone(),
                seq: last.seq() as i64,
            });
        }
        let want: Vec<(String, u64)> = [("a", 4), ("a", 3), ("a", 2), ("b", 1), ("a", 1)]
            .iter()
            .map(|(h, s)| (h.to_string(), *s))
            .collect();
        assert_eq!(seen, want);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn jumps_are_the_sequences_skipped_past_the_last_stored() {
        assert_eq!(jumps(0, &[1, 2, 3]), vec![]);
        assert_eq!(jumps(2, &[5, 3]), vec![Jump { from: 4, to: 4 }]);
        assert_eq!(
            jumps(10, &[1_000_000_000, 11]),
            vec![Jump {
                from: 12,
                to: 999_999_999
            }]
        );
        assert_eq!(jumps(100, &[50, 60]), vec![], "filling in below is no jump");
        assert_eq!(
            jumps_after(None, &[501, 502]),
            vec![],
            "a first delivery from 501"
        );
        assert_eq!(jumps_after(None, &[1, 2, 5]), vec![Jump { from: 3, to: 4 }]);
    }

    #[tokio::test]
    async fn an_unexplained_jump_shows_until_a_spool_gap_accounts_for_it() {
        let path = std::env::temp_dir().join(format!("rs-jumps-{}.db", std::process::id()));
        let spec = path.to_str().unwrap().to_owned();
        let _ = std::fs::remove_file(&path);
        let mut s = Store::open(&spec).await.unwrap();
        s.insert("a", &[rec(1), rec(2), rec(5)]).await.unwrap();
        let jumps = |h: &[HostSummary]| h[0].unexplained_jumps;
        assert_eq!(jumps(&s.hosts().await.unwrap()), 1, "3..=4 never came");
        let gap = Record {
            seq: 6,
            time_unix_ns: 6,
            body: Some(record::Body::Gap(residency_proto::collector::v1::Gap {
                source: residency_proto::collector::v1::GapSource::SpoolFull as i32,
                count: 2,
                first_seq: 3,
                last_seq: 4,
                ..Default::default()
            })),
            chain: Vec::new(),
        };
        let ix = Indexed::of(&gap);
        s.insert("a", &[(gap, ix)]).await.unwrap();
        assert_eq!(
            jumps(&s.hosts().await.unwrap()),
            0,
            "the spool dropped them"
        );
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn a_missed_fleet_mode_is_replayed_only_if_newer_and_different() {
        use residency_proto::collector::v1::ClassModeState;
        let kept = |target: &str, class: &str, mode: &str, at: i64| FleetMode {
            target: target.into(),
            class: class.into(),
            mode: mode.into(),
            actor: "ops".into(),
            reason: "r".into(),
            issued_ns: at,
        };
        let state = |modes: &[(&str, &str, i64)]| HostState {
            modes: modes
                .iter()
                .map(|(c, m, at)| ClassModeState {
                    class: (*c).into(),
                    mode: (*m).into(),
                    set_unix_ns: *at,
                })
                .collect(),
            ..Default::default()
        };
        let all = [kept("", "", "enforce", 100)];
        let missed = missed_modes(&all, &state(&[("eu", "monitor", 0), ("hr", "enforce", 0)]));
        assert_eq!(
            missed
                .iter()
                .map(|(c, m)| (c.as_str(), m.mode.as_str()))
                .collect::<Vec<_>>(),
            vec![("eu", "enforce")],
            "hr is in that mode already"
        );
        assert!(
            missed_modes(&all, &state(&[("eu", "monitor", 200)])).is_empty(),
            "changed on the host after the command"
        );
        let newest_wins = [kept("", "", "enforce", 100), kept("h", "eu", "off", 150)];
        assert_eq!(
            missed_modes(&newest_wins, &state(&[("eu", "monitor", 0)]))[0]
                .1
                .mode,
            "off"
        );
    }
}
