//! The intervention trait that the forward pass calls at each hook point, and
//! the [`Hooks`] set that composes several of them in order.

use tch::Tensor;

use super::names::{BlockSite, HookPoint};
use super::row_edit::{BlockEdits, RowEdit};
use crate::error::{Error, Result};

/// Where in the sequence a forward call is, for interventions that care about
/// positions (e.g. only the last prompt token, or every generated token).
pub struct HookContext<'a> {
    /// Absolute position of the first token of this call: 0 on a prompt, the
    /// cache length on a decode step.
    pub position_offset: i64,
    /// `[batch or 1, seq]` absolute positions of this call's tokens (left
    /// padding makes them differ between rows).
    pub positions: &'a Tensor,
    /// True on the single-token steps of generation after the prompt.
    pub decode_step: bool,
    /// The model's dtype (interventions that compute on the host may match
    /// their precision to it).
    pub model_kind: tch::Kind,
}

/// Something that reads, and may replace, the activation at hook points.
///
/// Implementations must keep the computation differentiable when they create
/// tensors from learned parameters: the forward pass does not detach.
pub trait Intervention {
    /// Whether this intervention wants to see `hook`. The forward pass uses
    /// this to skip work and to find where it may stop.
    fn wants(&self, hook: HookPoint) -> bool;

    /// Called with the activation at `hook` (shape documented on [`HookPoint`]).
    /// Return `Some(t)` to replace it (same shape), `None` to leave it.
    fn apply(
        &mut self,
        hook: HookPoint,
        activation: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>>;

    /// What [`apply`](Self::apply) does at `hook` as edits of every row, for
    /// the fused decode step; `None` (the default) keeps the libtorch path.
    /// Only asked for sites this intervention wants, on steps without
    /// gradients.
    fn row_edits(&mut self, _hook: HookPoint, _ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        Ok(None)
    }
}

/// A boxed intervention is one (steers come boxed from their files).
impl<T: Intervention + ?Sized> Intervention for Box<T> {
    fn wants(&self, hook: HookPoint) -> bool {
        (**self).wants(hook)
    }

    fn apply(
        &mut self,
        hook: HookPoint,
        act: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        (**self).apply(hook, act, ctx)
    }

    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        (**self).row_edits(hook, ctx)
    }
}

/// An intervention from a closure, for quick experiments and tests.
pub struct FnIntervention<F> {
    hooks: Vec<HookPoint>,
    f: F,
}

impl<F> FnIntervention<F>
where
    F: FnMut(HookPoint, &Tensor, &HookContext) -> Result<Option<Tensor>>,
{
    pub fn new(hooks: Vec<HookPoint>, f: F) -> Self {
        FnIntervention { hooks, f }
    }
}

impl<F> Intervention for FnIntervention<F>
where
    F: FnMut(HookPoint, &Tensor, &HookContext) -> Result<Option<Tensor>>,
{
    fn wants(&self, hook: HookPoint) -> bool {
        self.hooks.contains(&hook)
    }

    fn apply(
        &mut self,
        hook: HookPoint,
        act: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        (self.f)(hook, act, ctx)
    }
}

/// An intervention on some sequences of the batch only, the others left
/// alone: how one batched forward (a decode step of several requests, say)
/// carries different interventions per sequence, or none.
pub struct ForSequences<I> {
    /// One flag per sequence of the batch.
    pub sequences: Vec<bool>,
    pub inner: I,
}

impl<I: Intervention> Intervention for ForSequences<I> {
    fn wants(&self, hook: HookPoint) -> bool {
        self.inner.wants(hook)
    }

