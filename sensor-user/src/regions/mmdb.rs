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
