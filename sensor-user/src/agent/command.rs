//! How the rest of sensord talks to the agent task: [`Command`]s with a reply
//! channel, through a cloneable [`AgentHandle`].

use std::net::IpAddr;

use residency_proto::{agent::v1 as pb, collector::v1 as cpb};
use tokio::sync::{mpsc, oneshot};

use super::{compiler, policy_state};
use crate::{SensorError, kernel::verdicts::Mode};

/// Why a command failed; the API maps these to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request is wrong (INVALID_ARGUMENT), with what to do.
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The agent failed (INTERNAL).
    #[error("{0}")]
    Internal(String),
    /// Too much is queued; retry later (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Busy(String),
    /// It took too long and was abandoned (DEADLINE_EXCEEDED).
    #[error("{0}")]
    Deadline(String),
}

impl From<SensorError> for CommandError {
    fn from(e: SensorError) -> Self {
        CommandError::Internal(e.to_string())
    }
}

/// How long an API request waits for the agent's answer: no caller waits
/// for ever on an agent that is stuck (a policy compile of the world
/// dataset takes seconds, not minutes).
pub const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

pub(crate) type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// Requests to the agent task. `actor` names the caller for audit records.
#[derive(Debug)]
pub enum Command {
    Status(Reply<pb::Status>),
    Tagged(Reply<pb::ListTaggedResponse>),
    Tag {
        pid: u32,
        class: String,
        actor: String,
        reply: Reply<()>,
    },
    Untag {
        pid: u32,
        class: String,
        actor: String,
        reply: Reply<()>,
    },
    SetEnforcement {
        class: Option<String>,
        mode: Mode,
        reason: String,
        actor: String,
        reply: Reply<Vec<pb::ClassMode>>,
    },
    /// What a policy is compiled from now (see `policy_state`).
    CompileInputs(Reply<policy_state::CompileInputs>),
    /// A compile finished (off this task): install it if its inputs are
    /// still current, else compile the same change again over them. The
    /// reply gets the new generation.
    Compiled {
        result: Result<Box<compiler::Built>, CommandError>,
        serial: u64,
        intent: policy_state::Intent,
        reply: Option<Reply<u32>>,
    },
    GetPolicy(Reply<pb::GetPolicyResponse>),
    /// A dry run: what `policy` would change for `flows`, or for the flows
    /// seen recently when None (see `what_if`), and how many were replayed.
    WhatIf {
        policy: Box<crate::policy::compile::Compiled>,
        flows: Option<Vec<pb::Flow>>,
        reply: Reply<(Vec<pb::VerdictChange>, u64)>,
    },
    Lookup {
        ip: IpAddr,
        class: Option<String>,
        reply: Reply<pb::LookupResponse>,
    },
    /// A DNS name (checked): the name rules on it and what was learned.
    LookupName {
        name: String,
        class: Option<String>,
        reply: Reply<pb::LookupResponse>,
    },
    /// The spool's oldest unacknowledged sequence and the next one it will
    /// give (for delivery: what the collector can truthfully claim to have).
    SpoolBounds(Reply<(u64, u64)>),
    /// Spooled records from sequence `from` on (for delivery).
    ReadSpool {
        from: u64,
        max: usize,
        reply: Reply<Vec<crate::export::wire::Frame>>,
    },
    /// The collector stored everything up to `seq`; `connected` names the
    /// endpoint when a session just started.
    Acked {
        seq: u64,
        connected: Option<String>,
    },
    /// The collector holds records up to `last_seq`, past what the spool
    /// has numbered. When the spool's history is unknown (new or wiped), its
    /// numbering continues after the collector's and the reply is true; else
    /// (a forged record at the collector) false.
    CollectorAhead {
        last_seq: u64,
        reply: Reply<bool>,
    },
    /// The chain head and what a collector acknowledged, signed, answering
    /// a collector's `nonce`.
    SignedHead {
        nonce: Vec<u8>,
        reply: Reply<cpb::SignedHead>,
    },
    /// The delivery session ended.
    Disconnected {
        why: String,
    },
    /// Reload the policy from its file (SIGHUP).
    Reload,
    /// What the collector is told about this host.
    HostState(Reply<cpb::HostState>),
    /// Grant (or replace, by id) an exception from the collector; the reply
    /// gets the generation it is in force with.
    GrantException {
        state: cpb::ExceptionState,
        reply: Reply<u32>,
    },
}

impl Command {
    /// What delivery needs: served while a stopping agent hands its spool
    /// to the collector.
    pub(super) fn is_delivery(&self) -> bool {
        matches!(
            self,
            Command::SpoolBounds(_)
                | Command::ReadSpool { .. }
                | Command::Acked { .. }
                | Command::CollectorAhead { .. }
                | Command::Disconnected { .. }
                | Command::HostState(_)
                | Command::SignedHead { .. }
        )
    }

    /// Answers with `why` instead of doing it (commands without a reply are
    /// dropped).
    pub(super) fn refuse(self, why: &str) {
        fn no<T>(r: Reply<T>, why: &str) {
            let _ = r.send(Err(CommandError::Busy(why.to_owned())));
        }
        match self {
            Command::Status(r) => no(r, why),
            Command::Tagged(r) => no(r, why),
            Command::Tag { reply, .. } | Command::Untag { reply, .. } => no(reply, why),
            Command::SetEnforcement { reply, .. } => no(reply, why),
            Command::CompileInputs(r) => no(r, why),
            Command::Compiled { reply, .. } => {
                if let Some(r) = reply {
                    no(r, why);
                }
            }
            Command::GetPolicy(r) => no(r, why),
            Command::WhatIf { reply, .. } => no(reply, why),
            Command::Lookup { reply, .. } | Command::LookupName { reply, .. } => no(reply, why),
            Command::SpoolBounds(r) => no(r, why),
            Command::ReadSpool { reply, .. } => no(reply, why),
            Command::CollectorAhead { reply, .. } => no(reply, why),
            Command::HostState(r) => no(r, why),
            Command::SignedHead { reply, .. } => no(reply, why),
            Command::GrantException { reply, .. } => no(reply, why),
            Command::Acked { .. } | Command::Disconnected { .. } | Command::Reload => {}
        }
    }
}

/// A cheap, cloneable way to talk to the agent task.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    pub(super) tx: mpsc::Sender<Command>,
}

impl AgentHandle {
    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| CommandError::Internal("the agent is shutting down".into()))?;
        match tokio::time::timeout(CALL_DEADLINE, rx).await {
            Ok(reply) => {
                reply.map_err(|_| CommandError::Internal("the agent dropped the request".into()))?
            }
            Err(_) => Err(CommandError::Deadline(format!(
                "the agent did not answer within {} s (overloaded or stuck: see sensord's log); the request may still take effect",
                CALL_DEADLINE.as_secs()
            ))),
        }
    }

    /// Sends a command without a reply.
    pub async fn send(&self, c: Command) {
        let _ = self.tx.send(c).await;
    }
}
