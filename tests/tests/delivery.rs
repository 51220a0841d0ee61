//! Delivery to the collector: every violation reaches it exactly once, through
//! collector crashes (SIGKILL) and an agent crash, with the durable spool in
//! between. Real sensord, real collectord, real kernel.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::{RunningAgent, workspace_bin},
    cgroup::TestCgroup,
    collector::{RunningCollector, free_port},
    netns::TestNet,
    postgres::PgServer,
    probe::{self, Waiting},
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
    temp::TempPath,
};
use residency_proto::{
    agent::v1::{Flow, Protocol},
    collector::v1 as pb,
    records::Label,
};

fn wait_for_violations(c: &RunningCollector, host: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = c.count(host, "violation");
        if got == want {
            return;
        }
        assert!(
            got < want,
            "more violations than sent: {got} > {want} (duplicates?)"
        );
        assert!(
            Instant::now() < deadline,
            "only {got} of {want} violations arrived in time"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// 20,000 violations while the collector is killed twice and the agent once;
/// the collector's database is `database` (SQLite file or PostgreSQL URL).
/// `database_restart` runs once the first 4,000 are stored (PostgreSQL: the
/// server restarts under the running collector, which must reconnect by
/// itself).
fn exactly_once(
    host: &str,
    dir: &std::path::Path,
    database: &str,
    mut database_restart: impl FnMut(),
) {
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut collector = RunningCollector::start_with(dir, database, None);
    let config = collector.agent_config(dir, host, None);
    let cgroup_rel = cgroup_rel(&cgroup);
    let policy = FixturePolicy::delivering(host, &cgroup_rel).text();
    let regions = DELIVERY_REGIONS;
    let cfg = ["--config", config.to_str().expect("utf-8")];
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();

    let mut agent = RunningAgent::start_with(&policy, regions, &cfg);
    probe::violate(&cgroup, &target, 4000);
    wait_for_violations(&collector, host, 4000);
    // The database restarts (PostgreSQL) while the collector keeps running: it
    // must reconnect by itself and store what comes next.
    database_restart();
    probe::violate(&cgroup, &target, 2000);
    wait_for_violations(&collector, host, 6000);

    // The collector crashes; violations keep coming and wait in the spool.
    collector.kill9();
    probe::violate(&cgroup, &target, 6000);
    std::thread::sleep(Duration::from_millis(500));
    let st = agent.status();
    assert!(
        st.spool_depth >= 6000,
        "spooled while the collector is down: {st:?}"
    );
    collector.restart();
    wait_for_violations(&collector, host, 12_000);

    // Crash it again, mid-delivery this time.
    probe::violate(&cgroup, &target, 6000);
    collector.kill9();
    collector.restart();
    wait_for_violations(&collector, host, 18_000);

    // The agent crashes; a new one resumes from the same spool.
    let drops_before = agent.kernel_drops();
    agent.kill9();
    drop(agent);
    let agent = RunningAgent::start_with(&policy, regions, &cfg);
    probe::violate(&cgroup, &target, 2000);
    wait_for_violations(&collector, host, 20_000);
    let drops = drops_before + agent.kernel_drops();

    // Exactly once and none missing: violations, audit and gap records share one
    // sequence per host, and the stored sequences are exactly 1..=last.
    let all = collector.records_once(host);
    let seqs: Vec<u64> = all.iter().map(pb::StoredRecord::seq).collect();
    // Content: every violation is a UDP record to the target, from the cgroup.
    let violations: Vec<&Flow> = all.iter().filter_map(pb::StoredRecord::violation).collect();
    assert_eq!(violations.len(), 20_000);
    assert!(
        violations
            .iter()
            .all(|f| f.remote == target.as_str() && f.protocol() == Protocol::Udp),
        "every stored violation is one the test sent"
    );
    // The kernel's drop counter explains every gap: none dropped, no gap record.
    let gaps: u64 = all
        .iter()
        .filter_map(pb::StoredRecord::gap)
        .map(|g| g.count)
        .sum();
    assert_eq!((drops, gaps), (0, 0), "kernel drops and gap records agree");
    // What an auditor's host listing shows (per-host counters kept with the
    // records): every violation, no gap, the last sequence.
    let listed = collector.hosts();
    let h = listed
        .iter()
        .find(|h| h.host_id == host)
        .expect("the host is listed");
    assert_eq!(
        (h.violations, h.gaps, h.last_seq, h.unexplained_jumps),
        (20_000, 0, seqs.len() as u64, 0)
    );
    // The record chain holds through every crash: no break at ingest, and
    // recomputed from the stored rows, intact over every record.
    let (chain, code) = collector.verify(host);
    assert!(
        chain.intact && chain.findings.is_empty() && code == 0,
        "{chain:#?}"
    );
    assert_eq!(
        (chain.records, chain.chained, h.chain_breaks),
        (seqs.len() as u64, seqs.len() as u64, 0)
    );
    // An auditor's class filter matches the name exactly: LIKE's wildcards in
    // it are not wildcards.
    let found = |class: &str| {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                collector
                    .client(None)
                    .await
                    .query_violations(residency_proto::collector::v1::ViolationQuery {
                        class: class.into(),
                        limit: 10,
                        ..Default::default()
                    })
                    .await
                    .expect("QueryViolations")
                    .into_inner()
                    .records
                    .len()
            })
    };
    assert_eq!(
        (
            found("eu_personal"),
            found("eu_%"),
            found("eu%"),
            found("%")
        ),
        (10, 0, 0, 0)
    );
    drop(agent);
    drop(collector);
}

