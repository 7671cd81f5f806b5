//! Seeded random tensors from a Rust generator, independent of libtorch's
//! global one (which concurrent tests and threads share), so that a seed
//! gives the same tensor whatever else runs.

use rand::rngs::StdRng;
use rand::Rng;
use tch::Tensor;

/// `[shape]` f32 CPU tensor of normal samples with standard deviation `std`.
pub fn normal(rng: &mut StdRng, shape: &[i64], std: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    // Box–Muller: two uniforms → one standard normal.
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_slice(&values).reshape(shape)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn same_seed_same_tensor_and_plausible_moments() {
        let a = normal(&mut StdRng::seed_from_u64(3), &[4000], 2.0);
        let b = normal(&mut StdRng::seed_from_u64(3), &[4000], 2.0);
        assert!(a.equal(&b));
        let std = a.std(true).double_value(&[]);
        assert!((std - 2.0).abs() < 0.1, "std {std}");
    }
}
