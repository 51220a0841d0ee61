//! The collector's web dashboard in a real headless Chromium (Debian's
//! chromium and chromium-driver over WebDriver): a real sensord with mutual
//! TLS delivers violations and signed attestations, a second host's
//! records come over the delivery API; an auditor signs in with a login
//! token, and every number the pages show is checked against what
//! `QueryViolations` returns for the same filters. Filters narrow the
//! table, pages follow, hostile text stays text, the audit trail names the
//! operator and the reason, a host's chain verifies. Client certificates
//! are checked with raw HTTPS requests: an auditor's and an operator's are
//! let in, an agent's is refused, another CA's cannot even connect, and
//! without a certificate or a valid session the answer is the login page.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::{Client, Locator};
use harness::harness::{
    browser::Browser,
    cgroup::TestCgroup,
    collector::{CollectorOptions, CollectorTls, RunningCollector, set_collector_option},
    http::https_get,
    netns::TestNet,
    pki::TestCa,
    probe,
    scenario::delivering_agent,
    temp::TempPath,
    wait_until,
};
use residency_proto::{
    agent::v1::{Action, Flow, Protocol, Verdict},
    collector::v1::{self as pb, collector_client::CollectorClient},
};
use tonic::transport::Channel;

/// The real agent's host and the host whose records the test writes.
const HOST: &str = "dash-eu-1";
const OTHER: &str = "dash-eu-2";
/// A process name a hostile host could report.
const HOSTILE: &str = "/tmp/<script>alert(1)</script>";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

/// A violation of `OTHER`, `age_s` seconds old.
fn violation(seq: u64, age_s: i64, classes: &[&str], country: &str, exe: &str) -> pb::Record {
    let t = now_ns() - age_s * 1_000_000_000;
    pb::Record {
        seq,
        time_unix_ns: t,
        body: Some(pb::record::Body::Violation(Flow {
            time_unix_ns: t,
            pid: 4242,
            exe: exe.into(),
            comm: "exporter".into(),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            protocol: Protocol::Tcp as i32,
            remote: format!("203.0.113.{}:443", seq % 250),
            remote_country: country.into(),
            verdict: Verdict::Deny as i32,
            action: Action::Reported as i32,
            count: 1,
            host_id: OTHER.into(),
            ..Default::default()
        })),
        chain: Vec::new(),
    }
}

/// 120 to CN (eu_personal), 14 to IN (health), 6 to BR (both classes), one
/// by a process with a hostile name.
fn other_hosts_records() -> Vec<pb::Record> {
    let mut v = Vec::new();
    let mut seq = 0;
    let mut push = |classes: &[&str], country: &str, exe: &str, n: usize| {
        for _ in 0..n {
            seq += 1;
            v.push(violation(seq, 3600 - seq as i64, classes, country, exe));
        }
    };
    push(&["eu_personal"], "CN", "/usr/bin/exporter", 120);
    push(&["health"], "IN", "/usr/bin/exporter", 14);
    push(&["eu_personal", "health"], "BR", "/usr/bin/sync", 6);
    push(&["eu_personal"], "CN", HOSTILE, 1);
    v
}

/// How many stored violations match `q`, by following QueryViolations'
/// pages (what a client of the API would count).
async fn api_count(c: &mut CollectorClient<Channel>, mut q: pb::ViolationQuery) -> u64 {
    let mut n = 0;
    q.limit = 10_000;
    for pages in 0.. {
        assert!(
            pages < 1_000,
            "QueryViolations' pages did not end after {pages}"
        );
        let page = c
            .query_violations(q.clone())
            .await
            .expect("QueryViolations")
            .into_inner();
        n += page.records.len() as u64;
        if page.next_page_token.is_empty() {
            return n;
        }
        q.page_token = page.next_page_token;
    }
    unreachable!("the page loop only ends by returning")
}

