//! Weight-streaming matrix–vector products on the CPU, for the few rows of a
//! decode step: `y[r, j] = Σ_i x[r, i] · W[j, i] + b[j]` with `x [m, k]` in f32
//! and `W [n, k]` (PyTorch's `[out, in]`) in f32 or bf16.
//!
//! Written here because libtorch's `linear` spends more time in dispatch and
//! weight packing than in reading the weights when `m` is 1–8 and the matrices
//! are a model block's (its bf16 gemv streams about half the bandwidth of a large
//! one), and no maintained crate does bf16 matrix–vector products. Each weight
//! row is read once for all rows of `x`, the weight rows are split over
//! libtorch's threads, and the loops are compiled for each CPU tier: AVX512-BF16's
//! bf16 dot products, AVX-512, AVX2+FMA (with bf16 widened in registers), and
//! portable code, chosen at run time ([`active`]).

#[cfg(target_arch = "x86_64")]
use crate::machine::cpu::{active, CpuTier};
use crate::vectorized_fn;

/// Elements accumulated side by side: two AVX-512 registers of f32.
const LANES: usize = 32;
/// Rows of `x` that share one pass over a weight row.
const MAX_ROWS: usize = 8;

/// A weight matrix or bias, borrowed in its stored precision.
#[derive(Clone, Copy)]
pub enum WeightSlice<'a> {
    F32(&'a [f32]),
    /// Raw bf16 bits.
    Bf16(&'a [u16]),
}

impl WeightSlice<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightSlice::F32(w) => w.len(),
            WeightSlice::Bf16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as f32 (bf16 widens exactly).
    pub fn get(&self, i: usize) -> f32 {
        match self {
            WeightSlice::F32(w) => w[i],
            WeightSlice::Bf16(w) => bf16_to_f32(w[i]),
        }
    }

    /// All elements as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            WeightSlice::F32(w) => w.to_vec(),
            WeightSlice::Bf16(w) => w.iter().map(|b| bf16_to_f32(*b)).collect(),
        }
    }
}

#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Rounds to the nearest bf16 (ties to even) and widens back, as libtorch
/// does when it stores an f32 result in a bf16 tensor. A few integer
/// operations that vectorise, unlike a per-element call into a conversion crate.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    // A select, not a branch, so that loops over it vectorise; NaN stays NaN.
    f32::from_bits(if x.is_nan() { bits } else { rounded })
}

/// A stored element: f32, or bf16 held as its bits.
pub(crate) trait Element: Copy + Send + Sync {
    /// The value as f32 (bf16 widens exactly).
    fn widen(self) -> f32;
    /// The nearest stored value (ties to even for bf16).
    fn narrow(x: f32) -> Self;
    /// `x` rounded to what this type can hold, as f32.
    #[inline(always)]
    fn round(x: f32) -> f32 {
        Self::narrow(x).widen()
    }
}

impl Element for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        x
    }
}

impl Element for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_to_f32(self)
    }
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        (round_bf16(x).to_bits() >> 16) as u16
    }
}

/// The rows `x [m, k]` of a product, prepared once for every slice of the
/// weight rows that threads compute: with bf16 weights, `x` is rounded to
/// bf16 first, as libtorch's bf16 `linear` takes a bf16 input; products and
/// sums are f32.
pub struct GemvInput<'a> {
    x: &'a [f32],
    x_bf16: Vec<u16>,
    m: usize,
    k: usize,
}

impl<'a> GemvInput<'a> {
    pub fn new(x: &'a [f32], m: usize, w: WeightSlice) -> Self {
        let x_bf16 = match w {
            WeightSlice::Bf16(_) => x
                .iter()
                .map(|v| (round_bf16(*v).to_bits() >> 16) as u16)
                .collect(),
            WeightSlice::F32(_) => Vec::new(),
        };
        GemvInput {
            x,
            x_bf16,
            m,
            k: x.len() / m.max(1),
        }
    }

    /// Output rows of `W [n, k]`.
    pub fn outputs(&self, w: WeightSlice) -> usize {
        w.len() / self.k.max(1)
    }

    /// `out_t [rows.len(), m]` = the products of weight rows `rows` with
    /// every row of `x`, transposed (each slice of rows owns a contiguous
    /// chunk). Panics only on inconsistent lengths, which callers check.
    pub fn rows_into(&self, w: WeightSlice, rows: std::ops::Range<usize>, out_t: &mut [f32]) {
        let (m, k) = (self.m, self.k);
        assert!(
            self.x.len() == m * k && rows.end * k <= w.len() && out_t.len() == rows.len() * m,
            "gemv: inconsistent lengths"
        );
        let elements = rows.start * k..rows.end * k;
        match w {
            WeightSlice::F32(w) => rows_f32(self.x, m, k, &w[elements], out_t),
            WeightSlice::Bf16(w) => rows_bf16(&self.x_bf16, m, k, &w[elements], out_t),
        }
    }
}

