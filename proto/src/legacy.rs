//! Records written before they were typed: spool frames and collector rows
//! that hold `{kind, time, JSON body}` with lower-case strings for kinds,
//! verdicts, actions and gap sources. An upgraded agent delivers what its old
//! spool holds, and an upgraded collector migrates its stored rows, through
//! this one conversion, so nothing recorded before an upgrade is lost.

use serde_json::Value;

use crate::agent::v1::Flow;
use crate::collector::v1::{Audit, Gap, Record, record::Body};

/// Replaces the string at `key` ("connect") with its proto name
/// ("FLOW_KIND_CONNECT").
fn upgrade_enum(body: &mut Value, key: &str, prefix: &str) {
    if let Some(s) = body.get(key).and_then(Value::as_str) {
        let name = match (key, s) {
            // Old spellings whose proto name differs.
            ("source", "spool") => "SPOOL_FULL".to_owned(),
            _ => s.to_ascii_uppercase(),
        };
        body[key] = Value::String(format!("{prefix}{name}"));
    }
}

/// The typed record of an old `kind`/`time`/JSON `body`. A body that does not
/// parse gives a record without a body (shown as kind "unknown"), never none.
pub fn record(seq: u64, kind: &str, time_unix_ns: i64, body_json: &str) -> Record {
    let body = serde_json::from_str::<Value>(body_json)
        .ok()
        .and_then(|mut b| match kind {
            "violation" => {
                upgrade_enum(&mut b, "kind", "FLOW_KIND_");
                upgrade_enum(&mut b, "protocol", "PROTOCOL_");
                upgrade_enum(&mut b, "verdict", "VERDICT_");
                upgrade_enum(&mut b, "action", "ACTION_");
                serde_json::from_value::<Flow>(b).ok().map(Body::Violation)
            }
            "audit" => serde_json::from_value::<Audit>(b).ok().map(Body::Audit),
            "gap" => {
                upgrade_enum(&mut b, "source", "GAP_SOURCE_");
                serde_json::from_value::<Gap>(b).ok().map(Body::Gap)
            }
            _ => None,
        });
    Record {
        seq,
        time_unix_ns,
        body,
        chain: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::v1::{Action, FlowKind, Protocol};
    use crate::collector::v1::GapSource;

    #[test]
    fn old_bodies_become_typed_records() {
        let r = record(
            3,
            "violation",
            5,
            r#"{"kind":"connect","pid":7,"protocol":"tcp","remote":"203.0.113.2:443","verdict":"deny","action":"denied","cookie":9,"classes":["eu"]}"#,
        );
        let Some(Body::Violation(f)) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(
            (f.kind(), f.protocol(), f.action(), f.pid, f.cookie),
            (FlowKind::Connect, Protocol::Tcp, Action::Denied, 7, 9)
        );
        let r = record(
            4,
            "gap",
            6,
            r#"{"source":"spool","count":2,"first_seq":3,"last_seq":4}"#,
        );
        let Some(Body::Gap(g)) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(
            (g.source(), g.count, g.first_seq, g.last_seq),
            (GapSource::SpoolFull, 2, 3, 4)
        );
        let r = record(
            5,
            "audit",
            6,
            r#"{"time_unix_ns":6,"actor":"uid 0","action":"mode","reason":"r"}"#,
        );
        assert!(matches!(r.body, Some(Body::Audit(a)) if a.actor == "uid 0"));
        assert_eq!(record(6, "corrupt", 0, "null").kind_name(), "unknown");
    }
}
