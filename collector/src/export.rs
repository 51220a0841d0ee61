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

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a time as Unix seconds ("1763884800") or UTC RFC 3339
/// ("2026-11-23T07:00:00Z", or a date "2026-11-23"), into Unix ns.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad =
        || format!("{s:?} is not a time: write Unix seconds, 2026-11-23 or 2026-11-23T07:00:00Z");
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1_000_000_000).ok_or_else(bad);
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let time = time.strip_suffix('Z').ok_or_else(bad)?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3
        || t.len() != 3
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || t[0] > 23
        || t[1] > 59
        || t[2] > 60
    {
        return Err(bad());
    }
    let secs = days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Ok(secs * 1_000_000_000)
}

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
    fn times() {
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400 * 1_000_000_000);
        assert_eq!(
            parse_time("2026-11-23T07:00:00Z").unwrap() / 1_000_000_000,
            1_795_417_200
        );
        assert!(
            parse_time("23/11/2026")
                .unwrap_err()
                .contains("Unix seconds")
        );
        assert!(parse_time("2026-13-01").is_err());
    }

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
