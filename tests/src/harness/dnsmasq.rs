//! A real DNS server (Debian's dnsmasq) inside a remote host's network
//! namespace, answering only the names the test gives it, with the TTLs the
//! test chooses. Stopped on drop.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};

use super::{netns::RemoteHost, temp::TempPath};

/// What a server answers: `name` → its addresses, or an alias.
pub enum Entry<'a> {
    /// A and AAAA records for `name`, each with `ttl` seconds.
    Host(&'a str, &'a [IpAddr], u32),
    /// `alias` is a CNAME for `target` (itself a `Host`), with `ttl`.
    Alias(&'a str, &'a str, u32),
}

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    /// Where it answers (the remote host's IPv4 address).
    pub addr: SocketAddr,
    dir: TempPath,
}

impl Dnsmasq {
    /// Serves `entries` on `host`'s IPv4 and IPv6 addresses at `port`, and
    /// nothing else (no upstream, no /etc/hosts); returns once it answers.
    pub fn start(host: &RemoteHost, port: u16, entries: &[Entry<'_>]) -> Dnsmasq {
        let dir = TempPath::dir(&format!("dnsmasq-{}-{port}", host.netns));
        let mut cmd = host.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--listen-address={}", host.v4))
        .arg(format!("--listen-address={}", host.v6));
        for e in entries {
            match e {
                Entry::Host(name, addrs, ttl) => {
                    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                    cmd.arg(format!("--host-record={name},{},{ttl}", list.join(",")));
                }
                Entry::Alias(alias, target, ttl) => {
                    cmd.arg(format!("--cname={alias},{target},{ttl}"));
                }
            }
        }
        let log = std::fs::File::create(dir.path().join("dnsmasq.log")).expect("dnsmasq log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dnsmasq (Debian's dnsmasq-base; cargo xtask setup installs it)");
        let d = Dnsmasq {
            child,
            addr: SocketAddr::new(IpAddr::V4(host.v4), port),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.ask("ready.invalid", RecordType::A).is_none() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// Asks for `name` from here (untagged): the response, if one came.
    pub fn ask(&self, name: &str, rtype: RecordType) -> Option<Message> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).ok()?, rtype));
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        sock.send_to(&q.to_vec().ok()?, self.addr).ok()?;
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).ok()?;
        Message::from_vec(&buf[..n]).ok()
    }

    /// What it logged (queries and answers).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
