//! The collector as auditors and operators use it, with mutual TLS: identities
//! from certificates, roles, fleet-wide enforcement reaching real agents and
//! their kernels, exceptions applied and expiring, auditor queries and watches.

use std::time::Duration;

use harness::harness::{
    agent::{RunningAgent, workspace_bin},
    cgroup::TestCgroup,
    collector::{CollectorTls, RunningCollector, hello_message},
    netns::TestNet,
    pki::{Pem, TestCa},
    probe,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
    wait_until,
};
use residency_proto::collector::v1::{
    self as pb, agent_message::Message as AgentMsg, collector_message::Message as CollectorMsg,
};
use tokio_stream::StreamExt;
use tonic::Code;

/// A CA with a collector, agent, auditor and operator certificates.
struct Pki {
    _dir: TempPath,
    ca: TestCa,
    auditor: Pem,
    operator: Pem,
}

fn pki(name: &str) -> Pki {
    let dir = TempPath::dir(name);
    let ca = TestCa::create(dir.path());
    let auditor = ca.issue("audit-1", &[]);
    let operator = ca.issue("ops-1", &[]);
    Pki {
        _dir: dir,
        ca,
        auditor,
        operator,
    }
}

fn tls_collector(dir: &std::path::Path, p: &Pki) -> RunningCollector {
    let db = dir.join("collector.db");
    RunningCollector::start_with(
        dir,
        db.to_str().expect("utf-8"),
        Some(CollectorTls {
            ca: p.ca.cert.clone(),
            server: p.ca.issue("collector", &["localhost"]),
            auditors: vec!["audit-1".into()],
            operators: vec!["ops-1".into()],
        }),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Opens a delivery stream as `who` claiming `host`; returns the welcome or
/// the refusal.
async fn hello(
    c: &RunningCollector,
    who: &Pem,
    host: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::CollectorMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello_message(host)).await.expect("send hello");
    let mut client = c.client(Some(who)).await;
    let mut incoming = client
        .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match incoming.next().await {
        Some(Ok(pb::CollectorMessage {
            message: Some(CollectorMsg::Welcome(_)),
        })) => Ok((tx, incoming)),
        Some(Err(e)) => Err(e),
        other => panic!("expected a welcome or an error, got {other:?}"),
    }
}

#[test]
fn certificates_decide_the_host_and_the_role() {
    let p = pki("fleet-pki-roles");
    let dir = TempPath::dir("fleet-roles");
    let c = tls_collector(dir.path(), &p);
    let host_a = p.ca.issue("host-a", &[]);
    rt().block_on(async {
        // Host A's certificate cannot deliver for host B.
        let e = hello(&c, &host_a, "host-b").await.expect_err("refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("this agent is host \"host-a\""),
            "{}",
            e.message()
        );
        // For itself it can, and the batch is stored under its name.
        let (tx, mut incoming) = hello(&c, &host_a, "host-a").await.expect("welcome");
        tx.send(pb::AgentMessage {
            message: Some(AgentMsg::Batch(pb::Batch {
                records: vec![pb::Record {
                    seq: 1,
                    time_unix_ns: 1,
                    body: Some(pb::record::Body::Violation(
                        residency_proto::agent::v1::Flow {
                            host_id: "host-b".into(),
                            action: residency_proto::agent::v1::Action::Reported as i32,
                            ..Default::default()
                        },
                    )),
                    chain: Vec::new(),
                }],
            })),
        })
        .await
        .expect("send batch");
        match incoming.next().await {
            Some(Ok(pb::CollectorMessage {
                message: Some(CollectorMsg::Ack(a)),
            })) => assert_eq!(a.seq, 1),
            other => panic!("expected an ack, got {other:?}"),
        }
        // An agent certificate may not read.
        let e = c
            .client(Some(&host_a))
            .await
            .query_violations(pb::ViolationQuery::default())
            .await
            .expect_err("agents do not read");
        assert_eq!(e.code(), Code::PermissionDenied);
        // An auditor reads, but may not steer.
        let mut auditor = c.client(Some(&p.auditor)).await;
        let page = auditor
            .query_violations(pb::ViolationQuery::default())
            .await
            .expect("auditors read")
            .into_inner();
        assert_eq!(
            page.records
                .iter()
                .map(|r| (r.host_id.as_str(), r.seq()))
                .collect::<Vec<_>>(),
            vec![("host-a", 1)],
            "stored under the certificate's host, whatever the body claims"
        );
        let e = auditor
            .set_enforcement(pb::FleetSetEnforcementRequest {
                mode: "enforce".into(),
                reason: "test".into(),
                ..Default::default()
            })
            .await
            .expect_err("auditors do not steer");
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("auditor role"), "{}", e.message());
        let e = auditor
            .grant_exception(pb::GrantExceptionRequest {
                class: "eu_personal".into(),
                destination: "US".into(),
                duration_seconds: 60,
                justification: "test".into(),
                ..Default::default()
            })
            .await
            .expect_err("auditors do not grant");
        assert_eq!(e.code(), Code::PermissionDenied);
        // An operator's bad request is explained.
        let e = c
            .client(Some(&p.operator))
            .await
            .set_enforcement(pb::FleetSetEnforcementRequest {
                mode: "block".into(),
                reason: "test".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad mode");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("off, monitor, enforce"));
    });
    // A certificate from another CA is not let in at all.
    let other = pki("fleet-pki-other");
    let stranger = other.ca.issue("host-a", &[]);
    let refused = rt().block_on(async {
        let ep = tonic::transport::Channel::from_shared(c.endpoint())
            .expect("endpoint")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        std::fs::read(&p.ca.cert).expect("ca"),
                    ))
                    .identity(tonic::transport::Identity::from_pem(
                        std::fs::read(&stranger.cert).expect("cert"),
                        std::fs::read(&stranger.key).expect("key"),
                    )),
            )
            .expect("tls");
        match ep.connect().await {
            Err(_) => true,
            Ok(ch) => pb::collector_client::CollectorClient::new(ch)
                .list_hosts(pb::ListHostsRequest {})
                .await
                .is_err(),
        }
    });
    assert!(refused, "a certificate of another CA must be refused");
}

