//! A real PostgreSQL server for collector tests: `initdb` into a temporary
//! directory (owned by the `postgres` system user, as PostgreSQL refuses to run
//! as root), listening on a Unix socket in that directory only; stopped and
//! removed on drop, also when a test panics.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::temp::TempPath;

/// A running server.
pub struct PgServer {
    child: Option<Child>,
    dir: TempPath,
    bin: PathBuf,
    user: (u32, u32),
    /// postgres://… for `collectord --database`.
    pub url: String,
}

/// The server binaries (Debian: /usr/lib/postgresql/<version>/bin).
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").is_file());
    dirs.sort();
    dirs.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: apt install postgresql (cargo xtask setup does)",
    )
}

fn postgres_user() -> (u32, u32) {
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !pw.is_null(),
        "no postgres system user: apt install postgresql (cargo xtask setup does)"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

impl PgServer {
    /// Initialises and starts a server; waits until it accepts connections.
    pub fn start() -> PgServer {
        super::privilege::require_root();
        let bin = bin_dir();
        let (uid, gid) = postgres_user();
        let dir = TempPath::dir("pg");
        let data = dir.path().join("data");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the pg dir");
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .uid(uid)
            .gid(gid)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PgServer {
            child: None,
            url: format!(
                "postgres://postgres@localhost/postgres?host={}&port=5432",
                dir.path().display()
            ),
            dir,
            bin,
            user: (uid, gid),
        };
        server.spawn();
        server
    }

    /// Starts the server process and waits until it accepts connections.
    fn spawn(&mut self) {
        let log = self.dir.path().join("postgres.log");
        let mark = std::fs::read_to_string(&log).map_or(0, |t| t.len());
        let child = Command::new(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=", "-p", "5432"])
            .uid(self.user.0)
            .gid(self.user.1)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("pg log"),
            )
            .spawn()
            .expect("starting postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text
                .get(mark..)
                .unwrap_or("")
                .contains("ready to accept connections")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start in 30 s: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT: fast shutdown (disconnect clients, stop).
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts it again with the same data (every client connection
    /// is cut).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A file-level backup of the whole cluster as `name` (the server is
    /// stopped for the copy and started again).
    pub fn backup(&mut self, name: &str) {
        self.stop();
        let to = self.dir.path().join(format!("backup-{name}"));
        let _ = std::fs::remove_dir_all(&to);
        copy_tree(&self.dir.path().join("data"), &to);
        self.spawn();
    }

    /// Puts backup `name` back over the cluster's data (as an operator
    /// restoring an older copy would) and starts the server on it.
    pub fn restore(&mut self, name: &str) {
        self.stop();
        let data = self.dir.path().join("data");
        std::fs::remove_dir_all(&data).expect("removing the cluster's data");
        copy_tree(&self.dir.path().join(format!("backup-{name}")), &data);
        self.spawn();
    }

    /// Where its socket and data are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `cp -a from to` (owners and modes kept: the server checks its data
/// directory's).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("running cp");
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
