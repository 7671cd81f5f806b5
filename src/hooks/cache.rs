//! Caching activations: an intervention that records and never replaces.

use std::collections::HashMap;

use tch::Tensor;

use super::intervention::{HookContext, Intervention};
use super::names::HookPoint;
use crate::error::Result;

/// Records the activation at each wanted hook point. On repeated calls (decode
/// steps of generation) the newest call's tensor replaces the older one,
/// unless `accumulate` is set, in which case calls are concatenated along the
/// sequence dimension (dim 1 of `[batch, seq, ...]` hooks). Attention patterns
/// cannot accumulate across decode steps (their key length grows): that is an
/// error.
pub struct ActivationCache {
    wanted: Vec<HookPoint>,
    accumulate: bool,
    detach: bool,
    store: HashMap<HookPoint, Tensor>,
}

impl ActivationCache {
    /// A cache of `hooks`. Cached tensors are detached from the autograd graph.
    pub fn new(hooks: impl IntoIterator<Item = HookPoint>) -> Self {
        ActivationCache {
            wanted: hooks.into_iter().collect(),
            accumulate: false,
            detach: true,
            store: HashMap::new(),
        }
    }

    /// Concatenates successive calls along the sequence dimension.
    pub fn accumulating(mut self) -> Self {
        self.accumulate = true;
        self
    }

    /// Keeps cached tensors attached to the autograd graph.
    pub fn with_grad(mut self) -> Self {
        self.detach = false;
        self
    }

    pub fn get(&self, hook: HookPoint) -> Option<&Tensor> {
        self.store.get(&hook)
    }

    pub fn take(&mut self, hook: HookPoint) -> Option<Tensor> {
        self.store.remove(&hook)
    }

    pub fn clear(&mut self) {
        self.store.clear();
    }
}

impl Intervention for ActivationCache {
    fn wants(&self, hook: HookPoint) -> bool {
        self.wanted.contains(&hook)
    }

    fn apply(&mut self, hook: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let value = if self.detach {
            act.detach()
        } else {
            act.shallow_clone()
        };
        let seq_dim = if matches!(
            hook,
            HookPoint::Block(_, super::names::BlockSite::AttnPattern)
        ) {
            2
        } else {
            1
        };
        let merged = match (self.accumulate, self.store.remove(&hook)) {
            (true, Some(previous)) => Tensor::f_cat(&[previous, value], seq_dim)?,
            _ => value,
        };
        self.store.insert(hook, merged);
        Ok(None)
    }
}
