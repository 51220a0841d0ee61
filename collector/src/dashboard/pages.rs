//! The dashboard's pages. Each asks the gRPC service in this process, as
//! the authenticated caller, and renders what it answers.

use std::collections::{BTreeMap, BTreeSet};

use axum::{
    Extension,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use residency_proto::collector::v1::{self as pb, collector_server::Collector, record::Body};

use super::{
    App, charts,
    html::{self, esc, query, table, time},
};
use crate::auth::Caller;

/// A request to the service as `caller` (see `Roles::caller`).
fn ask<T>(caller: &Caller, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(caller.clone());
    r
}

/// A page that says what went wrong.
fn problem(status: StatusCode, who: Option<&Caller>, title: &str, message: &str) -> Response {
    let body = format!("<p class=\"error\" id=\"error\">{}</p>", esc(message));
    (status, html::page(title, who, "", &body)).into_response()
}

/// The answer to an agent's certificate (or one naming no one).
pub fn refused(message: &str) -> Response {
    problem(StatusCode::FORBIDDEN, None, "Not for agents", message)
}

fn failed(who: &Caller, s: tonic::Status) -> Response {
    let status = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    problem(status, Some(who), "Cannot show this", s.message())
}

pub async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        None,
        "Not found",
        "No such page: the dashboard has Hosts (/), Violations (/violations) and the Audit trail (/audit).",
    )
}

/// The login page, with why the last try failed.
pub fn login_page(why: Option<&str>) -> Response {
    let error = why
        .map(|w| format!("<p class=\"error\" id=\"error\">{}</p>", esc(w)))
        .unwrap_or_default();
    let body = format!(
        "{error}<div class=\"login\"><p>Sign in with an auditor's or operator's client certificate \
(your browser offers it when it has one), or with a login token:</p>\
<pre>collectorctl dashboard-token</pre>\
<form method=\"post\" action=\"/login\"><label for=\"token\">Login token</label>\
<textarea id=\"token\" name=\"token\" autocomplete=\"off\" spellcheck=\"false\"></textarea>\
<p><button type=\"submit\" id=\"sign-in\">Sign in</button></p></form></div>"
    );
    html::page("Sign in", None, "", &body)
}

/// `GET /login`: the form, or `?token=` (a link `collectorctl` prints).
pub async fn login_form(
    State(app): State<App>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    match q.get("token") {
        Some(t) => super::login(&app, t),
        None => login_page(q.get("why").map(String::as_str)),
    }
}

/// An attestation's state, for people: text and CSS class.
fn attestation_state(a: Option<&pb::LastAttestation>) -> (String, &'static str) {
    let Some(a) = a else {
        return ("none stored".into(), "muted");
    };
    if !a.signature_valid {
        return (format!("invalid: {}", a.problem), "bad");
    }
    if !a.signer_trusted {
        return (format!("untrusted signer: {}", a.problem), "bad");
    }
    if a.overdue {
        return (
            format!("overdue: last window ended {}", time(a.window_end_unix_ns)),
            "warn",
        );
    }
    if a.stopping {
        return (
            format!(
                "agent stopped; last window ended {}",
                time(a.window_end_unix_ns)
            ),
            "muted",
        );
    }
    (
        format!("signed; window to {}", time(a.window_end_unix_ns)),
        "ok",
    )
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// The hosts page's chain column: the last check of the stored chain
/// (what the database holds now), and what ingest saw; never a green that
/// only reflects ingest.
fn chain_state(h: &pb::HostSummary) -> String {
    let ingest = if h.chain_breaks + h.unexplained_jumps == 0 {
        String::new()
    } else {
        format!(
            "<br><span class=\"bad\">at ingest: {} breaks, {} unexplained jumps</span>",
            h.chain_breaks, h.unexplained_jumps
        )
    };
    let verified = match &h.last_verify {
        None => "<span class=\"muted\">not verified since collectord started</span>".to_owned(),
        Some(v) if v.intact => format!(
            "<span class=\"ok\">intact at {} ({} records)</span>",
            esc(&time(v.at_unix_ns)),
            v.records
        ),
        Some(v) => format!(
            "<span class=\"bad\" title=\"{}\">NOT INTACT at {}: {} problems</span>",
            esc(&v.first_problem),
            esc(&time(v.at_unix_ns)),
            v.problems
        ),
    };
    format!("{verified}{ingest}")
}

/// The query of `/` after a re-verify: the host just checked.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct HostsForm {
    verified: String,
}

