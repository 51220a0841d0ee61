//! The policy in force and how a new one gets there.
//!
//! Every change of what the kernel enforces goes the same way: compiled off
//! the agent's task ([`super::compiler`]: API applies and dry runs, SIGHUP
//! reloads, exceptions granted or expired), then installed on the task whole
//! or not at all ([`Agent::switch_policy`]). A compile carries the serial of
//! the inputs it started from (policy text and exceptions); if they changed
//! meanwhile, the same change is compiled again over the current ones, so a
//! slow compile never undoes a newer change.

use std::time::SystemTime;

use residency_proto::{agent::v1 as pb, collector::v1 as cpb};
use tracing::{error, info, warn};

use super::{
    Agent, Command, CommandError, Reply,
    compiler::{Budget, Built, Input},
};
use crate::{
    SensorError,
    policy::{
        compile::Compiled,
        exceptions::{self, Exception},
        source::PolicySource,
    },
};

/// What a policy is compiled from now.
#[derive(Debug, Clone)]
pub struct CompileInputs {
    pub source: PolicySource,
    pub exceptions: Vec<Exception>,
    /// The text of the policy in force.
    pub policy_text: String,
    /// Class names of the policy in force (for dry-run comparisons).
    pub classes: Vec<String>,
    pub serial: u64,
}

/// The change a compile is for.
#[derive(Debug, Clone)]
pub enum Intent {
    /// ApplyPolicy over the API.
    Apply { reason: String, actor: String },
    /// The policy file again (SIGHUP).
    Reload,
    /// Exceptions granted (replacing any with the same id) or expired.
    Exceptions {
        granted: Option<Exception>,
        expired: Vec<Exception>,
    },
}

/// The response to ApplyPolicy for `compiled` against the classes in force
/// (generation 0 until installed).
pub fn apply_response(compiled: &Compiled, old_classes: &[String]) -> pb::ApplyPolicyResponse {
    let new: Vec<&str> = compiled
        .policy
        .classes
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    pb::ApplyPolicyResponse {
        policy_sha256: compiled.policy.hash.clone(),
        prefixes: compiled
            .classes
            .iter()
            .map(|c| pb::ClassPrefixes {
                class: c.name.clone(),
                allow: c.allow_prefixes as u64,
                deny: c.deny_prefixes as u64,
                before_merging: c.prefixes_before as u64,
            })
            .collect(),
        classes_added: new
            .iter()
            .filter(|n| !old_classes.iter().any(|o| o == *n))
            .map(|n| (*n).to_owned())
            .collect(),
        classes_removed: old_classes
            .iter()
            .filter(|o| !new.contains(&o.as_str()))
            .cloned()
            .collect(),
        generation: 0,
        warnings: Vec::new(),
        changes: Vec::new(),
        flows_replayed: 0,
    }
}

impl Agent {
    pub(super) fn compile_inputs(&self) -> CompileInputs {
        CompileInputs {
            source: self.cfg.source.clone(),
            exceptions: self.exceptions.clone(),
            policy_text: self.policy_text.clone(),
            classes: self
                .compiled
                .policy
                .classes
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            serial: self.inputs_serial,
        }
    }

    /// The exceptions `intent` leaves in force, from the current ones.
    fn exceptions_after(&self, intent: &Intent) -> Vec<Exception> {
        match intent {
            Intent::Exceptions { granted, expired } => {
                // An expired one goes only if it still is: renewed under the
                // same id meanwhile, it stays.
                let now = SystemTime::now();
                let gone = |x: &Exception| {
                    (x.expired(now) && expired.iter().any(|e| e.state.id == x.state.id))
                        || granted.as_ref().is_some_and(|g| g.state.id == x.state.id)
                };
                self.exceptions
                    .iter()
                    .filter(|x| !gone(x))
                    .cloned()
                    .chain(granted.clone())
                    .collect()
            }
            _ => self.exceptions.clone(),
        }
    }