/// An agent of the fleet: its own cgroup, certificate and spool.
struct Member {
    cgroup: TestCgroup,
    agent: RunningAgent,
    _dir: TempPath,
}

fn member(host: &str, c: &RunningCollector, p: &Pki) -> Member {
    let cgroup = TestCgroup::create();
    let dir = TempPath::dir(&format!("fleet-{host}"));
    let cert = p.ca.issue(host, &[]);
    let config = c.agent_config(dir.path(), host, Some(&cert));
    let cgroup_rel = cgroup_rel(&cgroup);
    let agent = RunningAgent::start_with(
        &FixturePolicy::delivering(host, &cgroup_rel).text(),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    Member {
        cgroup,
        agent,
        _dir: dir,
    }
}

fn connect_errno(m: &Member, target: &str) -> i32 {
    probe::run(m.cgroup.command(probe::command(&["tcp-connect", target]))).errno()
}

#[test]
fn fleet_enforcement_and_exceptions_reach_the_agents_kernels() {
    let p = pki("fleet-pki-ops");
    let dir = TempPath::dir("fleet-ops");
    let c = tls_collector(dir.path(), &p);
    let net = TestNet::create();
    let server = net.virginia.tcp_server(false);
    let target = server.addr.to_string();
    let a = member("fleet-a", &c, &p);
    let b = member("fleet-b", &c, &p);
    let rt = rt();
    let hosts = || {
        rt.block_on(async {
            c.client(Some(&p.auditor))
                .await
                .list_hosts(pb::ListHostsRequest {})
                .await
                .expect("list hosts")
                .into_inner()
                .hosts
        })
    };
    wait_until("both agents connected", Duration::from_secs(30), || {
        hosts().iter().filter(|h| h.connected).count() == 2
    });
    // Monitor mode: the transfer happens and is reported.
    assert_eq!(connect_errno(&a, &target), 0);
    assert_eq!(connect_errno(&b, &target), 0);
    assert_eq!(server.wait_for(2, Duration::from_secs(5)), 2);

    // One fleet-wide call: both agents apply it and say so.
    let mut ops = rt.block_on(c.client(Some(&p.operator)));
    let resp = rt
        .block_on(ops.set_enforcement(pb::FleetSetEnforcementRequest {
            host_id: String::new(),
            class: String::new(),
            mode: "enforce".into(),
            reason: "regulator audit: no transfers".into(),
        }))
        .expect("set enforcement")
        .into_inner();
    assert_eq!(
        resp.outcomes
            .iter()
            .map(|o| (o.host_id.as_str(), o.error.as_str()))
            .collect::<Vec<_>>(),
        vec![("fleet-a", ""), ("fleet-b", "")]
    );
    // Both kernels deny now, before any packet.
    assert_eq!(connect_errno(&a, &target), libc::EPERM);
    assert_eq!(connect_errno(&b, &target), libc::EPERM);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.received(), 2, "the remote saw no new connection");
    // The auditor sees the new modes and the audit records with the operator.
    wait_until("modes reported", Duration::from_secs(10), || {
        hosts().iter().all(|h| {
            h.state
                .as_ref()
                .is_some_and(|s| s.modes.iter().all(|m| m.mode == "enforce"))
        })
    });
    wait_until("audit records", Duration::from_secs(10), || {
        let audits = c.export(Some("audit"));
        ["fleet-a", "fleet-b"].iter().all(|h| {
            audits.iter().any(|r| {
                r.host_id == *h
                    && r.audit().is_some_and(|a| {
                        a.actor == "cert ops-1 via collector"
                            && a.reason == "regulator audit: no transfers"
                    })
            })
        })
    });

    // An exception for host a only, for 4 seconds: its kernel allows the
    // destination, b's still denies; then it expires by itself.
    let resp = rt
        .block_on(ops.grant_exception(pb::GrantExceptionRequest {
            host_id: "fleet-a".into(),
            class: "eu_personal".into(),
            destination: server.addr.ip().to_string(),
            duration_seconds: 4,
            justification: "vendor migration window".into(),
        }))
        .expect("grant")
        .into_inner();
    assert_eq!(resp.outcomes.len(), 1);
    assert_eq!(resp.outcomes[0].error, "");
    assert!(resp.exception_id.starts_with("exc-"));
    assert_eq!(connect_errno(&a, &target), 0, "the exception allows it");
    assert_eq!(connect_errno(&b, &target), libc::EPERM, "only on host a");
    wait_until("the exception to expire", Duration::from_secs(15), || {
        connect_errno(&a, &target) == libc::EPERM
    });
    assert!(a.agent.wait_log("expired", Duration::from_secs(5)));

    // Auditor queries: filters and pages.
    let auditor = rt.block_on(c.client(Some(&p.auditor)));
    let q = |extra: pb::ViolationQuery| {
        rt.block_on(auditor.clone().query_violations(extra))
            .expect("query")
            .into_inner()
    };
    wait_until("denied violations stored", Duration::from_secs(10), || {
        q(pb::ViolationQuery {
            action: "denied".into(),
            ..Default::default()
        })
        .records
        .len()
            >= 3
    });
    let denied_a = q(pb::ViolationQuery {
        host_id: "fleet-a".into(),
        action: "denied".into(),
        destination: format!("{}/24", server.addr.ip()),
        class: "eu_personal".into(),
        country: "us".into(),
        ..Default::default()
    });
    assert!(!denied_a.records.is_empty());
    assert!(denied_a.records.iter().all(|r| r.host_id == "fleet-a"
        && r.violation().map(|f| f.action()) == Some(residency_proto::agent::v1::Action::Denied)));
    let elsewhere = q(pb::ViolationQuery {
        destination: "192.0.2.0/24".into(),
        ..Default::default()
    });
    assert!(elsewhere.records.is_empty(), "no violation to 192.0.2.0/24");
    let all = q(pb::ViolationQuery::default()).records;
    let mut paged = Vec::new();
    let mut token = String::new();
    for pages in 0.. {
        // More pages than records means the token never ends.
        assert!(pages <= all.len(), "paging did not end after {pages} pages");
        let page = q(pb::ViolationQuery {
            limit: 2,
            page_token: token.clone(),
            ..Default::default()
        });
        paged.extend(page.records.iter().map(|r| (r.host_id.clone(), r.seq())));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        paged,
        all.iter()
            .map(|r| (r.host_id.clone(), r.seq()))
            .collect::<Vec<_>>(),
        "pages of 2 add up to the whole list, in order, without repeats"
    );

    // A live watch sees host b's next violation.
    let mut watch = rt
        .block_on(auditor.clone().watch_violations(pb::ViolationQuery {
            host_id: "fleet-b".into(),
            ..Default::default()
        }))
        .expect("watch")
        .into_inner();
    assert_eq!(connect_errno(&b, &target), libc::EPERM);
    let seen = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), watch.next()).await })
        .expect("a watched record in time")
        .expect("stream open")
        .expect("no error");
    assert_eq!(seen.host_id, "fleet-b");
    assert_eq!(
        seen.violation().map(|f| f.action()),
        Some(residency_proto::agent::v1::Action::Denied)
    );

    // The same through collectorctl, as auditors and operators use it.
    let ctl = |who: &Pem, args: &[&str]| {
        let out = std::process::Command::new(workspace_bin("collectorctl"))
            .arg("--endpoint")
            .arg(c.endpoint())
            .arg("--ca")
            .arg(&p.ca.cert)
            .arg("--cert")
            .arg(&who.cert)
            .arg("--key")
            .arg(&who.key)
            .args(args)
            .output()
            .expect("collectorctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = ctl(&p.auditor, &["--json", "hosts"]);
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&out).expect("hosts JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{out}");
    let (code, out, _) = ctl(
        &p.auditor,
        &[
            "--json",
            "violations",
            "--host",
            "fleet-b",
            "--action",
            "denied",
            "--all",
            "--limit",
            "1",
        ],
    );
    assert_eq!(code, Some(0));
    assert!(out.lines().count() >= 2, "every page followed: {out}");
    // Typed from the kernel to the auditor: the canonical protobuf JSON of
    // the stored record, with enum names.
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let f = &v["record"]["violation"];
        assert_eq!(v["host_id"], "fleet-b", "{line}");
        assert_eq!(f["action"], "ACTION_DENIED", "{line}");
        assert_eq!(f["verdict"], "VERDICT_DENY", "{line}");
        assert_eq!(f["kind"], "FLOW_KIND_CONNECT", "{line}");
        assert_eq!(f["protocol"], "PROTOCOL_TCP", "{line}");
        assert!(v["record"]["seq"].is_string(), "64-bit as a string: {line}");
        let typed: pb::StoredRecord = serde_json::from_str(line).expect("a StoredRecord");
        assert_eq!(
            typed.violation().map(|f| f.host_id.as_str()),
            Some("fleet-b")
        );
    }
    let (code, _, err) = ctl(
        &p.auditor,
        &[
            "set-enforcement",
            "--mode",
            "monitor",
            "--reason",
            "end of audit",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("auditor role"), "{err}");
    // The same verb as sensorctl's: enforce on|monitor|off.
    let (code, out, err) = ctl(
        &p.operator,
        &["enforce", "monitor", "--reason", "end of audit"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("fleet-a") && out.contains("applied"), "{out}");
    assert_eq!(connect_errno(&a, &target), 0, "monitor mode again");
    drop(a);
    drop(b);
}

#[test]
fn without_tls_nobody_steers_or_delivers_unauthenticated() {
    // The collector as installed: no TLS. An unprivileged local user may not
    // steer the fleet or read records, on the socket or on TCP, and nobody
    // delivers on TCP without a host's token, or for another host.
    let dir = TempPath::dir("fleet-local-auth");
    let c = RunningCollector::start(dir.path());
    let ctl = |uid: Option<u32>, remote: bool, args: &[&str]| {
        let mut cmd = std::process::Command::new(match uid {
            Some(_) => harness::harness::agent::bin_for_others("collectorctl"),
            None => workspace_bin("collectorctl"),
        });
        if remote {
            cmd.arg("--endpoint").arg(c.endpoint());
        } else {
            cmd.arg("--socket").arg(&c.socket);
        }
        if let Some(u) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, u);
        }
        let out = cmd.args(args).output().expect("collectorctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let off = [
        "set-enforcement",
        "--mode",
        "off",
        "--reason",
        "let me through",
    ];
    let (code, err) = ctl(Some(65534), false, &off);
    assert_eq!(code, Some(1), "refused: {err}");
    assert!(
        err.contains("uid 65534 may not use the collector's socket"),
        "{err}"
    );
    let (code, err) = ctl(Some(65534), true, &off);
    assert_eq!(code, Some(1), "refused: {err}");
    assert!(err.contains("only agents with a token"), "{err}");
    let (code, err) = ctl(Some(65534), true, &["hosts"]);
    assert_eq!(code, Some(1), "refused: {err}");
    // root on the socket is an operator.
    let (code, err) = ctl(None, false, &["hosts"]);
    assert_eq!(code, Some(0), "{err}");

    let rt = rt();
    let deliver = |token_host: Option<&str>, claimed: &str| {
        rt.block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(hello_message(claimed)).await.expect("hello");
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            match token_host {
                Some(h) => c.agent_client(h).await.deliver(stream).await.map(|_| ()),
                None => {
                    let ch = tonic::transport::Channel::from_shared(c.endpoint())
                        .expect("endpoint")
                        .connect()
                        .await
                        .expect("connect");
                    pb::collector_client::CollectorClient::new(ch)
                        .deliver(stream)
                        .await
                        .map(|_| ())
                }
            }
        })
    };
    let e = deliver(None, "web-1").expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = deliver(Some("web-2"), "web-1").expect_err("another host's token");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    deliver(Some("web-1"), "web-1").expect("its own token");
}

