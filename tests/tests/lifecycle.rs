//! Both daemons as a service manager and a monitoring system see them:
//! systemd's notification protocol (READY once serving, STOPPING on
//! SIGTERM) on a socket the test listens on, the admin endpoints
//! (`/metrics`, `/healthz`, `/readyz`, 404 for anything else), JSON logs
//! without colour codes, and the collector's graceful stop (a delivery
//! stream ends with UNAVAILABLE after its last acknowledged batch, the
//! process exits 0, nothing acknowledged is lost).
//!
//! NOTIFY_SOCKET is set in each daemon's own environment, never in the
//! test process's.

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    collector::{CollectorOptions, RunningCollector, free_port, hello_message},
    deadline::within,
    http::http_get,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};
use residency_proto::collector::v1 as pb;

/// How long a delivery stream's next message may take.
const LIMIT: Duration = Duration::from_secs(30);

/// A socket standing in for systemd's notification socket.
struct Notifications {
    sock: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notifications {
    fn bind(dir: &std::path::Path) -> Notifications {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("binding the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Notifications { sock, path }
    }

    /// The next message that contains `what`, within 30 s (messages
    /// before it are skipped); panics with what came instead.
    fn expect(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == what) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {what} notification in 30 s; got {seen:?}");
    }
}

fn get(port: u16, path: &str) -> harness::harness::http::Answer {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(http_get(port, path))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn the_collector_notifies_serves_its_admin_endpoints_logs_json_and_stops_gracefully() {
    let tmp = TempPath::dir("lifecycle-collector");
    let notify = Notifications::bind(tmp.path());
    let admin = free_port();
    let db = tmp.path().join("collector.db");
    let mut collector = RunningCollector::start_opts(
        tmp.path(),
        db.to_str().expect("utf-8"),
        CollectorOptions {
            args: vec![
                "--admin-listen".into(),
                format!("127.0.0.1:{admin}"),
                "--log-format".into(),
                "json".into(),
            ],
            env: vec![("NOTIFY_SOCKET".into(), notify.path.display().to_string())],
            ..Default::default()
        },
    );
    let ready = notify.expect("READY=1");
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");

    let h = get(admin, "/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = get(admin, "/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let nope = get(admin, "/admin");
    assert_eq!(nope.status, 404);
    assert!(nope.body.contains("/metrics, /healthz and /readyz"));

    // Records show in the metrics per host and kind.
    let record = |seq| pb::Record {
        seq,
        time_unix_ns: 1,
        body: Some(pb::record::Body::Audit(pb::Audit {
            actor: "test".into(),
            action: "noted".into(),
            reason: "lifecycle".into(),
        })),
        chain: Vec::new(),
    };
    assert_eq!(
        collector.deliver_as("life-1", vec![record(1), record(2)]),
        2
    );
    // The CLI's tables have headers, even when empty.
    let ctl = |args: &[&str]| {
        let out =
            std::process::Command::new(harness::harness::agent::workspace_bin("collectorctl"))
                .arg("--socket")
                .arg(&collector.socket)
                .args(args)
                .output()
                .expect("collectorctl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v = ctl(&["violations"]);
    assert!(v.starts_with("TIME") && v.contains("WORKLOAD"), "{v}");
    let w = ctl(&["-o", "wide", "violations"]);
    assert!(w.contains("COMMUNITY ID") && w.contains("CGROUP"), "{w}");
    let j = ctl(&["-o", "jsonl", "hosts"]);
    assert_eq!(j.lines().count(), 1, "one line: {j}");
    let a = ctl(&["audit", "--host", "life-1"]);
    assert!(a.starts_with("TIME"), "{a}");
    assert_eq!(
        a.lines().filter(|l| l.contains("lifecycle")).count(),
        2,
        "{a}"
    );
    let m = get(admin, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains(r#"residency_collector_records_stored_total{host="life-1",kind="audit"} 2"#),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("residency_collector_batch_commit_seconds_count")
    );
    assert!(
        m.body
            .contains(r#"residency_collector_host_last_record_timestamp_seconds{host="life-1"}"#)
    );

    // An agent's stream is open when SIGTERM comes: it ends with
    // UNAVAILABLE after its acknowledged batch; the process exits 0.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, mut incoming) = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello_message("life-1")).await.expect("hello");
        let mut incoming = collector
            .agent_client("life-1")
            .await
            .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("deliver")
            .into_inner();
        let welcome = within(LIMIT, "the welcome", incoming.message())
            .await
            .expect("welcome");
        assert!(matches!(
            welcome,
            Some(pb::CollectorMessage {
                message: Some(pb::collector_message::Message::Welcome(pb::Welcome {
                    last_seq: 2
                }))
            })
        ));
        tx.send(pb::AgentMessage {
            message: Some(pb::agent_message::Message::Batch(pb::Batch {
                records: vec![record(3)],
            })),
        })
        .await
        .expect("batch");
        let ack = within(LIMIT, "the acknowledgement", incoming.message())
            .await
            .expect("ack");
        assert!(
            matches!(
                ack,
                Some(pb::CollectorMessage {
                    message: Some(pb::collector_message::Message::Ack(pb::Ack { seq: 3 }))
                })
            ),
            "{ack:?}"
        );
        (tx, incoming)
    });
    let pid = collector.pid().expect("running");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let end = rt.block_on(within(
        LIMIT,
        "the stream's end after SIGTERM",
        incoming.message(),
    ));
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    drop(tx);
    let stopping = notify.expect("STOPPING=1");
    assert!(stopping.contains("STATUS="), "{stopping}");
    let exit = collector
        .terminate()
        .expect("collectord exits after SIGTERM");
    assert!(exit.success(), "{exit:?}: {}", collector.log_text());

    // The log: JSON objects, no colour codes, the shutdown said.
    let log = collector.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("collector stopped"), "{log}");

    // Nothing acknowledged was lost.
    collector.restart();
    assert_eq!(collector.count("life-1", "audit"), 3);
}

#[test]
fn sensord_notifies_ready_once_attached_and_stopping_on_sigterm() {
    let tmp = TempPath::dir("lifecycle-sensord");
    let notify = Notifications::bind(tmp.path());
    let cgroup = TestCgroup::create();
    let rel = cgroup_rel(&cgroup);
    let admin = free_port();
    let policy = FixturePolicy::delivering("life-agent", &rel).text();
    let mut agent = RunningAgent::start_env(
        &policy,
        DELIVERY_REGIONS,
        &["--metrics-listen", &format!("127.0.0.1:{admin}")],
        &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))],
    );
    let ready = notify.expect("READY=1");
    assert!(ready.contains("STATUS=enforcing policy "), "{ready}");
    assert!(ready.contains("life-agent"), "{ready}");
    let r = get(admin, "/readyz");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ready\n"),
        "{}",
        agent.log_text()
    );
    assert_eq!(get(admin, "/healthz").status, 200);
    let m = get(admin, "/metrics");
    assert!(
        m.body.contains("residency_sensor_verdict_prefixes"),
        "{}",
        m.body
    );
    assert_eq!(get(admin, "/").status, 404);
    agent.stop();
    notify.expect("STOPPING=1");
}
