//! Per-feature corpus statistics from one streaming pass: the top-activating
//! contexts (a bounded min-heap per feature), a uniform reservoir sample of
//! activating contexts (for examples from lower quantiles), the count of
//! non-zero activations (density), the maximum, and a histogram of non-zero
//! activations on fixed log-spaced bins. Memory is bounded by
//! `d_sae × (top_examples + reservoir)` contexts, whatever the corpus size.
//!
//! Batches are made of whole context windows, so a context never crosses a
//! window; rows are numbered in reading order across batches, and ties in
//! activation go to the earlier row, which makes the top-k exactly that of
//! a sort over the whole pass.

pub mod diversity;
pub mod logit_lens;
pub mod mi;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// How many examples to keep and how wide they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsConfig {
    /// Top-activating contexts kept per feature.
    pub top_examples: usize,
    /// Activating contexts sampled uniformly per feature.
    pub reservoir: usize,
    /// Tokens shown before and after the activating token.
    pub context_before: usize,
    pub context_after: usize,
    pub seed: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            top_examples: 20,
            reservoir: 40,
            context_before: 12,
            context_after: 4,
            seed: 0,
        }
    }
}

/// Histogram bins: 8 per decade over activations 10⁻³..10³ (outside values
/// land in the end bins).
pub const HIST_BINS: usize = 48;
const HIST_LOG10_MIN: f64 = -3.0;
const HIST_BINS_PER_DECADE: f64 = 8.0;

/// Centre of histogram bin `i`.
pub fn hist_bin_centre(i: usize) -> f32 {
    10f64.powf(HIST_LOG10_MIN + (i as f64 + 0.5) / HIST_BINS_PER_DECADE) as f32
}

fn hist_bin(value: f32) -> usize {
    let b = ((value as f64).log10() - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE;
    b.floor().clamp(0.0, (HIST_BINS - 1) as f64) as usize
}

/// One context around an activation, as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct RawExample {
    /// Row of the activating token in reading order over the whole pass.
    pub row: u64,
    pub value: f32,
    pub tokens: Vec<i32>,
    /// The feature's activation at each of `tokens`.
    pub values: Vec<f32>,
    /// Index of the activating token in `tokens`.
    pub centre: usize,
}

/// Heap key: larger activation is better, then the earlier row.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rank {
    value: f32,
    row: u64,
}

impl Eq for Rank {}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.value
            .total_cmp(&other.value)
            .then_with(|| other.row.cmp(&self.row))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct HeapEntry {
    rank: Rank,
    example: RawExample,
}

impl PartialEq for HeapEntry {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank
    }
}
impl Eq for HeapEntry {}
impl Ord for HeapEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank.cmp(&other.rank)
    }
}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What the pass found for one feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Tokens on which the feature was non-zero.
    pub nonzero: u64,
    pub max: f32,
    /// Largest first.
    pub top: Vec<RawExample>,
    /// Uniform sample of activating contexts, smallest value first.
    pub sample: Vec<RawExample>,
    pub histogram: [u64; HIST_BINS],
}

/// Everything an accumulator holds; examples are `(feature, example)`, a
/// feature's sample examples in slot order.
#[derive(Debug, Clone, PartialEq)]
pub struct AccumulatorState {
    pub rows_seen: u64,
    pub nonzero: Vec<u64>,
    pub max: Vec<f32>,
    pub histogram: Vec<u64>,
    pub top: Vec<(usize, RawExample)>,
    pub sample: Vec<(usize, RawExample)>,
}

/// The accumulator.
pub struct FeatureStatsAccumulator {
    cfg: StatsConfig,
    d_sae: usize,
    rows_seen: u64,
    nonzero: Vec<u64>,
    max: Vec<f32>,
    histogram: Vec<u64>,
    top: Vec<BinaryHeap<Reverse<HeapEntry>>>,
    sample: Vec<Vec<RawExample>>,
}

/// A batch's non-zero activations, row by row (compressed sparse rows).
struct SparseRows {
    /// `row_start[r]..row_start[r + 1]` index `features` and `values`.
    row_start: Vec<usize>,
    features: Vec<i64>,
    values: Vec<f32>,
}