/// `GET /`: every host.
pub async fn hosts(
    State(app): State<App>,
    Extension(who): Extension<Caller>,
    Query(form): Query<HostsForm>,
) -> Response {
    let hosts = match app
        .service
        .list_hosts(ask(&who, pb::ListHostsRequest {}))
        .await
    {
        Ok(r) => r.into_inner().hosts,
        Err(e) => return failed(&who, e),
    };
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let st = h.state.clone().unwrap_or_default();
            let modes = st
                .modes
                .iter()
                .map(|m| format!("{}: {}", esc(&m.class), esc(&m.mode)))
                .collect::<Vec<_>>()
                .join("<br>");
            let (att, att_class) = attestation_state(h.last_attestation.as_ref());
            let chain = chain_state(h);
            let q = query(&[("host", &h.host_id)]);
            vec![
                format!("<a href=\"/violations{q}\">{}</a>", esc(&h.host_id)),
                if h.connected {
                    "<span class=\"ok\">connected</span>".into()
                } else {
                    "<span class=\"muted\">not connected</span>".into()
                },
                esc(&time(h.last_seen_unix_ns)),
                if modes.is_empty() {
                    "<span class=\"muted\">—</span>".into()
                } else {
                    modes
                },
                format!(
                    "<code title=\"{p}\">{}</code>",
                    esc(&short(&st.policy_sha256)),
                    p = esc(&st.policy_sha256)
                ),
                esc(&st.dataset),
                esc(&st.version),
                h.violations.to_string(),
                h.gaps.to_string(),
                chain,
                format!("<span class=\"{att_class}\">{}</span>", esc(&att)),
                format!(
                    "<a href=\"/hosts/{enc}/verify\">verify</a> · <a href=\"/audit{q}\">audit</a>\
                     <form method=\"post\" action=\"/hosts/{enc}/verify\" class=\"reverify\">\
                     <button type=\"submit\" data-host=\"{host}\" title=\"check the stored chain again now\">re-verify</button></form>",
                    enc = html::url_encode(&h.host_id),
                    host = esc(&h.host_id),
                ),
            ]
        })
        .collect();
    let reverified = match hosts.iter().find(|h| h.host_id == form.verified) {
        Some(h) => format!(
            "<p id=\"reverified\">Checked the stored chain of {} again: {}</p>",
            esc(&h.host_id),
            chain_state(h)
        ),
        None => String::new(),
    };
    let body = if rows.is_empty() {
        "<p class=\"muted\">No host has delivered records to this collector yet.</p>".to_owned()
    } else {
        format!(
            "{reverified}<p class=\"total\" id=\"host-count\">{} hosts</p>{}",
            rows.len(),
            table(
                "hosts",
                &[
                    "Host",
                    "Stream",
                    "Last seen",
                    "Mode per class",
                    "Policy",
                    "Dataset",
                    "Agent",
                    "Violations",
                    "Gaps",
                    "Chain",
                    "Attestation",
                    "",
                ],
                &rows,
            )
        )
    };
    html::page("Hosts", Some(&who), "/", &body)
}

/// The violation filters (the query string of `/violations`).
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct ViolationForm {
    host: String,
    class: String,
    country: String,
    destination: String,
    exe: String,
    action: String,
    unit: String,
    container: String,
    pod: String,
    name: String,
    since: String,
    until: String,
    page: String,
}

fn time_field(name: &str, v: &str) -> Result<i64, String> {
    if v.trim().is_empty() {
        return Ok(0);
    }
    crate::export::parse_time(v.trim()).map_err(|e| format!("{name}: {e}"))
}

/// A bucket width that cuts `span` into at most 60 bars.
fn bucket_for(span: i64) -> i64 {
    const S: i64 = 1_000_000_000;
    [
        60,
        300,
        900,
        3600,
        3 * 3600,
        6 * 3600,
        12 * 3600,
        86_400,
        7 * 86_400,
        30 * 86_400,
    ]
    .into_iter()
    .map(|b| b * S)
    .find(|b| span / b <= 60)
    .unwrap_or(365 * 86_400 * S)
}

