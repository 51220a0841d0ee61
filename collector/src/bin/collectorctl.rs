//! `collectorctl`: the auditors' and operators' command line for a collector.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args as ClapArgs, Parser, Subcommand};
use collector::export::parse_time;
use residency_proto::collector::v1::{self as pb, collector_client::CollectorClient};
use residency_proto::records::Label;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Query a Residency Sensor collector (auditors) and steer the fleet
/// (operators). On the collector's host it talks to its Unix socket, where
/// your user decides the role (root and collectord --operator-group operate,
/// --auditor-group audits). Remotely give --endpoint https://… with --ca,
/// --cert and --key: the certificate's name decides the role (collectord
/// --auditor / --operator).
#[derive(Debug, Parser)]
#[command(name = "collectorctl", version = residency_daemon::cli::VERSION)]
struct Args {
    /// A remote collector (https://host:port, with --ca, --cert, --key).
    /// Without it, the local collector's Unix socket.
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// The local collector's socket.
    #[arg(
        long,
        global = true,
        default_value = "/run/residency-collector/collectord.sock"
    )]
    socket: PathBuf,
    /// CA that signed the collector's certificate (PEM).
    #[arg(long, global = true, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// Your certificate (PEM).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Name to expect in the collector's certificate, when not the endpoint's.
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Output: table (default), wide (more columns), json or jsonl (one
    /// JSON object per line). Record lists (violations, watch, audit) are
    /// one record per line in both JSON forms, so they stream.
    #[arg(short = 'o', long, global = true, value_enum, value_name = "FORMAT")]
    output: Option<residency_daemon::output::Format>,
    /// The same as -o json.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, ClapArgs)]
struct Filters {
    /// Only this host.
    #[arg(long)]
    host: Option<String>,
    /// Only records about this class.
    #[arg(long)]
    class: Option<String>,
    /// Only this remote country (ISO code).
    #[arg(long)]
    country: Option<String>,
    /// Only remote addresses in this prefix (or this address).
    #[arg(long)]
    destination: Option<String>,
    /// Only this executable path.
    #[arg(long)]
    exe: Option<String>,
    /// Only this action: reported or denied.
    #[arg(long, value_parser = ["reported", "denied"])]
    action: Option<String>,
    /// Only processes of this systemd unit (nginx.service).
    #[arg(long)]
    unit: Option<String>,
    /// Only processes of containers whose id starts with this.
    #[arg(long)]
    container: Option<String>,
    /// Only processes of this Kubernetes pod (its UID).
    #[arg(long)]
    pod: Option<String>,
    /// Only flows to a name the process resolved (or one on its CNAME
    /// chain): api.example.com, or '*.example.com' for the names below it.
    #[arg(long)]
    name: Option<String>,
    /// From this time on: Unix seconds, 2026-11-23, 2026-11-23T07:00:00Z,
    /// 2026-11-23T08:00:00+01:00, or 24h (that long ago).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Before this time (same forms).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
}

impl Filters {
    fn query(&self) -> pb::ViolationQuery {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        pb::ViolationQuery {
            host_id: s(&self.host),
            class: s(&self.class),
            country: s(&self.country),
            destination: s(&self.destination),
            exe: s(&self.exe),
            action: s(&self.action),
            unit: s(&self.unit),
            container: s(&self.container),
            pod: s(&self.pod),
            name: s(&self.name),
            since_unix_ns: self.since.unwrap_or(0),
            until_unix_ns: self.until.unwrap_or(0),
            ..Default::default()
        }
    }
}

/// One host's records over a time range (verify, attestations).
#[derive(Debug, ClapArgs)]
struct HostRange {
    /// The host (see `collectorctl hosts`).
    #[arg(long)]
    host: String,
    /// From this time on: Unix seconds, 2026-11-23, 2026-11-23T07:00:00Z,
    /// 2026-11-23T08:00:00+01:00, or 24h (that long ago).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Before this time (same forms).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// A witness file kept outside the database (on your own machine): the
    /// heads earlier checks of the chain's end saw must all still be stored
    /// with their hashes (else TRUNCATED: a cut or rolled-back tail), and
    /// this check's head is appended when the chain is intact. Created on
    /// first use; ignored with --until.
    #[arg(long, value_name = "FILE")]
    witness: Option<PathBuf>,
}

impl HostRange {
    /// The request, and the heads witnessed so far.
    fn request(&self) -> Result<(pb::VerifyChainRequest, Vec<pb::WitnessedHead>), Failure> {
        let witness = match (&self.witness, self.until) {
            (Some(path), None) => {
                residency_proto::witness::read(path, &self.host).map_err(Failure::CouldNotRun)?
            }
            _ => Vec::new(),
        };
        let req = pb::VerifyChainRequest {
            host_id: self.host.clone(),
            since_unix_ns: self.since.unwrap_or(0),
            until_unix_ns: self.until.unwrap_or(0),
            witness: witness.clone(),
        };
        Ok((req, witness))
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every host: last seen, connected, counts, policy, modes, exceptions.
    Hosts,
    /// Stored violations, newest first.
    Violations {
        #[command(flatten)]
        filters: Filters,
        /// At most this many (per page with --all).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Follow the pages to the end.
        #[arg(long)]
        all: bool,
    },
    /// Violations as they are stored (Ctrl-C to stop).
    Watch {
        #[command(flatten)]
        filters: Filters,
    },
    /// Switch enforcement on one host or every connected host (operators):
    /// on = enforce (deny), monitor = report only, off = nothing; the same
    /// verb as `sensorctl enforce`.
    Enforce {
        /// on, monitor or off.
        #[arg(value_parser = ["on", "monitor", "off"])]
        switch: String,
        /// One host (default: every connected host).
        #[arg(long)]
        host: Option<String>,
        /// One class (default: every class).
        #[arg(long)]
        class: Option<String>,
        /// Why (recorded by every agent).
        #[arg(long)]
        reason: String,
    },
    /// The same as `enforce`, by mode name (operators).
    SetEnforcement {
        /// off, monitor or enforce.
        #[arg(long, value_parser = ["off", "monitor", "enforce"])]
        mode: String,
        /// One host (default: every connected host).
        #[arg(long)]
        host: Option<String>,
        /// One class (default: every class).
        #[arg(long)]
        class: Option<String>,
        /// Why (recorded by every agent).
        #[arg(long)]
        reason: String,
    },
    /// Recompute a host's record chain from the stored records: prints the
    /// first missing, altered or reordered record, or "intact: N records,
    /// head HASH". Exits 4 when the chain does not hold (a record missing,
    /// altered or unattested after a stop, or the tail cut: see --witness),
    /// 5 when the collector never stored a record of the host.
    Verify {
        #[command(flatten)]
        range: HostRange,
    },
    /// A host's signed window attestations, each with its verification
    /// state (signature, signer, agreement with the stored records). Exits
    /// 4 when one does not hold or a window is missing, 5 for an unknown
    /// host.
    Attestations {
        #[command(flatten)]
        range: HostRange,
    },
    /// What a policy would change for a host's stored violations (its agent
    /// judges them; nothing is applied): per class, executable and
    /// destination, the violations that would be allowed, or denied.
    WhatIf {
        /// The host (connected to this collector).
        #[arg(long)]
        host: String,
        /// The policy file to try.
        #[arg(long)]
        policy: PathBuf,
        /// Violations stored from this time on: Unix seconds, 2026-11-23,
        /// 2026-11-23T07:00:00Z, 2026-11-23T08:00:00+01:00, or 24h (that long
        /// ago).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Before this time (same forms).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
    },
    /// The audit trail: who changed enforcement, tags or policy, or granted
    /// an exception, and why (audit records); with --gaps, the losses hosts
    /// reported. Newest first.
    Audit {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Losses (gap records) instead of changes.
        #[arg(long)]
        gaps: bool,
        /// From this time on: Unix seconds, 2026-11-23, 2026-11-23T07:00:00Z,
        /// 2026-11-23T08:00:00+01:00, or 24h (that long ago).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Before this time (same forms).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A short-lived login token for the collector's web dashboard
    /// (collectord --dashboard-listen), with your role; prints it and a
    /// login link. Anyone holding it can read what you can until it
    /// expires: hand it only to your own browser.
    DashboardToken {
        /// How long it is good for: 30m, 8h (at most 12h).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
        /// The dashboard's address, for the login link
        /// (https://collector.example:8443).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Let a class reach a destination for a while (operators).
    GrantException {
        /// The class.
        #[arg(long)]
        class: String,
        /// An IP prefix (203.0.113.0/24) or ISO country code (US).
        #[arg(long)]
        destination: String,
        /// How long: 90s, 30m, 8h, 7d (at most 30d).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Duration,
        /// Why (recorded by every agent).
        #[arg(long)]
        justification: String,
        /// One host (default: every connected host).
        #[arg(long)]
        host: Option<String>,
    },
}

use residency_proto::time::parse_duration;

/// Audit or gap records as a table (or JSON lines).
fn print_audit(records: &[pb::StoredRecord], json: bool) {
    use pb::record::Body;
    if json {
        for r in records {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<20} {:<20} {:>8}  {:<28} {:<40} WHY",
        "TIME", "HOST", "SEQ", "WHO/SOURCE", "WHAT"
    );
    for s in records {
        let Some(r) = &s.record else { continue };
        let (who, what, why) = match &r.body {
            Some(Body::Audit(a)) => (a.actor.clone(), a.action.clone(), a.reason.clone()),
            Some(Body::Gap(g)) => (
                g.source()
                    .as_str_name()
                    .trim_start_matches("GAP_SOURCE_")
                    .to_owned(),
                format!("{} lost ({}..{})", g.count, g.first_seq, g.last_seq),
                [g.error.as_str(), g.note.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => continue,
        };
        println!(
            "{:<20} {:<20} {:>8}  {:<28} {:<40} {}",
            when(r.time_unix_ns),
            s.host_id,
            r.seq,
            who,
            what,
            why
        );
    }
}

impl Args {
    /// Machine output (json or jsonl) rather than a table.
    fn machine(&self) -> bool {
        use residency_daemon::output::Format;
        matches!(self.format(), Format::Json | Format::Jsonl)
    }

    fn format(&self) -> residency_daemon::output::Format {
        use residency_daemon::output::Format;
        match (self.output, self.json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Table,
        }
    }
}

/// Why a command did not finish, as its exit code says: the request was
/// refused or its input wrong (1), or the command could not run (2: the
/// collector unreachable, a file unreadable), as sensorctl's codes; or the
/// host asked about has no record at the collector (5).
enum Failure {
    Refused(String),
    CouldNotRun(String),
    NoSuchHost(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Refused(message)
    }
}

async fn client(a: &Args) -> Result<CollectorClient<Channel>, Failure> {
    let Some(endpoint) = &a.endpoint else {
        let ch = residency_proto::unix::channel(&a.socket)
            .await
            .map_err(|e| {
                Failure::CouldNotRun(format!(
                    "cannot reach the collector's socket {}: {} (is collectord running on this host? Remotely: --endpoint https://host:port with --ca, --cert, --key)",
                    a.socket.display(),
                    residency_daemon::cli::causes(&e)
                ))
            })?;
        return Ok(CollectorClient::new(ch));
    };
    let mut ep = Channel::from_shared(endpoint.clone())
        .map_err(|e| format!("--endpoint {endpoint:?}: {e}"))?;
    if let (Some(ca), Some(cert), Some(key)) = (&a.ca, &a.cert, &a.key) {
        let tls = residency_proto::identity::client_tls(ca, cert, key, a.server_name.as_deref())?;
        ep = ep.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    let ch = ep
        .connect()
        .await
        .map_err(|e| {
            Failure::CouldNotRun(format!(
                "cannot reach the collector at {endpoint}: {} (is collectord running there? A collector with TLS needs https:// and --ca, --cert, --key)",
                residency_daemon::cli::causes(&e)
            ))
        })?;
    Ok(CollectorClient::new(ch))
}

fn when(ns: i64) -> String {
    residency_proto::time::utc(ns)
}

/// The violation table's header (tables only).
fn print_records_header(json: bool) {
    if !json {
        let wide = if residency_daemon::output::format() == residency_daemon::output::Format::Wide {
            "  NAME                           COMMUNITY ID                   CGROUP"
        } else {
            ""
        };
        println!(
            "{:<20}  {:<16} {:>8}  {:<9} {:<24} {:<3} {:<28} {:<24} CLASSES{wide}",
            "TIME", "HOST", "SEQ", "ACTION", "REMOTE", "CC", "PROCESS", "WORKLOAD"
        );
    }
}

/// Where a flow ran: the container, the pod's container, or the unit.
fn workload(f: &residency_proto::agent::v1::Flow) -> String {
    let Some(w) = &f.workload else {
        return "-".into();
    };
    let id = w.container_id.get(..12).unwrap_or(&w.container_id);
    match (w.pod_uid.is_empty(), w.container_id.is_empty()) {
        (false, _) => format!("pod/{} {id}", w.pod_uid.get(..8).unwrap_or(&w.pod_uid)),
        (true, false) => format!("{}:{id}", w.container_runtime),
        _ if !w.unit.is_empty() => w.unit.clone(),
        _ => "-".into(),
    }
}

fn print_records(records: &[pb::StoredRecord], json: bool) {
    for r in records {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
            continue;
        }
        let Some(f) = r.violation() else {
            println!(
                "{:<20}  {:<16} {:>8}  {}",
                when(r.time_unix_ns()),
                r.host_id,
                r.seq(),
                r.kind_name()
            );
            continue;
        };
        let wide = if residency_daemon::output::format() == residency_daemon::output::Format::Wide {
            format!(
                "  {:<30} {:<30} {}",
                f.name_label(),
                f.community_id,
                f.workload.as_ref().map_or("", |w| w.cgroup.as_str())
            )
        } else {
            String::new()
        };
        println!(
            "{:<20}  {:<16} {:>8}  {:<9} {:<24} {:<3} {:<28} {:<24} {}{wide}",
            when(r.time_unix_ns()),
            r.host_id,
            r.seq(),
            f.action().label(),
            f.remote,
            f.remote_country,
            if f.exe.is_empty() { &f.comm } else { &f.exe },
            workload(f),
            f.classes.join(",")
        );
    }
}

/// Prints a chain report; true when the chain holds.
fn print_chain(r: &pb::ChainReport, json: bool) -> bool {
    if json {
        residency_daemon::output::json(r);
    } else {
        print!("{}", residency_proto::chain::render(r));
    }
    r.intact
}

/// Prints a host's attestations; true when every one holds and no window
/// is missing.
fn print_attestations(r: &pb::ChainReport, json: bool) -> bool {
    use pb::chain_finding::Kind;
    // What the windows vouch for: a hole between them, and records no
    // window or signed head accounts for (a cut or forged tail, records
    // after a stop nothing attests yet, a head that does not verify, a
    // prefix removed behind the collector's back).
    let holes: Vec<&pb::ChainFinding> = r
        .findings
        .iter()
        .filter(|f| {
            matches!(
                f.kind(),
                Kind::AttestationHole
                    | Kind::Truncated
                    | Kind::Unattested
                    | Kind::Forged
                    | Kind::HeadInvalid
                    | Kind::RemovedEarly
            )
        })
        .collect();
    let ok = holes.is_empty()
        && r.attestations
            .iter()
            .all(|a| a.signature_valid && a.signer_trusted && a.records_agree);
    if json {
        residency_daemon::output::json(&r.attestations);
        return ok;
    }
    println!(
        "{:>8}  {:<20} {:<20} {:<32} {:<9} {:<7} {:>10} {:>14}  PROBLEM",
        "SEQ",
        "WINDOW START",
        "WINDOW END",
        "SIGNER",
        "SIGNATURE",
        "RECORDS",
        "VIOLATIONS",
        "KERNEL JUDGED"
    );
    for c in &r.attestations {
        let a = c.attestation.clone().unwrap_or_default();
        let violations: u64 = a.classes.iter().map(|k| k.violations).sum();
        let judged: u64 = a.classes.iter().map(|k| k.kernel_judged).sum();
        let kernel = if a.kernel_counts_incomplete {
            format!("{judged}+?")
        } else {
            judged.to_string()
        };
        println!(
            "{:>8}  {:<20} {:<20} {:<32} {:<9} {:<7} {:>10} {:>14}  {}",
            c.seq,
            when(a.window_start_unix_ns),
            when(a.window_end_unix_ns),
            c.signer,
            match (c.signature_valid, c.signer_trusted) {
                (true, true) => "valid",
                (true, false) => "untrusted",
                _ => "INVALID",
            },
            if c.records_agree { "agree" } else { "DIFFER" },
            violations,
            kernel,
            c.problem
        );
    }
    for h in holes {
        let kind = match h.kind() {
            Kind::AttestationHole => "HOLE",
            k => k.as_str_name().trim_start_matches("KIND_"),
        };
        println!("{kind}: {}", h.detail);
    }
    println!(
        "{} attestations; {}",
        r.attestations.len(),
        if ok {
            "every one holds and the windows leave no hole"
        } else {
            "NOT ALL HOLD"
        }
    );
    ok
}

/// Prints what a policy would change.
fn print_what_if(r: &pb::WhatIfResponse, json: bool) {
    use residency_proto::records::outcome;
    if json {
        residency_daemon::output::json(r);
        return;
    }
    if r.changes.is_empty() {
        println!(
            "{}: no change for the {} stored violations replayed",
            r.host_id, r.violations_replayed
        );
        return;
    }
    println!(
        "{:<16} {:<32} {:<40} {:<3} {:<22} {:>10}",
        "CLASS", "EXECUTABLE", "DESTINATION", "CC", "WOULD GO", "VIOLATIONS"
    );
    for c in &r.changes {
        println!(
            "{:<16} {:<32} {:<40} {:<3} {:<22} {:>10}",
            c.class,
            c.exe,
            c.destination,
            c.country,
            format!("{} -> {}", outcome(c.before()), outcome(c.after())),
            c.flows
        );
    }
    println!(
        "{}: {} stored violations replayed; nothing was applied",
        r.host_id, r.violations_replayed
    );
}

fn print_outcomes(r: &pb::FleetResponse, json: bool) -> bool {
    if json {
        residency_daemon::output::json(r);
    } else {
        if !r.exception_id.is_empty() {
            println!("exception {}", r.exception_id);
        }
        if r.outcomes.is_empty() {
            println!("no host is connected (to this collector, or to any of its replicas)");
        }
        for o in &r.outcomes {
            if o.error.is_empty() {
                println!("{:<24} applied", o.host_id);
            } else {
                println!("{:<24} FAILED: {}", o.host_id, o.error);
            }
        }
    }
    !r.outcomes.is_empty() && r.outcomes.iter().all(|o| o.error.is_empty())
}

/// How a command ended (each has its exit status).
enum Outcome {
    Done,
    /// A fleet operation that did not reach or was refused by some host.
    NotEverywhere,
    /// `verify` found the chain cut.
    ChainBroken,
}

impl From<bool> for Outcome {
    fn from(everywhere: bool) -> Self {
        if everywhere {
            Outcome::Done
        } else {
            Outcome::NotEverywhere
        }
    }
}

async fn run(a: &Args) -> Result<Outcome, Failure> {
    let mut c = client(a).await?;
    let status = |e: tonic::Status| format!("{:?}: {}", e.code(), e.message());
    match &a.command {
        Cmd::Hosts => {
            let hosts = c
                .list_hosts(pb::ListHostsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .hosts;
            if a.machine() {
                residency_daemon::output::json(&hosts);
                return Ok(Outcome::Done);
            }
            println!(
                "{:<24} {:<9} {:<20} {:>10} {:>5} {:>5} {:>6} {:>6}  {:<12} MODES",
                "HOST",
                "CONNECTED",
                "LAST SEEN",
                "VIOLATIONS",
                "GAPS",
                "JUMPS",
                "BREAKS",
                "AUDITS",
                "POLICY"
            );
            for h in hosts {
                let st = h.state.unwrap_or_default();
                let modes: Vec<String> = st
                    .modes
                    .iter()
                    .map(|m| format!("{}={}", m.class, m.mode))
                    .collect();
                println!(
                    "{:<24} {:<9} {:<20} {:>10} {:>5} {:>5} {:>6} {:>6}  {:<12} {}{}",
                    h.host_id,
                    if h.connected { "yes" } else { "no" },
                    when(h.last_seen_unix_ns),
                    h.violations,
                    h.gaps,
                    h.unexplained_jumps,
                    h.chain_breaks,
                    h.audits,
                    st.policy_sha256.get(..12).unwrap_or("-"),
                    modes.join(" "),
                    if st.exceptions.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} exceptions)", st.exceptions.len())
                    }
                );
            }
            Ok(Outcome::Done)
        }
        Cmd::Violations {
            filters,
            limit,
            all,
        } => {
            let mut q = filters.query();
            q.limit = *limit;
            print_records_header(a.machine());
            loop {
                let page = c
                    .query_violations(q.clone())
                    .await
                    .map_err(status)?
                    .into_inner();
                print_records(&page.records, a.machine());
                if !*all || page.next_page_token.is_empty() {
                    return Ok(Outcome::Done);
                }
                q.page_token = page.next_page_token;
            }
        }
        Cmd::Watch { filters } => {
            let mut s = c
                .watch_violations(filters.query())
                .await
                .map_err(status)?
                .into_inner();
            print_records_header(a.machine());
            while let Some(r) = s.next().await {
                print_records(&[r.map_err(status)?], a.machine());
            }
            Ok(Outcome::Done)
        }
        Cmd::SetEnforcement {
            mode,
            host,
            class,
            reason,
        }
        | Cmd::Enforce {
            switch: mode,
            host,
            class,
            reason,
        } => {
            let mode = if mode == "on" {
                "enforce"
            } else {
                mode.as_str()
            };
            let r = c
                .set_enforcement(pb::FleetSetEnforcementRequest {
                    host_id: host.clone().unwrap_or_default(),
                    class: class.clone().unwrap_or_default(),
                    mode: mode.to_owned(),
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            Ok(print_outcomes(&r, a.machine()).into())
        }
        Cmd::Verify { range } | Cmd::Attestations { range } => {
            let (req, witnessed) = range.request()?;
            let r = c
                .verify_chain(req)
                .await
                .map_err(|e| match e.code() {
                    tonic::Code::NotFound => Failure::NoSuchHost(e.message().to_owned()),
                    _ => status(e).into(),
                })?
                .into_inner();
            if let (Some(path), None) = (&range.witness, range.until) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64);
                residency_proto::witness::record(path, &r, &witnessed, now)
                    .map_err(Failure::CouldNotRun)?;
            }
            let holds = if matches!(a.command, Cmd::Verify { .. }) {
                print_chain(&r, a.machine())
            } else {
                print_attestations(&r, a.machine())
            };
            Ok(if holds {
                Outcome::Done
            } else {
                Outcome::ChainBroken
            })
        }
        Cmd::Audit {
            host,
            gaps,
            since,
            until,
            limit,
        } => {
            let page = c
                .query_records(pb::RecordQuery {
                    kind: if *gaps { "gap" } else { "audit" }.into(),
                    host_id: host.clone().unwrap_or_default(),
                    since_unix_ns: since.unwrap_or(0),
                    until_unix_ns: until.unwrap_or(0),
                    limit: *limit,
                    page_token: String::new(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_audit(&page.records, a.machine());
            Ok(Outcome::Done)
        }
        Cmd::DashboardToken { ttl, url } => {
            let t = c
                .issue_dashboard_token(pb::DashboardTokenRequest {
                    ttl_seconds: ttl.as_secs() as i64,
                })
                .await
                .map_err(status)?
                .into_inner();
            if a.machine() {
                residency_daemon::output::json(&t);
                return Ok(Outcome::Done);
            }
            println!("token:   {}", t.token);
            println!("role:    {} ({})", t.role, t.name);
            println!("expires: {}", when(t.expires_unix_ns));
            if let Some(u) = url {
                println!(
                    "login:   {}/login?token={}",
                    u.trim_end_matches('/'),
                    t.token
                );
            } else {
                println!(
                    "login:   open the dashboard's /login page and paste the token (or give --url for a link)"
                );
            }
            Ok(Outcome::Done)
        }
        Cmd::WhatIf {
            host,
            policy,
            since,
            until,
        } => {
            let text = std::fs::read_to_string(policy).map_err(|e| {
                Failure::CouldNotRun(format!("cannot read --policy {}: {e}", policy.display()))
            })?;
            let r = c
                .what_if(pb::WhatIfRequest {
                    host_id: host.clone(),
                    policy_toml: text,
                    since_unix_ns: since.unwrap_or(0),
                    until_unix_ns: until.unwrap_or(0),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_what_if(&r, a.machine());
            Ok(Outcome::Done)
        }
        Cmd::GrantException {
            class,
            destination,
            duration,
            justification,
            host,
        } => {
            let r = c
                .grant_exception(pb::GrantExceptionRequest {
                    host_id: host.clone().unwrap_or_default(),
                    class: class.clone(),
                    destination: destination.clone(),
                    duration_seconds: duration.as_secs(),
                    justification: justification.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            Ok(print_outcomes(&r, a.machine()).into())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    residency_daemon::cli::generate_if_asked::<Args>();
    let args = Args::parse();
    residency_daemon::output::set(args.format());
    match run(&args).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotEverywhere) => ExitCode::from(3),
        Ok(Outcome::ChainBroken) => ExitCode::from(4),
        Err(Failure::Refused(e)) => {
            eprintln!("collectorctl: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::CouldNotRun(e)) => {
            eprintln!("collectorctl: {e}");
            ExitCode::from(2)
        }
        Err(Failure::NoSuchHost(e)) => {
            eprintln!("collectorctl: {e}");
            ExitCode::from(5)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_and_times() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("8h").unwrap().as_secs(), 28_800);
        assert!(super::parse_duration("soon").is_err());
        assert_eq!(super::parse_duration("3w").unwrap().as_secs(), 21 * 86_400);
        assert!(super::parse_duration("3x").is_err());
        assert_eq!(
            super::when(1_795_417_200_000_000_000),
            "2026-11-23T07:00:00Z"
        );
    }
}
