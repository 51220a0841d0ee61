//! Retention (`collectord --retain 400d`): a host's oldest records are
//! removed once they are older than the retention, always a whole prefix of
//! its chain that ends with an attestation, so what stays verifies on its
//! own: the host's `retention` row keeps the last removed record's sequence
//! and chain hash (the first kept record links to it), and `verify` reports
//! the removed prefix as `retained` (explained), never as missing records.
//!
//! Only whole signed windows go: records after the host's last attestation
//! older than the cutoff stay until a later window is old enough too, and a
//! host whose agent never attests (before attestations) keeps everything.

use super::{Store, StoreError, filter::Param};

/// The table of what retention removed per host: up to which sequence, the
/// chain hash of that record, how many records in all, and when last.
macro_rules! retention_table {
    ($blob:literal) => {
        concat!(
            "CREATE TABLE retention (
                host TEXT PRIMARY KEY,
                upto_seq BIGINT NOT NULL,
                chain ",
            $blob,
            ",
                removed BIGINT NOT NULL,
                at_ns BIGINT NOT NULL
            );"
        )
    };
}
pub(crate) const RETENTION_TABLE_SQLITE: &str = retention_table!("BLOB");
pub(crate) const RETENTION_TABLE_POSTGRES: &str = retention_table!("BYTEA");

/// Where `host` ($1) may be cut for records older than $2 (Unix ns): the
/// last attestation older than it with no record at or after the cutoff
/// before it, within $3 records of the host's first one (a step of a first
/// pass over a large store stays a bounded transaction); when no window
/// ends that soon, the first one that qualifies, whatever its size.
pub(crate) const BOUNDARY: &str = "SELECT COALESCE(
    (SELECT MAX(seq) FROM records
        WHERE host = $1 AND kind = 'attestation' AND time_ns < $2
        AND seq < COALESCE(
            (SELECT MIN(seq) FROM records WHERE host = $1 AND time_ns >= $2),
            9223372036854775807)
        AND seq <= (SELECT MIN(seq) FROM records WHERE host = $1) + $3),
    (SELECT MIN(seq) FROM records
        WHERE host = $1 AND kind = 'attestation' AND time_ns < $2
        AND seq < COALESCE(
            (SELECT MIN(seq) FROM records WHERE host = $1 AND time_ns >= $2),
            9223372036854775807)))";

/// What retention removed of host $1: (upto_seq, chain, removed, at_ns).
pub(crate) const RETAINED: &str =
    "SELECT upto_seq, chain, removed, at_ns FROM retention WHERE host = $1";

/// Every host with records.
pub(crate) const HOSTS: &str = "SELECT host FROM host_counts ORDER BY host";

/// Removes host $1's records up to sequence $2, in one transaction: the
/// marker first (it reads what goes; $3 is the time; nothing when the
/// boundary record is gone already, removed by another replica's pass),
/// then the counts, then the rows. Each statement with how many of the
/// parameters it takes. On PostgreSQL the transaction first takes the
/// host's advisory lock, as a batch does: passes of several replicas, and
/// a pass and the host's batches, take turns.
pub(crate) const REMOVE: &[(&str, usize)] = &[
    (
        "INSERT INTO retention (host, upto_seq, chain, removed, at_ns)
        SELECT $1, $2, (SELECT chain FROM records WHERE host = $1 AND seq = $2),
            (SELECT COUNT(*) FROM records WHERE host = $1 AND seq <= $2), $3
        WHERE EXISTS (SELECT 1 FROM records WHERE host = $1 AND seq = $2)
        ON CONFLICT (host) DO UPDATE SET upto_seq = excluded.upto_seq,
            chain = excluded.chain, removed = retention.removed + excluded.removed,
            at_ns = excluded.at_ns",
        3,
    ),
    (
        "UPDATE host_counts SET
            violations = violations - (SELECT COUNT(*) FROM records
                WHERE host = $1 AND seq <= $2 AND kind = 'violation'),
            gaps = gaps - (SELECT COUNT(*) FROM records
                WHERE host = $1 AND seq <= $2 AND kind = 'gap'),
            audits = audits - (SELECT COUNT(*) FROM records
                WHERE host = $1 AND seq <= $2 AND kind = 'audit')
        WHERE host = $1",
        2,
    ),
    ("DELETE FROM chain_breaks WHERE host = $1 AND seq <= $2", 2),
    (
        "DELETE FROM sequence_jumps WHERE host = $1 AND to_seq <= $2",
        2,
    ),
    ("DELETE FROM records WHERE host = $1 AND seq <= $2", 2),
];

/// What retention removed of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Records up to this sequence are gone.
    pub upto_seq: u64,
    /// The chain hash of record `upto_seq` (empty: unchained).
    pub chain: Vec<u8>,
    /// Records removed in all.
    pub removed: u64,
    /// When last (Unix ns).
    pub at_ns: i64,
}

/// One host's share of a retention pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub host: String,
    /// Records up to this sequence are gone now.
    pub upto_seq: u64,
    /// Removed by this pass.
    pub records: u64,
}

