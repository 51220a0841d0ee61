//! What both storage backends share: the columns a record is indexed by
//! (extracted from its JSON body once, at insert), auditors' filters turned
//! into one SQL `WHERE` clause with backend-specific placeholders, and the
//! opaque page token.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use residency_proto::{
    agent::v1::Action,
    collector::v1::{Record, ViolationQuery, record},
    names::NamePattern,
    records::Label,
};

/// What a record is stored as: its searchable columns (from its body) and
/// the encoded record itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexed {
    /// "violation", "audit", "gap" ("unknown": a record without a body).
    pub kind: &'static str,
    /// Class names as ";eu;health;" (a `LIKE '%;eu;%'` finds one).
    pub classes: String,
    pub country: String,
    /// The remote address as 16 bytes (IPv4 mapped into IPv6), so that a prefix
    /// is a byte range; empty when the record has none.
    pub remote: Vec<u8>,
    pub exe: String,
    /// "reported" or "denied" (violations), "" otherwise.
    pub action: String,
    /// The encoded `Record` without `seq` and `chain` (the bytes its chain
    /// hash covers), as stored; returned with the row's sequence and chain.
    pub encoded: Vec<u8>,
    /// The record's chain hash (empty: unchained).
    pub chain: Vec<u8>,
    /// Its workload: systemd unit, container id, pod UID ("" when none).
    pub unit: String,
    pub container: String,
    pub pod: String,
    /// The name the process resolved for the remote address and its CNAME
    /// chain, lower case, as ";cdn.example;edge.example.net;" ("" when none).
    pub names: String,
}

/// 16-byte form of an address (IPv4 as ::ffff:a.b.c.d).
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Indexed {
    /// The columns of a record: a violation's from its flow; other kinds have
    /// only their kind.
    pub fn of(r: &Record) -> Indexed {
        let mut ix = Indexed {
            kind: r.kind_name(),
            encoded: residency_proto::chain::content(r),
            chain: r.chain.clone(),
            ..Default::default()
        };
        let Some(record::Body::Violation(f)) = &r.body else {
            return ix;
        };
        ix.remote = f
            .remote
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| f.remote.parse::<IpAddr>())
            .map(|ip| addr_bytes(ip).to_vec())
            .unwrap_or_default();
        if !f.classes.is_empty() {
            ix.classes = format!(";{};", f.classes.join(";"));
        }
        ix.country = f.remote_country.clone();
        ix.exe = f.exe.clone();
        if let Some(w) = &f.workload {
            ix.unit = w.unit.clone();
            ix.container = w.container_id.clone();
            ix.pod = w.pod_uid.clone();
        }
        if !f.remote_name.is_empty() {
            let chain = std::iter::once(&f.remote_name).chain(&f.remote_cnames);
            ix.names = format!(
                ";{};",
                chain
                    .map(|n| n.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(";")
            );
        }
        ix.action = if f.action().is_violation() {
            f.action().label()
        } else {
            String::new()
        };
        ix
    }
}

/// A bound query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
    Bytes(Vec<u8>),
}

/// Where the previous page ended (the last row's sort key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub time_ns: i64,
    pub host: String,
    pub seq: i64,
}

impl Cursor {
    /// The token handed to clients: hex of "time/seq/host", opaque to them.
    pub fn token(&self) -> String {
        residency_proto::chain::hex(
            format!("{}/{}/{}", self.time_ns, self.seq, self.host).as_bytes(),
        )
    }

