//! Disjoint address ranges with values: the data structure the whole policy
//! compiler works on.
//!
//! Every address is a `u128` in map form (IPv4 as `::ffff:a.b.c.d`, see
//! `sensor_common::net`), so one structure covers both families and the
//! kernel's single trie.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use sensor_common::net::to_map_form;

/// An address in map form.
pub type Addr = u128;

/// Map form of an address.
pub fn addr(ip: IpAddr) -> Addr {
    u128::from_be_bytes(to_map_form(ip))
}

/// The address a map-form value stands for (v4-mapped → IPv4).
pub fn ip(a: Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// First and last map-form address of a prefix.
pub fn net_range(net: &IpNet) -> (Addr, Addr) {
    let len = match net {
        IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    let start = addr(net.network());
    let host_bits = 128 - len;
    let end = if host_bits == 128 {
        u128::MAX
    } else {
        start | ((1u128 << host_bits) - 1)
    };
    (start, end)
}

/// A prefix (map-form start, map-form length 0..=128) as an `IpNet`: inside the
/// v4-mapped /96 it is an IPv4 prefix.
pub fn to_net(start: Addr, len: u8) -> IpNet {
    let v6 = Ipv6Addr::from(start);
    if len >= 96
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return IpNet::new(IpAddr::V4(v4), len - 96).expect("length checked");
    }
    IpNet::new(IpAddr::V6(v6), len).expect("length is at most 128")
}

/// The fewest CIDR prefixes that cover exactly `start..=end`, as (start, len).
pub fn cidrs(start: Addr, end: Addr) -> Vec<(Addr, u8)> {
    let mut out = Vec::new();
    let mut s = start;
    loop {
        // Largest aligned block at `s` that does not pass `end`.
        let align = s.trailing_zeros(); // 128 when s == 0
        let span = end - s; // block size - 1 must be <= span
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let k = align.min(fit);
        out.push((s, (128 - k) as u8));
        if k == 128 {
            return out;
        }
        let size = 1u128 << k;
        match s.checked_add(size) {
            Some(next) if next <= end && next != 0 => s = next,
            _ => return out,
        }
    }
}

/// Disjoint, sorted, closed ranges with a value each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMap<V> {
    ranges: Vec<(Addr, Addr, V)>,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        Self { ranges: Vec::new() }
    }
}

/// Two ranges of a source that should be disjoint overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub first: (Addr, Addr),
    pub second: (Addr, Addr),
}

