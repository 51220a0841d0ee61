//! A cgroup selector keeps selecting its path when the cgroup is removed
//! and created again — what `systemctl restart` does to a service's cgroup
//! (a new cgroup id under the same path). Found in review: the selector
//! kept the old id, and the restarted service ran untagged for good.

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
    // Whether a send from `cg` is recorded as a violation.
    let judged = |cg: &TestCgroup| {
        let p = probe::run(cg.command(probe::command(&["udp-sendto", &target])));
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
    };
    assert!(judged(&svc), "the service's cgroup is selected");
    // Restarted: the cgroup goes, and comes back with another id.
    let old_id = harness::harness::cgroup::id_of(svc.path());
    drop(svc);
    let again = parent.child("billing.service");
    assert_ne!(harness::harness::cgroup::id_of(again.path()), old_id);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(judged(&again), "the recreated cgroup is selected again");
    assert!(
        agent.log_text().contains("created again"),
        "{}",
        agent.log_text()
    );
}
