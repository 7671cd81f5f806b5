//! Activations straight from the model, no disk: packed windows run through
//! the model batch by batch and served in corpus order, through the same
//! [`ActivationSource`] trait as a store reader. Several hook points come
//! from one forward pass ([`StreamingSource::next_rows`]). A source given a
//! [`Share`] runs only that share's windows (window `i` belongs to share
//! `i % count`), so the ranks of a job stream disjoint windows.

use tch::{Kind, Tensor};

use crate::data::corpus::Corpus;
use crate::data::packing::{windows_tensor, PackConfig, Packer, Window};
use crate::data::share::Share;
use crate::data::source::{ActivationBatch, ActivationSource};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::model::LoadedModel;

/// Runs the model on a corpus and serves hook points' rows.
pub struct StreamingSource<'a> {
    model: &'a LoadedModel,
    packer: Packer<'a>,
    hooks: Vec<HookPoint>,
    windows_per_batch: usize,
    skip: usize,
    with_tokens: bool,
    widths: Vec<usize>,
    share: Share,
}

/// The rows of one forward pass.
pub struct StreamedRows {
    /// One `[rows, d]` f32 tensor per hook, in the order they were asked for.
    pub acts: Vec<Tensor>,
    /// `[rows]` int64 token ids, when asked for.
    pub tokens: Option<Tensor>,
}

impl<'a> StreamingSource<'a> {
    /// Batches of `windows_per_batch` windows of `context` tokens, i.e.
    /// `windows_per_batch * (context - skipped BOS)` rows each, of one hook.
    pub fn new(
        model: &'a LoadedModel,
        corpus: &Corpus,
        hook: HookPoint,
        context: usize,
        windows_per_batch: usize,
        skip_bos: bool,
        with_tokens: bool,
    ) -> Result<Self> {
        Self::with_hooks(
            model,
            corpus,
            &[hook],
            context,
            windows_per_batch,
            skip_bos,
            with_tokens,
        )
    }

    /// As [`StreamingSource::new`], for several hook points at once.
    pub fn with_hooks(
        model: &'a LoadedModel,
        corpus: &Corpus,
        hooks: &[HookPoint],
        context: usize,
        windows_per_batch: usize,
        skip_bos: bool,
        with_tokens: bool,
    ) -> Result<Self> {
        if windows_per_batch == 0 || hooks.is_empty() {
            return Err(Error::InvalidArgument(
                "streaming needs at least one hook and one window per batch".into(),
            ));
        }
        let pack = PackConfig::for_tokenizer(&model.tokenizer, context);
        let widths = hooks
            .iter()
            .map(|&h| model.model.config().hook_width(h))
            .collect::<Result<Vec<_>>>()?;
        Ok(StreamingSource {
            model,
            packer: Packer::new(corpus, &model.tokenizer, pack)?,
            hooks: hooks.to_vec(),
            windows_per_batch,
            skip: usize::from(skip_bos && pack.bos.is_some()),
            with_tokens,
            widths,
            share: Share::WHOLE,
        })
    }

    /// This source, serving only `share`'s windows.
    pub fn with_share(mut self, share: Share) -> Self {
        self.share = share;
        self
    }

    /// Row widths, one per hook.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Rows each window contributes.
    pub fn rows_per_window(&self) -> usize {
        self.packer.config().context - self.skip
    }

    /// Skips this share's first `windows` windows without running the model
    /// (for resuming; from the start of the stream).
    pub fn skip_windows(&mut self, windows: u64) -> Result<u64> {
        let count = self.share.count as u64;
        Ok(self.packer.skip(windows * count)? / count)
    }

    /// Up to `n` of this share's next windows, fewer only at the end of the corpus.
    fn next_share_windows(&mut self, n: usize) -> Result<Vec<Window>> {
        if self.share.is_whole() {
            return self.packer.next_windows(n);
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.packer.next_window()? {
                Some(w) if self.share.holds(w.index) => out.push(w),
                Some(_) => {}
                None => break,
            }
        }
        Ok(out)
    }

    /// The next forward pass's rows, or `None` at the end of the corpus.
    pub fn next_rows(&mut self) -> Result<Option<StreamedRows>> {
        let windows = self.next_share_windows(self.windows_per_batch)?;
        if windows.is_empty() {
            return Ok(None);
        }
        let context = windows[0].tokens.len() as i64;
        let input = windows_tensor(&windows, self.model.model.device())?;
        let skip = self.skip as i64;
        let acts = self
            .model
            .model
            .hook_rows(&input, &self.hooks)?
            .into_iter()
            .zip(&self.widths)
            // [batch, context, d] -> [batch * (context - skip), d]
            .map(|(act, &d)| {
                Ok(act
                    .f_narrow(1, skip, context - skip)?
                    .f_reshape([-1, d as i64])?
                    .f_to_kind(Kind::Float)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let tokens = if self.with_tokens {
            let kept: Vec<i64> = windows
                .iter()
                .flat_map(|w| w.tokens[self.skip..].iter().copied())
                .collect();
            Some(Tensor::f_from_slice(&kept)?.f_to_device(self.model.model.device())?)
        } else {
            None
        };
        Ok(Some(StreamedRows { acts, tokens }))
    }
}

impl ActivationSource for StreamingSource<'_> {
    /// The first hook's width.
    fn d(&self) -> usize {
        self.widths[0]
    }

    /// The first hook's rows.
    fn next_batch(&mut self) -> Result<Option<ActivationBatch>> {
        Ok(self.next_rows()?.map(|mut rows| ActivationBatch {
            acts: rows.acts.swap_remove(0),
            tokens: rows.tokens,
        }))
    }
}