#[test]
fn a_host_that_was_away_gets_the_fleet_command_it_missed_unless_it_changed_since() {
    let p = pki("fleet-pki-away");
    let dir = TempPath::dir("fleet-away");
    let c = tls_collector(dir.path(), &p);
    let net = TestNet::create();
    let server = net.virginia.tcp_server(false);
    let target = server.addr.to_string();
    let a = member("away-a", &c, &p);
    let mut b = member("away-b", &c, &p);
    let rt = rt();
    let connected = |host: &str| {
        rt.block_on(async {
            c.client(Some(&p.auditor))
                .await
                .list_hosts(pb::ListHostsRequest {})
                .await
                .expect("list hosts")
                .into_inner()
                .hosts
                .iter()
                .any(|h| h.host_id == host && h.connected)
        })
    };
    wait_until("both agents connected", Duration::from_secs(30), || {
        connected("away-a") && connected("away-b")
    });
    // b is away (crashed; its pinned kernel state keeps monitor mode).
    b.agent.kill9();
    wait_until("b gone", Duration::from_secs(10), || !connected("away-b"));
    let mut ops = rt.block_on(c.client(Some(&p.operator)));
    let resp = rt
        .block_on(ops.set_enforcement(pb::FleetSetEnforcementRequest {
            host_id: String::new(),
            class: String::new(),
            mode: "enforce".into(),
            reason: "incident 7: stop transfers".into(),
        }))
        .expect("set enforcement")
        .into_inner();
    assert_eq!(resp.outcomes.len(), 1, "only a is connected: {resp:?}");
    assert_eq!(connect_errno(&a, &target), libc::EPERM);
    assert_eq!(connect_errno(&b, &target), 0, "b missed it");
    // b comes back: the command it missed is applied.
    b.agent.restart();
    wait_until("b applies what it missed", Duration::from_secs(20), || {
        connect_errno(&b, &target) == libc::EPERM
    });
    assert!(
        b.agent.log_text().contains("replayed at reconnect"),
        "the audit record says how it came"
    );
    // An operator on b decides otherwise after the command: that stands
    // across b's next reconnect.
    let out = b.agent.ctl(&[
        "enforce",
        "monitor",
        "--reason",
        "local decision after incident 7",
    ]);
    assert!(out.status.success());
    b.agent.kill9();
    b.agent.restart();
    wait_until("b back", Duration::from_secs(20), || connected("away-b"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        connect_errno(&b, &target),
        0,
        "the newer local mode stands: {}\n{}",
        b.agent.log_text(),
        c.log_text()
    );
}