/// `[m, n]` from the transposed products `out_t [n, m]`, plus `bias [n]`.
/// With one row the two layouts are the same, and the buffer is reused.
pub fn untranspose(mut out_t: Vec<f32>, m: usize, bias: Option<WeightSlice>) -> Vec<f32> {
    let n = out_t.len() / m.max(1);
    let bias_of = |j: usize| bias.map_or(0.0, |b| b.get(j));
    if m == 1 {
        if bias.is_some() {
            out_t
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v += bias_of(j));
        }
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            out[r * n + j] = out_t[j * m + r] + bias_of(j);
        }
    }
    out
}

fn rows_f32(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    rows_at_tier(x, m, k, w, out);
}

/// `x16` holds the bf16 bits of `x [m, k]`.
fn rows_bf16(x16: &[u16], m: usize, k: usize, w: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match active() {
        CpuTier::Avx512Bf16 if k.is_multiple_of(LANES) => {
            // SAFETY: the CPU has the features the function is compiled for, and
            // every row length is a whole number of 32-element vectors.
            unsafe { bf16_dot::rows(x16, m, k, w, out) };
            return;
        }
        CpuTier::Avx2 if m == 1 => {
            let x: Vec<f32> = x16.iter().map(|b| bf16_to_f32(*b)).collect();
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { avx2_bf16::row(&x, k, w, out) };
            return;
        }
        _ => {}
    }
    let x: Vec<f32> = x16.iter().map(|b| bf16_to_f32(*b)).collect();
    rows_at_tier(&x, m, k, w, out);
}

vectorized_fn! {
    /// [`rows`], compiled for the active CPU tier.
    fn rows_at_tier[E: Element](x: &[f32], m: usize, k: usize, w: &[E], out: &mut [f32]) {
        rows(x, m, k, w, out)
    }
}

/// One row `x` against bf16 weight rows on AVX2: eight weights at a time are
/// widened to f32 in a register (zero-extend, shift into the high half),
/// multiplied and added, four accumulators deep. The decode step's path on CPUs
/// without AVX-512.
#[cfg(target_arch = "x86_64")]
mod avx2_bf16 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row(x: &[f32], k: usize, w: &[u16], out: &mut [f32]) {
        for (w_row, dst) in w.chunks_exact(k).zip(out.iter_mut()) {
            *dst = dot(x, w_row);
        }
    }

    #[inline(always)]
    unsafe fn widened(w: &[u16], at: usize) -> __m256 {
        debug_assert!(at + 8 <= w.len());
        let bits = _mm_loadu_si128(w.as_ptr().add(at) as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    }

    #[inline(always)]
    unsafe fn dot(x: &[f32], w: &[u16]) -> f32 {
        let k = w.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let full = k - k % 32;
        for c in (0..full).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = c + 8 * j;
                let product = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(at)), widened(w, at));
                *a = _mm256_add_ps(*a, product);
            }
        }
        // Lane `8j + i` of [`super::dot_rows`] is lane `i` of `acc[j]`; its
        // halving sum is mirrored step by step (and a product is rounded
        // before it is added, as there: no fused multiply-add), so that a row
        // gives the same result alone as among the several rows of a batch.
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), half);
        let mut total = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
        for i in full..k {
            total += x[i] * super::bf16_to_f32(w[i]);
        }
        total
    }
}

/// bf16 pairs multiplied and summed into f32 by AVX512-BF16's `vdpbf16ps`,
/// 32 products per instruction with no conversions.
#[cfg(target_arch = "x86_64")]
mod bf16_dot {
    use std::arch::x86_64::*;

