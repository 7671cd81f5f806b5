//! The bridge between the libtorch forward and the fused CPU decode step
//! (`model::cpu::decode_step`): the residual as host rows while consecutive
//! blocks without hooks run fused, and the weights as the step reads them.

use super::Transformer;
use crate::error::{Error, Result};
use crate::hooks::BlockEdits;
use crate::model::cpu::decode_step::{self, DecodeStep, HostCache, HostModel};
use crate::model::cpu::team;
use crate::model::kv_cache::KvCache;
use tch::Tensor;

/// The residual stream between blocks: a tensor, or host rows while
/// consecutive blocks run the fused decode step.
pub(super) enum Residual {
    Tensor(Tensor),
    /// `[batch·seq, d_model]` f32 rows holding values of the model's dtype.
    Host(Vec<f32>),
}

impl Transformer {
    /// The weights as host slices for the fused decode step, taken once:
    /// borrowing ~300 tensors' storage costs a tenth of a millisecond per
    /// step otherwise.
    fn host_model(&self) -> Result<&HostModel<'_>> {
        self.host_model
            .get_or_init(|| {
                let model = HostModel::new(&self.weights).ok()?;
                // SAFETY: the slices point into the storage of tensors that
                // `self.weights` owns for the model's whole life and that no
                // method replaces or resizes; the result is only handed out
                // borrowed for as long as `self`.
                Some(unsafe { std::mem::transmute::<HostModel<'_>, HostModel<'static>>(model) })
            })
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "the fused decode step needs contiguous f32 or bf16 CPU weights".into(),
                )
            })
    }

    /// Runs `layers` through the fused decode step, then the final norm and
    /// unembedding when `with_logits`: `(rows, logits)`. Every thread of
    /// libtorch's team runs the whole run as one [`team`].
    pub(super) fn fused_blocks(
        &self,
        step: &DecodeStep,
        cache: &KvCache,
        first_layer: usize,
        edits: &[BlockEdits],
        rows: Vec<f32>,
        with_logits: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let host = self.host_model()?;
        let mut blocks = Vec::with_capacity(edits.len());
        for (layer, block_edits) in (first_layer..).zip(edits) {
            blocks.push((
                &host.blocks[layer],
                HostCache::new(cache, layer, step.seq())?,
                block_edits,
            ));
        }
        let head = with_logits.then_some((&host.ln_final, host.unembed));
        let cfg = &self.cfg;
        // Scratch for the widest product: the unembedding, a block's, or an
        // intervention's (an SAE's encoder).
        let widest = self
            .cfg
            .vocab_size
            .max(self.cfg.qkv_rows())
            .max(2 * self.cfg.d_mlp)
            .max(
                edits
                    .iter()
                    .map(BlockEdits::product_width)
                    .max()
                    .unwrap_or(0) as i64,
            );
        let start = rows;
        let (rows, logits) = team::run(widest as usize * step.rows(), |team| {
            let mut rows = start.clone();
            for (block, layer_cache, block_edits) in &blocks {
                step.block(team, cfg, block, layer_cache, &mut rows, block_edits);
            }
            let logits = head
                .as_ref()
                .map(|(norm, unembed)| step.logits(team, cfg, norm, *unembed, &rows));
            (rows, logits)
        })
        .ok_or_else(|| Error::InvalidArgument("the fused step's team returned nothing".into()))?;
        Ok((rows, logits))
    }

    pub(super) fn host_rows(&self, resid: Residual) -> Result<Vec<f32>> {
        match resid {
            Residual::Host(rows) => Ok(rows),
            Residual::Tensor(t) => decode_step::host_f32(&t),
        }
    }

    /// The residual as a `[batch, seq, d_model]` tensor.
    pub(super) fn tensor_of(&self, resid: Residual, (batch, seq): (i64, i64)) -> Result<Tensor> {
        match resid {
            Residual::Tensor(t) => Ok(t),
            Residual::Host(rows) => {
                Ok(
                    decode_step::host_to_tensor(&rows, [batch, seq, self.cfg.d_model], self.kind)?
                        .to_device(self.device),
                )
            }
        }
    }
}
