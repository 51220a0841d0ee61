//! Worker processes: one per side, each in its own cgroup, doing connects on
//! request and reporting how long they took.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use crate::harness::cgroup::TestCgroup;

/// The parent's handle on a worker.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts `sensor-bench worker ADDR` inside `cgroup`.
    pub fn start(cgroup: &TestCgroup, target: SocketAddr) -> Worker {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["worker", &target.to_string()]);
        let mut child = cgroup
            .command(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a worker");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Worker {
            child,
            stdin,
            stdout,
        }
    }

    /// Has the worker do `n` connects; returns the total ns.
    pub fn run(&mut self, n: usize) -> u64 {
        writeln!(self.stdin, "{n}").expect("writing to worker");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading worker");
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("worker said {line:?}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connect()+close() with SO_LINGER 0 (RST on close: no TIME_WAIT).
fn connect_once(target: SocketAddr) {
    let s = TcpStream::connect(target).expect("bench connect");
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option struct for the call's duration.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

/// The worker side: reads counts from stdin, answers with elapsed ns.
pub fn serve() {
    let target: SocketAddr = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .expect("worker ADDR");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(n) = line.unwrap_or_default().trim().parse::<usize>() else {
            break;
        };
        let t = Instant::now();
        for _ in 0..n {
            connect_once(target);
        }
        let _ = writeln!(out, "{}", t.elapsed().as_nanos());
        let _ = out.flush();
    }
}
