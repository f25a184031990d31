//! Percentiles of durations.

use std::time::Duration;

/// p50, p99 and max of a set of durations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile (nearest rank), ms.
    pub p99: f64,
    /// Largest, ms.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (empty: all zero).
    pub fn of(samples: &[Duration]) -> Self {
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let rank = |p: usize| v.get((n * p).div_ceil(100).max(1) - 1).copied().unwrap_or(0.0);
        Self { n, p50: rank(50), p99: rank(99), max: v.last().copied().unwrap_or(0.0) }
    }

    /// The same summary with `ms` taken off every figure (not below zero).
    pub fn minus(&self, ms: f64) -> Self {
        Self { n: self.n, p50: (self.p50 - ms).max(0.0), p99: (self.p99 - ms).max(0.0), max: (self.max - ms).max(0.0) }
    }

    /// `p50 / p99 / max` in ms.
    pub fn display(&self) -> String {
        format!("{} / {} / {} ms", fmt_ms(self.p50), fmt_ms(self.p99), fmt_ms(self.max))
    }
}

/// Milliseconds with a precision that suits their size.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 { format!("{ms:.0}") } else { format!("{ms:.1}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&d);
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(Summary::of(&[]).max, 0.0);
    }
}
