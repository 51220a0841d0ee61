//! Policy compilation off the agent's task.
//!
//! Compiling a policy against the full region dataset takes seconds and
//! hundreds of MB; done on the task that drains the ring buffer it stalled
//! every API call and let the kernel drop records. Every compile (API applies
//! and dry runs, SIGHUP reloads, exception changes) runs here instead: on
//! tokio's blocking pool, at most [`CONCURRENT`] at a time, with at most
//! [`QUEUED`] more waiting (callers beyond that are told to retry), and a
//! deadline per caller class ([`Budget`]). The agent's task only installs the
//! result.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use super::CommandError;
use crate::policy::{
    compile::Compiled,
    exceptions::Exception,
    source::{BuildError, PolicySource},
};

/// Compiles running at once.
pub const CONCURRENT: usize = 1;
/// Compiles waiting for a slot; one more is refused as busy.
pub const QUEUED: usize = 4;
/// Of those, how many may be viewers' dry runs: viewers cannot fill the
/// queue that reloads, operators and exception expiries need.
pub const VIEWERS_QUEUED: usize = 1;

/// What one caller may ask of the compiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Largest policy text accepted, in bytes.
    pub max_bytes: usize,
    /// Longest wait for the result (queue and compile).
    pub deadline: Duration,
}

impl Budget {
    /// Operators and the agent itself: policies up to 8 MiB, 5 minutes.
    pub const OPERATOR: Budget = Budget {
        max_bytes: 8 << 20,
        deadline: Duration::from_secs(300),
    };
    /// Read-only viewers' dry runs: 1 MiB, 30 s.
    pub const VIEWER: Budget = Budget {
        max_bytes: 1 << 20,
        deadline: Duration::from_secs(30),
    };
}

/// What to compile: the policy file, or given text; widened by exceptions.
#[derive(Debug, Clone)]
pub enum Input {
    /// Read the policy file now (SIGHUP).
    File,
    /// This text, as if it were the policy file.
    Text(String),
}

/// The compiler; cheap to clone.
#[derive(Clone, Debug)]
pub struct Compiler {
    running: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    viewers: Arc<Semaphore>,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler {
            running: Arc::new(Semaphore::new(CONCURRENT)),
            waiting: Arc::new(Semaphore::new(CONCURRENT + QUEUED)),
            viewers: Arc::new(Semaphore::new(VIEWERS_QUEUED)),
        }
    }
}

/// A compiled policy and the text it was compiled from.
pub type Built = (Compiled, String);

impl Compiler {
    /// Compiles `input` with `exceptions` within `budget`.
    pub async fn build(
        &self,
        source: PolicySource,
        input: Input,
        exceptions: Vec<Exception>,
        budget: Budget,
    ) -> Result<Built, CommandError> {
        if let Input::Text(t) = &input
            && t.len() > budget.max_bytes
        {
            return Err(CommandError::Invalid(format!(
                "the policy is {} bytes; this caller may send at most {} (operators: {})",
                t.len(),
                budget.max_bytes,
                Budget::OPERATOR.max_bytes
            )));
        }
        let viewer = if budget == Budget::VIEWER {
            let Ok(p) = self.viewers.clone().try_acquire_owned() else {
                return Err(CommandError::Busy(
                    "a viewer's dry run is compiling already; retry when it is done".into(),
                ));
            };
            Some(p)
        } else {
            None
        };
        let Ok(queued) = self.waiting.clone().try_acquire_owned() else {
            return Err(CommandError::Busy(format!(
                "{} policy compilations are running or queued; retry in a few seconds",
                CONCURRENT + QUEUED
            )));
        };
        let work = async {
            let slot = self
                .running
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| CommandError::Internal("the compiler is shutting down".into()))?;
            let task = tokio::task::spawn_blocking(move || {
                // The slot and the queue place are held until the compile
                // ends, also when its caller gave up waiting: the number of
                // compiles in memory stays bounded.
                let _held = (slot, queued, viewer);
                match input {
                    Input::File => {
                        let text =
                            std::fs::read_to_string(&source.policy).map_err(|e| BuildError::Read {
                                path: source.policy.clone(),
                                source: e,
                            });
                        text.and_then(|t| source.build_text(&t, &exceptions).map(|c| (c, t)))
                    }
                    Input::Text(t) => source.build_text(&t, &exceptions).map(|c| (c, t)),
                }
            });
            task.await
                .map_err(|e| CommandError::Internal(format!("the policy compiler failed: {e}")))?
                .map_err(|e| match e {
                    BuildError::Policy(e) => CommandError::Invalid(e.to_string()),
                    BuildError::Capacity(m) => CommandError::Invalid(m),
                    e => CommandError::Internal(e.to_string()),
                })
        };
        tokio::time::timeout(budget.deadline, work)
            .await
            .map_err(|_| {
                CommandError::Deadline(format!(
                    "compiling the policy took longer than {} s; it was abandoned",
                    budget.deadline.as_secs()
                ))
            })?
    }
}
