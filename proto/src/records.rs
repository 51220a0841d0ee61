//! Conversions beside the generated record types: the kernel's codes to the
//! proto enums (`From` impls and constructors), short labels for people
//! ("connect", "denied") and their parsing, and what kind a delivery record is.

use sensor_common::{flow::FlowKind as KernelKind, net, policy};

use crate::agent::v1::{Action, FlowKind, Protocol, Verdict};
use crate::collector::v1::{GapSource, Record, StoredRecord, record};

impl From<KernelKind> for FlowKind {
    fn from(k: KernelKind) -> FlowKind {
        match k {
            KernelKind::Connect => FlowKind::Connect,
            KernelKind::Sendmsg => FlowKind::Sendmsg,
            KernelKind::Accept => FlowKind::Accept,
            KernelKind::Close => FlowKind::Close,
            KernelKind::Tag => FlowKind::Tag,
            KernelKind::Packet => FlowKind::Packet,
            KernelKind::Socket => FlowKind::Socket,
            KernelKind::Exec => FlowKind::Exec,
            // Consumed by the agent (it completes a connect record), never
            // a record of its own.
            KernelKind::Endpoint => FlowKind::Unspecified,
        }
    }
}

impl Verdict {
    /// From the kernel's [`policy::verdict`] code.
    pub fn from_kernel(v: u8) -> Verdict {
        match v {
            policy::verdict::ALLOW => Verdict::Allow,
            policy::verdict::DENY => Verdict::Deny,
            policy::verdict::UNKNOWN => Verdict::Unknown,
            _ => Verdict::None,
        }
    }
}

impl Action {
    /// From the kernel's [`policy::action`] code.
    pub fn from_kernel(a: u8) -> Action {
        match a {
            policy::action::REPORTED => Action::Reported,
            policy::action::DENIED => Action::Denied,
            _ => Action::None,
        }
    }

    /// A violation's action (reported or denied).
    pub fn is_violation(self) -> bool {
        matches!(self, Action::Reported | Action::Denied)
    }
}

impl Protocol {
    /// From the socket's IP protocol and its `socket()` protocol argument
    /// (MPTCP shows only there).
    pub fn from_kernel(protocol: u8, sock_protocol: u16) -> Protocol {
        if sock_protocol == net::IPPROTO_MPTCP {
            return Protocol::Mptcp;
        }
        match protocol {
            net::IPPROTO_TCP => Protocol::Tcp,
            net::IPPROTO_UDP => Protocol::Udp,
            net::IPPROTO_ICMP => Protocol::Icmp,
            net::IPPROTO_ICMPV6 => Protocol::Icmpv6,
            net::IPPROTO_UDPLITE => Protocol::Udplite,
            net::IPPROTO_RAW => Protocol::Raw,
            0 => Protocol::Ip,
            _ => Protocol::Other,
        }
    }
}

/// Short labels of proto enums for people (tables, logs, filters):
/// "FLOW_KIND_CONNECT" is "connect". JSON keeps the full names.
pub trait Label: Sized + Copy {
    /// The proto name's prefix ("FLOW_KIND_").
    const PREFIX: &'static str;
    /// The full proto name.
    fn proto_name(self) -> &'static str;
    /// Parses a full proto name.
    fn from_proto_name(name: &str) -> Option<Self>;

    /// "connect" for FLOW_KIND_CONNECT.
    fn label(self) -> String {
        let n = self.proto_name();
        n.strip_prefix(Self::PREFIX)
            .unwrap_or(n)
            .to_ascii_lowercase()
    }

    /// Whether `s` names this value (its label or full proto name, in any
    /// case), without allocating: filters ask it of every record.
    fn is_label(self, s: &str) -> bool {
        let (s, n) = (s.trim(), self.proto_name());
        s.eq_ignore_ascii_case(n)
            || n.strip_prefix(Self::PREFIX)
                .is_some_and(|l| l.eq_ignore_ascii_case(s))
    }

    /// Parses a label or a full proto name, in any case.
    fn parse_label(s: &str) -> Option<Self> {
        let upper = s.trim().to_ascii_uppercase();
        Self::from_proto_name(&upper)
            .or_else(|| Self::from_proto_name(&format!("{}{upper}", Self::PREFIX)))
    }
}

macro_rules! label {
    ($t:ty, $prefix:literal) => {
        impl Label for $t {
            const PREFIX: &'static str = $prefix;
            fn proto_name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_proto_name(name: &str) -> Option<Self> {
                Self::from_str_name(name)
            }
        }
    };
}