#[test]
fn every_violation_arrives_exactly_once_through_collector_and_agent_crashes() {
    let tmp = TempPath::dir("delivery-sqlite");
    let db = tmp.path().join("collector.db");
    exactly_once(
        "delivery-sqlite",
        tmp.path(),
        db.to_str().expect("utf-8"),
        || {},
    );
}

#[test]
fn every_violation_arrives_exactly_once_in_postgresql_through_its_restart() {
    let mut pg = PgServer::start();
    let url = pg.url.clone();
    let tmp = TempPath::dir("delivery-pg");
    // The database server restarts under the running collector too: the
    // collector reconnects, and the batch that met the dead connection is sent
    // again by the agent.
    exactly_once("delivery-pg", tmp.path(), &url, || pg.restart());
}

#[test]
fn a_forged_sequence_in_the_collector_does_not_stop_delivery() {
    // Someone delivers a record with sequence 10^9 for this host (a stolen
    // token, a bug). The collector flags the jump; the agent must not take it
    // as "everything up to 10^9 is stored": it keeps delivering, loses nothing.
    let tmp = TempPath::dir("delivery-forged");
    let db = tmp.path().join("collector.db");
    let host = "delivery-forged";
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut collector = RunningCollector::start_with(tmp.path(), db.to_str().expect("utf-8"), None);
    let config = collector.agent_config(tmp.path(), host, None);
    let rel = cgroup_rel(&cgroup);
    let policy = FixturePolicy::delivering(host, &rel).text();
    let cfg = ["--config", config.to_str().expect("utf-8")];
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    let agent = RunningAgent::start_with(&policy, DELIVERY_REGIONS, &cfg);
    probe::violate(&cgroup, &target, 10);
    wait_for_violations(&collector, host, 10);

    // A client with this host's token delivers a record with sequence 10^9.
    let forged = pb::Record {
        seq: 1_000_000_000,
        time_unix_ns: 0,
        body: Some(pb::record::Body::Audit(pb::Audit::default())),
        chain: Vec::new(),
    };
    assert_eq!(collector.deliver_as(host, vec![forged]), 1_000_000_000);
    // The collector shows the jump as unexplained.
    let jumps = |collector: &RunningCollector| {
        collector
            .hosts()
            .into_iter()
            .find(|h| h.host_id == host)
            .map(|h| h.unexplained_jumps)
    };
    assert_eq!(jumps(&collector), Some(1), "the forged sequence is flagged");
    // The agent meets the forged last sequence at its next connection.
    collector.kill9();
    collector.restart();
    probe::violate(&cgroup, &target, 10);
    wait_for_violations(&collector, host, 20);
    assert!(
        agent
            .log_text()
            .contains("the collector claims records this host never wrote"),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        jumps(&collector),
        Some(1),
        "the agent's own records below it add none"
    );
}

/// Holds `n` connections to `target` that never speak, as `uid` (root when
/// None), until dropped.
struct Flood(std::process::Child);

