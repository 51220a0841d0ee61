//! `collectord export --format bundle`: one host's records over a time range
//! exactly as stored, with the record before them and every gap record of
//! the host, as one encoded `residency.collector.v1.Bundle` — what
//! `residency-verify` checks offline. Written as it is read, a page at a
//! time (a protobuf message is its fields one after another), so a long
//! range is never held in memory.

use std::io::Write;

use prost::encoding::{int64, message, string, uint64};
use residency_proto::{chain::BUNDLE_FORMAT, collector::v1::BundleRecord};
use tokio::sync::Mutex;

use crate::store::{
    Store, StoreError,
    chain::{RangeRows, StoredRow},
};

// `Bundle` field numbers (collector.proto; checked by the test below).
const FORMAT: u32 = 1;
const HOST: u32 = 2;
const SINCE: u32 = 3;
const UNTIL: u32 = 4;
const CREATED: u32 = 5;
const BEFORE: u32 = 6;
const RECORDS: u32 = 7;
const GAPS: u32 = 8;
const CA: u32 = 10;
const STORED_UPTO: u32 = 11;

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    pub gaps: u64,
}

fn record(r: &StoredRow) -> BundleRecord {
    BundleRecord {
        seq: r.seq as u64,
        content: r.record.clone(),
        chain: r.chain.clone().unwrap_or_default(),
    }
}

/// Errors: the store's, or the output's.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("writing the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes `host`'s bundle for [since, until) (0: unbounded) to `out`.
pub async fn write(
    store: &Mutex<Store>,
    host: &str,
    since: i64,
    until: i64,
    now_ns: i64,
    ca: Option<&[u8]>,
    out: &mut impl Write,
) -> Result<Written, BundleError> {
    let mut buf = Vec::with_capacity(1 << 16);
    string::encode(FORMAT, &BUNDLE_FORMAT.to_owned(), &mut buf);
    string::encode(HOST, &host.to_owned(), &mut buf);
    int64::encode(SINCE, &since, &mut buf);
    int64::encode(UNTIL, &until, &mut buf);
    int64::encode(CREATED, &now_ns, &mut buf);
    if let Some(ca) = ca {
        prost::encoding::bytes::encode(CA, &ca.to_vec(), &mut buf);
    }
    if until <= 0
        && let Some(upto) = store.lock().await.counted_last_seq(host).await?
    {
        uint64::encode(STORED_UPTO, &upto, &mut buf);
    }
    let mut written = Written::default();
    if let Some((mut rows, before)) = RangeRows::open(store, host, since, until).await? {
        if let Some((seq, chain)) = before {
            let before = BundleRecord {
                seq: seq as u64,
                content: Vec::new(),
                chain: chain.unwrap_or_default(),
            };
            message::encode(BEFORE, &before, &mut buf);
        }
        loop {
            let page = rows.next(store).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                message::encode(RECORDS, &record(r), &mut buf);
            }
            written.records += page.len() as u64;
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    for g in Store::gap_rows(store, host).await? {
        message::encode(GAPS, &record(&g), &mut buf);
        written.gaps += 1;
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use residency_proto::{
        chain,
        collector::v1::{Bundle, Gap, Record, record::Body},
    };

    #[tokio::test]
    async fn a_bundle_decodes_and_its_chain_checks_offline() {
        let path = std::env::temp_dir().join(format!("rs-bundle-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut s = Store::open(path.to_str().unwrap()).await.unwrap();
        let mut prev = chain::ZERO;
        let rows: Vec<_> = (1..=5u64)
            .map(|seq| {
                let mut r = Record {
                    seq,
                    time_unix_ns: seq as i64 * 10,
                    body: Some(Body::Gap(Gap {
                        count: seq,
                        ..Default::default()
                    })),
                    chain: Vec::new(),
                };
                prev = chain::link(&prev, seq, &chain::content(&r));
                r.chain = prev.to_vec();
                let ix = crate::store::filter::Indexed::of(&r);
                (r, ix)
            })
            .collect();
        s.insert("h", &rows).await.unwrap();
        let store = Mutex::new(s);
        let mut out = Vec::new();
        let w = write(&store, "h", 20, 50, 7, Some(b"ca"), &mut out)
            .await
            .unwrap();
        assert_eq!(
            w,
            Written {
                records: 3,
                gaps: 5
            }
        );
        let b = Bundle::decode(out.as_slice()).expect("one encoded Bundle");
        assert_eq!(
            (
                b.format.as_str(),
                b.host_id.as_str(),
                b.since_unix_ns,
                b.until_unix_ns,
                b.created_unix_ns
            ),
            (BUNDLE_FORMAT, "h", 20, 50, 7)
        );
        assert_eq!(b.before.as_ref().map(|r| r.seq), Some(1));
        assert_eq!(b.ca_certificate, b"ca");
        assert_eq!(
            b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        let report = chain::verify_bundle(&b, None, Vec::new()).unwrap();
        assert!(report.intact && report.findings.is_empty(), "{report:?}");
        assert_eq!(report.head, rows[3].0.chain);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
