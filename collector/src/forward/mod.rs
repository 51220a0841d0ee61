//! Forwarding stored records to where security teams look (`collectord
//! --forward URL`, repeatable): violations, audit and gap records, as RFC
//! 5424 syslog over TCP or TLS, or as Elastic Common Schema JSON lines to a
//! file (rotated) or stdout.
//!
//! Each sink has its own cursor per host in the database
//! (`forward_cursors`), moved only after a batch was written (a file:
//! fsynced; a socket: written and flushed to a connection that was open):
//! a SIEM outage loses nothing, and a restart does not resend what was
//! delivered. Delivery is at-least-once: a batch written just before a
//! crash is sent again. Plain syslog over TCP has no acknowledgements, so
//! a connection that breaks right after a write can lose that write; the
//! sink checks the connection before each batch to make that window small.

pub mod ecs;
pub mod syslog;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::Mutex,
};
use tracing::{info, warn};

use crate::store::Store;

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// syslog+tcp://HOST:PORT
    SyslogTcp { addr: String },
    /// syslog+tls://HOST:PORT (the server's certificate checked against
    /// --forward-ca and HOST).
    SyslogTls { addr: String, host: String },
    /// ecs:- (stdout)
    EcsStdout,
    /// ecs:PATH (appended, rotated by size)
    EcsFile { path: PathBuf },
}

impl Target {
    /// Parses a `--forward` value.
    pub fn parse(s: &str) -> Result<Target, String> {
        let bad = || {
            format!(
                "--forward {s:?}: write syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT, ecs:FILE or ecs:- (stdout)"
            )
        };
        if let Some(rest) = s.strip_prefix("ecs:") {
            return match rest {
                "" => Err(bad()),
                "-" => Ok(Target::EcsStdout),
                p => Ok(Target::EcsFile { path: p.into() }),
            };
        }
        let (tls, rest) = if let Some(r) = s.strip_prefix("syslog+tcp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("syslog+tls://") {
            (true, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad());
        }
        Ok(if tls {
            Target::SyslogTls {
                addr: rest.to_owned(),
                host,
            }
        } else {
            Target::SyslogTcp {
                addr: rest.to_owned(),
            }
        })
    }

    /// The cursor's name: the target as written, canonically.
    pub fn name(&self) -> String {
        match self {
            Target::SyslogTcp { addr } => format!("syslog+tcp://{addr}"),
            Target::SyslogTls { addr, .. } => format!("syslog+tls://{addr}"),
            Target::EcsStdout => "ecs:-".into(),
            Target::EcsFile { path } => format!("ecs:{}", path.display()),
        }
    }
}

/// How sinks behave.
#[derive(Debug, Clone)]
pub struct Options {
    /// CA (PEM) that signed syslog+tls servers' certificates.
    pub ca: Option<PathBuf>,
    /// An ECS file is rotated when it would grow past this.
    pub rotate_bytes: u64,
    /// Rotated files kept (FILE.1 … FILE.N).
    pub keep: usize,
}

/// Records read per host and batch.
const BATCH: i64 = 500;

type Conn = Box<dyn AsyncWrite + Unpin + Send>;

