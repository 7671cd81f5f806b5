//! Activations straight from the model, no disk: packed windows run through
//! the model batch by batch and served in corpus order, through the same
//! [`ActivationSource`] trait as a store reader.

use tch::{Kind, Tensor};

use super::corpus::Corpus;
use super::harvest::{forward_hooks, hook_width};
use super::packing::{PackConfig, Packer};
use super::source::{ActivationBatch, ActivationSource};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::model::LoadedModel;

/// Runs the model on a corpus and serves one hook's rows.
pub struct StreamingSource<'a> {
    model: &'a LoadedModel,
    packer: Packer<'a>,
    hook: HookPoint,
    windows_per_batch: usize,
    skip: usize,
    with_tokens: bool,
    d: usize,
}

impl<'a> StreamingSource<'a> {
    /// Batches of `windows_per_batch` windows of `context` tokens, i.e.
    /// `windows_per_batch * (context - skipped BOS)` rows each.
    pub fn new(
        model: &'a LoadedModel,
        corpus: &Corpus,
        hook: HookPoint,
        context: usize,
        windows_per_batch: usize,
        skip_bos: bool,
        with_tokens: bool,
    ) -> Result<Self> {
        if windows_per_batch == 0 {
            return Err(Error::InvalidArgument(
                "windows per batch must be positive".into(),
            ));
        }
        let pack = PackConfig::for_tokenizer(&model.tokenizer, context);
        let d = hook_width(model.model.config(), hook)?;
        Ok(StreamingSource {
            model,
            packer: Packer::new(corpus, &model.tokenizer, pack)?,
            hook,
            windows_per_batch,
            skip: usize::from(skip_bos && pack.bos.is_some()),
            with_tokens,
            d,
        })
    }
}

impl ActivationSource for StreamingSource<'_> {
    fn d(&self) -> usize {
        self.d
    }

    fn next_batch(&mut self) -> Result<Option<ActivationBatch>> {
        let windows = self.packer.next_windows(self.windows_per_batch)?;
        if windows.is_empty() {
            return Ok(None);
        }
        let context = windows[0].tokens.len() as i64;
        let ids: Vec<i64> = windows
            .iter()
            .flat_map(|w| w.tokens.iter().copied())
            .collect();
        let input = Tensor::f_from_slice(&ids)?
            .f_view([windows.len() as i64, context])?
            .f_to_device(self.model.model.device())?;
        let mut acts = forward_hooks(self.model, &[self.hook], &input)?;
        let act = acts
            .pop()
            .ok_or_else(|| Error::InvalidArgument("no activations".into()))?;
        let skip = self.skip as i64;
        // [batch, context, d] -> [batch * (context - skip), d]
        let rows = act
            .f_narrow(1, skip, context - skip)?
            .f_reshape([-1, self.d as i64])?
            .f_to_kind(Kind::Float)?;
        let tokens = if self.with_tokens {
            let kept: Vec<i64> = windows
                .iter()
                .flat_map(|w| w.tokens[self.skip..].iter().copied())
                .collect();
            Some(Tensor::f_from_slice(&kept)?.f_to_device(self.model.model.device())?)
        } else {
            None
        };
        Ok(Some(ActivationBatch { acts: rows, tokens }))
    }
}
