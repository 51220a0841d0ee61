//! `collectord export`: stored records as CSV or JSON lines, for auditors'
//! reports.

use std::io::Write;

use residency_proto::{agent::v1::Flow, collector::v1::StoredRecord, records::Label};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// One host's records as stored, with what checking their chain offline
    /// needs (`residency-verify`); binary (an encoded `Bundle`).
    Bundle,
}

/// Times on the command line and in the dashboard's filters (see
/// `residency_proto::time`).
pub use residency_proto::time::parse_time;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Writes records in `format`. JSON is the canonical protobuf JSON mapping
/// of `StoredRecord` (the same shape as `collectorctl --json`).
pub fn write(
    out: &mut impl Write,
    records: &[StoredRecord],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Jsonl => {
            for r in records {
                serde_json::to_writer(&mut *out, r)?;
                writeln!(out)?;
            }
        }
        Format::Bundle => {
            return Err(std::io::Error::other(
                "a bundle is written by collector::bundle, not as a report",
            ));
        }
        Format::Csv => {
            writeln!(
                out,
                "host,seq,kind,time_unix_ns,pid,comm,exe,classes,protocol,remote,remote_country,remote_site,verdict,action,count,record_json"
            )?;
            for r in records {
                let v = r.violation();
                let text = |f: fn(&Flow) -> String| v.map(f).unwrap_or_default();
                let cols = [
                    r.host_id.clone(),
                    r.seq().to_string(),
                    r.kind_name().to_owned(),
                    r.time_unix_ns().to_string(),
                    text(|f| f.pid.to_string()),
                    text(|f| f.comm.clone()),
                    text(|f| f.exe.clone()),
                    text(|f| f.classes.join(";")),
                    text(|f| f.protocol().label()),
                    text(|f| f.remote.clone()),
                    text(|f| f.remote_country.clone()),
                    text(|f| f.remote_site.clone()),
                    text(|f| f.verdict().label()),
                    text(|f| f.action().label()),
                    text(|f| f.count.to_string()),
                    serde_json::to_string(&r.record).unwrap_or_default(),
                ];
                writeln!(
                    out,
                    "{}",
                    cols.iter()
                        .map(|c| csv_field(c))
                        .collect::<Vec<_>>()
                        .join(",")
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_json_is_canonical() {
        use residency_proto::agent::v1::Action;
        use residency_proto::collector::v1::{Record, record::Body};
        let r = StoredRecord {
            host_id: "h".into(),
            record: Some(Record {
                seq: 7,
                time_unix_ns: 1,
                body: Some(Body::Violation(Flow {
                    pid: 42,
                    comm: "a,b".into(),
                    classes: vec!["eu".into(), "x".into()],
                    remote: "203.0.113.2:443".into(),
                    action: Action::Denied as i32,
                    ..Default::default()
                })),
                chain: Vec::new(),
            }),
        };
        let mut out = Vec::new();
        write(&mut out, std::slice::from_ref(&r), Format::Csv).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with(
                "h,7,violation,1,42,\"a,b\",,eu;x,unspecified,203.0.113.2:443,,,none,denied,0,"
            ),
            "{row}"
        );
        assert!(row.contains("\"\"ACTION_DENIED\"\""), "{row}");
        let mut out = Vec::new();
        write(&mut out, &[r], Format::Jsonl).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["host_id"], "h");
        assert_eq!(v["record"]["seq"], "7");
        assert_eq!(v["record"]["violation"]["action"], "ACTION_DENIED");
    }
}
