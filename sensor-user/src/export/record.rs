//! The spool's record format: what a spooled frame's payload holds and how it
//! becomes a delivery record.

use residency_proto::collector::v1 as cpb;

/// A spooled record: `{"k": kind, "t": unix ns, "b": body}`. `body_json` is
/// JSON the agent wrote (serde_json): it goes in as it is, not parsed again.
pub fn encode_spooled(kind: &str, time_unix_ns: i64, body_json: &str) -> Vec<u8> {
    let body = if serde_json::from_str::<serde::de::IgnoredAny>(body_json).is_ok() {
        body_json
    } else {
        "null"
    };
    let kind = serde_json::to_string(kind).unwrap_or_else(|_| "\"unknown\"".into());
    format!("{{\"k\":{kind},\"t\":{time_unix_ns},\"b\":{body}}}").into_bytes()
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
        let p = encode_spooled("violation", 42, r#"{"pid":7,"remote":"203.0.113.2:443"}"#);
        let r = decode_spooled(9, &p);
        assert_eq!(
            (r.seq, r.kind.as_str(), r.time_unix_ns),
            (9, "violation", 42)
        );
        let b: serde_json::Value = serde_json::from_str(&r.body_json).unwrap();
        assert_eq!(b["pid"], 7);
        // A body that is not JSON is stored as null, never as broken JSON.
        let r = decode_spooled(1, &encode_spooled("gap", 1, "{not json"));
        assert_eq!(r.body_json, "null");
        assert_eq!(decode_spooled(1, b"\xff\x00").kind, "corrupt");
    }
}