impl SparseRows {
    /// From `[rows, d_sae]` activations; only positive entries count.
    fn from_dense(acts: &Tensor) -> Result<SparseRows> {
        let (rows, _) = acts.size2()?;
        let acts = acts.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?;
        let mask = acts.f_gt(0.0)?;
        // nonzero() is row-major, the same order as masked_select.
        let index = Vec::<i64>::try_from(mask.f_nonzero()?.f_flatten(0, -1)?)?;
        let values = Vec::<f32>::try_from(acts.f_masked_select(&mask)?)?;
        let mut row_start = vec![0usize; rows as usize + 1];
        let mut features = Vec::with_capacity(values.len());
        for pair in index.chunks_exact(2) {
            row_start[pair[0] as usize + 1] += 1;
            features.push(pair[1]);
        }
        for r in 0..rows as usize {
            row_start[r + 1] += row_start[r];
        }
        Ok(SparseRows {
            row_start,
            features,
            values,
        })
    }

    fn value(&self, row: usize, feature: i64) -> f32 {
        let range = self.row_start[row]..self.row_start[row + 1];
        self.features[range.clone()]
            .iter()
            .position(|&f| f == feature)
            .map_or(0.0, |i| self.values[range.start + i])
    }
}

impl FeatureStatsAccumulator {
    pub fn new(d_sae: usize, cfg: StatsConfig) -> Self {
        FeatureStatsAccumulator {
            cfg,
            d_sae,
            rows_seen: 0,
            nonzero: vec![0; d_sae],
            max: vec![0.0; d_sae],
            histogram: vec![0; d_sae * HIST_BINS],
            top: (0..d_sae).map(|_| BinaryHeap::new()).collect(),
            sample: vec![Vec::new(); d_sae],
        }
    }

    /// Tokens seen so far.
    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// Adds one batch of whole windows.
    ///
    /// - `acts`: `[rows, d_sae]` feature activations;
    /// - `tokens`: `[rows]` token ids;
    /// - `window_starts`: the first row of each window, increasing, starting at 0.
    pub fn add(&mut self, acts: &Tensor, tokens: &[i32], window_starts: &[usize]) -> Result<()> {
        let (rows, d) = acts.size2()?;
        if d as usize != self.d_sae || rows as usize != tokens.len() {
            return Err(Error::InvalidArgument(format!(
                "feature activations are {rows}×{d} for {} tokens; expected [{}, {}]",
                tokens.len(),
                tokens.len(),
                self.d_sae
            )));
        }
        if window_starts.first() != Some(&0)
            || window_starts.windows(2).any(|w| w[0] >= w[1])
            || window_starts.last().is_some_and(|&s| s >= tokens.len())
        {
            return Err(Error::InvalidArgument(
                "window starts must increase from row 0 inside the batch".into(),
            ));
        }
        let sparse = SparseRows::from_dense(acts)?;
        let mut window = 0;
        for row in 0..tokens.len() {
            while window + 1 < window_starts.len() && window_starts[window + 1] <= row {
                window += 1;
            }
            let bounds = (
                window_starts[window],
                window_starts
                    .get(window + 1)
                    .copied()
                    .unwrap_or(tokens.len()),
            );
            for i in sparse.row_start[row]..sparse.row_start[row + 1] {
                let feature = sparse.features[i];
                self.observe(&sparse, tokens, bounds, row, feature, sparse.values[i]);
            }
        }
        self.rows_seen += tokens.len() as u64;
        Ok(())
    }

    fn observe(
        &mut self,
        sparse: &SparseRows,
        tokens: &[i32],
        bounds: (usize, usize),
        row: usize,
        feature: i64,
        value: f32,
    ) {
        let f = feature as usize;
        self.nonzero[f] += 1;
        self.max[f] = self.max[f].max(value);
        self.histogram[f * HIST_BINS + hist_bin(value)] += 1;
        let rank = Rank {
            value,
            row: self.rows_seen + row as u64,
        };
        let heap = &self.top[f];
        let enters = heap.len() < self.cfg.top_examples
            || heap.peek().is_some_and(|Reverse(worst)| rank > worst.rank);
        if enters && self.cfg.top_examples > 0 {
            let example = self.context(sparse, tokens, bounds, row, feature, rank);
            let heap = &mut self.top[f];
            if heap.len() == self.cfg.top_examples {
                heap.pop();
            }
            heap.push(Reverse(HeapEntry { rank, example }));
        }
        // Reservoir sampling (Algorithm R) over this feature's activations.
        let seen = self.nonzero[f];
        let slot = if self.sample[f].len() < self.cfg.reservoir {
            Some(None)
        } else if self.cfg.reservoir > 0 {
            let j = reservoir_draw(self.cfg.seed, feature as u64, seen);
            (j < self.cfg.reservoir as u64).then_some(Some(j as usize))
        } else {
            None
        };
        if let Some(slot) = slot {
            let example = self.context(sparse, tokens, bounds, row, feature, rank);
            match slot {
                None => self.sample[f].push(example),
                Some(j) => self.sample[f][j] = example,
            }
        }
    }

