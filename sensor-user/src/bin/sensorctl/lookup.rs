//! `sensorctl lookup IP`: why an address gets its verdict.

use std::{net::IpAddr, path::PathBuf};

use sensor_user::policy::{compile, explain};

use residency_proto::agent::v1::LookupRequest;

use crate::{Global, RegionArgs, client, output, policy::load_regions};

#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// The address (IPv4 or IPv6).
    ip: IpAddr,
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
    let Some((db, cloud)) = load_regions(&a.regions) else {
        return 2;
    };
    let compiled = compile::compile(policy, &db, &cloud);
    let e = explain::explain(&compiled, a.ip, a.class.as_deref());
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
            ip: a.ip.to_string(),
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
