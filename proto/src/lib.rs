//! Rust code generated from the `.proto` files in this crate (tonic + prost).
//! Versioned packages: `residency.agent.v1` (the agent API) now,
//! `residency.collector.v1` with the collector.

/// `residency.agent.v1`.
pub mod agent {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("residency.agent.v1");
        include!(concat!(env!("OUT_DIR"), "/residency.agent.v1.serde.rs"));
    }
}

/// `residency.collector.v1`.
pub mod collector {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("residency.collector.v1");
        include!(concat!(env!("OUT_DIR"), "/residency.collector.v1.serde.rs"));
    }
}

/// Encoded file descriptors of every service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("residency_descriptor");

pub mod attest;
pub mod chain;
pub mod community_id;
pub mod identity;
pub mod legacy;
pub mod listen;
pub mod names;
pub mod records;
pub mod time;
pub mod unix;
pub mod witness;
