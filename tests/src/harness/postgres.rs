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
    child: Child,
    dir: TempPath,
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
        let log = dir.path().join("postgres.log");
        let child = Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-p", "5432"])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("pg log"))
            .spawn()
            .expect("starting postgres");
        let server = PgServer {
            child,
            url: format!(
                "postgres://postgres@localhost/postgres?host={}&port=5432",
                dir.path().display()
            ),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready to accept connections") {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start in 30 s: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where its socket and data are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (disconnect clients, stop).
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
