//! Violation log lines, folded like the kernel folds records: the first
//! violation of a process to a destination (with one action) in a window is
//! logged at once; repeats within the window are counted and logged as one
//! "repeated" line when the window ends. A service that calls a denied
//! endpoint a thousand times a second writes two lines per window, not a
//! thousand (every violation still goes to the spool, the history and the
//! metrics).

use std::{
    collections::HashMap,
    hash::BuildHasher,
    time::{Duration, Instant},
};

use residency_proto::{agent::v1 as pb, records::Label};
use tracing::info;

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Keys kept at most; past this, violations are logged one line each until
/// the next flush frees room (never dropped from the log).
const MAX_KEYS: usize = 65_536;

struct Window {
    opened: Instant,
    repeats: u64,
    /// The first violation's fields, for the "repeated" line.
    pid: u32,
    comm: String,
    kind: pb::FlowKind,
    remote: String,
    country: String,
    classes: Vec<String>,
    action: pb::Action,
}

/// Open windows by (pid, kind, remote, action).
#[derive(Default)]
pub struct ViolationLog {
    open: HashMap<u64, Window>,
    hasher: std::collections::hash_map::RandomState,
}

fn line(f: &pb::Flow) {
    info!(target: "violation", pid = f.pid, comm = %f.comm, kind = %f.kind().label(), remote = %f.remote, country = %f.remote_country, classes = ?f.classes, action = %f.action().label(), count = f.count, "violation");
}

impl ViolationLog {
    fn key(&self, f: &pb::Flow) -> u64 {
        self.hasher.hash_one((f.pid, &f.kind, &f.remote, &f.action))
    }

    /// Logs `f`, or counts it when its window is open.
    pub fn record(&mut self, f: &pb::Flow, now: Instant) {
        let key = self.key(f);
        if let Some(w) = self.open.get_mut(&key)
            && now.duration_since(w.opened) < WINDOW
        {
            w.repeats += u64::from(f.count.max(1));
            return;
        }
        if let Some(old) = self.open.remove(&key) {
            repeated(&old);
        }
        line(f);
        if self.open.len() >= MAX_KEYS {
            return;
        }
        self.open.insert(
            key,
            Window {
                opened: now,
                repeats: 0,
                pid: f.pid,
                comm: f.comm.clone(),
                kind: f.kind(),
                remote: f.remote.clone(),
                country: f.remote_country.clone(),
                classes: f.classes.clone(),
                action: f.action(),
            },
        );
    }

    /// Ends the windows older than [`WINDOW`]: each with repeats gets its
    /// "repeated" line.
    pub fn flush(&mut self, now: Instant) {
        self.open.retain(|_, w| {
            if now.duration_since(w.opened) < WINDOW {
                return true;
            }
            repeated(w);
            false
        });
    }

    /// Windows open now.
    #[cfg(test)]
    fn open_windows(&self) -> usize {
        self.open.len()
    }
}

fn repeated(w: &Window) {
    if w.repeats == 0 {
        return;
    }
    info!(target: "violation", pid = w.pid, comm = %w.comm, kind = %w.kind.label(), remote = %w.remote, country = %w.country, classes = ?w.classes, action = %w.action.label(), count = w.repeats, window_s = WINDOW.as_secs(), "violation repeated");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pid: u32, remote: &str) -> pb::Flow {
        pb::Flow {
            pid,
            kind: pb::FlowKind::Connect as i32,
            remote: remote.into(),
            action: pb::Action::Reported as i32,
            count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn repeats_fold_into_the_window() {
        let mut log = ViolationLog::default();
        let t = Instant::now();
        for i in 0..100 {
            log.record(&v(1, "203.0.113.2:443"), t + Duration::from_millis(i));
        }
        log.record(&v(2, "203.0.113.2:443"), t);
        log.record(&v(1, "203.0.113.9:443"), t);
        assert_eq!(log.open_windows(), 3);
        let key = log.key(&v(1, "203.0.113.2:443"));
        assert_eq!(log.open[&key].repeats, 99);
        log.flush(t + Duration::from_secs(5));
        assert_eq!(log.open_windows(), 3);
        log.flush(t + WINDOW);
        assert_eq!(log.open_windows(), 0);
        // A new window after the old one ended starts with a line of its own.
        log.record(&v(1, "203.0.113.2:443"), t + WINDOW * 2);
        assert_eq!(log.open[&key].repeats, 0);
    }
}
