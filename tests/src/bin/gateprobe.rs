//! gateprobe: the ways around the connect hooks, one per operation, for the
//! socket-gate tests. Every operation prints JSON lines: at least one with
//! `"errno"` (0 = success) for what it tried, then waits until stdin closes
//! (so the test can inspect the process while it lives).
//!
//! Usage: gateprobe OP ARGS…
//!
//!   raw-udp ADDR:PORT MARKER     raw IP socket (SOCK_RAW, IPPROTO_UDP): one
//!                                hand-made UDP datagram carrying MARKER
//!   raw-icmp ADDR MARKER         raw ICMP socket: an echo request carrying MARKER
//!   ping ADDR MARKER             ICMP "ping" socket (SOCK_DGRAM, IPPROTO_ICMP)
//!                                : an echo request carrying MARKER
//!   packet                       an AF_PACKET socket
//!   lsrr ADDR:PORT MARKER [PAD]  UDP with an IPv4 loose source route option
//!                                (IP_OPTIONS, after PAD one-byte NOPs, 1 by
//!                                default), then MARKER to ADDR:PORT;
//!                                errno [setsockopt, send]
//!   srh [ADDR]:PORT MARKER       UDP with an IPv6 segment routing header
//!                                (IPV6_RTHDR), then MARKER; errno [setsockopt, send]
//!   hold tcp|udp ADDR:PORT       connect; print {"pid":P,"fd":N,"errno":E};
//!                                then for every stdin line write the line
//!                                (without newline) and print {"errno":E}
//!   fd-serve PATH tcp|udp ADDR:PORT
//!                                connect; listen on the Unix socket PATH;
//!                                print {"ready":true,...}; hand the socket to the
//!                                first client over SCM_RIGHTS
//!   fd-recv PATH MARKER          take a socket from PATH (SCM_RIGHTS), write MARKER
//!   getfd PID FD MARKER          take fd FD of process PID (pidfd_getfd), write MARKER
//!   serve ADDR:PORT MARKER       listen; print {"port":P}; accept one
//!                                connection, write MARKER; print {"errno":E}
//!   mptcp ADDR:PORT MARKER       an MPTCP connection (IPPROTO_MPTCP): MARKER
//!   mptcp-stream ADDR:PORT MARKER MS
//!                                an MPTCP connection writing 64 KiB of MARKER
//!                                repeated every 1 ms for MS ms (a bulk stream:
//!                                additional subflows carry some);
//!                                errno [connect, last write]
//!   mptcp-sink ADDR:PORT         an MPTCP listener (a remote host's server):
//!                                print {"port":P}; accept and read everything
//!   udp-multi ADDR:PORT N [ADDR:PORT N]…
//!                                one unconnected UDP socket: N bytes to each
//!                                destination in turn; errno per datagram
//!   relay ADDR:PORT TARGET MARKER
//!                                a local relay: listen; print {"port":P};
//!                                accept one connection, then connect to
//!                                TARGET and write MARKER; errno [connect, write]

use std::{
    io::{BufRead, Read, Write},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

fn last() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn say(json: &str) {
    println!("{json}");
    let _ = std::io::stdout().flush();
}

fn wait_stdin_close() {
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

fn pid() -> u32 {
    std::process::id()
}

fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, i32> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A sockaddr for `addr`, with its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn sendto(fd: RawFd, buf: &[u8], addr: SocketAddr) -> i32 {
    let (ss, len) = sockaddr(addr);
    // SAFETY: valid buffer and sockaddr.
    let rc = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const ss).cast(),
            len,
        )
    };
    if rc < 0 { last() } else { 0 }
}

