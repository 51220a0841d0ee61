//! Records in Elastic Common Schema field names, one JSON object each: what
//! a SIEM's ingest pipeline maps without a custom parser.

use residency_proto::{
    agent::v1::Flow,
    collector::v1::{Record, record::Body},
    records::Label,
};
use serde_json::{Map, Value, json};

/// Splits "203.0.113.7:443" / "[2001:db8::1]:443" into address and port.
fn endpoint(s: &str) -> Option<(String, u16)> {
    let a: std::net::SocketAddr = s.parse().ok()?;
    Some((a.ip().to_string(), a.port()))
}

fn flow_fields(o: &mut Map<String, Value>, f: &Flow) {
    o.insert(
        "process".into(),
        json!({
            "pid": f.pid,
            "name": f.comm,
            "executable": f.exe,
        }),
    );
    o.insert("user".into(), json!({ "id": f.uid.to_string() }));
    let mut source = json!({});
    if let Some((ip, port)) = endpoint(&f.local) {
        source = json!({ "ip": ip, "port": port });
    }
    o.insert("source".into(), source);
    let mut destination = json!({});
    if let Some((ip, port)) = endpoint(&f.remote) {
        destination = json!({ "ip": ip, "port": port });
    }
    if !f.remote_country.is_empty() {
        destination["geo"] = json!({ "country_iso_code": f.remote_country });
    }
    o.insert("destination".into(), destination);
    let mut network = json!({ "transport": f.protocol().label() });
    if !f.community_id.is_empty() {
        network["community_id"] = json!(f.community_id);
    }
    o.insert("network".into(), network);
    if let Some(w) = &f.workload {
        if !w.container_id.is_empty() {
            o.insert(
                "container".into(),
                json!({ "id": w.container_id, "runtime": w.container_runtime }),
            );
        }
        if !w.pod_uid.is_empty() {
            o.insert(
                "orchestrator".into(),
                json!({ "type": "kubernetes", "resource": { "type": "pod", "id": w.pod_uid } }),
            );
        }
        if !w.unit.is_empty() {
            o.insert("service".into(), json!({ "name": w.unit }));
        }
    }
    o.insert(
        "labels".into(),
        json!({
            "classes": f.classes.join(","),
            "site": f.remote_site,
            "cgroup": f.workload.as_ref().map(|w| w.cgroup.clone()).unwrap_or_default(),
        }),
    );
}

/// One record of `host` as an ECS document.
pub fn document(host: &str, r: &Record) -> Value {
    let mut o = Map::new();
    o.insert(
        "@timestamp".into(),
        json!(residency_proto::time::utc_nanos(r.time_unix_ns)),
    );
    o.insert("host".into(), json!({ "name": host }));
    o.insert(
        "observer".into(),
        json!({ "vendor": "Residency Sensor", "product": "sensord", "type": "sensor", "hostname": host }),
    );
    let (kind, action, outcome, message) = match &r.body {
        Some(Body::Violation(f)) => {
            flow_fields(&mut o, f);
            let denied = f.action().label() == "denied";
            (
                "alert",
                "residency-violation",
                if denied { "failure" } else { "success" },
                format!(
                    "{} data of {} ({}) {} to {} ({})",
                    f.classes.join(","),
                    f.exe,
                    f.pid,
                    if denied { "denied" } else { "sent" },
                    f.remote,
                    if f.remote_country.is_empty() {
                        "unknown country"
                    } else {
                        &f.remote_country
                    }
                ),
            )
        }
        Some(Body::Audit(a)) => {
            o.insert("user".into(), json!({ "name": a.actor }));
            o.insert("event_reason".into(), json!(a.reason));
            (
                "event",
                "residency-audit",
                "success",
                format!("{}: {} ({})", a.actor, a.action, a.reason),
            )
        }
        Some(Body::Gap(g)) => {
            let why: Vec<&str> = [g.error.as_str(), g.note.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            o.insert("error".into(), json!({ "message": why.join("; ") }));
            (
                "event",
                "residency-gap",
                "failure",
                format!(
                    "{} records lost ({}), sequences {}..{}",
                    g.count,
                    g.source().as_str_name().trim_start_matches("GAP_SOURCE_"),
                    g.first_seq,
                    g.last_seq
                ),
            )
        }
        _ => ("event", "residency-record", "unknown", String::new()),
    };
    // ECS puts the reason in event.reason.
    let reason = o.remove("event_reason");
    let mut event = json!({
        "kind": kind,
        "category": ["network"],
        "type": ["connection"],
        "action": action,
        "outcome": outcome,
        "module": "residency",
        "dataset": format!("residency.{}", r.kind_name()),
        "sequence": r.seq,
    });
    if let Some(reason) = reason {
        event["reason"] = reason;
    }
    o.insert("event".into(), event);
    o.insert("message".into(), json!(message));
    o.insert("ecs".into(), json!({ "version": "8.11.0" }));
    Value::Object(o)
}
