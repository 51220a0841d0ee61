//! SVG charts drawn on the server: violations over time (stacked by class)
//! and a world map of destination countries.

use std::{collections::BTreeMap, fmt::Write, sync::LazyLock};

use super::html::{esc, time};

/// Colours of classes, in order of their names.
const PALETTE: [&str; 8] = [
    "#3b6fd4", "#e8702a", "#2a9d8f", "#c2417a", "#7b5cc4", "#8a9a2b", "#d4a017", "#5f6b7a",
];

/// Map shades from few to many violations; no violation is `NONE`.
const SHADES: [&str; 5] = ["#fcbba1", "#fc9272", "#fb6a4a", "#de2d26", "#a50f15"];
const NONE: &str = "#dfe3e8";

/// The colour of class number `i`.
pub fn class_colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A swatch and name per class.
pub fn legend(classes: &[String]) -> String {
    let mut s = String::from("<div class=\"legend\">");
    for (i, c) in classes.iter().enumerate() {
        let _ = write!(
            s,
            "<span><i class=\"swatch\" data-colour=\"{col}\"><svg width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\" fill=\"{col}\"/></svg></i>{}</span>",
            esc(if c.is_empty() { "(no class)" } else { c }),
            col = class_colour(i),
        );
    }
    s.push_str("</div>");
    s
}

/// Stacked bars: `counts[(bucket start, class index)]`, buckets of
/// `bucket_ns` from `start` to `end`.
pub fn bars(
    counts: &BTreeMap<(i64, usize), u64>,
    classes: &[String],
    start: i64,
    end: i64,
    bucket_ns: i64,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 40.0;
    const BOTTOM: f64 = 20.0;
    let first = start - start.rem_euclid(bucket_ns);
    let n = (((end - first) + bucket_ns - 1) / bucket_ns).clamp(1, 500) as usize;
    let mut totals = vec![0u64; n];
    for (&(b, _), &c) in counts {
        let i = ((b - first) / bucket_ns) as usize;
        if i < n {
            totals[i] += c;
        }
    }
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let bw = (W - LEFT) / n as f64;
    let scale = (H - BOTTOM - 10.0) / max as f64;
    let mut s = format!(
        "<svg id=\"timeline\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"violations over time\">"
    );
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#9aa3ad\"/><text x=\"2\" y=\"14\">{max}</text><text x=\"2\" y=\"{y}\">0</text>",
        y = H - BOTTOM
    );
    let mut heights = vec![0f64; n];
    for (&(b, class), &c) in counts {
        let i = ((b - first) / bucket_ns) as usize;
        if i >= n {
            continue;
        }
        let h = c as f64 * scale;
        let y = H - BOTTOM - heights[i] - h;
        heights[i] += h;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{col}\"><title>{t}: {c} {cl}</title></rect>",
            x = LEFT + i as f64 * bw + 0.5,
            w = (bw - 1.0).max(0.5),
            col = class_colour(class),
            t = esc(&time(b)),
            cl = esc(classes.get(class).map_or("", String::as_str)),
        );
    }
    for (i, anchor) in [(0, "start"), (n / 2, "middle"), (n - 1, "end")] {
        let x = LEFT + i as f64 * bw + if anchor == "end" { bw } else { 0.0 };
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{H}\" text-anchor=\"{anchor}\">{}</text>",
            esc(&time(first + i as i64 * bucket_ns))
        );
    }
    s.push_str("</svg>");
    s
}

/// Countries of the map: ISO code, name, outline (see assets/world.tsv).
static COUNTRIES: LazyLock<Vec<(&'static str, &'static str, &'static str)>> = LazyLock::new(|| {
    include_str!("../../assets/world.tsv")
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            Some((f.next()?, f.next()?, f.next()?))
        })
        .collect()
});

/// The name of country `code`, if the map knows it.
pub fn country_name(code: &str) -> Option<&'static str> {
    COUNTRIES
        .iter()
        .find(|(c, ..)| *c == code)
        .map(|(_, n, _)| *n)
}

/// The world, each country shaded by its violations.
pub fn world(counts: &BTreeMap<String, u64>) -> String {
    let max = counts.values().copied().max().unwrap_or(0);
    let shade = |n: u64| -> &'static str {
        if n == 0 {
            return NONE;
        }
        let f = ((n as f64).ln_1p() / (max as f64).ln_1p() * SHADES.len() as f64) as usize;
        SHADES[f.clamp(1, SHADES.len()) - 1]
    };
    let mut s = String::from(
        "<svg id=\"world\" viewBox=\"0 0 2020 1332\" width=\"720\" height=\"475\" role=\"img\" aria-label=\"violations by destination country\">",
    );
    for (code, name, path) in COUNTRIES.iter() {
        let n = counts.get(*code).copied().unwrap_or(0);
        let _ = write!(
            s,
            "<path id=\"map-{code}\" data-count=\"{n}\" d=\"{path}\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"0.6\"><title>{} ({code}): {n}</title></path>",
            shade(n),
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_knows_the_countries_of_the_region_data() {
        for c in ["DE", "IE", "NO", "US", "CN", "IN", "BR", "FR"] {
            assert!(country_name(c).is_some(), "{c} missing from the map");
        }
        assert!(COUNTRIES.len() > 200);
    }

    #[test]
    fn countries_with_violations_are_shaded_by_count() {
        let counts = BTreeMap::from([("US".to_owned(), 100), ("CN".to_owned(), 1)]);
        let svg = world(&counts);
        assert!(svg.contains("id=\"map-US\" data-count=\"100\""));
        assert!(svg.contains(&format!("fill=\"{}\"", SHADES[4])));
        assert!(svg.contains("id=\"map-DE\" data-count=\"0\""));
    }
}
