//! The agents connected now, and commands to them: an operator's command goes
//! down each target agent's open delivery stream, and the call waits for the
//! agents' answers (or a timeout) and reports one outcome per host.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use residency_proto::collector::v1::{
    self as pb, CollectorMessage, agent_command, collector_message::Message as Out,
};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// How long an agent has to apply a command and answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a host's delivery stream writes.
pub type StreamTx = mpsc::Sender<Result<CollectorMessage, Status>>;

struct Connection {
    id: u64,
    tx: StreamTx,
    /// Commands sent and not answered yet, by command id.
    pending: HashMap<u64, oneshot::Sender<pb::CommandResult>>,
}

/// Connected agents by host.
#[derive(Default)]
pub struct Fleet {
    hosts: Mutex<BTreeMap<String, Connection>>,
    next: AtomicU64,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Connection>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a host's new stream (replacing an older one of the same host);
    /// returns the connection id to unregister with.
    pub fn connect(&self, host: &str, tx: StreamTx) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(
            host.to_owned(),
            Connection {
                id,
                tx,
                pending: HashMap::new(),
            },
        );
        id
    }

    /// The stream `id` of `host` ended (a newer stream of the host stays).
    pub fn disconnect(&self, host: &str, id: u64) {
        let mut hosts = self.lock();
        if hosts.get(host).is_some_and(|c| c.id == id) {
            hosts.remove(host);
        }
    }

    /// Hosts connected now.
    pub fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many hosts are connected now (without copying their names: this
    /// runs at every connection).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Whether `host` is connected now.
    pub fn is_connected(&self, host: &str) -> bool {
        self.lock().contains_key(host)
    }

    /// An agent answered a command.
    pub fn answered(&self, host: &str, result: pb::CommandResult) {
        if let Some(c) = self.lock().get_mut(host)
            && let Some(waiter) = c.pending.remove(&result.id)
        {
            let _ = waiter.send(result);
        }
    }

    /// Forgets command `id` of `host` (it was not answered in time).
    fn forget(&self, host: &str, id: u64) {
        if let Some(c) = self.lock().get_mut(host) {
            c.pending.remove(&id);
        }
    }

    /// Sends `command` to one `host` and waits up to `timeout` for its whole
    /// answer; errors say why there is none (not connected, stream closed,
    /// timeout).
    pub async fn ask(
        &self,
        host: &str,
        actor: &str,
        reason: &str,
        command: agent_command::Command,
        timeout: Duration,
    ) -> Result<pb::CommandResult, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (done, answer) = oneshot::channel();
        let tx = {
            let mut map = self.lock();
            map.get_mut(host).map(|c| {
                c.pending.insert(id, done);
                c.tx.clone()
            })
        };
        let tx = tx.ok_or("not connected to this collector")?;
        let msg = CollectorMessage {
            message: Some(Out::Command(pb::AgentCommand {
                id,
                actor: actor.to_owned(),
                reason: reason.to_owned(),
                command: Some(command),
            })),
        };
        if tx.send(Ok(msg)).await.is_err() {
            self.forget(host, id);
            return Err("its stream closed before the command was sent".into());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err("its stream closed before it answered".into()),
            Err(_) => {
                self.forget(host, id);
                Err(format!("no answer in {} s", timeout.as_secs()))
            }
        }
    }

    /// Sends `command` to `targets` (every connected host when empty) and waits
    /// for their answers; one outcome per host, sorted by host.
    pub async fn command(
        &self,
        targets: Option<&str>,
        actor: &str,
        reason: &str,
        command: agent_command::Command,
    ) -> Vec<pb::HostOutcome> {
        let hosts = match targets {
            Some(h) => vec![h.to_owned()],
            None => self.connected(),
        };
        let mut waiting = Vec::new();
        let mut outcomes = Vec::new();
        for host in hosts {
            let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            let (done, answer) = oneshot::channel();
            let tx = {
                let mut map = self.lock();
                map.get_mut(&host).map(|c| {
                    c.pending.insert(id, done);
                    c.tx.clone()
                })
            };
            let Some(tx) = tx else {
                outcomes.push(pb::HostOutcome {
                    host_id: host,
                    error: "not connected to this collector".into(),
                });
                continue;
            };
            let msg = CollectorMessage {
                message: Some(Out::Command(pb::AgentCommand {
                    id,
                    actor: actor.to_owned(),
                    reason: reason.to_owned(),
                    command: Some(command.clone()),
                })),
            };
            if tx.send(Ok(msg)).await.is_err() {
                outcomes.push(pb::HostOutcome {
                    host_id: host,
                    error: "its stream closed before the command was sent".into(),
                });
                continue;
            }
            waiting.push((host, id, answer));
        }
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        for (host, id, answer) in waiting {
            let error = match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result.error,
                Ok(Err(_)) => "its stream closed before it answered".into(),
                Err(_) => {
                    self.forget(&host, id);
                    format!("no answer in {} s", ANSWER_TIMEOUT.as_secs())
                }
            };
            outcomes.push(pb::HostOutcome {
                host_id: host,
                error,
            });
        }
        outcomes.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        outcomes
    }
}