    /// Parses a token made by [`Cursor::token`].
    pub fn parse(token: &str) -> Result<Cursor, String> {
        let bad = || {
            "the page token is not one this collector issued (pass next_page_token back unchanged)"
                .to_owned()
        };
        let bytes = residency_proto::chain::unhex(token).ok_or_else(bad)?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(3, '/');
        let (Some(t), Some(s), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        Ok(Cursor {
            time_ns: t.parse().map_err(|_| bad())?,
            seq: s.parse().map_err(|_| bad())?,
            host: h.to_owned(),
        })
    }
}

/// Auditors' filters, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub kind: Option<String>,
    pub host: Option<String>,
    pub class: Option<String>,
    pub country: Option<String>,
    /// Inclusive 16-byte address range.
    pub remote: Option<([u8; 16], [u8; 16])>,
    pub exe: Option<String>,
    pub action: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub after: Option<Cursor>,
    /// Workload: exact unit, container id prefix, exact pod UID.
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    /// A name on the record (the one resolved or one of its CNAME chain).
    pub name: Option<NamePattern>,
}

/// A name filter (see `residency_proto::names`), applied to a record's
/// `names` column (";a;b;").
trait NameFilter {
    fn in_column(&self, names: &str) -> bool;
    fn like(&self) -> String;
}

impl NameFilter for NamePattern {
    /// Whether a record's `names` column (";a;b;") holds a matching name.
    fn in_column(&self, names: &str) -> bool {
        match self {
            NamePattern::Exact(n) => names.contains(&format!(";{n};")),
            NamePattern::Below(suffix) => names.contains(&format!("{suffix};")),
        }
    }

    /// The column's LIKE pattern (LIKE's wildcards in names escaped).
    fn like(&self) -> String {
        match self {
            NamePattern::Exact(n) => format!("%;{};%", like_literal(n)),
            NamePattern::Below(suffix) => format!("%{};%", like_literal(suffix)),
        }
    }
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The inclusive 16-byte range of a prefix or single address.
pub fn destination_range(s: &str) -> Result<([u8; 16], [u8; 16]), String> {
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!("destination {s:?} is neither an IP prefix (203.0.113.0/24) nor an address")
        })?,
    };
    Ok((addr_bytes(net.network()), addr_bytes(net.broadcast())))
}

impl Filter {
    /// A violation query's filters, or what is wrong with them.
    pub fn violations(q: &ViolationQuery) -> Result<Filter, String> {
        let action = match nonempty(&q.action) {
            None => None,
            Some(a) => match Action::parse_label(&a) {
                Some(act) if act.is_violation() => Some(act.label()),
                _ => return Err(format!("action {a:?} is not one of: reported, denied")),
            },
        };
        if q.class.contains(';') {
            return Err(format!("class {:?} is not a class name", q.class));
        }
        Ok(Filter {
            kind: Some("violation".into()),
            host: nonempty(&q.host_id),
            class: nonempty(&q.class),
            country: nonempty(&q.country.to_ascii_uppercase()),
            remote: (!q.destination.is_empty())
                .then(|| destination_range(&q.destination))
                .transpose()?,
            exe: nonempty(&q.exe),
            action,
            since: (q.since_unix_ns != 0).then_some(q.since_unix_ns),
            until: (q.until_unix_ns != 0).then_some(q.until_unix_ns),
            after: (!q.page_token.is_empty())
                .then(|| Cursor::parse(&q.page_token))
                .transpose()?,
            unit: nonempty(&q.unit),
            container: nonempty(&q.container.to_ascii_lowercase()),
            pod: nonempty(&q.pod),
            name: nonempty(&q.name)
                .map(|n| NamePattern::parse(&n))
                .transpose()?,
        })
    }

