//! Delivery to the collector: a task that reads the spool through the agent
//! (which owns it), streams batches with their sequence numbers, and tells the
//! agent to drop what the collector acknowledged — only after its commit.
//! The same stream carries this host's state up (policy, dataset, modes,
//! exceptions, kernel drops; sent when it changes) and operators' commands
//! down (SetEnforcement, GrantException), each answered with a result.
//! Reconnects back off exponentially with jitter and rotate through the
//! configured endpoints.

use std::time::Duration;

use residency_proto::collector::v1::{
    self as pb, agent_command::Command as Cmd, agent_message::Message as Out,
    collector_message::Message as In,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::transport::{Channel, ClientTlsConfig};
use tracing::{debug, error, info, warn};

use super::{
    record::{Spooled, deliverable, encode_spooled},
    wire::{self, Frame, Outgoing},
};
use crate::{
    agent::{AgentHandle, Command, compiler::Compiler},
    config::CollectorTlsConfig,
    kernel::verdicts::Mode,
};

/// Records per batch.
const BATCH: usize = 500;

/// Batches sent and not yet acknowledged, at most.
const PIPELINE: usize = 4;

/// How long the oldest batch in flight may wait for its acknowledgement
/// before the session is given up (and started again).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Encoded bytes per batch at most: well below the collector's 4 MiB message
/// limit, whatever the records hold.
const BATCH_BYTES: usize = 1 << 20;

/// Cuts `frames` to what one batch carries ([`BATCH_BYTES`]). A record that
/// alone exceeds it can never be delivered: it is replaced (same sequence)
/// by a gap record that says so, logged and counted, rather than resent
/// forever with everything after it stuck behind.
fn fit_batch(mut frames: Vec<Frame>) -> Vec<Frame> {
    use prost::Message;
    let mut total = 0;
    for (i, f) in frames.iter_mut().enumerate() {
        let mut len = f.record_len() + 8;
        if len > BATCH_BYTES {
            // Rare: decoding this one record says what it was.
            let r = pb::Record::decode(f.payload.as_slice()).unwrap_or_default();
            error!(
                seq = f.seq,
                kind = r.kind_name(),
                bytes = len,
                limit = BATCH_BYTES,
                "a spooled record is too large to deliver; the collector gets a gap record in its place"
            );
            let gap = pb::Gap {
                source: pb::GapSource::Undeliverable as i32,
                count: 1,
                bytes: len as u64,
                first_seq: f.seq,
                last_seq: f.seq,
                note: format!("a {} record too large to deliver", r.kind_name()),
                ..Default::default()
            };
            // The stand-in keeps the record's chain hash, so the links after
            // it still hold (the collector sees the substitution).
            let hash = residency_proto::chain::split(&f.payload).map(|(_, h)| h);
            f.payload = encode_spooled(r.time_unix_ns, Spooled::Gap(&gap));
            if let Some(h) = hash {
                f.payload
                    .extend_from_slice(&residency_proto::chain::suffix(&h));
            }
            len = f.record_len() + 8;
        }
        if total + len > BATCH_BYTES && i > 0 {
            frames.truncate(i);
            break;
        }
        total += len;
    }
    frames
}

/// How often an idle session pings the collector, and how long it waits
/// for the answer before it gives the session up.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// How often an idle session looks for new records.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How often a session checks whether the host's state (modes, policy,
/// exceptions, drops) changed and tells the collector.
const STATE_POLL: Duration = Duration::from_millis(500);

fn jitter(base: Duration) -> Duration {
    // Up to +50%, from the clock's nanoseconds: enough to spread a fleet's
    // reconnects without a random number generator.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(n % 500) / 1000.0)
}

/// How this agent proves who it is: its certificate (mutual TLS) or its token
/// (plain TCP to a collector on the same host).
#[derive(Clone, Default)]
pub struct Credentials {
    pub tls: Option<ClientTlsConfig>,
    /// `authorization: Bearer TOKEN`.
    pub token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// Reads the token file (at start, like the TLS files).
pub fn token(
    path: &std::path::Path,
) -> anyhow::Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("collector.token_file {}: {e}", path.display()))?;
    let t = t.trim();
    anyhow::ensure!(
        !t.is_empty() && !t.contains(char::is_whitespace),
        "collector.token_file {}: the file must hold one token (no spaces)",
        path.display()
    );
    format!("Bearer {t}").parse().map_err(|_| {
        anyhow::anyhow!(
            "collector.token_file {}: the token must be printable ASCII",
            path.display()
        )
    })
}

/// Adds the token to every call.
#[derive(Clone)]
struct WithToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