impl<V: Clone + PartialEq> RangeMap<V> {
    /// From ranges that must not overlap (any order).
    pub fn from_disjoint(mut ranges: Vec<(Addr, Addr, V)>) -> Result<Self, Overlap> {
        ranges.sort_by_key(|r| r.0);
        for w in ranges.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(Overlap {
                    first: (w[0].0, w[0].1),
                    second: (w[1].0, w[1].1),
                });
            }
        }
        Ok(Self { ranges })
    }

    /// From prefixes that may nest: every address gets the value of the longest
    /// prefix that contains it (the last given wins between identical prefixes).
    /// Prefixes are (map-form start, map-form length).
    pub fn from_prefixes(prefixes: impl IntoIterator<Item = (Addr, u8, V)>) -> Self {
        Self::from_nested(prefixes.into_iter().map(|(s, len, v)| {
            let host = 128 - u32::from(len);
            let s = if host == 128 {
                0
            } else {
                s & !((1u128 << host) - 1)
            };
            let e = if host == 128 {
                u128::MAX
            } else {
                s | ((1u128 << host) - 1)
            };
            (s, e, v)
        }))
    }

    /// From ranges that may nest or overlap: the more specific range wins (for
    /// nested ranges the inner one; where two overlap partly, the one that starts
    /// later; between identical ranges the last given).
    pub fn from_nested(ranges: impl IntoIterator<Item = (Addr, Addr, V)>) -> Self {
        let mut p: Vec<(Addr, Addr, usize, V)> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, (s, e, v))| (s, e, i, v))
            .collect();
        // Outer ranges first at the same start; for identical ranges the later
        // one goes on top of the stack and wins.
        p.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut out: Vec<(Addr, Addr, V)> = Vec::with_capacity(p.len());
        let mut stack: Vec<(Addr, V)> = Vec::new();
        // Next address not yet emitted; None once past u128::MAX.
        let mut cursor: Option<Addr> = Some(0);
        let emit = |out: &mut Vec<(Addr, Addr, V)>, a: Addr, b: Addr, v: &V| {
            if a <= b {
                out.push((a, b, v.clone()));
            }
        };
        for (s, e, _, v) in p {
            while let Some((top_end, top_v)) = stack.last() {
                if *top_end >= s {
                    break;
                }
                if let Some(c) = cursor {
                    emit(&mut out, c, *top_end, top_v);
                }
                cursor = match (cursor, top_end.checked_add(1)) {
                    (Some(c), Some(n)) => Some(c.max(n)),
                    _ => None,
                };
                stack.pop();
            }
            if let (Some((_, top_v)), Some(c)) = (stack.last(), cursor)
                && c < s
            {
                emit(&mut out, c, s - 1, top_v);
            }
            cursor = Some(s);
            stack.push((e, v));
        }
        while let Some((top_end, top_v)) = stack.pop() {
            if let Some(c) = cursor {
                emit(&mut out, c, top_end, &top_v);
            }
            cursor = match (cursor, top_end.checked_add(1)) {
                (Some(c), Some(n)) => Some(c.max(n)),
                _ => None,
            };
        }
        Self { ranges: out }
    }

    /// The value at `a`.
    pub fn get(&self, a: Addr) -> Option<&V> {
        self.get_range(a).map(|(_, _, v)| v)
    }

    /// The range containing `a`, with its value.
    pub fn get_range(&self, a: Addr) -> Option<&(Addr, Addr, V)> {
        let i = self.ranges.partition_point(|r| r.0 <= a);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (a <= r.1).then_some(r)
    }

    /// `top` wins wherever it has a value; `self` elsewhere.
    pub fn overlay(&self, top: &RangeMap<V>) -> RangeMap<V> {
        let mut out: Vec<(Addr, Addr, V)> =
            Vec::with_capacity(self.ranges.len() + top.ranges.len());
        let t = &top.ranges;
        let mut j = 0;
        for (bs, be, bv) in &self.ranges {
            let mut cur = *bs;
            loop {
                while j < t.len() && t[j].1 < cur {
                    j += 1;
                }
                if j < t.len() && t[j].0 <= *be {
                    if t[j].0 > cur {
                        out.push((cur, t[j].0 - 1, bv.clone()));
                    }
                    match t[j].1.checked_add(1) {
                        Some(next) if next <= *be => cur = next,
                        _ => break,
                    }
                } else {
                    out.push((cur, *be, bv.clone()));
                    break;
                }
            }
        }
        out.extend(t.iter().cloned());
        out.sort_by_key(|r| r.0);
        RangeMap { ranges: out }
    }

    /// Maps every value; ranges mapped to `None` are dropped.
    pub fn filter_map<W: Clone + PartialEq>(&self, f: impl Fn(&V) -> Option<W>) -> RangeMap<W> {
        RangeMap {
            ranges: self
                .ranges
                .iter()
                .filter_map(|(s, e, v)| f(v).map(|w| (*s, *e, w)))
                .collect(),
        }
    }

    /// Joins adjacent ranges with equal values.
    pub fn coalesce(self) -> RangeMap<V> {
        let mut out: Vec<(Addr, Addr, V)> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges {
            if let Some(last) = out.last_mut()
                && last.1.checked_add(1) == Some(r.0)
                && last.2 == r.2
            {
                last.1 = r.1;
                continue;
            }
            out.push(r);
        }
        RangeMap { ranges: out }
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(Addr, Addr, V)] {
        &self.ranges
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every range as its CIDR cover: (prefix start, map-form length, value).
    pub fn to_prefixes(&self) -> Vec<(Addr, u8, V)> {
        self.ranges
            .iter()
            .flat_map(|(s, e, v)| {
                cidrs(*s, *e)
                    .into_iter()
                    .map(move |(p, l)| (p, l, v.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> Addr {
        addr(s.parse().unwrap())
    }

    #[test]
    fn cidr_edges() {
        assert_eq!(cidrs(0, u128::MAX), vec![(0, 0)]);
        assert_eq!(cidrs(5, 5), vec![(5, 128)]);
        assert_eq!(cidrs(u128::MAX, u128::MAX), vec![(u128::MAX, 128)]);
        // 0.0.0.0 - 255.255.255.255 is the v4-mapped /96.
        let all4 = cidrs(v4("0.0.0.0"), v4("255.255.255.255"));
        assert_eq!(all4, vec![(v4("0.0.0.0"), 96)]);
        assert_eq!(to_net(all4[0].0, all4[0].1).to_string(), "0.0.0.0/0");
        // Not aligned: 10.0.0.1 - 10.0.0.6 = .1/32 .2/31 .4/31 .6/32.
        let c: Vec<String> = cidrs(v4("10.0.0.1"), v4("10.0.0.6"))
            .iter()
            .map(|(s, l)| to_net(*s, *l).to_string())
            .collect();
        assert_eq!(
            c,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        let v6 = addr("::".parse().unwrap());
        assert_eq!(to_net(v6, 0).to_string(), "::/0");
    }

    #[test]
    fn longest_prefix_wins() {
        let m = RangeMap::from_prefixes(vec![
            (v4("10.0.0.0"), 96 + 8, 'a'),
            (v4("10.1.0.0"), 96 + 16, 'b'),
            (v4("10.1.2.0"), 96 + 24, 'c'),
            (v4("11.0.0.0"), 96 + 8, 'd'),
        ]);
        assert_eq!(m.get(v4("10.0.0.1")), Some(&'a'));
        assert_eq!(m.get(v4("10.1.0.0")), Some(&'b'));
        assert_eq!(m.get(v4("10.1.2.255")), Some(&'c'));
        assert_eq!(m.get(v4("10.1.3.0")), Some(&'b'));
        assert_eq!(m.get(v4("10.255.255.255")), Some(&'a'));
        assert_eq!(m.get(v4("11.9.9.9")), Some(&'d'));
        assert_eq!(m.get(v4("12.0.0.0")), None);
        assert_eq!(m.get(v4("9.255.255.255")), None);
    }

    #[test]
    fn nested_and_overlapping_ranges_most_specific_wins() {
        let m = RangeMap::from_nested(vec![
            (1u128, 10, 'a'),
            (5, 15, 'b'),
            (20, 25, 'c'),
            (21, 21, 'd'),
        ]);
        assert_eq!(
            m.ranges(),
            &[
                (1, 4, 'a'),
                (5, 15, 'b'),
                (20, 20, 'c'),
                (21, 21, 'd'),
                (22, 25, 'c')
            ]
        );
    }

    #[test]
    fn whole_space_prefix() {
        let m = RangeMap::from_prefixes(vec![(0, 0, 1u8), (u128::MAX, 128, 2)]);
        assert_eq!(m.get(0), Some(&1));
        assert_eq!(m.get(u128::MAX), Some(&2));
        assert_eq!(m.get(u128::MAX - 1), Some(&1));
    }

    fn naive_lpm(prefixes: &[(Addr, u8, u8)], a: Addr) -> Option<u8> {
        let mut best: Option<(u8, u8)> = None;
        for (s, len, v) in prefixes {
            let host = 128 - u32::from(*len);
            let mask = if host == 128 {
                0
            } else {
                !((1u128 << host) - 1)
            };
            if a & mask == s & mask && best.is_none_or(|(bl, _)| *len >= bl) {
                best = Some((*len, *v));
            }
        }
        best.map(|(_, v)| v)
    }

    fn prefix_strategy() -> impl Strategy<Value = (Addr, u8, u8)> {
        // Cluster addresses so prefixes nest and collide often.
        (0u8..4, any::<u32>(), 0u8..=128, 0u8..3)
            .prop_map(|(hi, lo, len, v)| ((u128::from(hi) << 120) | u128::from(lo), len, v))
    }

    proptest! {
        #[test]
        fn from_prefixes_is_longest_prefix_match(
            prefixes in prop::collection::vec(prefix_strategy(), 0..40),
            probes in prop::collection::vec(any::<u32>(), 1..40),
            hi in 0u8..4,
        ) {
            let m = RangeMap::from_prefixes(prefixes.clone());
            for w in m.ranges().windows(2) {
                prop_assert!(w[0].1 < w[1].0, "disjoint and sorted");
            }
            for p in probes {
                let a = (u128::from(hi) << 120) | u128::from(p);
                prop_assert_eq!(m.get(a).copied(), naive_lpm(&prefixes, a));
            }
        }

        #[test]
        fn cover_is_exact_and_aligned(a in any::<u128>(), b in any::<u128>()) {
            let (s, e) = if a <= b { (a, b) } else { (b, a) };
            let c = cidrs(s, e);
            let mut next = s;
            for (p, len) in &c {
                prop_assert_eq!(*p, next, "contiguous");
                let host = 128 - u32::from(*len);
                if host < 128 {
                    prop_assert_eq!(p & ((1u128 << host) - 1), 0, "aligned");
                    next = p + (1u128 << host);
                }
            }
            prop_assert!(c.len() <= 254);
        }

        #[test]
        fn overlay_then_coalesce_matches_pointwise(
            base in prop::collection::vec(prefix_strategy(), 0..20),
            top in prop::collection::vec(prefix_strategy(), 0..20),
            probes in prop::collection::vec(any::<u32>(), 1..40),
            hi in 0u8..4,
        ) {
            let b = RangeMap::from_prefixes(base.clone());
            let t = RangeMap::from_prefixes(top.clone());
            let m = b.overlay(&t).coalesce();
            for p in probes {
                let a = (u128::from(hi) << 120) | u128::from(p);
                let want = naive_lpm(&top, a).or_else(|| naive_lpm(&base, a));
                prop_assert_eq!(m.get(a).copied(), want);
            }
        }
    }
}
