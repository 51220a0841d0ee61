//! RFC 5424 syslog messages with octet-counting framing (RFC 6587), as
//! rsyslog, syslog-ng and SIEM collectors take them over TCP and TLS
//! (RFC 5425). The message is the record's ECS document, so a SIEM that
//! parses JSON gets every field; the structured data carries the keys a
//! syslog-only pipeline filters on.

use residency_proto::collector::v1::{Record, record::Body};

/// Facility local0.
const FACILITY: u8 = 16;

/// The SD-ID: `residency` under IANA's documentation enterprise number
/// (RFC 5612), as no number is registered for this product.
const SD_ID: &str = "residency@32473";

/// Severity: data that left is a warning, a denial a notice, a loss an
/// error, a change informational.
fn severity(r: &Record) -> u8 {
    match &r.body {
        Some(Body::Violation(f))
            if f.action == residency_proto::agent::v1::Action::Denied as i32 =>
        {
            5
        }
        Some(Body::Violation(_)) => 4,
        Some(Body::Gap(_)) => 3,
        _ => 6,
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped.
fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A HOSTNAME/APP-NAME/MSGID field: printable US-ASCII without spaces,
/// at most `max` characters ("-" when empty).
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// One record of `host` as a framed syslog message ("LEN MSG").
pub fn frame(host: &str, r: &Record, message: &str) -> Vec<u8> {
    let pri = FACILITY * 8 + severity(r);
    let mut sd = format!("[{SD_ID} seq=\"{}\" kind=\"{}\"", r.seq, r.kind_name());
    if let Some(Body::Violation(f)) = &r.body {
        use residency_proto::records::Label;
        for (k, v) in [
            ("classes", f.classes.join(",")),
            ("action", f.action().label()),
            ("destination", f.remote.clone()),
            ("country", f.remote_country.clone()),
            ("exe", f.exe.clone()),
            ("community_id", f.community_id.clone()),
        ] {
            if !v.is_empty() {
                sd.push_str(&format!(" {k}=\"{}\"", sd_value(&v)));
            }
        }
    }
    sd.push(']');
    let msg = format!(
        "<{pri}>1 {} {} residency-sensor - {} {sd} {message}",
        residency_proto::time::utc_nanos(r.time_unix_ns),
        header_field(host, 255),
        header_field(r.kind_name(), 32),
    );
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use residency_proto::{agent::v1::Flow, collector::v1::Audit};

    #[test]
    fn framed_rfc5424_with_escaped_structured_data() {
        let r = Record {
            seq: 7,
            time_unix_ns: 1_795_417_200_000_000_000,
            body: Some(Body::Violation(Flow {
                classes: vec!["eu_personal".into()],
                remote: "203.0.113.7:443".into(),
                exe: "/opt/a \"b\"]".into(),
                action: residency_proto::agent::v1::Action::Reported as i32,
                ..Default::default()
            })),
            chain: vec![],
        };
        let f = String::from_utf8(frame("eu 1", &r, "{}")).unwrap();
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<132>1 2026-11-23T07:00:00.000000000Z eu1 residency-sensor - violation [residency@32473 seq=\"7\""), "{msg}");
        assert!(msg.contains(r#"exe="/opt/a \"b\"\]""#), "{msg}");
        assert!(msg.ends_with("] {}"), "{msg}");
        let a = Record {
            seq: 8,
            time_unix_ns: 0,
            body: Some(Body::Audit(Audit::default())),
            chain: vec![],
        };
        assert!(
            String::from_utf8(frame("h", &a, "x"))
                .unwrap()
                .contains("<134>1 ")
        );
    }
}
