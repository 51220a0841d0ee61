//! The spool's record format: what a spooled frame's payload holds and how it
//! becomes a delivery record.

use residency_proto::collector::v1 as cpb;

/// What a spooled record's body may be: a structure, never a string that
/// already holds JSON (it would be stored as a JSON string).
pub trait Body: serde::Serialize {}

impl Body for serde_json::Value {}
impl Body for residency_proto::agent::v1::Flow {}

/// A spooled record: `{"k": kind, "t": unix ns, "b": body}`, the body
/// serialized straight into it (one pass, no intermediate string). A body
/// that cannot be serialized is stored as `null`, never as broken JSON.
pub fn encode_spooled(kind: &str, time_unix_ns: i64, body: &impl Body) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"k\":");
    if serde_json::to_writer(&mut out, kind).is_err() {
        out.extend_from_slice(b"\"unknown\"");
    }
    let _ = write!(out, ",\"t\":{time_unix_ns},\"b\":");
    let mark = out.len();
    if serde_json::to_writer(&mut out, body).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
    out
}

#[derive(serde::Deserialize)]
struct Spooled<'a> {
    k: std::borrow::Cow<'a, str>,
    t: i64,
    #[serde(borrow)]
    b: &'a serde_json::value::RawValue,
}

/// The delivery form of a spooled record (an undecodable one is delivered as a
/// "corrupt" record rather than lost). The body is passed on as it was
/// written, not parsed into a tree and written again.
pub fn decode_spooled(seq: u64, payload: &[u8]) -> cpb::Record {
    match serde_json::from_slice::<Spooled>(payload) {
        Ok(v) => cpb::Record {
            seq,
            kind: v.k.into_owned(),
            time_unix_ns: v.t,
            body_json: v.b.get().to_owned(),
        },
        Err(_) => cpb::Record {
            seq,
            kind: "corrupt".into(),
            time_unix_ns: 0,
            body_json: "null".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let body = serde_json::json!({"pid": 7, "remote": "203.0.113.2:443"});
        let p = encode_spooled("violation", 42, &body);
        let r = decode_spooled(9, &p);
        assert_eq!(
            (r.seq, r.kind.as_str(), r.time_unix_ns),
            (9, "violation", 42)
        );
        let b: serde_json::Value = serde_json::from_str(&r.body_json).unwrap();
        assert_eq!(b["pid"], 7);
        // A body that cannot be serialized is stored as null, never as
        // broken JSON.
        struct Bad;
        impl serde::Serialize for Bad {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        impl Body for Bad {}
        let r = decode_spooled(1, &encode_spooled("gap", 1, &Bad));
        assert_eq!(r.body_json, "null");
        assert_eq!(decode_spooled(1, b"\xff\x00").kind, "corrupt");
    }
}