fn connect(fd: RawFd, addr: SocketAddr) -> i32 {
    let (ss, len) = sockaddr(addr);
    // SAFETY: valid sockaddr.
    let rc = unsafe { libc::connect(fd, (&raw const ss).cast(), len) };
    if rc < 0 { last() } else { 0 }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> i32 {
    // SAFETY: valid buffer.
    let rc = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if rc < 0 { last() } else { 0 }
}

fn setsockopt(fd: RawFd, level: i32, name: i32, val: &[u8]) -> i32 {
    // SAFETY: valid buffer of the given length.
    let rc = unsafe { libc::setsockopt(fd, level, name, val.as_ptr().cast(), val.len() as u32) };
    if rc < 0 { last() } else { 0 }
}

fn domain(ip: IpAddr) -> i32 {
    if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn report(errnos: &[i32]) {
    let list: Vec<String> = errnos.iter().map(i32::to_string).collect();
    say(&format!(
        "{{\"pid\":{},\"tid\":{},\"errno\":[{}]}}",
        pid(),
        pid(),
        list.join(",")
    ));
}

/// An ICMP echo request carrying `marker` (checksum filled; the kernel
/// rewrites the id for ping sockets).
fn echo_request(v6: bool, marker: &[u8]) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0x12, 0x34, 0, 1];
    p.extend_from_slice(marker);
    if !v6 {
        let mut sum = 0u32;
        for c in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    p
}

fn raw_udp(addr: SocketAddr, marker: &[u8]) -> Vec<i32> {
    let fd = match socket(domain(addr.ip()), libc::SOCK_RAW, libc::IPPROTO_UDP) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    let len = (8 + marker.len()) as u16;
    let mut d = Vec::new();
    d.extend_from_slice(&40000u16.to_be_bytes());
    d.extend_from_slice(&addr.port().to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(marker);
    // Raw sockets take a port of 0 in the address (the protocol is the socket's).
    vec![sendto(fd.as_raw_fd(), &d, SocketAddr::new(addr.ip(), 0))]
}

fn icmp(ip: IpAddr, marker: &[u8], ty: i32) -> Vec<i32> {
    let proto = if ip.is_ipv4() {
        libc::IPPROTO_ICMP
    } else {
        libc::IPPROTO_ICMPV6
    };
    let fd = match socket(domain(ip), ty, proto) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    vec![sendto(
        fd.as_raw_fd(),
        &echo_request(ip.is_ipv6(), marker),
        SocketAddr::new(ip, 0),
    )]
}

fn lsrr(addr: SocketAddr, marker: &[u8], pad: usize) -> Vec<i32> {
    let SocketAddr::V4(a) = addr else {
        return vec![libc::EINVAL];
    };
    let fd = match socket(libc::AF_INET, libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    // NOPs, LSRR (type 0x83, length 7, pointer 4, one hop: the destination).
    let mut opt = vec![1u8; pad];
    opt.extend_from_slice(&[0x83, 7, 4]);
    opt.extend_from_slice(&a.ip().octets());
    let set = setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, &opt);
    vec![set, sendto(fd.as_raw_fd(), marker, addr)]
}

fn srh(addr: SocketAddr, marker: &[u8]) -> Vec<i32> {
    let SocketAddr::V6(a) = addr else {
        return vec![libc::EINVAL];
    };
    let fd = match socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    // Segment routing header (type 4), one segment: the destination.
    // nexthdr, hdrlen (8-octet units past the first 8), type, segments_left,
    // first_segment, flags, tag(2), then the segment list.
    let mut h = vec![0, 2, 4, 0, 0, 0, 0, 0];
    h.extend_from_slice(&a.ip().octets());
    let set = setsockopt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &h);
    vec![set, sendto(fd.as_raw_fd(), marker, addr)]
}

fn connected(proto: &str, addr: SocketAddr) -> Result<OwnedFd, i32> {
    let ty = if proto == "udp" {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let fd = socket(domain(addr.ip()), ty, 0)?;
    match connect(fd.as_raw_fd(), addr) {
        0 => Ok(fd),
        e => Err(e),
    }
}

fn hold(proto: &str, addr: SocketAddr) {
    let fd = match connected(proto, addr) {
        Ok(fd) => fd,
        Err(e) => {
            report(&[e]);
            wait_stdin_close();
            return;
        }
    };
    say(&format!(
        "{{\"pid\":{},\"fd\":{},\"errno\":0}}",
        pid(),
        fd.as_raw_fd()
    ));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        say(&format!(
            "{{\"errno\":{}}}",
            write_fd(fd.as_raw_fd(), line.as_bytes())
        ));
    }
}

fn unix_addr(path: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as u16;
    for (d, s) in sun.sun_path.iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    (sun, size_of::<libc::sockaddr_un>() as libc::socklen_t)
}

fn fd_serve(path: &str, proto: &str, addr: SocketAddr) {
    let fd = match connected(proto, addr) {
        Ok(fd) => fd,
        Err(e) => {
            report(&[e]);
            wait_stdin_close();
            return;
        }
    };
    let _ = std::fs::remove_file(path);
    let l = socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).expect("unix socket");
    let (sun, len) = unix_addr(path);
    // SAFETY: valid sockaddr_un.
    let rc = unsafe { libc::bind(l.as_raw_fd(), (&raw const sun).cast(), len) };
    assert_eq!(rc, 0, "bind {path}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscall.
    unsafe { libc::listen(l.as_raw_fd(), 1) };
    say(&format!(
        "{{\"ready\":true,\"pid\":{},\"fd\":{}}}",
        pid(),
        fd.as_raw_fd()
    ));
    // SAFETY: plain syscall.
    let c = unsafe { libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
    if c >= 0 {
        send_fd(c, fd.as_raw_fd());
        // SAFETY: our accepted fd.
        unsafe { libc::close(c) };
    }
    wait_stdin_close();
}

fn send_fd(over: RawFd, fd: RawFd) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u8; 64];
    // SAFETY: msghdr with a valid iovec and control buffer large enough for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let cm = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cm).cmsg_level = libc::SOL_SOCKET;
        (*cm).cmsg_type = libc::SCM_RIGHTS;
        (*cm).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        libc::CMSG_DATA(cm).cast::<RawFd>().write_unaligned(fd);
        libc::sendmsg(over, &raw const msg, 0);
    }
}

