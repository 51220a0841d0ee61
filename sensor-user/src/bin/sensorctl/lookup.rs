//! `sensorctl lookup IP|NAME`: why an address gets its verdict, or what the
//! name rules say about a DNS name.

use std::{net::IpAddr, path::PathBuf};

use sensor_user::policy::{compile, explain};

use residency_proto::agent::v1::LookupRequest;

use crate::{Global, RegionArgs, client, output, policy::load_regions};

#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// The address (IPv4 or IPv6), or a DNS name: which classes'
    /// allowed_names/denied_names rule on it, and (from the agent) the
    /// addresses processes learned for it.
    #[arg(value_name = "IP|NAME")]
    target: String,
    /// Only this class.
    #[arg(long)]
    class: Option<String>,
    /// Explain offline against this policy file instead of asking the agent.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    regions: RegionArgs,
}

pub async fn run(g: &Global, a: LookupArgs) -> i32 {
    let ip = a.target.parse::<IpAddr>().ok();
    if ip.is_none() && !residency_proto::names::is_dns_name(&a.target) {
        eprintln!(
            "error: {:?} is neither an IPv4 or IPv6 address nor a DNS name; give an address (198.51.100.7, 2001:db8::1) or a name (api.example.com)",
            a.target
        );
        return 1;
    }
    let Some(policy_path) = a.policy.clone() else {
        return via_agent(g, a).await;
    };
    let policy = match crate::policy::read_policy(&policy_path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Some(c) = &a.class
        && policy.class(c).is_none()
    {
        let names: Vec<&str> = policy.classes.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "error: no class named {c:?} in {}; classes: {}",
            policy_path.display(),
            names.join(", ")
        );
        return 1;
    }
    let Some(ip) = ip else {
        let name = a.target.trim_end_matches('.').to_ascii_lowercase();
        let classes: Vec<String> = policy.classes.iter().map(|c| c.name.clone()).collect();
        let rules = sensor_user::dns::NameRules::of(&policy);
        let r = sensor_user::dns::explain::explain(
            &rules,
            &classes,
            &name,
            a.class.as_deref(),
            None,
            0,
        );
        if g.machine() {
            output::json(&r);
        } else {
            print!("{}", r.text);
        }
        return 0;
    };
    let Some((db, cloud)) = load_regions(&a.regions) else {
        return 2;
    };
    let compiled = compile::compile(policy, &db, &cloud);
    let e = explain::explain(&compiled, ip, a.class.as_deref());
    if g.machine() {
        output::json(&sensor_user::agent::queries::lookup_pb(&e));
    } else {
        print!("{e}");
    }
    0
}

async fn via_agent(g: &Global, a: LookupArgs) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    match c
        .lookup(LookupRequest {
            ip: a.target,
            class: a.class.unwrap_or_default(),
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            if g.machine() {
                output::json(&r);
            } else {
                print!("{}", r.text);
            }
            0
        }
        Err(e) => client::fail("lookup", e),
    }
}
