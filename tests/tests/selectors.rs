//! Selectors keep selecting what they name as cgroups come and go.
//!
//! A cgroup selector keeps selecting its path when the cgroup is removed
//! and created again — what `systemctl restart` does to a service's cgroup
//! (a new cgroup id under the same path). Found in review: the selector
//! kept the old id, and the restarted service ran untagged for good.
//!
//! Unit and container selectors select cgroups by name, named the way
//! systemd and each container runtime name theirs, once they exist.

use std::time::{Duration, Instant};

use harness::harness::{
    agent::RunningAgent,
    cgroup::TestCgroup,
    netns::TestNet,
    probe,
    scenario::{DELIVERY_REGIONS, FixturePolicy, cgroup_rel},
};

#[test]
fn a_recreated_cgroup_is_selected_again_within_a_second() {
    let parent = TestCgroup::create();
    let net = TestNet::create();
    let svc = parent.child("billing.service");
    let rel = cgroup_rel(&svc);
    let agent = RunningAgent::start(
        &FixturePolicy::delivering("selectors-1", &rel).text(),
        DELIVERY_REGIONS,
    );
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    assert!(
        judged(&agent, &svc, &target),
        "the service's cgroup is selected"
    );
    // Restarted: the cgroup goes, and comes back with another id.
    let old_id = harness::harness::cgroup::id_of(svc.path());
    drop(svc);
    let again = parent.child("billing.service");
    assert_ne!(harness::harness::cgroup::id_of(again.path()), old_id);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        judged(&agent, &again, &target),
        "the recreated cgroup is selected again"
    );
    assert!(
        agent.log_text().contains("created again"),
        "{}",
        agent.log_text()
    );
}

/// Whether a UDP send from a process in `cg` is recorded as a violation of
/// the agent's class (looked for for up to five seconds).
fn judged(agent: &RunningAgent, cg: &TestCgroup, target: &str) -> bool {
    let p = probe::run(cg.command(probe::command(&["udp-sendto", target])));
    assert_eq!(p.errno(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !agent
            .listed(false, &["--pid", &p.pid.to_string()])
            .is_empty()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A 64-digit container id that starts with `tag` and differs per run.
fn container_id(tag: u8) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let salt = (u64::from(nanos) << 8 ^ u64::from(std::process::id())) & 0xff_ffff_ffff;
    format!("{tag:02x}{salt:010x}{:052x}", u64::from(tag) * 0x1234_5678)
}

/// The fixture policy with its cgroup selector replaced by `selectors`
/// (lines of `[[selectors]]` tables).
fn policy_selecting(host: &str, selectors: &str) -> String {
    let text = FixturePolicy::delivering(host, "/placeholder").text();
    let at = text.find("[[selectors]]").expect("the fixture selects");
    format!("{}{selectors}", &text[..at])
}

#[test]
fn a_unit_selector_selects_the_unit_once_it_starts_and_after_a_restart() {
    let parent = TestCgroup::create();
    let net = TestNet::create();
    let unit = format!("rs-billing-{}.service", std::process::id());
    let agent = RunningAgent::start(
        &policy_selecting(
            "selectors-unit",
            &format!("[[selectors]]\nclass = \"eu_personal\"\nunit = \"{unit}\"\n"),
        ),
        DELIVERY_REGIONS,
    );
    // Not started yet: said so, and retried.
    assert!(
        agent
            .log_text()
            .contains(&format!("unit {unit}: no cgroup")),
        "{}",
        agent.log_text()
    );
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    // The unit starts (systemd creates its cgroup), under a slice.
    let slice = parent.child("app.slice");
    let svc = slice.child(&unit);
    let other = slice.child("rs-other.service");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        judged(&agent, &svc, &target),
        "the unit's cgroup is selected"
    );
    assert!(!judged(&agent, &other, &target), "another unit is not");
    // Restarted: a new cgroup id under the same name.
    drop(svc);
    let again = slice.child(&unit);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        judged(&agent, &again, &target),
        "the restarted unit is selected"
    );
    assert!(
        agent.log_text().contains("all selectors are installed now"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn container_selectors_select_by_id_prefix_under_every_runtimes_naming() {
    let parent = TestCgroup::create();
    let net = TestNet::create();
    let ids: Vec<String> = (1..=6).map(container_id).collect();
    // Five selected (12-digit prefixes, as `docker ps` prints them), the
    // sixth not.
    let selectors: String = ids[..5]
        .iter()
        .map(|id| {
            format!(
                "[[selectors]]\nclass = \"eu_personal\"\ncontainer = \"{}\"\n\n",
                &id[..12]
            )
        })
        .collect();
    let agent = RunningAgent::start(
        &policy_selecting("selectors-container", &selectors),
        DELIVERY_REGIONS,
    );
    let server = net.virginia.udp_server(false);
    let target = server.addr.to_string();
    // The containers start after the agent, each named as its runtime does.
    let system = parent.child("system.slice");
    let docker = system.child(&format!("docker-{}.scope", ids[0]));
    let pod = parent
        .child("kubepods.slice")
        .child("kubepods-burstable.slice")
        .child("kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice");
    let containerd = pod.child(&format!("cri-containerd-{}.scope", ids[1]));
    let crio = pod.child(&format!("crio-{}.scope", ids[2]));
    let podman = parent
        .child("machine.slice")
        .child(&format!("libpod-{}.scope", ids[3]));
    let cgroupfs = parent.child("docker").child(&ids[4]);
    let unselected = system.child(&format!("docker-{}.scope", ids[5]));
    std::thread::sleep(Duration::from_millis(1500));
    for (runtime, cg) in [
        ("docker", &docker),
        ("containerd", &containerd),
        ("cri-o", &crio),
        ("podman", &podman),
        ("docker (cgroupfs driver)", &cgroupfs),
    ] {
        assert!(
            judged(&agent, cg, &target),
            "the {runtime} container is selected"
        );
    }
    assert!(
        !judged(&agent, &unselected, &target),
        "a container no selector names is not"
    );
}
