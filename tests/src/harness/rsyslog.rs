//! A real rsyslog (Debian's rsyslog and rsyslog-openssl), started by the
//! test as a SIEM's syslog receiver: RFC 5424 over TCP, or over TLS with a
//! certificate of the test's CA, writing what it receives to a file, one
//! line per message with the parsed fields. Stopped on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{collector::free_port, pki, temp::TempPath};

/// A running rsyslogd.
pub struct Rsyslog {
    child: Option<Child>,
    pub port: u16,
    dir: TempPath,
    conf: PathBuf,
}

impl Rsyslog {
    /// Listens on a free loopback port; with `tls` (the server's
    /// certificate and the CA), over TLS.
    pub fn start(tls: Option<(&pki::Pem, &std::path::Path)>) -> Rsyslog {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = TempPath::dir(&format!("rsyslog-{n}"));
        let port = free_port();
        let d = dir.path().display().to_string();
        let (module, global) = match tls {
            Some((server, ca)) => (
                r#"module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")"#
                    .to_owned(),
                format!(
                    r#"global(DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}")"#,
                    ca.display(),
                    server.cert.display(),
                    server.key.display()
                ),
            ),
            None => (r#"module(load="imtcp")"#.to_owned(), String::new()),
        };
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{d}")
{global}
{module}
template(name="fields" type="string" string="%hostname%|%syslogseverity%|%app-name%|%msgid%|%structured-data%|%msg%\n")
input(type="imtcp" port="{port}" address="127.0.0.1")
action(type="omfile" file="{d}/received.log" template="fields")
"#
            ),
        )
        .expect("rsyslog.conf");
        let mut r = Rsyslog {
            child: None,
            port,
            dir,
            conf,
        };
        r.restart();
        r
    }

    /// Starts it (again), on the same port and file.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("rsyslogd.err"))
                    .expect("rsyslog's stderr"),
            )
            .spawn()
            .expect("starting rsyslogd (Debian's rsyslog; cargo xtask setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                std::fs::read_to_string(self.dir.path().join("rsyslogd.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGKILL: a receiver that dies).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The messages received so far, one line each:
    /// `HOST|SEVERITY|APP|MSGID|STRUCTURED-DATA|MSG`.
    pub fn received(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}
