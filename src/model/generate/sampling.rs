//! Next-token choice: greedy, or sampling with temperature, top-k and top-p
//! from a seeded generator, done on the CPU so a seed gives the same tokens on
//! every device.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "temperature must be ≥ 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// A seeded sampler.
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sampler {
            config,
            rng: StdRng::seed_from_u64(config.seed),
        })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks a token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<i64> {
        if logits.is_empty() {
            return Err(Error::InvalidArgument("no logits to sample from".into()));
        }
        if logits.iter().any(|x| x.is_nan()) {
            return Err(Error::InvalidArgument("logits contain NaN".into()));
        }
        if self.config.is_greedy() {
            return Ok(argmax(logits));
        }
        let t = self.config.temperature;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.config.top_k > 0 {
            order.truncate(self.config.top_k);
        }
        let top = f64::from(logits[order[0]]);
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - top) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.config.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= self.config.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (rank, p) in probs.iter().enumerate() {
            draw -= p;
            if draw <= 0.0 {
                return Ok(order[rank] as i64);
            }
        }
        Ok(order[probs.len() - 1] as i64)
    }
}

fn argmax(values: &[f32]) -> i64 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_maximum() {
        let mut s = Sampler::new(SamplingConfig::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 7,
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 0.5, 0.4]).unwrap(), 1);
        }
        let logits = [0.0f32, 0.1, 0.2, 0.3, 0.25];
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        };
        let draws = |c| {
            let mut s = Sampler::new(c).unwrap();
            (0..50)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(cfg), draws(cfg));
        assert!(
            draws(cfg)
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 2
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // probabilities ≈ [0.87, 0.12, 0.0...]: top-p 0.5 keeps only the first.
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&[4.0, 2.0, -3.0, -5.0]).unwrap(), 0);
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Sampler::new(SamplingConfig {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        let mut s = Sampler::new(SamplingConfig::default()).unwrap();
        assert!(s.sample(&[f32::NAN, 1.0]).is_err());
    }
}
