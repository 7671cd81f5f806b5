//! Reconstruction and sparsity metrics of an SAE over many batches,
//! accumulated in f64 so any number of rows can be streamed through:
//! FVU (and explained variance), MSE, L0, cosine similarity, and per-latent
//! firing frequencies (for the dead and dense fractions and the histogram).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Latents firing on more than this fraction of tokens count as dense.
pub const DENSE_THRESHOLD: f64 = 0.1;

/// Running sums over the rows seen so far.
pub struct ReconstructionStats {
    rows: u64,
    d: usize,
    sum_sq_err: f64,
    sum_sq_x: f64,
    /// `[d]` f64 Σx.
    sum_x: Tensor,
    sum_l0: f64,
    sum_cos: f64,
    /// `[d_sae]` f64 rows each latent fired on.
    fire_counts: Tensor,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReconstructionMetrics {
    pub tokens: u64,
    /// Σ‖x − x̂‖² / Σ‖x − mean(x)‖².
    pub fvu: f64,
    pub explained_variance: f64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Mean active latents per token.
    pub l0: f64,
    /// Mean over tokens of cos(x, x̂).
    pub cosine_similarity: f64,
    /// Latents that never fired on these tokens.
    pub dead_fraction: f64,
    /// Latents firing on more than 10% of tokens.
    pub dense_fraction: f64,
    /// Per latent, the fraction of tokens it fired on.
    pub densities: Vec<f64>,
}

impl ReconstructionStats {
    pub fn new(d: usize, d_sae: usize) -> Self {
        ReconstructionStats {
            rows: 0,
            d,
            sum_sq_err: 0.0,
            sum_sq_x: 0.0,
            sum_x: Tensor::zeros([d as i64], (Kind::Double, tch::Device::Cpu)),
            sum_l0: 0.0,
            sum_cos: 0.0,
            fire_counts: Tensor::zeros([d_sae as i64], (Kind::Double, tch::Device::Cpu)),
        }
    }

    /// Adds rows `x` `[n, d]` with their feature activations `[n, d_sae]` and
    /// reconstructions `[n, d]` (any device).
    pub fn add(&mut self, x: &Tensor, acts: &Tensor, recon: &Tensor) -> Result<()> {
        let x = x.f_to_kind(Kind::Double)?;
        let recon = recon.f_to_kind(Kind::Double)?.f_to_device(x.device())?;
        if x.size() != recon.size() || x.size().get(1) != Some(&(self.d as i64)) {
            return Err(Error::ShapeMismatch {
                name: "reconstruction".into(),
                expected: x.size(),
                got: recon.size(),
            });
        }
        let cpu = |t: Tensor| t.f_to_device(tch::Device::Cpu);
        self.rows += x.size()[0] as u64;
        self.sum_sq_err += recon
            .f_sub(&x)?
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        self.sum_sq_x += x.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        self.sum_x = self.sum_x.f_add(&cpu(x.f_sum_dim_intlist(
            [0i64].as_slice(),
            false,
            Kind::Double,
        )?)?)?;
        let cos = Tensor::f_cosine_similarity(&x, &recon, 1, 1e-8)?;
        self.sum_cos += cos.f_sum(Kind::Double)?.f_double_value(&[])?;
        let active = acts.f_gt(0.0)?;
        self.sum_l0 += active.f_sum(Kind::Double)?.f_double_value(&[])?;
        self.fire_counts = self.fire_counts.f_add(&cpu(active.f_sum_dim_intlist(
            [0i64].as_slice(),
            false,
            Kind::Double,
        )?)?)?;
        Ok(())
    }

    pub fn finish(&self) -> Result<ReconstructionMetrics> {
        if self.rows == 0 {
            return Err(Error::InvalidArgument("no rows to evaluate".into()));
        }
        let n = self.rows as f64;
        let mean_sq_norm = self
            .sum_x
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?
            / n;
        let total_variance = (self.sum_sq_x - mean_sq_norm).max(1e-30);
        let fvu = self.sum_sq_err / total_variance;
        let densities: Vec<f64> = Vec::<f64>::try_from(&self.fire_counts.f_div_scalar(n)?)?;
        let d_sae = densities.len().max(1) as f64;
        Ok(ReconstructionMetrics {
            tokens: self.rows,
            fvu,
            explained_variance: 1.0 - fvu,
            mse: self.sum_sq_err / (n * self.d as f64),
            l0: self.sum_l0 / n,
            cosine_similarity: self.sum_cos / n,
            dead_fraction: densities.iter().filter(|&&f| f == 0.0).count() as f64 / d_sae,
            dense_fraction: densities.iter().filter(|&&f| f > DENSE_THRESHOLD).count() as f64
                / d_sae,
            densities,
        })
    }
}

/// Reconstruction metrics of `sae` on rows `x` `[n, d_in]`, in chunks.
pub fn evaluate_rows(
    sae: &crate::sae::Sae,
    x: &Tensor,
    chunk: i64,
) -> Result<ReconstructionMetrics> {
    let mut stats = ReconstructionStats::new(sae.cfg.d_in, sae.cfg.d_sae);
    let n = x.size()[0];
    let mut start = 0;
    tch::no_grad(|| -> Result<()> {
        while start < n {
            let len = chunk.min(n - start);
            let rows = x.f_narrow(0, start, len)?.f_to_device(sae.device())?;
            let (acts, recon) = sae.forward(&rows)?;
            stats.add(&rows, &acts, &recon)?;
            start += len;
        }
        Ok(())
    })?;
    stats.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fvu_is_unexplained_over_total_variance_across_batches() {
        // Rows (1,0), (3,0) split in two batches; mean (2,0), total variance 2.
        // Reconstructions (1,1), (3,0): error 1 → FVU 0.5.
        let mut s = ReconstructionStats::new(2, 2);
        let t = |v: &[f32]| Tensor::from_slice(v).view([1, -1]);
        s.add(&t(&[1., 0.]), &t(&[1., 0.]), &t(&[1., 1.])).unwrap();
        s.add(&t(&[3., 0.]), &t(&[0., 0.]), &t(&[3., 0.])).unwrap();
        let m = s.finish().unwrap();
        assert!((m.fvu - 0.5).abs() < 1e-12);
        assert!((m.l0 - 0.5).abs() < 1e-12);
        assert_eq!(m.densities, vec![0.5, 0.0]);
        assert_eq!(m.dead_fraction, 0.5);
        assert_eq!(m.dense_fraction, 0.5);
        let cos = (1.0 / 2f64.sqrt() + 1.0) / 2.0;
        assert!((m.cosine_similarity - cos).abs() < 1e-12);
    }
}
