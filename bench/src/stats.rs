//! Percentiles, medians and number formatting.

/// The `q` quantile (0..=1) of a sorted, non-empty slice (nearest rank).
pub fn pct(sorted: &[u64], q: f64) -> u64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The `q` quantile (0..=1) of values sorted by value, each `(value,
/// count)`, `total` being the sum of the counts (nearest rank, as [`pct`]).
pub fn pct_weighted(sorted: &[(u64, u64)], total: u64, q: f64) -> u64 {
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for &(v, n) in sorted {
        seen += n;
        if seen >= rank {
            return v;
        }
    }
    sorted.last().map_or(0, |&(v, _)| v)
}

/// The median of the finite values, or NaN if there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A count with thousands separators: `1234567` → `1,234,567`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A number with `digits` decimals, or `–` when there is none.
pub fn fixed(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

/// A ratio like `0.93×`.
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}

/// A latency in µs with sensible precision.
pub fn micros(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_formats() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(pct(&v, 0.5), 500);
        assert_eq!(pct(&v, 0.99), 990);
        assert_eq!(pct(&v, 0.999), 999);
        assert_eq!(pct(&[7], 0.999), 7);
        // The same 1..=1000 as runs: 1..=500 once each, then 600 ten times
        // and 1000 four hundred times.
        let mut runs: Vec<(u64, u64)> = (1..=500).map(|v| (v, 1)).collect();
        runs.extend([(600, 100), (1000, 400)]);
        assert_eq!(pct_weighted(&runs, 1000, 0.5), 500);
        assert_eq!(pct_weighted(&runs, 1000, 0.501), 600);
        assert_eq!(pct_weighted(&runs, 1000, 0.6), 600);
        assert_eq!(pct_weighted(&runs, 1000, 0.99), 1000);
        assert_eq!(pct_weighted(&[(7, 3)], 3, 0.999), 7);
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
