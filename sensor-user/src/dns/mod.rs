//! DNS names of flows: the answers the kernel saw reach tagged processes
//! (`sensor-ebpf`'s `dns.rs`), parsed ([`parse`]) and kept per process and
//! host-wide until their TTL passes ([`cache`]), so a record says which name
//! its process resolved to the address it talks to; and the policy's name
//! rules, which the kernel applies to the addresses answers gave ([`rules`]).

pub mod cache;
pub mod doh;
pub mod explain;
pub mod parse;
pub mod rules;

pub use cache::{NameCache, Resolved};
pub use parse::{Answer, parse};
pub use rules::{LearnedNames, NameRules};
