//! Durable storage of records. SQLite in WAL mode; a batch is one transaction,
//! acknowledged only after it commits; inserting a (host, sequence) that is
//! already stored does nothing, which makes delivery exactly-once across agent
//! retries and collector restarts.

use std::path::Path;

use residency_proto::collector::v1::{HostSummary, Record, StoredRecord};
use rusqlite::{Connection, params};

/// Schema migrations, applied in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE records (
        host TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        body TEXT NOT NULL,
        stored_ns INTEGER NOT NULL,
        PRIMARY KEY (host, seq)
    );
    CREATE INDEX records_kind_time ON records (kind, time_ns);"];

/// A row of `SELECT host, seq, kind, time_ns, body`.
fn stored_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    Ok(StoredRecord {
        host_id: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        kind: r.get(2)?,
        time_unix_ns: r.get(3)?,
        body_json: r.get(4)?,
    })
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// The store.
pub struct Store {
    conn: Connection,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // WAL: readers do not block the writer; FULL sync: a commit survives a
        // power loss before it is acknowledged.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(m)?;
            conn.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        Ok(Store { conn })
    }

    /// Highest sequence stored for `host` (0: none).
    pub fn last_seq(&self, host: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT MAX(seq) FROM records WHERE host = ?1",
            params![host],
            |r| r.get(0),
        )?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Stores a batch in one transaction; returns how many were new.
    pub fn insert(&mut self, host: &str, records: &[Record]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut new = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO records (host, seq, kind, time_ns, body, stored_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let stored = now_ns();
            for r in records {
                new += stmt.execute(params![
                    host,
                    r.seq as i64,
                    r.kind,
                    r.time_unix_ns,
                    r.body_json,
                    stored
                ])?;
            }
        }
        tx.commit()?;
        Ok(new)
    }

    /// Stored records of `kind`, newest first.
    pub fn query(
        &self,
        kind: &str,
        host: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT host, seq, kind, time_ns, body FROM records WHERE kind = ?1 AND (?2 IS NULL OR host = ?2)
             ORDER BY time_ns DESC, seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![kind, host, limit as i64], stored_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records in a time window (`since` ≤ time < `until`, Unix ns), optionally
    /// of one kind and host, in host and sequence order.
    pub fn range(
        &self,
        kind: Option<&str>,
        host: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT host, seq, kind, time_ns, body FROM records
             WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR host = ?2) AND time_ns >= ?3 AND time_ns < ?4
             ORDER BY host, seq",
        )?;
        let rows = stmt.query_map(params![kind, host, since, until], stored_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every host with its last-seen time, last sequence and counts by kind.
    pub fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT host, MAX(stored_ns), MAX(seq),
                    SUM(kind = 'violation'), SUM(kind = 'gap'), SUM(kind = 'audit')
             FROM records GROUP BY host ORDER BY host",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HostSummary {
                host_id: r.get(0)?,
                last_seen_unix_ns: r.get(1)?,
                last_seq: r.get::<_, i64>(2)? as u64,
                violations: r.get::<_, i64>(3)? as u64,
                gaps: r.get::<_, i64>(4)? as u64,
                audits: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of records of a host of one kind.
    pub fn count_kind(&self, host: &str, kind: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM records WHERE host = ?1 AND kind = ?2",
            params![host, kind],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Number of records of a host.
    pub fn count(&self, host: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM records WHERE host = ?1",
            params![host],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            kind: "violation".into(),
            time_unix_ns: seq as i64,
            body_json: format!("{{\"n\":{seq}}}"),
        }
    }

    #[test]
    fn idempotent_by_host_and_sequence_across_reopen() {
        let path = std::env::temp_dir().join(format!("rs-collector-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.last_seq("a").unwrap(), 0);
            assert_eq!(s.insert("a", &[rec(1), rec(2), rec(3)]).unwrap(), 3);
            assert_eq!(
                s.insert("a", &[rec(2), rec(3), rec(4)]).unwrap(),
                1,
                "re-sent records are ignored"
            );
            assert_eq!(
                s.insert("b", &[rec(1)]).unwrap(),
                1,
                "sequences are per host"
            );
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.last_seq("a").unwrap(), 4);
        assert_eq!(s.count("a").unwrap(), 4);
        let hosts = s.hosts().unwrap();
        assert_eq!(
            hosts
                .iter()
                .map(|h| (h.host_id.as_str(), h.last_seq, h.violations))
                .collect::<Vec<_>>(),
            vec![("a", 4, 4), ("b", 1, 1)]
        );
        assert!(hosts[0].last_seen_unix_ns > 0);
        let q = s.query("violation", Some("a"), 2).unwrap();
        assert_eq!(q.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 3]);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
