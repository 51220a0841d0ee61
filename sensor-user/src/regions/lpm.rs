//! The fewest prefixes that give a longest-prefix-match table the same answer
//! as a range map for every address (ORTC: Draves, King, Venkatachary, Zill,
//! "Constructing Optimal IP Routing Tables", INFOCOM 1999).
//!
//! Covering each range with aligned prefixes is optimal only without nesting; a
//! longest-prefix table can also carve holes (a /8 allow with a /24 deny inside),
//! which on registry data roughly halves the table. "No value" is a value here
//! too: where the tree needs it, a prefix carrying `None` is emitted (the kernel
//! stores it as `unknown`).
//!
//! The trie is never materialised: a pre-order array of one byte per node (the
//! set of values that are optimal for the subtree) is all the state.

use super::ranges::{Addr, RangeMap};

const LEAF: u8 = 0x80;

/// Full partition of the address space into (start, value index); index 0 is
/// "no value".
struct Partition {
    starts: Vec<Addr>,
    values: Vec<u8>,
}

impl Partition {
    /// Index of the segment holding `a`.
    fn at(&self, a: Addr) -> usize {
        self.starts.partition_point(|s| *s <= a) - 1
    }

    /// Last address of segment `i`.
    fn end(&self, i: usize) -> Addr {
        self.starts.get(i + 1).map_or(Addr::MAX, |n| n - 1)
    }
}

fn block_end(start: Addr, len: u32) -> Addr {
    match len {
        0 => Addr::MAX,
        128.. => start,
        _ => start | (Addr::MAX >> len),
    }
}

/// Pass 2 of ORTC, bottom-up: the set of optimal values of each node.
fn sets(p: &Partition, start: Addr, len: u32, out: &mut Vec<u8>) -> u8 {
    let pos = out.len();
    out.push(0);
    let i = p.at(start);
    if p.end(i) >= block_end(start, len) {
        let set = 1u8 << p.values[i];
        out[pos] = set | LEAF;
        return set;
    }
    let half = 1u128 << (127 - len);
    let a = sets(p, start, len + 1, out);
    let b = sets(p, start + half, len + 1, out);
    let set = if a & b != 0 { a & b } else { a | b };
    out[pos] = set;
    set
}

/// Pass 3 of ORTC, top-down: emit a prefix wherever the inherited value is not
/// optimal for the subtree.
fn emit(
    tree: &[u8],
    idx: &mut usize,
    start: Addr,
    len: u32,
    inherited: u8,
    out: &mut Vec<(Addr, u8, u8)>,
) {
    let node = tree[*idx];
    *idx += 1;
    let set = node & !LEAF;
    let chosen = if set & (1 << inherited) != 0 {
        inherited
    } else {
        let v = set.trailing_zeros() as u8;
        out.push((start, len as u8, v));
        v
    };
    if node & LEAF == 0 {
        let half = 1u128 << (127 - len);
        emit(tree, idx, start, len + 1, chosen, out);
        emit(tree, idx, start + half, len + 1, chosen, out);
    }
}

/// The fewest (prefix start, map-form length, value) entries such that the
/// longest matching entry of every address carries its value in `map` (`None`
/// where `map` has none; addresses matching no entry have none too). `None` when
/// `map` holds more than 7 distinct values.
pub fn minimal_prefixes<V: Clone + PartialEq>(
    map: &RangeMap<V>,
) -> Option<Vec<(Addr, u8, Option<V>)>> {
    let mut distinct: Vec<V> = Vec::new();
    let mut starts = vec![0];
    let mut values = vec![0u8];
    for (s, e, v) in map.ranges() {
        let idx = match distinct.iter().position(|d| d == v) {
            Some(i) => i,
            None => {
                if distinct.len() == 7 {
                    return None;
                }
                distinct.push(v.clone());
                distinct.len() - 1
            }
        } as u8
            + 1;
        if *s == *starts.last().expect("non-empty") {
            *values.last_mut().expect("non-empty") = idx;
        } else {
            starts.push(*s);
            values.push(idx);
        }
        if *e < Addr::MAX {
            starts.push(e + 1);
            values.push(0);
        }
    }
    let p = Partition { starts, values };
    let mut tree = Vec::new();
    sets(&p, 0, 0, &mut tree);
    let mut out = Vec::new();
    emit(&tree, &mut 0, 0, 0, 0, &mut out);
    Some(
        out.into_iter()
            .map(|(s, l, v)| (s, l, (v > 0).then(|| distinct[usize::from(v - 1)].clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn lpm<V: Clone>(table: &[(Addr, u8, Option<V>)], a: Addr) -> Option<V> {
        table
            .iter()
            .filter(|(s, l, _)| {
                let host = 128 - u32::from(*l);
                host == 128 || (a >> host) == (s >> host)
            })
            .max_by_key(|(_, l, _)| *l)
            .and_then(|(_, _, v)| v.clone())
    }

    #[test]
    fn a_hole_is_one_prefix_not_a_cover() {
        // 10.0.0.0/8 allow except 10.1.2.0/24: 2 prefixes instead of 16.
        let a = |s: &str| super::super::ranges::addr(s.parse().unwrap());
        let m = RangeMap::from_prefixes(vec![(a("10.0.0.0"), 104, 'A'), (a("10.1.2.0"), 120, 'D')]);
        let t = minimal_prefixes(&m).unwrap();
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(m.to_prefixes().len() > 10);
    }

    #[test]
    fn empty_and_full() {
        assert!(
            minimal_prefixes(&RangeMap::<u8>::default())
                .unwrap()
                .is_empty()
        );
        let full = RangeMap::from_prefixes(vec![(0, 0, 1u8)]);
        assert_eq!(minimal_prefixes(&full).unwrap(), vec![(0, 0, Some(1))]);
    }

    proptest! {
        #[test]
        fn same_answer_everywhere_and_never_more_than_the_cover(
            prefixes in prop::collection::vec((0u8..4, any::<u32>(), 0u8..=128, 0u8..3), 0..30),
            probes in prop::collection::vec((0u8..4, any::<u32>()), 1..60),
        ) {
            let m = RangeMap::from_prefixes(
                prefixes.iter().map(|(hi, lo, len, v)| ((u128::from(*hi) << 120) | u128::from(*lo), *len, *v)),
            );
            let t = minimal_prefixes(&m).unwrap();
            let cover = m.clone().coalesce().to_prefixes().len();
            prop_assert!(t.len() <= cover, "{} > {}", t.len(), cover);
            for (hi, lo) in probes {
                let a = (u128::from(hi) << 120) | u128::from(lo);
                prop_assert_eq!(lpm(&t, a), m.get(a).copied(), "at {:x}", a);
            }
            for (s, e, v) in m.ranges() {
                prop_assert_eq!(lpm(&t, *s), Some(*v));
                prop_assert_eq!(lpm(&t, *e), Some(*v));
            }
        }
    }
}
