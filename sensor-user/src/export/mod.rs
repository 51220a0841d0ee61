//! Getting records off the host without losing any: the durable outbound
//! spool (this module's [`spool`]), and (with the collector) the stream that
//! drains it.

pub mod spool;
