//! Listeners that a flood of clients cannot take down, for every gRPC port of
//! both daemons (TCP and Unix sockets).
//!
//! - At most [`Limits::max_connections`] connections at once, and at most
//!   [`Limits::per_peer`] from one peer (source address; uid on a Unix socket,
//!   root exempt): a connection beyond either is closed at once, so file
//!   descriptors stay for the daemon's own work (spool, maps, /proc).
//! - A connection that sends nothing for [`Limits::idle`] is closed: a client
//!   that opens a socket and never speaks (or never finishes TLS) does not hold
//!   its slot. Healthy idle HTTP/2 clients answer the server's keepalive pings,
//!   which counts as speaking (see [`KEEPALIVE`]).
//! - Accept errors (EMFILE, ENFILE, ENOMEM…) back off (10 ms doubling to 1 s)
//!   instead of spinning or ending the listener, and are logged once per
//!   streak.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The keepalive ping interval servers using these listeners should set
/// (`Server::http2_keepalive_interval`): well below [`Limits::idle`].
pub const KEEPALIVE: Duration = Duration::from_secs(20);

/// How much a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub per_peer: usize,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // Two listeners of a daemon stay under 1,024 descriptors together
        // (systemd's default soft limit), with room for the daemon's files.
        Limits {
            max_connections: 256,
            per_peer: 32,
            idle: Duration::from_secs(60),
        }
    }
}

/// Who a connection comes from, for the per-peer limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Peer {
    Ip(IpAddr),
    Uid(u32),
    /// Not limited per peer (root on a Unix socket, unknown credentials).
    Exempt,
}

/// Live connections per peer.
#[derive(Debug, Default)]
struct PeerCounts(Mutex<HashMap<Peer, usize>>);

impl PeerCounts {
    fn try_add(&self, p: &Peer, limit: usize) -> bool {
        if *p == Peer::Exempt {
            return true;
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(p.clone()).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, p: &Peer) {
        if *p == Peer::Exempt {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(p) {
            *n -= 1;
            if *n == 0 {
                m.remove(p);
            }
        }
    }
}

/// An accepted connection holding its slots, closed after a silence.
pub struct Guarded<IO> {
    io: IO,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    peer: Peer,
    peers: Arc<PeerCounts>,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Drop for Guarded<IO> {
    fn drop(&mut self) {
        self.peers.remove(&self.peer);
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What the guard needs of a listener.
trait Listener: Send + Sync + 'static {
    type Io: Send + 'static;
    /// For log lines.
    fn name(&self) -> String;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
    /// Who a connection comes from.
    fn peer(io: &Self::Io) -> Peer;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    fn name(&self) -> String {
        self.local_addr().map(|a| a.to_string()).unwrap_or_default()
    }
    async fn accept(&self) -> io::Result<TcpStream> {
        let (s, _) = TcpListener::accept(self).await?;
        // Best effort: requests are small, latency matters.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
    fn peer(s: &TcpStream) -> Peer {
        s.peer_addr().map_or(Peer::Exempt, |a| Peer::Ip(a.ip()))
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    fn name(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_default()
    }
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
    fn peer(s: &UnixStream) -> Peer {
        match s.peer_cred() {
            Ok(c) if c.uid() == 0 => Peer::Exempt,
            Ok(c) => Peer::Uid(c.uid()),
            Err(_) => Peer::Exempt,
        }
    }
}

/// The remote address of an accepted TCP connection (0.0.0.0:0 when the
/// kernel no longer knows it).
pub fn remote_addr(c: &Guarded<TcpStream>) -> std::net::SocketAddr {
    c.io.peer_addr()
        .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Accepts on `listener` forever, admitting within `limits`.
fn run<L: Listener>(listener: L, limits: Limits) -> ReceiverStream<io::Result<Guarded<L::Io>>> {
    let name = listener.name();
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(PeerCounts::default());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        let mut failing = false;
        let mut refusing = false;
        loop {
            let io = match listener.accept().await {
                Ok(io) => {
                    backoff = Duration::from_millis(10);
                    failing = false;
                    io
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(listener = %name, error = %e, "accepting a connection failed; backing off (up to 1 s) while it does");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            // Refusals are logged once per streak, at warn: a fleet that
            // outgrew the limit must be seen, a flood must not fill the log.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if !refusing {
                    tracing::warn!(listener = %name, limit = limits.max_connections, "connection limit reached; closing new connections until one ends (collectord: --max-connections)");
                    refusing = true;
                }
                continue;
            };
            let peer = L::peer(&io);
            if !peers.try_add(&peer, limits.per_peer) {
                if !refusing {
                    tracing::warn!(listener = %name, ?peer, limit = limits.per_peer, "per-peer connection limit reached; closing its new connections until one ends (collectord: --max-connections-per-peer)");
                    refusing = true;
                }
                continue;
            }
            refusing = false;
            let g = Guarded {
                io,
                idle: limits.idle,
                deadline: Box::pin(tokio::time::sleep(limits.idle)),
                peer,
                peers: peers.clone(),
                _slot: slot,
            };
            if tx.send(Ok(g)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A guarded TCP listener.
pub fn tcp(
    listener: TcpListener,
    limits: Limits,
) -> ReceiverStream<io::Result<Guarded<TcpStream>>> {
    run(listener, limits)
}

/// A guarded Unix socket listener (per-peer: by uid, root exempt).
pub fn unix(
    listener: UnixListener,
    limits: Limits,
) -> ReceiverStream<io::Result<Guarded<UnixStream>>> {
    run(listener, limits)
}

/// Binds `addr` and guards it.
pub async fn bind_tcp(
    addr: std::net::SocketAddr,
    limits: Limits,
) -> io::Result<ReceiverStream<io::Result<Guarded<TcpStream>>>> {
    Ok(tcp(TcpListener::bind(addr).await?, limits))
}

/// Raises this process's soft limit of open files to its hard limit (a
/// daemon started by hand gets the shell's 1,024; the units set 65,536).
/// Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}
