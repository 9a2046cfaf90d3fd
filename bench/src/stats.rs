//! Latency recording: HDR histograms in microseconds, sharded so that many
//! reader tasks can record without fighting over one lock, plus the summaries
//! and CDF points the reports show.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram holds, in microseconds (one hour); larger
/// values are clamped to it and counted in `clamped`.
pub const MAX_MICROS: u64 = 3_600_000_000;

/// A new histogram: 1 µs to one hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid")
}

/// A histogram split into shards; record with any shard index, merge at the end.
#[derive(Debug)]
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
    /// Samples above [`MAX_MICROS`] (recorded as the maximum).
    clamped: AtomicU64,
}

impl ShardedHistogram {
    /// `shards` histograms (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
            clamped: AtomicU64::new(0),
        }
    }

    /// Records one sample, in microseconds, into shard `hint % shards`.
    pub fn record(&self, hint: usize, micros: u64) {
        let v = if micros > MAX_MICROS {
            self.clamped.fetch_add(1, Ordering::Relaxed);
            MAX_MICROS
        } else {
            micros.max(1)
        };
        let shard = &self.shards[hint % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(v)
            .expect("values are clamped into range");
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for s in &self.shards {
            out.add(&*s.lock().unwrap_or_else(|p| p.into_inner()))
                .expect("same bounds");
        }
        out
    }

    /// How many samples were clamped.
    pub fn clamped(&self) -> u64 {
        self.clamped.load(Ordering::Relaxed)
    }
}

/// The figures a report shows for one latency distribution, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Summarizes a histogram of microseconds; `None` if it is empty.
pub fn summarize(h: &Histogram<u64>) -> Option<Summary> {
    if h.is_empty() {
        return None;
    }
    Some(Summary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    })
}

/// One point of a CDF: `percent` of samples were at most `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CdfPoint {
    pub ms: f64,
    pub percent: f64,
}

/// The CDF of a histogram of microseconds, at most about `max_points`
/// points, always ending at 100 %. Points are kept at every distinct bucket
/// when there are few; otherwise spaced so the tail keeps its detail.
pub fn cdf(h: &Histogram<u64>, max_points: usize) -> Vec<CdfPoint> {
    let total = h.len();
    if total == 0 {
        return Vec::new();
    }
    let all: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect();
    let mut out = Vec::with_capacity(all.len().min(max_points.max(2)));
    let mut seen = 0u64;
    // Keep a point whenever the percentile moved by a fixed share, or by at
    // least `step` in the "nines" scale, so 99 -> 99.9 -> 99.99 get points too.
    let step = 1.0 / max_points.max(2) as f64;
    let mut last_kept = f64::NEG_INFINITY;
    let mut last_frac = f64::NEG_INFINITY;
    for (i, (value, count)) in all.iter().enumerate() {
        seen += count;
        let frac = seen as f64 / total as f64;
        let nines = -(1.0 - frac).max(1e-9).log10() / 9.0; // 0..1
        let last = i + 1 == all.len();
        let moved = frac - last_frac >= 2.0 / max_points.max(2) as f64;
        if last || moved || nines - last_kept >= step || all.len() <= max_points {
            last_frac = frac;
            out.push(CdfPoint {
                ms: ms(h.highest_equivalent(*value)),
                percent: frac * 100.0,
            });
            last_kept = nines;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = new_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn summary_of_uniform_values() {
        let h = hist(1..=10_000);
        let s = summarize(&h).unwrap();
        assert_eq!(s.count, 10_000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p90_ms - 9.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.p999_ms - 9.99).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        assert!((s.min_ms - 0.001).abs() < 1e-9);
        assert!(s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert!(summarize(&new_histogram()).is_none());
        assert!(cdf(&new_histogram(), 100).is_empty());
    }

    #[test]
    fn shards_merge_and_clamp() {
        let s = ShardedHistogram::new(4);
        for i in 0..100u64 {
            s.record(i as usize, 1000 + i);
        }
        s.record(0, MAX_MICROS * 2);
        s.record(1, 0); // recorded as 1 µs
        let m = s.merged();
        assert_eq!(m.len(), 102);
        assert_eq!(s.clamped(), 1);
        assert_eq!(m.min(), 1);
        assert!(m.max() >= MAX_MICROS);
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_100() {
        let h = hist((1..=100_000).map(|i| i * 3));
        let points = cdf(&h, 200);
        assert!(points.len() > 10 && points.len() <= 400, "{}", points.len());
        // The body is not one straight segment: some point sits between 1 % and 10 %.
        assert!(points.iter().any(|p| p.percent > 1.0 && p.percent < 10.0));
        for w in points.windows(2) {
            assert!(w[0].ms <= w[1].ms);
            assert!(w[0].percent <= w[1].percent);
        }
        let last = points.last().unwrap();
        assert!((last.percent - 100.0).abs() < 1e-9);
        assert!((last.ms - 300.0).abs() / 300.0 < 0.001, "{last:?}");
        // The tail has detail: some point sits between 99 % and 100 %.
        assert!(points.iter().any(|p| p.percent > 99.0 && p.percent < 100.0));
    }

    #[test]
    fn small_cdf_keeps_every_value() {
        let h = hist([10, 20, 20, 40]);
        let p = cdf(&h, 100);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].percent, 25.0);
        assert_eq!(p[1].percent, 75.0);
        assert_eq!(p[2].percent, 100.0);
    }
}