impl Store {
    /// What retention removed of `host` so far (None: nothing).
    pub async fn retained(&mut self, host: &str) -> Result<Option<Retained>, StoreError> {
        match self {
            Store::Sqlite(s) => s.retained(host),
            Store::Postgres(p) => p.retained(host).await,
        }
    }

    /// Every host with records (retention goes through them one by one).
    pub async fn host_names(&mut self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.strings(HOSTS),
            Store::Postgres(p) => p.strings(HOSTS).await,
        }
    }

    /// Removes `host`'s records older than `cutoff_ns` (see the module) in
    /// one transaction, about `step` records at most when its windows allow;
    /// what it removed (None: nothing to remove). Called again until None
    /// for all that is old enough.
    pub async fn retain(
        &mut self,
        host: &str,
        cutoff_ns: i64,
        step: i64,
    ) -> Result<Option<Removed>, StoreError> {
        let at = [
            Param::Text(host.to_owned()),
            Param::Int(cutoff_ns),
            Param::Int(step),
        ];
        let boundary = match self {
            Store::Sqlite(s) => s.one_int(BOUNDARY, &at)?,
            Store::Postgres(p) => p.one_int(BOUNDARY, &at).await?,
        };
        let Some(upto) = boundary else {
            return Ok(None);
        };
        let before = self.retained(host).await?.map_or(0, |r| r.removed);
        let params = [
            Param::Text(host.to_owned()),
            Param::Int(upto),
            Param::Int(super::now_ns()),
        ];
        match self {
            Store::Sqlite(s) => s.script(REMOVE, &params)?,
            Store::Postgres(p) => p.script(REMOVE, &params).await?,
        }
        let after = self.retained(host).await?.map_or(0, |r| r.removed);
        Ok(Some(Removed {
            host: host.to_owned(),
            upto_seq: upto as u64,
            records: after.saturating_sub(before),
        }))
    }
}

#[cfg(test)]
mod tests {
    use residency_proto::collector::v1::{Attestation, Record, record::Body};

    use super::*;
    use crate::store::filter::Indexed;

    /// Record `seq` at time `t`: an attestation or a violation.
    fn rec(seq: u64, t: i64, attestation: bool) -> (Record, Indexed) {
        let body = if attestation {
            Body::Attestation(Attestation::default())
        } else {
            Body::Violation(Default::default())
        };
        let r = Record {
            seq,
            time_unix_ns: t,
            body: Some(body),
            chain: vec![seq as u8; 32],
        };
        let ix = Indexed::of(&r);
        (r, ix)
    }

    const STEP: i64 = 100_000;

    #[tokio::test]
    async fn only_whole_windows_older_than_the_cutoff_go() {
        let dir = std::env::temp_dir().join(format!("rs-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Store::open(dir.join("c.db").to_str().unwrap())
            .await
            .unwrap();
        // Windows end at 3 and 6 (attestations); record 5 is young (an
        // audit record keeps its change's time, out of sequence order).
        let rows = [
            rec(1, 10, false),
            rec(2, 11, false),
            rec(3, 12, true),
            rec(4, 13, false),
            rec(5, 99, false),
            rec(6, 14, true),
            rec(7, 15, false),
        ];
        s.insert("h", &rows).await.unwrap();
        s.insert("other", &rows[..3]).await.unwrap();
        assert_eq!(
            s.retain("h", 10, STEP).await.unwrap(),
            None,
            "nothing is old enough"
        );
        // A step too small for the first window: the window all the same.
        let r = s.retain("h", 50, 1).await.unwrap().expect("a boundary");
        assert_eq!(
            (r.upto_seq, r.records),
            (3, 3),
            "not past the young record 5"
        );
        let kept = s.retained("h").await.unwrap().expect("the marker");
        assert_eq!(
            (kept.upto_seq, kept.chain, kept.removed),
            (3, vec![3; 32], 3)
        );
        assert_eq!(s.last_seq("h").await.unwrap(), 7);
        assert_eq!(s.retain("h", 50, STEP).await.unwrap(), None, "nothing more");
        let r = s
            .retain("h", 100, STEP)
            .await
            .unwrap()
            .expect("the next window");
        assert_eq!((r.upto_seq, r.records), (6, 3));
        assert_eq!(s.retained("h").await.unwrap().unwrap().removed, 6);
        assert_eq!(s.retained("other").await.unwrap(), None, "per host");
        let counted = s.hosts().await.unwrap();
        let h = counted.iter().find(|h| h.host_id == "h").unwrap();
        assert_eq!(h.violations, 1, "the counts follow the rows");
        // Steps: two windows old enough, a step of 0 takes the first.
        s.insert(
            "steps",
            &[rec(1, 1, true), rec(2, 2, false), rec(3, 3, true)],
        )
        .await
        .unwrap();
        let r = s.retain("steps", 50, 0).await.unwrap().unwrap();
        assert_eq!(r.upto_seq, 1);
        let r = s.retain("steps", 50, 0).await.unwrap().unwrap();
        assert_eq!(r.upto_seq, 3);
        assert_eq!(s.retain("steps", 50, 0).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