fn input(name: &str, label: &str, value: &str, hint: &str) -> String {
    format!(
        "<label>{label}<input name=\"{name}\" id=\"f-{name}\" value=\"{}\" placeholder=\"{hint}\"></label>",
        esc(value)
    )
}

/// `GET /violations`: chart, map and table of the violations that match.
pub async fn violations(
    State(app): State<App>,
    Extension(who): Extension<Caller>,
    Query(f): Query<ViolationForm>,
) -> Response {
    let (since, until) = match (time_field("since", &f.since), time_field("until", &f.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            return problem(StatusCode::BAD_REQUEST, Some(&who), "Violations", &e);
        }
    };
    let q = pb::ViolationQuery {
        host_id: f.host.trim().to_owned(),
        class: f.class.trim().to_owned(),
        country: f.country.trim().to_owned(),
        destination: f.destination.trim().to_owned(),
        exe: f.exe.trim().to_owned(),
        action: f.action.trim().to_owned(),
        since_unix_ns: since,
        until_unix_ns: until,
        limit: 100,
        page_token: f.page.trim().to_owned(),
        unit: f.unit.trim().to_owned(),
        container: f.container.trim().to_owned(),
        pod: f.pod.trim().to_owned(),
        name: f.name.trim().to_owned(),
    };
    let stats = |bucket_ns| {
        app.service.violation_stats(ask(
            &who,
            pb::ViolationStatsRequest {
                query: Some(q.clone()),
                bucket_ns,
            },
        ))
    };
    // Where the matching violations lie (by day), then bars that fit.
    let days = match stats(86_400_000_000_000).await {
        Ok(s) => s.into_inner(),
        Err(e) => return failed(&who, e),
    };
    let now = super::now_ns();
    let start = if since > 0 {
        since
    } else {
        days.buckets
            .first()
            .map_or(now - 86_400_000_000_000, |b| b.start_unix_ns)
    };
    let end = if until > 0 { until } else { now };
    let bucket = bucket_for((end - start).max(1));
    let stats = match stats(bucket).await {
        Ok(s) => s.into_inner(),
        Err(e) => return failed(&who, e),
    };
    // Without a start, the chart starts at the first bar with violations.
    let start = match stats.buckets.first() {
        Some(b) if since == 0 => b.start_unix_ns,
        _ => start,
    };
    let page = match app.service.query_violations(ask(&who, q.clone())).await {
        Ok(p) => p.into_inner(),
        Err(e) => return failed(&who, e),
    };
    let classes: Vec<String> = stats
        .buckets
        .iter()
        .map(|b| b.class.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut by_bar: BTreeMap<(i64, usize), u64> = BTreeMap::new();
    let mut by_country: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
    for b in &stats.buckets {
        let i = classes.iter().position(|c| *c == b.class).unwrap_or(0);
        *by_bar.entry((b.start_unix_ns, i)).or_default() += b.count;
        *by_class.entry(b.class.clone()).or_default() += b.count;
    }
    for (country, n) in &stats.countries {
        *by_country.entry(country.clone()).or_default() += n;
    }
    let form = format!(
        "<form class=\"filters\" method=\"get\" action=\"/violations\" id=\"filters\">{}{}{}{}{}\
<label>Action<select name=\"action\" id=\"f-action\">{}</select></label>{}{}{}{}{}{}\
<button type=\"submit\" id=\"apply\">Filter</button> <a href=\"/violations\">clear</a></form>",
        input("host", "Host", &f.host, "any"),
        input("class", "Class", &f.class, "any"),
        input("country", "Country", &f.country, "US"),
        input(
            "destination",
            "Destination",
            &f.destination,
            "203.0.113.0/24"
        ),
        input("exe", "Executable", &f.exe, "/usr/bin/…"),
        ["", "reported", "denied"]
            .iter()
            .map(|a| format!(
                "<option value=\"{a}\"{}>{}</option>",
                if f.action.trim() == *a {
                    " selected"
                } else {
                    ""
                },
                if a.is_empty() { "any" } else { a }
            ))
            .collect::<String>(),
        input("unit", "Unit", &f.unit, "nginx.service"),
        input("container", "Container", &f.container, "id prefix"),
        input("pod", "Pod", &f.pod, "pod UID"),
        input("name", "Name", &f.name, "*.example.com"),
        input("since", "Since", &f.since, "2026-11-23T07:00:00Z or 24h"),
        input("until", "Until", &f.until, "now"),
    );
    let mut countries: Vec<(&String, &u64)> = by_country.iter().collect();
    countries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let country_rows: Vec<Vec<String>> = countries
        .iter()
        .take(20)
        .map(|(c, n)| {
            let name = charts::country_name(c).unwrap_or(if c.is_empty() { "unknown" } else { "" });
            let link = self_link(&f, &[("country", c.as_str())]);
            vec![
                format!("<a href=\"/violations{link}\">{} {}</a>", esc(c), esc(name)),
                format!("{n}"),
            ]
        })
        .collect();
    let class_totals = by_class
        .iter()
        .map(|(c, n)| format!("{}: {n}", esc(if c.is_empty() { "(no class)" } else { c })))
        .collect::<Vec<_>>()
        .join(" · ");
    let rows: Vec<Vec<String>> = page
        .records
        .iter()
        .filter_map(|s| {
            let r = s.record.as_ref()?;
            let Some(Body::Violation(v)) = &r.body else {
                return None;
            };
            Some(vec![
                esc(&time(r.time_unix_ns)),
                esc(&s.host_id),
                esc(&v.classes.join(", ")),
                format!("{} <span class=\"muted\">pid {}</span>", esc(&v.exe), v.pid),
                esc(&v.remote),
                esc(&v.remote_country),
                esc(v
                    .action()
                    .as_str_name()
                    .trim_start_matches("ACTION_")
                    .to_lowercase()
                    .as_str()),
                format!("{}", r.seq),
            ])
        })
        .collect();
    let next = if page.next_page_token.is_empty() {
        String::new()
    } else {
        let link = self_link(&f, &[("page", &page.next_page_token)]);
        format!(
            "<p class=\"pager\"><a id=\"next-page\" href=\"/violations{link}\">Older violations →</a></p>"
        )
    };
    let body = format!(
        "{form}<p class=\"total\"><strong id=\"total\">{total}</strong> violations match{per_class}</p>\
<div class=\"charts\"><figure><figcaption>Violations over time by class ({bucket})</figcaption>{bars}{legend}</figure>\
<figure><figcaption>Destination countries</figcaption>{map}</figure>\
<figure><figcaption>Top destination countries</figcaption>{ctable}</figure></div>\
<h2>Violations{page_note}</h2>{vtable}{next}",
        total = stats.total,
        per_class = if class_totals.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"muted\" id=\"per-class\">({class_totals})</span>")
        },
        bucket = esc(&human_span(bucket)),
        bars = charts::bars(&by_bar, &classes, start, end, bucket),
        legend = charts::legend(&classes),
        map = charts::world(&by_country),
        ctable = table("countries", &["Country", "Violations"], &country_rows),
        page_note = if f.page.is_empty() {
            ", newest first"
        } else {
            ", older page"
        },
        vtable = table(
            "violations",
            &[
                "Time",
                "Host",
                "Classes",
                "Process",
                "Destination",
                "Country",
                "Action",
                "Seq"
            ],
            &rows
        ),
    );
    html::page("Violations", Some(&who), "/violations", &body)
}

