//! Policies end to end: a policy file compiled with region data decides in the
//! kernel, and reloading it (100 times, while a tagged process connects in a
//! loop) never lets the kernel see an empty or partial table.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use harness::harness::{
    cgroup::TestCgroup,
    netns::TestNet,
    probe,
    scenario::{FixturePolicy, cgroup_rel},
    sensor::SensorFixture,
    temp::TempPath,
};
use sensor_user::{
    ledger::TagLedger,
    policy::{apply, source::PolicySource},
    system::mountinfo,
};

fn policy_text(cgroup: &str, variant: u32) -> String {
    // The denied prefix changes every reload so each one rewrites the table.
    let extra = format!(r#"denied_cidrs = ["192.0.2.{variant}/32"]"#);
    FixturePolicy {
        host_id: "reload-test",
        aggregation: "0",
        mode: "enforce",
        allowed: r#"["EEA"]"#,
        cgroup_rel: cgroup,
        class_extra: &extra,
    }
    .text()
}

/// A kernel sensor with the fixture policy (variant 1) installed from files,
/// a test cgroup it tags, and the remote hosts.
struct Installed {
    fx: SensorFixture,
    cgroup: TestCgroup,
    net: TestNet,
    root: std::path::PathBuf,
    rel: String,
    source: PolicySource,
    ledger: TagLedger,
    /// Generation of the first install.
    generation: u32,
    policy: TempPath,
    _regions: TempPath,
}

impl Installed {
    /// `name` keeps its files apart from other tests'.
    fn new(name: &str, regions: &str) -> Installed {
        let mut fx = SensorFixture::attach();
        let cgroup = TestCgroup::create();
        let net = TestNet::create();
        let root = mountinfo::cgroup2_mount().expect("cgroup2");
        let rel = cgroup_rel(&cgroup);
        let regions = TempPath::file(&format!("{name}-regions.csv"), regions);
        let policy = TempPath::file(&format!("{name}-policy.toml"), &policy_text(&rel, 1));
        let source = PolicySource {
            policy: policy.path().to_owned(),
            regions: regions.path().to_owned(),
            aws_ranges: None,
        };
        let mut ledger = TagLedger::default();
        let first = source.build(&[]).expect("policy builds");
        let r =
            apply::apply(&mut fx.sensor, &first, &|c| c.mode, &root, &mut ledger).expect("apply");
        Installed {
            fx,
            cgroup,
            net,
            root,
            rel,
            source,
            ledger,
            generation: r.generation,
            policy,
            _regions: regions,
        }
    }

    /// Installs `c` (modes as the policy says).
    fn apply(&mut self, c: &sensor_user::policy::compile::Compiled) -> Result<u32, String> {
        apply::apply(
            &mut self.fx.sensor,
            c,
            &|c| c.mode,
            &self.root,
            &mut self.ledger,
        )
        .map(|r| r.generation)
        .map_err(|e| e.to_string())
    }
}

#[test]
fn hundred_reloads_never_show_a_wrong_verdict() {
    let mut k = Installed::new("reloads", "1.0.0.0,1.0.0.255,AU\n5.0.0.0,5.0.0.255,DE\n");
    let (cgroup, net, rel) = (&k.cgroup, &k.net, k.rel.clone());

    let fra = net.frankfurt.tcp_server(false);
    let iad = net.virginia.tcp_server(false);
    let (fra_t, iad_t) = (fra.addr.to_string(), iad.addr.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let cmd_args: Vec<String> = std::iter::repeat_n(
            [
                "tcp-connect".to_owned(),
                fra_t.clone(),
                "tcp-connect".to_owned(),
                iad_t.clone(),
            ],
            50,
        )
        .flatten()
        .collect();
        let cg_procs = cgroup.path().to_owned();
        std::thread::spawn(move || {
            let cgroup = harness::harness::cgroup::TestCgroup::adopt(cg_procs);
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let args: Vec<&str> = cmd_args.iter().map(String::as_str).collect();
                results.push(probe::run(cgroup.command(probe::command(&args))));
            }
            std::mem::forget(cgroup);
            results
        })
    };
    let mut generations = Vec::new();
    for i in 0..100 {
        std::fs::write(k.policy.path(), policy_text(&rel, 2 + (i % 2))).expect("rewrite policy");
        let c = k.source.build(&[]).expect("policy builds");
        generations.push(k.apply(&c).expect("apply"));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let runs = prober.join().expect("prober");
    assert!(!runs.is_empty());
    let mut checked = 0;
    for r in &runs {
        for pair in r.errnos.chunks(2) {
            assert_eq!(
                pair[0], 0,
                "Frankfurt (DE, allowed) must always connect: {r:?}"
            );
            assert_eq!(
                pair[1],
                libc::EPERM,
                "Virginia (US) must always be denied: {r:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(generations.len(), 100);
    assert!(
        generations.windows(2).all(|w| w[1] == w[0] + 1),
        "one generation per reload"
    );
    eprintln!(
        "{checked} connect pairs over {} probe runs during 100 reloads",
        runs.len()
    );
    assert_eq!(iad.received(), 0, "Virginia never saw a connection");
}

#[test]
fn a_policy_that_does_not_build_changes_nothing() {
    let regions = TempPath::file("regions2.csv", "1.0.0.0,1.0.0.255,AU\n");
    let policy = TempPath::file(
        "bad-policy.toml",
        "[classes.eu]\nallowed_jurisdictions = [\"EU28\"]\n",
    );
    let source = PolicySource {
        policy: policy.path().to_owned(),
        regions: regions.path().to_owned(),
        aws_ranges: None,
    };
    let e = source.build(&[]).expect_err("must be rejected").to_string();
    assert!(
        e.contains("bad-policy.toml:2:26: class eu: unknown jurisdiction \"EU28\""),
        "{e}"
    );
}

#[test]
fn an_install_that_would_overflow_a_kernel_map_writes_nothing() {
    // A policy that bypassed `policy check` (here: failsafe prefixes added
    // after the check) is refused before the first write: the verdict table,
    // its generation and the failsafe set stay as they were.
    let mut k = Installed::new("overflow", "5.0.0.0,5.0.0.255,DE\n");
    let iad = k.net.virginia.udp_server(false);
    let target = iad.addr.to_string();
    let send = |cgroup: &TestCgroup| {
        probe::run(cgroup.command(probe::command(&["udp-sendto", &target]))).errno()
    };
    assert_eq!(send(&k.cgroup), libc::EPERM);

    let mut huge = k.source.build(&[]).expect("policy builds");
    // 5,000 /32s covering Virginia's address among them.
    let virginia = u32::from(k.net.virginia.v4);
    huge.policy.host.failsafe = (0..5000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(virginia + i);
            ipnet::IpNet::from(std::net::IpAddr::V4(ip))
        })
        .collect();
    let e = k.apply(&huge).expect_err("must not fit");
    assert!(
        e.contains("FAILSAFE") && e.contains("nothing was installed"),
        "{e}"
    );
    assert_eq!(k.fx.sensor.generation(), k.generation, "no table switch");
    assert_eq!(send(&k.cgroup), libc::EPERM, "Virginia stays denied");
    assert_eq!(iad.received(), 0);
}