fn recv_fd(over: RawFd) -> Option<RawFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u8; 64];
    // SAFETY: as send_fd; the received control message is read within bounds.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len();
        if libc::recvmsg(over, &raw mut msg, 0) < 0 {
            return None;
        }
        let cm = libc::CMSG_FIRSTHDR(&raw const msg);
        if cm.is_null() || (*cm).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        Some(libc::CMSG_DATA(cm).cast::<RawFd>().read_unaligned())
    }
}

fn fd_recv(path: &str, marker: &[u8]) -> Vec<i32> {
    let s = socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).expect("unix socket");
    let (sun, len) = unix_addr(path);
    // SAFETY: valid sockaddr_un.
    if unsafe { libc::connect(s.as_raw_fd(), (&raw const sun).cast(), len) } < 0 {
        return vec![last()];
    }
    match recv_fd(s.as_raw_fd()) {
        Some(fd) => vec![write_fd(fd, marker)],
        None => vec![libc::EBADF],
    }
}

fn getfd(target: i32, fd: i32, marker: &[u8]) -> Vec<i32> {
    // SAFETY: plain syscalls.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, target, 0) };
    if pidfd < 0 {
        return vec![last()];
    }
    // SAFETY: as above.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, fd, 0) };
    if got < 0 {
        return vec![last()];
    }
    vec![write_fd(got as i32, marker)]
}

fn serve(addr: SocketAddr, marker: &[u8]) {
    let l = std::net::TcpListener::bind(addr).expect("bind");
    say(&format!(
        "{{\"port\":{},\"pid\":{}}}",
        l.local_addr().expect("local").port(),
        pid()
    ));
    let errno = match l.accept() {
        Ok((mut s, _)) => match s.write_all(marker) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        },
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    report(&[errno]);
}

fn relay(addr: SocketAddr, target: SocketAddr, marker: &[u8]) -> Vec<i32> {
    let l = std::net::TcpListener::bind(addr).expect("bind");
    say(&format!(
        "{{\"port\":{},\"pid\":{}}}",
        l.local_addr().expect("local").port(),
        pid()
    ));
    let _client = l.accept().expect("accept");
    match connected("tcp", target) {
        Ok(fd) => vec![0, write_fd(fd.as_raw_fd(), marker)],
        Err(e) => vec![e, e],
    }
}

fn mptcp(addr: SocketAddr, marker: &[u8]) -> Vec<i32> {
    const IPPROTO_MPTCP: i32 = 262;
    let fd = match socket(domain(addr.ip()), libc::SOCK_STREAM, IPPROTO_MPTCP) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    match connect(fd.as_raw_fd(), addr) {
        0 => vec![write_fd(fd.as_raw_fd(), marker)],
        e => vec![e],
    }
}

