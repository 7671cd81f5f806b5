//! `run_with_cache`: one forward pass that records a set of hook points and
//! stops right after the last of them, or runs on to the logits — the
//! TransformerLens call of the same name (`names_filter` is the hook list;
//! stopping early is `stop_at_layer`). Harvesting, streaming, the
//! steering-vector builder, SAE evaluation and labelling all read
//! activations through it.

use std::collections::HashMap;

use tch::Tensor;

use super::transformer::{ForwardInput, LogitsFor, StopAt, Transformer};
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, BlockSite, HookPoint, Hooks};

/// What [`Transformer::run_with_cache`] returns.
pub struct CachedRun {
    /// Logits `[batch, seq or 1, vocab]` when the run went on to them.
    pub logits: Option<Tensor>,
    activations: HashMap<HookPoint, Tensor>,
}

impl CachedRun {
    /// The activation at `hook`, in its hook-point shape (see [`HookPoint`]).
    pub fn take(&mut self, hook: HookPoint) -> Result<Tensor> {
        self.activations.remove(&hook).ok_or_else(|| {
            Error::InvalidArgument(format!("`{hook}` was not among the cached hook points"))
        })
    }

    /// The activation at `hook` as one row per token, `[batch, seq, width]`
    /// (per-head hooks flattened over their heads).
    pub fn take_rows(&mut self, hook: HookPoint) -> Result<Tensor> {
        if matches!(hook, HookPoint::Block(_, BlockSite::AttnPattern)) {
            return Err(Error::InvalidArgument(format!(
                "`{hook}` is [batch, heads, seq, seq], not one row per token"
            )));
        }
        let act = self.take(hook)?;
        let size = act.size();
        Ok(act.f_reshape([size[0], size[1], -1])?)
    }
}

impl Transformer {
    /// Runs `input` without gradients, caching the activations (detached) at
    /// `hooks`. With `logits: None` the pass stops right after the last of
    /// `hooks` in forward order (no later block runs); with `Some(which)` it
    /// runs to the logits.
    pub fn run_with_cache(
        &self,
        input: &ForwardInput,
        hooks: &[HookPoint],
        logits: Option<LogitsFor>,
    ) -> Result<CachedRun> {
        let last = hooks
            .iter()
            .max()
            .copied()
            .ok_or_else(|| Error::InvalidArgument("no hook points to cache".into()))?;
        let stop = match logits {
            Some(which) => StopAt::Logits(which),
            None => StopAt::After(last),
        };
        let mut cache = ActivationCache::new(hooks.iter().copied());
        let logits =
            tch::no_grad(|| self.forward(input, None, &mut Hooks::new().with(&mut cache), stop))?;
        let mut activations = HashMap::with_capacity(hooks.len());
        for &hook in hooks {
            let act = cache.take(hook).ok_or_else(|| {
                Error::InvalidArgument(format!("the forward pass never reached `{hook}`"))
            })?;
            activations.insert(hook, act);
        }
        Ok(CachedRun {
            logits,
            activations,
        })
    }

    /// Each of `hooks`' activations on `tokens [batch, seq]` as
    /// `[batch, seq, width]` rows, in the order of `hooks`; the pass stops
    /// after the last of them.
    pub fn hook_rows(&self, tokens: &Tensor, hooks: &[HookPoint]) -> Result<Vec<Tensor>> {
        let mut run = self.run_with_cache(&ForwardInput::tokens(tokens), hooks, None)?;
        hooks.iter().map(|&hook| run.take_rows(hook)).collect()
    }
}
