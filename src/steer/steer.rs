//! What every steering intervention provides beyond [`Intervention`]: its
//! learnable tensors, its distance from doing nothing (the minimality term),
//! and its serialised form.

use tch::Tensor;

use super::spec::SteerSpec;
use crate::error::Result;
use crate::hooks::{Hooks, Intervention};
use crate::plots::Grid;

pub trait Steer: Intervention {
    /// Tensors trained by gradient descent (none for fixed interventions).
    fn parameters(&mut self) -> Vec<&mut Tensor> {
        Vec::new()
    }

    /// Scalar `Σ|θ − θ_identity|`, differentiable (minimality).
    fn l1_from_identity(&self) -> Result<Tensor>;

    /// Components touched: parameters with `|θ − θ_identity| > eps`, and how many there are.
    fn components(&self, eps: f64) -> Result<(i64, i64)>;

    /// The JSON spec and the tensors that go beside it.
    fn to_spec(&self) -> Result<(SteerSpec, Vec<(String, Tensor)>)>;

    /// The parameters as a layer × component grid for a heatmap, for kinds
    /// whose parameters are one number per component (activation scaling).
    fn grid(&self, _n_layers: usize) -> Result<Option<Grid>> {
        Ok(None)
    }
}

/// The hooks that apply `steers` in order.
pub fn steer_hooks(steers: &mut [Box<dyn Steer>]) -> Hooks<'_> {
    let mut hooks = Hooks::new();
    for s in steers.iter_mut() {
        hooks.push(s.as_mut());
    }
    hooks
}
