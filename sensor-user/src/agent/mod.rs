//! The agent: one task owns the kernel sensor, the policy in force and the tag
//! ledger; everything else (API handlers, signals) sends it [`Command`]s over a
//! channel and waits for the reply. No lock is held around aya state.
//!
//! - [`command`]: the commands and the handle to send them.
//! - [`pipeline`]: kernel records in, kept, spooled, logged.
//! - [`spooling`]: the agent's side of the spool and its gap accounting.
//! - [`queries`]: status, tagged processes, lookups, host state.
//! - [`policy_state`], [`compiler`]: compiling and installing policies.
//! - [`store`]: recent records and live watchers (shared, read by the API).
//! - [`enrich`]: kernel records → API records (names, country, site, exe).
//! - [`audit`]: who changed what, when and why.

pub mod attesting;
pub mod audit;
pub mod command;
pub mod compiler;
mod endpoints;
pub mod enrich;
mod existing;
pub mod persist;
mod pipeline;
pub mod policy_state;
pub mod queries;
mod spooling;
pub mod store;
mod violation_log;
pub mod what_if;

use command::Reply;
pub use command::{AgentHandle, Command, CommandError};

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use residency_proto::agent::v1 as pb;
use sensor_common::counters::{COUNTER_COUNT, COUNTER_NAMES};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tracing::{error, info, warn};

use residency_proto::collector::v1 as cpb;

use self::{
    audit::AuditLog,
    persist::{CounterBaseline, ModeOverride, OperatorState},
    store::FlowStore,
};
use crate::export::{
    record::{Spooled, encode_spooled},
    spool::{Fsync, Options as SpoolOptions, Spool},
    wire::Frame,
};
use crate::metrics::{CounterLabels, Metrics, ViolationLabels};
use crate::{
    SensorError,
    events::EventReader,
    kernel::{KernelSensor, verdicts::Mode},
    ledger::{TagLedger, TagReason, Why},
    policy::{
        apply,
        compile::Compiled,
        exceptions::{self, Exception},
        explain,
        source::PolicySource,
        validate,
    },
    procscan,
};

/// How long the record reader rests after a wake-up before it listens again
/// (bounds wake-ups to 200 per second; violations reach the spool this much
/// later at most).
const WAKEUP_REST: Duration = Duration::from_millis(5);

/// Settings the agent starts with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: PolicySource,
    /// cgroup v2 mount (selector paths are relative to it).
    pub cgroup_root: PathBuf,
    /// Where the socket programs attach.
    pub attach: PathBuf,
    /// Records kept for ListFlows/ListViolations (violations apart).
    pub history: store::Capacity,
    /// The durable spool's directory, when records are delivered to a collector.
    pub spool_dir: Option<PathBuf>,
    /// The pinned kernel state (on bpffs).
    pub bpf_dir: PathBuf,
    /// Operator state that outlives the process (modes set over the API).
    pub state_dir: PathBuf,
    /// Signed window attestations (with delivery only).
    pub attestation: Option<attesting::Attesting>,
}

