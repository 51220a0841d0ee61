//! The open sockets of a process, and cutting one off.
//!
//! A socket opened before the agent judged its process (before the agent
//! started, or while its class was not enforced) was never seen by the
//! connect hooks. [`Walk::open_sockets`] finds a process's connected TCP and UDP
//! sockets from `/proc/PID/fd` (socket inodes) and the tables of its network
//! namespace (`/proc/PID/net/{tcp,tcp6,udp,udp6}`); [`destroy`] closes one
//! from outside with the kernel's `SOCK_DESTROY` (sock_diag, needs
//! `CONFIG_INET_DIAG_DESTROY`): the owner's next send fails with ECONNABORTED.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
};

use sensor_common::net::{IPPROTO_TCP, IPPROTO_UDP};

/// A connected socket of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSocket {
    pub protocol: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's socket inode.
    pub inode: u64,
}

/// TCP states in which data can still leave (established, SYN sent or
/// received, close-wait).
const TCP_SENDING_STATES: &[u8] = &[0x01, 0x02, 0x03, 0x08];
/// UDP "established": a connected socket.
const UDP_CONNECTED: u8 = 0x01;

/// Socket inodes among the open files of `pid`.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// "0100007F:1F90" (v4) or 32 hex digits (v6) and a port, as the kernel
/// prints them: each 32-bit word in host byte order.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one `/proc/net/{tcp,udp}[6]` table: the sockets that can carry
/// data to a remote.
fn parse_table(text: &str, protocol: u8, out: &mut Vec<OpenSocket>) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state), Some(inode)) = (
            f.get(1).and_then(|s| parse_endpoint(s)),
            f.get(2).and_then(|s| parse_endpoint(s)),
            f.get(3).and_then(|s| u8::from_str_radix(s, 16).ok()),
            f.get(9).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let live = if protocol == IPPROTO_TCP {
            TCP_SENDING_STATES.contains(&state)
        } else {
            state == UDP_CONNECTED
        };
        if live && !remote.ip().is_unspecified() && remote.port() != 0 {
            out.push(OpenSocket {
                protocol,
                local,
                remote,
                inode,
            });
        }
    }
}

/// One walk over processes' sockets: each network namespace's tables are
/// read once, and a socket several processes share (inherited across fork,
/// passed) is handed out once, to the first of them.
#[derive(Debug, Default)]
pub struct Walk {
    /// Connected sockets by network namespace inode.
    tables: HashMap<u64, Vec<OpenSocket>>,
    seen: HashSet<u64>,
}

impl Walk {
    /// The connected TCP and UDP sockets process `pid` holds that no
    /// earlier process of this walk held (empty when it is gone or holds
    /// none).
    pub fn open_sockets(&mut self, pid: u32) -> Vec<OpenSocket> {
        let inodes = socket_inodes(pid);
        if inodes.is_empty() {
            return Vec::new();
        }
        let Ok(netns) = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()) else {
            return Vec::new();
        };
        let table = self.tables.entry(netns).or_insert_with(|| {
            let mut all = Vec::new();
            for (file, protocol) in [
                ("tcp", IPPROTO_TCP),
                ("tcp6", IPPROTO_TCP),
                ("udp", IPPROTO_UDP),
                ("udp6", IPPROTO_UDP),
            ] {
                if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
                    parse_table(&text, protocol, &mut all);
                }
            }
            all
        });
        table
            .iter()
            .filter(|s| inodes.contains(&s.inode) && self.seen.insert(s.inode))
            .cloned()
            .collect()
    }
}

/// Closes `sock` of process `pid` with `SOCK_DESTROY`, from inside the
/// process's network namespace (a short-lived thread joins it, so the agent's
/// own namespace is untouched).
pub fn destroy(pid: u32, sock: &OpenSocket) -> std::io::Result<()> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let sock = sock.clone();
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace fd we own; it affects this thread only,
        // which ends right after.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sock_destroy(&sock)
    })
    .join()
    .map_err(|_| std::io::Error::other("the SOCK_DESTROY thread panicked"))?
}

/// `struct inet_diag_req_v2` behind a `struct nlmsghdr`.
#[repr(C)]
struct DestroyRequest {
    nlmsg_len: u32,
    nlmsg_type: u16,
    nlmsg_flags: u16,
    nlmsg_seq: u32,
    nlmsg_pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `SOCK_DESTROY` in sock_diag.h.
const SOCK_DESTROY: u16 = 21;

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

fn sock_destroy(sock: &OpenSocket) -> std::io::Result<()> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let family = if sock.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let req = DestroyRequest {
        nlmsg_len: std::mem::size_of::<DestroyRequest>() as u32,
        nlmsg_type: SOCK_DESTROY,
        nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        nlmsg_seq: 1,
        nlmsg_pid: 0,
        family: family as u8,
        protocol: sock.protocol,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        sport: sock.local.port().to_be_bytes(),
        dport: sock.remote.port().to_be_bytes(),
        src: addr_bytes(sock.local.ip()),
        dst: addr_bytes(sock.remote.ip()),
        ifindex: 0,
        // INET_DIAG_NOCOOKIE: match by addresses and ports alone.
        cookie: [u32::MAX, u32::MAX],
    };
    // SAFETY: req is a plain repr(C) struct that outlives the call.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            std::ptr::from_ref(&req).cast(),
            std::mem::size_of::<DestroyRequest>(),
            0,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    // SAFETY: buf is ours and large enough for an error message.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // NLMSG_ERROR: the header (16 bytes), then the error code (0: done).
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(-code));
        }
        return Ok(());
    }
    Err(std::io::Error::other("unexpected answer to SOCK_DESTROY"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_socket_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A000 0371A8C0:0050 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A001 0371A8C0:0050 06 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1
";
        let mut out = Vec::new();
        parse_table(tcp, IPPROTO_TCP, &mut out);
        assert_eq!(
            out,
            vec![OpenSocket {
                protocol: IPPROTO_TCP,
                local: "127.0.0.1:40960".parse().unwrap(),
                remote: "192.168.113.3:80".parse().unwrap(),
                inode: 222,
            }],
            "the listener and the TIME_WAIT socket are not connections that send"
        );
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:A000 B80D0120000000000000000001000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 444 1
";
        let mut out = Vec::new();
        parse_table(v6, IPPROTO_TCP, &mut out);
        assert_eq!(out[0].remote, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(out[0].local, "[::1]:40960".parse().unwrap());
    }
}
