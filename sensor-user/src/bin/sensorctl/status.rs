//! `sensorctl status`.

use residency_proto::agent::v1::{GetStatusRequest, Mode};

use crate::{Global, client, output};

pub fn mode_name(m: i32) -> &'static str {
    match Mode::try_from(m) {
        Ok(Mode::Off) => "off",
        Ok(Mode::Monitor) => "monitor",
        Ok(Mode::Enforce) => "enforce",
        _ => "?",
    }
}

pub async fn run(g: &Global) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    let s = match c.get_status(GetStatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return client::fail("status", e),
    };
    if g.machine() {
        output::json(&s);
        return 0;
    }
    println!(
        "sensord {} on {} (kernel {})",
        s.version, s.host_id, s.kernel
    );
    println!(
        "policy:     {} sha256 {} generation {}",
        s.policy_path, s.policy_sha256, s.policy_generation
    );
    if !s.spool_problem.is_empty() {
        println!("SPOOL:      {}", s.spool_problem);
    }
    if !s.policy_problem.is_empty() {
        println!("PROBLEM:    {}", s.policy_problem);
    }
    if let Some(d) = &s.dataset {
        println!("regions:    {} {} ({})", d.name, d.version, d.licence);
    }
    println!(
        "tagged:     {} processes; verdict prefixes {}; records {}",
        s.tagged_processes, s.verdict_prefixes, s.events
    );
    println!("collector:  {} (spool {})", s.collector, s.spool_depth);
    if !s.chain_head.is_empty() {
        println!(
            "chain:      record {} {} (acknowledged up to {})",
            s.chain_seq,
            residency_proto::chain::hex(&s.chain_head),
            s.acked_seq
        );
    }
    let rows: Vec<Vec<String>> = s
        .modes
        .iter()
        .map(|m| vec![m.class.clone(), m.id.to_string(), mode_name(m.mode).into()])
        .collect();
    output::table(&["CLASS", "ID", "MODE"], &rows);
    let counters: Vec<String> = s
        .counters
        .iter()
        .filter(|c| !c.name.starts_with("reserved"))
        .map(|c| format!("{}={}", c.name, c.value))
        .collect();
    println!("counters:   {}", counters.join(" "));
    0
}
