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
        self.ask(&n.to_string())
    }

    /// Has the worker open a UDP socket (on all addresses, a port of the
    /// kernel's choice) that it reads and discards datagrams from, as a
    /// resolver's client does with answers; returns its port.
    pub fn open_udp(&mut self) -> u16 {
        let port = self.ask("udp");
        u16::try_from(port).unwrap_or_else(|_| panic!("worker's UDP port {port}"))
    }

    /// Sends one command line; returns the number the worker answers.
    fn ask(&mut self, command: &str) -> u64 {
        writeln!(self.stdin, "{command}").expect("writing to worker");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading worker");
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("worker said {line:?} to {command:?}"))
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

/// Binds a UDP socket and reads it in a thread of its own until the process
/// ends; returns the port.
fn udp_reader() -> u16 {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("binding the worker's UDP socket");
    let port = socket.local_addr().expect("local_addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while socket.recv(&mut buf).is_ok() {}
    });
    port
}

/// The worker side: reads commands from stdin (a count: that many connects,
/// answered with the elapsed ns; `udp`: a UDP socket read in the background,
/// answered with its port).
pub fn serve() {
    let target: SocketAddr = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .expect("worker ADDR");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.unwrap_or_default();
        if line.trim() == "udp" {
            let _ = writeln!(out, "{}", udp_reader());
            let _ = out.flush();
            continue;
        }
        let Ok(n) = line.trim().parse::<usize>() else {
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
