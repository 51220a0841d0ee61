//! Facts about the host that the sensor depends on.

pub mod atomic;
pub mod bpffs;
pub mod btf;
pub mod cgroup_tree;
pub mod mountinfo;
pub mod netif;
pub mod sockets;
pub mod tracefs;
pub mod workload;