fn mptcp_stream(addr: SocketAddr, marker: &[u8], ms: u64) -> Vec<i32> {
    const IPPROTO_MPTCP: i32 = 262;
    let fd = match socket(domain(addr.ip()), libc::SOCK_STREAM, IPPROTO_MPTCP) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    let c = connect(fd.as_raw_fd(), addr);
    if c != 0 {
        return vec![c];
    }
    // A bulk stream: 64 KiB writes of the marker repeated keep the first
    // subflow's window full, so the scheduler uses the others too.
    let chunk: Vec<u8> = marker.iter().copied().cycle().take(65_536).collect();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut e = 0;
    while std::time::Instant::now() < until {
        e = write_fd(fd.as_raw_fd(), &chunk);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    vec![0, e]
}

fn mptcp_sink(addr: SocketAddr) {
    const IPPROTO_MPTCP: i32 = 262;
    let fd = socket(domain(addr.ip()), libc::SOCK_STREAM, IPPROTO_MPTCP).expect("MPTCP socket");
    let (sa, len) = sockaddr(addr);
    // SAFETY: a valid socket and address for the calls' duration.
    let ok = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        ) == 0
            && libc::listen(fd.as_raw_fd(), 16) == 0
    };
    assert!(ok, "bind/listen: {}", last());
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: out-pointers sized for an IPv4 address.
    unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    say(&format!("{{\"port\":{}}}", u16::from_be(sa.sin_port)));
    loop {
        // SAFETY: accept on a listening socket; the fd is owned below.
        let c = unsafe { libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if c < 0 {
            return;
        }
        std::thread::spawn(move || {
            // SAFETY: accept returned a new fd we own.
            let mut s = unsafe { std::fs::File::from_raw_fd(c) };
            let mut buf = [0u8; 4096];
            while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
    }
}

fn udp_multi(args: &[String]) -> Vec<i32> {
    let first = parse_addr(&args[0]);
    let fd = match socket(domain(first.ip()), libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return vec![e],
    };
    args.chunks(2)
        .map(|c| {
            let n: usize = c.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            sendto(fd.as_raw_fd(), &vec![b'u'; n], parse_addr(&c[0]))
        })
        .collect()
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| {
        eprintln!("gateprobe: {s:?} is not ADDR:PORT: {e}");
        std::process::exit(2)
    })
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| {
        eprintln!("gateprobe: {s:?} is not an address: {e}");
        std::process::exit(2)
    })
}

fn main() {
    // A probe never outlives the test that started it, whatever it blocks
    // on (accept, read): SIGALRM ends it after ten minutes.
    // SAFETY: alarm has no preconditions.
    unsafe { libc::alarm(600) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("gateprobe: missing argument {i}; see the usage at the top of gateprobe.rs");
            std::process::exit(2)
        })
    };
    let errnos = match a(0) {
        "raw-udp" => raw_udp(parse_addr(a(1)), a(2).as_bytes()),
        "raw-icmp" => icmp(parse_ip(a(1)), a(2).as_bytes(), libc::SOCK_RAW),
        "ping" => icmp(parse_ip(a(1)), a(2).as_bytes(), libc::SOCK_DGRAM),
        "packet" => match socket(libc::AF_PACKET, libc::SOCK_RAW, 0) {
            Ok(_fd) => vec![0],
            Err(e) => vec![e],
        },
        "lsrr" => lsrr(
            parse_addr(a(1)),
            a(2).as_bytes(),
            args.get(3).and_then(|p| p.parse().ok()).unwrap_or(1),
        ),
        "srh" => srh(parse_addr(a(1)), a(2).as_bytes()),
        "hold" => return hold(a(1), parse_addr(a(2))),
        "fd-serve" => return fd_serve(a(1), a(2), parse_addr(a(3))),
        "fd-recv" => fd_recv(a(1), a(2).as_bytes()),
        "getfd" => getfd(
            a(1).parse().expect("PID"),
            a(2).parse().expect("FD"),
            a(3).as_bytes(),
        ),
        "serve" => return serve(parse_addr(a(1)), a(2).as_bytes()),
        "udp-multi" => udp_multi(&args[1..]),
        "mptcp" => mptcp(parse_addr(a(1)), a(2).as_bytes()),
        "mptcp-stream" => {
            mptcp_stream(parse_addr(a(1)), a(2).as_bytes(), a(3).parse().expect("MS"))
        }
        "mptcp-sink" => {
            mptcp_sink(parse_addr(a(1)));
            return;
        }
        "relay" => relay(parse_addr(a(1)), parse_addr(a(2)), a(3).as_bytes()),
        other => {
            eprintln!("gateprobe: unknown operation {other:?}");
            std::process::exit(2)
        }
    };
    report(&errnos);
    wait_stdin_close();
}
