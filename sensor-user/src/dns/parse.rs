//! Reading a DNS response: which addresses it gives for which name, through
//! which CNAME chain, for how long. Parsed with hickory-proto, record by
//! record, so a message the kernel cut at its copy limit still yields the
//! records before the cut.

use std::{collections::HashMap, net::IpAddr};

use hickory_proto::{
    op::{Header, MessageType, OpCode, Query, ResponseCode},
    rr::{RData, Record},
    serialize::binary::{BinDecodable, BinDecoder},
};

/// What a response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name asked for (lower case, no trailing dot).
    pub name: String,
    /// The aliases from `name` to the addresses' owner, in order.
    pub cnames: Vec<String>,
    /// The addresses for `name`, each with the TTL it may be kept for (the
    /// smallest along its chain).
    pub addrs: Vec<(IpAddr, u32)>,
}

/// A name as records show it: lower case, without the root's dot.
fn text(name: &hickory_proto::rr::Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

/// Parses a DNS message (`tcp`: with its two-byte length prefix). `None`
/// for anything but a successful standard response with addresses: a query,
/// an error, an answer without A or AAAA records for the name asked.
pub fn parse(msg: &[u8], tcp: bool) -> Option<Answer> {
    let msg = if tcp { msg.get(2..)? } else { msg };
    let mut d = BinDecoder::new(msg);
    let header = Header::read(&mut d).ok()?;
    let meta = header.metadata;
    if meta.message_type != MessageType::Response
        || meta.op_code != OpCode::Query
        || meta.response_code != ResponseCode::NoError
        || header.counts.queries != 1
    {
        return None;
    }
    let query = Query::read(&mut d).ok()?;
    let name = text(&query.name);
    // Records up to the first that does not parse (the copy limit cut it).
    let mut records = Vec::new();
    for _ in 0..header.counts.answers {
        match Record::read(&mut d) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
    }
    let mut alias: HashMap<String, (String, u32)> = HashMap::new();
    for r in &records {
        if let RData::CNAME(target) = &r.data {
            alias.insert(text(&r.name), (text(&target.0), r.ttl));
        }
    }
    // Follow the chain from the name asked (bounded: a loop ends it).
    let mut cnames = Vec::new();
    let mut owner = name.clone();
    let mut chain_ttl = u32::MAX;
    while let Some((target, ttl)) = alias.get(&owner) {
        if cnames.len() >= 16 || cnames.contains(target) || *target == name {
            break;
        }
        chain_ttl = chain_ttl.min(*ttl);
        cnames.push(target.clone());
        owner = target.clone();
    }
    let addrs: Vec<(IpAddr, u32)> = records
        .iter()
        .filter(|r| text(&r.name) == owner)
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl.min(chain_ttl))),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl.min(chain_ttl))),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        return None;
    }
    Some(Answer {
        name,
        cnames,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        op::Message,
        rr::{Name, RecordType, rdata},
    };

    use super::*;

    fn response(name: &str, records: Vec<Record>, code: ResponseCode) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m.answers = records;
        m.to_vec().unwrap()
    }

    fn a(owner: &str, ip: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_str(owner).unwrap(),
            ttl,
            RData::A(rdata::A(ip.parse().unwrap())),
        )
    }

    fn cname(owner: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_str(owner).unwrap(),
            ttl,
            RData::CNAME(rdata::CNAME(Name::from_str(target).unwrap())),
        )
    }

    #[test]
    fn addresses_of_the_name_asked_with_their_ttl() {
        let msg = response(
            "API.Example.com.",
            vec![a("api.example.com.", "192.0.2.1", 30)],
            ResponseCode::NoError,
        );
        let got = parse(&msg, false).expect("an answer");
        assert_eq!(got.name, "api.example.com");
        assert!(got.cnames.is_empty());
        assert_eq!(got.addrs, [("192.0.2.1".parse().unwrap(), 30)]);
    }

    #[test]
    fn a_cname_chain_is_followed_and_its_smallest_ttl_wins() {
        let msg = response(
            "www.example.com.",
            vec![
                cname("www.example.com.", "edge.cdn.test.", 10),
                cname("edge.cdn.test.", "pop1.cdn.test.", 300),
                a("pop1.cdn.test.", "198.51.100.7", 60),
                // Not on the chain: not an address of the name.
                a("other.test.", "203.0.113.9", 60),
            ],
            ResponseCode::NoError,
        );
        let got = parse(&msg, false).expect("an answer");
        assert_eq!(got.cnames, ["edge.cdn.test", "pop1.cdn.test"]);
        assert_eq!(got.addrs, [("198.51.100.7".parse().unwrap(), 10)]);
    }

    #[test]
    fn tcp_messages_carry_a_length_prefix() {
        let msg = response(
            "a.test.",
            vec![a("a.test.", "192.0.2.2", 5)],
            ResponseCode::NoError,
        );
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&msg);
        assert_eq!(parse(&framed, true).expect("an answer").addrs.len(), 1);
    }

    #[test]
    fn a_message_cut_short_keeps_the_records_before_the_cut() {
        let msg = response(
            "a.test.",
            vec![a("a.test.", "192.0.2.3", 5), a("a.test.", "192.0.2.4", 5)],
            ResponseCode::NoError,
        );
        let got = parse(&msg[..msg.len() - 3], false).expect("the first record");
        assert_eq!(got.addrs, [("192.0.2.3".parse().unwrap(), 5)]);
    }

    #[test]
    fn queries_errors_loops_and_garbage_teach_nothing() {
        let mut q = Message::new(1, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(
            Name::from_str("a.test.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(parse(&q.to_vec().unwrap(), false), None);
        let nx = response(
            "a.test.",
            vec![a("a.test.", "192.0.2.5", 5)],
            ResponseCode::NXDomain,
        );
        assert_eq!(parse(&nx, false), None);
        let looped = response(
            "a.test.",
            vec![
                cname("a.test.", "b.test.", 5),
                cname("b.test.", "a.test.", 5),
            ],
            ResponseCode::NoError,
        );
        assert_eq!(parse(&looped, false), None);
        assert_eq!(parse(&[0xff; 40], false), None);
        assert_eq!(parse(&[], true), None);
    }
}
