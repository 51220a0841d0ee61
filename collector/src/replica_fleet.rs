//! Fleet commands across replicas on one PostgreSQL.
//!
//! Each replica records the agents connected to it in `agent_connections`
//! (host → the replica's origin and the PostgreSQL backend of its listening
//! connection). A row counts only while that backend lives (it is in
//! `pg_stat_activity` with the same start time): a replica killed with
//! SIGKILL loses its connection, and its rows stop counting at once, with
//! no heartbeat to wait for.
//!
//! An operator's command to any replica goes to the agents connected to it
//! directly ([`Fleet`]) and, through the channel [`COMMANDS`], to the other
//! replicas that have targeted agents (`NOTIFY`, delivered when the
//! sending statement commits). Each of those runs it on its own agents and
//! answers on [`ANSWERS`] per host, then with a final notification; the
//! asked replica merges the outcomes. A host connected nowhere is answered
//! at once ("not connected to any collector replica"); a replica that does
//! not answer in time is named in its hosts' outcomes.
//!
//! Nothing goes through a side channel: only PostgreSQL, which the replicas
//! share already. A notification carries only the key of a row in
//! `fleet_messages`, written in the collectors' own tables: `NOTIFY` needs
//! no privilege beyond connecting, so a notification whose row is not
//! there (any other database user can send one) is ignored, and a command
//! cannot be forged by someone who may only read or connect. Answers are
//! split in chunks all the same.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use prost::Message as _;
use residency_proto::collector::v1::{self as pb, agent_command};
use tokio::sync::{RwLock, mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::{debug, info, warn};

use crate::fleet::{ANSWER_TIMEOUT, Fleet};

/// Commands for other replicas' agents.
pub const COMMANDS: &str = "residency_fleet";
/// Their answers.
pub const ANSWERS: &str = "residency_fleet_answers";

/// Payload bytes one notification carries at most (PostgreSQL's limit is
/// 8,000).
const PAYLOAD_MAX: usize = 7_000;

/// The outcome's host when a fleet-wide command could not reach the other
/// replicas (with a space: no token file's host can be named so).
pub const OTHER_REPLICAS: &str = "(other replicas)";

/// How long past an agent's own answer time the asked replica waits for
/// another replica's answers (the notifications' round trips).
const RELAY_MARGIN: Duration = Duration::from_secs(5);

/// The migration (PostgreSQL only: SQLite has one collector).
pub const REPLICA_TABLES: &str = "CREATE TABLE agent_connections (
    host TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    backend_pid INTEGER NOT NULL,
    backend_start TIMESTAMPTZ NOT NULL,
    since_ns BIGINT NOT NULL
);
CREATE TABLE fleet_messages (
    key TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    issued_ns BIGINT NOT NULL
);";

/// How long relayed commands and answers are kept (they are read within
/// seconds; older ones go with the next message).
const MESSAGES_KEPT_NS: i64 = 3_600_000_000_000;

/// The live rows: their replica's connection is still there.
const LIVE: &str = "FROM agent_connections c JOIN pg_stat_activity a
    ON a.pid = c.backend_pid AND a.backend_start = c.backend_start";

/// A command as other replicas get it.
#[derive(Debug, PartialEq)]
struct Relayed {
    id: String,
    from: String,
    /// The replica that has the target (empty: every replica, for all its
    /// agents).
    owner: String,
    /// The host (empty: every host).
    target: String,
    command: pb::AgentCommand,
}

impl Relayed {
    fn payload(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(self.command.encode_to_vec());
        format!(
            "{}\t{}\t{}\t{}\t{body}",
            self.id, self.from, self.owner, self.target
        )
    }

