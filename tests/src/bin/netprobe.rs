//! netprobe: does network operations and prints what happened as one JSON line:
//! `{"pid":P,"tid":T,"errno":[E1,E2,…]}` — the process and thread that made the
//! calls, and one errno per operation (0 = success).
//!
//! Usage: netprobe [--wait-stdin] [--fork|--thread] OP TARGET [OP TARGET]…
//!
//! Operations:
//!   tcp-connect ADDR:PORT        connect, send 4 bytes, close
//!   udp-connect-send ADDR:PORT   connect a UDP socket, send one datagram
//!   udp-sendto ADDR:PORT         sendto on an unconnected UDP socket
//!   tcp-serve ADDR:PORT          listen, accept one connection, close
//!   tcp-collide ADDR:PORT        two TCP connections open at once whose socket
//!                                cookies name the same kernel flow slot; the
//!                                first sends 4 bytes, the second 8; prints
//!                                {"cookies":[FIRST,SECOND]} before closing both
//!   pause ANY                    print {"paused":true}, wait for a stdin line
//!                                (the test changes something meanwhile)
//!   tcp-open ADDR:PORT           connect and send 4 bytes; keep the connection
//!   tcp-send-held ANY            send 4 more bytes on the connection
//!                                tcp-open made (its errno: ECONNABORTED once
//!                                the agent closed it)
//!
//! Or: netprobe hold ADDR:PORT|PATH N
//!                                open N connections (TCP, or a Unix socket
//!                                path) that never send; prints {"held":K}
//!                                and keeps them until stdin closes
//! Or: netprobe resolve-connect DNS_ADDR:PORT NAME a|aaaa|a-tcp PORT [RETRY_MS [AGAIN_MS]]
//!                                a stub resolver: asks the server for NAME's
//!                                A or AAAA records over a connected UDP
//!                                socket (a-tcp: A over TCP), then tcp-connects to the first
//!                                address at PORT (errno 2, ENOENT, when the
//!                                answer has none). RETRY_MS: a connect refused
//!                                with EPERM is tried again every 100 µs for up
//!                                to that long (prints {"tries":N,"waited_us":U}
//!                                first). AGAIN_MS: then waits that long and
//!                                connects to the address once more (its errno
//!                                second)
//! Or: netprobe udp-hold          a UDP socket on all addresses, read and
//!                                discarded in the background (as a stub
//!                                resolver's); prints {"port":P}, then runs
//!                                each stdin line `OP ADDR:PORT` (printing
//!                                {"errno":E}) until stdin closes; the line
//!                                `received` prints {"received":N}, the
//!                                datagrams read so far
//! Or: netprobe fork-exit N       fork N children that exit at once
//! Or: netprobe udp-rate ADDR:PORT RATE SECONDS [BATCH]
//!                                sendto from one unconnected UDP socket, paced
//!                                at RATE datagrams/s, BATCH datagrams per
//!                                sendmmsg call (default 1: sendto);
//!                                prints {"sent":N,"errors":E}
//!
//! `--wait-stdin` waits for a line on stdin first (so a test can tag the process
//! before it acts); `--fork` makes a child process do the operations (the child
//! prints), `--thread` a new thread. IPv6 addresses are written [addr]:port; an
//! IPv4-mapped one ([::ffff:a.b.c.d]) makes a dual-stack socket talk IPv4.

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn unspecified(addr: &SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    }
}