    /// Whether a record matches (for live watches, which see records before
    /// any query would).
    pub fn matches(&self, host: &str, r: &Record, ix: &Indexed) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        eq(&self.kind, ix.kind)
            && eq(&self.host, host)
            && self
                .class
                .as_deref()
                .is_none_or(|c| ix.classes.contains(&format!(";{c};")))
            && eq(&self.country, &ix.country)
            && self.remote.is_none_or(|(lo, hi)| {
                ix.remote.len() == 16
                    && ix.remote.as_slice() >= &lo[..]
                    && ix.remote.as_slice() <= &hi[..]
            })
            && eq(&self.exe, &ix.exe)
            && eq(&self.action, &ix.action)
            && eq(&self.unit, &ix.unit)
            && self
                .container
                .as_deref()
                .is_none_or(|c| ix.container.starts_with(c))
            && eq(&self.pod, &ix.pod)
            && self.name.as_ref().is_none_or(|n| n.in_column(&ix.names))
            && self.since.is_none_or(|s| r.time_unix_ns >= s)
            && self.until.is_none_or(|u| r.time_unix_ns < u)
    }

    /// The `WHERE` clause (without the keyword; "TRUE" when nothing is
    /// filtered) and its parameters; `ph(n)` writes placeholder n (1-based).
    pub fn sql(&self, ph: impl Fn(usize) -> String) -> (String, Vec<Param>) {
        let mut params = Vec::new();
        let mut clauses = Vec::new();
        let mut bind = |p: Param| {
            params.push(p);
            ph(params.len())
        };
        if let Some(k) = &self.kind {
            clauses.push(format!("kind = {}", bind(Param::Text(k.clone()))));
        }
        if let Some(h) = &self.host {
            clauses.push(format!("host = {}", bind(Param::Text(h.clone()))));
        }
        if let Some(c) = &self.class {
            // The class name matches exactly: LIKE's wildcards in it are
            // escaped (a filter "eu_%" must not match "eu_personal").
            clauses.push(format!(
                "classes LIKE {} ESCAPE '\\'",
                bind(Param::Text(format!("%;{};%", like_literal(c))))
            ));
        }
        if let Some(c) = &self.country {
            clauses.push(format!("country = {}", bind(Param::Text(c.clone()))));
        }
        if let Some((lo, hi)) = &self.remote {
            clauses.push(format!(
                "remote >= {} AND remote <= {}",
                bind(Param::Bytes(lo.to_vec())),
                bind(Param::Bytes(hi.to_vec()))
            ));
        }
        if let Some(e) = &self.exe {
            clauses.push(format!("exe = {}", bind(Param::Text(e.clone()))));
        }
        if let Some(a) = &self.action {
            clauses.push(format!("action = {}", bind(Param::Text(a.clone()))));
        }
        if let Some(u) = &self.unit {
            clauses.push(format!("unit = {}", bind(Param::Text(u.clone()))));
        }
        if let Some(c) = &self.container {
            clauses.push(format!(
                "container LIKE {} ESCAPE '\\'",
                bind(Param::Text(format!("{}%", like_literal(c))))
            ));
        }
        if let Some(p) = &self.pod {
            clauses.push(format!("pod = {}", bind(Param::Text(p.clone()))));
        }
        if let Some(n) = &self.name {
            clauses.push(format!(
                "names LIKE {} ESCAPE '\\'",
                bind(Param::Text(n.like()))
            ));
        }
        if let Some(s) = self.since {
            clauses.push(format!("time_ns >= {}", bind(Param::Int(s))));
        }
        if let Some(u) = self.until {
            clauses.push(format!("time_ns < {}", bind(Param::Int(u))));
        }
        if let Some(c) = &self.after {
            let t = bind(Param::Int(c.time_ns));
            let h = bind(Param::Text(c.host.clone()));
            let s = bind(Param::Int(c.seq));
            clauses.push(format!(
                "(time_ns < {t} OR (time_ns = {t} AND (host < {h} OR (host = {h} AND seq < {s}))))"
            ));
        }
        if clauses.is_empty() {
            ("TRUE".into(), params)
        } else {
            (clauses.join(" AND "), params)
        }
    }
}

/// Newest first, ties broken so that pages never overlap or skip.
pub const NEWEST_FIRST: &str = "time_ns DESC, host DESC, seq DESC";

