//! `sensorctl lookup IP`: why an address gets its verdict.

use std::{net::IpAddr, path::PathBuf};

use sensor_user::policy::{compile, explain, validate};

use crate::{RegionArgs, policy::load_regions};

#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// The address (IPv4 or IPv6).
    ip: IpAddr,
    /// Only this class.
    #[arg(long)]
    class: Option<String>,
    /// The policy to explain against.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    #[command(flatten)]
    regions: RegionArgs,
}

pub fn run(a: LookupArgs) -> i32 {
    let policy = match validate::load(&a.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let Some(c) = &a.class
        && policy.class(c).is_none()
    {
        let names: Vec<&str> = policy.classes.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "error: no class named {c:?} in {}; classes: {}",
            a.policy.display(),
            names.join(", ")
        );
        return 2;
    }
    let Some((db, cloud)) = load_regions(&a.regions) else {
        return 2;
    };
    let compiled = compile::compile(policy, &db, &cloud);
    print!("{}", explain::explain(&compiled, a.ip, a.class.as_deref()));
    0
}
