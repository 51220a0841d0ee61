//! systemd's service notification protocol (`Type=notify`): the unit is
//! "started" only once the daemon says READY (its listeners bound, its
//! policy or database ready), STOPPING while it shuts down, and with
//! `WatchdogSec=` a WATCHDOG ping at half the interval, sent from the
//! daemon's main runtime (a wedged runtime stops pinging and systemd
//! restarts it). Without `NOTIFY_SOCKET` (not started by systemd) every call
//! does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "notifying systemd failed");
    }
}

/// Tells systemd the daemon serves now, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is shutting down.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A status line (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// With `WatchdogSec=` set on the unit: pings systemd at half the interval,
/// on the calling runtime, for as long as it runs.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    debug!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog on"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}
