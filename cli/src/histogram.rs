//! A fixed-size latency histogram with logarithmic buckets (the idea of
//! HdrHistogram, in a few lines): 32 linear sub-buckets per power of two,
//! so any value is known within 1/32 (about 3%), from 1 ns to u64::MAX, in
//! 1,920 counters. Memory never grows with the number of samples.

/// Linear sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `SUB` get one bucket each; each power of two from `SUB` up
/// gets `SUB` buckets.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// Counts of values (nanoseconds, here) in logarithmic buckets, plus the
/// exact minimum and maximum.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let sub = (value >> (exponent - SUB_BITS)) & (SUB - 1);
    ((exponent - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The middle of bucket `index`.
fn value_at(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let exponent = index / SUB + u64::from(SUB_BITS) - 1;
    let sub = index % SUB;
    let width = 1u64 << (exponent - u64::from(SUB_BITS));
    ((SUB + sub) * width).saturating_add(width / 2)
}

impl Histogram {
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub(crate) fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The value at `percentile` (0 to 100), `None` when empty.
    pub(crate) fn percentile(&self, percentile: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((percentile / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(value_at(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Adds `other`'s samples to this one.
    pub(crate) fn add(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Empties it.
    pub(crate) fn clear(&mut self) {
        if self.count > 0 {
            self.counts.fill(0);
            self.count = 0;
            self.min = u64::MAX;
            self.max = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_three_percent() {
        let mut last = 0;
        for value in
            (0..64).flat_map(|shift| [1u64 << shift, (1u64 << shift) + 7, u64::MAX >> shift])
        {
            let i = index(value);
            assert!(i < BUCKETS, "{value} -> {i}");
            let middle = value_at(i);
            let error = middle.abs_diff(value) as f64 / value.max(1) as f64;
            assert!(error <= 1.0 / 32.0, "{value} -> {middle}");
        }
        for value in 0..100_000u64 {
            let i = index(value);
            assert!(i >= last);
            last = i;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50.0), None);
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.percentile(50.0).unwrap() as f64;
        let p99 = h.percentile(99.0).unwrap() as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.03, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.03, "{p99}");
        assert_eq!(h.percentile(100.0), Some(10_000_000));
        assert_eq!(
            (h.min(), h.max(), h.count()),
            (Some(1000), Some(10_000_000), 10_000)
        );

        let mut total = Histogram::default();
        total.add(&h);
        total.add(&h);
        assert_eq!(total.count(), 20_000);
        h.clear();
        assert_eq!((h.count(), h.max()), (0, None));
        h.record(3);
        assert_eq!((h.min(), h.percentile(50.0)), (Some(3), Some(3)));
    }
}
