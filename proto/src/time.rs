//! Times and durations as people write and read them, on every command
//! line and in configuration (one syntax everywhere), with jiff:
//!
//! - a time: Unix seconds (`1763884800`), RFC 3339 with `Z` or an offset
//!   (`2026-11-23T07:00:00Z`, `2026-11-23T08:00:00+01:00`), a date (UTC
//!   midnight: `2026-11-23`), or a duration meaning that long ago (`24h`,
//!   `7d`, as `kubectl logs --since`); dates are checked against the
//!   calendar (`2026-02-31` is refused);
//! - a duration: `90s`, `30m`, `8h`, `7d`, `1h30m`, `500ms` (days are 24
//!   hours; months and years are refused: they have no fixed length).

use std::time::Duration;

/// The UTC time of `ns` (Unix ns) as RFC 3339 with seconds:
/// "2026-11-23T07:00:00Z".
pub fn utc(ns: i64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => format!("{ns} ns"),
    }
}

/// The UTC time of `ns` with nanoseconds, for machines:
/// "2026-11-23T07:00:00.123456789Z".
pub fn utc_nanos(ns: i64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string(),
        Err(_) => format!("{ns} ns"),
    }
}

fn now_ns() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

/// A duration in the one syntax ("90s", "8h", "7d", "1h30m", "500ms").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = |why: String| {
        format!("{s:?} is not a duration ({why}): write 90s, 30m, 8h, 7d, 1h30m or 500ms")
    };
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("a number needs its unit".into()));
    }
    let span: jiff::Span = t.parse().map_err(|e: jiff::Error| bad(e.to_string()))?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(bad("months and years have no fixed length".into()));
    }
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(e.to_string()))?;
    Duration::try_from(d).map_err(|_| bad("it is negative".into()))
}

/// A time (see the module) as Unix ns.
pub fn parse_time(s: &str) -> Result<i64, String> {
    parse_time_at(s, now_ns())
}

/// [`parse_time`] with "now" given (for durations meaning "ago").
pub fn parse_time_at(s: &str, now_ns: i64) -> Result<i64, String> {
    let t = s.trim();
    let bad = |why: String| {
        format!(
            "{s:?} is not a time ({why}): write Unix seconds, 2026-11-23, 2026-11-23T07:00:00Z, 2026-11-23T08:00:00+01:00, or 24h (that long ago)"
        )
    };
    if t.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = t.parse().map_err(|_| bad("too large".into()))?;
        return secs
            .checked_mul(1_000_000_000)
            .ok_or_else(|| bad("too large".into()));
    }
    if t.contains('T') || t.contains(' ') && t.contains(':') {
        let ts: jiff::Timestamp = t.parse().map_err(|e: jiff::Error| {
            bad(
                if t.ends_with('Z') || t.contains('+') || t[10.min(t.len())..].contains('-') {
                    e.to_string()
                } else {
                    "a time of day needs Z or an offset such as +01:00".into()
                },
            )
        })?;
        return i64::try_from(ts.as_nanosecond()).map_err(|_| bad("out of range".into()));
    }
    if let Ok(date) = t.parse::<jiff::civil::Date>() {
        let ts: jiff::Timestamp = format!("{date}T00:00:00Z")
            .parse()
            .map_err(|e: jiff::Error| bad(e.to_string()))?;
        return i64::try_from(ts.as_nanosecond()).map_err(|_| bad("out of range".into()));
    }
    if t.len() >= 8 && t.as_bytes()[4] == b'-' {
        // Looks like a date, is none (2026-02-31): say why.
        return Err(bad(t
            .parse::<jiff::civil::Date>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()));
    }
    let ago = parse_duration(t).map_err(|_| bad("neither a time nor a duration".into()))?;
    Ok(now_ns.saturating_sub(ago.as_nanos().min(i64::MAX as u128) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn utc_seconds() {
        assert_eq!(utc(1_795_417_200 * S), "2026-11-23T07:00:00Z");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_nanos(1_795_417_200 * S + 5),
            "2026-11-23T07:00:00.000000005Z"
        );
    }

    #[test]
    fn times_in_every_form_and_impossible_dates_refused() {
        let at = 1_795_417_200 * S; // 2026-11-23T07:00:00Z
        assert_eq!(parse_time("1795417200"), Ok(at));
        assert_eq!(parse_time("2026-11-23T07:00:00Z"), Ok(at));
        assert_eq!(parse_time("2026-11-23T08:00:00+01:00"), Ok(at));
        assert_eq!(parse_time("2026-11-23"), Ok(at - 7 * 3600 * S));
        assert_eq!(parse_time_at("24h", at), Ok(at - 86_400 * S));
        assert_eq!(parse_time_at("7d", at), Ok(at - 7 * 86_400 * S));
        for bad in [
            "2026-02-31",
            "2026-13-01",
            "2026-11-23T25:00:00Z",
            "yesterday",
            "",
            "2026-11-23T07:00:00",
        ] {
            let e = parse_time(bad).expect_err(bad);
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
        assert!(
            parse_time("2026-11-23T07:00:00")
                .unwrap_err()
                .contains("needs Z or an offset")
        );
    }

    #[test]
    fn one_duration_syntax() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(28_800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["10", "soon", "1mo", "2y", "-5s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
