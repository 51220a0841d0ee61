//! The `residency.collector.v1.Collector` service.
//!
//! Delivery streams hand their batches to one writer task, which commits
//! whatever batches are waiting — of any number of hosts — in one transaction
//! (group commit: one fsync for all), then lets each stream acknowledge its
//! batch and publishes the records to live watchers. Operators' commands go to
//! agents through [`Fleet`].

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use residency_proto::collector::v1::{
    self as pb, agent_command::Command as Cmd, agent_message::Message as In,
    collector_message::Message as Out, collector_server::Collector,
};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::{
    auth::{Caller, Roles},
    fleet::Fleet,
    metrics::Metrics,
    replica_fleet::ReplicaFleet,
    store::{
        Store,
        filter::{Cursor, Filter, Indexed},
    },
};

/// A stored record as watchers see it.
type Stored = Arc<(String, pb::Record, Indexed)>;

/// This replica's watchers, as `stored_feed` hands them what other
/// replicas store.
pub struct ReplicaWatchers(broadcast::Sender<Stored>);

impl crate::store::stored_feed::Watchers for ReplicaWatchers {
    fn any(&self) -> bool {
        self.0.receiver_count() > 0
    }

    fn publish(&self, host: String, record: pb::Record) {
        let ix = Indexed::of(&record);
        let _ = self.0.send(Arc::new((host, record, ix)));
    }
}

/// Records a watcher may fall behind by before its stream ends.
const WATCH_BUFFER: usize = 16_384;

/// Batches one group commit takes at most.
const GROUP_MAX: usize = 64;

/// How long a chain check waits for the live agent's signed head: a check
/// is not held up by a slow agent (it then says the agent was not heard).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A batch waiting for the writer.
struct Write {
    host: String,
    rows: Vec<(pb::Record, Indexed)>,
    done: oneshot::Sender<Result<usize, String>>,
}

/// The batches waiting for a writer, shared by the writers.
type Waiting = Arc<Mutex<mpsc::Receiver<Write>>>;

/// A writer task on `store`: takes the batches waiting (up to
/// [`GROUP_MAX`]) as one group commit, then answers and publishes. Several
/// writers (PostgreSQL) take turns at the queue: one gathers the next group
/// while another commits.
fn spawn_writer(
    waiting: Waiting,
    store: Arc<Mutex<Store>>,
    stored: broadcast::Sender<Stored>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        loop {
            let group = {
                let mut rx = waiting.lock().await;
                let Some(first) = rx.recv().await else {
                    break;
                };
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(w) => group.push(w),
                        Err(_) => break,
                    }
                }
                group
            };
            let slices: Vec<(&str, &[(pb::Record, Indexed)])> = group
                .iter()
                .map(|w| (w.host.as_str(), w.rows.as_slice()))
                .collect();
            let started = std::time::Instant::now();
            let res = store.lock().await.insert_group(&slices).await;
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            match res {
                Ok(news) => {
                    let now = now_ns() as f64 / 1e9;
                    for (w, new_seqs) in group.into_iter().zip(news) {
                        // Only what this commit stored: a resent record is
                        // neither counted nor shown to watchers again.
                        let mut fresh: std::collections::HashSet<i64> =
                            new_seqs.into_iter().collect();
                        let new: Vec<(pb::Record, Indexed)> = w
                            .rows
                            .into_iter()
                            .filter(|(r, _)| fresh.remove(&(r.seq as i64)))
                            .collect();
                        count_stored(&metrics, &w.host, &new, now);
                        let _ = w.done.send(Ok(new.len()));
                        if stored.receiver_count() > 0 {
                            for (r, ix) in new {
                                let _ = stored.send(Arc::new((w.host.clone(), r, ix)));
                            }
                        }
                    }
                }
                Err(e) => {
                    metrics.database_errors.inc();
                    for w in group {
                        let _ = w.done.send(Err(e.to_string()));
                    }
                }
            }
        }
    });
}

