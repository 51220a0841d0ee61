//! A real headless Chromium, driven over WebDriver by Debian's
//! `chromedriver`, for the dashboard's tests.
//!
//! The browser reaches only this machine: every name resolves to nothing
//! but localhost (127.0.0.1), and whatever else it would fetch (updates, safe browsing)
//! goes to a proxy on a closed loopback port. chromedriver runs in its own
//! process group, which is killed (with the browser) on drop.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{collector::free_port, temp::TempPath};

/// chromedriver and the browsers it starts.
pub struct Browser {
    driver: Child,
    port: u16,
    profile: TempPath,
}

impl Browser {
    /// Starts chromedriver on a free loopback port.
    pub fn start() -> Browser {
        let port = free_port();
        let profile = TempPath::dir("chromium-profile");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect(
                "starting chromedriver (Debian's chromium-driver; cargo xtask setup installs it)",
            );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Browser {
            driver,
            port,
            profile,
        }
    }

    /// A new browser session (headless, trusting any certificate: the
    /// tests' CA is not the browser's).
    pub async fn session(&self) -> fantoccini::Client {
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--ignore-certificate-errors",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--proxy-server=http://127.0.0.1:9",
            // localhost is 127.0.0.1 only, where the tests' servers listen
            // (resolved, it is ::1 too, where any other process may listen
            // on the same port); every other name resolves to nothing.
            "--host-resolver-rules=MAP localhost 127.0.0.1 , MAP * ~NOTFOUND",
            "--window-size=1400,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", self.profile.path().display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), true.into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "args": args, "binary": "/usr/bin/chromium" }),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        // Browsers that left the group (they start their own sessions).
        let _ = Command::new("pkill")
            .args(["-9", "-f"])
            .arg(format!("user-data-dir={}", self.profile.path().display()))
            .status();
    }
}
