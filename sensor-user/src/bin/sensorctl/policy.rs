//! `sensorctl policy check FILE`: validate (and optionally compile) a policy
//! without touching the kernel.

use std::path::PathBuf;

use clap::Subcommand;
use sensor_user::{
    policy::{compile, validate},
    regions::{self, cloud::CloudRanges},
};

use crate::RegionArgs;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Check a policy file: syntax, unknown keys, CIDRs, country codes and
    /// groups, class references, contradictions. Every problem is printed as
    /// FILE:LINE:COL: message. Exit 1 when the policy is invalid.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Also compile it with region data and print prefix counts per class.
        #[arg(long)]
        compile: bool,
        #[command(flatten)]
        regions: RegionArgs,
    },
}

/// Loads region data as the flags say; prints the error and returns None.
pub fn load_regions(a: &RegionArgs) -> Option<(regions::RegionDb, CloudRanges)> {
    let path = a.regions.clone().unwrap_or_else(regions::default_dir);
    let db = match regions::load_any(&path) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: region data: {e}");
            eprintln!(
                "hint: pass --regions PATH, or run `cargo xtask setup` in a checkout to fetch the default dataset"
            );
            return None;
        }
    };
    let cloud = match &a.aws_ranges {
        None => CloudRanges::default(),
        Some(p) => match regions::cloud::load_aws(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cloud ranges: {e}");
                return None;
            }
        },
    };
    Some((db, cloud))
}

pub fn run(cmd: PolicyCmd) -> i32 {
    match cmd {
        PolicyCmd::Check {
            file,
            compile: do_compile,
            regions,
        } => {
            let policy = match validate::load(&file) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    let n = e.diags.len();
                    eprintln!(
                        "{}: {n} problem{}; the policy was not applied",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    );
                    return 1;
                }
            };
            println!(
                "{}: ok: {} classes, {} sites, {} selectors, {} taint sources; sha256 {}",
                file.display(),
                policy.classes.len(),
                policy.sites.len(),
                policy.selectors.len(),
                policy.taint.len(),
                policy.hash
            );
            if do_compile {
                let Some((db, cloud)) = load_regions(&regions) else {
                    return 2;
                };
                let t = std::time::Instant::now();
                let compiled = compile::compile(policy, &db, &cloud);
                for c in &compiled.classes {
                    println!(
                        "class {} (id {}): {} prefixes before merging, {} after ({} allow, {} deny)",
                        c.name,
                        c.id,
                        c.prefixes_before,
                        c.entries.len(),
                        c.allow_prefixes,
                        c.deny_prefixes
                    );
                }
                println!("compiled in {:.0?}", t.elapsed());
            }
            0
        }
    }
}
