//! A real `collectord` for delivery tests: its database (a SQLite file in a
//! directory the test owns, or a PostgreSQL URL) survives restarts; killed with
//! SIGKILL on demand, stopped on drop. Optionally with mutual TLS; without it,
//! agents get tokens (`agent_config` adds one per host) and the test reads and
//! steers through the collector's Unix socket, as root.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use residency_proto::collector::v1::{self as pb, collector_client::CollectorClient};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::{agent::workspace_bin, pki};

/// Mutual TLS for a collector: its certificate, the CA, and role names.
pub struct CollectorTls {
    pub ca: PathBuf,
    pub server: pki::Pem,
    pub auditors: Vec<String>,
    pub operators: Vec<String>,
}

/// A running (or killed) collector.
pub struct RunningCollector {
    child: Option<Child>,
    pub port: u16,
    /// --database: a file path or a postgres:// URL.
    pub database: String,
    tls: Option<CollectorTls>,
    log: PathBuf,
    /// Its Unix socket (operators and auditors without TLS).
    pub socket: PathBuf,
    /// `HOST TOKEN` lines of agents on plain TCP.
    tokens: PathBuf,
    /// An open-file limit to run it under (as systemd's default would).
    pub open_files: Option<u64>,
    /// The web dashboard's port (--dashboard-listen on loopback), if served.
    pub dashboard: Option<u16>,
    /// More arguments and environment for collectord.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// How to start a collector beyond its database.
#[derive(Default)]
pub struct CollectorOptions {
    pub tls: Option<CollectorTls>,
    /// Serve the web dashboard (on a port of its own).
    pub dashboard: bool,
    /// More collectord arguments.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

/// Adds an agent's token to each call.
pub type AddToken =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

/// An agent's client with its token (plain TCP).
pub type TokenClient = CollectorClient<InterceptedService<Channel, AddToken>>;

/// A loopback port nothing listens on now (for a daemon to bind next),
/// that no other test holds: ports come from below the kernel's ephemeral
/// range (so no outgoing connection takes one meanwhile), and each is
/// claimed with a lock file held until this test process exits (nextest
/// runs every test in a process of its own; the kernel drops the lock when
/// the process dies, however it dies).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|h| *h > LOW + 1_000)
        .unwrap_or(32_768);
    let span = high - LOW;
    // Processes start at different places, so they rarely contend.
    let first = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let port = LOW + (first.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % span;
        let file = super::slot::lock_file(&format!("ports/{port}.lock"));
        if file.try_lock().is_err() {
            continue;
        }
        let port = port as u16;
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {high}");
}

/// The hello that opens an agent's delivery stream for `host`.
pub fn hello_message(host: &str) -> residency_proto::collector::v1::AgentMessage {
    use residency_proto::collector::v1::{self as pb, agent_message::Message};
    pb::AgentMessage {
        message: Some(Message::Hello(pb::Hello {
            host_id: host.into(),
            version: "test".into(),
            state: None,
        })),
    }
}

impl RunningCollector {
    /// Every host it lists (ListHosts over its Unix socket, as root).
    pub fn hosts(&self) -> Vec<residency_proto::collector::v1::HostSummary> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                self.client(None)
                    .await
                    .list_hosts(residency_proto::collector::v1::ListHostsRequest {})
                    .await
                    .expect("ListHosts")
                    .into_inner()
                    .hosts
            })
    }

    /// Starts collectord with a SQLite database in `dir`, without TLS.
    pub fn start(dir: &Path) -> RunningCollector {
        let db = dir.join("collector.db").to_string_lossy().into_owned();
        Self::start_with(dir, &db, None)
    }

    /// Starts collectord with `database`, and mutual TLS when given; its log
    /// goes to `dir`.
    pub fn start_with(dir: &Path, database: &str, tls: Option<CollectorTls>) -> RunningCollector {
        Self::start_opts(
            dir,
            database,
            CollectorOptions {
                tls,
                ..Default::default()
            },
        )
    }

    /// As [`Self::start_with`], serving the web dashboard too (HTTPS with
    /// TLS, else plain HTTP) on a port of its own.
    pub fn start_with_dashboard(
        dir: &Path,
        database: &str,
        tls: Option<CollectorTls>,
    ) -> RunningCollector {
        Self::start_opts(
            dir,
            database,
            CollectorOptions {
                tls,
                dashboard: true,
                ..Default::default()
            },
        )
    }

    /// Starts collectord with `database` and `opts`.
    pub fn start_opts(dir: &Path, database: &str, opts: CollectorOptions) -> RunningCollector {
        let CollectorOptions {
            tls,
            dashboard,
            args,
            env,
        } = opts;
        let port = free_port();
        let tokens = dir.join("agent-tokens");
        if !tokens.exists() {
            std::fs::write(&tokens, "# HOST TOKEN\n").expect("tokens file");
        }
        let mut c = RunningCollector {
            child: None,
            port,
            database: database.to_owned(),
            tls,
            log: dir.join("collectord.log"),
            socket: dir.join("collectord.sock"),
            tokens,
            open_files: None,
            dashboard: dashboard.then(free_port),
            args,
            env,
        };
        c.restart();
        c
    }

    /// The endpoint agents use.
    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Starts it again (same port, same database) and waits until it listens.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        // prlimit (util-linux) sets the limit and execs collectord: same pid.
        let mut cmd = match self.open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(workspace_bin("collectord"));
                c
            }
            None => Command::new(workspace_bin("collectord")),
        };
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database")
            .arg(&self.database)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--agent-tokens")
            .arg(&self.tokens);
        if let Some(d) = self.dashboard {
            cmd.arg("--dashboard-listen").arg(format!("127.0.0.1:{d}"));
        }
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(t) = &self.tls {
            cmd.arg("--tls-cert")
                .arg(&t.server.cert)
                .arg("--tls-key")
                .arg(&t.server.key)
                .arg("--client-ca")
                .arg(&t.ca);
            for a in &t.auditors {
                cmd.arg("--auditor").arg(a);
            }
            for o in &t.operators {
                cmd.arg("--operator").arg(o);
            }
        }
        let child = cmd
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting collectord");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "collectord did not listen: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new token for `host` (listed in the collector's tokens file, which
    /// it reads at every connection).
    pub fn token_for(&self, host: &str) -> String {
        use std::io::Write;
        let token = format!(
            "tok-{host}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.tokens)
            .expect("tokens file");
        writeln!(f, "{host} {token}").expect("writing a token");
        token
    }

    /// Tokens for many hosts at once (one write).
    pub fn tokens_for(&self, hosts: &[String]) -> Vec<String> {
        use std::io::Write;
        let tokens: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("tok-{h}-{}-{i}", std::process::id()))
            .collect();
        let mut text = String::new();
        for (h, t) in hosts.iter().zip(&tokens) {
            text.push_str(&format!("{h} {t}\n"));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.tokens)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("writing the tokens");
        tokens
    }

    /// Writes `dir/sensord.toml` for an agent of `host` that delivers here and
    /// spools in `dir/spool`; `cert` is the agent's certificate when the
    /// collector has TLS, otherwise the agent gets a token.
    pub fn agent_config(&self, dir: &Path, host: &str, cert: Option<&pki::Pem>) -> PathBuf {
        let mut text = format!(
            "[collector]\nendpoints = [\"{}\"]\nspool_dir = \"{}\"\n",
            self.endpoint(),
            dir.join("spool").display()
        );
        if self.tls.is_none() {
            let file = dir.join("collector-token");
            std::fs::write(&file, self.token_for(host)).expect("token file");
            text.push_str(&format!("token_file = \"{}\"\n", file.display()));
        }
        if let (Some(t), Some(cert)) = (&self.tls, cert) {
            text.push_str(&format!(
                "[collector.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                t.ca.display(),
                cert.cert.display(),
                cert.key.display()
            ));
        }
        let path = dir.join("sensord.toml");
        std::fs::write(&path, text).expect("writing sensord.toml");
        path
    }

    /// Every record of `host` stored here, in sequence order, after
    /// asserting that the sequences are exactly 1..=n, each once.
    pub fn records_once(&self, host: &str) -> Vec<pb::StoredRecord> {
        let all: Vec<pb::StoredRecord> = self
            .export(None)
            .into_iter()
            .filter(|r| r.host_id == host)
            .collect();
        let seqs: Vec<u64> = all.iter().map(pb::StoredRecord::seq).collect();
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "sequences 1..=n, each once");
        all
    }

    /// Takes the agent tokens `other` knows (replicas serving the same
    /// agents; the file is read at every connection).
    pub fn accept_agents_of(&self, other: &RunningCollector) {
        std::fs::copy(&other.tokens, &self.tokens).expect("copying the agent tokens");
    }

    /// The collectord process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as `systemctl stop`; its exit status (None: still running
    /// after 20 s, then killed).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        match super::deadline::terminate(&mut c, Duration::from_secs(20)) {
            super::deadline::Stopped::Exited(status) => Some(status),
            super::deadline::Stopped::Gone | super::deadline::Stopped::Killed => None,
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every stored record (of `kind`, when given), by host and sequence
    /// (see [`export`]; works on either backend, while the collector runs).
    pub fn export(&self, kind: Option<&str>) -> Vec<pb::StoredRecord> {
        export(&self.database, kind)
    }

    /// The highest sequence stored of `host`'s records of `kind`.
    pub fn last_seq_of(&self, host: &str, kind: &str) -> Option<u64> {
        self.export(Some(kind))
            .iter()
            .filter(|r| r.host_id == host)
            .map(pb::StoredRecord::seq)
            .max()
    }

    /// Whether a stored attestation of `host` follows its last stored
    /// violation (every violation is in a signed window).
    pub fn attested_through_last_violation(&self, host: &str) -> bool {
        let last_violation = self.last_seq_of(host, "violation").unwrap_or(u64::MAX);
        self.last_seq_of(host, "attestation")
            .is_some_and(|a| a > last_violation)
    }

    /// Number of stored records of `host` of `kind`.
    pub fn count(&self, host: &str, kind: &str) -> usize {
        self.export(Some(kind))
            .iter()
            .filter(|r| r.host_id == host)
            .count()
    }

    /// `collectorctl verify --host HOST --json` against this collector: the
    /// report it printed and its exit status.
    pub fn verify(&self, host: &str) -> (pb::ChainReport, i32) {
        self.verify_with(host, None)
    }

    /// As [`Self::verify`], with `--witness FILE` when given.
    pub fn verify_with(&self, host: &str, witness: Option<&Path>) -> (pb::ChainReport, i32) {
        let mut cmd = Command::new(workspace_bin("collectorctl"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(["--json", "verify", "--host", host]);
        if let Some(w) = witness {
            cmd.arg("--witness").arg(w);
        }
        let out = cmd.output().expect("collectorctl verify");
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "collectorctl verify prints a ChainReport ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (report, out.status.code().unwrap_or(-1))
    }

    /// `collectorctl attestations --host HOST [--witness FILE]`: its exit
    /// status and what it printed.
    pub fn attestations_with(&self, host: &str, witness: Option<&Path>) -> (i32, String) {
        let mut cmd = Command::new(workspace_bin("collectorctl"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(["attestations", "--host", host]);
        if let Some(w) = witness {
            cmd.arg("--witness").arg(w);
        }
        let out = cmd.output().expect("collectorctl attestations");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Delivers `records` as `host` (with its token) the way an agent does,
    /// outside any agent (a forged record, a stolen token); returns the
    /// collector's acknowledgement.
    pub fn deliver_as(&self, host: &str, records: Vec<pb::Record>) -> u64 {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async { deliver_on(self.agent_client(host).await, host, records).await })
    }

    /// As [`Self::deliver_as`], on mutual TLS with the agent certificate
    /// `agent` (a collector with TLS).
    pub fn deliver_as_agent(&self, agent: &pki::Pem, host: &str, records: Vec<pb::Record>) -> u64 {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async { deliver_on(self.client(Some(agent)).await, host, records).await })
    }

    /// An agent's client on plain TCP with a fresh token for `host`.
    pub async fn agent_client(&self, host: &str) -> TokenClient {
        let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", self.token_for(host))
                .parse()
                .expect("ascii");
        let ch = Channel::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connecting to collectord");
        let add: AddToken = Box::new(move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
        CollectorClient::with_interceptor(ch, add)
    }

    /// A gRPC client; `who` is the client certificate when the collector has
    /// TLS. Without one: the collector's Unix socket, as root (an operator).
    pub async fn client(&self, who: Option<&pki::Pem>) -> CollectorClient<Channel> {
        if who.is_none() {
            return CollectorClient::new(
                residency_proto::unix::channel(&self.socket)
                    .await
                    .expect("connecting to collectord's socket"),
            );
        }
        let mut ep = Channel::from_shared(self.endpoint()).expect("endpoint");
        if let (Some(t), Some(who)) = (&self.tls, who) {
            let tls = residency_proto::identity::client_tls(&t.ca, &who.cert, &who.key, None)
                .expect("client TLS files");
            ep = ep.tls_config(tls).expect("TLS config");
        }
        CollectorClient::new(ep.connect().await.expect("connecting to collectord"))
    }
}

/// One delivery stream of `host` on `client`: hello, one batch; returns
/// the acknowledgement.
async fn deliver_on<T>(client: CollectorClient<T>, host: &str, records: Vec<pb::Record>) -> u64
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    Delivery::open(client, host).await.send(records).await
}

/// A delivery stream as an agent holds one: welcomed, ready for batches.
pub struct Delivery {
    tx: tokio::sync::mpsc::Sender<pb::AgentMessage>,
    incoming: tonic::Streaming<pb::CollectorMessage>,
}

impl Delivery {
    /// Opens a stream for `host` on `client` and waits for the welcome.
    pub async fn open<T>(mut client: CollectorClient<T>, host: &str) -> Delivery
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello_message(host)).await.expect("hello");
        let mut incoming = client
            .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("deliver")
            .into_inner();
        let _welcome = super::deadline::within(
            std::time::Duration::from_secs(30),
            "the collector's welcome",
            incoming.message(),
        )
        .await;
        Delivery { tx, incoming }
    }

    /// Sends one batch; returns the sequence the collector acknowledged
    /// for it (other messages before the acknowledgement are passed over).
    pub async fn send(&mut self, records: Vec<pb::Record>) -> u64 {
        use pb::{agent_message::Message as Out, collector_message::Message as In};
        let upto = records.iter().map(|r| r.seq).max().unwrap_or(0);
        self.tx
            .send(pb::AgentMessage {
                message: Some(Out::Batch(pb::Batch { records })),
            })
            .await
            .expect("batch");
        loop {
            let next = super::deadline::within(
                std::time::Duration::from_secs(30),
                "the collector's acknowledgement",
                self.incoming.message(),
            )
            .await;
            match next {
                Ok(Some(pb::CollectorMessage {
                    message: Some(In::Ack(a)),
                })) if a.seq >= upto => return a.seq,
                Ok(Some(_)) => {}
                other => panic!("expected the batch's acknowledgement, got {other:?}"),
            }
        }
    }
}

