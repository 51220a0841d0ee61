//! The benchmark's local destination: an address from the RFC 2544
//! benchmarking range added to `lo` (these kernels have no dummy interfaces),
//! and a listener that accepts and drops connections. Not 127/8: loopback is
//! exempt from judging, so it would not measure the verdict lookup.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

const IFACE: &str = "lo";

/// An address on `lo`, removed on drop.
pub struct BenchAddress {
    pub addr: Ipv4Addr,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl BenchAddress {
    pub fn create() -> BenchAddress {
        let addr = Ipv4Addr::new(198, 18, 0, 1);
        let cidr = format!("{addr}/32");
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", IFACE])
            .output();
        assert!(
            ip(&["addr", "add", &cidr, "dev", IFACE]),
            "adding {cidr} to {IFACE}"
        );
        BenchAddress { addr }
    }
}

impl Drop for BenchAddress {
    fn drop(&mut self) {
        let cidr = format!("{}/32", self.addr);
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", IFACE])
            .output();
    }
}

/// Accepts connections and drops them.
pub struct Sink {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    pub fn start(bind: SocketAddr) -> Sink {
        Sink::serve(TcpListener::bind(bind).expect("bench listener"))
    }

    /// Accepts and drops the connections of a listener bound already (in
    /// another network namespace, say).
    pub fn serve(listener: TcpListener) -> Sink {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = Some(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        }));
        Sink { addr, stop, thread }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