/// The agent's state, owned by its task.
pub struct Agent {
    sensor: KernelSensor,
    compiled: Compiled,
    policy_text: String,
    loaded_at: SystemTime,
    ledger: TagLedger,
    cfg: AgentConfig,
    /// Modes set through SetEnforcement, by class name; they outlive reloads
    /// and restarts (persisted in `state_dir`).
    overrides: BTreeMap<String, ModeOverride>,
    /// Id of the kernel counter map `last_counters` was read from.
    counters_map_id: u32,
    pending_selectors: bool,
    /// The cgroups unit and container selectors named when the selectors
    /// were last installed (see `apply::find_named`).
    named_cgroups: Vec<Vec<PathBuf>>,
    /// Connect records waiting for their local endpoint (`endpoints`).
    held: endpoints::Held,
    /// DNS answers to tagged processes, read before each batch of records.
    dns_answers: crate::events::DnsReader,
    exec_paths: crate::events::ExecPathReader,
    /// The names those answers gave (`dns`).
    resolved: crate::dns::NameCache,
    /// The policy's name rules, and the addresses answers gave for them
    /// (mirror of the kernel's `NAMES`).
    name_rules: crate::dns::NameRules,
    learned: crate::dns::LearnedNames,
    /// Processes and DoH endpoints reported lately (one warning each per hour).
    doh_seen: std::collections::HashMap<(u32, std::net::IpAddr), std::time::Instant>,
    events_total: u64,
    last_counters: Vec<u64>,
    /// When the counters were last read (Unix ns): a kernel gap record spans
    /// from here to the read that saw the loss.
    counters_read_at: i64,
    store: Arc<FlowStore>,
    /// The names records are shown with (of `compiled`).
    names: Arc<enrich::Names>,
    /// Executables of the processes records come from.
    exes: enrich::ExeCache,
    /// Workloads (unit, container, pod) of the cgroups records come from.
    workloads: crate::system::workload::WorkloadCache,
    /// Violation log lines, folded per process and destination.
    violation_log: violation_log::ViolationLog,
    /// Makes the spool durable off this task.
    syncer: crate::export::syncer::Syncer,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    spool: Option<Spool>,
    collector_state: String,
    /// Exceptions in force (persisted in the spool directory).
    exceptions: Vec<Exception>,
    /// Empty while the kernel enforces exactly `compiled`; otherwise why not.
    policy_problem: String,
    /// Compiles policies off this task.
    compiler: compiler::Compiler,
    /// This agent's own command channel, for compiles to report back on.
    handle: Option<AgentHandle>,
    /// Bumped whenever what policies are compiled from changes (the policy
    /// text, the exceptions): a compile started before is redone.
    inputs_serial: u64,
    /// An expiry's compile is under way (the 1 s tick must not start another).
    expiry_compiling: bool,
    /// Records the spool could not take: count, since (Unix ns), last error.
    unspooled: (u64, i64, String),
    /// Gap records the spool could not take, held (with their times) to be
    /// spooled once it takes writes: each stands for records lost elsewhere
    /// (the kernel's ring, a full spool), a count that must not shrink to
    /// "one record not spooled".
    unspooled_gaps: Vec<(i64, cpb::Gap)>,
    /// Why the spool could not be opened (empty once it is).
    spool_open_error: String,
    /// The socket programs are attached (start-up is over): from then on a
    /// policy install also cuts open connections it now denies.
    attached: bool,
    /// The window being counted for the next attestation.
    window: Option<attesting::Window>,
    /// Whether the agent does its job (a policy in force, the programs
    /// attached), or why not: `/readyz`.
    ready: tokio::sync::watch::Sender<Result<(), String>>,
    /// Class names by id of the policy generations installed lately: the
    /// kernel's judgement counters are keyed by generation.
    class_tables: attesting::ClassTables,
}

fn mode_pb(m: Mode) -> i32 {
    match m {
        Mode::Off => pb::Mode::Off as i32,
        Mode::Monitor => pb::Mode::Monitor as i32,
        Mode::Enforce => pb::Mode::Enforce as i32,
    }
}

