pub mod agent;
pub mod answers;
pub mod bench;
pub mod browser;
pub mod cgroup;
pub mod collector;
pub mod database;
pub mod deadline;
pub mod dnsmasq;
pub mod http;
pub mod netns;
pub mod postgres;
pub use residency_pki as pki;
pub mod privilege;
pub mod probe;
pub mod rsyslog;
pub mod scenario;
pub mod sensor;
pub mod slot;
pub mod temp;

/// Polls `f` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
