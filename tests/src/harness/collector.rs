//! A real `collectord` for delivery tests: a database in a directory the test
//! owns (so it survives restarts), killed with SIGKILL on demand, stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::agent::workspace_bin;

/// A running (or killed) collector.
pub struct RunningCollector {
    child: Option<Child>,
    pub port: u16,
    pub db: PathBuf,
    log: PathBuf,
}

impl RunningCollector {
    /// Starts collectord with its database in `dir`.
    pub fn start(dir: &Path) -> RunningCollector {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let mut c = RunningCollector {
            child: None,
            port,
            db: dir.join("collector.db"),
            log: dir.join("collectord.log"),
        };
        c.restart();
        c
    }

    /// The endpoint agents use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again (same port, same database) and waits until it listens.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(workspace_bin("collectord"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database")
            .arg(&self.db)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting collectord");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "collectord did not listen: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Opens the database (read side) to check what is stored.
    pub fn store(&self) -> collector::store::Store {
        collector::store::Store::open(&self.db).expect("opening the collector database")
    }
}

impl Drop for RunningCollector {
    fn drop(&mut self) {
        self.kill9();
    }
}
