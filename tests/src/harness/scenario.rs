//! The standard residency scenario most kernel tests start from.
//!
//! Class 0 ("eu_personal") is carried by every process that execs in a fresh test
//! cgroup. Its verdicts: the Frankfurt host's prefixes are allowed, Virginia's
//! denied; anything else is unknown (a violation by default).

use std::{net::IpAddr, process::Command};

use ipnet::IpNet;
use sensor_user::kernel::verdicts::{Mode, Verdict, VerdictEntry};

use super::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    netns::{Place, RemoteHost, TestNet},
    probe::{self, ProbeResult},
    sensor::SensorFixture,
};

/// The class the scenario uses.
pub const EU: u8 = 0;
/// Its bit in a class mask.
pub const EU_BIT: u64 = 1 << EU;

/// Sensor, test cgroup and remote hosts, wired up.
pub struct Scenario {
    // Field order is drop order: detach the programs first.
    pub fx: SensorFixture,
    pub cgroup: TestCgroup,
    pub net: TestNet,
}

/// The /30 and /64 of a remote host.
pub fn host_nets(host: &RemoteHost) -> [IpNet; 2] {
    [
        IpNet::new(IpAddr::V4(host.v4), 30).expect("valid").trunc(),
        IpNet::new(IpAddr::V6(host.v6), 64).expect("valid").trunc(),
    ]
}

impl Scenario {
    /// Sets up the scenario with class 0 in `mode`.
    pub fn new(mode: Mode) -> Scenario {
        let mut sc = Scenario::without_selector(mode);
        sc.select_cgroup();
        sc
    }

    /// Installs the cgroup selector (class 0 for processes that exec in the
    /// test cgroup).
    pub fn select_cgroup(&mut self) {
        self.fx
            .sensor
            .add_cgroup_selector(self.cgroup.path(), EU)
            .expect("cgroup selector");
    }

    /// The scenario without the cgroup selector: nothing is tagged yet.
    pub fn without_selector(mode: Mode) -> Scenario {
        let mut fx = SensorFixture::attach();
        let cgroup = TestCgroup::create();
        let net = TestNet::create();

        fx.sensor.set_mode(EU, mode).expect("mode");
        let mut table = Vec::new();
        for (host, verdict) in [
            (&net.frankfurt, Verdict::Allow),
            (&net.virginia, Verdict::Deny),
        ] {
            debug_assert!(matches!(host.place, Place::Frankfurt | Place::Virginia));
            for n in host_nets(host) {
                table.push(VerdictEntry {
                    class: EU,
                    net: n,
                    verdict,
                });
            }
        }
        fx.sensor.replace_verdicts(&table).expect("verdicts");
        Scenario { fx, cgroup, net }
    }

    /// Runs netprobe with `args` inside the test cgroup (so it is tagged).
    pub fn inside(&self, args: &[&str]) -> ProbeResult {
        probe::run(self.cgroup.command(probe::command(args)))
    }

    /// Runs netprobe with `args` outside the test cgroup (untagged).
    pub fn outside(&self, args: &[&str]) -> ProbeResult {
        probe::run(probe::command(args))
    }

    /// A command that runs in the test cgroup.
    pub fn in_cgroup(&self, cmd: Command) -> Command {
        self.cgroup.command(cmd)
    }
}

/// The test cgroup's path as policies write it (from the cgroup v2 root).
pub fn cgroup_rel(cgroup: &TestCgroup) -> String {
    let root = sensor_user::system::mountinfo::cgroup2_mount().expect("cgroup v2");
    format!(
        "/{}",
        cgroup
            .path()
            .strip_prefix(&root)
            .expect("under the cgroup v2 root")
            .display()
    )
}

/// A policy file for the fixture hosts: sites `fra1` (DE) and `iad1` (US) on
/// the Frankfurt and Virginia ranges, and class `eu_personal` (id 0, allowed in
/// `allowed`) carried by the processes that exec in `cgroup_rel`.
/// `class_extra` is appended to the class table (more keys).
pub struct FixturePolicy<'a> {
    pub host_id: &'a str,
    pub aggregation: &'a str,
    pub mode: &'a str,
    pub allowed: &'a str,
    pub cgroup_rel: &'a str,
    pub class_extra: &'a str,
}

/// Region data for agents of delivery tests: one German range, so the
/// fixture's "Virginia" site is the only thing outside the EEA.
pub const DELIVERY_REGIONS: &str = "5.0.0.0,5.0.0.255,DE\n";

impl<'a> FixturePolicy<'a> {
    /// Host `host_id`, class eu_personal in monitor mode allowed in the EEA,
    /// carried by `cgroup_rel`, no aggregation: one violation per call.
    pub fn delivering(host_id: &'a str, cgroup_rel: &'a str) -> FixturePolicy<'a> {
        FixturePolicy {
            host_id,
            aggregation: "0",
            mode: "monitor",
            allowed: r#"["EEA"]"#,
            cgroup_rel,
            class_extra: "",
        }
    }
}

/// A sensord of `host` that delivers as `config` says (see
/// `RunningCollector::agent_config`), with the delivering fixture policy:
/// `cgroup`'s processes carry eu_personal, monitor mode, no aggregation.
pub fn delivering_agent(host: &str, cgroup: &TestCgroup, config: &std::path::Path) -> RunningAgent {
    RunningAgent::start_with(
        &FixturePolicy::delivering(host, &cgroup_rel(cgroup)).text(),
        DELIVERY_REGIONS,
        &["--config", config.to_str().expect("utf-8")],
    )
}

impl FixturePolicy<'_> {
    /// The TOML text.
    pub fn text(&self) -> String {
        let FixturePolicy {
            host_id,
            aggregation,
            mode,
            allowed,
            cgroup_rel,
            class_extra,
        } = self;
        format!(
            r#"
[host]
id = "{host_id}"
aggregation_interval = "{aggregation}"

[sites.fra1]
cidrs = ["198.51.100.0/24", "2001:db8:de::/48"]
country = "DE"

[sites.iad1]
cidrs = ["203.0.113.0/24", "2001:db8:a5::/48"]
country = "US"

[classes.eu_personal]
id = 0
mode = "{mode}"
allowed_jurisdictions = {allowed}
{class_extra}

[[selectors]]
class = "eu_personal"
cgroup = "{cgroup_rel}"
"#
        )
    }
}
