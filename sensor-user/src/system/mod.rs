//! Facts about the host that the sensor depends on.

pub mod bpffs;
pub mod mountinfo;
