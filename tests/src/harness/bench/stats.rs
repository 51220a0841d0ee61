//! Order statistics for the report.

/// The `q` quantile (0..=1) by nearest rank.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx]
}

/// The median.
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 0.5)
}