    fn context(
        &self,
        sparse: &SparseRows,
        tokens: &[i32],
        (start, end): (usize, usize),
        row: usize,
        feature: i64,
        rank: Rank,
    ) -> RawExample {
        let first = row.saturating_sub(self.cfg.context_before).max(start);
        let last = (row + self.cfg.context_after + 1).min(end);
        RawExample {
            row: rank.row,
            value: rank.value,
            tokens: tokens[first..last].to_vec(),
            values: (first..last).map(|r| sparse.value(r, feature)).collect(),
            centre: row - first,
        }
    }

    /// The whole state, flattened for a checkpoint.
    pub fn state(&self) -> AccumulatorState {
        let examples = |lists: Vec<(usize, &RawExample)>| {
            lists.into_iter().map(|(f, e)| (f, e.clone())).collect()
        };
        AccumulatorState {
            rows_seen: self.rows_seen,
            nonzero: self.nonzero.clone(),
            max: self.max.clone(),
            histogram: self.histogram.clone(),
            top: examples(
                self.top
                    .iter()
                    .enumerate()
                    .flat_map(|(f, heap)| heap.iter().map(move |Reverse(e)| (f, &e.example)))
                    .collect(),
            ),
            sample: examples(
                self.sample
                    .iter()
                    .enumerate()
                    .flat_map(|(f, list)| list.iter().map(move |e| (f, e)))
                    .collect(),
            ),
        }
    }

    /// An accumulator continuing from `state` (see [`FeatureStatsAccumulator::state`]).
    pub fn from_state(d_sae: usize, cfg: StatsConfig, state: AccumulatorState) -> Result<Self> {
        let consistent = state.nonzero.len() == d_sae
            && state.max.len() == d_sae
            && state.histogram.len() == d_sae * HIST_BINS
            && state
                .top
                .iter()
                .chain(&state.sample)
                .all(|(f, _)| *f < d_sae);
        if !consistent {
            return Err(Error::InvalidArgument(format!(
                "checkpointed statistics do not fit an SAE of {d_sae} features"
            )));
        }
        let mut acc = FeatureStatsAccumulator::new(d_sae, cfg);
        acc.rows_seen = state.rows_seen;
        acc.nonzero = state.nonzero;
        acc.max = state.max;
        acc.histogram = state.histogram;
        for (f, example) in state.top {
            let rank = Rank {
                value: example.value,
                row: example.row,
            };
            acc.top[f].push(Reverse(HeapEntry { rank, example }));
        }
        for (f, example) in state.sample {
            acc.sample[f].push(example);
        }
        Ok(acc)
    }

    /// The statistics of every feature.
    pub fn finish(self) -> Vec<FeatureStats> {
        let FeatureStatsAccumulator {
            nonzero,
            max,
            histogram,
            top,
            sample,
            ..
        } = self;
        top.into_iter()
            .zip(sample)
            .enumerate()
            .map(|(f, (heap, mut sample))| {
                let top = heap
                    .into_sorted_vec()
                    .into_iter()
                    .map(|Reverse(entry)| entry.example)
                    .collect();
                sample.sort_by(|a, b| a.value.total_cmp(&b.value).then(a.row.cmp(&b.row)));
                let mut hist = [0u64; HIST_BINS];
                hist.copy_from_slice(&histogram[f * HIST_BINS..(f + 1) * HIST_BINS]);
                FeatureStats {
                    nonzero: nonzero[f],
                    max: max[f],
                    top,
                    sample,
                    histogram: hist,
                }
            })
            .collect()
    }
}

/// One quantile band of a sample and the examples picked from it.
pub struct Band<'a> {
    /// Quantile range, e.g. `[0.0, 0.25]`.
    pub quantile: [f64; 2],
    /// Smallest and largest sampled activation in the band.
    pub lower: f32,
    pub upper: f32,
    pub picks: Vec<&'a RawExample>,
}

