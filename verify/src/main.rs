//! `residency-verify`: checks an evidence bundle (`collectord export
//! --format bundle`) offline — no database, no network, nothing but the
//! file. It recomputes the host's record chain over the bundle's records
//! and prints every finding, then `intact: N records, head HASH` or
//! `NOT INTACT: first at record N (…)`.

use std::{io::Read, path::PathBuf, process::ExitCode};

use clap::Parser;
use prost::Message;
use residency_proto::{
    chain,
    collector::v1::{Bundle, ChainReport},
};

/// Check a Residency Sensor evidence bundle offline. Exit status: 0 the
/// chain holds (every finding explained by the agent's own gap records), 4
/// it does not, 1 the file is not a bundle or cannot be read.
#[derive(Debug, Parser)]
#[command(name = "residency-verify", version = residency_daemon::cli::VERSION)]
struct Args {
    /// The bundle (`-` for standard input).
    bundle: PathBuf,
    /// Print the report as JSON (the `ChainReport` message).
    #[arg(long)]
    json: bool,
    /// The CA that signs the agents' certificates (PEM): your own copy.
    /// Attestations signed with certificates are trusted only against it;
    /// the CA a bundle carries is shown, never trusted.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Also print every record in the bundle, one JSON object per line
    /// (canonical protobuf JSON), before the report.
    #[arg(long)]
    records: bool,
    /// A witness file kept outside the collector's database (see
    /// `collectorctl verify --witness`): every head it holds for the host
    /// must be in the bundle with its hash (else TRUNCATED), for a bundle
    /// whose range is open at the end; the bundle's head is appended when
    /// its chain is intact.
    #[arg(long, value_name = "FILE")]
    witness: Option<PathBuf>,
}

fn read(path: &PathBuf) -> Result<Bundle, String> {
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| format!("{}: {e}", path.display()))?;
    Bundle::decode(bytes.as_slice()).map_err(|e| {
        format!(
            "{}: not a bundle ({e}); write one with collectord export --format bundle --host H > FILE",
            path.display()
        )
    })
}

fn run(a: &Args) -> Result<ChainReport, String> {
    let b = read(&a.bundle)?;
    if a.records {
        for r in &b.records {
            let Some(rec) = chain::decode_stored(r.seq, &r.content) else {
                println!("{{\"seq\":\"{}\",\"undecodable\":true}}", r.seq);
                continue;
            };
            let mut rec = rec;
            rec.chain.clone_from(&r.chain);
            println!("{}", serde_json::to_string(&rec).unwrap_or_default());
        }
    }
    let ca = match &a.ca {
        Some(p) => Some(residency_proto::attest::pem_certificate(p)?),
        None => None,
    };
    if let Some(ca) = &ca
        && !b.ca_certificate.is_empty()
        && *ca != b.ca_certificate
    {
        eprintln!("note: the bundle carries a different CA than --ca; --ca is the one trusted");
    }
    let witnessed = match &a.witness {
        Some(path) if b.until_unix_ns <= 0 => residency_proto::witness::read(path, &b.host_id)?,
        _ => Vec::new(),
    };
    let report = chain::verify_bundle(&b, ca, witnessed.clone())
        .map_err(|e| format!("{}: {e}", a.bundle.display()))?;
    if let Some(path) = &a.witness
        && b.until_unix_ns <= 0
    {
        // Witnessed as of when the bundle was written.
        residency_proto::witness::record(path, &report, &witnessed, b.created_unix_ns)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        eprintln!(
            "bundle of host {}, written {}, {} records, {} gap records{}",
            b.host_id,
            residency_proto::time::utc(b.created_unix_ns),
            b.records.len(),
            b.gaps.len(),
            if a.ca.is_none() {
                "; no --ca: attestations signed with certificates are not trusted"
            } else {
                ""
            }
        );
        print!("{}", chain::render(&report));
    }
    Ok(report)
}

fn main() -> ExitCode {
    residency_daemon::cli::generate_if_asked::<Args>();
    let args = Args::parse();
    match run(&args) {
        Ok(r) if r.intact => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(4),
        Err(e) => {
            eprintln!("residency-verify: {e}");
            ExitCode::FAILURE
        }
    }
}