    /// Weight rows ahead of the one being read that are prefetched: with
    /// several rows of `x`, each weight row takes long enough that the
    /// hardware prefetcher alone leaves the loads waiting on memory.
    const PREFETCH_ROWS: usize = 8;

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rows(x16: &[u16], m: usize, k: usize, w: &[u16], out: &mut [f32]) {
        let prefetch = |j: usize| {
            if let Some(ahead) = w.get((j + PREFETCH_ROWS) * k..(j + PREFETCH_ROWS + 1) * k) {
                for line in (0..k).step_by(32) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().add(line) as *const i8);
                }
            }
        };
        if m == 1 {
            // A decode step: memory-bound, each weight row streamed once.
            for (j, (w_row, dst)) in w.chunks_exact(k).zip(out.iter_mut()).enumerate() {
                prefetch(j);
                *dst = dot_row(x16, k, w_row);
            }
            return;
        }
        // Several rows of `x`: two weight rows at a time, so that each load of
        // an `x` row feeds two products (the loads, not the products, limited
        // a prompt's step). An odd last weight row is paired with itself and
        // its second result dropped.
        let n = w.len() / k;
        let mut spare = [0f32; super::MAX_ROWS];
        for j in (0..n).step_by(2) {
            prefetch(j);
            prefetch(j + 1);
            let w_a = &w[j * k..(j + 1) * k];
            let w_b = w.get((j + 1) * k..(j + 2) * k).unwrap_or(w_a);
            let (out_a, mut out_b) = if j + 1 < n {
                let (a, b) = out[j * m..(j + 2) * m].split_at_mut(m);
                (a, Some(b))
            } else {
                (&mut out[j * m..(j + 1) * m], None)
            };
            let mut r = 0;
            while r < m {
                let take = (m - r).min(PAIR_ROWS);
                let xs = &x16[r * k..(r + take) * k];
                let dst_a = &mut out_a[r..r + take];
                let dst_b = match out_b.as_deref_mut() {
                    Some(o) => &mut o[r..r + take],
                    None => &mut spare[..take],
                };
                match take {
                    1 => dot_pair::<1>(xs, k, (w_a, w_b), dst_a, dst_b),
                    2 => dot_pair::<2>(xs, k, (w_a, w_b), dst_a, dst_b),
                    3 => dot_pair::<3>(xs, k, (w_a, w_b), dst_a, dst_b),
                    _ => dot_pair::<4>(xs, k, (w_a, w_b), dst_a, dst_b),
                }
                r += take;
            }
        }
    }

    #[inline(always)]
    unsafe fn load(p: &[u16], at: usize) -> __m512bh {
        debug_assert!(at + 32 <= p.len());
        std::mem::transmute(_mm512_loadu_si512(p.as_ptr().add(at) as *const _))
    }

    /// Rows of `x` that share a pass over a pair of weight rows: four
    /// accumulators each (16 of the 32 registers).
    const PAIR_ROWS: usize = 4;

    /// `dst_a[r] = x_r · w_a`, `dst_b[r] = x_r · w_b` for the `R` rows of `xs`,
    /// each summed exactly as [`dot_row`] sums one row (even and odd chunks
    /// apart, then together), so that a row's result does not depend on how
    /// many rows share the step: a sequence decodes the same alone and in a
    /// server's batch.
    #[inline(always)]
    unsafe fn dot_pair<const R: usize>(
        xs: &[u16],
        k: usize,
        (w_a, w_b): (&[u16], &[u16]),
        dst_a: &mut [f32],
        dst_b: &mut [f32],
    ) {
        // [parity][row]
        let mut acc_a = [[_mm512_setzero_ps(); R]; 2];
        let mut acc_b = [[_mm512_setzero_ps(); R]; 2];
        // Chunk `c` of 32 into the accumulators of parity `p` (a constant at
        // each use, so the arrays stay in registers).
        macro_rules! chunk {
            ($p:literal, $c:expr) => {{
                let c = $c;
                let (a, b) = (load(w_a, c), load(w_b, c));
                for r in 0..R {
                    let x = load(xs, r * k + c);
                    acc_a[$p][r] = _mm512_dpbf16_ps(acc_a[$p][r], x, a);
                    acc_b[$p][r] = _mm512_dpbf16_ps(acc_b[$p][r], x, b);
                }
            }};
        }
        let chunks = k / 32;
        let mut c = 0;
        while c + 1 < chunks {
            chunk!(0, c * 32);
            chunk!(1, c * 32 + 32);
            c += 2;
        }
        if c < chunks {
            chunk!(0, c * 32);
        }
        for r in 0..R {
            dst_a[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc_a[0][r], acc_a[1][r]));
            dst_b[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc_b[0][r], acc_b[1][r]));
        }
    }

    /// `x · w` for one row `x`, over two accumulators that hide the
    /// instruction's latency.
    #[inline(always)]
    unsafe fn dot_row(x: &[u16], k: usize, w: &[u16]) -> f32 {
        let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let chunks = k / 32;
        let mut c = 0;
        while c + 1 < chunks {
            even = _mm512_dpbf16_ps(even, load(x, c * 32), load(w, c * 32));
            odd = _mm512_dpbf16_ps(odd, load(x, c * 32 + 32), load(w, c * 32 + 32));
            c += 2;
        }
        if c < chunks {
            even = _mm512_dpbf16_ps(even, load(x, c * 32), load(w, c * 32));
        }
        _mm512_reduce_add_ps(_mm512_add_ps(even, odd))
    }
}