impl Drop for RunningCollector {
    fn drop(&mut self) {
        self.kill9();
        // A failing test's collector log goes with its temporary directory:
        // show its end (a test that passes shows nothing).
        if std::thread::panicking() {
            eprintln!(
                "collectord's log ends:\n{}",
                super::deadline::tail(&self.log_text(), 40)
            );
        }
    }
}

/// A violation as an agent sends it: a typed flow with every field an
/// agent fills (so the stored record is as large as a real one), chained to
/// the record before it (`prev`, updated), as the agent's spool chains them;
/// a host's first record follows [`residency_proto::chain::ZERO`].
pub fn chained_violation(
    seq: u64,
    host: &str,
    prev: &mut residency_proto::chain::Hash,
) -> pb::Record {
    use residency_proto::agent::v1 as apb;
    let mut r = pb::Record {
        seq,
        time_unix_ns: 1_795_417_200_000_000_000 + seq as i64,
        body: Some(pb::record::Body::Violation(apb::Flow {
            kind: apb::FlowKind::Sendmsg as i32,
            time_unix_ns: 1_795_417_200_000_000_000 + seq as i64,
            ktime_ns: seq,
            pid: 4242,
            tid: 4242,
            uid: 1000,
            cgroup_id: 7731,
            comm: "export-job".into(),
            exe: "/usr/local/bin/export-job".into(),
            classes: vec!["eu_personal".into()],
            protocol: apb::Protocol::Udp as i32,
            local: "10.0.0.5:40000".into(),
            remote: format!("203.0.113.{}:443", seq % 250),
            remote_country: "US".into(),
            remote_site: "iad1".into(),
            verdict: apb::Verdict::Deny as i32,
            action: apb::Action::Reported as i32,
            count: 1,
            cookie: seq,
            policy_generation: 1,
            host_id: host.into(),
            ..Default::default()
        })),
        chain: Vec::new(),
    };
    *prev = residency_proto::chain::link(prev, seq, &residency_proto::chain::content(&r));
    r.chain = prev.to_vec();
    r
}

/// Sets `key = value` (TOML) in the `[collector]` table of an agent's
/// config written by [`RunningCollector::agent_config`].
pub fn set_collector_option(config: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).expect("reading sensord.toml");
    let text = text.replacen(
        "[collector]\n",
        &format!("[collector]\n{key} = {value}\n"),
        1,
    );
    std::fs::write(config, text).expect("writing sensord.toml");
}

/// Every record stored in `database` (a SQLite path or a postgres:// URL) of
/// `kind` (all, when None), as `collectord export --format jsonl` prints
/// them, read back from the canonical JSON into the typed record (so the
/// JSON's shape is checked too).
pub fn export(database: &str, kind: Option<&str>) -> Vec<pb::StoredRecord> {
    let mut cmd = Command::new(workspace_bin("collectord"));
    cmd.args(["--database", database, "export", "--format", "jsonl"]);
    if let Some(k) = kind {
        cmd.args(["--kind", k]);
    }
    let out = cmd
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("collectord export");
    assert!(
        out.status.success(),
        "collectord export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("export prints StoredRecord JSON lines ({e}): {l}"))
        })
        .collect()
}
