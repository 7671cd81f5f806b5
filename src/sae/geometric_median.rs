//! The geometric median of a set of points (Weiszfeld's iteration), used to
//! initialise `b_dec` as sparsify and SAELens do: a centre that outliers (the
//! huge-norm activations of attention sinks) cannot drag away.

use tch::{Kind, Tensor};

use crate::error::Result;

/// `[d]` geometric median of the rows of `points` `[n, d]`.
pub fn geometric_median(points: &Tensor, max_iterations: usize, tolerance: f64) -> Result<Tensor> {
    let points = points.f_to_kind(Kind::Float)?;
    let mut median = points.f_mean_dim([0i64].as_slice(), false, Kind::Float)?;
    for _ in 0..max_iterations {
        let distances = points
            .f_sub(&median)?
            .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?
            .f_clamp_min(1e-8)?;
        let weights = distances.f_reciprocal()?;
        let next = weights
            .f_unsqueeze(1)?
            .f_mul(&points)?
            .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?
            .f_div(&weights.f_sum(Kind::Float)?)?;
        let moved = next.f_sub(&median)?.f_norm()?.f_double_value(&[])?;
        median = next;
        if moved < tolerance {
            break;
        }
    }
    Ok(median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_a_far_outlier_that_moves_the_mean() {
        // Four corners of a unit square and one point far away.
        let pts = Tensor::from_slice(&[0f32, 0., 1., 0., 0., 1., 1., 1., 100., 100.]).view([5, 2]);
        let median = geometric_median(&pts, 200, 1e-7).unwrap();
        let m: Vec<f32> = Vec::try_from(&median).unwrap();
        assert!(m.iter().all(|v| (0.4..0.9).contains(v)), "median {m:?}");
        let mean: Vec<f32> = Vec::try_from(&pts.mean_dim(0, false, Kind::Float)).unwrap();
        assert!(mean[0] > 20.0);
    }
}
