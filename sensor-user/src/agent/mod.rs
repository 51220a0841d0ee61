//! The agent: one task owns the kernel sensor, the policy in force and the tag
//! ledger; everything else (API handlers, signals) sends it [`Command`]s over a
//! channel and waits for the reply. No lock is held around aya state.
//!
//! - [`store`]: recent records and live watchers (shared, read by the API).
//! - [`enrich`]: kernel records → API records (names, country, site, exe).
//! - [`audit`]: who changed what, when and why.

pub mod audit;
pub mod compiler;
pub mod enrich;
mod existing;
pub mod persist;
pub mod policy_state;
pub mod store;
mod violation_log;

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
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use residency_proto::collector::v1 as cpb;

use self::{
    audit::AuditLog,
    persist::{CounterBaseline, ModeOverride, OperatorState},
    store::FlowStore,
};
use crate::export::{
    record::{decode_spooled, encode_spooled},
    spool::{Fsync, Options as SpoolOptions, Spool},
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

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

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
    Lookup {
        ip: IpAddr,
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
        reply: Reply<Vec<cpb::Record>>,
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

/// A cheap, cloneable way to talk to the agent task.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    tx: mpsc::Sender<Command>,
}

impl AgentHandle {
    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| CommandError::Internal("the agent is shutting down".into()))?;
        rx.await
            .map_err(|_| CommandError::Internal("the agent dropped the request".into()))?
    }

    /// Sends a command without a reply.
    pub async fn send(&self, c: Command) {
        let _ = self.tx.send(c).await;
    }
}

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
    /// Violation log lines, folded per process and destination.
    violation_log: violation_log::ViolationLog,
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
    /// Why the spool could not be opened (empty once it is).
    spool_open_error: String,
    /// The socket programs are attached (start-up is over): from then on a
    /// policy install also cuts open connections it now denies.
    attached: bool,
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
                error!(file = %dir.join(exceptions::FILE).display(), error = %e, "the exceptions cannot be read; starting without them (their destinations are judged by the policy alone) until they are granted again");
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
            events_total: 0,
            last_counters,
            counters_read_at: now_unix_ns(),
            store: store.clone(),
            names: Arc::default(),
            exes: enrich::ExeCache::default(),
            violation_log: Default::default(),
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
            spool_open_error: String::new(),
        };
        // A spool that cannot be opened (a full disk, broken files) costs
        // records, never enforcement: the agent starts, says so in status
        // and metrics, counts what it could not spool and retries.
        agent.open_spool();
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
                    let body = serde_json::json!({
                        "source": "agent_loss",
                        "behaviour": "allow",
                        "classes": allow_names,
                        "from_unix_ns": from + l.timeout_ns as i64,
                        "until_unix_ns": now_ns,
                    })
                    .to_string();
                    warn!(classes = ?allow_names, "enforcement was open (on_agent_loss = allow) while no agent ran; recorded as a gap");
                    self.spool_append("gap", now_ns, &body);
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
            warn!(policy = %c.policy.source.display(), "selector not installed yet (retried every 10 s): {w}");
        }
        self.pending_selectors = !report.warnings.is_empty();
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

    /// The host identity records carry.
    pub fn host_id(&self) -> String {
        self.compiled.policy.host.id.clone()
    }

    /// The compiler the API shares with this agent (one queue for both).
    pub fn compiler(&self) -> compiler::Compiler {
        self.compiler.clone()
    }

    /// The metrics this agent updates (serve them with `metrics::serve`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
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

    fn status(&self) -> pb::Status {
        let counters = self.sensor.counters().unwrap_or_default();
        let p = &self.compiled.policy;
        let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        pb::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            host_id: p.host.id.clone(),
            modes: self.modes(),
            policy_sha256: p.hash.clone(),
            policy_path: p.source.display().to_string(),
            policy_loaded_unix_ms: unix_ms(self.loaded_at),
            policy_generation: self.sensor.generation(),
            dataset: self
                .compiled
                .provenance
                .as_ref()
                .map(|d| pb::DatasetProvenance {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    licence: d.licence.clone(),
                    attribution: d.attribution.clone(),
                }),
            tagged_processes: self
                .sensor
                .tagged_processes()
                .map(|t| t.len() as u64)
                .unwrap_or(0),
            verdict_prefixes: self.compiled.prefix_counts().1 as u64,
            events: self.events_total,
            counters: COUNTER_NAMES
                .iter()
                .zip(counters.iter())
                .map(|(n, v)| pb::Counter {
                    name: (*n).into(),
                    value: *v,
                })
                .collect(),
            spool_depth: self.spool.as_ref().map_or(0, Spool::depth),
            collector: self.collector_state.clone(),
            kernel: uname.trim().into(),
            policy_problem: self.policy_problem.clone(),
            spool_problem: self.spool_problem(),
        }
    }

    fn tagged(&self) -> pb::ListTaggedResponse {
        let mut processes: Vec<pb::TaggedProcess> = self
            .sensor
            .tagged_processes()
            .unwrap_or_default()
            .into_iter()
            // Entries for threads of tagged processes are bookkeeping, not processes.
            .filter(|(pid, _)| enrich::is_process(*pid))
            .map(|(pid, classes)| pb::TaggedProcess {
                pid,
                exe: enrich::exe(pid),
                cmdline: enrich::cmdline(pid),
                classes: enrich::class_names(&self.compiled, classes),
                reasons: self
                    .ledger
                    .explain(pid)
                    .iter()
                    .map(|r| reason_pb(&self.compiled, r))
                    .collect(),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        pb::ListTaggedResponse { processes }
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

    fn lookup(
        &self,
        ip: IpAddr,
        class: Option<String>,
    ) -> Result<pb::LookupResponse, CommandError> {
        if let Some(c) = &class {
            self.class_id(c)?;
        }
        let mut e = explain::explain(&self.compiled, ip, class.as_deref());
        for (answer, cls) in e.classes.iter_mut().zip(
            self.compiled
                .policy
                .classes
                .iter()
                .filter(|c| class.as_deref().is_none_or(|o| o == c.name)),
        ) {
            answer.mode = self.mode_of(cls);
        }
        Ok(pb::LookupResponse {
            country: e
                .location
                .country
                .map(|c| c.to_string())
                .unwrap_or_default(),
            site: e.location.site.clone().unwrap_or_default(),
            source: e.location.source.clone(),
            classes: e
                .classes
                .iter()
                .map(|c| pb::ClassVerdict {
                    class: c.class.clone(),
                    verdict: enrich::verdict_name(c.verdict).into(),
                    rule: c.rule.clone(),
                    kernel_prefix: c.kernel_prefix.map(|n| n.to_string()).unwrap_or_default(),
                    mode: mode_pb(c.mode),
                })
                .collect(),
            text: e.to_string(),
        })
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
            Command::Lookup { ip, class, reply } => {
                let _ = reply.send(self.lookup(ip, class));
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
                let res = match &mut self.spool {
                    Some(s) => s
                        .read_from(from, max)
                        .map_err(|e| CommandError::Internal(format!("reading the spool: {e}")))
                        .map(|v| {
                            v.into_iter()
                                .map(|(seq, payload)| decode_spooled(seq, &payload))
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
            Command::GrantException { state, reply } => self.grant_exception(state, reply),
        }
    }

    /// What the collector is told about this host.
    fn host_state(&self) -> cpb::HostState {
        let drops = self
            .sensor
            .counters()
            .ok()
            .and_then(|c| {
                c.get(sensor_common::counters::RINGBUF_RESERVE_FAILED as usize)
                    .copied()
            })
            .unwrap_or(0);
        cpb::HostState {
            policy_sha256: self.compiled.policy.hash.clone(),
            dataset: self
                .compiled
                .provenance
                .as_ref()
                .map(|d| format!("{} {}", d.name, d.version))
                .unwrap_or_default(),
            modes: self
                .compiled
                .policy
                .classes
                .iter()
                .map(|c| cpb::ClassModeState {
                    class: c.name.clone(),
                    mode: self.mode_of(c).to_string(),
                    set_unix_ns: self
                        .overrides
                        .get(&c.name)
                        .map_or(0, |o| o.at_unix_ms.saturating_mul(1_000_000)),
                })
                .collect(),
            kernel_drops: drops,
            exceptions: self.exceptions.iter().map(|e| e.state.clone()).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn take_records(
        &mut self,
        reader: &mut EventReader,
        batch: &mut Vec<sensor_common::flow::FlowEvent>,
    ) {
        use sensor_common::flow::FlowKind;
        batch.clear();
        reader.drain(batch);
        self.events_total += batch.len() as u64;
        self.metrics.events.inc_by(batch.len() as u64);
        let wall_offset = crate::clock::wall_offset_ns();
        for ev in batch.iter() {
            match ev.flow_kind() {
                Some(FlowKind::Exec) => {
                    self.exes.forget(ev.tgid);
                    continue;
                }
                Some(FlowKind::Tag) => self.exes.forget(ev.tgid),
                _ => {}
            }
            if self.ledger.record_event(ev, self.sensor.selectors()) {
                continue;
            }
            let kept =
                enrich::Kept::new(ev, &self.compiled, &self.names, &mut self.exes, wall_offset);
            if kept.is_violation() {
                self.record_violation(kept.to_pb());
            } else {
                self.store.push_flow(kept);
            }
        }
        self.spool_sync();
    }

    /// Keeps a violation: spooled for the collector, counted, logged and kept
    /// for the API.
    fn record_violation(&mut self, flow: pb::Flow) {
        if self.cfg.spool_dir.is_some() {
            let body = serde_json::to_string(&flow).unwrap_or_default();
            self.spool_append("violation", flow.time_unix_ns, &body);
        }
        for class in &flow.classes {
            let labels = ViolationLabels {
                class: class.clone(),
                action: flow.action.clone(),
            };
            self.metrics
                .violations
                .get_or_create(&labels)
                .inc_by(u64::from(flow.count));
        }
        self.violation_log.record(&flow, std::time::Instant::now());
        self.store.push_violation(flow);
    }

    fn tick(&mut self) {
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
                            let body = serde_json::json!({
                                "source": "kernel",
                                "count": grew,
                                "from_unix_ns": self.counters_read_at,
                                "until_unix_ns": now,
                            })
                            .to_string();
                            self.spool_append("gap", now, &body);
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
        if self.pending_selectors {
            match apply::install_selectors(&mut self.sensor, &self.compiled, &self.cfg.cgroup_root)
            {
                Ok(w) if w.is_empty() => {
                    self.pending_selectors = false;
                    info!("all selectors are installed now");
                    if let Err(e) = procscan::tag_running(
                        &mut self.sensor,
                        &self.cfg.cgroup_root,
                        &mut self.ledger,
                    ) {
                        error!(error = %e, "tagging running processes failed");
                    }
                }
                Ok(_) => {}
                Err(e) => error!(error = %e, "installing selectors failed"),
            }
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
                    self.heartbeat();
                    self.violation_log.flush(std::time::Instant::now());
                    self.expire_exceptions();
                }
                                Some(c) = commands.recv() => {
                    self.handle(c);
                    self.spool_sync();
                },
                _ = &mut shutdown => break,
            }
        }
        // What is still in the ring buffer, then the stop itself, reach the
        // spool before the process ends.
        self.take_records(reader.get_mut(), &mut batch);
        self.audit.record(
            "agent",
            &format!(
                "sensord {} stopping (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            "signal",
        );
        self.spool_sync();
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

impl Agent {
    /// Appends a record to the spool (when delivering to a collector). A
    /// record that cannot be written (disk full, no file descriptor left) is
    /// counted, and the count goes out as a gap record as soon as the spool
    /// takes writes again.
    fn spool_append(&mut self, kind: &str, time_unix_ns: i64, body_json: &str) {
        if self.cfg.spool_dir.is_none() {
            return;
        }
        let written = match &mut self.spool {
            Some(s) => s
                .append(&encode_spooled(kind, time_unix_ns, body_json))
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err(format!("the spool is not open: {}", self.spool_open_error)),
        };
        if let Err(e) = written {
            if self.unspooled.0 == 0 {
                error!(error = %e, kind, "appending to the spool failed; records are counted and reported as a gap once it works again");
                self.unspooled.1 = now_unix_ns();
            }
            self.unspooled.0 += 1;
            self.unspooled.2 = e;
            self.metrics.unspooled.inc();
            self.metrics.spool_unwritable.set(1);
        }
    }

    /// See [`Command::CollectorAhead`].
    fn collector_ahead(&mut self, last_seq: u64) -> bool {
        let Some(s) = self.spool.as_mut().filter(|s| s.history_unknown()) else {
            return false;
        };
        let from = s.next_seq();
        match s.continue_after(last_seq) {
            Ok(held) => {
                warn!(
                    collector_last_seq = last_seq,
                    spool_next_seq = from,
                    renumbered = held,
                    "the spool's history was lost (new or wiped spool directory) and the collector holds records up to {last_seq}: numbering continues after it"
                );
                self.audit.record(
                    "agent",
                    &format!("spool history lost: the collector held records up to {last_seq} while the spool would have numbered from {from}; {held} spooled records renumbered after {last_seq}"),
                    "spool directory new or wiped",
                );
                let body = serde_json::json!({
                    "source": "spool_lost",
                    "collector_last_seq": last_seq,
                    "until_unix_ns": now_unix_ns(),
                    "note": "records the lost spool held that the collector had not stored are lost; their number is unknown",
                })
                .to_string();
                self.spool_append("gap", now_unix_ns(), &body);
                true
            }
            Err(e) => {
                error!(error = %e, "renumbering the spool after the collector's sequence failed");
                false
            }
        }
    }

    /// Records appended but not written (the disk filled before the batch
    /// was written): each range becomes a gap record once one can be
    /// written, with the sequence numbers the collector will not see.
    fn report_unwritten(&mut self) {
        let Some(s) = &mut self.spool else { return };
        for (first, last, why) in s.take_unwritten() {
            let count = last - first + 1;
            let body = serde_json::json!({
                "source": "spool_write",
                "count": count,
                "first_seq": first,
                "last_seq": last,
                "until_unix_ns": now_unix_ns(),
                "error": why,
            })
            .to_string();
            if s.append_now(&encode_spooled("gap", now_unix_ns(), &body))
                .is_ok()
            {
                warn!(count, first_seq = first, last_seq = last, error = %why, "spooled records could not be written; reported as a gap");
                self.metrics.unspooled.inc_by(count);
            } else {
                self.metrics.spool_unwritable.set(1);
                s.keep_unwritten((first, last, why));
            }
        }
    }

    /// Why records do not reach the spool now ("" when they do).
    fn spool_problem(&self) -> String {
        if self.cfg.spool_dir.is_none() {
            String::new()
        } else if self.spool.is_none() {
            format!(
                "the spool cannot be opened ({}); records are counted and reported as a gap once it opens (retried every 10 s); enforcement is not affected",
                self.spool_open_error
            )
        } else if self.unspooled.0 > 0 {
            format!(
                "appending to the spool fails ({}): {} records counted so far, reported as a gap once it takes writes again; enforcement is not affected",
                self.unspooled.2, self.unspooled.0
            )
        } else {
            String::new()
        }
    }

    /// Opens the spool (at start, and every 10 s while it cannot be opened);
    /// records what recovery found: damaged records as gap records with
    /// their sequence ranges.
    fn open_spool(&mut self) {
        let Some(dir) = self.cfg.spool_dir.clone() else {
            return;
        };
        let opts = SpoolOptions {
            fsync: Fsync::EveryN(u32::MAX),
            ..Default::default()
        };
        let (spool, rec) = match Spool::open(&dir, opts) {
            Ok(opened) => opened,
            Err(e) => {
                if self.spool_open_error.is_empty() {
                    error!(dir = %dir.display(), error = %e, "the spool cannot be opened; sensord enforces all the same, counts the records it cannot spool and retries every 10 s");
                }
                self.spool_open_error = e.to_string();
                self.metrics.spool_unwritable.set(1);
                return;
            }
        };
        info!(dir = %dir.display(), records = rec.records, torn_bytes = rec.torn_bytes, damaged_bytes = rec.quarantined_bytes, next_seq = spool.next_seq(), "spool opened");
        for w in &rec.warnings {
            warn!(dir = %dir.display(), "spool recovery: {w}");
        }
        self.spool = Some(spool);
        self.spool_open_error.clear();
        self.metrics.spool_unwritable.set(0);
        self.collector_state = "connecting".into();
        let now = now_unix_ns();
        for (first, last) in &rec.lost {
            warn!(dir = %dir.display(), first_seq = first, last_seq = last, "damaged spool records were cut out (copied to quarantine/ when there was room); reported as a gap");
            let body = serde_json::json!({
                "source": "spool_damage",
                "count": last - first + 1,
                "first_seq": first,
                "last_seq": last,
            })
            .to_string();
            self.spool_append("gap", now, &body);
        }
        if rec.torn_bytes > 0 {
            warn!(dir = %dir.display(), bytes = rec.torn_bytes, "the record being written when sensord stopped was cut short; reported as a gap");
            let body = serde_json::json!({
                "source": "spool_torn",
                "count": 1,
                "bytes": rec.torn_bytes,
            })
            .to_string();
            self.spool_append("gap", now, &body);
        }
    }

    /// Reports records the spool could not take, once it takes one again.
    fn report_unspooled(&mut self) {
        let (count, from, why) = &self.unspooled;
        let Some(s) = self.spool.as_mut().filter(|_| *count > 0) else {
            return;
        };
        let now = now_unix_ns();
        let body = serde_json::json!({
            "source": "spool_write",
            "count": count,
            "from_unix_ns": from,
            "until_unix_ns": now,
            "error": why,
        })
        .to_string();
        // Still failing: the count stays for the next try (logged once, when
        // the failures began).
        if s.append_now(&encode_spooled("gap", now, &body)).is_ok() {
            warn!(count, error = %why, "the spool takes writes again; the records it could not take are reported as a gap");
            self.unspooled = (0, 0, String::new());
            self.metrics.spool_unwritable.set(0);
        }
    }

    /// Makes what was appended durable and records gaps: audit records waiting,
    /// records the full spool dropped.
    fn spool_sync(&mut self) {
        self.report_unspooled();
        for a in self.audit.take_pending() {
            let t =
                a.at.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
            self.spool_append("audit", t, &a.to_json());
        }
        let Some(s) = &mut self.spool else { return };
        if let Some(d) = s.take_dropped() {
            warn!(
                count = d.count,
                first_seq = d.first_seq,
                last_seq = d.last_seq,
                "the spool was full: records dropped (reported as a gap)"
            );
            let body = serde_json::json!({ "source": "spool", "count": d.count, "first_seq": d.first_seq, "last_seq": d.last_seq }).to_string();
            self.spool_append("gap", now_unix_ns(), &body);
        }
        if let Some(s) = &mut self.spool
            && let Err(e) = s.flush()
        {
            error!(error = %e, "writing or fsyncing the spool failed");
        }
        self.report_unwritten();
        self.metrics
            .spool_depth
            .set(self.spool.as_ref().map_or(0, Spool::depth) as i64);
    }
}