/// An open sink.
struct Sink {
    target: Target,
    opts: Options,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A syslog connection, and its raw descriptor (to see that the peer
    /// has not closed it).
    conn: Option<(Conn, i32)>,
    file: Option<(std::fs::File, u64)>,
}

/// Whether a socket's peer still has it open: a non-blocking peek sees
/// end-of-file (0) or an error when it closed.
fn open(fd: i32) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv into a 1-byte buffer on a descriptor we own.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0 || (n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
}

impl Sink {
    fn new(target: Target, opts: Options) -> Result<Sink, String> {
        let tls = match &target {
            Target::SyslogTls { .. } => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let ca = opts.ca.as_ref().ok_or(
                    "--forward syslog+tls://… needs --forward-ca (the CA that signed the syslog server's certificate)",
                )?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("--forward-ca {}: {e}", ca.display()))?
                {
                    roots
                        .add(c.map_err(|e| format!("--forward-ca {}: {e}", ca.display()))?)
                        .map_err(|e| format!("--forward-ca {}: {e}", ca.display()))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                Some(Arc::new(
                    rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())?
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                ))
            }
            _ => None,
        };
        Ok(Sink {
            target,
            opts,
            tls,
            conn: None,
            file: None,
        })
    }

    async fn connect(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        if let Some((_, fd)) = &self.conn
            && open(*fd)
        {
            return Ok(());
        }
        self.conn = None;
        let addr = match &self.target {
            Target::SyslogTcp { addr } | Target::SyslogTls { addr, .. } => addr.clone(),
            _ => return Ok(()),
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
        let _ = tcp.set_nodelay(true);
        let fd = tcp.as_raw_fd();
        let conn: Conn = match (&self.target, &self.tls) {
            (Target::SyslogTls { host, .. }, Some(cfg)) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        info!(target = %self.target.name(), "forwarding connected");
        self.conn = Some((conn, fd));
        Ok(())
    }

    /// Writes `records` (of `host`); Ok once delivered as far as this sink
    /// can tell.
    async fn send(
        &mut self,
        host: &str,
        records: &[residency_proto::collector::v1::Record],
    ) -> std::io::Result<()> {
        let docs: Vec<String> = records
            .iter()
            .map(|r| ecs::document(host, r).to_string())
            .collect();
        match self.target.clone() {
            Target::SyslogTcp { .. } | Target::SyslogTls { .. } => {
                self.connect().await?;
                let mut bytes = Vec::new();
                for (r, d) in records.iter().zip(&docs) {
                    bytes.extend(syslog::frame(host, r, d));
                }
                let (conn, _) = self.conn.as_mut().expect("connected");
                let res = async {
                    conn.write_all(&bytes).await?;
                    conn.flush().await
                }
                .await;
                if res.is_err() {
                    self.conn = None;
                }
                res
            }
            Target::EcsStdout => {
                let mut bytes = String::new();
                for d in &docs {
                    bytes.push_str(d);
                    bytes.push('\n');
                }
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    out.write_all(bytes.as_bytes())?;
                    out.flush()
                })
                .await
                .map_err(std::io::Error::other)?
            }
            Target::EcsFile { path } => {
                let mut bytes = String::new();
                for d in &docs {
                    bytes.push_str(d);
                    bytes.push('\n');
                }
                let opts = self.opts.clone();
                let slot = self.file.take();
                let (f, size) = tokio::task::spawn_blocking(move || {
                    write_rotating(&path, slot, bytes.as_bytes(), &opts)
                })
                .await
                .map_err(std::io::Error::other)??;
                self.file = Some((f, size));
                Ok(())
            }
        }
    }
}

/// Appends `bytes` to `path` (rotating first when it would pass the
/// size), fsyncs; returns the open file and its size.
fn write_rotating(
    path: &std::path::Path,
    slot: Option<(std::fs::File, u64)>,
    bytes: &[u8],
    opts: &Options,
) -> std::io::Result<(std::fs::File, u64)> {
    use std::io::Write;
    let open = || -> std::io::Result<(std::fs::File, u64)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = f.metadata()?.len();
        Ok((f, size))
    };
    let (mut f, mut size) = match slot {
        Some(s) => s,
        None => open()?,
    };
    if size > 0 && size + bytes.len() as u64 > opts.rotate_bytes {
        drop(f);
        let numbered = |n: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(numbered(opts.keep.max(1)));
        for n in (1..opts.keep.max(1)).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(path, numbered(1))?;
        (f, size) = open()?;
    }
    f.write_all(bytes)?;
    f.sync_data()?;
    size += bytes.len() as u64;
    Ok((f, size))
}