    /// Compiles `intent` over the current inputs off this task; the result
    /// comes back as `Command::Compiled`.
    fn spawn_compile(&mut self, input: Input, intent: Intent, reply: Option<Reply<u32>>) {
        let Some(handle) = self.handle.clone() else {
            // Not running yet (start-up compiles synchronously).
            if let Some(r) = reply {
                let _ = r.send(Err(CommandError::Internal("the agent is starting".into())));
            }
            return;
        };
        let compiler = self.compiler.clone();
        let source = self.cfg.source.clone();
        let exceptions = self.exceptions_after(&intent);
        let serial = self.inputs_serial;
        tokio::spawn(async move {
            let result = compiler
                .build(source, input, exceptions, Budget::OPERATOR)
                .await
                .map(Box::new);
            handle
                .send(Command::Compiled {
                    result,
                    serial,
                    intent,
                    reply,
                })
                .await;
        });
    }

    /// SIGHUP: compile the policy file again, off this task.
    pub(super) fn start_reload(&mut self) {
        info!(policy = %self.cfg.source.policy.display(), "reloading the policy");
        self.spawn_compile(Input::File, Intent::Reload, None);
    }

    /// A compile finished: install it, or redo it over newer inputs.
    pub(super) fn on_compiled(
        &mut self,
        result: Result<Box<Built>, CommandError>,
        serial: u64,
        intent: Intent,
        reply: Option<Reply<u32>>,
    ) {
        let expiry = matches!(&intent, Intent::Exceptions { expired, .. } if !expired.is_empty());
        let built = match result {
            Ok(b) => *b,
            Err(e) => {
                match &intent {
                    Intent::Reload => {
                        self.metrics.policy_reload_failures.inc();
                        error!(sha256 = %self.compiled.policy.hash, "policy reload rejected; the running policy stays in force:\n{e}");
                    }
                    Intent::Exceptions { .. } => {
                        error!(error = %e, "compiling the policy with the changed exceptions failed; the exceptions in force stay (expiries are retried every second)");
                    }
                    Intent::Apply { .. } => {}
                }
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                if expiry {
                    self.expiry_compiling = false;
                }
                return;
            }
        };
        if serial != self.inputs_serial {
            // Still compiling for this expiry: the flag stays set.
            // The policy or the exceptions changed while this compiled.
            let input = match &intent {
                Intent::Apply { .. } => Input::Text(built.1),
                Intent::Reload => Input::File,
                Intent::Exceptions { .. } => Input::Text(self.policy_text.clone()),
            };
            self.spawn_compile(input, intent, reply);
            return;
        }
        if expiry {
            self.expiry_compiling = false;
        }
        let (compiled, text) = built;
        let exceptions = self.exceptions_after(&intent);
        let res = self.switch_policy(compiled).map_err(CommandError::from);
        if let Err(e) = &res {
            if matches!(intent, Intent::Reload) {
                self.metrics.policy_reload_failures.inc();
                error!(error = %e, sha256 = %self.compiled.policy.hash, "policy reload failed while installing; the previous policy is in force");
            }
        } else {
            self.inputs_serial += 1;
            self.after_install(intent, text, exceptions);
        }
        if let Some(r) = reply {
            let _ = r.send(res.map(|()| self.sensor.generation()));
        }
    }

