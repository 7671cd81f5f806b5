//! Splicing an SAE into a forward pass: the activation at its hook point is
//! replaced by the SAE's reconstruction, and the input and feature
//! activations can be kept for metrics.

use tch::{Kind, Tensor};

use super::autoencoder::Sae;
use crate::error::Result;
use crate::hooks::{HookContext, HookPoint, Intervention};

/// Replaces the activation at `hook` with `sae`'s reconstruction.
pub struct SaeSplice<'a> {
    sae: &'a Sae,
    hook: HookPoint,
    /// Leading positions left untouched (1 keeps the BOS position, whose
    /// huge-norm activation SAEs are not trained on).
    skip_positions: i64,
    record: bool,
    /// `[batch, seq - skip, d_in]` input and `[batch, seq - skip, d_sae]`
    /// feature activations of the last call, when recording.
    pub recorded: Option<(Tensor, Tensor)>,
}

impl<'a> SaeSplice<'a> {
    pub fn new(sae: &'a Sae, hook: HookPoint, skip_positions: usize) -> Self {
        SaeSplice {
            sae,
            hook,
            skip_positions: skip_positions as i64,
            record: false,
            recorded: None,
        }
    }

    /// Also keep the input and feature activations of each call.
    pub fn recording(mut self) -> Self {
        self.record = true;
        self
    }
}

impl Intervention for SaeSplice<'_> {
    fn wants(&self, hook: HookPoint) -> bool {
        hook == self.hook
    }

    /// `activation` is `[batch, seq, d_in]`.
    fn apply(
        &mut self,
        _hook: HookPoint,
        activation: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        // On decode steps every position is past the skipped prefix.
        let skip = if ctx.position_offset > 0 {
            0
        } else {
            self.skip_positions.min(activation.size()[1])
        };
        let seq = activation.size()[1];
        let kept = activation.f_narrow(1, skip, seq - skip)?;
        let (acts, recon) = self.sae.forward(&kept)?;
        let recon = recon
            .f_to_device(activation.device())?
            .f_to_kind(activation.kind())?;
        if self.record {
            self.recorded = Some((kept.f_to_kind(Kind::Float)?, acts));
        }
        let out = if skip > 0 {
            Tensor::f_cat(&[activation.f_narrow(1, 0, skip)?, recon], 1)?
        } else {
            recon
        };
        Ok(Some(out))
    }
}
