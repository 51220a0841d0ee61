//! Addresses → the names processes resolved them from, until the answers'
//! TTL passes.
//!
//! Kept per process (what this process asked) and host-wide (what any tagged
//! process asked: an address handed from one process to another, or resolved
//! through a local cache whose own lookup the sensor did not see). A record
//! takes its process's entry first. Each entry lives for its TTL plus
//! [`GRACE`]: the agent reads records up to a few hundred milliseconds after
//! they happened, and a TTL of 0 (common for local data) must still name the
//! connect that follows it. Bounded: beyond [`MAX_ENTRIES`] expired entries
//! go first, then the oldest.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::Answer;

/// How long past its TTL an entry still names records.
pub const GRACE: Duration = Duration::from_secs(2);
/// Entries per table (per-process and host-wide each).
pub const MAX_ENTRIES: usize = 65_536;

/// The name an address was resolved from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub cnames: Vec<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    what: Arc<Resolved>,
    learned: Instant,
    expires: Instant,
}

/// The agent's table of resolved addresses.
#[derive(Default)]
pub struct NameCache {
    // foldhash: seeded per process, several times faster than std's
    // SipHash on these small keys; weaker against keys crafted by a server
    // we do not control, which the bound (`MAX_ENTRIES`) limits.
    per_process: foldhash::HashMap<(u32, IpAddr), Entry>,
    host: foldhash::HashMap<IpAddr, Entry>,
    learned: u64,
}

impl NameCache {
    /// Notes `answer`, which reached process `tgid` at `now`; returns the
    /// names it gave, shared (the name rules keep the same).
    pub fn learn(&mut self, tgid: u32, answer: &Answer, now: Instant) -> Arc<Resolved> {
        let what = Arc::new(Resolved {
            name: answer.name.clone(),
            cnames: answer.cnames.clone(),
        });
        for &(addr, ttl) in &answer.addrs {
            let entry = Entry {
                what: what.clone(),
                learned: now,
                expires: now + Duration::from_secs(u64::from(ttl)) + GRACE,
            };
            let addr = addr.to_canonical();
            insert(&mut self.per_process, (tgid, addr), entry.clone(), now);
            insert(&mut self.host, addr, entry, now);
        }
        self.learned += 1;
        what
    }

    /// The name process `tgid` resolved `addr` from, if an answer it (or,
    /// failing that, any tagged process) got is still in force at `now`.
    pub fn lookup(&self, tgid: u32, addr: IpAddr, now: Instant) -> Option<Arc<Resolved>> {
        if self.host.is_empty() {
            return None;
        }
        let addr = addr.to_canonical();
        let live = |e: &Entry| (now < e.expires).then(|| e.what.clone());
        self.per_process
            .get(&(tgid, addr))
            .and_then(live)
            .or_else(|| self.host.get(&addr).and_then(live))
    }

    /// Drops what expired by `now` (called now and then: lookups ignore
    /// expired entries anyway).
    pub fn expire(&mut self, now: Instant) {
        self.per_process.retain(|_, e| now < e.expires);
        self.host.retain(|_, e| now < e.expires);
    }

    /// Entries held (per-process, host-wide) and answers learned in all.
    pub fn stats(&self) -> (usize, usize, u64) {
        (self.per_process.len(), self.host.len(), self.learned)
    }
}

fn insert<K: std::hash::Hash + Eq + Copy>(
    table: &mut foldhash::HashMap<K, Entry>,
    key: K,
    entry: Entry,
    now: Instant,
) {
    if table.len() >= MAX_ENTRIES && !table.contains_key(&key) {
        table.retain(|_, e| now < e.expires);
        if table.len() >= MAX_ENTRIES {
            // The oldest tenth goes: one sort per tenth of the table's inserts.
            let mut ages: Vec<Instant> = table.values().map(|e| e.learned).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 10];
            table.retain(|_, e| e.learned > cut);
        }
    }
    table.insert(key, entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, addr: &str, ttl: u32) -> Answer {
        Answer {
            name: name.into(),
            cnames: vec!["edge.cdn.test".into()],
            addrs: vec![(addr.parse().unwrap(), ttl)],
        }
    }

    #[test]
    fn a_process_sees_its_own_answer_first_then_the_hosts() {
        let t = Instant::now();
        let mut c = NameCache::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(c.lookup(1, ip, t), None);
        c.learn(1, &answer("a.test", "192.0.2.1", 30), t);
        c.learn(2, &answer("b.test", "192.0.2.1", 30), t);
        assert_eq!(c.lookup(1, ip, t).unwrap().name, "a.test");
        assert_eq!(c.lookup(2, ip, t).unwrap().name, "b.test");
        // Another process: the host-wide entry (the latest answer).
        let other = c.lookup(3, ip, t).unwrap();
        assert_eq!((other.name.as_str(), other.cnames.len()), ("b.test", 1));
        // IPv4 seen through an IPv6 socket is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(c.lookup(1, mapped, t).unwrap().name, "a.test");
    }

    #[test]
    fn entries_end_with_their_ttl_and_grace() {
        let t = Instant::now();
        let mut c = NameCache::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        c.learn(1, &answer("a.test", "192.0.2.9", 0), t);
        // TTL 0 still names the connect that follows.
        assert!(c.lookup(1, ip, t + GRACE / 2).is_some());
        assert!(c.lookup(1, ip, t + GRACE).is_none());
        c.learn(1, &answer("a.test", "192.0.2.9", 5), t);
        assert!(c.lookup(1, ip, t + Duration::from_secs(5)).is_some());
        assert!(
            c.lookup(1, ip, t + Duration::from_secs(5) + GRACE)
                .is_none()
        );
        c.expire(t + Duration::from_secs(60));
        assert_eq!(c.stats().0 + c.stats().1, 0);
    }

    #[test]
    fn a_full_table_makes_room() {
        let t = Instant::now();
        let mut c = NameCache::default();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let a = Answer {
                name: "x.test".into(),
                cnames: vec![],
                addrs: vec![(IpAddr::from(i.to_be_bytes()), 300)],
            };
            c.learn(1, &a, t + Duration::from_micros(u64::from(i)));
        }
        let (p, h, _) = c.stats();
        assert!(p <= MAX_ENTRIES && h <= MAX_ENTRIES, "{p} {h}");
        // The latest is there.
        let last = IpAddr::from((MAX_ENTRIES as u32 + 9).to_be_bytes());
        assert!(c.lookup(1, last, t + Duration::from_secs(1)).is_some());
    }
}
