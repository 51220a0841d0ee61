//! SQLite storage (the default): one file, WAL mode, `synchronous = FULL`, so a
//! batch's commit has reached the disk before it is acknowledged.

use std::path::Path;

use residency_proto::collector::v1::{Record, StoredRecord};
use rusqlite::{
    Connection, OptionalExtension, ToSql, params, params_from_iter, types::ToSqlOutput,
};

use super::{
    HostRow, NewCounts, StoreError,
    filter::{Filter, Indexed, Param},
    now_ns,
};

/// Schema migrations, applied in order; `PRAGMA user_version` says how many
/// ran. Number 2 also fills the new columns of rows stored before it; number 3
/// adds per-host counters, counted from the records already stored; number 6
/// converts every row's JSON body into the encoded typed record.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE records (
        host TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        body TEXT NOT NULL,
        stored_ns INTEGER NOT NULL,
        PRIMARY KEY (host, seq)
    );
    CREATE INDEX records_kind_time ON records (kind, time_ns);",
    "ALTER TABLE records ADD COLUMN classes TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN country TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN remote BLOB NOT NULL DEFAULT x'';
    ALTER TABLE records ADD COLUMN exe TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN action TEXT NOT NULL DEFAULT '';
    CREATE TABLE hosts (
        host TEXT PRIMARY KEY,
        state BLOB NOT NULL,
        state_ns INTEGER NOT NULL
    );",
    super::HOST_COUNTS_TABLE,
    super::SEQUENCE_JUMPS_TABLE,
    super::FLEET_MODES_TABLE,
    ADD_RECORD,
    super::chain::CHAIN_TABLES_SQLITE,
    super::WORKLOAD_COLUMNS,
    super::FORWARD_CURSORS_TABLE,
    super::NAMES_COLUMN,
    super::retention::RETENTION_TABLE_SQLITE,
];

/// The migration that adds the encoded typed record to every row: rows
/// stored before it hold JSON in `body` and are converted
/// ([`convert_legacy`]); later rows have `record` and an empty `body`.
const ADD_RECORD: &str = "ALTER TABLE records ADD COLUMN record BLOB;";

impl ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Param::Text(s) => s.to_sql(),
            Param::Int(i) => i.to_sql(),
            Param::Bytes(b) => b.to_sql(),
        }
    }
}

/// A row of `SELECT host, seq, time_ns, record, chain`.
fn stored_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let encoded: Vec<u8> = r.get(3)?;
    Ok(super::stored(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        &encoded,
        r.get(4)?,
    ))
}

