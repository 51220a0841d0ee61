//! The collector: receives every agent's records over a delivery stream, stores
//! them durably and exactly once, serves them to auditors, and carries
//! operators' commands to the fleet.
//!
//! - [`store`]: SQLite or PostgreSQL storage, idempotent by (host, sequence).
//! - [`service`]: the `residency.collector.v1` gRPC service.
//! - [`auth`]: callers' roles from their certificates.
//! - [`fleet`]: connected agents and commands to them.
//! - [`replica_fleet`]: commands to agents connected to other replicas
//!   (PostgreSQL).
//! - [`forward`]: stored records to a SIEM (syslog, ECS JSON lines).
//! - [`retention`]: old records removed, whole signed windows at a time.
//! - [`metrics`]: Prometheus metrics.
//! - [`export`]: CSV and JSON-lines reports.
//! - [`bundle`]: one host's records as stored, for offline checks.
//! - [`what_if`]: stored violations grouped for a host's dry run.
//! - [`dashboard`]: the read-only web dashboard.

pub mod auth;
pub mod bundle;
pub mod dashboard;
pub mod export;
pub mod fleet;
pub mod forward;
pub mod metrics;
pub mod replica_fleet;
pub mod retention;
pub mod service;
pub mod store;
pub mod what_if;
