//! `sensorctl`: the Residency Sensor operator CLI.
//!
//! Exit codes: 0 success; 1 the input was checked and is wrong (invalid policy);
//! 2 the command could not run (usage, unreadable file, missing region data).

mod lookup;
mod policy;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Residency Sensor operator CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

/// Where region data comes from (shared by the commands that need it).
#[derive(Debug, clap::Args)]
pub struct RegionArgs {
    /// Region data: a directory with the default dataset, a MaxMind DB file
    /// (.mmdb) or a range CSV (start,end,CC). Default: the packaged dataset
    /// (/usr/share/residency/regions) or, in a checkout, data/regions.
    #[arg(long, value_name = "PATH", env = "SENSOR_REGIONS")]
    regions: Option<PathBuf>,
    /// AWS ip-ranges.json to place cloud prefixes in their region's country.
    #[arg(long, value_name = "FILE")]
    aws_ranges: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Explain the verdict for an address: country, site, matching prefix and
    /// the rule that decided, per class.
    Lookup(lookup::LookupArgs),
}

fn main() {
    let args = Args::parse();
    let code = match args.command {
        Cmd::Policy(cmd) => policy::run(cmd),
        Cmd::Lookup(a) => lookup::run(a),
    };
    std::process::exit(code);
}
