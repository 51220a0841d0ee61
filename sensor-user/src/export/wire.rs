//! The agent's half of the `Deliver` stream, written without decoding spool
//! frames: a spooled payload is already an encoded `Record` (time and body),
//! so a batch on the wire is each frame's sequence field followed by its
//! bytes. Decoding every frame into a `Record` for tonic to encode it again
//! was a quarter of the agent's CPU per delivered violation.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};
use residency_proto::collector::v1 as pb;
use tonic::codegen::http::uri::PathAndQuery;

/// One spooled record: its sequence and its payload (an encoded `Record`
/// without the sequence, see `record::encode_spooled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The encoded size of the `Record` this frame is on the wire.
    pub fn record_len(&self) -> usize {
        encoding::uint64::encoded_len(SEQ, &self.seq) + self.payload.len()
    }
}

// Field numbers in collector.proto (checked by the test below).
const SEQ: u32 = 1; // Record.seq
const RECORDS: u32 = 1; // Batch.records
const BATCH: u32 = 2; // AgentMessage.batch

/// What the agent sends: any `AgentMessage`, or a batch of spool frames
/// that encodes exactly as `AgentMessage { batch: Batch { records } }`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Message(Box<pb::AgentMessage>),
    Frames(Vec<Frame>),
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing::Message(Box::default())
    }
}

impl From<pb::AgentMessage> for Outgoing {
    fn from(m: pb::AgentMessage) -> Self {
        Outgoing::Message(Box::new(m))
    }
}

fn batch_len(frames: &[Frame]) -> usize {
    frames
        .iter()
        .map(|f| {
            let n = f.record_len();
            encoding::key_len(RECORDS) + encoding::encoded_len_varint(n as u64) + n
        })
        .sum()
}

impl Message for Outgoing {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Outgoing::Message(m) => m.encode_raw(buf),
            Outgoing::Frames(frames) => {
                encoding::encode_key(BATCH, WireType::LengthDelimited, buf);
                encoding::encode_varint(batch_len(frames) as u64, buf);
                for f in frames {
                    encoding::encode_key(RECORDS, WireType::LengthDelimited, buf);
                    encoding::encode_varint(f.record_len() as u64, buf);
                    encoding::uint64::encode(SEQ, &f.seq, buf);
                    buf.put_slice(&f.payload);
                }
            }
        }
    }

    /// Never decoded by the agent; the stream only goes out.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Outgoing::Message(m) => m.encoded_len(),
            Outgoing::Frames(frames) => {
                let n = batch_len(frames);
                encoding::key_len(BATCH) + encoding::encoded_len_varint(n as u64) + n
            }
        }
    }

    fn clear(&mut self) {
        *self = Outgoing::default();
    }
}

/// The `Deliver` call with [`Outgoing`] messages: what the generated client
/// does, with this codec.
pub async fn deliver<S>(
    grpc: &mut tonic::client::Grpc<S>,
    stream: impl tokio_stream::Stream<Item = Outgoing> + Send + 'static,
) -> Result<tonic::Streaming<pb::CollectorMessage>, tonic::Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = prost::bytes::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("the channel is not ready: {}", e.into())))?;
    let codec = tonic_prost::ProstCodec::<Outgoing, pb::CollectorMessage>::default();
    let path = PathAndQuery::from_static("/residency.collector.v1.Collector/Deliver");
    let mut req = tonic::Request::new(stream);
    req.extensions_mut().insert(tonic::GrpcMethod::new(
        "residency.collector.v1.Collector",
        "Deliver",
    ));
    Ok(grpc.streaming(req, path, codec).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::record::{Spooled, encode_spooled};
    use residency_proto::agent::v1 as apb;

    #[test]
    fn frames_encode_as_the_typed_batch() {
        let flow = apb::Flow {
            pid: 7,
            exe: "/usr/bin/curl".into(),
            ..Default::default()
        };
        let gap = pb::Gap {
            count: 3,
            ..Default::default()
        };
        let frames = vec![
            Frame {
                seq: 41,
                payload: encode_spooled(5, Spooled::Violation(&flow)),
            },
            Frame {
                seq: 300,
                payload: encode_spooled(6, Spooled::Gap(&gap)),
            },
        ];
        let out = Outgoing::Frames(frames);
        let wire = out.encode_to_vec();
        assert_eq!(wire.len(), out.encoded_len());
        let typed = pb::AgentMessage::decode(wire.as_slice()).expect("decodes as AgentMessage");
        let Some(pb::agent_message::Message::Batch(b)) = typed.message else {
            panic!("{typed:?}")
        };
        assert_eq!(b.records.len(), 2);
        assert_eq!((b.records[0].seq, b.records[0].time_unix_ns), (41, 5));
        assert_eq!(
            b.records[0].body,
            Some(pb::record::Body::Violation(flow.clone()))
        );
        assert_eq!(
            (b.records[1].seq, &b.records[1].body),
            (300, &Some(pb::record::Body::Gap(gap.clone())))
        );
        let again = Outgoing::from(pb::AgentMessage {
            message: Some(pb::agent_message::Message::Batch(b)),
        });
        assert_eq!(
            again.encode_to_vec(),
            wire,
            "byte for byte what prost writes"
        );
    }
}
