//! Log output of the daemons: human lines or one JSON object per line (for
//! log shippers), filtered by `RUST_LOG` (default `info`), to stderr;
//! colours only when stderr is a terminal (journald and files get none).

use std::io::IsTerminal;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// From a configuration file's `log_format` ("json"; anything else is
    /// human).
    pub fn from_config(s: Option<&str>) -> LogFormat {
        match s {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Human,
        }
    }
}

/// Installs the process's logger.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
