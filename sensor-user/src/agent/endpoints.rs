//! Connect records wait briefly for their local endpoint.
//!
//! The connect hook runs before the kernel picks the local address and port,
//! so a connect record leaves the kernel without them and without the
//! flow's Community ID. The flow's first send reports them
//! (`FlowKind::Endpoint`, same cookie); a connect record that can get one is
//! held here until it arrives, at most [`HOLD`], and released with the
//! endpoint filled in. Records are released in the order they were held; a
//! record whose flow never sends (or is denied: it never gets a port) goes
//! out without the endpoint, as before. Everything held is released at
//! shutdown.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use sensor_common::{
    flow::{FlowEvent, FlowKind},
    net::{IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE},
    policy::action,
};

use super::enrich::Kept;

/// How long a connect record waits for its flow's first send.
pub const HOLD: Duration = Duration::from_millis(200);

/// Endpoints remembered for records still to come (an endpoint that arrived
/// before its connect record, which the reader drained in another batch):
/// at most this many, each for [`REMEMBER`].
const KNOWN_MAX: usize = 16_384;
const REMEMBER: Duration = Duration::from_secs(5);

/// A flow's local address and port, as the kernel reported them.
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    addr: [u8; 16],
    port: u16,
    at: Instant,
}

/// Held connect records and the endpoints that complete them.
#[derive(Default)]
pub struct Held {
    queue: VecDeque<(Kept, Instant)>,
    /// The cookies of the records in `queue`.
    cookies: HashSet<u64>,
    known: HashMap<u64, Endpoint>,
}

impl Held {
    /// Whether `ev` is a connect record an endpoint record will complete:
    /// one flow (not a folded repeat), not denied, of a protocol with ports,
    /// without a local port yet.
    pub fn wants(ev: &FlowEvent) -> bool {
        ev.flow_kind() == Some(FlowKind::Connect)
            && ev.count == 1
            && ev.cookie != 0
            && ev.local_port == 0
            && ev.action != action::DENIED
            && matches!(ev.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE)
    }

    /// Notes an endpoint record.
    pub fn learn(&mut self, ev: &FlowEvent, now: Instant) {
        if ev.cookie == 0 || ev.local_port == 0 {
            return;
        }
        if self.known.len() >= KNOWN_MAX {
            self.known
                .retain(|_, e| now.duration_since(e.at) < REMEMBER);
            if self.known.len() >= KNOWN_MAX {
                self.known.clear();
            }
        }
        self.known.insert(
            ev.cookie,
            Endpoint {
                addr: ev.local_addr,
                port: ev.local_port,
                at: now,
            },
        );
    }

    /// Holds `kept` (one [`Held::wants`]) until its endpoint arrives.
    pub fn hold(&mut self, kept: Kept, now: Instant) {
        self.cookies.insert(kept.ev.cookie);
        self.queue.push_back((kept, now + HOLD));
    }

    /// Whether a record of flow `cookie` is held (its close record must not
    /// overtake it).
    pub fn holds(&self, cookie: u64) -> bool {
        !self.cookies.is_empty() && self.cookies.contains(&cookie)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The held records that are complete, or waited long enough (every one
    /// when `all`), in the order they were held.
    pub fn release(&mut self, now: Instant, all: bool) -> Vec<Kept> {
        let mut out = Vec::new();
        while let Some((kept, deadline)) = self.queue.front_mut() {
            let found = self.known.remove(&kept.ev.cookie);
            if let Some(e) = found {
                kept.ev.local_addr = e.addr;
                kept.ev.local_port = e.port;
            } else if !all && now < *deadline {
                break;
            }
            let (kept, _) = self.queue.pop_front().expect("front");
            self.cookies.remove(&kept.ev.cookie);
            out.push(kept);
        }
        if self.queue.is_empty() && !self.known.is_empty() {
            self.known
                .retain(|_, e| now.duration_since(e.at) < REMEMBER);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn connect(cookie: u64) -> Kept {
        let mut ev = FlowEvent::ZERO;
        ev.kind = FlowKind::Connect as u8;
        ev.count = 1;
        ev.cookie = cookie;
        ev.protocol = IPPROTO_TCP;
        ev.remote_port = 443;
        Kept {
            ev,
            time_unix_ns: 0,
            exe: Arc::from("/usr/bin/x"),
            country: None,
            site: None,
            names: Arc::default(),
            workload: Arc::default(),
            remote_name: None,
        }
    }

    fn endpoint(cookie: u64, port: u16) -> FlowEvent {
        let mut ev = FlowEvent::ZERO;
        ev.kind = FlowKind::Endpoint as u8;
        ev.cookie = cookie;
        ev.local_port = port;
        ev.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev
    }

    #[test]
    fn only_single_undenied_port_flows_without_a_local_port_are_held() {
        let c = connect(1).ev;
        assert!(Held::wants(&c));
        let mut folded = c;
        folded.count = 3;
        let mut denied = c;
        denied.action = action::DENIED;
        let mut known = c;
        known.local_port = 5000;
        let mut icmp = c;
        icmp.protocol = 1;
        let mut close = c;
        close.kind = FlowKind::Close as u8;
        for ev in [folded, denied, known, icmp, close] {
            assert!(!Held::wants(&ev), "{ev:?}");
        }
    }

    #[test]
    fn a_held_record_gets_its_endpoint_and_keeps_its_place() {
        let t = Instant::now();
        let mut h = Held::default();
        h.hold(connect(1), t);
        h.hold(connect(2), t);
        assert!(h.holds(1) && h.holds(2) && !h.holds(3));
        // The second flow sent first: nothing overtakes the first.
        h.learn(&endpoint(2, 6000), t);
        assert!(h.release(t, false).is_empty());
        h.learn(&endpoint(1, 5000), t);
        let out = h.release(t, false);
        let got: Vec<(u64, u16)> = out.iter().map(|k| (k.ev.cookie, k.ev.local_port)).collect();
        assert_eq!(got, [(1, 5000), (2, 6000)]);
        assert_eq!(out[0].ev.local_addr[..4], [10, 0, 0, 1]);
        assert!(h.is_empty() && !h.holds(1));
    }

    #[test]
    fn a_record_whose_flow_never_sends_goes_out_after_the_hold() {
        let t = Instant::now();
        let mut h = Held::default();
        h.hold(connect(1), t);
        assert!(h.release(t + HOLD / 2, false).is_empty());
        let out = h.release(t + HOLD, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ev.local_port, 0);
        // At shutdown everything goes, waited or not.
        h.hold(connect(2), t);
        assert_eq!(h.release(t, true).len(), 1);
    }

    #[test]
    fn an_endpoint_read_before_its_connect_record_still_completes_it() {
        let t = Instant::now();
        let mut h = Held::default();
        h.learn(&endpoint(7, 7000), t);
        h.hold(connect(7), t);
        let out = h.release(t, false);
        assert_eq!(out[0].ev.local_port, 7000);
        // An endpoint without a port, or of no flow, is not remembered.
        h.learn(&endpoint(8, 0), t);
        h.hold(connect(8), t);
        assert!(h.release(t, false).is_empty());
    }
}
