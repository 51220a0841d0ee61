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
    /// Records not yet written to the spool.
    pending: Vec<AuditRecord>,
}

impl AuditLog {
    /// Records and logs a change.
    pub fn record(&mut self, actor: &str, action: &str, reason: &str) {
        info!(target: "audit", actor, action, reason, "audit");
        let r = AuditRecord {
            at: SystemTime::now(),
            actor: actor.into(),
            action: action.into(),
            reason: reason.into(),
        };
        self.pending.push(r.clone());
        self.records.push(r);
    }

    /// Every record so far.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }
}

impl AuditLog {
    /// Records not yet handed to the spool (they are handed over once).
    pub fn take_pending(&mut self) -> Vec<AuditRecord> {
        std::mem::take(&mut self.pending)
    }
}

impl From<&AuditRecord> for residency_proto::collector::v1::Audit {
    fn from(r: &AuditRecord) -> Self {
        Self {
            actor: r.actor.clone(),
            action: r.action.clone(),
            reason: r.reason.clone(),
        }
    }
}