impl Flood {
    fn start(target: &str, n: usize, uid: Option<u32>) -> Flood {
        let mut cmd = std::process::Command::new(match uid {
            Some(_) => harness::harness::agent::bin_for_others("netprobe"),
            None => probe::netprobe(),
        });
        cmd.args(["hold", target, &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(u) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, u);
        }
        let mut child = cmd.spawn().expect("netprobe hold");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("held");
        assert!(line.contains("held"), "{line}");
        Flood(child)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after ")".
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn a_flood_of_idle_clients_costs_no_record_and_no_service() {
    let tmp = TempPath::dir("delivery-flood");
    let host = "delivery-flood";
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    // collectord under systemd's default limit of 1,024 open files, with no
    // way to raise it: it sizes its listeners to fit.
    let mut collector = RunningCollector::start(tmp.path());
    collector.kill9();
    collector.open_files = Some(1024);
    collector.restart();
    let config = collector.agent_config(tmp.path(), host, None);
    let rel = cgroup_rel(&cgroup);
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = RunningAgent::start_with(
        &FixturePolicy::delivering(host, &rel).text(),
        DELIVERY_REGIONS,
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--metrics-listen",
            &metrics,
        ],
    );
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    let agent_pid = agent.pid();
    let collector_pid = collector.pid().expect("collectord runs");
    // sensord as under systemd without LimitNOFILE (soft 1,024), with no way
    // to raise it: the listeners' limits must keep its own files open.
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &agent_pid.to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());

