//! Getting records off the host without losing any: the durable outbound
//! [`spool`], and [`deliver`], the stream that drains it into the collector.

/// The largest record the agent spools as it is (its encoding): far below
/// a delivery batch's byte bound. A larger one (fields are bounded, so only
/// through a bug) is spooled as an UNDELIVERABLE gap record instead.
pub const MAX_RECORD_BYTES: usize = 512 << 10;

pub mod deliver;
pub mod record;
pub mod spool;
pub mod syncer;
pub mod wire;
