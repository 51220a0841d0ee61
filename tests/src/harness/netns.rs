//! Remote hosts: network namespaces joined to the host by veth pairs, with fixture
//! addresses that stand for other jurisdictions.
//!
//! Fixture addresses come from the documentation ranges (RFC 5737, RFC 3849), so
//! nothing here can ever reach a real host; each slot owns a /30 and a /64:
//!
//! | host      | IPv4 (slot N)            | IPv6 (slot N)              |
//! |-----------|--------------------------|----------------------------|
//! | Frankfurt | 198.51.100.(4N+2)        | 2001:db8:de:N::2           |
//! | Virginia  | 203.0.113.(4N+2)         | 2001:db8:a5:N::2           |
//!
//! The host's side of each pair has `.4N+1` / `::1`.

use std::{
    fs::File,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use super::slot::Slot;

/// Prefix of every network namespace the harness creates.
pub const PREFIX: &str = "rs-";

/// Which fixture jurisdiction a host stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// "Frankfurt": inside the EU.
    Frankfurt,
    /// "Virginia": outside the EU.
    Virginia,
}

impl Place {
    fn tag(self) -> &'static str {
        match self {
            Place::Frankfurt => "fra",
            Place::Virginia => "iad",
        }
    }

    /// (host side, remote side) IPv4 addresses for slot `n`.
    pub fn v4(self, n: u8) -> (Ipv4Addr, Ipv4Addr) {
        let base = match self {
            Place::Frankfurt => [198, 51, 100],
            Place::Virginia => [203, 0, 113],
        };
        let a = 4 * n;
        (
            Ipv4Addr::new(base[0], base[1], base[2], a + 1),
            Ipv4Addr::new(base[0], base[1], base[2], a + 2),
        )
    }

    /// (host side, remote side) IPv6 addresses for slot `n`.
    pub fn v6(self, n: u8) -> (Ipv6Addr, Ipv6Addr) {
        let group = match self {
            Place::Frankfurt => 0xde,
            Place::Virginia => 0xa5,
        };
        let net = |last| Ipv6Addr::new(0x2001, 0xdb8, group, u16::from(n), 0, 0, 0, last);
        (net(1), net(2))
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip(8) (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// One remote host.
#[derive(Debug)]
pub struct RemoteHost {
    pub place: Place,
    /// Network namespace name (`ip netns exec NAME …`).
    pub netns: String,
    /// The host's end of the veth pair.
    pub veth: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The host's own address on the link to this remote (for inbound tests).
    pub host_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
}

impl RemoteHost {
    fn create(place: Place, slot: u8) -> RemoteHost {
        let netns = format!("{PREFIX}{}-{slot}", place.tag());
        let veth = format!("rs{}{slot}", &place.tag()[..1]);
        Self::create_named(place, netns, veth, place.v4(slot), place.v6(slot))
    }

    /// A remote host with its own names and (host side, remote side)
    /// addresses, each pair in one /30 (IPv4) and /64 (IPv6). Anything with
    /// these names is removed first (left over from a holder that died).
    pub fn create_named(
        place: Place,
        netns: String,
        veth: String,
        (h4, r4): (Ipv4Addr, Ipv4Addr),
        (h6, r6): (Ipv6Addr, Ipv6Addr),
    ) -> RemoteHost {
        let peer = format!("{veth}p");
        ip_quiet(&["netns", "del", &netns]);
        ip_quiet(&["link", "del", &veth]);
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &netns]);
        ip(&["addr", "add", &format!("{h4}/30"), "dev", &veth]);
        ip(&["addr", "add", &format!("{h6}/64"), "dev", &veth, "nodad"]);
        ip(&["link", "set", &veth, "up"]);
        let ns = |args: &[&str]| {
            let mut full = vec!["-n", netns.as_str()];
            full.extend_from_slice(args);
            ip(&full);
        };
        ns(&["addr", "add", &format!("{r4}/30"), "dev", &peer]);
        ns(&["addr", "add", &format!("{r6}/64"), "dev", &peer, "nodad"]);
        ns(&["link", "set", &peer, "up"]);
        ns(&["link", "set", "lo", "up"]);
        RemoteHost {
            place,
            netns,
            veth,
            v4: r4,
            v6: r6,
            host_v4: h4,
            host_v6: h6,
        }
    }

    /// The remote's address in the given family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }

    /// Runs `f` on a thread that has entered this host's network namespace:
    /// sockets it creates belong to the remote host.
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.netns);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread inside the netns panicked")
    }

    /// A non-blocking TCP listener on the remote host, and its address.
    fn tcp_listener(&self, v6: bool) -> (TcpListener, SocketAddr) {
        let ip = self.addr(v6);
        let listener = self
            .inside(move || TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind tcp in netns"));
        let addr = listener.local_addr().expect("local_addr");
        listener.set_nonblocking(true).expect("nonblocking");
        (listener, addr)
    }

    /// A TCP listener on the remote host that counts the connections it accepts.
    pub fn tcp_server(&self, v6: bool) -> Server {
        let (listener, addr) = self.tcp_listener(v6);
        Server::spawn(addr, move |count, stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 64];
                        let _ = s.read(&mut buf);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    /// A TCP server on the remote host that keeps every connection open and
    /// counts the bytes that arrive on all of them (`received`).
    pub fn tcp_hold_server(&self, v6: bool) -> Server {
        let (listener, addr) = self.tcp_listener(v6);
        Server::spawn(addr, move |count, stop| {
            let mut open: Vec<std::net::TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    open.push(s);
                }
                let mut buf = [0u8; 64];
                for s in &mut open {
                    if let Ok(n) = s.read(&mut buf) {
                        count.fetch_add(n, Ordering::SeqCst);
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    }

    /// A UDP socket on the remote host that counts the datagrams it receives.
    pub fn udp_server(&self, v6: bool) -> Server {
        let ip = self.addr(v6);
        let sock = self
            .inside(move || UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp in netns"));
        let addr = sock.local_addr().expect("local_addr");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        Server::spawn(addr, move |count, stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    }

    /// A UDP socket on the remote host that is never read: once its receive
    /// buffer is full the kernel drops what arrives without waking anyone,
    /// so a load generator pays for sending, not for a receiver (the
    /// delivery benchmark's destination). Dropping the socket closes it.
    pub fn udp_sink(&self, v6: bool) -> UdpSocket {
        let ip = self.addr(v6);
        self.inside(move || UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp in netns"))
    }

    /// Captures every packet that reaches this host (an AF_PACKET socket in
    /// its namespace), so a test can assert that no byte of a marker left.
    pub fn sniffer(&self) -> Sniffer {
        let fd = self.inside(|| {
            // SAFETY: plain syscall; the fd is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                )
            };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a fresh fd we own.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
        });
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let packets = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, st) = (packets.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: valid fd and buffer.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    let mut v = p.lock().expect("sniffer lock");
                    if v.len() < 100_000 {
                        v.push(buf[..n as usize].to_vec());
                    }
                }
            }
        });
        Sniffer {
            packets,
            stop,
            thread: Some(thread),
        }
    }

    /// A command that runs inside this host's network namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        // Deleting the namespace destroys the peer, which destroys our end.
        ip_quiet(&["netns", "del", &self.netns]);
        ip_quiet(&["link", "del", &self.veth]);
    }
}

/// A listener on a remote host, counting what reaches it.
pub struct Server {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(
        addr: SocketAddr,
        body: impl FnOnce(Arc<AtomicUsize>, Arc<AtomicBool>) + Send + 'static,
    ) -> Server {
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = Some(thread::spawn(move || body(c, s)));
        Server {
            addr,
            count,
            stop,
            thread,
        }
    }

    /// How many connections (TCP) or datagrams (UDP) arrived so far.
    pub fn received(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for at least `n` arrivals; returns the count.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        while self.received() < n && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        self.received()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every packet a remote host received since the sniffer started.
pub struct Sniffer {
    packets: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    /// How many captured packets contain `marker`.
    pub fn count(&self, marker: &[u8]) -> usize {
        self.packets
            .lock()
            .expect("sniffer lock")
            .iter()
            .filter(|p| p.windows(marker.len()).any(|w| w == marker))
            .count()
    }

    /// How many captured IPv4 packets to `dst` contain `marker` (Ethernet
    /// frames: the destination address at bytes 30..34).
    pub fn count_to(&self, marker: &[u8], dst: std::net::Ipv4Addr) -> usize {
        self.packets
            .lock()
            .expect("sniffer lock")
            .iter()
            .filter(|p| p.len() > 34 && p[12..14] == [0x08, 0x00] && p[30..34] == dst.octets())
            .filter(|p| marker.is_empty() || p.windows(marker.len()).any(|w| w == marker))
            .count()
    }

    /// Waits up to `timeout` for a packet containing `marker`; returns how
    /// many were seen.
    pub fn wait_for(&self, marker: &[u8], timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let n = self.count(marker);
            if n > 0 || std::time::Instant::now() >= deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Frankfurt and a Virginia host on one slot.
pub struct TestNet {
    pub frankfurt: RemoteHost,
    pub virginia: RemoteHost,
    // Dropped last: the slot stays ours until the hosts are gone.
    _slot: Slot,
}

impl TestNet {
    pub fn create() -> TestNet {
        let slot = Slot::claim();
        let frankfurt = RemoteHost::create(Place::Frankfurt, slot.index);
        let virginia = RemoteHost::create(Place::Virginia, slot.index);
        TestNet {
            frankfurt,
            virginia,
            _slot: slot,
        }
    }
}

/// Names of harness network namespaces that currently exist (for leak checks).
pub fn existing() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}
