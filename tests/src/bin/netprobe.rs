//! netprobe: does one network operation and prints what happened as one JSON
//! line: `{"pid":N,"errno":E,"failed_call":"connect"}` (errno 0 = success).
//!
//! Usage:
//!   netprobe tcp-connect ADDR:PORT        connect, send 4 bytes, close
//!   netprobe udp-connect-send ADDR:PORT   connect a UDP socket, send one datagram
//!   netprobe udp-sendto ADDR:PORT         sendto on an unconnected UDP socket
//!
//! IPv6 addresses are written [addr]:port; an IPv4-mapped one ([::ffff:a.b.c.d])
//! makes a dual-stack IPv6 socket talk IPv4.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

fn report(errno: i32, call: &str) -> ! {
    println!(
        "{{\"pid\":{},\"errno\":{errno},\"failed_call\":\"{call}\"}}",
        std::process::id()
    );
    std::process::exit(0);
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: netprobe tcp-connect|udp-connect-send|udp-sendto ADDR:PORT");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[2].parse().unwrap_or_else(|e| {
        eprintln!("netprobe: {:?} is not ADDR:PORT: {e}", args[2]);
        std::process::exit(2);
    });
    let unspecified: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    match args[1].as_str() {
        "tcp-connect" => match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(mut s) => {
                if let Err(e) = s.write_all(b"ping") {
                    report(errno_of(&e), "send");
                }
                report(0, "")
            }
            Err(e) => report(errno_of(&e), "connect"),
        },
        "udp-connect-send" => {
            let s = UdpSocket::bind(unspecified).unwrap_or_else(|e| report(errno_of(&e), "bind"));
            if let Err(e) = s.connect(addr) {
                report(errno_of(&e), "connect");
            }
            match s.send(b"ping") {
                Ok(_) => report(0, ""),
                Err(e) => report(errno_of(&e), "send"),
            }
        }
        "udp-sendto" => {
            let s = UdpSocket::bind(unspecified).unwrap_or_else(|e| report(errno_of(&e), "bind"));
            match s.send_to(b"ping", addr) {
                Ok(_) => report(0, ""),
                Err(e) => report(errno_of(&e), "sendto"),
            }
        }
        other => {
            eprintln!("netprobe: unknown operation {other:?}");
            std::process::exit(2);
        }
    }
}