/// The current filters with some replaced (and the page dropped unless
/// given), as a query string.
fn self_link(f: &ViolationForm, set: &[(&str, &str)]) -> String {
    let get = |k: &str, v: &str| -> String {
        set.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| {
                if k == "page" {
                    String::new()
                } else {
                    v.to_owned()
                }
            })
    };
    let pairs = [
        ("host", get("host", &f.host)),
        ("class", get("class", &f.class)),
        ("country", get("country", &f.country)),
        ("destination", get("destination", &f.destination)),
        ("exe", get("exe", &f.exe)),
        ("action", get("action", &f.action)),
        ("unit", get("unit", &f.unit)),
        ("container", get("container", &f.container)),
        ("pod", get("pod", &f.pod)),
        ("name", get("name", &f.name)),
        ("since", get("since", &f.since)),
        ("until", get("until", &f.until)),
        ("page", get("page", &f.page)),
    ];
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    query(&refs)
}

fn human_span(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        s if s % 86_400 == 0 => format!("{} day bars", s / 86_400),
        s if s % 3600 == 0 => format!("{} hour bars", s / 3600),
        s => format!("{} minute bars", s / 60),
    }
}

/// The audit trail's filters.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub struct AuditForm {
    host: String,
    kind: String,
    since: String,
    until: String,
    page: String,
}

