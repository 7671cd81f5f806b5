//! Tokenization and packing: documents are tokenized in parallel batches
//! (rayon), concatenated with a separator token (EOS) after each document, and
//! packed into fixed windows of `context` tokens, each starting with BOS
//! followed by `context - 1` stream tokens, as SAELens packs them. A model
//! without BOS gets `context` stream tokens per window. The last, incomplete
//! window of a corpus is dropped.
//!
//! The stream is deterministic: the same corpus, tokenizer and context give the
//! same windows in the same order, so a resumed harvest skips the windows it
//! has already stored with [`Packer::skip`].

use std::collections::VecDeque;

use rayon::prelude::*;

use super::corpus::{Corpus, Documents};
use crate::error::{Error, Result};
use crate::model::ModelTokenizer;

/// Documents tokenized together in one parallel batch, at most.
pub const DOCS_PER_BATCH: usize = 256;
/// Documents in the first batch; each next batch doubles up to
/// [`DOCS_PER_BATCH`], so that the first windows come quickly.
const FIRST_DOCS_PER_BATCH: usize = 16;

/// How windows are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackConfig {
    /// Tokens per window, BOS included.
    pub context: usize,
    /// Token that starts every window (the model's BOS), if any.
    pub bos: Option<i64>,
    /// Token appended after each document (the model's EOS), if any.
    pub separator: Option<i64>,
}

impl PackConfig {
    /// BOS and EOS from `tokenizer`.
    pub fn for_tokenizer(tokenizer: &ModelTokenizer, context: usize) -> Self {
        PackConfig {
            context,
            bos: tokenizer.bos_id(),
            separator: tokenizer.eos_ids().first().copied(),
        }
    }

    /// Stream tokens each window takes.
    fn body(&self) -> usize {
        self.context - usize::from(self.bos.is_some())
    }
}

/// One packed window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// 0-based index of the window in the stream.
    pub index: u64,
    /// `[context]` token ids.
    pub tokens: Vec<i64>,
}

/// The token ids of `windows` (all of one length) as `[windows, context]`
/// int64 on `device`.
pub fn windows_tensor(windows: &[Window], device: tch::Device) -> Result<tch::Tensor> {
    let context = windows.first().map_or(0, |w| w.tokens.len());
    if windows.iter().any(|w| w.tokens.len() != context) {
        return Err(Error::InvalidArgument(
            "windows of one batch must have one length".into(),
        ));
    }
    let ids: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.tokens.iter().copied())
        .collect();
    Ok(tch::Tensor::f_from_slice(&ids)?
        .f_view([windows.len() as i64, context as i64])?
        .f_to_device(device)?)
}

/// Packs a corpus's token stream into windows.
pub struct Packer<'a> {
    docs: Documents,
    tokenizer: &'a ModelTokenizer,
    cfg: PackConfig,
    pending: VecDeque<i64>,
    next_index: u64,
    exhausted: bool,
    /// Documents in the next parallel batch.
    docs_per_batch: usize,
}

impl<'a> Packer<'a> {
    pub fn new(corpus: &Corpus, tokenizer: &'a ModelTokenizer, cfg: PackConfig) -> Result<Self> {
        if cfg.context < 2 {
            return Err(Error::InvalidArgument(format!(
                "context must be at least 2 tokens, got {}",
                cfg.context
            )));
        }
        Ok(Packer {
            docs: corpus.documents(),
            tokenizer,
            cfg,
            pending: VecDeque::new(),
            next_index: 0,
            exhausted: false,
            docs_per_batch: FIRST_DOCS_PER_BATCH,
        })
    }

    pub fn config(&self) -> PackConfig {
        self.cfg
    }

    /// Index of the window [`Packer::next_window`] returns next.
    pub fn position(&self) -> u64 {
        self.next_index
    }