    fn apply(
        &mut self,
        hook: HookPoint,
        act: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        let Some(changed) = self.inner.apply(hook, act, ctx)? else {
            return Ok(None);
        };
        let batch = act.size().first().copied().unwrap_or(0);
        if batch != self.sequences.len() as i64 {
            return Err(Error::Intervention {
                hook: hook.to_string(),
                reason: format!(
                    "flags for {} sequences, the batch holds {batch}",
                    self.sequences.len()
                ),
            });
        }
        let mut shape = vec![1i64; act.dim()];
        shape[0] = batch;
        let flags: Vec<i64> = self.sequences.iter().map(|&f| i64::from(f)).collect();
        let mask = Tensor::from_slice(&flags)
            .f_view(shape.as_slice())?
            .f_to_device(act.device())?
            .f_ne(0)?;
        Ok(Some(changed.f_where_self(&mask, act)?))
    }

    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        let sequences = &self.sequences;
        Ok(self.inner.row_edits(hook, ctx)?.map(|edits| {
            edits
                .into_iter()
                .map(|edit| RowEdit::ForSequences {
                    sequences: sequences.clone(),
                    edit: Box::new(edit),
                })
                .collect()
        }))
    }
}

/// The interventions active during one forward pass, applied in order: each
/// sees the tensor as the previous one left it.
#[derive(Default)]
pub struct Hooks<'a> {
    interventions: Vec<&'a mut dyn Intervention>,
}

impl<'a> Hooks<'a> {
    pub fn new() -> Self {
        Hooks {
            interventions: Vec::new(),
        }
    }

    /// Adds an intervention after those already present.
    pub fn with(mut self, intervention: &'a mut dyn Intervention) -> Self {
        self.interventions.push(intervention);
        self
    }

    pub fn push(&mut self, intervention: &'a mut dyn Intervention) {
        self.interventions.push(intervention);
    }

    pub fn is_empty(&self) -> bool {
        self.interventions.is_empty()
    }

    /// Whether any intervention wants `hook`.
    pub fn wants(&self, hook: HookPoint) -> bool {
        self.interventions.iter().any(|i| i.wants(hook))
    }

    /// The last hook point, in forward order, that any intervention wants.
    pub fn last_wanted(&self, n_layers: usize) -> Option<HookPoint> {
        HookPoint::all(n_layers)
            .into_iter()
            .rev()
            .find(|h| self.wants(*h))
    }

    /// The edits of block `layer` for the fused decode step, when every
    /// intervention that wants a site of the block can give them; `None`
    /// sends the block through libtorch.
    /// Edits that do not fit a step of `batch` sequences with rows of
    /// `widths` (`d_model`, and `n_heads · d_head` at `attn.hook_z`) also go
    /// to libtorch, which reports the mismatch.
    pub fn block_edits(
        &mut self,
        layer: usize,
        (widths, batch): ((usize, usize), usize),
        ctx: &HookContext,
    ) -> Result<Option<BlockEdits>> {
        let others = BlockSite::all()
            .filter(|s| !crate::hooks::row_edit::FUSED_SITES.contains(s))
            .any(|s| self.wants(HookPoint::Block(layer, s)));
        if others {
            return Ok(None);
        }
        let mut edits = BlockEdits::default();
        for (slot, hook) in edits.sites.iter_mut().zip(BlockEdits::hooks(layer)) {
            for intervention in self.interventions.iter_mut() {
                if !intervention.wants(hook) {
                    continue;
                }
                match intervention.row_edits(hook, ctx)? {
                    Some(list) => slot.extend(list),
                    None => return Ok(None),
                }
            }
        }
        Ok(edits.fit(widths, batch).then_some(edits))
    }

    /// Runs every interested intervention on `x` and returns the final tensor.
    pub fn run(&mut self, hook: HookPoint, x: Tensor, ctx: &HookContext) -> Result<Tensor> {
        let mut current = x;
        for intervention in self.interventions.iter_mut() {
            if !intervention.wants(hook) {
                continue;
            }
            if let Some(replacement) = intervention.apply(hook, &current, ctx)? {
                if replacement.size() != current.size() {
                    return Err(Error::Intervention {
                        hook: hook.to_string(),
                        reason: format!(
                            "replacement has shape {:?}, the activation has {:?}",
                            replacement.size(),
                            current.size()
                        ),
                    });
                }
                current = replacement;
            }
        }
        Ok(current)
    }
}