thread_local! {
    /// Connections `tcp-open` keeps for later operations.
    static HELD: std::cell::RefCell<Vec<TcpStream>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn run_op(op: &str, addr: SocketAddr) -> i32 {
    let result = match op {
        "tcp-connect" => TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .and_then(|mut s| s.write_all(b"ping")),
        "udp-connect-send" => UdpSocket::bind(unspecified(&addr))
            .and_then(|s| s.connect(addr).map(|_| s))
            .and_then(|s| s.send(b"ping").map(|_| ())),
        "udp-sendto" => {
            UdpSocket::bind(unspecified(&addr)).and_then(|s| s.send_to(b"ping", addr).map(|_| ()))
        }
        "tcp-serve" => TcpListener::bind(addr).and_then(|l| {
            // Tell the test we listen, then accept one connection.
            println!("{{\"listening\":{}}}", l.local_addr()?.port());
            std::io::stdout().flush()?;
            let (mut s, _) = l.accept()?;
            let mut buf = [0u8; 4];
            let _ = s.read(&mut buf);
            Ok(())
        }),
        "tcp-collide" => tcp_collide(addr),
        "tcp-open" => {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).and_then(|mut s| {
                s.write_all(b"ping")?;
                HELD.with(|h| h.borrow_mut().push(s));
                Ok(())
            })
        }
        "tcp-send-held" => HELD.with(|h| match h.borrow_mut().last_mut() {
            Some(s) => s.write_all(b"pong").and_then(|()| s.flush()),
            None => Err(std::io::Error::other("tcp-send-held without tcp-open")),
        }),
        "pause" => {
            println!("{{\"paused\":true}}");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| ())
        }
        other => {
            eprintln!("netprobe: unknown operation {other:?}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => errno_of(&e),
    }
}

/// The socket's cookie (SO_COOKIE; the kernel assigns one on first ask).
fn cookie(fd: std::os::fd::RawFd) -> std::io::Result<u64> {
    let mut value = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `tcp-collide`: see the usage at the top.
fn tcp_collide(addr: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let slots = u64::from(sensor_common::flow::FLOW_SLOT_COUNT);
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let mut first = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    // Send at once: the test server closes a connection that stays silent.
    first.write_all(b"ping")?;
    let want = cookie(first.as_raw_fd())? % slots;
    // Cookies are handed out in increasing order: ask fresh sockets for theirs
    // until one lands on the first connection's slot.
    let mut second = None;
    for _ in 0..16 * slots {
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if cookie(s.as_raw_fd())? % slots == want {
            second = Some(s);
            break;
        }
    }
    let second = second.ok_or_else(|| std::io::Error::other("no cookie hit the slot"))?;
    second.connect_timeout(&addr.into(), Duration::from_secs(3))?;
    let mut second: TcpStream = second.into();
    second.write_all(b"pingpong")?;
    println!(
        "{{\"cookies\":[{},{}]}}",
        cookie(first.as_raw_fd())?,
        cookie(second.as_raw_fd())?
    );
    std::io::stdout().flush()
}

fn run_all(ops: &[(String, SocketAddr)]) -> (u32, Vec<i32>) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    (
        tid,
        ops.iter().map(|(op, addr)| run_op(op, *addr)).collect(),
    )
}

fn report(tid: u32, errnos: &[i32]) {
    let list: Vec<String> = errnos.iter().map(i32::to_string).collect();
    println!(
        "{{\"pid\":{},\"tid\":{tid},\"errno\":[{}]}}",
        std::process::id(),
        list.join(",")
    );
    let _ = std::io::stdout().flush();
}

/// `netprobe resolve-connect`: see the usage at the top.
fn resolve_connect(args: &[String]) {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    let usage = || -> ! {
        eprintln!(
            "usage: netprobe resolve-connect DNS_ADDR:PORT NAME a|aaaa|a-tcp PORT [RETRY_MS [AGAIN_MS]]"
        );
        std::process::exit(2);
    };
    let (args, extra) = args.split_at(args.len().min(5));
    let [_, server, name, kind, port] = args else {
        usage()
    };
    let ms = |i: usize| -> Option<Duration> {
        extra.get(i).map(|a| match a.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => usage(),
        })
    };
    let (retry, again) = (ms(0), ms(1));
    let (Ok(server), Ok(name), Ok(port)) = (
        server.parse::<SocketAddr>(),
        Name::from_ascii(name),
        port.parse::<u16>(),
    ) else {
        usage()
    };
    let (rtype, tcp) = match kind.as_str() {
        "a" => (RecordType::A, false),
        "aaaa" => (RecordType::AAAA, false),
        "a-tcp" => (RecordType::A, true),
        _ => usage(),
    };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let resolved = (|| -> std::io::Result<std::net::IpAddr> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name, rtype));
        let bytes = query.to_vec().map_err(std::io::Error::other)?;
        let reply = if tcp {
            // RFC 1035 4.2.2: each message after its 2-byte length.
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
            s.write_all(&[&len.to_be_bytes()[..], &bytes].concat())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut reply)?;
            reply
        } else {
            let sock = UdpSocket::bind(unspecified(&server))?;
            sock.connect(server)?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            sock.send(&bytes)?;
            let mut buf = [0u8; 1500];
            let n = sock.recv(&mut buf)?;
            buf[..n].to_vec()
        };
        let answer = Message::from_vec(&reply).map_err(std::io::Error::other)?;
        answer
            .answers
            .iter()
            .find_map(|r| match &r.data {
                RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                _ => None,
            })
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
    })();
    let errno = match resolved {
        Ok(ip) => {
            println!("{{\"resolved\":\"{ip}\"}}");
            let to = SocketAddr::new(ip, port);
            let start = Instant::now();
            let mut tries = 1u32;
            let mut errno = run_op("tcp-connect", to);
            if let Some(retry) = retry {
                while errno == libc::EPERM && start.elapsed() < retry {
                    std::thread::sleep(Duration::from_micros(100));
                    tries += 1;
                    errno = run_op("tcp-connect", to);
                }
                println!(
                    "{{\"tries\":{tries},\"waited_us\":{}}}",
                    start.elapsed().as_micros()
                );
            }
            match again {
                Some(after) => {
                    std::thread::sleep(after);
                    vec![errno, run_op("tcp-connect", to)]
                }
                None => vec![errno],
            }
        }
        Err(e) => vec![errno_of(&e)],
    };
    report(tid, &errno);
}