/// Rows of `x` that share a pass over a weight row: as many as keep their
/// accumulators in registers. `R` rows of [`LANES`] f32 take `2R` of
/// AVX-512's 32 registers but `4R` of AVX2's 16, which spill past three
/// rows (on 2026-12-05, AVX2 batch-8 decoding ran at 98 tokens/s with 8
/// rows a pass, 125 with 4, 185 with 3 and 177 with 2). Rereading a weight
/// row for the next rows hits the L1 cache.
fn rows_per_pass() -> usize {
    #[cfg(target_arch = "x86_64")]
    match active() {
        CpuTier::Avx512 | CpuTier::Avx512Bf16 => return MAX_ROWS,
        CpuTier::Avx2 => return 3,
        CpuTier::Portable => {}
    }
    2
}

/// Dot products of every row of `x [m, k]` with each row of `w [rows, k]`,
/// into `out [rows, m]`.
#[inline(always)]
fn rows<E: Element>(x: &[f32], m: usize, k: usize, w: &[E], out: &mut [f32]) {
    let per_pass = rows_per_pass();
    for (w_row, out_row) in w.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        let mut r = 0;
        while r < m {
            let take = (m - r).min(per_pass);
            let xs = &x[r * k..(r + take) * k];
            let dst = &mut out_row[r..r + take];
            match take {
                1 => dot_rows::<E, 1>(xs, k, w_row, dst),
                2 => dot_rows::<E, 2>(xs, k, w_row, dst),
                3 => dot_rows::<E, 3>(xs, k, w_row, dst),
                4 => dot_rows::<E, 4>(xs, k, w_row, dst),
                5 => dot_rows::<E, 5>(xs, k, w_row, dst),
                6 => dot_rows::<E, 6>(xs, k, w_row, dst),
                7 => dot_rows::<E, 7>(xs, k, w_row, dst),
                _ => dot_rows::<E, 8>(xs, k, w_row, dst),
            }
            r += take;
        }
    }
}

/// `dst[r] = x_r · w` for the `R` rows of `xs [R, k]`.
#[inline(always)]
fn dot_rows<E: Element, const R: usize>(xs: &[f32], k: usize, w: &[E], dst: &mut [f32]) {
    let mut acc = [[0f32; LANES]; R];
    let full = k - k % LANES;
    for base in (0..full).step_by(LANES) {
        let mut wide = [0f32; LANES];
        for (v, e) in wide.iter_mut().zip(&w[base..base + LANES]) {
            *v = e.widen();
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x_r = &xs[r * k + base..r * k + base + LANES];
            for l in 0..LANES {
                acc_r[l] += x_r[l] * wide[l];
            }
        }
    }
    for (r, acc_r) in acc.iter_mut().enumerate() {
        // Halves added pairwise: 5 vector steps, not 31 dependent scalar adds
        // (2–3% faster AVX2 f32 decoding in alternating timed runs).
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                acc_r[l] += acc_r[l + width];
            }
            width /= 2;
        }
        let mut sum = acc_r[0];
        for i in full..k {
            sum += xs[r * k + i] * w[i].widen();
        }
        dst[r] = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's products with `w [n, k]`, computed with all `m` rows at
    /// once and with each row alone, on the active tier.
    fn together_and_alone(x: &[f32], m: usize, w: WeightSlice) -> (Vec<f32>, Vec<f32>) {
        let (k, n) = (x.len() / m, w.len() / (x.len() / m));
        let mut together = vec![0f32; n * m];
        GemvInput::new(x, m, w).rows_into(w, 0..n, &mut together);
        let mut alone = vec![0f32; n * m];
        for r in 0..m {
            let mut one = vec![0f32; n];
            GemvInput::new(&x[r * k..(r + 1) * k], 1, w).rows_into(w, 0..n, &mut one);
            for j in 0..n {
                alone[j * m + r] = one[j];
            }
        }
        (together, alone)
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_and_in_a_batch_on_every_cpu_path() {
        // k = 576 (SmolLM2's width, 18 chunks of 32), 96 (an odd count of
        // chunks) and 70 (a tail).
        for (m, k, n) in [(5, 576, 7), (9, 96, 3), (3, 70, 5)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| (i as f32 * 0.7311).sin() * 3.0)
                .collect();
            let w32: Vec<f32> = (0..n * k)
                .map(|i| (i as f32 * 1.1937).cos() * 0.2)
                .collect();
            let w16: Vec<u16> = w32.iter().map(|v| u16::narrow(*v)).collect();
            for tier in crate::machine::cpu::available() {
                crate::machine::cpu::with_tier(tier, || {
                    for w in [WeightSlice::F32(&w32), WeightSlice::Bf16(&w16)] {
                        let (together, alone) = together_and_alone(&x, m, w);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&together),
                            bits(&alone),
                            "{tier:?} m={m} k={k} {}",
                            w.len()
                        );
                    }
                });
            }
        }
    }
}
