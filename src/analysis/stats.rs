//! The statistics the analyses report: Pearson, Spearman and Kendall's τ-b
//! correlations, upper triangles of square matrices, a permutation test over
//! the items of a matrix (Mantel), and a paired sign-flip test. Written here
//! because they are a few dozen lines each and the test data is ours; they
//! are checked against scipy (`tests/fixtures/rsa/reference.json`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};

/// A rank correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RankCorrelation {
    Spearman,
    /// Kendall's τ-b (ties in either variable corrected), O(m²) in the
    /// number of pairs m.
    Kendall,
}

impl RankCorrelation {
    pub fn of(self, x: &[f64], y: &[f64]) -> f64 {
        match self {
            RankCorrelation::Spearman => spearman(x, y),
            RankCorrelation::Kendall => kendall_tau_b(x, y),
        }
    }
}

/// Pearson's r; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks from 1, ties given their average rank (as scipy's `rankdata`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Kendall's τ-b over all pairs.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (mut concordant, mut discordant, mut tie_x, mut tie_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i] - x[j];
            let dy = y[i] - y[j];
            match (dx == 0.0, dy == 0.0) {
                (true, true) => {}
                (true, false) => tie_x += 1,
                (false, true) => tie_y += 1,
                (false, false) if (dx > 0.0) == (dy > 0.0) => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let untied_x = (concordant + discordant + tie_y) as f64;
    let untied_y = (concordant + discordant + tie_x) as f64;
    if untied_x == 0.0 || untied_y == 0.0 {
        0.0
    } else {
        (concordant - discordant) as f64 / (untied_x * untied_y).sqrt()
    }
}

/// The entries above the diagonal of square `m`, row by row.
pub fn upper_triangle(m: &[Vec<f64>]) -> Vec<f64> {
    let n = m.len();
    let mut out = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for (i, row) in m.iter().enumerate() {
        out.extend_from_slice(&row[i + 1..]);
    }
    out
}

/// The observed correlation of `rdm` with `hypothesis` (upper triangles)
/// and its permutation p-value: the items (rows and columns together) of
/// the hypothesis are shuffled `permutations` times with `seed`;
/// `p = (1 + #{r_perm ≥ r}) / (1 + permutations)`, one-sided.
pub fn mantel(
    rdm: &[Vec<f64>],
    hypothesis: &[Vec<f64>],
    how: RankCorrelation,
    permutations: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let n = rdm.len();
    let square = |m: &[Vec<f64>]| m.iter().all(|row| row.len() == m.len());
    if hypothesis.len() != n || !square(rdm) || !square(hypothesis) {
        return Err(Error::InvalidArgument(format!(
            "the RDM is {n}×{n} but the hypothesis is {}×{} (both must be square, one row per prompt)",
            hypothesis.len(),
            hypothesis.first().map_or(0, Vec::len)
        )));
    }
    if n < 3 {
        return Err(Error::InvalidArgument(
            "RSA needs at least 3 prompts".into(),
        ));
    }
    let x = upper_triangle(rdm);
    let observed = how.of(&x, &upper_triangle(hypothesis));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut at_least = 0usize;
    let mut permuted = Vec::with_capacity(x.len());
    for _ in 0..permutations {
        order.shuffle(&mut rng);
        permuted.clear();
        for i in 0..n {
            for j in i + 1..n {
                permuted.push(hypothesis[order[i]][order[j]]);
            }
        }
        if how.of(&x, &permuted) >= observed - 1e-12 {
            at_least += 1;
        }
    }
    Ok((observed, (1 + at_least) as f64 / (1 + permutations) as f64))
}

/// A paired comparison of `after − before` per item.
#[derive(Debug, Clone, Serialize)]
pub struct PairedTest {
    pub n: usize,
    pub mean_difference: f64,
    /// Student's t of the differences (`mean / (sd / √n)`).
    pub t: f64,
    /// Two-sided sign-flip permutation p-value of the mean difference.
    pub p: f64,
}

