//! Delivery to the collector: a task that reads the spool through the agent
//! (which owns it), streams batches with their sequence numbers, and tells the
//! agent to drop what the collector acknowledged — only after its commit.
//! Reconnects back off exponentially with jitter and rotate through the
//! configured endpoints.

use std::time::Duration;

use residency_proto::collector::v1::{
    self as pb, agent_message::Message as Out, collector_client::CollectorClient,
    collector_message::Message as In,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tracing::{info, warn};

use crate::agent::{AgentHandle, Command};

/// Records per batch.
const BATCH: usize = 500;

fn jitter(base: Duration) -> Duration {
    // Up to +50%, from the clock's nanoseconds: enough to spread a fleet's
    // reconnects without a random number generator.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(n % 500) / 1000.0)
}

/// One session with one endpoint; returns why it ended.
async fn session(endpoint: &str, host_id: &str, agent: &AgentHandle) -> Result<(), String> {
    let mut client = CollectorClient::connect(endpoint.to_owned())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        message: Some(Out::Hello(pb::Hello {
            host_id: host_id.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })),
    })
    .await
    .map_err(|_| "stream closed".to_owned())?;
    let mut incoming = client
        .deliver(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("deliver: {}", e.message()))?
        .into_inner();
    let welcome = match incoming.next().await {
        Some(Ok(pb::CollectorMessage {
            message: Some(In::Welcome(w)),
        })) => w,
        other => return Err(format!("expected welcome, got {other:?}")),
    };
    // Everything up to last_seq is stored: drop it here too.
    agent
        .send(Command::Acked {
            seq: welcome.last_seq,
            connected: Some(endpoint.to_owned()),
        })
        .await;
    info!(endpoint, last_seq = welcome.last_seq, "collector connected");
    let mut next = welcome.last_seq + 1;
    loop {
        let records = agent
            .call(|reply| Command::ReadSpool {
                from: next,
                max: BATCH,
                reply,
            })
            .await
            .map_err(|e| e.to_string())?;
        if records.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let upto = records.last().map(|r| r.seq).unwrap_or(next);
        tx.send(pb::AgentMessage {
            message: Some(Out::Batch(pb::Batch { records })),
        })
        .await
        .map_err(|_| "stream closed".to_owned())?;
        // Wait for this batch's acknowledgement (the collector answers in order).
        loop {
            match tokio::time::timeout(Duration::from_secs(30), incoming.next()).await {
                Ok(Some(Ok(pb::CollectorMessage {
                    message: Some(In::Ack(a)),
                }))) => {
                    agent
                        .send(Command::Acked {
                            seq: a.seq,
                            connected: None,
                        })
                        .await;
                    if a.seq >= upto {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("collector: {}", e.message())),
                Ok(None) => return Err("the collector closed the stream".into()),
                Err(_) => return Err("no acknowledgement in 30 s".into()),
            }
        }
        next = upto + 1;
    }
}

/// Runs forever: delivers the spool to the first reachable endpoint.
pub async fn run(endpoints: Vec<String>, host_id: String, agent: AgentHandle) {
    let mut backoff = Duration::from_millis(200);
    let mut i = 0;
    loop {
        let endpoint = &endpoints[i % endpoints.len()];
        let started = std::time::Instant::now();
        let why = match session(endpoint, &host_id, &agent).await {
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
