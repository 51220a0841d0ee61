//! `sensorctl flows` and `sensorctl violations`.

use residency_proto::agent::v1::{Flow, FlowFilter, Verdict, flow_event::Event};
use residency_proto::records::Label;

use crate::{Global, client, output};

/// Filters shared by flows and violations.
#[derive(Debug, clap::Args)]
pub struct FlowArgs {
    /// Only this class.
    #[arg(long)]
    class: Option<String>,
    /// Only this process.
    #[arg(long)]
    pid: Option<u32>,
    /// Only this verdict: allow, deny or unknown.
    #[arg(long, value_parser = verdict)]
    verdict: Option<String>,
    /// Only destinations in this country (ISO code).
    #[arg(long)]
    country: Option<String>,
    /// At most this many (default 1000).
    #[arg(long)]
    limit: Option<u32>,
    /// Keep printing records as they happen.
    #[arg(long, short)]
    follow: bool,
}

/// Whose flow: the pod and container, the container, or the unit.
fn workload(f: &Flow) -> String {
    let Some(w) = &f.workload else {
        return String::new();
    };
    let ctr = |w: &residency_proto::agent::v1::Workload| {
        format!(
            "{}:{}",
            w.container_runtime,
            w.container_id.get(..12).unwrap_or(&w.container_id)
        )
    };
    if !w.pod_uid.is_empty() {
        format!(
            "pod/{} {}",
            w.pod_uid.get(..8).unwrap_or(&w.pod_uid),
            ctr(w)
        )
    } else if !w.container_id.is_empty() {
        ctr(w)
    } else {
        w.unit.clone()
    }
}

/// A verdict by its short or enum name (allow, VERDICT_ALLOW), checked
/// by the command line itself.
fn verdict(s: &str) -> Result<String, String> {
    Verdict::parse_label(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| format!("{s:?} is not a verdict: write allow, deny or unknown"))
}

fn row(f: &Flow) -> Vec<String> {
    let mut r = vec![
        f.kind().label(),
        f.pid.to_string(),
        f.comm.clone(),
        workload(f),
        f.classes.join(","),
        f.protocol().label(),
        f.remote.clone(),
        f.remote_country.clone(),
        f.verdict().label(),
        f.action().label(),
        f.count.to_string(),
    ];
    if output::format() == output::Format::Wide {
        r.extend([
            f.name_label(),
            f.exe.clone(),
            f.local.clone(),
            f.community_id.clone(),
            f.workload
                .as_ref()
                .map(|w| w.cgroup.clone())
                .unwrap_or_default(),
        ]);
    }
    r
}

/// The columns: `-o wide` adds the name the process resolved, the
/// executable, the local address, the Community ID and the cgroup.
fn headers() -> Vec<&'static str> {
    let mut h = vec![
        "KIND", "PID", "COMM", "WORKLOAD", "CLASSES", "PROTO", "REMOTE", "CC", "VERDICT", "ACTION",
        "COUNT",
    ];
    if output::format() == output::Format::Wide {
        h.extend(["NAME", "EXE", "LOCAL", "COMMUNITY ID", "CGROUP"]);
    }
    h
}

pub async fn run(g: &Global, a: FlowArgs, violations_only: bool) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    let filter = FlowFilter {
        class: a.class.unwrap_or_default(),
        pid: a.pid.unwrap_or(0),
        verdict: a.verdict.unwrap_or_default(),
        country: a.country.unwrap_or_default(),
        since_unix_ms: 0,
        limit: a.limit.unwrap_or(0),
    };
    if a.follow {
        let mut stream = match c.watch_flows(filter).await {
            Ok(s) => s.into_inner(),
            Err(e) => return client::fail("watch", e),
        };
        if !g.machine() {
            output::table(&headers(), &[]);
        }
        loop {
            match stream.message().await {
                Ok(Some(ev)) => match ev.event {
                    Some(Event::Flow(f)) if !violations_only || f.action().is_violation() => {
                        if g.machine() {
                            println!("{}", serde_json::to_string(&f).unwrap_or_default());
                        } else {
                            println!("{}", row(&f).join("  "));
                        }
                    }
                    Some(Event::Lost(l)) => {
                        eprintln!("warning: {} records lost ({})", l.count, l.source)
                    }
                    _ => {}
                },
                Ok(None) => return 0,
                Err(e) => return client::fail("watch", e),
            }
        }
    }
    let res = if violations_only {
        c.list_violations(filter).await
    } else {
        c.list_flows(filter).await
    };
    let list = match res {
        Ok(r) => r.into_inner(),
        Err(e) => return client::fail("list", e),
    };
    if g.machine() {
        output::list(&list.flows);
    } else {
        output::table(&headers(), &list.flows.iter().map(row).collect::<Vec<_>>());
    }
    0
}