/// Navigates to `url`. A page the browser could not load at all (its own
/// network error page: the connection was refused or reset before any
/// answer) is tried again, up to three times, each miss printed with what
/// the browser said; any answer of the dashboard's, error or not, is the
/// test's to judge.
async fn goto(b: &Client, url: &str) {
    for attempt in 1..=3 {
        // Chrome shows its error page under the URL it was asked for, or
        // (for some errors) fails the navigation itself.
        let said = match b.goto(url).await {
            Err(e) => e.to_string(),
            Ok(()) => {
                let document = b
                    .execute("return document.documentURI", Vec::new())
                    .await
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                if !document.starts_with("chrome-error:") {
                    return;
                }
                match b.find(Locator::Css("body")).await {
                    Ok(body) => body.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                }
            }
        };
        let said: String = said.chars().take(500).collect();
        eprintln!("the browser could not load {url} (attempt {attempt}): {said}");
        assert!(
            attempt < 3,
            "the browser could not load {url} three times: {said}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn text(b: &Client, id: &str) -> String {
    let url = b
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    let found = match b.find(Locator::Id(id)).await {
        Ok(e) => e,
        Err(e) => {
            // What the browser shows instead (an error page says why).
            let shown = match b.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => b.source().await.unwrap_or_default(),
            };
            let shown: String = shown.chars().take(2_000).collect();
            panic!("#{id} on {url}: {e}; the page shows:\n{shown}")
        }
    };
    found.text().await.expect("text")
}

async fn number(b: &Client, id: &str) -> u64 {
    let t = text(b, id).await;
    t.trim()
        .parse()
        .unwrap_or_else(|_| panic!("#{id} is not a number: {t:?}"))
}

/// The cells of each row of table `id`.
async fn rows(b: &Client, id: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for tr in b
        .find_all(Locator::Css(&format!("#{id} tbody tr")))
        .await
        .expect("rows")
    {
        let mut cells = Vec::new();
        for td in tr.find_all(Locator::Css("td")).await.expect("cells") {
            cells.push(td.text().await.expect("cell text"));
        }
        out.push(cells);
    }
    out
}

/// What the browser is doing (for a failure's message): the document's
/// state and address (an error page's is `chrome-error:`), the status of
/// the response it came from, and the start of its text.
async fn page_state(b: &Client) -> String {
    const SCRIPT: &str = "const n = performance.getEntriesByType('navigation')[0]; \
        return JSON.stringify({ready: document.readyState, uri: document.documentURI, \
        status: n ? n.responseStatus : null, type: n ? n.type : null, \
        text: (document.body ? document.body.innerText : '').slice(0, 1500)});";
    match b.execute(SCRIPT, vec![]).await {
        Ok(v) => format!("the page: {}", v.as_str().unwrap_or_default()),
        Err(e) => format!("the page's state could not be read: {e}"),
    }
}

async fn path(b: &Client) -> String {
    b.current_url().await.expect("url").path().to_owned()
}

/// Clicks what `css` finds and waits until the browser is at a URL that
/// `to` accepts (a click does not wait for the page it leads to).
async fn click_to(b: &Client, css: &str, to: impl Fn(&str) -> bool) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = b.current_url().await.expect("url").to_string();
        // At the URL, and the new page is there (its footer is last: a
        // navigation commits its URL before the page is parsed to the end).
        if to(&url) && b.find(Locator::Css("footer")).await.is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "clicking {css} led nowhere expected: at {url}; {}",
                page_state(b).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With DASHBOARD_SCREENSHOTS=DIR, saves what the browser shows as
/// DIR/NAME.png (to look at the pages; nothing is asserted on them).
async fn screenshot(b: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("DASHBOARD_SCREENSHOTS") {
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
            .expect("saving it");
    }
}

#[test]
fn the_dashboard_shows_readers_what_the_api_returns_and_refuses_agents() {
    let tmp = TempPath::dir("dashboard");
    let ca = TestCa::create(tmp.path());
    let agent_cert = ca.issue(HOST, &[]);
    let other_cert = ca.issue(OTHER, &[]);
    let auditor = ca.issue("auditor-1", &[]);
    let operator = ca.issue("ops-1", &[]);
    let db = tmp.path().join("collector.db");
    // The dashboard's connection-level events (TLS handshakes that fail or
    // time out) go to its log, which a failing test prints.
    let collector = RunningCollector::start_opts(
        tmp.path(),
        db.to_str().expect("utf-8"),
        CollectorOptions {
            tls: Some(CollectorTls {
                ca: ca.cert.clone(),
                server: ca.issue("collector", &["localhost"]),
                auditors: vec!["auditor-1".into()],
                operators: vec!["ops-1".into()],
            }),
            dashboard: true,
            env: vec![(
                "RUST_LOG".into(),
                "info,residency_daemon::http=debug".into(),
            )],
            ..Default::default()
        },
    );
    let port = collector.dashboard.expect("dashboard port");
    let base = format!("https://localhost:{port}");

    // A real agent: violations, signed attestations every 2 s, and an
    // operator's change with a reason (the audit trail).
    let config = collector.agent_config(tmp.path(), HOST, Some(&agent_cert));
    set_collector_option(&config, "attestation_interval", "\"2s\"");
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let _agent = delivering_agent(HOST, &cgroup, &config);
    let server = net.virginia.udp_server(false);
    probe::violate(&cgroup, &server.addr.to_string(), 30);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    wait_until("the agent's stream", Duration::from_secs(60), || {
        collector
            .hosts()
            .iter()
            .any(|h| h.host_id == HOST && h.connected)
    });
    let reason = "ticket RS-42: stay in monitor during the audit";
    let resp = rt
        .block_on(async {
            collector
                .client(Some(&operator))
                .await
                .set_enforcement(pb::FleetSetEnforcementRequest {
                    host_id: HOST.into(),
                    class: "eu_personal".into(),
                    mode: "monitor".into(),
                    reason: reason.into(),
                })
                .await
        })
        .expect("set enforcement")
        .into_inner();
    assert!(
        resp.outcomes.len() == 1 && resp.outcomes.iter().all(|r| r.error.is_empty()),
        "{resp:?}"
    );
    assert_eq!(
        collector.deliver_as_agent(&other_cert, OTHER, other_hosts_records()),
        141
    );
    wait_until(
        "the violations, the audit record and an attestation after them",
        Duration::from_secs(60),
        || {
            collector.count(HOST, "violation") == 30
                && collector.count(HOST, "audit") >= 1
                && collector.hosts().iter().any(|h| {
                    h.host_id == HOST && h.last_attestation.as_ref().is_some_and(|a| a.seq > 31)
                })
        },
    );

    let browser = Browser::start();
    rt.block_on(async {
        let mut api = collector.client(Some(&auditor)).await;
        let token = api
            .issue_dashboard_token(pb::DashboardTokenRequest { ttl_seconds: 600 })
            .await
            .expect("a dashboard token")
            .into_inner();
        assert_eq!(token.role, "auditor");
        let b = browser.session().await;

        // Without a session: the login page.
        goto(&b, &format!("{base}/violations")).await;
        assert_eq!(path(&b).await, "/login");
        b.find(Locator::Id("token"))
            .await
            .expect("token field")
            .send_keys(&token.token)
            .await
            .expect("type");
        click_to(&b, "#sign-in", |u| u == format!("{base}/")).await;

        // Hosts: both, the real one connected with its mode, signed attestation.
        assert_eq!(path(&b).await, "/");
        screenshot(&b, "hosts").await;
        assert!(text(&b, "user").await.contains("auditor-1 · auditor"));
        let hosts = rows(&b, "hosts").await;
        let row = |h: &str| {
            hosts
                .iter()
                .find(|r| r[0] == h)
                .cloned()
                .unwrap_or_else(|| panic!("{h} listed: {hosts:?}"))
        };
        let real = row(HOST);
        assert_eq!(real[1], "connected");
        assert!(real[3].contains("eu_personal: monitor"), "{real:?}");
        assert_eq!(real[7], "30", "violations of {HOST}");
        assert!(
            real[10].starts_with("signed; window to"),
            "attestation state: {real:?}"
        );
        assert_eq!(row(OTHER)[7], "141");
        assert_eq!(row(OTHER)[10], "none stored");
        // The chain column shows the stored chain's last check; the
        // re-verify button runs one now.
        assert!(
            real[9].contains("not verified since collectord started"),
            "{real:?}"
        );
        click_to(&b, &format!("button[data-host=\"{HOST}\"]"), |u| {
            u.contains("verified=")
        })
        .await;
        let checked = text(&b, "reverified").await;
        assert!(
            checked.contains(HOST) && checked.contains("intact at"),
            "{checked}"
        );
        let after = rows(&b, "hosts").await;
        let real_after = after.iter().find(|r| r[0] == HOST).expect("listed");
        assert!(real_after[9].contains("intact at"), "{real_after:?}");

        // Violations, unfiltered: the total and the map are the API's.
        goto(&b, &format!("{base}/violations")).await;
        screenshot(&b, "violations").await;
        let all = api_count(&mut api, pb::ViolationQuery::default()).await;
        assert_eq!(all, 171);
        assert_eq!(number(&b, "total").await, all);
        assert_eq!(rows(&b, "violations").await.len(), 100, "one page of 100");
        let cn = api_count(
            &mut api,
            pb::ViolationQuery {
                country: "CN".into(),
                ..Default::default()
            },
        )
        .await;
        let map_cn = b
            .find(Locator::Css("#map-CN"))
            .await
            .expect("China on the map")
            .attr("data-count")
            .await
            .expect("attr");
        assert_eq!(map_cn.as_deref(), Some(cn.to_string().as_str()));
        assert!(
            b.find_all(Locator::Css("#timeline rect"))
                .await
                .expect("bars")
                .len()
                >= 2
        );

        // Hostile text is text: no script element anywhere, the name shown.
        assert!(
            b.find_all(Locator::Css("script"))
                .await
                .expect("query")
                .is_empty()
        );
        assert!(
            b.source()
                .await
                .expect("source")
                .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
        );

        // The form narrows the table: country CN (two pages), then CN and
        // a class no CN violation has.
        b.find(Locator::Id("f-country"))
            .await
            .expect("country")
            .send_keys("CN")
            .await
            .expect("type");
        click_to(&b, "#apply", |u| u.contains("country=CN")).await;
        assert_eq!(cn, 121);
        assert_eq!(number(&b, "total").await, cn);
        let first = rows(&b, "violations").await;
        assert_eq!(first.len(), 100);
        assert!(first.iter().all(|r| r[5] == "CN"), "{first:?}");
        click_to(&b, "#next-page", |u| u.contains("page=")).await;
        let second = rows(&b, "violations").await;
        assert_eq!(second.len(), 21);
        assert!(second.iter().all(|r| r[5] == "CN"));
        let seqs = |r: &[Vec<String>]| {
            r.iter()
                .map(|c| (c[1].clone(), c[7].clone()))
                .collect::<Vec<_>>()
        };
        let mut both = seqs(&first);
        both.extend(seqs(&second));
        both.sort();
        both.dedup();
        assert_eq!(both.len(), 121, "the pages neither overlap nor skip");

        let by_class = |class: &str, country: &str| pb::ViolationQuery {
            class: class.into(),
            country: country.into(),
            ..Default::default()
        };
        goto(&b, &format!("{base}/violations?class=health")).await;
        let health = api_count(&mut api, by_class("health", "")).await;
        assert_eq!(health, 20, "IN and BR");
        assert_eq!(number(&b, "total").await, health);
        assert!(text(&b, "per-class").await.contains("health: 20"));
        goto(&b, &format!("{base}/violations?class=health&country=CN")).await;
        assert_eq!(api_count(&mut api, by_class("health", "CN")).await, 0);
        assert_eq!(number(&b, "total").await, 0);
        assert!(rows(&b, "violations").await.is_empty());
        goto(&b, &format!("{base}/violations?host={HOST}")).await;
        assert_eq!(number(&b, "total").await, 30);
        assert!(rows(&b, "violations").await.iter().all(|r| r[1] == HOST));

        // A bad filter says what is wrong.
        goto(&b, &format!("{base}/violations?destination=not-an-address")).await;
        assert!(text(&b, "error").await.contains("neither an IP prefix"));

        // The audit trail: who, what, why.
        goto(&b, &format!("{base}/audit?host={HOST}")).await;
        screenshot(&b, "audit").await;
        let audit = rows(&b, "audit").await;
        assert!(
            audit
                .iter()
                .any(|r| r[3].contains("ops-1") && r[5] == reason),
            "{audit:?}"
        );

        // The real host's chain and attestations verify.
        goto(&b, &format!("{base}/hosts/{HOST}/verify")).await;
        screenshot(&b, "verify").await;
        let verdict = text(&b, "verdict").await;
        assert!(
            verdict.starts_with("Intact"),
            "{verdict}: {}",
            text(&b, "report").await
        );
        assert!(!rows(&b, "attestations").await.is_empty());

        // Logging out ends the session.
        click_to(&b, "form.logout button", |u| u.ends_with("/login")).await;
        goto(&b, &format!("{base}/")).await;
        assert_eq!(path(&b).await, "/login");
        // A forged token is refused with a reason.
        goto(
            &b,
            &format!("{base}/login?token=auditor.9999999999999999999.00.00"),
        )
        .await;
        assert!(
            text(&b, "error")
                .await
                .contains("not issued by this collector")
        );
        b.close().await.expect("closing the browser");
    });

    // Client certificates, without a browser.
    rt.block_on(async {
        let get = |who, path: &'static str, cookie: Option<String>| {
            let ca = ca.cert.clone();
            async move { https_get(port, &ca, who, path, cookie.as_deref()).await }
        };
        let a = get(Some(&auditor), "/", None).await.expect("auditor");
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains(HOST) && a.body.contains("auditor-1 · auditor"));
        assert!(
            a.header("content-security-policy")
                .is_some_and(|c| c.contains("default-src 'none'"))
        );
        let o = get(Some(&operator), "/violations", None)
            .await
            .expect("operator");
        assert_eq!(o.status, 200);
        assert!(o.body.contains("ops-1 · operator"));
        let refused = get(Some(&agent_cert), "/", None).await.expect("agent");
        assert_eq!(refused.status, 403, "{refused:?}");
        assert!(
            refused.body.contains("agent") && !refused.body.contains(OTHER),
            "{}",
            refused.body
        );
        let anonymous = get(None, "/violations", None)
            .await
            .expect("no certificate");
        assert_eq!(anonymous.status, 303);
        assert_eq!(anonymous.header("location"), Some("/login"));
        // A session that expired is sent back to the login page, saying so.
        let mut api = collector.client(Some(&auditor)).await;
        let short = api
            .issue_dashboard_token(pb::DashboardTokenRequest { ttl_seconds: 1 })
            .await
            .expect("token")
            .into_inner()
            .token;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let expired = get(None, "/", Some(format!("residency_session={short}")))
            .await
            .expect("expired");
        assert_eq!(expired.status, 303);
        assert!(
            expired
                .header("location")
                .is_some_and(|l| l.starts_with("/login?why=")),
            "{expired:?}"
        );
        // Agents get no tokens.
        let e = collector
            .client(Some(&agent_cert))
            .await
            .issue_dashboard_token(pb::DashboardTokenRequest::default())
            .await
            .expect_err("agents get no dashboard token");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // Another CA's certificate does not get through the handshake.
        let other = TempPath::dir("dashboard-other-ca");
        let stranger = TestCa::create(other.path()).issue("auditor-1", &[]);
        let r = https_get(port, &ca.cert, Some(&stranger), "/", None).await;
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|a| a.status == 0),
            "{r:?}"
        );
    });
}