/// The paired test of `after[i] − before[i]` with `permutations` random
/// sign flips drawn with `seed`.
pub fn paired_test(
    before: &[f64],
    after: &[f64],
    permutations: usize,
    seed: u64,
) -> Result<PairedTest> {
    if before.len() != after.len() || before.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "a paired test needs two equal lists of at least 2 items (got {} and {})",
            before.len(),
            after.len()
        )));
    }
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let t = if var > 0.0 {
        mean / (var / n).sqrt()
    } else {
        0.0
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut extreme = 0usize;
    for _ in 0..permutations {
        let flipped: f64 = d
            .iter()
            .map(|x| if rng.random::<bool>() { *x } else { -*x })
            .sum::<f64>()
            / n;
        if flipped.abs() >= mean.abs() - 1e-12 {
            extreme += 1;
        }
    }
    Ok(PairedTest {
        n: d.len(),
        mean_difference: mean,
        t,
        p: (1 + extreme) as f64 / (1 + permutations) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random symmetric `n × n` matrix with a zero diagonal.
    #[allow(clippy::needless_range_loop)] // filling both triangles at once
    fn random_symmetric(n: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
        let mut m = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let v: f64 = rng.random();
                m[i][j] = v;
                m[j][i] = v;
            }
        }
        m
    }

    #[test]
    fn ties_get_average_ranks_and_identical_data_correlate_perfectly() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        let x = [0.3, 0.1, 0.9, 0.4, 0.4];
        assert!((spearman(&x, &x) - 1.0).abs() < 1e-12);
        assert!((kendall_tau_b(&x, &x) - 1.0).abs() < 1e-12);
        let reversed: Vec<f64> = x.iter().map(|v| -v).collect();
        assert!((spearman(&x, &reversed) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_hypothesis_against_itself_sits_at_the_permutation_floor() {
        let labels = [0, 0, 1, 1, 2, 2, 0, 1];
        let h: Vec<Vec<f64>> = labels
            .iter()
            .map(|a| labels.iter().map(|b| f64::from(a != b)).collect())
            .collect();
        let (rho, p) = mantel(&h, &h, RankCorrelation::Spearman, 199, 1).unwrap();
        assert!((rho - 1.0).abs() < 1e-12);
        // Only permutations that map each class onto a class of the same size
        // tie with the observed ρ; they are a few in 8!.
        assert!(p < 0.05, "{p}");
        // With all dissimilarities distinct only the identity ties: p is the floor.
        let d = random_symmetric(8, &mut StdRng::seed_from_u64(5));
        for how in [RankCorrelation::Spearman, RankCorrelation::Kendall] {
            let (rho, p) = mantel(&d, &d, how, 199, 2).unwrap();
            assert!((rho - 1.0).abs() < 1e-12);
            assert_eq!(p, 1.0 / 200.0);
        }
    }

    #[test]
    fn permutation_p_values_are_roughly_uniform_under_the_null() {
        // Random RDMs against a fixed random hypothesis: about 10% of the
        // p-values fall below 0.1, about half below 0.5.
        let mut rng = StdRng::seed_from_u64(7);
        let h = random_symmetric(10, &mut rng);
        let ps: Vec<f64> = (0..200)
            .map(|s| {
                let rdm = random_symmetric(10, &mut rng);
                mantel(&rdm, &h, RankCorrelation::Spearman, 99, s)
                    .unwrap()
                    .1
            })
            .collect();
        let below = |t: f64| ps.iter().filter(|&&p| p < t).count() as f64 / ps.len() as f64;
        assert!((0.03..0.2).contains(&below(0.1)), "{}", below(0.1));
        assert!((0.35..0.65).contains(&below(0.5)), "{}", below(0.5));
    }

    #[test]
    fn paired_differences_are_tested_by_sign_flips() {
        let before = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let after: Vec<f64> = before.iter().map(|b| b + 1.0 + 0.01 * b).collect();
        let t = paired_test(&before, &after, 999, 3).unwrap();
        assert!(t.mean_difference > 1.0 && t.p < 0.01, "{t:?}");
        let same = paired_test(&before, &before, 999, 3).unwrap();
        assert_eq!(same.mean_difference, 0.0);
        assert!(same.p > 0.99, "{same:?}");
        assert!(paired_test(&before, &after[..3], 9, 0).is_err());
    }
}
