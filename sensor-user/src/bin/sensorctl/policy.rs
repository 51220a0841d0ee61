//! `sensorctl policy check FILE`: validate (and optionally compile) a policy
//! without touching the kernel.

use std::path::PathBuf;

use clap::Subcommand;
use sensor_user::{
    policy::{compile, validate},
    regions::{self, cloud::CloudRanges},
};

use residency_proto::agent::v1::{self as pb, ApplyPolicyRequest, GetPolicyRequest};

use crate::{Global, RegionArgs, client, output};

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
    /// Apply a policy file to the running agent (it is checked first; with
    /// --dry-run only checked, with the prefix counts and classes it would add
    /// or remove).
    Apply {
        /// The policy file.
        file: PathBuf,
        /// Check and report only.
        #[arg(long)]
        dry_run: bool,
        /// Why (required unless --dry-run; recorded).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print the policy the agent enforces.
    Show,
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

pub async fn run(g: &Global, cmd: PolicyCmd) -> i32 {
    match cmd {
        PolicyCmd::Apply {
            file,
            dry_run,
            reason,
        } => apply(g, file, dry_run, reason).await,
        PolicyCmd::Show => show(g).await,
        PolicyCmd::Check {
            file,
            compile: do_compile,
            regions,
        } => {
            let policy = match read_policy(&file) {
                Ok(p) => p,
                Err(code) => {
                    if g.machine() && code == 1 {
                        // The problems went to stderr; the verdict to stdout.
                        output::json(&serde_json::json!({"file": file, "ok": false}));
                    }
                    return code;
                }
            };
            let mut report = serde_json::json!({
                "file": file,
                "ok": true,
                "sha256": policy.hash,
                "classes": policy.classes.len(),
                "sites": policy.sites.len(),
                "selectors": policy.selectors.len(),
                "taint_sources": policy.taint.len(),
            });
            if !g.machine() {
                println!(
                    "{}: ok: {} classes, {} sites, {} selectors, {} taint sources; sha256 {}",
                    file.display(),
                    policy.classes.len(),
                    policy.sites.len(),
                    policy.selectors.len(),
                    policy.taint.len(),
                    policy.hash
                );
            }
            if do_compile {
                let Some((db, cloud)) = load_regions(&regions) else {
                    return 2;
                };
                let t = std::time::Instant::now();
                let compiled = compile::compile(policy, &db, &cloud);
                let mut classes = Vec::new();
                for c in &compiled.classes {
                    classes.push(serde_json::json!({
                        "class": c.name, "id": c.id, "prefixes_before_merge": c.prefixes_before,
                        "prefixes": c.entries.len(), "allow": c.allow_prefixes, "deny": c.deny_prefixes,
                    }));
                    if !g.machine() {
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
                }
                report["compiled"] = serde_json::json!({
                    "classes": classes,
                    "elapsed_ms": t.elapsed().as_millis() as u64,
                });
                if !g.machine() {
                    println!("compiled in {:.0?}", t.elapsed());
                }
            }
            if g.machine() {
                output::json(&report);
            }
            0
        }
    }
}

/// Reads and checks a policy file; on failure prints why and returns the
/// exit code: 2 the file cannot be read, 1 it has problems (each printed
/// as FILE:LINE:COL).
pub fn read_policy(file: &std::path::Path) -> Result<validate::Policy, i32> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read the policy {}: {e}", file.display());
            return Err(2);
        }
    };
    validate::parse(file, &text).map_err(|e| {
        eprintln!("{e}");
        let n = e.diags.len();
        eprintln!(
            "{}: {n} problem{}",
            file.display(),
            if n == 1 { "" } else { "s" }
        );
        1
    })
}

async fn apply(g: &Global, file: PathBuf, dry_run: bool, reason: String) -> i32 {
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return 2;
        }
    };
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    let r = match c
        .apply_policy(ApplyPolicyRequest {
            policy_toml: text,
            dry_run,
            reason,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return client::fail("policy apply", e),
    };
    if g.machine() {
        output::json(&r);
        return 0;
    }
    let rows: Vec<Vec<String>> = r
        .prefixes
        .iter()
        .map(|p| {
            vec![
                p.class.clone(),
                p.allow.to_string(),
                p.deny.to_string(),
                p.before_merging.to_string(),
            ]
        })
        .collect();
    output::table(&["CLASS", "ALLOW", "DENY", "BEFORE MERGING"], &rows);
    if !r.classes_added.is_empty() {
        println!("classes added:   {}", r.classes_added.join(", "));
    }
    if !r.classes_removed.is_empty() {
        println!("classes removed: {}", r.classes_removed.join(", "));
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    if dry_run {
        print_changes(&r);
        println!(
            "dry run: sha256 {} checked, nothing changed",
            r.policy_sha256
        );
    } else {
        println!(
            "applied: sha256 {} generation {}",
            r.policy_sha256, r.generation
        );
    }
    0
}

/// What the dry-run policy would change for the flows seen recently.
fn print_changes(r: &pb::ApplyPolicyResponse) {
    if r.changes.is_empty() {
        println!(
            "what if: no change for the {} recent records replayed",
            r.flows_replayed
        );
        return;
    }
    let outcome = residency_proto::records::outcome;
    let rows: Vec<Vec<String>> = r
        .changes
        .iter()
        .map(|c| {
            vec![
                c.class.clone(),
                c.exe.clone(),
                c.destination.clone(),
                if c.country.is_empty() {
                    "-".into()
                } else {
                    c.country.clone()
                },
                format!("{} -> {}", outcome(c.before()), outcome(c.after())),
                c.flows.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "CLASS",
            "EXECUTABLE",
            "DESTINATION",
            "COUNTRY",
            "WOULD GO",
            "FLOWS",
        ],
        &rows,
    );
    let count = |f: &dyn Fn(&pb::VerdictChange) -> bool| -> u64 {
        r.changes.iter().filter(|c| f(c)).map(|c| c.flows).sum()
    };
    println!(
        "what if: {} recent records replayed; flows that would be newly denied: {}, newly reported: {}, newly allowed: {}",
        r.flows_replayed,
        count(&|c| c.after() == pb::Action::Denied),
        count(&|c| c.after() == pb::Action::Reported),
        count(&|c| c.after() == pb::Action::None),
    );
}

async fn show(g: &Global) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    match c.get_policy(GetPolicyRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            if g.machine() {
                output::json(&r);
            } else {
                eprintln!("# {} sha256 {}", r.path, r.policy_sha256);
                print!("{}", r.policy_toml);
            }
            0
        }
        Err(e) => client::fail("policy show", e),
    }
}