/// Forwards what `target` has not delivered, once; returns how many
/// records it sent.
async fn forward_once(store: &Mutex<Store>, sink: &mut Sink, name: &str) -> Result<usize, String> {
    let pending = store
        .lock()
        .await
        .forward_pending(name)
        .await
        .map_err(|e| format!("reading the cursors: {e}"))?;
    let mut sent = 0;
    for (host, mut cursor, _last) in pending {
        loop {
            let records = store
                .lock()
                .await
                .records_after(&host, cursor, BATCH)
                .await
                .map_err(|e| format!("reading {host}'s records: {e}"))?;
            let Some(last) = records.last().map(|r| r.seq as i64) else {
                break;
            };
            let read = records.len() as i64;
            let wanted: Vec<_> = records
                .into_iter()
                .filter(|r| matches!(r.kind_name(), "violation" | "audit" | "gap"))
                .collect();
            let n = wanted.len();
            if !wanted.is_empty() {
                sink.send(&host, &wanted)
                    .await
                    .map_err(|e| format!("sending {host}'s records: {e}"))?;
            }
            store
                .lock()
                .await
                .set_forward_cursor(name, &host, last)
                .await
                .map_err(|e| format!("moving the cursor: {e}"))?;
            cursor = last;
            sent += n;
            if read < BATCH {
                break; // caught up with this host
            }
        }
    }
    Ok(sent)
}

/// Runs one sink for as long as the collector runs.
pub fn spawn(store: Arc<Mutex<Store>>, target: Target, opts: Options) -> Result<(), String> {
    let name = target.name();
    let mut sink = Sink::new(target, opts)?;
    info!(target = %name, "forwarding violations, audit and gap records");
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        loop {
            match forward_once(&store, &mut sink, &name).await {
                Ok(n) => {
                    if failing {
                        info!(target = %name, "forwarding works again");
                        failing = false;
                    }
                    backoff = Duration::from_millis(500);
                    if n > 0 {
                        info!(target = %name, records = n, "records forwarded");
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    if !failing {
                        warn!(target = %name, error = %e, "forwarding failed; retrying (nothing is skipped: the cursor stays)");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_what_to_write() {
        assert_eq!(
            Target::parse("syslog+tcp://siem.example:514"),
            Ok(Target::SyslogTcp {
                addr: "siem.example:514".into()
            })
        );
        assert_eq!(
            Target::parse("syslog+tls://[2001:db8::1]:6514"),
            Ok(Target::SyslogTls {
                addr: "[2001:db8::1]:6514".into(),
                host: "2001:db8::1".into()
            })
        );
        assert_eq!(Target::parse("ecs:-"), Ok(Target::EcsStdout));
        assert_eq!(
            Target::parse("ecs:/var/log/r.json"),
            Ok(Target::EcsFile {
                path: "/var/log/r.json".into()
            })
        );
        for bad in [
            "syslog://x:1",
            "syslog+tcp://x",
            "syslog+tcp://:514",
            "ecs:",
            "kafka://x",
        ] {
            assert!(
                Target::parse(bad)
                    .unwrap_err()
                    .contains("syslog+tcp://HOST:PORT"),
                "{bad}"
            );
        }
    }

    #[test]
    fn files_rotate_and_keep_as_many_as_asked() {
        let dir = std::env::temp_dir().join(format!("rs-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("r.json");
        let opts = Options {
            ca: None,
            rotate_bytes: 10,
            keep: 2,
        };
        let mut slot = None;
        for i in 0..5 {
            slot = Some(
                write_rotating(&path, slot, format!("line {i}\\n").as_bytes(), &opts).unwrap(),
            );
        }
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap_or_default();
        assert_eq!(read("r.json"), "line 4\\n");
        assert_eq!(read("r.json.1"), "line 3\\n");
        assert_eq!(read("r.json.2"), "line 2\\n");
        assert!(!dir.join("r.json.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
