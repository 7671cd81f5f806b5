//! A share of the data when several processes divide it: share `index` of
//! `count`. Stores are divided by shard (shard `i` belongs to share
//! `i % count`), streams and harvests by window or shard in the same
//! round-robin way, and a batch of `rows` rows by consecutive slices, so the
//! shares are disjoint and together cover everything exactly once.

use crate::error::{Error, Result};

/// Share `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    /// Everything, in one share.
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// Share `index` of `count`, refused unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Share> {
        if count == 0 || index >= count {
            return Err(Error::InvalidArgument(format!(
                "share {index} of {count} does not exist"
            )));
        }
        Ok(Share { index, count })
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Whether item `i` of a round-robin division (a shard, a window) is ours.
    pub fn holds(&self, i: u64) -> bool {
        i % self.count as u64 == self.index as u64
    }

    /// Our consecutive slice `(start, len)` of `rows` rows: the shares'
    /// slices differ in length by at most one and cover the rows in order.
    pub fn slice_of(&self, rows: usize) -> (usize, usize) {
        let start = self.index * rows / self.count;
        let end = (self.index + 1) * rows / self.count;
        (start, end - start)
    }

    /// Items `0..n` of a round-robin division that are ours.
    pub fn count_of(&self, n: u64) -> u64 {
        let (count, index) = (self.count as u64, self.index as u64);
        n / count + u64::from(n % count > index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_disjoint_and_cover_everything() {
        for count in 1..6 {
            let shares: Vec<Share> = (0..count).map(|i| Share::new(i, count).unwrap()).collect();
            for n in [0u64, 1, 7, 12, 13] {
                let total: u64 = shares.iter().map(|s| s.count_of(n)).sum();
                assert_eq!(total, n);
                for item in 0..n {
                    assert_eq!(shares.iter().filter(|s| s.holds(item)).count(), 1);
                }
                for share in &shares {
                    let held = (0..n).filter(|&i| share.holds(i)).count() as u64;
                    assert_eq!(held, share.count_of(n));
                }
            }
            for rows in [count, 10, 4097] {
                let mut next = 0;
                for share in &shares {
                    let (start, len) = share.slice_of(rows);
                    assert_eq!(start, next);
                    assert!(len >= rows / count && len <= rows.div_ceil(count));
                    next = start + len;
                }
                assert_eq!(next, rows);
            }
        }
        assert!(Share::new(2, 2).is_err());
        assert!(Share::new(0, 0).is_err());
    }
}