/// `netprobe fork-exit N`: forks N children, one after the other, each exiting
/// at once; prints how many were reaped. (Short-lived processes for the tag
/// lifetime test.)
fn fork_exit(args: &[String]) {
    let n: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: netprobe fork-exit N");
        std::process::exit(2);
    });
    let mut reaped = 0u32;
    for _ in 0..n {
        // SAFETY: the child calls only _exit.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            child if child > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                if unsafe { libc::waitpid(child, &mut status, 0) } == child {
                    reaped += 1;
                }
            }
            _ => break,
        }
    }
    println!("{{\"reaped\":{reaped}}}");
}

/// `netprobe udp-rate ADDR:PORT RATE SECONDS [BATCH]`: paced datagrams from
/// one unconnected socket (the end-to-end delivery benchmark's load). Each
/// datagram is addressed, so each is judged by the sendmsg hook; BATCH > 1
/// hands the kernel BATCH of them per `sendmmsg`, which judges each one as
/// `sendto` would but spends one system call on them all.
fn udp_rate(args: &[String]) {
    let usage = || -> ! {
        eprintln!("usage: netprobe udp-rate ADDR:PORT RATE SECONDS [BATCH]");
        std::process::exit(2);
    };
    let (Some(addr), Some(rate), Some(secs)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<f64>().ok()),
    ) else {
        usage()
    };
    let batch = match args.get(4).map(|b| b.parse::<usize>()) {
        None => 1,
        Some(Ok(b)) if (1..=1024).contains(&b) => b,
        Some(_) => usage(),
    };
    let sock = UdpSocket::bind(unspecified(&addr)).unwrap_or_else(|_| usage());
    let total = (rate as f64 * secs) as u64;
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut i = 0u64;
    while i < total {
        // Pace: datagram i is due at i / rate seconds.
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = batch.min((total - i) as usize);
        let ok = if n == 1 {
            usize::from(sock.send_to(b"ping", addr).is_ok())
        } else {
            send_many(&sock, addr, n)
        };
        sent += ok as u64;
        errors += (n - ok) as u64;
        i += n as u64;
    }
    println!(
        "{{\"sent\":{sent},\"errors\":{errors},\"seconds\":{}}}",
        start.elapsed().as_secs_f64()
    );
}

/// Sends `n` "ping" datagrams to `addr` in one `sendmmsg`; returns how many
/// the kernel took.
fn send_many(sock: &UdpSocket, addr: SocketAddr, n: usize) -> usize {
    use std::os::fd::AsRawFd;
    let to = socket2::SockAddr::from(addr);
    let payload = *b"ping";
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero mmsghdr is valid; every pointer set below outlives
    // the call (`to`, `iov`, `payload` are locals of this frame).
    let mut msgs: Vec<libc::mmsghdr> = (0..n)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = to.len();
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: `msgs` holds `n` initialised headers (see above).
    let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
    usize::try_from(r).unwrap_or(0)
}

