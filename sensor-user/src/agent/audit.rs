//! Audit records: every change of enforcement, tags or policy, with who, when
//! and why. Kept in memory and logged under the `audit` target (the collector
//! issue delivers them upstream through the durable spool).

use std::time::SystemTime;

use tracing::info;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: SystemTime,
    /// Who: "uid 0 (pid 1234)", "signal", a certificate's name.
    pub actor: String,
    pub action: String,
    pub reason: String,
}

/// The audit records of this agent run.
#[derive(Debug, Default)]
pub struct AuditLog {
    records: Vec<AuditRecord>,
}

impl AuditLog {
    /// Records and logs a change.
    pub fn record(&mut self, actor: &str, action: &str, reason: &str) {
        info!(target: "audit", actor, action, reason, "audit");
        self.records.push(AuditRecord {
            at: SystemTime::now(),
            actor: actor.into(),
            action: action.into(),
            reason: reason.into(),
        });
    }

    /// Every record so far.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }
}
