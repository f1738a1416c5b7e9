//! Counts over a sliding time window, lock-free: the window is split into
//! buckets, each tagged with the slice of time it counts, and a bucket from an
//! older slice is wiped when its slot comes round again.
//!
//! Racing writers at a slot's turnover may lose a count or two; the users
//! (breaker ratios, retry budgets) are statistical and can afford it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 10;

/// Two counters (say, requests and failures) over a sliding window.
#[derive(Debug)]
pub struct RollingCounts {
    slice_nanos: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The slice (time / slice length) this bucket counts.
    slice: AtomicU64,
    counts: [AtomicU64; 2],
}

impl RollingCounts {
    /// Counts over `window` (split into ten slices).
    pub fn new(window: Duration) -> Self {
        let slice_nanos = (window.as_nanos() / BUCKETS as u128).max(1) as u64;
        Self {
            slice_nanos,
            buckets: Default::default(),
        }
    }

    /// Adds `a` and `b` to the counters at time `nanos` (on the caller's clock).
    pub fn add(&self, nanos: u64, a: u64, b: u64) {
        let slice = nanos / self.slice_nanos;
        let bucket = &self.buckets[(slice % BUCKETS as u64) as usize];
        let seen = bucket.slice.load(Ordering::Relaxed);
        if seen != slice
            && bucket
                .slice
                .compare_exchange(seen, slice, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket.counts[0].store(0, Ordering::Relaxed);
            bucket.counts[1].store(0, Ordering::Relaxed);
        }
        if a > 0 {
            bucket.counts[0].fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.counts[1].fetch_add(b, Ordering::Relaxed);
        }
    }

    /// The totals over the window ending at `nanos`.
    pub fn sum(&self, nanos: u64) -> (u64, u64) {
        let now = nanos / self.slice_nanos;
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=now).contains(&b.slice.load(Ordering::Relaxed)))
            .fold((0, 0), |(a, b), bucket| {
                (
                    a + bucket.counts[0].load(Ordering::Relaxed),
                    b + bucket.counts[1].load(Ordering::Relaxed),
                )
            })
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.counts[0].store(0, Ordering::Relaxed);
            bucket.counts[1].store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn counts_within_the_window_and_forgets_what_slid_out() {
        let w = RollingCounts::new(Duration::from_secs(1));
        w.add(0, 1, 0);
        w.add(50 * MS, 1, 1);
        w.add(950 * MS, 1, 1);
        assert_eq!(w.sum(950 * MS), (3, 2));
        // At 1.05s the first slice (0-100ms) has slid out.
        assert_eq!(w.sum(1_050 * MS), (1, 1));
        // A new count in a reused slot wipes the old one first.
        w.add(1_020 * MS, 5, 0);
        assert_eq!(w.sum(1_050 * MS), (6, 1));
        assert_eq!(w.sum(5_000 * MS), (0, 0));
        w.clear();
        assert_eq!(w.sum(1_050 * MS), (0, 0));
    }
}
