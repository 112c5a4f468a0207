//! Small statistics: the median of runs with its min and max, percentiles of samples, and
//! how they are printed in the report.

use serde::Serialize;

/// One figure over several runs: median, min, max.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Agg {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

pub fn agg(values: &[f64]) -> Option<Agg> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Agg {
        median,
        min: v[0],
        max: v[n - 1],
        runs: n,
    })
}

/// Percentile `p` (0..=1) of sorted samples (nearest rank).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// A number with a sensible count of digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    }
}

/// `median (min–max)`, or the single value for one run.
pub fn fmt_agg(a: Option<Agg>) -> String {
    match a {
        None => "–".into(),
        Some(a) if a.runs <= 1 || a.min == a.max => num(a.median),
        Some(a) => format!("{} ({}–{})", num(a.median), num(a.min), num(a.max)),
    }
}
