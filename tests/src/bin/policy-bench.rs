//! policy-bench: how long the agent takes from files to a policy in force, and
//! how much memory it holds afterwards, with the full default dataset.
//!
//! Steps timed: parse the dataset (both families), check and compile the
//! example policy, load the verdict table (and the rest of the policy) into the
//! kernel. Memory: VmRSS after loading (what the agent keeps) and VmHWM (the
//! peak while compiling). Run by `cargo xtask bench`; needs root.

use std::{path::PathBuf, time::Instant};

use harness::harness::privilege::require_root;
use sensor_user::{
    kernel::KernelSensor,
    ledger::TagLedger,
    policy::{apply, compile, validate},
    regions::{self, cloud::CloudRanges},
    system::mountinfo,
};

fn status_kib(field: &str) -> u64 {
    harness::harness::bench::process::status_kib("self", field)
}

fn main() {
    require_root();
    let policy_path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml")
        });
    let mut sensor = KernelSensor::load().expect("loading the kernel programs");
    let root = mountinfo::cgroup2_mount().expect("cgroup2");
    let rss_base = status_kib("VmRSS:");

    let t = Instant::now();
    let mut db = regions::RegionDb::load_default(&regions::default_dir())
        .expect("default dataset: run cargo xtask setup");
    let parse = t.elapsed();
    let t = Instant::now();
    let policy = validate::load(&policy_path).unwrap_or_else(|e| panic!("{e}"));
    let compiled = compile::compile(policy, &db, &CloudRanges::default());
    db.countries = Default::default();
    let compile_time = t.elapsed();
    let t = Instant::now();
    let mut ledger = TagLedger::default();
    let report =
        apply::apply(&mut sensor, &compiled, &|c| c.mode, &root, &mut ledger).expect("apply");
    let load = t.elapsed();
    let (before, after) = compiled.prefix_counts();
    let total = parse + compile_time + load;
    println!();
    println!(
        "policy load with the default dataset, {}",
        policy_path.display()
    );
    println!("{:<32} {:>10.0?}", "parse dataset (v4 + v6)", parse);
    println!("{:<32} {:>10.0?}", "check + compile policy", compile_time);
    println!("{:<32} {:>10.0?}", "load into the kernel", load);
    println!("{:<32} {:>10.0?}   (target < 1.5 s)", "total", total);
    println!("{:<32} {:>10}", "prefixes before merging", before);
    println!(
        "{:<32} {:>10}   (kernel generation {})",
        "prefixes loaded", after, report.generation
    );
    println!(
        "{:<32} {:>7} MiB   (target < 150 MiB)",
        "agent RSS after loading",
        status_kib("VmRSS:") / 1024
    );
    println!(
        "{:<32} {:>7} MiB",
        "agent peak RSS (VmHWM)",
        status_kib("VmHWM:") / 1024
    );
    println!(
        "{:<32} {:>7} MiB",
        "RSS before (programs loaded)",
        rss_base / 1024
    );
    drop(compiled);
}