/// Counts the records of `host` a commit stored (`new`: not the ones it
/// had already).
fn count_stored(metrics: &Metrics, host: &str, new: &[(pb::Record, Indexed)], now_s: f64) {
    if new.is_empty() {
        return;
    }
    // Counted per kind, one label lookup each (not one per record: this
    // runs for every batch the writer commits).
    let mut kinds: Vec<(&'static str, u64)> = Vec::new();
    for (_, ix) in new {
        match kinds.iter_mut().find(|(k, _)| *k == ix.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((ix.kind, 1)),
        }
    }
    for (kind, n) in kinds {
        metrics
            .records
            .get_or_create(&crate::metrics::RecordLabels {
                host: host.to_owned(),
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }
    metrics
        .last_seen
        .get_or_create(&crate::metrics::HostLabels {
            host: host.to_owned(),
        })
        .set(now_s);
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Longest exception.
const MAX_EXCEPTION: Duration = Duration::from_secs(30 * 86_400);

/// The service.
#[derive(Clone)]
pub struct CollectorService {
    store: Arc<Mutex<Store>>,
    roles: Arc<Roles>,
    fleet: Arc<Fleet>,
    stored: broadcast::Sender<Stored>,
    writer: mpsc::Sender<Write>,
    /// What the writers take from.
    waiting: Waiting,
    exceptions: Arc<AtomicU64>,
    /// The CA (DER) agents' certificates chain to: attestations signed with
    /// their TLS keys are checked against it.
    client_ca: Option<Arc<Vec<u8>>>,
    /// `--retain` (ns; 0: every record is kept).
    retain_ns: i64,
    /// Signs and checks dashboard login tokens.
    tokens: Arc<crate::dashboard::token::Keys>,
    metrics: Arc<Metrics>,
    /// Turns true when the collector shuts down: delivery streams end after
    /// the batch in flight, watches end.
    shutdown: watch::Sender<bool>,
    /// Set with replicas on one PostgreSQL: commands reach their agents too.
    replicas: Arc<std::sync::OnceLock<Arc<ReplicaFleet>>>,
    /// Each host's last full chain check (ListHosts and the dashboard show
    /// it: the state of the stored chain, not only what ingest saw).
    verified: Arc<std::sync::Mutex<std::collections::HashMap<String, pb::LastVerify>>>,
    /// The last record this collector acknowledged to each host since it
    /// started (sequence, chain hash, when): kept outside the database, so
    /// a verify finds a tail cut behind the collector's back.
    acked: Arc<std::sync::Mutex<std::collections::HashMap<String, pb::WitnessedHead>>>,
}

impl CollectorService {
    /// More writers, each on a store of its own (more connections to the
    /// same PostgreSQL database: `Store::more_writers`).
    pub fn add_writers(&self, stores: Vec<Store>) {
        for s in stores {
            spawn_writer(
                self.waiting.clone(),
                Arc::new(Mutex::new(s)),
                self.stored.clone(),
                self.metrics.clone(),
            );
        }
    }

    /// Checks attestations against `ca` (the DER of `--client-ca`).
    pub fn with_client_ca(mut self, ca: Option<Vec<u8>>) -> Self {
        self.client_ca = ca.map(Arc::new);
        self
    }

    /// The retention this collector applies (`--retain`): a chain check
    /// holds prefixes marked as retained against it.
    pub fn with_retain(mut self, retain: Option<Duration>) -> Self {
        self.retain_ns = retain.map_or(0, |r| r.as_nanos().min(i64::MAX as u128) as i64);
        self
    }

    pub fn new(store: Store, roles: Roles) -> CollectorService {
        let store = Arc::new(Mutex::new(store));
        let stored = broadcast::channel(WATCH_BUFFER).0;
        let metrics = Arc::new(Metrics::default());
        let (writer, rx) = mpsc::channel::<Write>(256);
        let waiting: Waiting = Arc::new(Mutex::new(rx));
        spawn_writer(
            waiting.clone(),
            store.clone(),
            stored.clone(),
            metrics.clone(),
        );
        CollectorService {
            writer,
            waiting,
            metrics,
            shutdown: watch::channel(false).0,
            store,
            roles: Arc::new(roles),
            fleet: Arc::new(Fleet::default()),
            stored,
            exceptions: Arc::new(AtomicU64::new(0)),
            client_ca: None,
            retain_ns: 0,
            tokens: Arc::new(crate::dashboard::token::Keys::generate()),
            replicas: Arc::new(std::sync::OnceLock::new()),
            verified: Arc::default(),
            acked: Arc::default(),
        }
    }

    /// With replicas on one PostgreSQL (`url`, this replica's `origin`):
    /// operators' commands reach the agents connected to any of them, and
    /// ListHosts says which are connected anywhere. Returns the part to run
    /// ([`ReplicaFleet::run`]).
    pub fn across_replicas(&self, url: String, origin: String) -> Arc<ReplicaFleet> {
        let r = ReplicaFleet::new(url, origin, self.fleet.clone());
        let _ = self.replicas.set(r.clone());
        r
    }

    /// Sends `command` to `target` (every host when `None`) on this replica
    /// and, with replicas, on the others; one outcome per host.
    async fn fleet_command(
        &self,
        target: Option<&str>,
        actor: &str,
        reason: &str,
        command: Cmd,
    ) -> Vec<pb::HostOutcome> {
        match self.replicas.get() {
            Some(r) => r.command(target, actor, reason, command).await,
            None => self.fleet.command(target, actor, reason, command).await,
        }
    }

    /// Runs retention (see `crate::retention`) until `stop` turns true.
    pub async fn retain(&self, retain: Duration, every: Duration, stop: watch::Receiver<bool>) {
        crate::retention::run(self.store.clone(), retain, every, stop).await
    }

    /// Starts forwarding stored records to `target`.
    pub fn forward(
        &self,
        target: crate::forward::Target,
        opts: crate::forward::Options,
    ) -> Result<(), String> {
        crate::forward::spawn(self.store.clone(), target, opts)
    }

    /// This replica's watchers, for the records other replicas store.
    pub fn watchers(&self) -> ReplicaWatchers {
        ReplicaWatchers(self.stored.clone())
    }

    /// The collector's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Ends every delivery stream after its batch in flight (acknowledged
    /// once committed) and every watch: the collector is shutting down.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether the database answers (`/readyz`).
    pub async fn database_ready(&self) -> Result<(), String> {
        self.store
            .lock()
            .await
            .ping()
            .await
            .map_err(|e| format!("the database does not answer: {e}"))
    }

    /// The dashboard's login tokens.
    pub fn tokens(&self) -> &crate::dashboard::token::Keys {
        &self.tokens
    }

    /// Who may do what.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// `host`'s latest attestation, its signature checked.
    async fn last_attestation(&self, host: &str, now: i64) -> Option<pb::LastAttestation> {
        let filter = Filter {
            host: Some(host.to_owned()),
            kind: Some("attestation".into()),
            ..Default::default()
        };
        let rows = self.store.lock().await.page(&filter, 1).await.ok()?;
        let stored = rows.into_iter().next()?;
        let seq = stored.seq();
        let Some(pb::record::Body::Attestation(a)) = stored.record.and_then(|r| r.body) else {
            return None;
        };
        let check =
            residency_proto::attest::check(&a, self.client_ca.as_deref().map(Vec::as_slice), None);
        let due = a.window_end_unix_ns.saturating_add(a.interval_ns);
        Some(pb::LastAttestation {
            seq,
            window_end_unix_ns: a.window_end_unix_ns,
            interval_ns: a.interval_ns,
            stopping: a.stopping,
            signature_valid: check.valid,
            signer_trusted: check.trusted,
            problem: check.problem,
            overdue: !a.stopping && a.interval_ns > 0 && now > due.saturating_add(a.interval_ns),
        })
    }
}

type OutStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn out(m: Out) -> Result<pb::CollectorMessage, Status> {
    Ok(pb::CollectorMessage { message: Some(m) })
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("collector storage: {e}"))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `off`, `monitor` or `enforce`.
fn check_mode(mode: &str) -> Result<(), Status> {
    match mode {
        "off" | "monitor" | "enforce" => Ok(()),
        m => Err(Status::invalid_argument(format!(
            "mode {m:?} is not one of: off, monitor, enforce"
        ))),
    }
}

/// A prefix (normalised), an address (as a /32 or /128), or an ISO country
/// code (upper-cased).
fn check_destination(d: &str) -> Result<String, Status> {
    if let Ok(net) = d.parse::<IpNet>() {
        return Ok(net.trunc().to_string());
    }
    if let Ok(ip) = d.parse::<IpAddr>() {
        return Ok(IpNet::from(ip).to_string());
    }
    if d.len() == 2 && d.chars().all(|c| c.is_ascii_alphabetic()) {
        return Ok(d.to_ascii_uppercase());
    }
    Err(Status::invalid_argument(format!(
        "destination {d:?} is neither an IP prefix (203.0.113.0/24), an address, nor an ISO country code (US)"
    )))
}

fn target(host_id: &str) -> Option<&str> {
    (!host_id.is_empty()).then_some(host_id)
}

impl CollectorService {
    /// Has the writer store a batch (committed with whatever else is waiting);
    /// returns how many records were new.
    async fn store_batch(&self, host: &str, records: Vec<pb::Record>) -> Result<usize, Status> {
        let rows = records
            .into_iter()
            .map(|r| {
                let ix = Indexed::of(&r);
                (r, ix)
            })
            .collect();
        let (done, result) = oneshot::channel();
        self.writer
            .send(Write {
                host: host.to_owned(),
                rows,
                done,
            })
            .await
            .map_err(|_| Status::unavailable("the collector is shutting down"))?;
        result
            .await
            .map_err(|_| Status::unavailable("the collector is shutting down"))?
            .map_err(internal)
    }

    /// One page of records, newest first, with the token of the next.
    async fn page(
        &self,
        filter: &Filter,
        limit: u32,
    ) -> Result<Response<pb::ViolationPage>, Status> {
        let limit = match limit {
            0 => 1000,
            n => n.min(10_000),
        };
        let records = self
            .store
            .lock()
            .await
            .page(filter, limit)
            .await
            .map_err(internal)?;
        let next_page_token = match records.last() {
            Some(r) if records.len() == limit as usize => Cursor {
                time_ns: r.time_unix_ns(),
                host: r.host_id.clone(),
                seq: r.seq() as i64,
            }
            .token(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ViolationPage {
            records,
            next_page_token,
        }))
    }

    /// Holds a whole-chain report against the live agent's head `before`
    /// (asked before the records were read; its signer checked with them):
    /// when records past it are stored, the agent is asked again, and
    /// records past that head too were never numbered by the agent (see
    /// `chain::hold_against_agent`). Returns the head the report was held
    /// against.
    async fn hold_against_agent(
        &self,
        report: &mut pb::ChainReport,
        before: pb::SignedHead,
    ) -> pb::SignedHead {
        use pb::chain_finding::Kind;
        if report
            .findings
            .iter()
            .any(|f| f.kind() == Kind::HeadInvalid)
        {
            return before;
        }
        if report.last_seq <= before.seq {
            // Nothing stored past it; its own record (when stored) was
            // compared with it as a witnessed head.
            return before;
        }
        let (after, why) = self.agent_head(&report.host_id).await;
        let Some(after) = after else {
            report.agent_head_missing =
                format!("asked again for records stored during the check: {why}");
            return before;
        };
        // The same signer as the head already checked.
        let same = after.certificate == before.certificate
            && after.public_key == before.public_key
            && after.host_id == before.host_id
            && residency_proto::attest::check(&after, None, None).valid;
        if !same {
            report.findings.push(pb::ChainFinding {
                kind: Kind::HeadInvalid as i32,
                first_seq: after.seq,
                last_seq: after.seq,
                detail:
                    "the live agent's second signed head of this check is not signed like its first"
                        .into(),
                ..Default::default()
            });
            report.intact = false;
            return after;
        }
        residency_proto::chain::hold_against_agent(report, &after);
        after
    }

    /// Asks `host`'s agent, when it is connected here, for its signed chain
    /// head under a fresh nonce; else says why there is none.
    async fn agent_head(&self, host: &str) -> (Option<pb::SignedHead>, String) {
        use ring::rand::SecureRandom;
        if !self.fleet.is_connected(host) {
            return (None, "the agent is not connected to this collector".into());
        }
        let mut nonce = vec![0u8; 16];
        if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
            return (None, "no randomness for a nonce".into());
        }
        let asked = self.fleet.ask(
            host,
            "collector",
            "chain check",
            Cmd::Head(pb::HeadCommand {
                nonce: nonce.clone(),
            }),
            HEAD_TIMEOUT,
        );
        match asked.await {
            Err(e) => (None, format!("the agent: {e}")),
            Ok(r) if !r.error.is_empty() => (None, format!("the agent: {}", r.error)),
            Ok(r) => match r.head {
                Some(h) if h.nonce == nonce => (Some(h), String::new()),
                Some(_) => {
                    warn!(host = %host, "the agent answered a chain check with a head for another nonce");
                    (
                        None,
                        "the agent's head answers another request (a replay?)".into(),
                    )
                }
                None => (
                    None,
                    "the agent is older than this collector: it does not sign its head".into(),
                ),
            },
        }
    }

    /// Remembers the highest record acknowledged to `host` with its chain
    /// hash (an unchained record leaves nothing to compare).
    fn note_acked(&self, host: &str, seq: u64, head: Vec<u8>) {
        if head.is_empty() {
            return;
        }
        if let Ok(mut acked) = self.acked.lock() {
            let e = acked.entry(host.to_owned()).or_default();
            if seq > e.seq {
                *e = pb::WitnessedHead {
                    seq,
                    head,
                    seen_unix_ns: now_ns(),
                    by: "this collector's acknowledgement to the agent".into(),
                    signed: None,
                };
            }
        }
    }

    /// Reads one delivery stream until it ends.
    async fn serve_stream(
        self,
        host: String,
        mut incoming: Streaming<pb::AgentMessage>,
        tx: crate::fleet::StreamTx,
    ) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let msg = tokio::select! {
                m = incoming.next() => m,
                _ = shutting_down(&mut shutdown) => {
                    info!(host = %host, "collector shutting down: delivery stream ended after its last acknowledged batch");
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the collector is shutting down; the agent reconnects and resends what was not acknowledged",
                        )))
                        .await;
                    break;
                }
            };
            let Some(msg) = msg else { break };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    warn!(host = %host, error = %e, "delivery stream broke");
                    break;
                }
            };
            match msg.message {
                Some(In::Batch(batch)) => {
                    let Some(upto) = batch.records.iter().map(|r| r.seq).max() else {
                        continue;
                    };
                    let n = batch.records.len();
                    let head = batch
                        .records
                        .iter()
                        .find(|r| r.seq == upto)
                        .map(|r| r.chain.clone())
                        .unwrap_or_default();
                    // Commit, then acknowledge: an ack always means durable.
                    match self.store_batch(&host, batch.records).await {
                        Ok(new) => {
                            info!(host = %host, seq = upto, records = n, new, "batch stored");
                            self.note_acked(&host, upto, head);
                            if tx.send(out(Out::Ack(pb::Ack { seq: upto }))).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(host = %host, error = %e.message(), "storing a batch failed; the agent will resend it");
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    }
                }
                Some(In::State(state)) => {
                    if let Err(e) = self.store.lock().await.put_state(&host, &state).await {
                        warn!(host = %host, error = %e, "storing the host's state failed");
                    }
                }
                Some(In::Result(result)) => {
                    info!(host = %host, command = result.id, error = %result.error, "command answered");
                    self.fleet.answered(&host, result);
                }
                Some(In::Hello(_)) => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "hello may only open a stream",
                        )))
                        .await;
                    break;
                }
                None => {}
            }
        }
    }
}

