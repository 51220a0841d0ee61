//! Addresses processes learned from DNS answers for names the policy rules
//! on (`allowed_names`, `denied_names`): the `NAMES` map, which the agent
//! fills as answers arrive and the kernel reads when it judges a destination.
//!
//! A live entry (`expires_ns` after now) overrides the destination's address
//! verdict for the classes in its masks, for the process that got the answer:
//! a class in `deny` is denied, else a class in `allow` is allowed. New
//! connects and sends honour an entry until it expires; the packets of a
//! connection judged again later (a policy reload) honour it while it exists,
//! so a connection opened under a name's answer outlives the answer's TTL.

/// Key of the `NAMES` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    /// The process that got the answer.
    pub tgid: u32,
    pub _pad: u32,
    /// Map-form address (see [`crate::net`]).
    pub addr: [u8; 16],
}

/// Value of the `NAMES` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRule {
    /// Classes whose `allowed_names` cover the answer's name (or a name of
    /// its CNAME chain).
    pub allow: u64,
    /// Classes whose `denied_names` cover one of them (denial wins).
    pub deny: u64,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`) time the answer's TTL (plus the
    /// agent's grace) runs out.
    pub expires_ns: u64,
}

impl NameRule {
    /// Classes an entry rules on.
    pub fn classes(&self) -> u64 {
        self.allow | self.deny
    }
}

#[cfg(feature = "user")]
crate::pod!(NameKey, NameRule);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<NameKey>(), 24);
        assert_eq!(core::mem::size_of::<NameRule>(), 24);
    }
}
