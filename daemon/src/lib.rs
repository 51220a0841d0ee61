//! What both daemons (`sensord`, `collectord`) share as processes:
//!
//! - [`logging`]: `--log-format human|json`, colours only on a terminal.
//! - [`notify`]: systemd's readiness protocol (`Type=notify`): READY once
//!   serving, STOPPING on shutdown, WATCHDOG pings when asked for.
//! - [`http`]: serving an axum router on a guarded listener, optionally
//!   over TLS with client certificates (the collector's dashboard).
//! - [`output`]: the CLIs' `-o table|wide|json|jsonl`.
//! - [`admin`]: the admin endpoints, `/metrics`, `/healthz`, `/readyz`.
//! - [`cli`]: `--version` with the git revision; completions and man pages.
//! - [`tasks`]: the daemon's tasks, named and owned; bounded shutdown.
//! - [`fault`]: faults the test suite arms through the environment.

pub mod admin;
pub mod cli;
pub mod fault;
pub mod http;
pub mod logging;
pub mod notify;
pub mod output;
pub mod tasks;