    fn parse(payload: &str) -> Option<Relayed> {
        let mut p = payload.splitn(5, '\t');
        let (id, from, owner, target, body) =
            (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?;
        Some(Relayed {
            id: id.to_owned(),
            from: from.to_owned(),
            owner: owner.to_owned(),
            target: target.to_owned(),
            command: pb::AgentCommand::decode(bytes.as_slice()).ok()?,
        })
    }
}

/// One notification of answers: the command, the replica, whether it is
/// its last, and `(host, error)` pairs.
#[derive(Debug, PartialEq)]
struct Answers {
    id: String,
    origin: String,
    last: bool,
    outcomes: Vec<(String, String)>,
}

/// Tabs and line ends would break the payload's lines.
fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// `outcomes` of command `id` from `origin`, in as few notifications as
/// fit, the last one marked.
fn answer_payloads(id: &str, origin: &str, outcomes: &[pb::HostOutcome]) -> Vec<String> {
    let head = |last: bool| format!("{id}\t{origin}\t{}", u8::from(last));
    let mut out = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0;
    for o in outcomes {
        let line = format!("{}\t{}", clean(&o.host_id), clean(&o.error));
        if !lines.is_empty() && size + line.len() + 1 > PAYLOAD_MAX - 100 {
            out.push(format!("{}\n{}", head(false), lines.join("\n")));
            lines.clear();
            size = 0;
        }
        size += line.len() + 1;
        lines.push(line);
    }
    let mut last = head(true);
    if !lines.is_empty() {
        last.push('\n');
        last.push_str(&lines.join("\n"));
    }
    out.push(last);
    out
}

fn parse_answers(payload: &str) -> Option<Answers> {
    let mut lines = payload.split('\n');
    let mut head = lines.next()?.split('\t');
    let (id, origin, last) = (head.next()?, head.next()?, head.next()?);
    let outcomes = lines
        .map(|l| {
            let (h, e) = l.split_once('\t')?;
            Some((h.to_owned(), e.to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Answers {
        id: id.to_owned(),
        origin: origin.to_owned(),
        last: last == "1",
        outcomes,
    })
}

/// This replica's part in fleet commands across replicas.
pub struct ReplicaFleet {
    url: String,
    origin: String,
    fleet: Arc<Fleet>,
    /// The listening connection, while it is up.
    client: RwLock<Option<Arc<Client>>>,
    /// Hosts that connected (true) or left (false), registered in order.
    changes: mpsc::UnboundedSender<(String, bool)>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, bool)>>>,
    /// Commands this replica relayed, waiting for answers.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<Answers>>>,
    next: AtomicU64,
}

impl ReplicaFleet {
    pub fn new(url: String, origin: String, fleet: Arc<Fleet>) -> Arc<ReplicaFleet> {
        let (changes, rx) = mpsc::unbounded_channel();
        Arc::new(ReplicaFleet {
            url,
            origin,
            fleet,
            client: RwLock::new(None),
            changes,
            changes_rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// `host`'s stream opened on this replica.
    pub fn connected(&self, host: &str) {
        let _ = self.changes.send((host.to_owned(), true));
    }

    /// `host` has no stream on this replica any more.
    pub fn disconnected(&self, host: &str) {
        let _ = self.changes.send((host.to_owned(), false));
    }

    /// Hosts connected to other live replicas (`host` only, when given),
    /// with the replica's origin.
    pub async fn elsewhere(&self, host: Option<&str>) -> Result<Vec<(String, String)>, String> {
        let client = self.client.read().await.clone().ok_or_else(|| {
            "this replica's PostgreSQL connection for fleet commands is down".to_owned()
        })?;
        let rows = client
            .query(
                &format!(
                    "SELECT c.host, c.origin {LIVE} WHERE c.origin <> $1 AND ($2 = '' OR c.host = $2)"
                ),
                &[&self.origin, &host.unwrap_or("")],
            )
            .await
            .map_err(|e| format!("reading the other replicas' agents: {e}"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sends `command` to `target` (every host when `None`) wherever it is
    /// connected, and waits for the answers; one outcome per host, sorted.
    pub async fn command(
        &self,
        target: Option<&str>,
        actor: &str,
        reason: &str,
        command: agent_command::Command,
    ) -> Vec<pb::HostOutcome> {
        let started = tokio::time::Instant::now();
        let local: HashSet<String> = self.fleet.connected().into_iter().collect();
        let remote: Result<BTreeMap<String, String>, String> =
            self.elsewhere(target).await.map(|rows| {
                rows.into_iter()
                    .filter(|(h, _)| !local.contains(h))
                    .collect()
            });
        let mut outcomes: Vec<pb::HostOutcome> = Vec::new();
        let mut relayed = None;
        if let Ok(remote) = &remote
            && !remote.is_empty()
        {
            let owner = match target {
                Some(h) => remote.get(h).cloned().unwrap_or_default(),
                None => String::new(),
            };
            let id = format!(
                "{}.{}",
                self.origin,
                self.next.fetch_add(1, Ordering::Relaxed) + 1
            );
            let r = Relayed {
                id: id.clone(),
                from: self.origin.clone(),
                owner,
                target: target.unwrap_or_default().to_owned(),
                command: pb::AgentCommand {
                    id: 0,
                    actor: actor.to_owned(),
                    reason: reason.to_owned(),
                    command: Some(command.clone()),
                },
            };
            let (tx, rx) = mpsc::unbounded_channel();
            self.lock_pending().insert(id.clone(), tx);
            match self.notify(COMMANDS, &r.payload()).await {
                Ok(()) => relayed = Some((id, rx)),
                Err(e) => {
                    self.lock_pending().remove(&id);
                    warn!(error = %e, "a fleet command could not be passed to the other replicas");
                    outcomes.extend(remote.iter().map(|(host, origin)| pb::HostOutcome {
                        host_id: host.clone(),
                        error: format!(
                            "connected to collector replica {origin}, which could not be asked: {e}"
                        ),
                    }));
                }
            }
        }
        // This replica's own agents meanwhile (their answers queue).
        let mine = match target {
            Some(h) if !local.contains(h) => Vec::new(),
            _ => self.fleet.command(target, actor, reason, command).await,
        };
        outcomes.extend(mine);
        if let (Some((id, mut rx)), Ok(remote)) = (relayed, &remote) {
            let deadline = started + ANSWER_TIMEOUT + RELAY_MARGIN;
            let mut waiting: HashSet<&str> = remote.values().map(String::as_str).collect();
            let mut answered: HashSet<String> = HashSet::new();
            let mut done: HashSet<String> = HashSet::new();
            while !waiting.is_empty() {
                let Ok(Some(a)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                    break;
                };
                for (host, error) in a.outcomes {
                    if remote.contains_key(&host) && answered.insert(host.clone()) {
                        outcomes.push(pb::HostOutcome {
                            host_id: host,
                            error,
                        });
                    }
                }
                if a.last {
                    waiting.remove(a.origin.as_str());
                    done.insert(a.origin);
                }
            }
            self.lock_pending().remove(&id);
            for (host, origin) in remote {
                if answered.contains(host) {
                    continue;
                }
                let error = if done.contains(origin) {
                    format!("left collector replica {origin} before the command reached it")
                } else {
                    format!(
                        "connected to collector replica {origin}, which did not answer in {} s",
                        (ANSWER_TIMEOUT + RELAY_MARGIN).as_secs()
                    )
                };
                outcomes.push(pb::HostOutcome {
                    host_id: host.clone(),
                    error,
                });
            }
        }
        // Fleet-wide while the other replicas cannot be asked: said in an
        // outcome of its own, so that the call does not look complete.
        if let (None, Err(e)) = (target, &remote) {
            outcomes.push(pb::HostOutcome {
                host_id: OTHER_REPLICAS.into(),
                error: format!(
                    "the agents connected to other collector replicas were not asked: {e}"
                ),
            });
        }
        if let Some(h) = target
            && !outcomes.iter().any(|o| o.host_id == h)
        {
            outcomes.push(pb::HostOutcome {
                host_id: h.to_owned(),
                error: match &remote {
                    Ok(_) => "not connected to any collector replica".into(),
                    Err(e) => format!(
                        "not connected to this collector replica, and the others could not be asked: {e}"
                    ),
                },
            });
        }
        outcomes.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        outcomes.dedup_by(|a, b| a.host_id == b.host_id);
        outcomes
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Answers>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `payload` in `fleet_messages` (dropping what is over an hour
    /// old), then notifies `channel` of its key.
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), String> {
        let client = self
            .client
            .read()
            .await
            .clone()
            .ok_or("this replica's PostgreSQL connection for fleet commands is down")?;
        let key = format!(
            "{}.m{}",
            self.origin,
            self.next.fetch_add(1, Ordering::Relaxed) + 1
        );
        let now = now_ns();
        client
            .execute(
                "WITH old AS (DELETE FROM fleet_messages WHERE issued_ns < $4)
                 INSERT INTO fleet_messages (key, payload, issued_ns) VALUES ($1, $2, $3)",
                &[&key, &payload, &now, &(now - MESSAGES_KEPT_NS)],
            )
            .await
            .map_err(|e| format!("storing a message for the other replicas: {e}"))?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&channel, &key])
            .await
            .map(|_| ())
            .map_err(|e| format!("notifying the other replicas: {e}"))
    }

    /// Keeps this replica's agents registered and answers other replicas'
    /// commands until `stop` turns true; reconnects every second.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut changes) = self
            .changes_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        loop {
            tokio::select! {
                r = self.clone().session(&mut changes) => match r {
                    Ok(()) => warn!("the PostgreSQL connection for fleet commands across replicas ended; reconnecting"),
                    Err(e) => warn!(error = %e, "fleet commands across replicas are unavailable (each replica reaches only its own agents until this works); retrying in 1 s"),
                },
                _ = stop.wait_for(|s| *s) => {
                    // Rows of a replica that stops lose their backend with it.
                    return;
                }
            }
            *self.client.write().await = None;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn session(
        self: Arc<Self>,
        changes: &mut mpsc::UnboundedReceiver<(String, bool)>,
    ) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        let (tx, mut notes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx
                            .send((n.channel().to_owned(), n.payload().to_owned()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "the PostgreSQL connection for fleet commands across replicas failed");
                        return;
                    }
                }
            }
        });
        let _abort = AbortOnDrop(driver);
        client
            .batch_execute(&format!("LISTEN {COMMANDS}; LISTEN {ANSWERS}"))
            .await?;
        let client = Arc::new(client);
        let register = client
            .prepare(
                "INSERT INTO agent_connections (host, origin, backend_pid, backend_start, since_ns)
                 SELECT $1, $2, pid, backend_start, $3 FROM pg_stat_activity WHERE pid = pg_backend_pid()
                 ON CONFLICT (host) DO UPDATE SET origin = EXCLUDED.origin,
                    backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start,
                    since_ns = EXCLUDED.since_ns",
            )
            .await?;
        let unregister = client
            .prepare("DELETE FROM agent_connections WHERE host = $1 AND origin = $2")
            .await?;
        let message = client
            .prepare("SELECT payload FROM fleet_messages WHERE key = $1")
            .await?;
        // Rows of replicas gone, then this replica's agents (again, after a
        // lost connection: their rows named the old backend).
        client
            .execute(
                &format!("DELETE FROM agent_connections WHERE host NOT IN (SELECT c.host {LIVE})"),
                &[],
            )
            .await?;
        let mut hosts = self.fleet.connected();
        while let Ok((host, up)) = changes.try_recv() {
            if !up {
                hosts.retain(|h| *h != host);
            }
        }
        for host in &hosts {
            client
                .execute(&register, &[host, &self.origin, &now_ns()])
                .await?;
        }
        *self.client.write().await = Some(client.clone());
        info!(
            agents = hosts.len(),
            "fleet commands across replicas: this replica's agents registered"
        );
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some((host, up)) = change else { return Ok(()) };
                    if up {
                        client.execute(&register, &[&host, &self.origin, &now_ns()]).await?;
                    } else {
                        client.execute(&unregister, &[&host, &self.origin]).await?;
                    }
                }
                note = notes.recv() => {
                    let Some((channel, key)) = note else { return Ok(()) };
                    // Read in order (an answer's last chunk after its
                    // others), each from the collectors' table.
                    match client.query_opt(&message, &[&key]).await? {
                        Some(row) => self.clone().received(&channel, row.get(0)),
                        None => warn!(channel, key, "a fleet notification with no message stored under its key (not sent by a collector replica: any database user may NOTIFY); ignored"),
                    }
                }
            }
        }
    }

    /// A notification: another replica's command (run here on the agents
    /// it targets, answered), or an answer to one of ours.
    fn received(self: Arc<Self>, channel: &str, payload: &str) {
        if channel == ANSWERS {
            let Some(a) = parse_answers(payload) else {
                warn!(
                    payload,
                    "fleet answers from another replica that do not parse; ignored"
                );
                return;
            };
            if let Some(tx) = self.lock_pending().get(&a.id) {
                let _ = tx.send(a);
            }
            return;
        }
        let Some(r) = Relayed::parse(payload) else {
            warn!(
                payload,
                "a fleet command from another replica that does not parse; ignored"
            );
            return;
        };
        if r.from == self.origin || !(r.owner.is_empty() || r.owner == self.origin) {
            return;
        }
        let Some(command) = r.command.command.clone() else {
            return;
        };
        debug!(id = %r.id, from = %r.from, target = %r.target, "a fleet command from another replica");
        tokio::spawn(async move {
            let target = (!r.target.is_empty()).then_some(r.target.as_str());
            let outcomes = match target {
                // The asker believed the host was here; it left.
                Some(h) if !self.fleet.is_connected(h) => {
                    vec![pb::HostOutcome {
                        host_id: h.to_owned(),
                        error: format!(
                            "left collector replica {} before the command reached it",
                            self.origin
                        ),
                    }]
                }
                _ => {
                    self.fleet
                        .command(target, &r.command.actor, &r.command.reason, command)
                        .await
                }
            };
            for p in answer_payloads(&r.id, &self.origin, &outcomes) {
                if let Err(e) = self.notify(ANSWERS, &p).await {
                    warn!(error = %e, id = %r.id, "answering another replica's fleet command failed");
                    return;
                }
            }
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_answers_survive_their_notifications() {
        let r = Relayed {
            id: "12-34.5".into(),
            from: "12-34".into(),
            owner: String::new(),
            target: "eu-1".into(),
            command: pb::AgentCommand {
                id: 0,
                actor: "cert ops-1".into(),
                reason: "audit\twith a tab".into(),
                command: Some(agent_command::Command::SetEnforcement(
                    pb::SetEnforcementCommand {
                        class: "eu_personal".into(),
                        mode: "enforce".into(),
                    },
                )),
            },
        };
        assert_eq!(Relayed::parse(&r.payload()), Some(r));
        assert_eq!(Relayed::parse("a\tb"), None);

        // Many answers: several notifications under the limit, only the
        // last one marked, every host once.
        let outcomes: Vec<pb::HostOutcome> = (0..2_000)
            .map(|i| pb::HostOutcome {
                host_id: format!("host-{i}"),
                error: if i % 2 == 0 {
                    String::new()
                } else {
                    "no\nanswer".into()
                },
            })
            .collect();
        let p = answer_payloads("7", "r2", &outcomes);
        assert!(p.len() > 1 && p.iter().all(|p| p.len() <= PAYLOAD_MAX));
        let parsed: Vec<Answers> = p
            .iter()
            .map(|p| parse_answers(p).expect("parses"))
            .collect();
        assert!(parsed.iter().rev().skip(1).all(|a| !a.last) && parsed.last().unwrap().last);
        let all: Vec<(String, String)> = parsed.into_iter().flat_map(|a| a.outcomes).collect();
        assert_eq!(all.len(), 2_000);
        assert_eq!(all[1], ("host-1".into(), "no answer".into()));
        // None at all: one final notification.
        let none = answer_payloads("8", "r2", &[]);
        assert_eq!(none.len(), 1);
        assert_eq!(
            parse_answers(&none[0]),
            Some(Answers {
                id: "8".into(),
                origin: "r2".into(),
                last: true,
                outcomes: vec![],
            })
        );
    }
}