/// `netprobe udp-hold`: a socket that takes datagrams, and operations on
/// request from the same process.
fn udp_hold() {
    use std::{
        os::fd::AsRawFd,
        sync::atomic::{AtomicU64, Ordering},
    };
    let socket = UdpSocket::bind("0.0.0.0:0").expect("binding a UDP socket");
    let port = socket.local_addr().expect("local_addr").port();
    // Room for a burst the reader thread has not caught up with (root may
    // go past rmem_max): what the socket drops would look like what the
    // kernel refused.
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a c_int option value of its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    static RECEIVED: AtomicU64 = AtomicU64::new(0);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while socket.recv(&mut buf).is_ok() {
            RECEIVED.fetch_add(1, Ordering::Relaxed);
        }
    });
    println!("{{\"port\":{port}}}");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_default();
        if line.trim() == "received" {
            println!("{{\"received\":{}}}", RECEIVED.load(Ordering::Relaxed));
            let _ = std::io::stdout().flush();
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(op), Some(Ok(addr))) = (words.next(), words.next().map(str::parse)) else {
            eprintln!("netprobe udp-hold: expected `OP ADDR:PORT`, got {line:?}");
            std::process::exit(2);
        };
        println!("{{\"errno\":{}}}", run_op(op, addr));
        let _ = std::io::stdout().flush();
    }
}

/// `netprobe hold TARGET N`: a client flood that never speaks.
fn hold(args: &[String]) {
    let (Some(target), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: netprobe hold ADDR:PORT|PATH N");
        std::process::exit(2);
    };
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for _ in 0..n {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => tcp.push(s),
                Err(_) => break,
            }
        } else {
            match std::os::unix::net::UnixStream::connect(target) {
                Ok(s) => unix.push(s),
                Err(_) => break,
            }
        }
    }
    println!("{{\"held\":{}}}", tcp.len() + unix.len());
    let _ = std::io::stdout().flush();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

fn main() {
    // A probe never outlives the test that started it, whatever it blocks
    // on (accept, read): SIGALRM ends it after ten minutes.
    // SAFETY: alarm has no preconditions.
    unsafe { libc::alarm(600) };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hold") {
        hold(&args);
        return;
    }
    if args.first().map(String::as_str) == Some("resolve-connect") {
        resolve_connect(&args);
        return;
    }
    if args.first().map(String::as_str) == Some("udp-hold") {
        udp_hold();
        return;
    }
    if args.first().map(String::as_str) == Some("fork-exit") {
        fork_exit(&args);
        return;
    }
    if args.first().map(String::as_str) == Some("udp-rate") {
        udp_rate(&args);
        return;
    }
    let mut take_flag = |f: &str| {
        let found = args.iter().position(|a| a == f);
        if let Some(i) = found {
            args.remove(i);
        }
        found.is_some()
    };
    let wait = take_flag("--wait-stdin");
    let fork = take_flag("--fork");
    let thread = take_flag("--thread");
    if args.is_empty() || !args.len().is_multiple_of(2) {
        eprintln!("usage: netprobe [--wait-stdin] [--fork|--thread] OP ADDR:PORT [OP ADDR:PORT]…");
        std::process::exit(2);
    }
    let ops: Vec<(String, SocketAddr)> = args
        .chunks(2)
        .map(|c| {
            let addr = c[1].parse().unwrap_or_else(|e| {
                eprintln!("netprobe: {:?} is not ADDR:PORT: {e}", c[1]);
                std::process::exit(2);
            });
            (c[0].clone(), addr)
        })
        .collect();
    if wait {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    if fork {
        // SAFETY: single-threaded here; the child only runs plain Rust and exits.
        match unsafe { libc::fork() } {
            0 => {
                let (tid, errnos) = run_all(&ops);
                report(tid, &errnos);
                std::process::exit(0);
            }
            child if child > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
            _ => {
                eprintln!("netprobe: fork failed: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
        }
    } else if thread {
        let (tid, errnos) = std::thread::spawn(move || run_all(&ops))
            .join()
            .expect("probe thread");
        report(tid, &errnos);
    } else {
        let (tid, errnos) = run_all(&ops);
        report(tid, &errnos);
    }
}
