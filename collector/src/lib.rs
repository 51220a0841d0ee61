//! The collector: receives every agent's records over a delivery stream, stores
//! them durably and exactly once, and serves them to auditors.
//!
//! - [`store`]: SQLite storage (WAL), idempotent by (host, sequence).
//! - [`service`]: the `residency.collector.v1` gRPC service.
//! - [`export`]: CSV and JSON-lines reports.

pub mod export;
pub mod service;
pub mod store;
