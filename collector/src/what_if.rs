//! A what-if over stored violations: grouped here (one flow per class,
//! executable and destination, standing for as many violations as it
//! groups), judged by the host's agent, which has the region data.

use std::collections::BTreeMap;

use residency_proto::{agent::v1::Flow, collector::v1::StoredRecord};

/// Most groups sent to an agent (each is a few hundred bytes: well below
/// the stream's message limit).
pub const MAX_GROUPS: usize = 10_000;

/// Most stored violations replayed: the newest ones of the range (a reader
/// cannot make the collector load a host's whole history into memory).
pub const MAX_REPLAYED: u32 = 100_000;

/// The stored violations as flows to judge: one per (classes, executable,
/// destination address), with `count` the violations it stands for and
/// `cookie` 0; the groups with the most violations when there are more than
/// [`MAX_GROUPS`].
pub fn groups(stored: &[StoredRecord]) -> Vec<Flow> {
    let mut by: BTreeMap<(Vec<String>, String, String), Flow> = BTreeMap::new();
    for f in stored.iter().filter_map(StoredRecord::violation) {
        let ip = f
            .remote
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| f.remote.clone());
        let exe = if f.exe.is_empty() { &f.comm } else { &f.exe };
        let g = by
            .entry((f.classes.clone(), exe.clone(), ip.clone()))
            .or_insert_with(|| Flow {
                classes: f.classes.clone(),
                exe: exe.clone(),
                remote: ip,
                remote_country: f.remote_country.clone(),
                ..Default::default()
            });
        g.count += f.count.max(1);
        g.time_unix_ns = g.time_unix_ns.max(f.time_unix_ns);
    }
    let mut out: Vec<Flow> = by.into_values().collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.count));
    out.truncate(MAX_GROUPS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use residency_proto::collector::v1::{Record, record::Body};

    #[test]
    fn violations_group_by_class_executable_and_address() {
        let v = |seq: u64, remote: &str, count: u32| StoredRecord {
            host_id: "h".into(),
            record: Some(Record {
                seq,
                body: Some(Body::Violation(Flow {
                    classes: vec!["eu".into()],
                    exe: "/bin/x".into(),
                    remote: remote.into(),
                    count,
                    ..Default::default()
                })),
                ..Default::default()
            }),
        };
        let g = groups(&[
            v(1, "203.0.113.2:443", 1),
            v(2, "203.0.113.2:8443", 3),
            v(3, "203.0.113.9:443", 1),
        ]);
        assert_eq!(
            g.iter()
                .map(|f| (f.remote.as_str(), f.count))
                .collect::<Vec<_>>(),
            vec![("203.0.113.2", 4), ("203.0.113.9", 1)]
        );
    }
}