#[tonic::async_trait]
impl Collector for CollectorService {
    type DeliverStream = OutStream<pb::CollectorMessage>;
    type WatchViolationsStream = OutStream<pb::StoredRecord>;

    async fn deliver(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let caller = self.roles.caller(&req)?;
        let certified = match caller {
            Caller::Agent { host } => host,
            Caller::Auditor { name } | Caller::Operator { name } => {
                return Err(Status::permission_denied(format!(
                    "{name} is an auditor or operator; only agents deliver records"
                )));
            }
        };
        let mut incoming = req.into_inner();
        let first = incoming
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the stream closed before hello"))??;
        let Some(In::Hello(hello)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a delivery stream must be hello",
            ));
        };
        if !hello.host_id.is_empty() && certified != hello.host_id {
            warn!(authenticated = %certified, claimed = %hello.host_id, "refused an agent delivering for another host");
            return Err(Status::permission_denied(format!(
                "this agent is host {certified:?} (by its certificate or token); it may not deliver records for host {:?} (the policy's host id must equal the certificate's common name or the token's host)",
                hello.host_id
            )));
        }
        let host = certified;
        let mut store = self.store.lock().await;
        if let Some(state) = &hello.state {
            store.put_state(&host, state).await.map_err(internal)?;
        }
        let last_seq = store.last_seq(&host).await.map_err(internal)?;
        let missed = match &hello.state {
            Some(state) => crate::store::missed_modes(
                &store.fleet_modes(&host).await.map_err(internal)?,
                state,
            ),
            None => Vec::new(),
        };
        drop(store);
        info!(host = %host, version = %hello.version, last_seq, "agent connected");
        let (tx, rx) = mpsc::channel(16);
        tx.send(out(Out::Welcome(pb::Welcome { last_seq })))
            .await
            .map_err(|_| Status::unavailable("stream closed"))?;
        let id = self.fleet.connect(&host, tx.clone());
        if let Some(r) = self.replicas.get() {
            r.connected(&host);
        }
        self.metrics.connected_agents.set(self.fleet.count() as i64);
        if !missed.is_empty() {
            // Fleet commands this host missed while it was away.
            let fleet = self.fleet.clone();
            let host = host.clone();
            tokio::spawn(async move {
                for (class, m) in missed {
                    info!(host = %host, class = %class, mode = %m.mode, actor = %m.actor, "replaying a fleet enforcement change the host missed");
                    let outcomes = fleet
                        .command(
                            Some(&host),
                            &format!("{} (replayed at reconnect)", m.actor),
                            &m.reason,
                            Cmd::SetEnforcement(pb::SetEnforcementCommand {
                                class,
                                mode: m.mode,
                            }),
                        )
                        .await;
                    for o in outcomes.iter().filter(|o| !o.error.is_empty()) {
                        warn!(host = %o.host_id, error = %o.error, "replayed fleet command failed");
                    }
                }
            });
        }
        let this = self.clone();
        tokio::spawn(async move {
            let fleet = this.fleet.clone();
            let metrics = this.metrics.clone();
            let replicas = this.replicas.clone();
            this.serve_stream(host.clone(), incoming, tx).await;
            fleet.disconnect(&host, id);
            if let Some(r) = replicas.get()
                && !fleet.is_connected(&host)
            {
                r.disconnected(&host);
            }
            metrics.connected_agents.set(fleet.count() as i64);
            info!(host = %host, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::HostList>, Status> {
        self.roles.reader(&req)?;
        let mut hosts = self.store.lock().await.hosts().await.map_err(internal)?;
        let mut connected = self.fleet.connected();
        if let Some(r) = self.replicas.get() {
            match r.elsewhere(None).await {
                Ok(rows) => connected.extend(rows.into_iter().map(|(host, _)| host)),
                Err(e) => {
                    warn!(error = %e, "ListHosts says connected only for this replica's agents")
                }
            }
        }
        let now = now_ns();
        for h in &mut hosts {
            h.connected = connected.contains(&h.host_id);
            h.last_attestation = self.last_attestation(&h.host_id, now).await;
            h.last_verify = self
                .verified
                .lock()
                .ok()
                .and_then(|v| v.get(&h.host_id).cloned());
        }
        Ok(Response::new(pb::HostList { hosts }))
    }

    async fn verify_chain(
        &self,
        req: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::ChainReport>, Status> {
        self.roles.reader(&req)?;
        let q = req.into_inner();
        if q.host_id.is_empty() {
            return Err(Status::invalid_argument(
                "host_id is required: the chain is per host (ListHosts names them)",
            ));
        }
        if q.until_unix_ns > 0 && q.until_unix_ns <= q.since_unix_ns {
            return Err(Status::invalid_argument(format!(
                "until ({}) must be after since ({})",
                q.until_unix_ns, q.since_unix_ns
            )));
        }
        let mut witness = q.witness;
        // Only a check that reaches the chain's end compares heads.
        let (agent_head, agent_head_missing) = if q.until_unix_ns <= 0 {
            self.agent_head(&q.host_id).await
        } else {
            (None, String::new())
        };
        if let Some(h) = &agent_head {
            witness.push(pb::WitnessedHead {
                seq: h.seq,
                head: h.head.clone(),
                seen_unix_ns: h.time_unix_ns,
                by: "the live agent's signed head".into(),
                signed: Some(h.clone()),
            });
        }
        if let Some(h) = self
            .acked
            .lock()
            .ok()
            .and_then(|a| a.get(&q.host_id).cloned())
        {
            witness.push(h);
        }
        let report = Store::verify_chain(
            &self.store,
            &q.host_id,
            q.since_unix_ns,
            q.until_unix_ns,
            self.client_ca.as_deref().cloned(),
            witness,
            self.retain_ns,
        )
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no record of host {:?} was ever stored here: check the name (ListHosts / `collectorctl hosts` names the hosts)",
                q.host_id
            ))
        })?;
        let mut report = report;
        if let Some(h) = agent_head.clone() {
            report.agent_head = Some(self.hold_against_agent(&mut report, h).await);
        }
        report.agent_head_missing = agent_head_missing;
        info!(
            host = %q.host_id,
            records = report.records,
            intact = report.intact,
            findings = report.findings.len(),
            agent_head = report.agent_head.as_ref().map_or(0, |h| h.seq),
            "chain verified"
        );
        if q.until_unix_ns <= 0 && q.since_unix_ns <= 0 {
            let problems: Vec<&pb::ChainFinding> = report
                .findings
                .iter()
                .filter(|f| !residency_proto::chain::explained(f.kind()))
                .collect();
            let last = pb::LastVerify {
                at_unix_ns: now_ns(),
                intact: report.intact,
                records: report.records,
                problems: problems.len() as u64,
                first_problem: problems
                    .first()
                    .map(|f| {
                        let kind = f.kind().as_str_name().trim_start_matches("KIND_");
                        format!("{kind} at record {}: {}", f.first_seq, f.detail)
                    })
                    .unwrap_or_default(),
            };
            if let Ok(mut v) = self.verified.lock() {
                v.insert(q.host_id.clone(), last);
            }
        }
        Ok(Response::new(report))
    }

    async fn what_if(
        &self,
        req: Request<pb::WhatIfRequest>,
    ) -> Result<Response<pb::WhatIfResponse>, Status> {
        let caller = self.roles.reader(&req)?;
        let q = req.into_inner();
        if q.host_id.is_empty() || q.policy_toml.trim().is_empty() {
            return Err(Status::invalid_argument(
                "host_id and policy_toml are required: the host's agent judges its stored violations under the policy",
            ));
        }
        let filter = Filter {
            host: Some(q.host_id.clone()),
            kind: Some("violation".into()),
            since: (q.since_unix_ns > 0).then_some(q.since_unix_ns),
            until: (q.until_unix_ns > 0).then_some(q.until_unix_ns),
            ..Default::default()
        };
        let stored = self
            .store
            .lock()
            .await
            .page(&filter, crate::what_if::MAX_REPLAYED)
            .await
            .map_err(internal)?;
        let flows = crate::what_if::groups(&stored);
        let replayed = stored.len() as u64;
        info!(actor = %caller.actor(), host = %q.host_id, violations = replayed, groups = flows.len(), "what-if asked");
        let result = self
            .fleet
            .ask(
                &q.host_id,
                &caller.actor(),
                "what if (dry run)",
                Cmd::WhatIf(pb::WhatIfCommand {
                    policy_toml: q.policy_toml,
                    flows,
                }),
                crate::fleet::ANSWER_TIMEOUT,
            )
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "host {}: {e}; a what-if runs on the host's agent (it has the region data), which must be connected to this collector",
                    q.host_id
                ))
            })?;
        if !result.error.is_empty() {
            return Err(Status::invalid_argument(format!(
                "host {}: {}",
                q.host_id, result.error
            )));
        }
        Ok(Response::new(pb::WhatIfResponse {
            host_id: q.host_id,
            changes: result.what_if.unwrap_or_default().changes,
            violations_replayed: replayed,
        }))
    }

    async fn query_records(
        &self,
        req: Request<pb::RecordQuery>,
    ) -> Result<Response<pb::ViolationPage>, Status> {
        self.roles.reader(&req)?;
        let q = req.into_inner();
        if !matches!(q.kind.as_str(), "audit" | "gap" | "attestation") {
            return Err(Status::invalid_argument(format!(
                "kind {:?} is not one of: audit, gap, attestation (violations: QueryViolations)",
                q.kind
            )));
        }
        if q.until_unix_ns > 0 && q.until_unix_ns <= q.since_unix_ns {
            return Err(Status::invalid_argument(format!(
                "until ({}) must be after since ({})",
                q.until_unix_ns, q.since_unix_ns
            )));
        }
        let filter = Filter {
            kind: Some(q.kind.clone()),
            host: (!q.host_id.is_empty()).then(|| q.host_id.clone()),
            since: (q.since_unix_ns != 0).then_some(q.since_unix_ns),
            until: (q.until_unix_ns != 0).then_some(q.until_unix_ns),
            after: (!q.page_token.is_empty())
                .then(|| Cursor::parse(&q.page_token))
                .transpose()
                .map_err(Status::invalid_argument)?,
            ..Default::default()
        };
        self.page(&filter, q.limit).await
    }

    async fn violation_stats(
        &self,
        req: Request<pb::ViolationStatsRequest>,
    ) -> Result<Response<pb::ViolationCounts>, Status> {
        self.roles.reader(&req)?;
        let q = req.into_inner();
        let mut filter =
            Filter::violations(&q.query.unwrap_or_default()).map_err(Status::invalid_argument)?;
        filter.after = None;
        if q.bucket_ns != 0 && q.bucket_ns < 1_000_000_000 {
            return Err(Status::invalid_argument(format!(
                "bucket_ns {} is below one second (0: one bucket)",
                q.bucket_ns
            )));
        }
        let rows = self
            .store
            .lock()
            .await
            .stats(&filter, q.bucket_ns)
            .await
            .map_err(internal)?;
        let mut total = 0u64;
        let mut countries = std::collections::HashMap::<String, u64>::new();
        let mut buckets: std::collections::BTreeMap<(i64, String, String), u64> =
            Default::default();
        for r in rows {
            let n = r.count.max(0) as u64;
            total += n;
            *countries.entry(r.country.clone()).or_default() += n;
            let classes: Vec<&str> = r.classes.split(';').filter(|c| !c.is_empty()).collect();
            let classes = if classes.is_empty() {
                vec![""]
            } else {
                classes
            };
            for c in classes {
                *buckets
                    .entry((r.bucket_ns, c.to_owned(), r.country.clone()))
                    .or_default() += n;
            }
        }
        Ok(Response::new(pb::ViolationCounts {
            total,
            countries,
            buckets: buckets
                .into_iter()
                .map(|((start_unix_ns, class, country), count)| pb::StatsBucket {
                    start_unix_ns,
                    class,
                    country,
                    count,
                })
                .collect(),
        }))
    }

    async fn issue_dashboard_token(
        &self,
        req: Request<pb::DashboardTokenRequest>,
    ) -> Result<Response<pb::DashboardToken>, Status> {
        use crate::dashboard::token::{DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS};
        let caller = self.roles.reader(&req)?;
        let ttl = match req.get_ref().ttl_seconds {
            0 => DEFAULT_TTL_SECONDS,
            t if (1..=MAX_TTL_SECONDS).contains(&t) => t,
            t => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds {t} is not between 1 and {MAX_TTL_SECONDS} (twelve hours)"
                )));
            }
        };
        let expires_unix_ns = now_ns().saturating_add(ttl * 1_000_000_000);
        let token = self.tokens.issue(&caller, expires_unix_ns);
        let (role, name) = match &caller {
            Caller::Operator { name } => ("operator", name.clone()),
            Caller::Auditor { name } => ("auditor", name.clone()),
            Caller::Agent { .. } => unreachable!("reader() refuses agents"),
        };
        info!(actor = %caller.actor(), role, ttl_seconds = ttl, "dashboard token issued");
        Ok(Response::new(pb::DashboardToken {
            token,
            expires_unix_ns,
            role: role.into(),
            name,
        }))
    }

    async fn query_violations(
        &self,
        req: Request<pb::ViolationQuery>,
    ) -> Result<Response<pb::ViolationPage>, Status> {
        self.roles.reader(&req)?;
        let q = req.into_inner();
        let filter = Filter::violations(&q).map_err(Status::invalid_argument)?;
        self.page(&filter, q.limit).await
    }

    async fn watch_violations(
        &self,
        req: Request<pb::ViolationQuery>,
    ) -> Result<Response<Self::WatchViolationsStream>, Status> {
        self.roles.reader(&req)?;
        let mut filter = Filter::violations(&req.into_inner()).map_err(Status::invalid_argument)?;
        filter.after = None;
        let mut rx = self.stored.subscribe();
        let (tx, out) = mpsc::channel(256);
        let metrics = self.metrics.clone();
        let mut shutdown = self.shutdown.subscribe();
        metrics.watchers.inc();
        tokio::spawn(async move {
            // Counted until this task ends, however it ends.
            struct Watching(Arc<Metrics>);
            impl Drop for Watching {
                fn drop(&mut self) {
                    self.0.watchers.dec();
                }
            }
            let _watching = Watching(metrics);
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    _ = shutting_down(&mut shutdown) => {
                        let _ = tx
                            .send(Err(Status::unavailable("the collector is shutting down; watch again once it is back")))
                            .await;
                        return;
                    }
                };
                let item = match next {
                    Ok(s) => s,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "this watcher fell {n} records behind and was cut off; catch up with QueryViolations and watch again"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let (host, r, ix) = item.as_ref();
                if !filter.matches(host, r, ix) {
                    continue;
                }
                let rec = pb::StoredRecord {
                    host_id: host.clone(),
                    record: Some(r.clone()),
                };
                if tx.send(Ok(rec)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn set_enforcement(
        &self,
        req: Request<pb::FleetSetEnforcementRequest>,
    ) -> Result<Response<pb::FleetResponse>, Status> {
        let caller = self.roles.operator(&req, "change enforcement")?;
        let r = req.into_inner();
        check_mode(&r.mode)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a reason is required to change enforcement (every agent records it)",
            ));
        }
        info!(actor = %caller.actor(), host = %r.host_id, class = %r.class, mode = %r.mode, reason = %r.reason, "fleet enforcement change");
        // Kept first: a host not connected now gets it when it connects
        // (unless it changed its mode after this).
        let kept = crate::store::FleetMode {
            target: r.host_id.clone(),
            class: r.class.clone(),
            mode: r.mode.clone(),
            actor: caller.actor(),
            reason: r.reason.clone(),
            issued_ns: now_ns(),
        };
        self.store
            .lock()
            .await
            .put_fleet_mode(&kept)
            .await
            .map_err(internal)?;
        let outcomes = self
            .fleet_command(
                target(&r.host_id),
                &caller.actor(),
                &r.reason,
                Cmd::SetEnforcement(pb::SetEnforcementCommand {
                    class: r.class,
                    mode: r.mode,
                }),
            )
            .await;
        Ok(Response::new(pb::FleetResponse {
            outcomes,
            exception_id: String::new(),
        }))
    }

    async fn grant_exception(
        &self,
        req: Request<pb::GrantExceptionRequest>,
    ) -> Result<Response<pb::FleetResponse>, Status> {
        let caller = self.roles.operator(&req, "grant exceptions")?;
        let r = req.into_inner();
        if r.class.is_empty() {
            return Err(Status::invalid_argument("an exception needs a class"));
        }
        let destination = check_destination(&r.destination)?;
        let duration = Duration::from_secs(r.duration_seconds);
        if duration.is_zero() || duration > MAX_EXCEPTION {
            return Err(Status::invalid_argument(format!(
                "duration_seconds must be between 1 and {} (30 days); grant again to extend",
                MAX_EXCEPTION.as_secs()
            )));
        }
        if r.justification.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a justification is required (every agent records it)",
            ));
        }
        let now = now_ns();
        let id = format!(
            "exc-{}-{}",
            now / 1_000_000,
            self.exceptions.fetch_add(1, Ordering::Relaxed) + 1
        );
        let exception = pb::ExceptionState {
            id: id.clone(),
            class: r.class,
            destination,
            expires_unix_ns: now + duration.as_nanos() as i64,
            justification: r.justification.clone(),
            actor: caller.actor(),
        };
        info!(actor = %caller.actor(), host = %r.host_id, id = %id, class = %exception.class, destination = %exception.destination, seconds = r.duration_seconds, justification = %r.justification, "granting an exception");
        let outcomes = self
            .fleet_command(
                target(&r.host_id),
                &caller.actor(),
                &r.justification,
                Cmd::GrantException(exception),
            )
            .await;
        Ok(Response::new(pb::FleetResponse {
            outcomes,
            exception_id: id,
        }))
    }
}
