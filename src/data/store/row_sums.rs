//! Running f64 sums over activation rows, the raw material of a store's
//! normalisation statistics: the sum of the rows' L2 norms and the `[d]`
//! column sums.
//!
//! Rows are summed one after another, each in a fixed order, on the calling
//! thread. So a shard summed batch by batch, as a harvest writes it, equals
//! the same shard summed at once, bit for bit, and no libtorch reduction (with
//! its thread team and f64 copies of the rows) runs beside a harvest's forwards.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::vectorized_fn;

/// Lanes of a row's sum of squares (a fixed, vectorisable order).
const LANES: usize = 8;

/// The sums over the rows added so far.
#[derive(Debug, Clone)]
pub struct RowSums {
    pub rows: u64,
    /// Sum over rows of each row's L2 norm.
    pub norm_sum: f64,
    /// `[d]` sum over rows.
    pub sum: Vec<f64>,
    /// The rows of the last call as f32, reused from call to call.
    scratch: Vec<f32>,
}

impl RowSums {
    pub fn new(d: usize) -> Self {
        RowSums {
            rows: 0,
            norm_sum: 0.0,
            sum: vec![0.0; d],
            scratch: Vec::new(),
        }
    }

    /// Starts again from zero.
    pub fn clear(&mut self) {
        self.rows = 0;
        self.norm_sum = 0.0;
        self.sum.fill(0.0);
    }

    /// Adds `acts [rows, d]`, a float tensor (f32, bf16 and f16 widen to f32 exactly).
    pub fn add(&mut self, acts: &Tensor) -> Result<()> {
        let d = self.sum.len();
        let rows = match acts.size().as_slice() {
            [rows, width] if *width as usize == d => *rows as usize,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "activation rows {other:?}, expected [rows, {d}]"
                )))
            }
        };
        let acts = acts
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        self.scratch.resize(rows * d, 0.0);
        acts.f_copy_data(&mut self.scratch, rows * d)?;
        add_rows(&self.scratch[..rows * d], &mut self.sum, &mut self.norm_sum);
        self.rows += rows as u64;
        Ok(())
    }
}

vectorized_fn! {
    /// Adds each row of `rows [.., d]` (d = `sum.len()`) to `sum` and its L2
    /// norm to `norm_sum`, in a fixed order whatever the CPU tier.
    fn add_rows[](rows: &[f32], sum: &mut [f64], norm_sum: &mut f64) {
        for row in rows.chunks_exact(sum.len().max(1)) {
            let mut squares = [0f64; LANES];
            let chunks = row.chunks_exact(LANES);
            let tail: f64 = chunks
                .remainder()
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum();
            for chunk in chunks {
                for (s, &v) in squares.iter_mut().zip(chunk) {
                    *s += f64::from(v) * f64::from(v);
                }
            }
            *norm_sum += (squares.iter().sum::<f64>() + tail).sqrt();
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_f64_reference_and_batching_changes_nothing() {
        tch::manual_seed(5);
        let d = 37;
        let acts = Tensor::randn([50, d], (Kind::Float, Device::Cpu)) * 30.0;
        let x = acts.to_kind(Kind::Double);
        let norms = x
            .square()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
        let norm_sum = norms.sqrt().sum(Kind::Double).double_value(&[]);
        let sum = Vec::<f64>::try_from(x.sum_dim_intlist([0i64].as_slice(), false, Kind::Double))
            .unwrap();

        let mut whole = RowSums::new(d as usize);
        whole.add(&acts).unwrap();
        assert_eq!(whole.rows, 50);
        assert!((whole.norm_sum - norm_sum).abs() < 1e-9 * norm_sum);
        for (a, b) in whole.sum.iter().zip(&sum) {
            assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let mut parts = RowSums::new(d as usize);
        for (at, n) in [(0, 7), (7, 1), (8, 42)] {
            parts.add(&acts.narrow(0, at, n)).unwrap();
        }
        let fields = |s: &RowSums| (s.rows, s.norm_sum, s.sum.clone());
        assert_eq!(fields(&whole), fields(&parts));
        // bf16 rows are the same values as their f32 widening.
        let (mut a, mut b) = (RowSums::new(d as usize), RowSums::new(d as usize));
        a.add(&acts.to_kind(Kind::BFloat16)).unwrap();
        b.add(&acts.to_kind(Kind::BFloat16).to_kind(Kind::Float))
            .unwrap();
        assert_eq!(fields(&a), fields(&b));
        assert!(a
            .add(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)))
            .is_err());
        // Every CPU tier sums in the same order: the portable path's bits.
        use crate::machine::cpu::{available, with_tier, CpuTier};
        let summed = || {
            let mut s = RowSums::new(d as usize);
            s.add(&acts).unwrap();
            fields(&s)
        };
        let portable = with_tier(CpuTier::Portable, summed);
        for tier in available() {
            assert_eq!(with_tier(tier, summed), portable, "{tier}");
        }
    }
}