/// `GET /audit`: who changed what and why (audit records), or the losses
/// hosts reported (gap records).
pub async fn audit(
    State(app): State<App>,
    Extension(who): Extension<Caller>,
    Query(f): Query<AuditForm>,
) -> Response {
    let (since, until) = match (time_field("since", &f.since), time_field("until", &f.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            return problem(StatusCode::BAD_REQUEST, Some(&who), "Audit trail", &e);
        }
    };
    let kind = if f.kind.is_empty() {
        "audit"
    } else {
        f.kind.as_str()
    };
    let page = match app
        .service
        .query_records(ask(
            &who,
            pb::RecordQuery {
                kind: kind.to_owned(),
                host_id: f.host.trim().to_owned(),
                since_unix_ns: since,
                until_unix_ns: until,
                limit: 100,
                page_token: f.page.trim().to_owned(),
            },
        ))
        .await
    {
        Ok(p) => p.into_inner(),
        Err(e) => return failed(&who, e),
    };
    let rows: Vec<Vec<String>> = page
        .records
        .iter()
        .filter_map(|s| {
            let r = s.record.as_ref()?;
            let (a, b, c) = match r.body.as_ref()? {
                Body::Audit(a) => (esc(&a.actor), esc(&a.action), esc(&a.reason)),
                Body::Gap(g) => (
                    esc(g.source().as_str_name().trim_start_matches("GAP_SOURCE_")),
                    format!(
                        "{} records lost (sequences {}..{})",
                        g.count, g.first_seq, g.last_seq
                    ),
                    esc(&[g.error.as_str(), g.note.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("; ")),
                ),
                _ => return None,
            };
            Some(vec![
                esc(&time(r.time_unix_ns)),
                esc(&s.host_id),
                r.seq.to_string(),
                a,
                b,
                c,
            ])
        })
        .collect();
    let head: [&str; 6] = if kind == "gap" {
        ["Time", "Host", "Seq", "Source", "Loss", "Why"]
    } else {
        ["Time", "Host", "Seq", "Who", "What", "Why"]
    };
    let form = format!(
        "<form class=\"filters\" method=\"get\" action=\"/audit\" id=\"filters\">{}\
<label>Records<select name=\"kind\" id=\"f-kind\"><option value=\"audit\"{}>changes (audit)</option>\
<option value=\"gap\"{}>losses (gaps)</option></select></label>{}{}\
<button type=\"submit\" id=\"apply\">Filter</button> <a href=\"/audit\">clear</a></form>",
        input("host", "Host", &f.host, "any"),
        if kind == "audit" { " selected" } else { "" },
        if kind == "gap" { " selected" } else { "" },
        input("since", "Since", &f.since, "2026-11-23"),
        input("until", "Until", &f.until, "now"),
    );
    let next = if page.next_page_token.is_empty() {
        String::new()
    } else {
        let q = query(&[
            ("host", &f.host),
            ("kind", kind),
            ("since", &f.since),
            ("until", &f.until),
            ("page", &page.next_page_token),
        ]);
        format!("<p class=\"pager\"><a id=\"next-page\" href=\"/audit{q}\">Older records →</a></p>")
    };
    let body = format!(
        "{form}{}{next}",
        if rows.is_empty() {
            "<p class=\"muted\" id=\"empty\">No records match.</p>".to_owned()
        } else {
            table("audit", &head, &rows)
        }
    );
    html::page("Audit trail", Some(&who), "/audit", &body)
}

/// `POST /hosts/{host}/verify` (the hosts page's re-verify button): checks
/// the host's stored chain now, as `verify` does, and goes back to the
/// hosts page, whose chain column shows the result.
pub async fn reverify(
    State(app): State<App>,
    Extension(who): Extension<Caller>,
    Path(host): Path<String>,
) -> Response {
    if let Err(e) = app
        .service
        .verify_chain(ask(
            &who,
            pb::VerifyChainRequest {
                host_id: host.clone(),
                ..Default::default()
            },
        ))
        .await
    {
        return failed(&who, e);
    }
    axum::response::Redirect::to(&format!("/?verified={}", html::url_encode(&host))).into_response()
}

/// `GET /hosts/{host}/verify`: the host's chain and attestations checked.
pub async fn verify(
    State(app): State<App>,
    Extension(who): Extension<Caller>,
    Path(host): Path<String>,
) -> Response {
    let report = match app
        .service
        .verify_chain(ask(
            &who,
            pb::VerifyChainRequest {
                host_id: host.clone(),
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return failed(&who, e),
    };
    let holds = report.intact;
    let banner = if holds {
        format!(
            "<p class=\"ok\" id=\"verdict\">Intact: {} records, every link and attestation holds.</p>",
            report.records
        )
    } else if report.records == 0 {
        "<p class=\"muted\" id=\"verdict\">No records stored for this host.</p>".to_owned()
    } else {
        "<p class=\"bad\" id=\"verdict\">Does not hold: see the findings below.</p>".to_owned()
    };
    let rows: Vec<Vec<String>> = report
        .attestations
        .iter()
        .map(|c| {
            let a = c.attestation.clone().unwrap_or_default();
            let yes = |b: bool| {
                if b {
                    "<span class=\"ok\">yes</span>"
                } else {
                    "<span class=\"bad\">no</span>"
                }
                .to_owned()
            };
            let sum = |f: fn(&pb::ClassCounts) -> u64| a.classes.iter().map(f).sum::<u64>();
            let kernel = format!(
                "{} judged, {} violations, {} denied{}",
                sum(|c| c.kernel_judged),
                sum(|c| c.kernel_violations),
                sum(|c| c.kernel_denials),
                if a.kernel_counts_incomplete {
                    " (incomplete)"
                } else {
                    ""
                }
            );
            vec![
                c.seq.to_string(),
                format!(
                    "{} – {}",
                    esc(&time(a.window_start_unix_ns)),
                    esc(&time(a.window_end_unix_ns))
                ),
                sum(|c| c.violations).to_string(),
                kernel,
                yes(c.signature_valid),
                esc(&c.signer),
                yes(c.signer_trusted),
                yes(c.records_agree),
                esc(&c.problem),
            ]
        })
        .collect();
    let body = format!(
        "{banner}<h2>Chain</h2><pre id=\"report\">{}</pre><h2>Attestations</h2>{}",
        esc(&residency_proto::chain::render(&report)),
        table(
            "attestations",
            &[
                "Seq",
                "Window",
                "Violations",
                "Kernel counted",
                "Signature",
                "Signer",
                "Trusted",
                "Counts agree",
                "Problem"
            ],
            &rows
        )
    );
    html::page(&format!("Verify {host}"), Some(&who), "", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fit_the_span() {
        const S: i64 = 1_000_000_000;
        assert_eq!(bucket_for(3600 * S), 60 * S);
        assert_eq!(bucket_for(86_400 * S), 3600 * S);
        assert_eq!(bucket_for(30 * 86_400 * S), 12 * 3600 * S);
        assert_eq!(bucket_for(40 * 86_400 * S), 86_400 * S);
    }

    #[test]
    fn the_chain_column_shows_the_stored_chain_not_only_ingest() {
        let mut h = pb::HostSummary::default();
        assert!(chain_state(&h).contains("not verified since collectord started"));
        h.last_verify = Some(pb::LastVerify {
            at_unix_ns: 1,
            intact: true,
            records: 38,
            ..Default::default()
        });
        assert!(chain_state(&h).contains("intact at") && chain_state(&h).contains("38 records"));
        h.chain_breaks = 1;
        assert!(
            chain_state(&h).contains("at ingest: 1 breaks"),
            "ingest still shows"
        );
        h.last_verify = Some(pb::LastVerify {
            intact: false,
            problems: 2,
            first_problem: "TRUNCATED at record 38: <cut>".into(),
            ..Default::default()
        });
        let text = chain_state(&h);
        assert!(
            text.contains("NOT INTACT") && text.contains("2 problems"),
            "{text}"
        );
        assert!(text.contains("&lt;cut&gt;"), "escaped: {text}");
    }
}