/// A uniform draw from `0..seen` for the `seen`-th activation of `feature`:
/// a hash of the three numbers rather than a generator's state, so a pass
/// resumed from a checkpoint draws exactly what an uninterrupted one does.
fn reservoir_draw(seed: u64, feature: u64, seen: u64) -> u64 {
    // splitmix64's finaliser over the combined key (a well-mixed 64-bit hash;
    // written out because `rand`'s generators keep state we would have to save).
    let mut z = seed
        .wrapping_add(feature.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(seen.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Multiply-shift maps the hash onto 0..seen without modulo bias worth noting.
    ((z as u128 * seen as u128) >> 64) as u64
}

/// Splits a value-sorted sample into `bands` equal quantile bands and takes
/// up to `per_band` evenly spaced examples from each, lowest band first.
pub fn quantile_bands(sorted: &[RawExample], bands: usize, per_band: usize) -> Vec<Band<'_>> {
    if sorted.is_empty() || bands == 0 {
        return Vec::new();
    }
    (0..bands)
        .filter_map(|b| {
            let lo = b * sorted.len() / bands;
            let hi = (b + 1) * sorted.len() / bands;
            if lo == hi {
                return None;
            }
            let n = per_band.min(hi - lo);
            Some(Band {
                quantile: [b as f64 / bands as f64, (b + 1) as f64 / bands as f64],
                lower: sorted[lo].value,
                upper: sorted[hi - 1].value,
                picks: (0..n).map(|i| &sorted[lo + i * (hi - lo) / n]).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(rows: &[&[f32]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    #[test]
    fn counts_max_contexts_and_ties() {
        let cfg = StatsConfig {
            top_examples: 2,
            reservoir: 10,
            context_before: 1,
            context_after: 1,
            seed: 1,
        };
        let mut acc = FeatureStatsAccumulator::new(2, cfg);
        // Two windows of two tokens; feature 0 ties at 2.0 on rows 1 and 2.
        let acts = dense(&[&[0.0, 1.0], &[2.0, 0.0], &[2.0, 0.5], &[1.0, 0.0]]);
        acc.add(&acts, &[10, 11, 12, 13], &[0, 2]).unwrap();
        let stats = acc.finish();
        assert_eq!(stats[0].nonzero, 3);
        assert_eq!(stats[0].max, 2.0);
        let top = &stats[0].top;
        assert_eq!(top.iter().map(|e| e.row).collect::<Vec<_>>(), [1, 2]);
        // Row 1 is the second token of window 0: context stops at the window.
        assert_eq!(top[0].tokens, [10, 11]);
        assert_eq!(top[0].values, [0.0, 2.0]);
        assert_eq!(top[0].centre, 1);
        assert_eq!(top[1].tokens, [12, 13]);
        assert_eq!(top[1].values, [2.0, 1.0]);
        assert_eq!(stats[1].sample.len(), 2);
        assert_eq!(stats[0].histogram.iter().sum::<u64>(), 3);
        assert_eq!(stats[1].histogram[hist_bin(0.5)], 1);
    }

    #[test]
    fn reservoir_is_bounded_and_bands_cover_it() {
        let cfg = StatsConfig {
            reservoir: 8,
            ..StatsConfig::default()
        };
        let mut acc = FeatureStatsAccumulator::new(1, cfg);
        let values: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        let acts = Tensor::from_slice(&values).view([100, 1]);
        let tokens: Vec<i32> = (0..100).collect();
        acc.add(&acts, &tokens, &[0, 50]).unwrap();
        let stats = acc.finish();
        assert_eq!(stats[0].sample.len(), 8);
        assert!(stats[0].sample.windows(2).all(|w| w[0].value <= w[1].value));
        let bands = quantile_bands(&stats[0].sample, 4, 1);
        assert_eq!(bands.len(), 4);
        assert_eq!(bands[0].picks[0].value, stats[0].sample[0].value);
        assert_eq!(bands[0].lower, stats[0].sample[0].value);
        assert_eq!(bands[3].upper, stats[0].sample[7].value);
        assert!(bands.windows(2).all(|w| w[0].upper <= w[1].lower));
    }

    #[test]
    fn bad_batches_are_errors() {
        let mut acc = FeatureStatsAccumulator::new(2, StatsConfig::default());
        let acts = dense(&[&[0.0, 1.0], &[2.0, 0.0]]);
        assert!(acc.add(&acts, &[1, 2, 3], &[0]).is_err());
        assert!(acc.add(&acts, &[1, 2], &[1]).is_err());
        assert!(acc.add(&dense(&[&[1.0, 1.0, 1.0]]), &[1], &[0]).is_err());
    }

    #[test]
    fn histogram_bins_are_monotone() {
        assert_eq!(hist_bin(1e-9), 0);
        assert_eq!(hist_bin(1e9), HIST_BINS - 1);
        assert!(hist_bin(0.5) < hist_bin(5.0));
        let c = hist_bin_centre(hist_bin(3.0));
        assert!((c / 3.0 - 1.0).abs() < 0.2);
    }
}
