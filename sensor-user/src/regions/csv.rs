//! Range files: one `start,end,CC` per line, IPv4 or IPv6 (the format of
//! ip-location-db and many operators' own exports). Blank lines and lines
//! starting with `#` are skipped. Where ranges nest or overlap, the more
//! specific one wins. Where ranges nest or overlap, the more
//! specific one wins.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::{
    Country, RegionDb, RegionError,
    ranges::{self, Addr, RangeMap},
};

fn parse_line(line: &str) -> Result<(Addr, Addr, Country), String> {
    let mut f = line.split(',');
    let (Some(a), Some(b), Some(c)) = (f.next(), f.next(), f.next()) else {
        return Err(format!("expected `start,end,CC`, found {line:?}"));
    };
    let start: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("start {a:?} is not an IP address"))?;
    let end: IpAddr = b
        .trim()
        .parse()
        .map_err(|_| format!("end {b:?} is not an IP address"))?;
    if start.is_ipv4() != end.is_ipv4() {
        return Err(format!(
            "start {start} and end {end} are of different families"
        ));
    }
    let cc = Country::parse(c.trim())
        .ok_or_else(|| format!("{c:?} is not a two-letter country code"))?;
    let (s, e) = (ranges::addr(start), ranges::addr(end));
    if s > e {
        return Err(format!("start {start} is after end {end}"));
    }
    Ok((s, e, cc))
}

/// Parses range-file text (`path` is for messages).
pub fn parse(path: &Path, text: &str) -> Result<Vec<(Addr, Addr, Country)>, RegionError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|msg| RegionError::Line {
            path: path.to_owned(),
            line: i + 1,
            msg,
        })?);
    }
    Ok(out)
}

/// Reads range files into one map (their ranges must not overlap).
pub fn load(files: &[PathBuf]) -> Result<RegionDb, RegionError> {
    let mut all = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| RegionError::Io {
            path: path.clone(),
            source,
        })?;
        all.extend(parse(path, &text)?);
    }
    if all.is_empty() {
        // An empty file would make every destination unknown: say so rather
        // than start with no region data.
        return Err(RegionError::Format {
            path: files.first().cloned().unwrap_or_default(),
            msg: format!(
                "no ranges in {} file(s): every destination would be unknown; give lines start,end,CC",
                files.len()
            ),
        });
    }
    // Registry data nests ranges (a /23 with one address inside re-assigned):
    // the more specific range wins, as in routing. Sorting once is enough for
    // disjoint data; only nested data pays for the sweep.
    all.sort_by_key(|r| r.0);
    let disjoint = all.windows(2).all(|w| w[0].1 < w[1].0);
    if !disjoint {
        // Nesting is how registries re-assign part of a block; a partial
        // overlap (neither range inside the other) is more likely a mistake
        // the operator wants to hear about. The later-starting range wins.
        let partial: Vec<&[(Addr, Addr, Country)]> = all
            .windows(2)
            .filter(|w| w[0].1 >= w[1].0 && w[1].1 > w[0].1)
            .collect();
        if let Some(w) = partial.first() {
            tracing::warn!(
                files = ?files,
                count = partial.len(),
                first = %format!("{}..{} ({}) and {}..{} ({})", ranges::ip(w[0].0), ranges::ip(w[0].1), w[0].2, ranges::ip(w[1].0), ranges::ip(w[1].1), w[1].2),
                "region ranges overlap partly (neither inside the other); where they overlap, the range that starts later wins"
            );
        }
    }
    let countries = if disjoint {
        RangeMap::from_disjoint(all).unwrap_or_default()
    } else {
        RangeMap::from_nested(all)
    };
    Ok(RegionDb {
        countries,
        provenance: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families() {
        let p = Path::new("t.csv");
        let r = parse(
            p,
            "# comment\n1.0.0.0,1.0.0.255,AU\n\n2001:db8::,2001:db8::ffff,de\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].2.as_str(), "DE");
    }

    #[test]
    fn errors_name_the_line() {
        let p = Path::new("t.csv");
        let e = parse(p, "1.0.0.0,1.0.0.255,AU\n1.0.1.0,zzz,AU\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.csv:2: end \"zzz\" is not an IP address");
        let e = parse(p, "1.0.0.9,1.0.0.1,AU\n").unwrap_err().to_string();
        assert!(e.contains("after end"), "{e}");
        let e = parse(p, "1.0.0.0,::1,AU\n").unwrap_err().to_string();
        assert!(e.contains("different families"), "{e}");
    }

    #[test]
    fn an_empty_range_file_is_refused_not_taken_as_no_data() {
        let path = std::env::temp_dir().join(format!("rs-empty-{}.csv", std::process::id()));
        std::fs::write(&path, "# only a comment\n\n").unwrap();
        let e = load(std::slice::from_ref(&path)).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("no ranges") && e.contains("rs-empty-"), "{e}");
    }
}