impl Agent {
    /// Builds the policy (before touching the kernel), loads and attaches the
    /// sensor, installs the policy. Returns the agent, its ring buffer and the
    /// shared record store.
    pub fn start(cfg: AgentConfig) -> anyhow::Result<(Agent, EventReader, Arc<FlowStore>)> {
        use anyhow::Context;
        // Exceptions that cannot be read (a broken spool directory) are not
        // in force: stricter than the operator asked, never looser, and no
        // reason to leave the host without an agent.
        let exceptions = match &cfg.spool_dir {
            Some(dir) => exceptions::load(dir).unwrap_or_else(|e| {
                error!(file = %dir.join(exceptions::FILE).display(), error = %e, "the exceptions cannot be read; starting without them (their destinations are judged by the policy alone): restore the file from a backup, or remove it and grant the exceptions again from the collector");
                Vec::new()
            }),
            None => Vec::new(),
        };
        for e in &exceptions {
            info!(id = %e.state.id, class = %e.state.class, destination = %e.state.destination, expires_unix_ns = e.state.expires_unix_ns, "exception restored");
        }
        let compiled = cfg
            .source
            .build(&exceptions)
            .context("while building the policy")?;
        let policy_text = std::fs::read_to_string(&cfg.source.policy).unwrap_or_default();
        let state = OperatorState::load(&cfg.state_dir)?;
        // Order matters for a restart over a pinned set: the earlier agent's
        // programs keep judging until the links are switched at the very end,
        // by which time the policy and modes are in the maps; the tracepoints
        // are attached before the start-up /proc walk so no exec slips between.
        let mut sensor =
            KernelSensor::load_pinned(&cfg.bpf_dir).context("while loading the kernel programs")?;
        let events = sensor.take_events()?;
        let dns_answers = sensor.take_dns()?;
        let exec_paths = sensor.take_exec_paths()?;
        sensor
            .attach_tracepoints()
            .context("while attaching the process tracepoints")?;
        let counters_map_id = sensor.counters_map_id()?;
        // The baseline holds for these counters only: the same map (ids
        // restart at every boot, so the boot too).
        let last_counters = match state.counters {
            Some(b)
                if b.map_id == counters_map_id
                    && b.boot_id == persist::boot_id()
                    && b.values.len() == COUNTER_COUNT as usize =>
            {
                b.values
            }
            _ => vec![0; COUNTER_COUNT as usize],
        };
        let store = Arc::new(FlowStore::new(cfg.history));
        let workloads = crate::system::workload::WorkloadCache::new(&cfg.cgroup_root);
        let mut agent = Agent {
            sensor,
            compiled,
            policy_text,
            loaded_at: SystemTime::now(),
            ledger: TagLedger::default(),
            cfg,
            overrides: state.modes,
            counters_map_id,
            pending_selectors: false,
            named_cgroups: Vec::new(),
            held: endpoints::Held::default(),
            dns_answers,
            exec_paths,
            resolved: crate::dns::NameCache::default(),
            name_rules: Default::default(),
            learned: Default::default(),
            doh_seen: Default::default(),
            events_total: 0,
            last_counters,
            counters_read_at: now_unix_ns(),
            store: store.clone(),
            names: Arc::default(),
            exes: enrich::ExeCache::default(),
            workloads,
            violation_log: Default::default(),
            syncer: crate::export::syncer::Syncer::start()
                .context("while starting the spool's fsync thread")?,
            audit: AuditLog::default(),
            metrics: Arc::new(Metrics::default()),
            spool: None,
            collector_state: "not configured".into(),
            exceptions,
            attached: false,
            policy_problem: String::new(),
            compiler: compiler::Compiler::default(),
            handle: None,
            inputs_serial: 0,
            expiry_compiling: false,
            unspooled: (0, 0, String::new()),
            unspooled_gaps: Vec::new(),
            window: None,
            class_tables: Default::default(),
            ready: tokio::sync::watch::channel(Err("starting".to_owned())).0,
            spool_open_error: String::new(),
        };
        // A spool that cannot be opened (a full disk, broken files) costs
        // records, never enforcement: the agent starts, says so in status
        // and metrics, counts what it could not spool and retries.
        agent.open_spool();
        agent.learned.adopt(&mut agent.sensor);
        agent
            .install()
            .context("while installing the policy in the kernel")?;
        let attach = agent.cfg.attach.clone();
        agent
            .sensor
            .attach_cgroup(&attach)
            .with_context(|| format!("while attaching to cgroup {}", attach.display()))?;
        info!(cgroup = %attach.display(), pins = %agent.cfg.bpf_dir.display(), "sensor attached");
        agent.attached = true;
        agent.update_ready();
        agent.audit.record(
            "agent",
            &format!(
                "sensord {} started (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            "start",
        );
        agent.report_adoption();
        // Connections opened before anything judged them (before this agent,
        // or while no class was enforced) are judged now.
        agent.judge_existing(true);
        agent.spool_sync();
        Ok((agent, events, store))
    }

    /// After taking over an earlier agent's pinned state: says so in the
    /// audit trail, accounts for the time no agent ran, and gives the
    /// processes that kept their tags a reason.
    fn report_adoption(&mut self) {
        let Some(pins) = self.sensor.pins() else {
            return;
        };
        if pins.adopted.is_empty() {
            return;
        }
        let adopted = pins.adopted.len();
        let created = pins.created.clone();
        let now_ns = now_unix_ns();
        let mut what = format!("adopted the pinned kernel state ({adopted} maps)");
        if !created.is_empty() {
            what.push_str(&format!("; created afresh: {}", created.join(", ")));
        }
        if let Some(l) = self
            .sensor
            .adopted_liveness()
            .filter(|l| l.heartbeat_ns != 0)
        {
            let away_ns = crate::clock::monotonic_ns().saturating_sub(l.heartbeat_ns);
            let from = now_ns - away_ns as i64;
            info!(
                away_ms = away_ns / 1_000_000,
                "no agent ran for this long; the pinned programs kept judging"
            );
            what.push_str(&format!("; no agent ran for {} ms", away_ns / 1_000_000));
            if l.timeout_ns != 0 && away_ns > l.timeout_ns {
                let (allow_names, deny_names) = (
                    enrich::class_names(&self.compiled, l.allow_classes),
                    enrich::class_names(&self.compiled, l.deny_classes),
                );
                if l.allow_classes != 0 {
                    // Fail open: what the kernel let through unjudged-by-policy
                    // from the timeout on is a gap in the guarantee.
                    let gap = cpb::Gap {
                        source: cpb::GapSource::AgentLoss as i32,
                        behaviour: "allow".into(),
                        classes: allow_names.clone(),
                        from_unix_ns: from + l.timeout_ns as i64,
                        until_unix_ns: now_ns,
                        ..Default::default()
                    };
                    warn!(classes = ?allow_names, "enforcement was open (on_agent_loss = allow) while no agent ran; recorded as a gap");
                    self.spool_append(now_ns, Spooled::Gap(&gap));
                }
                if l.deny_classes != 0 {
                    what.push_str(&format!(
                        "; classes {deny_names:?} failed closed (on_agent_loss = deny)"
                    ));
                }
            }
        }
        self.audit.record("agent", &what, "agent restart");
        let tagged = self.sensor.tagged_processes().unwrap_or_default();
        for (pid, classes) in tagged {
            if self.ledger.explain(pid).is_empty() {
                self.ledger.record(
                    pid,
                    TagReason {
                        classes,
                        why: Why::Adopted,
                        at: SystemTime::now(),
                    },
                );
            }
        }
    }

    /// Writes what must outlive this process to `state_dir`.
    fn save_state(&self) {
        let state = OperatorState {
            modes: self.overrides.clone(),
            counters: Some(CounterBaseline {
                map_id: self.counters_map_id,
                boot_id: persist::boot_id(),
                values: self.last_counters.clone(),
            }),
        };
        if let Err(e) = state.save(&self.cfg.state_dir) {
            error!(error = %e, "saving the operator state failed; modes set over the API will not survive a restart");
        }
    }

    /// The heartbeat, with each class's declared behaviour without one.
    fn heartbeat(&mut self) {
        let p = &self.compiled.policy;
        let mask = |want: validate::OnAgentLoss| {
            p.classes
                .iter()
                .filter(|c| c.on_agent_loss == want)
                .fold(0u64, |m, c| m | 1 << c.id)
        };
        let (deny, allow) = (
            mask(validate::OnAgentLoss::Deny),
            mask(validate::OnAgentLoss::Allow),
        );
        if let Err(e) = self
            .sensor
            .heartbeat(p.host.agent_loss_timeout, deny, allow)
        {
            error!(error = %e, "writing the heartbeat failed");
        }
    }

    /// Installs `self.compiled` (and the mode overrides).
    fn install(&mut self) -> Result<(), SensorError> {
        // A heartbeat first: a large table takes about a second to write,
        // and the kernel must not take the agent for gone meanwhile.
        self.heartbeat();
        self.names = enrich::Names::of(&self.compiled);
        let c = &self.compiled;
        if let Some(p) = &c.provenance {
            info!(dataset = %p.name, version = %p.version, licence = %p.licence, attribution = %p.attribution, "region data");
        }
        let (before, after) = c.prefix_counts();
        let t = std::time::Instant::now();
        let overrides = &self.overrides;
        let report = apply::apply(
            &mut self.sensor,
            c,
            &|class| mode_with(overrides, class),
            &self.cfg.cgroup_root,
            &mut self.ledger,
        )?;
        for w in &report.warnings {
            warn!(policy = %c.policy.source.display(), "selector not installed yet (retried every second): {w}");
        }
        self.pending_selectors = !report.warnings.is_empty();
        self.named_cgroups = report.named_cgroups.clone();
        self.class_tables
            .installed(report.generation, &c.policy.classes);
        self.install_name_rules()?;
        let c = &self.compiled;
        info!(
            policy = %c.policy.source.display(),
            sha256 = %c.policy.hash,
            generation = report.generation,
            prefixes_before_merge = before,
            prefixes = after,
            selectors = report.selectors,
            tagged_running = report.tagged_running,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "policy in force"
        );
        // The liveness masks follow the policy's on_agent_loss at once.
        self.heartbeat();
        if self.attached {
            // Destinations the new policy denies are denied to connections
            // already open as well.
            self.judge_existing(false);
        }
        Ok(())
    }

    /// Puts the policy's name rules in force: the kernel looks into its
    /// name map only when a class rules on names; learned entries get the
    /// new rules' masks.
    fn install_name_rules(&mut self) -> Result<(), SensorError> {
        self.name_rules = crate::dns::NameRules::of(&self.compiled.policy);
        let changed = self
            .learned
            .rules_changed(&self.name_rules, &mut self.sensor);
        self.sensor.set_has_names(!self.name_rules.is_empty())?;
        if changed {
            self.sensor.bump_epoch()?;
        }
        if !self.name_rules.is_empty() {
            let trusted: Vec<String> = self
                .name_rules
                .trusted()
                .iter()
                .map(|n| n.to_string())
                .collect();
            info!(trusted_resolvers = %trusted.join(","), learned = self.learned.len(), "name rules in force");
        }
        self.metrics.name_entries.set(self.learned.len() as i64);
        Ok(())
    }

    /// Drops name entries long expired or of processes gone.
    fn sweep_names(&mut self) {
        if self.learned.is_empty() {
            return;
        }
        self.learned
            .sweep(&mut self.sensor, crate::clock::monotonic_ns(), |tgid| {
                std::path::Path::new(&format!("/proc/{tgid}")).exists()
            });
        self.metrics.name_entries.set(self.learned.len() as i64);
    }

    /// The host identity records carry.
    pub fn host_id(&self) -> String {
        self.compiled.policy.host.id.clone()
    }

    /// The SHA-256 of the policy in force.
    pub fn policy_sha256(&self) -> String {
        self.compiled.policy.hash.clone()
    }

    /// The compiler the API shares with this agent (one queue for both).
    pub fn compiler(&self) -> compiler::Compiler {
        self.compiler.clone()
    }

    /// The metrics this agent updates (served by the admin endpoints).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Whether the agent does its job, or why not (`/readyz`).
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<Result<(), String>> {
        self.ready.subscribe()
    }

    /// Updates readiness from the agent's state.
    fn update_ready(&self) {
        let now = if !self.attached {
            Err("the kernel programs are not attached yet".to_owned())
        } else if !self.policy_problem.is_empty() {
            Err(self.policy_problem.clone())
        } else {
            Ok(())
        };
        self.ready.send_if_modified(|r| {
            let changed = *r != now;
            *r = now;
            changed
        });
    }

    fn mode_of(&self, class: &validate::Class) -> Mode {
        mode_with(&self.overrides, class)
    }

    fn modes(&self) -> Vec<pb::ClassMode> {
        self.compiled
            .policy
            .classes
            .iter()
            .map(|c| pb::ClassMode {
                class: c.name.clone(),
                id: u32::from(c.id),
                mode: mode_pb(self.mode_of(c)),
            })
            .collect()
    }

    fn class_id(&self, name: &str) -> Result<u8, CommandError> {
        self.compiled
            .policy
            .class(name)
            .map(|c| c.id)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .compiled
                    .policy
                    .classes
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                CommandError::NotFound(format!(
                    "no class named {name:?} in the policy in force; classes: {}",
                    names.join(", ")
                ))
            })
    }

    fn set_enforcement(
        &mut self,
        class: Option<String>,
        mode: Mode,
        reason: String,
        actor: String,
    ) -> Result<Vec<pb::ClassMode>, CommandError> {
        if reason.trim().is_empty() {
            return Err(CommandError::Invalid(
                "a reason is required to change enforcement (it is recorded with the change)"
                    .into(),
            ));
        }
        let ids: Vec<u8> = match &class {
            Some(name) => vec![self.class_id(name)?],
            None => self.compiled.policy.classes.iter().map(|c| c.id).collect(),
        };
        // Each class as it is switched: should the kernel refuse one, the
        // classes switched before it are saved and audited all the same.
        let mut failed = None;
        for id in &ids {
            if let Err(e) = self.sensor.set_mode(*id, mode) {
                failed = Some(e);
                break;
            }
            if let Some(c) = self.compiled.policy.classes.iter().find(|c| c.id == *id) {
                self.overrides.insert(
                    c.name.clone(),
                    ModeOverride {
                        mode: mode.to_string(),
                        actor: actor.clone(),
                        reason: reason.clone(),
                        at_unix_ms: unix_ms(SystemTime::now()),
                    },
                );
            }
        }
        self.save_state();
        let target = class.clone().unwrap_or_else(|| "host".into());
        let what = match &failed {
            None => format!("set enforcement of {target} to {mode}"),
            Some(e) => format!("set enforcement of {target} to {mode}, failed part-way ({e})"),
        };
        self.audit.record(&actor, &what, &reason);
        if let Some(e) = failed {
            return Err(e.into());
        }
        if mode == Mode::Enforce {
            // Enforcement applies to connections already open too.
            self.judge_existing(false);
        }
        Ok(self.modes())
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Status(r) => drop(r.send(Ok(self.status()))),
            Command::Tagged(r) => drop(r.send(Ok(self.tagged()))),
            Command::Tag {
                pid,
                class,
                actor,
                reply,
            } => {
                let res = self.class_id(&class).and_then(|id| {
                    if !enrich::is_process(pid) {
                        return Err(CommandError::NotFound(format!("no process {pid}")));
                    }
                    self.sensor.tag_process(pid, 1 << id)?;
                    self.ledger.record(
                        pid,
                        TagReason {
                            classes: 1 << id,
                            why: Why::Explicit {
                                actor: actor.clone(),
                            },
                            at: SystemTime::now(),
                        },
                    );
                    self.audit
                        .record(&actor, &format!("tagged pid {pid} with {class}"), "");
                    Ok(())
                });
                let _ = reply.send(res);
            }
            Command::Untag {
                pid,
                class,
                actor,
                reply,
            } => {
                let res = self.class_id(&class).and_then(|id| {
                    self.sensor.untag_process(pid, 1 << id)?;
                    self.audit
                        .record(&actor, &format!("untagged pid {pid} from {class}"), "");
                    Ok(())
                });
                let _ = reply.send(res);
            }
            Command::SetEnforcement {
                class,
                mode,
                reason,
                actor,
                reply,
            } => {
                let _ = reply.send(self.set_enforcement(class, mode, reason, actor));
            }
            Command::CompileInputs(r) => drop(r.send(Ok(self.compile_inputs()))),
            Command::Compiled {
                result,
                serial,
                intent,
                reply,
            } => self.on_compiled(result, serial, intent, reply),
            Command::GetPolicy(r) => {
                let _ = r.send(Ok(pb::GetPolicyResponse {
                    policy_toml: self.policy_text.clone(),
                    policy_sha256: self.compiled.policy.hash.clone(),
                    path: self.compiled.policy.source.display().to_string(),
                }));
            }
            Command::WhatIf {
                policy,
                flows,
                reply,
            } => {
                let recent = flows.unwrap_or_else(|| {
                    self.store.list(
                        &pb::FlowFilter {
                            limit: u32::MAX,
                            ..Default::default()
                        },
                        false,
                    )
                });
                // Operators' overrides stay in force across a reload; the
                // new policy's classes otherwise take its modes.
                let overrides = &self.overrides;
                let mode = |c: &validate::Class| mode_with(overrides, c);
                let _ = reply.send(Ok(what_if::changes(
                    &recent,
                    (&self.compiled, &mode),
                    (&policy, &mode),
                )));
            }
            Command::Lookup { ip, class, reply } => {
                let _ = reply.send(self.lookup(ip, class));
            }
            Command::LookupName { name, class, reply } => {
                let _ = reply.send(self.lookup_name(&name, class));
            }
            Command::Reload => self.start_reload(),
            Command::SpoolBounds(r) => {
                let b = self
                    .spool
                    .as_ref()
                    .map_or((1, 1), |s| (s.first_unacked(), s.next_seq()));
                let _ = r.send(Ok(b));
            }
            Command::ReadSpool { from, max, reply } => {
                let synced = self.syncer.synced();
                let res = match &mut self.spool {
                    Some(s) => s
                        .read_from(from, max)
                        .map_err(|e| CommandError::Internal(format!("reading the spool: {e}")))
                        .map(|v| {
                            // Only what is on disk: see `Spool::durable`.
                            let durable = s.durable(synced);
                            v.into_iter()
                                .filter(|(seq, _)| *seq <= durable)
                                .map(|(seq, payload)| Frame { seq, payload })
                                .collect()
                        }),
                    None => Ok(Vec::new()),
                };
                let _ = reply.send(res);
            }
            Command::CollectorAhead { last_seq, reply } => {
                let _ = reply.send(Ok(self.collector_ahead(last_seq)));
            }
            Command::Acked { seq, connected } => {
                if let Some(e) = connected {
                    self.collector_lost_acknowledged(&e, seq);
                    self.collector_state = format!("connected to {e}");
                    if let Some(s) = &self.spool
                        && let Err(e) = s.history_known()
                    {
                        warn!(error = %e, "marking the spool's history as known failed");
                    }
                }
                if let Some(s) = &mut self.spool
                    && let Err(e) = s.ack(seq)
                {
                    error!(error = %e, "dropping acknowledged spool segments failed");
                }
                self.metrics
                    .spool_depth
                    .set(self.spool.as_ref().map_or(0, Spool::depth) as i64);
            }
            Command::Disconnected { why } => self.collector_state = format!("disconnected: {why}"),
            Command::HostState(r) => drop(r.send(Ok(self.host_state()))),
            Command::SignedHead { nonce, reply } => drop(reply.send(self.signed_head(nonce))),
            Command::GrantException { state, reply } => self.grant_exception(state, reply),
        }
    }

    fn tick(&mut self) {
        self.update_ready();
        match self.sensor.counters() {
            Ok(c) => {
                for (i, name) in COUNTER_NAMES.iter().enumerate() {
                    let grew = c[i].saturating_sub(self.last_counters[i]);
                    let loss = i <= sensor_common::counters::AGG_MAP_FULL as usize
                        || i == sensor_common::counters::MARK_FAILED as usize;
                    if grew > 0 && loss {
                        warn!(
                            counter = *name,
                            new = grew,
                            total = c[i],
                            "kernel could not record everything"
                        );
                        if i == sensor_common::counters::RINGBUF_RESERVE_FAILED as usize {
                            self.store.lost("kernel", grew);
                            let now = now_unix_ns();
                            let gap = cpb::Gap {
                                source: cpb::GapSource::Kernel as i32,
                                count: grew,
                                from_unix_ns: self.counters_read_at,
                                until_unix_ns: now,
                                ..Default::default()
                            };
                            self.spool_append(now, Spooled::Gap(&gap));
                        }
                    }
                }
                for (name, v) in COUNTER_NAMES.iter().zip(&c) {
                    self.metrics
                        .kernel
                        .get_or_create(&CounterLabels {
                            counter: (*name).into(),
                        })
                        .set(*v);
                }
                // Only the loss counters matter across a restart: the state
                // file is written when one of them moved, not at every
                // violation.
                let losses = ..=sensor_common::counters::AGG_MAP_FULL as usize;
                let changed = self.last_counters[losses] != c[losses];
                self.last_counters = c;
                self.counters_read_at = now_unix_ns();
                if changed {
                    // After the gap records are in the spool (synced by the
                    // caller's next spool_sync), so a crash in between reports
                    // a loss twice rather than never.
                    self.save_state();
                }
            }
            Err(e) => error!(error = %e, "reading kernel counters failed"),
        }
        self.ledger.retain(enrich::is_process);
        self.exes.retain_live();
        if self.spool.is_none() && self.cfg.spool_dir.is_some() {
            self.open_spool();
        }
        let tagged = self.sensor.tagged_processes().map(|t| t.len()).unwrap_or(0);
        self.metrics.tagged_processes.set(tagged as i64);
        self.metrics
            .tag_map_used_ratio
            .set(tagged as f64 / f64::from(crate::kernel::TASKS_CAPACITY));
        self.metrics
            .verdict_prefixes
            .set(self.compiled.prefix_counts().1 as i64);
    }

    /// Installs the selectors again when a selected cgroup was removed and
    /// created again (`systemctl restart`, a recreated container: a new
    /// cgroup id under the same path), and tags the processes already
    /// running in it. Checked every second: a process that starts in the
    /// new cgroup runs untagged until then (at most a second).
    fn refresh_selectors(&mut self) {
        let mut stale = self.sensor.cgroup_selectors_stale();
        if stale {
            info!(
                "a selected cgroup was created again (a restarted service or container), or removed: installing the selectors again"
            );
        }
        // Unit and container selectors: a cgroup of that name started or
        // stopped since the last walk.
        let found = apply::find_named(&self.compiled, &self.cfg.cgroup_root);
        if found != self.named_cgroups {
            info!(
                before = self.named_cgroups.iter().map(Vec::len).sum::<usize>(),
                now = found.iter().map(Vec::len).sum::<usize>(),
                "the cgroups that unit or container selectors name changed (a unit or container started or stopped): installing the selectors again"
            );
            stale = true;
        }
        if !stale && !self.pending_selectors {
            return;
        }
        self.named_cgroups = found.clone();
        match apply::install_selectors(
            &mut self.sensor,
            &self.compiled,
            &self.cfg.cgroup_root,
            found,
        ) {
            Ok(w) => {
                let was_pending = self.pending_selectors;
                // Gone for now: tried again every second.
                self.pending_selectors = !w.is_empty();
                if was_pending && !self.pending_selectors {
                    info!("all selectors are installed now");
                }
                if (stale || (was_pending && !self.pending_selectors))
                    && let Err(e) = procscan::tag_running(
                        &mut self.sensor,
                        &self.cfg.cgroup_root,
                        &mut self.ledger,
                    )
                {
                    error!(error = %e, "tagging running processes failed");
                }
            }
            Err(e) => error!(error = %e, "installing selectors failed"),
        }
    }

    /// Runs until `shutdown` resolves: drains records, answers commands.
    pub async fn run(
        mut self,
        reader: EventReader,
        (handle, mut commands): (AgentHandle, mpsc::Receiver<Command>),
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.handle = Some(handle);
        // SAFETY: the EventReader owns the ring buffer's fd and keeps it open for
        // as long as the AsyncFd that wraps it lives.
        let mut reader = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("while registering the ring buffer: {e}"))?;
        // SAFETY: the DNS ring's fd is owned by `self.dns_answers`, which
        // lives for this whole function, longer than the AsyncFd.
        let dns_ready = unsafe {
            AsyncFd::register_with_interest(
                crate::events::BorrowedRingFd(self.dns_answers.raw_fd()),
                Interest::READABLE,
            )
        }
        .map_err(|e| anyhow::anyhow!("while registering the DNS ring buffer: {e}"))?;
        let mut counter_tick = tokio::time::interval(Duration::from_secs(10));
        let mut expiry_tick = tokio::time::interval(Duration::from_secs(1));
        // The kernel wakes us only for violations and tags, or when the buffer
        // fills (see sensor-ebpf emit.rs); flow and close records come here.
        let mut drain_tick = tokio::time::interval(Duration::from_millis(100));
        // After a wake-up the reader rests a little before it listens again:
        // records that come meanwhile find it behind and wake nobody (a
        // wake-up costs the writing task a context switch), and are read in
        // one batch when the rest ends.
        let rest = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(rest);
        let mut resting = false;
        let mut batch = Vec::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                guard = reader.readable_mut(), if !resting => {
                    let mut guard = guard?;
                    let r = guard.get_inner_mut();
                    self.take_records(r, &mut batch);
                    guard.clear_ready();
                    rest.as_mut().reset(tokio::time::Instant::now() + WAKEUP_REST);
                    resting = true;
                }
                () = &mut rest, if resting => {
                    resting = false;
                    self.take_records(reader.get_mut(), &mut batch);
                }
                _ = drain_tick.tick() => self.take_records(reader.get_mut(), &mut batch),
                _ = counter_tick.tick() => self.tick(),
                _ = expiry_tick.tick() => {
                    self.refresh_selectors();
                    self.attest_if_due(false);
                    self.heartbeat();
                    self.violation_log.flush(std::time::Instant::now());
                    self.expire_exceptions();
                    self.resolved.expire(std::time::Instant::now());
                    self.sweep_names();
                }
                guard = dns_ready.readable(), if !self.name_rules.is_empty() => {
                    // An answer for a name the policy rules on: into the
                    // kernel at once, while the process reads it.
                    let mut guard = guard?;
                    self.take_dns_answers(std::time::Instant::now());
                    guard.clear_ready();
                }
                                Some(c) = commands.recv() => {
                    self.handle(c);
                    self.spool_sync();
                },
                _ = &mut shutdown => break,
            }
        }
        // What is still in the ring buffer (and every connect record still
        // waiting for its endpoint), then the stop itself, reach the spool
        // before the process ends.
        self.take_records(reader.get_mut(), &mut batch);
        self.release_held(true);
        self.audit.record(
            "agent",
            &format!(
                "sensord {} stopping (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            "signal",
        );
        // The last window, up to the stop (its record spooled first), is
        // attested too.
        self.spool_sync();
        self.attest_if_due(true);
        self.spool_sync();
        // The last batch is durable before the process ends.
        if let Some(s) = &mut self.spool
            && let Err(e) = s.flush()
        {
            error!(error = %e, "the last fsync of the spool failed");
        }
        self.deliver_before_stop(&mut commands).await;
        Ok(())
    }

    /// A handle and its command receiver (capacity 64).
    pub fn channel() -> (AgentHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(64);
        (AgentHandle { tx }, rx)
    }
}

/// A class's mode: the operator's override if one was set, else the policy's.
fn mode_with(overrides: &BTreeMap<String, ModeOverride>, class: &validate::Class) -> Mode {
    overrides
        .get(&class.name)
        .and_then(|o| o.mode.parse().ok())
        .unwrap_or(class.mode)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn reason_pb(c: &Compiled, r: &TagReason) -> pb::TagReason {
    let why = match &r.why {
        Why::Cgroup { id, path } => format!(
            "cgroup {}",
            path.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("id {id}"))
        ),
        Why::Uid(u) => format!("uid {u}"),
        Why::Exe { ino, path } => format!(
            "exe {}",
            path.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("inode {ino}"))
        ),
        Why::Taint { source } => format!("taint {source}"),
        Why::Local { peer, from } => {
            format!("accepted a local connection from pid {from} ({peer})")
        }
        Why::Inherited { parent } => format!("inherited from {parent}"),
        Why::Explicit { actor } => format!("explicit by {actor}"),
        Why::Adopted => "tagged before the agent restarted (kept by the kernel)".into(),
    };
    pb::TagReason {
        classes: enrich::class_names(c, r.classes),
        why,
        at_unix_ms: unix_ms(r.at),
    }
}

fn now_unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