/// The SQLite store.
pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let conn = Connection::open(path)?;
        // WAL: readers do not block the writer; FULL sync: a commit survives a
        // power loss before it is acknowledged.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(m)?;
            if i == 1 {
                backfill(&tx)?;
            }
            if *m == ADD_RECORD {
                convert_legacy(&tx)?;
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Sqlite { conn })
    }

    pub fn last_seq(&self, host: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT MAX(seq) FROM records WHERE host = ?1",
            params![host],
            |r| r.get(0),
        )?;
        Ok(v.unwrap_or(0) as u64)
    }

    pub fn counted_last_seq(&self, host: &str) -> Result<Option<u64>, StoreError> {
        use rusqlite::OptionalExtension;
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT last_seq FROM host_counts WHERE host = ?1",
                params![host],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map(|v| v as u64))
    }

    /// Stores batches of several hosts in one transaction (group commit);
    /// returns how many records of each were new.
    pub fn insert(
        &mut self,
        groups: &[(&str, &[(Record, Indexed)])],
    ) -> Result<Vec<Vec<i64>>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut counts = Vec::with_capacity(groups.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO records (host, seq, kind, time_ns, body, stored_ns, classes, country, remote, exe, action, record, chain, unit, container, pod, names)
                 VALUES (?1, ?2, ?3, ?4, '', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) ON CONFLICT (host, seq) DO NOTHING",
            )?;
            let mut bump = tx.prepare_cached(
                "INSERT INTO host_counts (host, last_seq, last_stored_ns, violations, gaps, audits, chain_head)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (host) DO UPDATE SET
                   chain_head = CASE WHEN excluded.last_seq >= host_counts.last_seq
                     THEN excluded.chain_head ELSE host_counts.chain_head END,
                   last_seq = MAX(last_seq, excluded.last_seq),
                   last_stored_ns = excluded.last_stored_ns,
                   violations = violations + excluded.violations,
                   gaps = gaps + excluded.gaps,
                   audits = audits + excluded.audits",
            )?;
            let mut last_of =
                tx.prepare_cached("SELECT last_seq, chain_head FROM host_counts WHERE host = ?1")?;
            let mut broke = tx.prepare_cached(&super::chain::INSERT_BREAK.replace('$', "?"))?;
            let mut jump = tx.prepare_cached(&super::INSERT_JUMP.replace('$', "?"))?;
            let mut explain = tx.prepare_cached(&super::EXPLAIN_JUMPS.replace('$', "?"))?;
            let stored = now_ns();
            for (host, records) in groups {
                // None: the host's first records here (a spool that starts
                // past 1 is no jump).
                let (last, mut link): (Option<i64>, super::chain::Last) = last_of
                    .query_row(params![host], |r| {
                        let (seq, head): (i64, Option<Vec<u8>>) = (r.get(0)?, r.get(1)?);
                        Ok((Some(seq), Some((seq, head.unwrap_or_default()))))
                    })
                    .optional()?
                    .unwrap_or((None, None));
                let mut new = NewCounts::default();
                let mut new_seqs = Vec::new();
                for (r, ix) in *records {
                    let n = stmt.execute(params![
                        host,
                        r.seq as i64,
                        ix.kind,
                        r.time_unix_ns,
                        stored,
                        ix.classes,
                        ix.country,
                        ix.remote,
                        ix.exe,
                        ix.action,
                        ix.encoded,
                        (!ix.chain.is_empty()).then_some(&ix.chain),
                        ix.unit,
                        ix.container,
                        ix.pod,
                        ix.names
                    ])?;
                    if n == 1 {
                        new.add(ix.kind, r.seq as i64);
                        new_seqs.push(r.seq as i64);
                        if let Some(b) = super::chain::check(&mut link, r, ix) {
                            broke.execute(params![host, b.seq, b.expected, b.found, stored])?;
                        }
                    }
                }
                for j in super::jumps_after(last, &new_seqs) {
                    jump.execute(params![host, j.from, j.to, stored])?;
                }
                for (seq, first, last) in super::spool_gaps(records) {
                    explain.execute(params![host, seq, first, last])?;
                }
                if new.total > 0 {
                    bump.execute(params![
                        host,
                        new.last_seq,
                        stored,
                        new.violations,
                        new.gaps,
                        new.audits,
                        link.as_ref()
                            .filter(|(s, c)| *s == new.last_seq && !c.is_empty())
                            .map(|(_, c)| c)
                    ])?;
                }
                counts.push(new_seqs);
            }
        }
        tx.commit()?;
        Ok(counts)
    }

    pub fn select(
        &self,
        filter: &Filter,
        order: &str,
        limit: Option<u32>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let (clause, params) = filter.sql(|n| format!("?{n}"));
        let limit = limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT host, seq, time_ns, record, chain FROM records WHERE {clause} ORDER BY {order}{limit}"
        ))?;
        let rows = stmt.query_map(params_from_iter(params.iter()), stored_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn forward_pending(&self, sink: &str) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::FORWARD_PENDING.replace('$', "?"))?;
        let rows = stmt.query_map(params![sink], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_forward_cursor(&self, sink: &str, host: &str, seq: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&super::SET_FORWARD_CURSOR.replace('$', "?"))?
            .execute(params![sink, host, seq])?;
        Ok(())
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn stats(
        &self,
        filter: &Filter,
        bucket_ns: i64,
    ) -> Result<Vec<super::StatsRow>, StoreError> {
        let (clause, params) = filter.sql(|n| format!("?{n}"));
        let mut stmt = self
            .conn
            .prepare_cached(&super::stats_sql(&clause, bucket_ns))?;
        let rows = stmt.query_map(params_from_iter(params.iter()), |r| {
            Ok(super::StatsRow {
                bucket_ns: r.get(0)?,
                classes: r.get(1)?,
                country: r.get(2)?,
                count: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_fleet_mode(&mut self, m: &super::FleetMode) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if m.class.is_empty() {
            tx.execute(
                &super::CLEAR_CLASS_MODES.replace('$', "?"),
                params![m.target],
            )?;
        }
        tx.execute(
            &super::PUT_FLEET_MODE.replace('$', "?"),
            params![m.target, m.class, m.mode, m.actor, m.reason, m.issued_ns],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn fleet_modes(&self, host: &str) -> Result<Vec<super::FleetMode>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::FLEET_MODES_FOR.replace('$', "?"))?;
        let rows = stmt.query_map(params![host], |r| {
            Ok(super::FleetMode {
                target: r.get(0)?,
                class: r.get(1)?,
                mode: r.get(2)?,
                actor: r.get(3)?,
                reason: r.get(4)?,
                issued_ns: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_state(&self, host: &str, state: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO hosts (host, state, state_ns) VALUES (?1, ?2, ?3)
             ON CONFLICT (host) DO UPDATE SET state = excluded.state, state_ns = excluded.state_ns",
            params![host, state, now_ns()],
        )?;
        Ok(())
    }

    pub(crate) fn hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(super::HOSTS_SQL)?;
        let rows = stmt.query_map([], |r| {
            Ok(HostRow {
                host: r.get(0)?,
                last_seen_ns: r.get(1)?,
                last_seq: r.get(2)?,
                violations: r.get(3)?,
                gaps: r.get(4)?,
                audits: r.get(5)?,
                state: r.get(6)?,
                state_ns: r.get(7)?,
                unexplained_jumps: r.get(8)?,
                chain_head: r.get(9)?,
                chain_breaks: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn seq_range(
        &self,
        host: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::chain::SEQ_RANGE.replace('$', "?"))?;
        let (lo, hi): (Option<i64>, Option<i64>) =
            stmt.query_row(params![host, since, until], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(lo.zip(hi))
    }

    pub(crate) fn chain_rows(
        &self,
        host: &str,
        after: i64,
        upto: i64,
        limit: i64,
        kind: &str,
    ) -> Result<Vec<super::chain::StoredRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::chain::CHAIN_ROWS.replace('$', "?"))?;
        let rows = stmt.query_map(params![host, after, upto, limit, kind], |r| {
            Ok(super::chain::StoredRow {
                seq: r.get(0)?,
                time_ns: r.get(1)?,
                kind: r.get(2)?,
                classes: r.get(3)?,
                country: r.get(4)?,
                remote: r.get(5)?,
                exe: r.get(6)?,
                action: r.get(7)?,
                record: r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default(),
                chain: r.get(9)?,
                unit: r.get(10)?,
                container: r.get(11)?,
                pod: r.get(12)?,
                names: r.get(13)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What retention removed of `host` (see `retention`).
    pub(crate) fn retained(
        &self,
        host: &str,
    ) -> Result<Option<super::retention::Retained>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::retention::RETAINED.replace('$', "?"))?;
        Ok(stmt
            .query_row(params![host], |r| {
                Ok(super::retention::Retained {
                    upto_seq: r.get::<_, i64>(0)? as u64,
                    chain: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    removed: r.get::<_, i64>(2)? as u64,
                    at_ns: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// The first column of every row of `sql` (no parameters).
    pub(crate) fn strings(&self, sql: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The one integer `sql` answers (None: NULL).
    pub(crate) fn one_int(&self, sql: &str, p: &[Param]) -> Result<Option<i64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&sql.replace('$', "?"))?;
        Ok(stmt.query_row(rusqlite::params_from_iter(p), |r| r.get(0))?)
    }

    /// Runs `steps` (each with how many of `p` it takes) in one transaction.
    pub(crate) fn script(
        &mut self,
        steps: &[(&str, usize)],
        p: &[Param],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (sql, n) in steps {
            tx.execute(&sql.replace('$', "?"), rusqlite::params_from_iter(&p[..*n]))?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn row_before(
        &self,
        host: &str,
        seq: i64,
    ) -> Result<Option<super::chain::SeqChain>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::chain::ROW_BEFORE.replace('$', "?"))?;
        Ok(stmt
            .query_row(params![host, seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub(crate) fn chain_breaks(
        &self,
        host: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<super::chain::Break>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&super::chain::BREAKS.replace('$', "?"))?;
        let rows = stmt.query_map(params![host, from, to], |r| {
            Ok(super::chain::Break {
                seq: r.get(0)?,
                expected: r.get(1)?,
                found: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Rows stored before records were typed (those `where_` selects), each
/// with its typed record and columns.
fn legacy_rows(
    tx: &rusqlite::Transaction<'_>,
    where_: &str,
) -> Result<Vec<(String, i64, Indexed)>, StoreError> {
    let mut stmt = tx.prepare(&format!(
        "SELECT host, seq, kind, time_ns, body FROM records WHERE {where_}"
    ))?;
    let rows = stmt.query_map([], |r| {
        let (seq, kind, time_ns, body): (i64, String, i64, String) =
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        Ok((
            r.get(0)?,
            seq,
            super::legacy_row(seq, &kind, time_ns, &body),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Fills the searchable columns of rows stored before they existed.
fn backfill(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let mut stmt = tx.prepare(
        "UPDATE records SET classes = ?3, country = ?4, remote = ?5, exe = ?6, action = ?7 WHERE host = ?1 AND seq = ?2",
    )?;
    for (host, seq, ix) in legacy_rows(tx, "TRUE")? {
        stmt.execute(params![
            host, seq, ix.classes, ix.country, ix.remote, ix.exe, ix.action
        ])?;
    }
    Ok(())
}

/// Converts the JSON body of rows stored before records were typed into the
/// encoded record (and its columns).
fn convert_legacy(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let mut stmt = tx.prepare(
        "UPDATE records SET record = ?3, action = ?4, body = '' WHERE host = ?1 AND seq = ?2",
    )?;
    // A batch at a time (a converted row leaves the selection), so a large
    // database is not held in memory at once.
    let batch = format!("record IS NULL LIMIT {}", super::CONVERT_BATCH);
    loop {
        let rows = legacy_rows(tx, &batch)?;
        if rows.is_empty() {
            return Ok(());
        }
        for (host, seq, ix) in rows {
            stmt.execute(params![host, seq, ix.encoded, ix.action])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_one_databases_are_migrated_and_backfilled() {
        let path = std::env::temp_dir().join(format!("rs-collector-mig-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO records VALUES ('h', 1, 'violation', 5, ?1, 6)",
                params![r#"{"classes":["eu"],"remote":"203.0.113.9:443","remote_country":"US","action":"denied"}"#],
            )
            .unwrap();
        }
        let s = Sqlite::open(&path).unwrap();
        let f = Filter {
            country: Some("US".into()),
            class: Some("eu".into()),
            remote: Some(super::super::filter::destination_range("203.0.113.0/24").unwrap()),
            ..Default::default()
        };
        let found = s
            .select(&f, super::super::filter::NEWEST_FIRST, None)
            .unwrap();
        assert_eq!(found.len(), 1);
        // The JSON body became the typed record.
        let r = found[0].record.as_ref().unwrap();
        let Some(residency_proto::collector::v1::record::Body::Violation(v)) = &r.body else {
            panic!("{r:?}")
        };
        assert_eq!(
            (r.seq, r.time_unix_ns, v.action(), v.remote_country.as_str()),
            (1, 5, residency_proto::agent::v1::Action::Denied, "US")
        );
        let denied = Filter {
            action: Some("denied".into()),
            ..Default::default()
        };
        assert_eq!(
            s.select(&denied, super::super::filter::NEWEST_FIRST, None)
                .unwrap()
                .len(),
            1
        );
        let hosts = s.hosts().unwrap();
        assert_eq!(
            (hosts.len(), hosts[0].last_seq, hosts[0].violations),
            (1, 1, 1),
            "counters counted from the records already stored"
        );
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
