//! How the Winograd convolutions cut their tile rows into bands, one task
//! each: few enough that a band's scratch stays in budget, and even, so that
//! no thread idles while another finishes a longer band (the last band had
//! been whatever rows were left: 3,3,3,3,3,1 on the VAE's 64x64 level).

use std::ops::Range;

/// `rows` rows cut into `count` consecutive bands whose sizes differ by at
/// most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bands {
    rows: usize,
    count: usize,
}

impl Bands {
    /// Bands of at most `max_rows` rows for `batch` images on `threads`
    /// threads. Where [`super::run_tasks`] gives each thread bands of its own
    /// (two tasks per thread or more), `batch × count` is rounded up to a
    /// multiple of `threads` so that even bands end together. Fewer tasks run
    /// one after another with every thread in their products, where more,
    /// smaller bands would only stream the kernels more often.
    pub(super) fn plan(batch: usize, rows: usize, max_rows: usize, threads: usize) -> Self {
        let (batch, threads) = (batch.max(1), threads.max(1));
        let rows = rows.max(1);
        let mut count = rows.div_ceil(max_rows.max(1));
        if batch * count >= 2 * threads {
            while !(batch * count).is_multiple_of(threads) && count < rows {
                count += 1;
            }
        }
        Self { rows, count }
    }

    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// The rows of band `which` (below [`Self::count`]).
    pub(super) fn rows(&self, which: usize) -> Range<usize> {
        which * self.rows / self.count..(which + 1) * self.rows / self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(bands: Bands) -> Vec<usize> {
        (0..bands.count()).map(|b| bands.rows(b).len()).collect()
    }

    #[test]
    fn bands_cover_every_row_once_in_even_sizes() {
        for rows in 1..40 {
            for max_rows in 1..12 {
                for threads in 1..6 {
                    for batch in 1..4 {
                        let bands = Bands::plan(batch, rows, max_rows, threads);
                        let mut next = 0;
                        for b in 0..bands.count() {
                            let range = bands.rows(b);
                            assert_eq!(range.start, next);
                            assert!(!range.is_empty());
                            next = range.end;
                        }
                        assert_eq!(next, rows);
                        let s = sizes(bands);
                        let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
                        assert!(hi - lo <= 1, "{s:?}");
                        assert!(*hi <= max_rows, "{rows} rows, max {max_rows}: {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn threads_with_bands_of_their_own_get_equal_shares() {
        // The VAE decoder's 64x64 level at F(4x4): 16 tile rows, 3 fit.
        // Cut by the budget alone that is 3,3,3,3,3,1 (9 against 7 rows
        // on two threads); planned, six bands of 3 or 2 rows.
        assert_eq!(sizes(Bands::plan(1, 16, 3, 2)), [2, 3, 3, 2, 3, 3]);
        // Rounded up to a multiple of the threads: 14 -> 16 on four.
        assert_eq!(Bands::plan(1, 40, 3, 4).count(), 16);
        // Too few tasks for bands per thread: the budget's count stands.
        assert_eq!(Bands::plan(1, 16, 8, 2).count(), 2);
        assert_eq!(Bands::plan(2, 16, 3, 16).count(), 6);
        // Never more bands than rows.
        assert_eq!(Bands::plan(1, 9, 1, 4).count(), 9);
    }
}
