//! Prometheus metrics (opt-in `[metrics] listen`): what an SRE alerts on,
//! served by the admin endpoints (`residency_daemon::admin`).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of violation counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub class: String,
    pub action: String,
    /// ISO code of the destination country ("" unknown).
    pub country: String,
}

/// Labels of kernel counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabels {
    pub counter: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub events: Counter,
    pub violations: Family<ViolationLabels, Counter>,
    pub kernel: Family<CounterLabels, Gauge<u64, AtomicU64>>,
    pub tagged_processes: Gauge,
    pub tag_map_used_ratio: Gauge<f64, AtomicU64>,
    pub verdict_prefixes: Gauge,
    pub spool_depth: Gauge,
    pub spool_unwritable: Gauge,
    pub unspooled: Counter,
    pub policy_reloads: Counter,
    pub policy_reload_failures: Counter,
    pub dns_answers: Counter,
    pub dns_ignored: Counter,
    pub name_entries_written: Counter,
    pub name_answers_untrusted: Counter,
    pub name_entries_refused: Counter,
    pub name_entries: Gauge,
    pub doh_flows: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("residency_sensor");
        let m = Metrics {
            events: Counter::default(),
            violations: Family::default(),
            kernel: Family::default(),
            tagged_processes: Gauge::default(),
            tag_map_used_ratio: Gauge::default(),
            verdict_prefixes: Gauge::default(),
            spool_depth: Gauge::default(),
            spool_unwritable: Gauge::default(),
            unspooled: Counter::default(),
            policy_reloads: Counter::default(),
            policy_reload_failures: Counter::default(),
            dns_answers: Counter::default(),
            dns_ignored: Counter::default(),
            name_entries_written: Counter::default(),
            name_answers_untrusted: Counter::default(),
            name_entries_refused: Counter::default(),
            name_entries: Gauge::default(),
            doh_flows: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events",
            since_start("Records received from the kernel"),
            m.events.clone(),
        );
        registry.register(
            "violations",
            since_start("Violations by class, action (reported, denied) and destination country, each folded record with its count"),
            m.violations.clone(),
        );
        registry.register(
            "kernel_counter",
            "Kernel counters: losses, map-full conditions, violations, denials",
            m.kernel.clone(),
        );
        registry.register(
            "tagged_processes",
            "Processes carrying classes",
            m.tagged_processes.clone(),
        );
        registry.register(
            "tag_map_used_ratio",
            "Fill of the kernel's process tag map (1 = full)",
            m.tag_map_used_ratio.clone(),
        );
        registry.register(
            "verdict_prefixes",
            "Prefixes in the kernel's verdict table",
            m.verdict_prefixes.clone(),
        );
        registry.register(
            "spool_depth",
            "Records waiting in the outbound spool",
            m.spool_depth.clone(),
        );
        registry.register(
            "spool_unwritable",
            "1 while the spool cannot be opened or written (full disk, broken files; see sensorctl status), else 0",
            m.spool_unwritable.clone(),
        );
        registry.register(
            "unspooled",
            since_start("Records the spool could not take (each reported in a gap record once it takes writes again)"),
            m.unspooled.clone(),
        );
        registry.register(
            "policy_reloads",
            since_start("Policy reloads and applies that took effect"),
            m.policy_reloads.clone(),
        );
        registry.register(
            "policy_reload_failures",
            since_start("Policy reloads and applies that were rejected"),
            m.policy_reload_failures.clone(),
        );
        registry.register(
            "dns_answers",
            since_start("DNS answers to tagged processes whose addresses name their flows"),
            m.dns_answers.clone(),
        );
        registry.register(
            "dns_ignored",
            since_start("DNS messages to tagged processes that gave no address (errors, other record types, unparsable)"),
            m.dns_ignored.clone(),
        );
        registry.register(
            "name_entries_written",
            since_start("Addresses written into the kernel's name map from answers for names the policy rules on"),
            m.name_entries_written.clone(),
        );
        registry.register(
            "name_answers_untrusted",
            since_start("Answers for names the policy rules on from a resolver not in host.trusted_resolvers (not applied)"),
            m.name_answers_untrusted.clone(),
        );
        registry.register(
            "name_entries_refused",
            since_start(
                "Addresses the full kernel name map could not take (their address verdict applies)",
            ),
            m.name_entries_refused.clone(),
        );
        registry.register(
            "name_entries",
            "Entries in the kernel's name map",
            m.name_entries.clone(),
        );
        registry.register(
            "doh_flows",
            since_start("Flows of tagged processes to well-known DNS-over-HTTPS/TLS endpoints (their names are not visible)"),
            m.doh_flows.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// A counter's help: it counts since this sensord started (from 0 again after
/// a restart, as Prometheus counters may: query it with rate() or increase()).
fn since_start(help: &str) -> String {
    format!("{help}, since sensord started (restarts from 0 with it: use rate() or increase())")
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        residency_daemon::admin::render(&self.registry)
    }
}
