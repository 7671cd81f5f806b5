//! Learning-rate and sparsity-coefficient schedules over a run of `total`
//! steps: linear LR warm-up, constant, then linear decay to zero over the last
//! `decay_fraction` of the run (Anthropic's April 2024 recipe); the sparsity
//! coefficient ramps up linearly over the first `sparsity_warmup_fraction`.

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub lr: f64,
    pub warmup_steps: u64,
    pub decay_fraction: f64,
    pub sparsity_warmup_fraction: f64,
    pub total_steps: u64,
}

impl Schedule {
    /// Learning rate at `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let mut factor = 1.0;
        if step < self.warmup_steps {
            factor = (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = (self.decay_fraction * self.total_steps as f64).round() as u64;
        let decay_start = self.total_steps.saturating_sub(decay_steps);
        if decay_steps > 0 && step >= decay_start {
            let left = self.total_steps.saturating_sub(step) as f64 / decay_steps as f64;
            factor = factor.min(left);
        }
        self.lr * factor
    }

    /// Fraction of the final sparsity coefficient applied at `step`.
    pub fn sparsity_factor(&self, step: u64) -> f64 {
        let warm = (self.sparsity_warmup_fraction * self.total_steps as f64).round() as u64;
        if warm == 0 {
            1.0
        } else {
            ((step + 1) as f64 / warm as f64).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_holds_then_decays_to_zero() {
        let s = Schedule {
            lr: 1.0,
            warmup_steps: 10,
            decay_fraction: 0.2,
            sparsity_warmup_fraction: 0.05,
            total_steps: 100,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert_eq!(s.lr(50), 1.0);
        assert!((s.lr(90) - 0.5).abs() < 1e-12);
        assert!((s.lr(99) - 0.05).abs() < 1e-12);
        assert!((s.sparsity_factor(0) - 0.2).abs() < 1e-12);
        assert_eq!(s.sparsity_factor(10), 1.0);
    }
}