/// `s` as a LIKE pattern that matches only itself (escape character `\`).
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let c = Cursor {
            time_ns: 1_795_417_200_000_000_000,
            host: "eu/host-1".into(),
            seq: 42,
        };
        assert_eq!(Cursor::parse(&c.token()).unwrap(), c);
        assert!(Cursor::parse("zz").unwrap_err().contains("page token"));
        assert!(Cursor::parse("616263").is_err());
    }

    #[test]
    fn columns_come_from_the_flow_body() {
        let r = Record {
            seq: 1,
            time_unix_ns: 5,
            body: Some(record::Body::Violation(residency_proto::agent::v1::Flow {
                classes: vec!["eu".into(), "health".into()],
                remote: "[2001:db8::1]:443".into(),
                remote_country: "US".into(),
                exe: "/usr/bin/curl".into(),
                action: Action::Denied as i32,
                ..Default::default()
            })),
            chain: vec![7; 32],
        };
        let ix = Indexed::of(&r);
        assert_eq!((ix.kind, ix.action.as_str()), ("violation", "denied"));
        // Stored without its sequence and chain (the row keeps them).
        let stored = <Record as prost::Message>::decode(ix.encoded.as_slice()).unwrap();
        assert_eq!(
            stored,
            Record {
                seq: 0,
                chain: Vec::new(),
                ..r.clone()
            }
        );
        assert_eq!(ix.chain, r.chain);
        assert_eq!(ix.classes, ";eu;health;");
        assert_eq!(ix.country, "US");
        assert_eq!(
            ix.remote,
            addr_bytes("2001:db8::1".parse().unwrap()).to_vec()
        );
        let q = |f: &str| ViolationQuery {
            destination: f.into(),
            class: "health".into(),
            action: "ACTION_DENIED".into(),
            ..Default::default()
        };
        assert!(
            Filter::violations(&q("2001:db8::/32"))
                .unwrap()
                .matches("h", &r, &ix)
        );
        assert!(
            !Filter::violations(&q("2001:db9::/32"))
                .unwrap()
                .matches("h", &r, &ix)
        );
        assert!(
            !Filter::violations(&q("203.0.113.0/24"))
                .unwrap()
                .matches("h", &r, &ix)
        );
        assert!(
            Filter::violations(&q("nowhere"))
                .unwrap_err()
                .contains("IP prefix")
        );
        let bad = ViolationQuery {
            action: "blocked".into(),
            ..Default::default()
        };
        assert!(
            Filter::violations(&bad)
                .unwrap_err()
                .contains("reported, denied")
        );
    }

    #[test]
    fn name_patterns_match_the_name_or_its_chain_and_nothing_wider() {
        let names = ";cdn.example;edge.s3.amazonaws.com;";
        let m = |p: &str| NamePattern::parse(p).unwrap().in_column(names);
        assert!(m("CDN.example.") && m("edge.s3.amazonaws.com"));
        assert!(m("*.amazonaws.com") && m("*.s3.amazonaws.com"));
        assert!(!m("*.cdn.example"), "a pattern is the names below it");
        assert!(!m("amazonaws.com") && !m("example") && !m("*.mazonaws.com"));
        assert_eq!(
            NamePattern::parse("*.e_x").unwrap().like(),
            "%.e\\_x;%",
            "LIKE's wildcards in a name match only themselves"
        );
    }

    #[test]
    fn like_wildcards_in_names_match_only_themselves() {
        assert_eq!(like_literal("eu_%"), "eu\\_\\%");
        assert_eq!(like_literal("a\\b"), "a\\\\b");
        assert_eq!(like_literal("eu_personal"), "eu\\_personal");
    }

    #[test]
    fn where_clause_numbers_its_placeholders() {
        let f = Filter {
            kind: Some("violation".into()),
            class: Some("eu".into()),
            after: Some(Cursor {
                time_ns: 9,
                host: "h".into(),
                seq: 3,
            }),
            ..Default::default()
        };
        let (sql, params) = f.sql(|n| format!("${n}"));
        assert_eq!(
            sql,
            "kind = $1 AND classes LIKE $2 ESCAPE '\\' AND (time_ns < $3 OR (time_ns = $3 AND (host < $4 OR (host = $4 AND seq < $5))))"
        );
        assert_eq!(params.len(), 5);
        assert_eq!(Filter::default().sql(|n| format!("?{n}")).0, "TRUE");
    }
}
