//! The spool's record format: a spooled frame's payload is the encoded
//! delivery record (`residency.collector.v1.Record` without its sequence,
//! which the frame carries), so delivering it is decoding it.

use prost::encoding::{int64, message};
use residency_proto::agent::v1 as apb;
use residency_proto::collector::v1::{self as cpb, record::Body};

use super::wire::Frame;

/// What a spooled record holds, borrowed: encoding does not copy it.
#[derive(Debug, Clone, Copy)]
pub enum Spooled<'a> {
    Violation(&'a apb::Flow),
    Audit(&'a cpb::Audit),
    Gap(&'a cpb::Gap),
    Attestation(&'a cpb::Attestation),
}

impl Spooled<'_> {
    /// "violation", "audit" or "gap", for logs.
    pub fn kind_name(self) -> &'static str {
        match self {
            Spooled::Violation(_) => "violation",
            Spooled::Audit(_) => "audit",
            Spooled::Gap(_) => "gap",
            Spooled::Attestation(_) => "attestation",
        }
    }
}

// The `Record` field numbers (collector.proto), checked by the round trip in
// the tests below.
const TIME: u32 = residency_proto::chain::TIME_FIELD;
const VIOLATION: u32 = 5;
const AUDIT: u32 = 6;
const GAP: u32 = 7;
const ATTESTATION: u32 = 9;

/// The payload of a spooled record: the encoded `Record` (time and body; no
/// sequence), written straight from the borrowed body, byte for byte what
/// `residency_proto::chain::content` gives for the record (the chain hash
/// covers it; the spool appends the chain field).
pub fn encode_spooled(time_unix_ns: i64, body: Spooled<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if time_unix_ns != 0 {
        int64::encode(TIME, &time_unix_ns, &mut out);
    }
    match body {
        Spooled::Violation(f) => message::encode(VIOLATION, f, &mut out),
        Spooled::Audit(a) => message::encode(AUDIT, a, &mut out),
        Spooled::Gap(g) => message::encode(GAP, g, &mut out),
        Spooled::Attestation(a) => message::encode(ATTESTATION, a, &mut out),
    }
    out
}

/// The delivery form of a spooled payload. Payloads written by agents
/// before records were typed (JSON, starting with `{`, which no encoded
/// record does) are converted. One that does not decode is delivered as a gap
/// record in its place (same sequence), never dropped.
pub fn decode_spooled(seq: u64, payload: &[u8]) -> cpb::Record {
    use prost::Message;
    let decoded = if payload.first() == Some(&b'{') {
        legacy(seq, payload)
    } else {
        cpb::Record::decode(payload).ok()
    };
    match decoded {
        Some(mut r) if r.body.is_some() => {
            r.seq = seq;
            r
        }
        _ => cpb::Record {
            seq,
            time_unix_ns: 0,
            body: Some(Body::Gap(cpb::Gap {
                source: cpb::GapSource::SpoolDamage as i32,
                count: 1,
                first_seq: seq,
                last_seq: seq,
                bytes: payload.len() as u64,
                note: "a spooled record that does not decode".into(),
                ..Default::default()
            })),
            chain: Vec::new(),
        },
    }
}

/// A frame as it goes on the wire: as spooled, or, for a frame an older
/// agent wrote (JSON), converted to the typed record (see
/// [`decode_spooled`]). Frames this agent wrote are not decoded: they are
/// its own encoding, checked by the spool's CRC.
pub fn deliverable(frame: Frame) -> Frame {
    use prost::Message;
    if frame.payload.first() != Some(&b'{') {
        return frame;
    }
    let mut r = decode_spooled(frame.seq, &frame.payload);
    r.seq = 0;
    Frame {
        seq: frame.seq,
        payload: r.encode_to_vec(),
    }
}

/// A pre-typed spool frame: `{"k": kind, "t": unix ns, "b": body}`.
fn legacy(seq: u64, payload: &[u8]) -> Option<cpb::Record> {
    #[derive(serde::Deserialize)]
    struct Old<'a> {
        k: std::borrow::Cow<'a, str>,
        t: i64,
        #[serde(borrow)]
        b: &'a serde_json::value::RawValue,
    }
    let o = serde_json::from_slice::<Old>(payload).ok()?;
    Some(residency_proto::legacy::record(seq, &o.k, o.t, o.b.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_converts_old_frames_and_never_drops_garbage() {
        let flow = apb::Flow {
            pid: 7,
            kind: apb::FlowKind::Connect as i32,
            remote: "203.0.113.2:443".into(),
            ..Default::default()
        };
        let r = decode_spooled(9, &encode_spooled(42, Spooled::Violation(&flow)));
        assert_eq!((r.seq, r.time_unix_ns), (9, 42));
        assert_eq!(r.body, Some(Body::Violation(flow)));
        let gap = cpb::Gap {
            source: cpb::GapSource::Kernel as i32,
            count: 3,
            ..Default::default()
        };
        let r = decode_spooled(2, &encode_spooled(0, Spooled::Gap(&gap)));
        assert_eq!(r.body, Some(Body::Gap(gap)));
        let audit = cpb::Audit {
            actor: "uid 0".into(),
            ..Default::default()
        };
        let r = decode_spooled(3, &encode_spooled(1, Spooled::Audit(&audit)));
        assert_eq!(r.body, Some(Body::Audit(audit)));
        // A frame an older agent wrote.
        let r = decode_spooled(
            4,
            br#"{"k":"violation","t":5,"b":{"kind":"close","pid":1,"action":"reported"}}"#,
        );
        let Some(Body::Violation(f)) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(
            (f.kind(), f.action()),
            (apb::FlowKind::Close, apb::Action::Reported)
        );
        // Garbage is a gap record in its place.
        let r = decode_spooled(1, b"\xff\x00");
        let Some(Body::Gap(g)) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(
            (g.source(), g.first_seq, g.last_seq),
            (cpb::GapSource::SpoolDamage, 1, 1)
        );
    }
}
