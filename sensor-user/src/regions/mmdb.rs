//! MaxMind DB files (GeoIP2/GeoLite2-Country, DB-IP, ip-location-db's mmdb):
//! every network in the file becomes a range with its country.

use std::{net::IpAddr, path::Path};

use serde::Deserialize;

use super::{
    Country, RegionDb, RegionError,
    ranges::{self, RangeMap},
};

/// The record fields we read: GeoIP2's `country.iso_code`, or a flat
/// `country_code` (ip-location-db).
#[derive(Deserialize)]
struct CountryOnly<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(default)]
    iso_code: Option<&'a str>,
}

/// Reads a MaxMind DB file.
pub fn load(path: &Path) -> Result<RegionDb, RegionError> {
    let fmt = |msg: String| RegionError::Format {
        path: path.to_owned(),
        msg,
    };
    let reader = maxminddb::Reader::open_readfile(path)
        .map_err(|e| fmt(format!("not a MaxMind DB file: {e}")))?;
    let mut ranges_out = Vec::new();
    let networks = reader
        .networks(Default::default())
        .map_err(|e| fmt(e.to_string()))?;
    for item in networks {
        let item = item.map_err(|e| fmt(e.to_string()))?;
        let net = item.network().map_err(|e| fmt(e.to_string()))?;
        let Some(rec) = item
            .decode::<CountryOnly>()
            .map_err(|e| fmt(e.to_string()))?
        else {
            continue;
        };
        let code = rec.country.and_then(|c| c.iso_code).or(rec.country_code);
        let Some(cc) = code.and_then(Country::parse) else {
            continue;
        };
        // IPv4 networks of an IPv6 database live in ::/96 (IPv4-compatible form).
        let (ip, len): (IpAddr, u8) = match net.ip() {
            IpAddr::V6(v6) if net.prefix() >= 96 && v6.segments()[..6] == [0; 6] => {
                let o = v6.octets();
                (
                    IpAddr::from([o[12], o[13], o[14], o[15]]),
                    net.prefix() - 96,
                )
            }
            other => (other, net.prefix()),
        };
        let n = ipnet::IpNet::new(ip, len).map_err(|e| fmt(e.to_string()))?;
        let (s, e) = ranges::net_range(&n);
        ranges_out.push((s, e, cc));
    }
    let countries = RangeMap::from_disjoint(ranges_out).map_err(|o| RegionError::Overlap {
        path: path.to_owned(),
        first: format!("{}-{}", ranges::ip(o.first.0), ranges::ip(o.first.1)),
        second: format!("{}-{}", ranges::ip(o.second.0), ranges::ip(o.second.1)),
    })?;
    Ok(RegionDb {
        countries,
        provenance: None,
    })
}

#[cfg(test)]
mod tests {
    //! A tiny MaxMind DB writer (format 2.0, IPv4, 24-bit records), enough to
    //! make real files for the reader to read.

    use super::*;

    fn ctrl(kind: u8, size: usize) -> Vec<u8> {
        assert!(size < 29);
        if kind <= 7 {
            vec![(kind << 5) | size as u8]
        } else {
            vec![size as u8, kind - 7]
        }
    }
    fn string(s: &str) -> Vec<u8> {
        [ctrl(2, s.len()), s.as_bytes().to_vec()].concat()
    }
    fn uint(kind: u8, v: u64, bytes: usize) -> Vec<u8> {
        [ctrl(kind, bytes), v.to_be_bytes()[8 - bytes..].to_vec()].concat()
    }
    fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = ctrl(7, entries.len());
        for (k, v) in entries {
            out.extend(string(k));
            out.extend(v);
        }
        out
    }

    /// Writes an IPv4 database holding `nets` ((a, b, c, d), len, country).
    fn write(path: &Path, nets: &[([u8; 4], u8, &str)]) {
        let mut data = Vec::new();
        let mut offsets = Vec::new();
        for (_, _, cc) in nets {
            offsets.push(data.len() as u32);
            data.extend(map(&[("country", map(&[("iso_code", string(cc))]))]));
        }
        // Records: Some(node) / Data(i) / Empty, resolved once node_count is known.
        #[derive(Clone, Copy)]
        enum R {
            Node(u32),
            Data(usize),
            Empty,
        }
        let mut nodes: Vec<[R; 2]> = vec![[R::Empty, R::Empty]];
        for (i, (ip, len, _)) in nets.iter().enumerate() {
            let bits = u32::from_be_bytes(*ip);
            let mut node = 0usize;
            for depth in 0..*len {
                let bit = ((bits >> (31 - depth)) & 1) as usize;
                if depth + 1 == *len {
                    nodes[node][bit] = R::Data(i);
                } else {
                    node = match nodes[node][bit] {
                        R::Node(n) => n as usize,
                        _ => {
                            nodes.push([R::Empty, R::Empty]);
                            let n = nodes.len() - 1;
                            nodes[node][bit] = R::Node(n as u32);
                            n
                        }
                    };
                }
            }
        }
        let count = nodes.len() as u32;
        let mut out = Vec::new();
        for n in &nodes {
            for r in n {
                let v = match r {
                    R::Node(x) => *x,
                    R::Empty => count,
                    R::Data(i) => count + 16 + offsets[*i],
                };
                out.extend(&v.to_be_bytes()[1..]);
            }
        }
        out.extend([0u8; 16]);
        out.extend(data);
        out.extend(b"\xAB\xCD\xEFMaxMind.com");
        out.extend(map(&[
            ("binary_format_major_version", uint(5, 2, 2)),
            ("binary_format_minor_version", uint(5, 0, 2)),
            ("build_epoch", uint(9, 1_763_856_000, 8)),
            ("database_type", string("Residency-Test")),
            ("description", map(&[])),
            ("ip_version", uint(5, 4, 2)),
            ("languages", ctrl(11, 0)),
            ("node_count", uint(6, u64::from(count), 4)),
            ("record_size", uint(5, 24, 2)),
        ]));
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn reads_a_maxmind_db() {
        let path = std::env::temp_dir().join(format!("rs-test-{}.mmdb", std::process::id()));
        write(
            &path,
            &[
                ([5, 0, 0, 0], 24, "DE"),
                ([8, 8, 8, 0], 24, "US"),
                ([128, 0, 0, 0], 1, "IE"),
            ],
        );
        let db = load(&path);
        let _ = std::fs::remove_file(&path);
        let db = db.unwrap();
        let at = |s: &str| db.country(s.parse().unwrap()).map(|c| c.to_string());
        assert_eq!(at("5.0.0.77").as_deref(), Some("DE"));
        assert_eq!(at("8.8.8.8").as_deref(), Some("US"));
        assert_eq!(at("200.1.1.1").as_deref(), Some("IE"));
        assert_eq!(at("5.0.1.0"), None);
        assert_eq!(db.countries.len(), 3);
    }

    #[test]
    fn a_file_that_is_not_mmdb_says_so() {
        let path = std::env::temp_dir().join(format!("rs-test-bad-{}.mmdb", std::process::id()));
        std::fs::write(&path, b"not a database").unwrap();
        let e = load(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(e.contains("not a MaxMind DB file"), "{e}");
    }
}
