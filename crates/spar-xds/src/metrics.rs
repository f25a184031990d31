//! The ADS counters and histograms the server keeps (exported by the binary with
//! istiod's metric names).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::resources::ResourceType;

/// Counters the server keeps (exported as metrics by the binary).
#[derive(Debug)]
pub struct Metrics {
    /// Open ADS streams.
    pub connected: AtomicU64,
    /// Responses sent.
    pub pushes: AtomicU64,
    /// Responses sent per type (`pilot_xds_pushes{type}`).
    pub pushes_by_type: PerType<AtomicU64>,
    /// NACKs received (`pilot_total_xds_rejects`).
    pub rejects: AtomicU64,
    /// Push-to-ACK time (`pilot_proxy_convergence_time`).
    pub convergence: Histogram,
    /// Per type: the time from the stream's decision to
    /// respond (a request, a new snapshot, a CA change or a certificate renewal) to that
    /// type's response being handed to the stream (`pilot_xds_push_time{type}`). One
    /// observation per response, so each count equals `pushes_by_type`.
    pub push_time: PerType<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connected: AtomicU64::default(),
            pushes: AtomicU64::default(),
            pushes_by_type: Default::default(),
            rejects: AtomicU64::default(),
            convergence: Histogram::new(Histogram::CONVERGENCE_BOUNDS),
            push_time: PerType(std::array::from_fn(|_| Histogram::new(Histogram::PUSH_TIME_BOUNDS))),
        }
    }
}

impl Metrics {
    /// Records one response of `type_url` handed to the stream, decided at `decided_at`.
    pub(crate) fn record_push(&self, type_url: &str, decided_at: Instant) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = ResourceType::from_url(type_url) {
            self.pushes_by_type[t].fetch_add(1, Ordering::Relaxed);
            self.push_time[t].observe(decided_at.elapsed());
        }
    }
}

/// One value per resource type.
#[derive(Debug, Default)]
pub struct PerType<T>([T; ResourceType::ALL.len()]);

impl<T> PerType<T> {
    /// Each type with its value, in push order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL.into_iter().zip(&self.0)
    }
}

impl<T> std::ops::Index<ResourceType> for PerType<T> {
    type Output = T;
    fn index(&self, t: ResourceType) -> &T {
        &self.0[t.index()]
    }
}

/// A fixed-bucket histogram of durations, lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, seconds, ascending.
    bounds: &'static [f64],
    /// Counts per bucket of `bounds` (not cumulative; observations above the last bound
    /// are only in `count`).
    buckets: Box<[AtomicU64]>,
    /// Observations.
    count: AtomicU64,
    /// Sum of observations, microseconds.
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(Self::CONVERGENCE_BOUNDS)
    }
}

impl Histogram {
    /// Upper bounds in seconds for push-to-ACK times.
    pub const CONVERGENCE_BOUNDS: &'static [f64] = &[0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
    /// Upper bounds in seconds for push times: istiod's (`.01, .1, 1, 3, 5, 10, 20, 30`)
    /// plus 1 ms, because most of Spar's pushes take less than 10 ms (replicas share one
    /// generated and encoded config) and a single bucket below 10 ms would hide that.
    pub const PUSH_TIME_BOUNDS: &'static [f64] = &[0.001, 0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

    /// An empty histogram with buckets up to `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The Prometheus view: cumulative counts per upper bound (seconds), then the count
    /// (the `+Inf` bucket) and the sum in seconds. Read without a lock, so a scrape during
    /// an observation may see the bucket before the count; the count is read last and
    /// never less than the buckets' total, so `+Inf` stays the largest.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut total = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.buckets.iter())
            .map(|(b, n)| {
                total += n.load(Ordering::Relaxed);
                (*b, total)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed).max(total);
        #[allow(clippy::cast_precision_loss)] // microseconds to seconds for display
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, count, sum)
    }
}