/// Reads the TLS files (at start, so that a wrong path stops the agent with a
/// clear message rather than failing every reconnect).
pub fn tls_config(t: &CollectorTlsConfig) -> anyhow::Result<ClientTlsConfig> {
    residency_proto::identity::client_tls(&t.ca, &t.cert, &t.key, t.server_name.as_deref())
        .map_err(|e| anyhow::anyhow!("[collector.tls]: {e}"))
}

async fn connect(endpoint: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, String> {
    // HTTP/2 pings on an idle session: a collector that went away (killed,
    // its host gone) is noticed within seconds, not at the next record, so
    // the agent reconnects and fleet commands reach it again.
    let mut ep = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| format!("endpoint: {e}"))?
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    if let Some(t) = tls {
        ep = ep.tls_config(t.clone()).map_err(|e| format!("TLS: {e}"))?;
    }
    ep.connect().await.map_err(|e| format!("connect: {e}"))
}

/// A dry run the collector asked for over its stored flows: compiles the
/// policy (within a viewer's budget) and judges the flows under it.
async fn what_if(
    agent: &AgentHandle,
    compiler: &Compiler,
    w: pb::WhatIfCommand,
) -> Result<pb::WhatIfResult, String> {
    use crate::agent::compiler::{Budget, Input};
    let inputs = agent
        .call(Command::CompileInputs)
        .await
        .map_err(|e| e.to_string())?;
    // The agent's compiler: its bounds on concurrent and queued compiles
    // (one viewer's dry run at a time) hold for the collector's what-ifs too.
    let (compiled, _) = compiler
        .build(
            inputs.source,
            Input::Text(w.policy_toml),
            inputs.exceptions,
            Budget::VIEWER,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (changes, flows_replayed) = agent
        .call(|reply| Command::WhatIf {
            policy: Box::new(compiled),
            flows: Some(w.flows),
            reply,
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(pb::WhatIfResult {
        changes,
        flows_replayed,
    })
}

/// Applies an operator's command; the error text goes back to the collector.
async fn apply(agent: &AgentHandle, c: pb::AgentCommand) -> String {
    let actor = c.actor;
    let reason = c.reason;
    let res = match c.command {
        Some(Cmd::WhatIf(_) | Cmd::Head(_)) => return "answered apart".into(),
        Some(Cmd::SetEnforcement(s)) => match s.mode.parse::<Mode>() {
            Ok(mode) => agent
                .call(|reply| Command::SetEnforcement {
                    class: (!s.class.is_empty()).then_some(s.class),
                    mode,
                    reason,
                    actor,
                    reply,
                })
                .await
                .map(drop),
            Err(e) => return e,
        },
        Some(Cmd::GrantException(state)) => agent
            .call(|reply| Command::GrantException { state, reply })
            .await
            .map(drop),
        None => return "empty command (is this agent older than the collector?)".into(),
    };
    match res {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// Reads the collector's messages: acknowledgements go to the session,
/// commands are applied and answered here.
async fn read_loop(
    mut incoming: tonic::Streaming<pb::CollectorMessage>,
    acks: mpsc::Sender<Result<u64, String>>,
    tx: mpsc::Sender<Outgoing>,
    agent: AgentHandle,
    compiler: Compiler,
) {
    let why = loop {
        match incoming.next().await {
            Some(Ok(pb::CollectorMessage {
                message: Some(In::Ack(a)),
            })) => {
                if acks.send(Ok(a.seq)).await.is_err() {
                    return;
                }
            }
            Some(Ok(pb::CollectorMessage {
                message:
                    Some(In::Command(pb::AgentCommand {
                        id,
                        command: Some(Cmd::WhatIf(w)),
                        ..
                    })),
            })) => {
                // A compile takes a while: answered from a task of its own,
                // so acknowledgements keep flowing meanwhile.
                let (agent, tx, compiler) = (agent.clone(), tx.clone(), compiler.clone());
                tokio::spawn(async move {
                    let result = match what_if(&agent, &compiler, w).await {
                        Ok(r) => pb::CommandResult {
                            id,
                            what_if: Some(r),
                            ..Default::default()
                        },
                        Err(error) => pb::CommandResult {
                            id,
                            error,
                            ..Default::default()
                        },
                    };
                    let _ = tx
                        .send(Outgoing::from(pb::AgentMessage {
                            message: Some(Out::Result(result)),
                        }))
                        .await;
                });
            }
            Some(Ok(pb::CollectorMessage {
                message:
                    Some(In::Command(pb::AgentCommand {
                        id,
                        command: Some(Cmd::Head(h)),
                        ..
                    })),
            })) => {
                // Not an operator's change: no audit record, and quiet in
                // the log (every whole-chain check asks). From a task of its
                // own: a busy agent task does not hold up acknowledgements.
                let (agent, tx) = (agent.clone(), tx.clone());
                tokio::spawn(async move {
                    let (error, head) = match agent
                        .call(|reply| Command::SignedHead {
                            nonce: h.nonce,
                            reply,
                        })
                        .await
                    {
                        Ok(head) => (String::new(), Some(head)),
                        Err(e) => (e.to_string(), None),
                    };
                    debug!(command = id, error = %error, "signed chain head asked by the collector");
                    let _ = tx
                        .send(Outgoing::from(pb::AgentMessage {
                            message: Some(Out::Result(pb::CommandResult {
                                id,
                                error,
                                head,
                                ..Default::default()
                            })),
                        }))
                        .await;
                });
            }
            Some(Ok(pb::CollectorMessage {
                message: Some(In::Command(c)),
            })) => {
                let id = c.id;
                info!(command = id, actor = %c.actor, reason = %c.reason, "command from the collector");
                let error = apply(&agent, c).await;
                if !error.is_empty() {
                    warn!(command = id, error = %error, "command from the collector refused");
                }
                let msg = Outgoing::from(pb::AgentMessage {
                    message: Some(Out::Result(pb::CommandResult {
                        id,
                        error,
                        ..Default::default()
                    })),
                });
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("collector: {}", e.message()),
            None => break "the collector closed the stream".into(),
        }
    };
    let _ = acks.send(Err(why)).await;
}

/// One session with one endpoint; returns why it ended.
async fn session(
    endpoint: &str,
    creds: &Credentials,
    host_id: &str,
    agent: &AgentHandle,
    compiler: &Compiler,
) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        connect(endpoint, creds.tls.as_ref()).await?,
        WithToken(creds.token.clone()),
    ));
    let (tx, rx) = mpsc::channel(16);
    let state = agent
        .call(Command::HostState)
        .await
        .map_err(|e| e.to_string())?;
    tx.send(Outgoing::from(pb::AgentMessage {
        message: Some(Out::Hello(pb::Hello {
            host_id: host_id.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            state: Some(state.clone()),
        })),
    }))
    .await
    .map_err(|_| "stream closed".to_owned())?;
    let mut incoming = wire::deliver(&mut grpc, ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("deliver: {}", e.message()))?;
    let welcome = match incoming.next().await {
        Some(Ok(pb::CollectorMessage {
            message: Some(In::Welcome(w)),
        })) => w,
        Some(Err(e)) => return Err(format!("collector: {}", e.message())),
        other => return Err(format!("expected welcome, got {other:?}")),
    };
    // Everything up to last_seq is stored: drop it here too. Unless the
    // collector claims records this host never wrote (a forged record, a
    // database of another history): then nothing is taken as delivered and
    // every record still spooled is sent again (the collector de-duplicates).
    let (mut first_unacked, mut next_seq) = agent
        .call(Command::SpoolBounds)
        .await
        .map_err(|e| e.to_string())?;
    if welcome.last_seq >= next_seq
        && agent
            .call(|reply| Command::CollectorAhead {
                last_seq: welcome.last_seq,
                reply,
            })
            .await
            .map_err(|e| e.to_string())?
    {
        // The spool lost its history: it numbers after the collector now.
        (first_unacked, next_seq) = agent
            .call(Command::SpoolBounds)
            .await
            .map_err(|e| e.to_string())?;
    }
    let believed = if welcome.last_seq >= next_seq {
        error!(
            endpoint,
            collector_last_seq = welcome.last_seq,
            written = next_seq - 1,
            "the collector claims records this host never wrote; not trusting it: every unacknowledged record is delivered again"
        );
        0
    } else {
        welcome.last_seq
    };
    agent
        .send(Command::Acked {
            seq: believed,
            connected: Some(endpoint.to_owned()),
        })
        .await;
    info!(endpoint, last_seq = welcome.last_seq, "collector connected");
    let (ack_tx, mut acks) = mpsc::channel(64);
    let reader = tokio::spawn(read_loop(
        incoming,
        ack_tx,
        tx.clone(),
        agent.clone(),
        compiler.clone(),
    ));
    // The reader ends with the session, however the session ends.
    let _reader = AbortOnDrop(reader);
    let mut reported = state;
    let mut state_checked = std::time::Instant::now();
    let mut next = if believed == 0 {
        first_unacked
    } else {
        believed + 1
    };
    // (last sequence, when sent) of each batch not yet acknowledged.
    let mut in_flight: std::collections::VecDeque<(u64, std::time::Instant)> =
        std::collections::VecDeque::new();
    loop {
        if state_checked.elapsed() >= STATE_POLL {
            state_checked = std::time::Instant::now();
            let state = agent
                .call(Command::HostState)
                .await
                .map_err(|e| e.to_string())?;
            if state != reported {
                tx.send(Outgoing::from(pb::AgentMessage {
                    message: Some(Out::State(state.clone())),
                }))
                .await
                .map_err(|_| "stream closed".to_owned())?;
                reported = state;
            }
        }
        // Up to PIPELINE batches in flight: the collector commits one while
        // the next is on the wire.
        if in_flight.len() < PIPELINE {
            let frames = agent
                .call(|reply| Command::ReadSpool {
                    from: next,
                    max: BATCH,
                    reply,
                })
                .await
                .map_err(|e| e.to_string())?;
            if !frames.is_empty() {
                let frames = fit_batch(frames.into_iter().map(deliverable).collect());
                let upto = frames.last().map_or(next, |f| f.seq);
                tx.send(Outgoing::Frames(frames))
                    .await
                    .map_err(|_| "stream closed".to_owned())?;
                in_flight.push_back((upto, std::time::Instant::now()));
                next = upto + 1;
                continue;
            }
        }
        let Some(&(_, oldest)) = in_flight.front() else {
            // Idle: a look for new records after IDLE_POLL, unless the
            // stream ended meanwhile (a collector that went away while
            // nothing was in flight is noticed now, not at the next record:
            // until then its fleet commands could not reach this host).
            match tokio::time::timeout(IDLE_POLL, acks.recv()).await {
                Ok(Some(Err(why))) => return Err(why),
                Ok(None) => return Err("the stream reader stopped".into()),
                Ok(Some(Ok(_))) | Err(_) => continue,
            }
        };
        if oldest.elapsed() > ACK_TIMEOUT {
            return Err(format!("no acknowledgement in {} s", ACK_TIMEOUT.as_secs()));
        }
        // Acknowledgements (the collector answers in order), or a look for
        // new records after IDLE_POLL.
        let seq = match tokio::time::timeout(IDLE_POLL, acks.recv()).await {
            Ok(Some(Ok(seq))) => seq,
            Ok(Some(Err(why))) => return Err(why),
            Ok(None) => return Err("the stream reader stopped".into()),
            Err(_) => continue,
        };
        let sent_upto = in_flight.back().map_or(0, |b| b.0);
        // Never more than was sent: the spool drops what is acknowledged,
        // and a collector that claims more would make it drop records it
        // never had.
        if seq > sent_upto {
            error!(
                endpoint,
                acked = seq,
                sent_up_to = sent_upto,
                "the collector acknowledged records it was not sent; taking only what was sent as delivered"
            );
        }
        let seq = seq.min(sent_upto);
        agent
            .send(Command::Acked {
                seq,
                connected: None,
            })
            .await;
        while in_flight.front().is_some_and(|b| b.0 <= seq) {
            in_flight.pop_front();
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs forever: delivers the spool to the first reachable endpoint.
/// `compiler`: the agent's (what-if commands compile within its bounds).
pub async fn run(
    endpoints: Vec<String>,
    creds: Credentials,
    host_id: String,
    agent: AgentHandle,
    compiler: Compiler,
) {
    let mut backoff = Duration::from_millis(200);
    let mut i = 0;
    loop {
        let endpoint = &endpoints[i % endpoints.len()];
        let started = std::time::Instant::now();
        let why = match session(endpoint, &creds, &host_id, &agent, &compiler).await {
            Ok(()) => "session ended".to_owned(),
            Err(e) => e,
        };
        agent
            .send(Command::Disconnected {
                why: format!("{endpoint}: {why}"),
            })
            .await;
        warn!(endpoint = %endpoint, error = %why, retry_in_ms = backoff.as_millis() as u64, "collector unreachable; records stay in the spool");
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, body: usize) -> Frame {
        let flow = residency_proto::agent::v1::Flow {
            exe: "x".repeat(body),
            ..Default::default()
        };
        Frame {
            seq,
            payload: encode_spooled(1, Spooled::Violation(&flow)),
        }
    }

    #[test]
    fn batches_stay_under_the_byte_limit_and_a_giant_is_replaced() {
        let small: Vec<_> = (1..=500).map(|s| record(s, 10_000)).collect();
        let b = fit_batch(small);
        assert!(b.len() < 500 && b.len() > 50, "{}", b.len());
        assert_eq!(b.last().map(|r| r.seq), Some(b.len() as u64));
        let b = fit_batch(vec![record(7, 11 << 20), record(8, 10)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].seq, 7);
        let r = crate::export::record::decode_spooled(7, &b[0].payload);
        assert_eq!(r.time_unix_ns, 1, "the gap keeps the record's time");
        let Some(pb::record::Body::Gap(g)) = &r.body else {
            panic!("{:?}", r.body)
        };
        assert_eq!(
            (g.source(), g.first_seq, g.last_seq),
            (pb::GapSource::Undeliverable, 7, 7)
        );
        assert_eq!(b[1].seq, 8);
    }
}
