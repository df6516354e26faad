//! The statistics of the samples: nearest-rank percentiles and means, the throughput of a
//! download case, and the rounding of figures for the JSON line.

use serde_json::{Value, json};

/// The nearest-rank percentile of ascending `sorted` samples: the smallest sample that at least
/// `percent` per cent of the samples are less than or equal to. `sorted` must not be empty.
fn percentile(sorted: &[f64], percent: usize) -> f64 {
    let rank = (percent * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The summary of one case's samples; every figure is NaN when there are none.
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) mean: f64,
}

impl Stats {
    pub(crate) fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Self {
                n: 0,
                p50: f64::NAN,
                p95: f64::NAN,
                p99: f64::NAN,
                mean: f64::NAN,
            };
        }
        Self {
            n: sorted.len(),
            p50: percentile(&sorted, 50),
            p95: percentile(&sorted, 95),
            p99: percentile(&sorted, 99),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// The summary of one download case: seconds per download, and the throughput of the
/// median download.
pub(crate) struct Throughput {
    pub(crate) seconds: Stats,
    /// MiB/s at the p50 time, so that the two columns always describe the same download.
    pub(crate) p50_mib_per_s: f64,
}

impl Throughput {
    pub(crate) fn of(seconds: &[f64], bytes: u64) -> Self {
        let seconds = Stats::of(seconds);
        Self {
            p50_mib_per_s: bytes as f64 / f64::from(1 << 20) / seconds.p50,
            seconds,
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "p50_s": round(self.seconds.p50, 3),
            "p95_s": round(self.seconds.p95, 3),
            "mean_s": round(self.seconds.mean, 3),
            "p50_mib_per_s": round(self.p50_mib_per_s, 1),
            "n": self.seconds.n,
        })
    }
}

/// `value` rounded to `decimals` places, so that the JSON does not carry float noise; NaN
/// (no samples) stays NaN, which the JSON writes as null.
pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 50), 10.0);
        assert_eq!(percentile(&twenty, 95), 19.0);
        assert_eq!(percentile(&twenty, 100), 20.0);
        assert_eq!(percentile(&[7.0], 50), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0), 1.0);
    }
}