    /// Bookkeeping and audit records once `intent` is in force.
    fn after_install(&mut self, intent: Intent, text: String, exceptions: Vec<Exception>) {
        let hash = self.compiled.policy.hash.clone();
        match intent {
            Intent::Apply { reason, actor } => {
                // The file on disk stays as it was: an API-applied policy is
                // in force until the next reload of the file or ApplyPolicy.
                self.policy_text = text;
                self.loaded_at = SystemTime::now();
                self.metrics.policy_reloads.inc();
                self.audit
                    .record(&actor, &format!("applied policy sha256 {hash}"), &reason);
            }
            Intent::Reload => {
                self.policy_text = text;
                self.loaded_at = SystemTime::now();
                self.metrics.policy_reloads.inc();
                self.audit.record(
                    "signal",
                    &format!("reloaded policy sha256 {hash}"),
                    "SIGHUP",
                );
            }
            Intent::Exceptions { granted, expired } => {
                if let Some(dir) = &self.cfg.spool_dir
                    && let Err(e) = exceptions::save(dir, &exceptions)
                {
                    error!(dir = %dir.display(), error = %e, "saving the exceptions failed; they are in force but will not survive a restart");
                }
                self.exceptions = exceptions;
                if let Some(e) = granted {
                    let until = e.state.expires_unix_ns / 1_000_000_000;
                    self.audit.record(
                        &e.state.actor,
                        &format!(
                            "granted exception {}: class {} may reach {} until Unix time {until}",
                            e.state.id, e.state.class, e.state.destination
                        ),
                        &e.state.justification,
                    );
                }
                for e in expired {
                    self.audit.record(
                        "agent",
                        &format!(
                            "exception {} expired: class {} may no longer reach {}",
                            e.state.id, e.state.class, e.state.destination
                        ),
                        &e.state.justification,
                    );
                }
            }
        }
        self.spool_sync();
    }

    /// An exception from the collector: checked here, compiled off this task.
    pub(super) fn grant_exception(&mut self, state: cpb::ExceptionState, reply: Reply<u32>) {
        let e = match Exception::parse(state) {
            Ok(e) => e,
            Err(m) => return drop(reply.send(Err(CommandError::Invalid(m)))),
        };
        if let Err(err) = self.class_id(&e.state.class) {
            return drop(reply.send(Err(err)));
        }
        if e.expired(SystemTime::now()) {
            return drop(reply.send(Err(CommandError::Invalid(format!(
                "exception {} has already expired (check the clocks of the collector and this host)",
                e.state.id
            )))));
        }
        let input = Input::Text(self.policy_text.clone());
        let intent = Intent::Exceptions {
            granted: Some(e),
            expired: Vec::new(),
        };
        self.spawn_compile(input, intent, Some(reply));
    }

    /// Removes exceptions whose time is up (compiled off this task; until it
    /// is installed the exception stays in force, which is logged).
    pub(super) fn expire_exceptions(&mut self) {
        let now = SystemTime::now();
        if self.expiry_compiling {
            return;
        }
        let expired: Vec<Exception> = self
            .exceptions
            .iter()
            .filter(|e| e.expired(now))
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        warn!(
            count = expired.len(),
            "exceptions expired; compiling the policy without them"
        );
        self.expiry_compiling = true;
        let input = Input::Text(self.policy_text.clone());
        let intent = Intent::Exceptions {
            granted: None,
            expired,
        };
        self.spawn_compile(input, intent, None);
    }

    /// Puts `new` in force, whole or not at all: when installing it fails
    /// part-way (the kernel refused a write), the previous policy is installed
    /// again over whatever was written, so the kernel enforces the policy
    /// `status` names. Should even that fail, `status` says so
    /// (`policy_problem`) until a policy installs cleanly.
    fn switch_policy(&mut self, new: Compiled) -> Result<(), SensorError> {
        let previous = std::mem::replace(&mut self.compiled, new);
        let Err(e) = self.install() else {
            self.policy_problem.clear();
            return Ok(());
        };
        self.compiled = previous;
        match self.install() {
            Ok(()) => {
                warn!(error = %e, sha256 = %self.compiled.policy.hash, "installing the new policy failed; the previous policy was installed again and is in force");
            }
            Err(again) => {
                self.policy_problem = format!(
                    "installing a new policy failed ({e}) and re-installing the previous one failed too ({again}): the kernel may hold parts of both; apply a policy again"
                );
                error!(error = %e, rollback_error = %again, "the kernel may hold parts of two policies");
            }
        }
        Err(e)
    }
}
