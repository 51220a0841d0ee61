//! What a policy would change before it is applied (`ApplyPolicy` with
//! `dry_run`): the destinations the agent saw recently, per process and
//! class, judged by the policy in force and by the new one; the groups whose
//! outcome (allowed, reported, denied) differs are the answer.
//!
//! Classes are the ones each flow carried when it happened: a selector the
//! new policy changes is reported as classes added or removed, not replayed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use residency_proto::agent::v1::{self as pb, Action};

use crate::{
    kernel::verdicts::{Mode, Verdict},
    policy::{compile::Compiled, validate::Class},
    regions::ranges,
};

/// What `class` does with a flow to `ip` under `c`, its modes given by
/// `mode`: `None` when the policy has no such class.
pub fn outcome(
    c: &Compiled,
    class: &str,
    ip: IpAddr,
    mode: &impl Fn(&Class) -> Mode,
) -> Option<Action> {
    let (cls, plan) = c
        .policy
        .classes
        .iter()
        .zip(&c.classes)
        .find(|(cls, _)| cls.name == class)?;
    let violation = match plan.verdicts.get(ranges::addr(ip)) {
        Some(Verdict::Allow) => false,
        Some(Verdict::Deny) => true,
        Some(Verdict::Unknown) | None => c.policy.host.unknown_is_violation,
    };
    Some(match (violation, mode(cls)) {
        (true, Mode::Enforce) => Action::Denied,
        (true, Mode::Monitor) => Action::Reported,
        _ => Action::None,
    })
}

/// The flow's destination address (records name it "ip:port", or the bare
/// address for protocols without ports).
fn destination(f: &pb::Flow) -> Option<IpAddr> {
    f.remote
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| f.remote.parse::<IpAddr>())
        .ok()
}

/// Groups the records `flows` by (class, executable, destination) and judges
/// each group under `before` and `after`; returns the groups whose outcome
/// changes (most flows first; a flow is a socket, however many records it
/// left) and how many records were replayed.
pub fn changes(
    flows: &[pb::Flow],
    before: (&Compiled, &impl Fn(&Class) -> Mode),
    after: (&Compiled, &impl Fn(&Class) -> Mode),
) -> (Vec<pb::VerdictChange>, u64) {
    #[derive(Default)]
    struct Group {
        /// A flow is a socket: its records (connect, sends, close) share
        /// its cookie and count once.
        sockets: std::collections::HashSet<u64>,
        unnamed: u64,
        last: i64,
        country: String,
    }
    let mut groups: BTreeMap<(String, String, IpAddr), Group> = BTreeMap::new();
    let mut replayed = 0;
    for f in flows {
        let Some(ip) = destination(f) else { continue };
        replayed += 1;
        let exe = if f.exe.is_empty() { &f.comm } else { &f.exe };
        for class in &f.classes {
            let g = groups.entry((class.clone(), exe.clone(), ip)).or_default();
            if f.cookie == 0 {
                // A record without a socket (a collector's group of stored
                // violations) stands for `count` flows.
                g.unnamed += u64::from(f.count.max(1));
            } else {
                g.sockets.insert(f.cookie);
            }
            g.last = g.last.max(f.time_unix_ns);
            if g.country.is_empty() {
                g.country.clone_from(&f.remote_country);
            }
        }
    }
    let mut out: Vec<pb::VerdictChange> = groups
        .into_iter()
        .filter_map(|((class, exe, ip), g)| {
            let was = outcome(before.0, &class, ip, before.1);
            let will = outcome(after.0, &class, ip, after.1)?;
            let was = was.unwrap_or(Action::None);
            (was != will).then(|| pb::VerdictChange {
                class,
                exe,
                destination: ip.to_string(),
                country: g.country,
                before: was as i32,
                after: will as i32,
                flows: g.sockets.len() as u64 + g.unnamed,
                last_seen_unix_ns: g.last,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.flows
            .cmp(&a.flows)
            .then_with(|| a.destination.cmp(&b.destination))
    });
    (out, replayed)
}