    let floods = [
        Flood::start(agent.socket.to_str().expect("utf-8"), 1500, Some(65534)),
        Flood::start(&metrics, 1500, None),
        Flood::start(&collector.endpoint()["http://".len()..], 1500, Some(65534)),
        Flood::start(collector.socket.to_str().expect("utf-8"), 1500, Some(65534)),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let ticks = cpu_ticks(collector_pid);
    probe::violate(&cgroup, &target, 100);
    // Root's tools are served throughout.
    assert!(agent.ctl(&["status"]).status.success(), "sensorctl status");
    let out = std::process::Command::new(harness::harness::agent::workspace_bin("collectorctl"))
        .arg("--socket")
        .arg(&collector.socket)
        .arg("hosts")
        .output()
        .expect("collectorctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    // Nobody spins on accept errors; nobody runs out of descriptors.
    let spent = cpu_ticks(collector_pid) - ticks;
    assert!(
        spent < 100,
        "collectord used {spent} ticks in ~2 s of flood"
    );
    for (who, pid) in [("sensord", agent_pid), ("collectord", collector_pid)] {
        let n = open_fds(pid);
        assert!(n < 1200, "{who} holds {n} descriptors during the flood");
    }
    drop(floods);
    // Every violation reaches the collector.
    wait_for_violations(&collector, host, 100);
    // The metrics endpoint still answers once the flood is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = std::net::TcpStream::connect(&metrics)
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if answered {
            break;
        }
        assert!(Instant::now() < deadline, "the metrics endpoint stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A small filesystem at a path, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// A tmpfs of `size`.
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a tmpfs at {}", path.display());
        SmallDisk(path.to_owned())
    }

    /// An ext4 filesystem of `size` on a loop device (its image in
    /// `image`, which the caller's temporary directory removes): a disk
    /// with blocks, metadata and write-back, unlike tmpfs.
    fn ext4(path: &std::path::Path, image: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("truncate")
            .args(["-s", size])
            .arg(image));
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(path));
        SmallDisk(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // A loop device is detached with its last unmount (autoclear).
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Records `host`'s stored gap records (of `source`, or any) count as lost.
fn gap_count(c: &RunningCollector, host: &str, source: Option<pb::GapSource>) -> u64 {
    c.export(Some("gap"))
        .iter()
        .filter(|r| r.host_id == host)
        .filter_map(pb::StoredRecord::gap)
        .filter(|g| source.is_none_or(|s| g.source() == s))
        .map(|g| g.count)
        .sum()
}

/// Violations of `host` the collector stored, and records its gap records
/// count as lost (any source).
fn stored_and_counted(c: &RunningCollector, host: &str) -> (u64, u64) {
    (c.count(host, "violation") as u64, gap_count(c, host, None))
}

/// Waits until every one of `sent` violations is stored or counted in a gap
/// record; never more.
fn wait_accounted(c: &RunningCollector, agent: &RunningAgent, host: &str, sent: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (violations, lost) = stored_and_counted(c, host);
        if violations + lost == sent {
            return (violations, lost);
        }
        assert!(
            violations + lost <= sent,
            "more than sent: {violations} + {lost} > {sent}"
        );
        assert!(
            Instant::now() < deadline,
            "only {violations} violations stored and {lost} counted as lost of {sent}; status {}; log {}",
            agent.ctl_json(&["status"]),
            agent
                .log_text()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The spool on a `size` disk, the collector down while `first` violations
/// fill it; once it is back, every one is stored or counted, and `then`
/// more violations (space free again, nothing restarted) are all stored.
fn a_full_disk(host: &str, ext4: bool, size: &str, first: usize, then: usize) {
    let tmp = TempPath::dir(host);
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    let spool = tmp.path().join("spool");
    let disk = match ext4 {
        true => SmallDisk::ext4(&spool, &tmp.path().join("spool.img"), size),
        false => SmallDisk::mount(&spool, size),
    };
    let rel = cgroup_rel(&cgroup);
    let agent = RunningAgent::start_with(
        &FixturePolicy::delivering(host, &rel).text(),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    collector.kill9();
    probe::violate(&cgroup, &target, first);
    assert!(
        agent.wait_log("the spool failed", Duration::from_secs(10)),
        "the disk filled: {}",
        agent.log_text()
    );
    collector.restart();
    let (_, lost) = wait_accounted(&collector, &agent, host, first as u64);
    assert!(
        lost > 0,
        "the disk was full: some records were counted, not stored"
    );
    // Space is free again: the spool takes writes without a restart.
    probe::violate(&cgroup, &target, then);
    let (violations, after) = wait_accounted(&collector, &agent, host, (first + then) as u64);
    assert_eq!(
        after, lost,
        "nothing more lost once there is room ({violations} stored)"
    );
    // What the full disk cost is accounted for in the chain too: every
    // hole is one of the agent's gaps.
    let (chain, code) = collector.verify(host);
    assert!(chain.intact && code == 0, "{chain:#?}");
    drop(agent);
    drop(disk);
}

#[test]
fn a_full_disk_costs_no_record_without_a_gap() {
    a_full_disk("delivery-disk-full", false, "128k", 1000, 200);
}

/// The spool's own records fill a 1 MiB ext4 filesystem (the batches being
/// written when it fills, many at a time), then drain and take more.
#[test]
fn a_spool_filling_its_filesystem_counts_every_record_and_resumes() {
    a_full_disk("delivery-disk-filled", true, "1M", 10_000, 2_000);
}

/// The kernel's ring overflows while the spool's disk is full: the KERNEL
/// gap record that counts the ring's losses cannot be spooled either. It is
/// held and spooled once the disk has room, so its count (thousands of
/// records) reaches the collector instead of "one record not spooled".
#[test]
fn ring_losses_while_the_disk_is_full_reach_the_collector_with_their_count() {
    let host = "delivery-ring-disk";
    let tmp = TempPath::dir(host);
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let mut collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    let spool = tmp.path().join("spool");
    let disk = SmallDisk::mount(&spool, "256k");
    let agent = RunningAgent::start_with(
        &FixturePolicy::delivering(host, &cgroup_rel(&cgroup)).text(),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    );
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    collector.kill9();
    // The agent stalls while more violations come than its ring holds, and
    // meanwhile the disk fills up to its last byte.
    let pid = agent.pid() as i32;
    // SAFETY: signals to the agent this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    probe::violate(&cgroup, &target, 40_000);
    let filler = spool.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..1]).is_ok() {}
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        agent.wait_log("a gap record could not be spooled", Duration::from_secs(30)),
        "the ring's losses were counted while the disk was full: {}",
        agent.log_text()
    );
    let lost = agent.counter("ringbuf_reserve_failed");
    assert!(lost > 0, "the ring overflowed");
    std::fs::remove_file(&filler).expect("room again");
    collector.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let kernel = gap_count(&collector, host, Some(pb::GapSource::Kernel));
        if kernel == lost {
            break;
        }
        assert!(
            kernel < lost,
            "more than the kernel lost: {kernel} > {lost}"
        );
        assert!(
            Instant::now() < deadline,
            "the KERNEL gaps count {kernel} of the {lost} records the ring lost; log {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (chain, code) = collector.verify(host);
    assert!(chain.intact && code == 0, "{chain:#?}");
    drop(agent);
    drop(disk);
}

/// Violations the connect hooks never saw reach the collector like any other:
/// an inbound connection from a denied peer (`accept`), a raw socket
/// (`socket`) and a handed-over socket's bytes to a denied host (`packet`),
/// each with the process that did it.
#[test]
fn inbound_raw_and_handed_over_violations_reach_the_collector() {
    let tmp = TempPath::dir("rs-delivery-kinds");
    let host = "kinds-host";
    let cgroup = TestCgroup::create();
    let net = TestNet::create();
    let collector = RunningCollector::start(tmp.path());
    let config = collector.agent_config(tmp.path(), host, None);
    let policy = FixturePolicy::delivering(host, &cgroup_rel(&cgroup)).text();
    let cfg = ["--config", config.to_str().expect("utf-8")];
    let _agent = RunningAgent::start_with(&policy, DELIVERY_REGIONS, &cfg);
    let gate = |args: &[&str]| {
        let mut c = std::process::Command::new(workspace_bin("gateprobe"));
        c.args(args);
        c
    };
    let read_json = |w: &mut Waiting| -> serde_json::Value {
        serde_json::from_str(w.read_line().trim()).expect("gateprobe json")
    };

    // A tagged server; a client in the denied country connects and reads.
    let bind = format!("{}:0", net.virginia.host_v4);
    let mut server = Waiting::start(cgroup.command(gate(&["serve", &bind, "reply"])));
    let port = read_json(&mut server)["port"].as_u64().expect("port") as u16;
    let to = std::net::SocketAddr::new(std::net::IpAddr::V4(net.virginia.host_v4), port);
    net.virginia.inside(move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .expect("monitor mode: the client connects");
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = std::io::Read::read(&mut s, &mut [0u8; 16]);
    });
    // A raw socket.
    let raw_to = format!("{}:9", net.virginia.v4);
    let mut raw = Waiting::start(cgroup.command(gate(&["raw-udp", &raw_to, "raw"])));
    assert_eq!(read_json(&mut raw)["errno"][0], 0);
    // A socket an untagged process opened, written by a tagged one.
    let sink = net.virginia.tcp_hold_server(false);
    let mut owner = Waiting::start(gate(&["hold", "tcp", &sink.addr.to_string()]));
    let held = read_json(&mut owner);
    let (pid, fd) = (held["pid"].to_string(), held["fd"].to_string());
    let mut taker = Waiting::start(cgroup.command(gate(&["getfd", &pid, &fd, "handed"])));
    assert_eq!(read_json(&mut taker)["errno"][0], 0);

    let want = [
        ("accept", server.pid()),
        ("socket", raw.pid()),
        ("packet", taker.pid()),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: Vec<(String, u64)> = collector
            .export(None)
            .into_iter()
            .filter(|r| r.host_id == host)
            .filter_map(|r| r.violation().map(|f| (f.kind().label(), u64::from(f.pid))))
            .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, p)| {
                !stored
                    .iter()
                    .any(|(sk, sp)| sk == k && *sp == u64::from(*p))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not at the collector: {missing:?}; stored: {stored:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_resent_batch_reaches_watchers_and_counters_once() {
    use harness::harness::collector::chained_violation;
    use tokio_stream::StreamExt;
    const HOST: &str = "resend-host";
    let tmp = TempPath::dir("resend");
    let collector = RunningCollector::start(tmp.path());
    let mut prev = residency_proto::chain::ZERO;
    let records: Vec<pb::Record> = (1..=150)
        .map(|seq| chained_violation(seq, HOST, &mut prev))
        .collect();
    assert_eq!(collector.deliver_as(HOST, records[..100].to_vec()), 100);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut watch = rt
        .block_on(async {
            collector
                .client(None)
                .await
                .watch_violations(pb::ViolationQuery {
                    host_id: HOST.into(),
                    ..Default::default()
                })
                .await
        })
        .expect("watch")
        .into_inner();
    // An agent that did not see the acknowledgement sends 51..=150 again.
    assert_eq!(collector.deliver_as(HOST, records[50..].to_vec()), 150);
    let mut seen = Vec::new();
    rt.block_on(async {
        // Everything new arrives; then nothing more for a second.
        while let Ok(Some(r)) = tokio::time::timeout(
            Duration::from_secs(if seen.len() < 50 { 10 } else { 1 }),
            watch.next(),
        )
        .await
        {
            seen.push(r.expect("a watched record").seq());
        }
    });
    assert_eq!(
        seen,
        (101..=150).collect::<Vec<u64>>(),
        "each new record once, none resent"
    );
    let host = collector
        .hosts()
        .into_iter()
        .find(|h| h.host_id == HOST)
        .expect("listed");
    assert_eq!(host.violations, 150);
}
