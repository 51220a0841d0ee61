//! Waits with a deadline: every wait in the harness ends, and when it ends
//! without what it waited for, the panic says what that was (and the
//! daemon's log tail, where there is one), so a stuck test names itself.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// How long a CLI call (sensorctl, collectorctl) may take before the test
/// fails: far more than any answer needs, far less than nextest's limit.
pub const CLI: Duration = Duration::from_secs(60);

/// How long a daemon has to exit after SIGTERM before the harness kills it
/// and fails the test (a graceful stop is bounded at a few seconds).
pub const STOP: Duration = Duration::from_secs(15);

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits up to `limit` for `child` to exit; `None` when it is still running.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // Already reaped elsewhere: nothing left to wait for.
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a [`terminate`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after SIGTERM (or had exited before).
    Exited(ExitStatus),
    /// It was already reaped: nothing to stop.
    Gone,
    /// Still running after the limit: killed with SIGKILL.
    Killed,
}

/// Sends SIGTERM and waits up to `limit`; on expiry sends SIGKILL (the
/// caller fails the test with the log).
pub fn terminate(child: &mut Child, limit: Duration) -> Stopped {
    match child.try_wait() {
        Ok(Some(status)) => return Stopped::Exited(status),
        Ok(None) => {}
        Err(_) => return Stopped::Gone,
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    match wait_child(child, limit) {
        Some(status) => Stopped::Exited(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Stopped::Killed
        }
    }
}

/// Runs `cmd` to completion like [`Command::output`], but kills it and
/// panics after `limit`, naming the command and `context` (a daemon's log
/// tail, say).
pub fn output_within(
    cmd: &mut Command,
    limit: Duration,
    context: impl FnOnce() -> String,
) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    // Readers on threads: a child that fills a pipe must not block its exit.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let Some(status) = wait_child(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "timed out after {limit:?}: {what} did not finish (killed)\n{}",
            context()
        );
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Awaits `fut` for at most `limit`; panics naming `what` on expiry.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_hangs_is_killed_and_named() {
        let r = std::panic::catch_unwind(|| {
            output_within(
                Command::new("sleep").arg("30"),
                Duration::from_millis(200),
                || "the context".into(),
            )
        });
        let msg = *r
            .expect_err("it panics")
            .downcast::<String>()
            .expect("a message");
        assert!(
            msg.contains("sleep") && msg.contains("the context"),
            "{msg}"
        );
    }

    #[test]
    fn a_command_that_finishes_returns_its_output() {
        let o = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
            String::new,
        );
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
    }

    #[test]
    fn terminate_kills_what_ignores_sigterm() {
        let mut c = Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .expect("sh");
        // Let the shell install its trap.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            terminate(&mut c, Duration::from_millis(300)),
            Stopped::Killed
        );
        assert!(c.try_wait().expect("reaped").is_some());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
