//! The collector's Prometheus metrics (served on `--admin-listen`): what
//! an SRE alerts on — records stored per host and kind, how long commits
//! take, connected agents and watchers, database errors, when each host
//! was last heard from.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of stored records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    pub host: String,
    pub kind: String,
}

/// Labels of per-host gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// Every metric the collector exports.
pub struct Metrics {
    registry: Registry,
    pub records: Family<RecordLabels, Counter>,
    pub commit_seconds: Histogram,
    pub connected_agents: Gauge,
    pub watchers: Gauge,
    pub database_errors: Counter,
    pub last_seen: Family<HostLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("residency_collector");
        let m = Metrics {
            registry: Registry::default(),
            records: Family::default(),
            // 0.5 ms to ~8 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            connected_agents: Gauge::default(),
            watchers: Gauge::default(),
            database_errors: Counter::default(),
            last_seen: Family::default(),
        };
        registry.register(
            "records_stored",
            "Records stored (new, not duplicates), by host and kind (violation, audit, gap, attestation)",
            m.records.clone(),
        );
        registry.register(
            "batch_commit_seconds",
            "Time to commit one group of batches (one transaction, one fsync)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "connected_agents",
            "Agents with an open delivery stream",
            m.connected_agents.clone(),
        );
        registry.register(
            "watchers",
            "Open WatchViolations streams",
            m.watchers.clone(),
        );
        registry.register(
            "database_errors",
            "Commits and reads the database refused or failed",
            m.database_errors.clone(),
        );
        registry.register(
            "host_last_record_timestamp_seconds",
            "When this collector last stored a record of the host (Unix seconds)",
            m.last_seen.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        residency_daemon::admin::render(&self.registry)
    }
}
