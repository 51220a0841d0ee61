//! Getting records off the host without losing any: the durable outbound
//! [`spool`], and [`deliver`], the stream that drains it into the collector.

pub mod deliver;
pub mod record;
pub mod spool;
pub mod syncer;
pub mod wire;
