//! `sensorctl`: the Residency Sensor operator CLI. Talks to `sensord` over its
//! Unix socket (root only); `policy check` and `lookup --policy` work offline.
//!
//! Exit codes: 0 success; 1 the input was wrong or the request was refused
//! (invalid policy, unknown class, not root, missing reason); 2 the command could
//! not run (agent unreachable, unreadable file, missing region data).

mod client;
mod enforce;
mod flows;
mod lookup;
mod output;
mod policy;
mod status;
mod tagged;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Residency Sensor operator CLI.
#[derive(Debug, Parser)]
#[command(name = "sensorctl", version = residency_daemon::cli::VERSION)]
struct Args {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

impl Global {
    /// The output format (--json is -o json).
    pub fn format(&self) -> output::Format {
        match (self.output, self.json) {
            (Some(f), _) => f,
            (None, true) => output::Format::Json,
            (None, false) => output::Format::Table,
        }
    }

    /// Machine output (json or jsonl) rather than a table.
    pub fn machine(&self) -> bool {
        matches!(self.format(), output::Format::Json | output::Format::Jsonl)
    }
}

/// Options for every command.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// sensord's API socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/run/residency/sensord.sock",
        env = "SENSORD_SOCKET"
    )]
    socket: PathBuf,
    /// Output: table (default), wide (more columns), json (one document)
    /// or jsonl (one JSON object per line: a list's items, or the one
    /// object); enum values by name, 64-bit integers as strings.
    #[arg(short = 'o', long, global = true, value_enum, value_name = "FORMAT")]
    output: Option<output::Format>,
    /// The same as -o json.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to the agent over TCP with mutual TLS instead of the Unix socket,
    /// e.g. https://host:50443 (needs --ca, --cert, --key).
    #[arg(long, global = true, value_name = "URL")]
    endpoint: Option<String>,
    /// CA that signed the agent's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Name to expect in the agent's certificate (default: the endpoint's host).
    #[arg(long, global = true, value_name = "NAME")]
    tls_name: Option<String>,
}

/// Where region data comes from (offline commands).
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
    /// The agent's health: versions, policy, modes, counters.
    Status,
    /// Recent flow records of tagged processes.
    Flows(flows::FlowArgs),
    /// Recent violations (reported or denied).
    Violations(flows::FlowArgs),
    /// Processes that carry classes, and why.
    Tagged,
    /// Tag a process with a class.
    Tag {
        /// Process id.
        pid: u32,
        /// Class name.
        #[arg(long)]
        class: String,
    },
    /// Remove a class from a process.
    Untag {
        /// Process id.
        pid: u32,
        /// Class name.
        #[arg(long)]
        class: String,
    },
    /// Switch enforcement for a class (or, without --class, every class).
    Enforce {
        /// on = enforce (deny), monitor = report only, off = nothing.
        switch: enforce::Switch,
        /// Class name (default: every class of the policy).
        #[arg(long)]
        class: Option<String>,
        /// Why (required; recorded with the change).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Explain the verdict for an address: country, site, matching prefix and
    /// the rule that decided, per class. Asks the agent, or with --policy works
    /// offline.
    Lookup(lookup::LookupArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    residency_daemon::cli::generate_if_asked::<Args>();
    let args = Args::parse();
    let g = &args.global;
    output::set(g.format());
    let code = match args.command {
        Cmd::Status => status::run(g).await,
        Cmd::Flows(a) => flows::run(g, a, false).await,
        Cmd::Violations(a) => flows::run(g, a, true).await,
        Cmd::Tagged => tagged::list(g).await,
        Cmd::Tag { pid, class } => tagged::tag(g, pid, class, true).await,
        Cmd::Untag { pid, class } => tagged::tag(g, pid, class, false).await,
        Cmd::Enforce {
            switch,
            class,
            reason,
        } => enforce::run(g, switch, class, reason).await,
        Cmd::Policy(cmd) => policy::run(g, cmd).await,
        Cmd::Lookup(a) => lookup::run(g, a).await,
    };
    std::process::exit(code);
}