    /// Tokenizes document batches until `needed` stream tokens are pending or
    /// the corpus ends. Returns whether enough are pending.
    fn fill(&mut self, needed: usize) -> Result<bool> {
        while self.pending.len() < needed && !self.exhausted {
            let batch = self.docs.next_batch(self.docs_per_batch)?;
            self.docs_per_batch = (self.docs_per_batch * 2).min(DOCS_PER_BATCH);
            if batch.is_empty() {
                self.exhausted = true;
                break;
            }
            let tokenizer = self.tokenizer;
            let encoded: Vec<Vec<i64>> = batch
                .par_iter()
                .map(|doc| tokenizer.encode(&doc.text, false))
                .collect::<Result<_>>()?;
            for (doc, ids) in batch.iter().zip(encoded) {
                self.pending.extend(ids);
                if doc.ends_document {
                    if let Some(sep) = self.cfg.separator {
                        self.pending.push_back(sep);
                    }
                }
            }
        }
        Ok(self.pending.len() >= needed)
    }

    /// The next window, or `None` when the corpus cannot fill another.
    pub fn next_window(&mut self) -> Result<Option<Window>> {
        let body = self.cfg.body();
        if !self.fill(body)? {
            return Ok(None);
        }
        let mut tokens = Vec::with_capacity(self.cfg.context);
        tokens.extend(self.cfg.bos);
        tokens.extend(self.pending.drain(..body));
        let window = Window {
            index: self.next_index,
            tokens,
        };
        self.next_index += 1;
        Ok(Some(window))
    }

    /// Up to `n` windows, fewer only at the end of the corpus.
    pub fn next_windows(&mut self, n: usize) -> Result<Vec<Window>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_window()? {
                Some(w) => out.push(w),
                None => break,
            }
        }
        Ok(out)
    }

    /// Skips `n` windows (tokenizing them, since the stream has no index).
    /// Returns how many were skipped: fewer than `n` only at the end of the corpus.
    pub fn skip(&mut self, n: u64) -> Result<u64> {
        let body = self.cfg.body();
        let mut skipped = 0;
        while skipped < n {
            if !self.fill(body)? {
                break;
            }
            self.pending.drain(..body);
            self.next_index += 1;
            skipped += 1;
        }
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> ModelTokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny/llama/tokenizer.json");
        ModelTokenizer::from_file(&path, Some(500), vec![501]).unwrap()
    }

    fn corpus(dir: &std::path::Path, text: &str) -> Corpus {
        let path = dir.join("c.txt");
        std::fs::write(&path, text).unwrap();
        Corpus::open(path.to_str().unwrap(), "text").unwrap()
    }

    #[test]
    fn windows_are_bos_then_the_stream_with_separators() {
        let dir = tempfile::tempdir().unwrap();
        let text = "alpha beta gamma\n\ndelta epsilon\n\nzeta eta theta iota kappa\n";
        let tok = tokenizer();
        let mut expected_stream = Vec::new();
        for para in [
            "alpha beta gamma",
            "delta epsilon",
            "zeta eta theta iota kappa",
        ] {
            expected_stream.extend(tok.encode(para, false).unwrap());
            expected_stream.push(501);
        }
        let cfg = PackConfig {
            context: 5,
            bos: Some(500),
            separator: Some(501),
        };
        let mut packer = Packer::new(&corpus(dir.path(), text), &tok, cfg).unwrap();
        let mut stream = Vec::new();
        let mut index = 0;
        while let Some(w) = packer.next_window().unwrap() {
            assert_eq!(w.index, index);
            assert_eq!(w.tokens.len(), 5);
            assert_eq!(w.tokens[0], 500);
            stream.extend_from_slice(&w.tokens[1..]);
            index += 1;
        }
        // Whole windows only: the incomplete tail is dropped.
        assert_eq!(stream.len(), expected_stream.len() / 4 * 4);
        assert_eq!(stream, expected_stream[..stream.len()]);
    }

    #[test]
    fn skipping_gives_the_same_later_windows() {
        let dir = tempfile::tempdir().unwrap();
        let text = "one two three four five six seven\n\n".repeat(50);
        let tok = tokenizer();
        let c = corpus(dir.path(), &text);
        let cfg = PackConfig::for_tokenizer(&tok, 8);
        let all = Packer::new(&c, &tok, cfg)
            .unwrap()
            .next_windows(1000)
            .unwrap();
        let mut packer = Packer::new(&c, &tok, cfg).unwrap();
        assert_eq!(packer.skip(7).unwrap(), 7);
        assert_eq!(packer.next_windows(1000).unwrap(), all[7..]);
        let mut packer = Packer::new(&c, &tok, cfg).unwrap();
        assert_eq!(packer.skip(100_000).unwrap(), all.len() as u64);
    }
}