label!(FlowKind, "FLOW_KIND_");
label!(Verdict, "VERDICT_");
label!(Action, "ACTION_");
label!(Protocol, "PROTOCOL_");
label!(GapSource, "GAP_SOURCE_");
label!(crate::agent::v1::Mode, "MODE_");

/// What happens to a flow, for people: "allowed", "reported" or "denied".
pub fn outcome(a: Action) -> String {
    match a {
        Action::None => "allowed".into(),
        other => other.label(),
    }
}

impl crate::agent::v1::Flow {
    /// The name the process resolved for the remote address and the CNAME
    /// chain to it, for tables: `cdn.example (> edge.example.net)`; `-`
    /// when it resolved none.
    pub fn name_label(&self) -> String {
        match (self.remote_name.as_str(), self.remote_cnames.as_slice()) {
            ("", _) => "-".to_owned(),
            (name, []) => name.to_owned(),
            (name, chain) => format!("{name} (> {})", chain.join(" > ")),
        }
    }
}

impl Record {
    /// "violation", "audit", "gap" or "attestation" ("unknown" for a record
    /// without a body).
    pub fn kind_name(&self) -> &'static str {
        match &self.body {
            Some(record::Body::Violation(_)) => "violation",
            Some(record::Body::Audit(_)) => "audit",
            Some(record::Body::Gap(_)) => "gap",
            Some(record::Body::Attestation(_)) => "attestation",
            None => "unknown",
        }
    }
}

impl StoredRecord {
    /// The record's sequence (0 when absent).
    pub fn seq(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.seq)
    }

    /// The record's time (Unix ns; 0 when absent).
    pub fn time_unix_ns(&self) -> i64 {
        self.record.as_ref().map_or(0, |r| r.time_unix_ns)
    }

    /// The record's kind name ("unknown" when absent).
    pub fn kind_name(&self) -> &'static str {
        self.record.as_ref().map_or("unknown", Record::kind_name)
    }

    /// The violation's flow, when the record is one.
    pub fn violation(&self) -> Option<&crate::agent::v1::Flow> {
        match self.record.as_ref()?.body.as_ref()? {
            record::Body::Violation(f) => Some(f),
            _ => None,
        }
    }

    /// The gap, when the record is one.
    pub fn gap(&self) -> Option<&crate::collector::v1::Gap> {
        match self.record.as_ref()?.body.as_ref()? {
            record::Body::Gap(g) => Some(g),
            _ => None,
        }
    }

    /// The audit record, when the record is one.
    pub fn audit(&self) -> Option<&crate::collector::v1::Audit> {
        match self.record.as_ref()?.body.as_ref()? {
            record::Body::Audit(a) => Some(a),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_parse_either_form() {
        assert_eq!(FlowKind::Connect.label(), "connect");
        assert_eq!(Action::Denied.label(), "denied");
        assert_eq!(GapSource::SpoolFull.label(), "spool_full");
        assert_eq!(Verdict::parse_label("deny"), Some(Verdict::Deny));
        assert_eq!(Verdict::parse_label("VERDICT_DENY"), Some(Verdict::Deny));
        assert_eq!(Verdict::parse_label("Allow"), Some(Verdict::Allow));
        assert_eq!(Verdict::parse_label("maybe"), None);
        assert!(Verdict::Deny.is_label("deny") && Verdict::Deny.is_label(" VERDICT_DENY"));
        assert!(!Verdict::Deny.is_label("allow") && !Verdict::Deny.is_label("DENY_"));
        for k in 1..=8u8 {
            let kernel = KernelKind::from_raw(k).unwrap();
            assert_eq!(FlowKind::from(kernel) as i32, i32::from(k));
        }
    }

    #[test]
    fn json_is_the_canonical_mapping_with_proto_names() {
        let f = crate::agent::v1::Flow {
            kind: FlowKind::Connect as i32,
            action: Action::Denied as i32,
            cookie: 7,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "FLOW_KIND_CONNECT");
        assert_eq!(v["action"], "ACTION_DENIED");
        assert_eq!(v["verdict"], "VERDICT_NONE", "every field present");
        assert_eq!(v["cookie"], "7", "64-bit integers as strings");
        assert_eq!(v["pid"], 0);
        let back: crate::agent::v1::Flow = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
    }
}
