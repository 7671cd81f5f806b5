//! What the trainer reads: batches of rows for every hook point of the run at
//! once, so SAEs on different hooks (or a sweep on one) share one stream.
//! From stores on disk (one reader per hook, same seed, so rows line up),
//! from the model on the fly, or from tensors in memory (tests, benchmarks).
//! A rank of a job reads its shares of the data through a [`SharesFeed`].

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use crate::data::harvest::stream::StreamingSource;
use crate::data::share::Share;
use crate::data::source::ActivationSource;
use crate::data::store::reader::{ReaderConfig, StoreReader};
use crate::data::store::Store;
use crate::error::{Error, Result};

/// Batches of rows for several hooks.
pub trait ActivationFeed {
    /// Row width of each hook, in the run's hook order.
    fn widths(&self) -> Vec<usize>;
    /// Mean row norm of each hook when known before reading (a store's statistics).
    fn mean_norms(&self) -> Vec<Option<f64>>;
    /// One `[rows, d]` f32 tensor per hook, the same rows for every hook;
    /// `None` when the feed is exhausted.
    fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>>;
    /// Skips `batches` batches, exactly as reading them would (for resuming).
    fn skip_batches(&mut self, batches: u64) -> Result<()> {
        for _ in 0..batches {
            if self.next_batch()?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// The store folder of `hook` under `root`: `root` itself when it is a store
/// of that hook, else `root/<hook>`.
pub fn store_for_hook(root: &Path, hook: &str) -> Result<PathBuf> {
    if root.join("manifest.json").is_file() {
        let store = Store::open(root)?;
        if store.manifest().hook != hook {
            return Err(Error::store(
                root,
                format!("holds `{}`, not `{hook}`", store.manifest().hook),
            ));
        }
        return Ok(root.to_path_buf());
    }
    let dir = root.join(hook);
    if dir.join("manifest.json").is_file() {
        Ok(dir)
    } else {
        Err(Error::store(
            root,
            format!(
                "no store for `{hook}` (neither {}/manifest.json nor {}/manifest.json)",
                root.display(),
                dir.display()
            ),
        ))
    }
}

/// One shuffled store reader per hook, all with the same seed.
pub struct StoreFeed {
    readers: Vec<StoreReader>,
}

impl StoreFeed {
    /// Batches of `batch_size` rows from `share`'s shards of each hook's store.
    pub fn open(
        root: &Path,
        hooks: &[String],
        batch_size: usize,
        seed: u64,
        buffer_shards: usize,
        share: Share,
    ) -> Result<Self> {
        let mut readers = Vec::new();
        for hook in hooks {
            let store = Store::open(&store_for_hook(root, hook)?)?;
            let cfg = ReaderConfig {
                seed,
                buffer_shards,
                epochs: usize::MAX,
                share,
                ..ReaderConfig::new(batch_size)
            };
            readers.push(StoreReader::new(store, cfg)?);
        }
        let rows: Vec<(u64, usize)> = readers
            .iter()
            .map(|r| {
                (
                    r.store().manifest().tokens,
                    r.store().manifest().shards.len(),
                )
            })
            .collect();
        if rows.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::store(
                root,
                "the hooks' stores differ in rows or shards, so their rows cannot be paired; harvest them in one run",
            ));
        }
        if rows.first().is_some_and(|(tokens, _)| *tokens == 0) {
            return Err(Error::store(root, "the store is empty"));
        }
        Ok(StoreFeed { readers })
    }

    /// Rows in each store.
    pub fn rows(&self) -> u64 {
        self.readers
            .first()
            .map_or(0, |r| r.store().manifest().tokens)
    }
}

impl ActivationFeed for StoreFeed {
    fn widths(&self) -> Vec<usize> {
        self.readers.iter().map(|r| r.d()).collect()
    }

    fn mean_norms(&self) -> Vec<Option<f64>> {
        self.readers
            .iter()
            .map(|r| Some(r.store().manifest().stats.mean_norm).filter(|n| *n > 0.0))
            .collect()
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>> {
        let mut out = Vec::with_capacity(self.readers.len());
        for reader in &mut self.readers {
            match reader.next_batch()? {
                Some(batch) => out.push(batch.acts.f_to_kind(Kind::Float)?),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

/// The batches of several shares of the data, joined in share order: the
/// feed of a rank that holds more than one share (each part serves its
/// slice of the batch size, see [`Share::slice_of`]).
pub struct SharesFeed<'a> {
    parts: Vec<Box<dyn ActivationFeed + 'a>>,
}

impl<'a> SharesFeed<'a> {
    /// `parts`: one feed per share held, in share order (at least one).
    pub fn new(parts: Vec<Box<dyn ActivationFeed + 'a>>) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::InvalidArgument(
                "a feed needs at least one share".into(),
            ));
        }
        Ok(SharesFeed { parts })
    }
}

impl ActivationFeed for SharesFeed<'_> {
    fn widths(&self) -> Vec<usize> {
        self.parts[0].widths()
    }

    fn mean_norms(&self) -> Vec<Option<f64>> {
        self.parts[0].mean_norms()
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>> {
        let mut batches = Vec::with_capacity(self.parts.len());
        for part in &mut self.parts {
            match part.next_batch()? {
                Some(b) => batches.push(b),
                None => return Ok(None),
            }
        }
        if batches.len() == 1 {
            return Ok(batches.pop());
        }
        (0..batches[0].len())
            .map(|hook| {
                let rows: Vec<&Tensor> = batches.iter().map(|b| &b[hook]).collect();
                Ok(Tensor::f_cat(&rows, 0)?)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn skip_batches(&mut self, batches: u64) -> Result<()> {
        for part in &mut self.parts {
            part.skip_batches(batches)?;
        }
        Ok(())
    }
}

/// Rows straight from the model, regrouped into batches of `batch_size`.
pub struct StreamFeed<'a> {
    source: StreamingSource<'a>,
    batch_size: i64,
    /// Rows produced but not yet served, per hook.
    pending: Vec<Tensor>,
}

impl<'a> StreamFeed<'a> {
    pub fn new(source: StreamingSource<'a>, batch_size: usize) -> Self {
        StreamFeed {
            source,
            batch_size: batch_size as i64,
            pending: Vec::new(),
        }
    }

    fn pending_rows(&self) -> i64 {
        self.pending.first().map_or(0, |t| t.size()[0])
    }
}

impl ActivationFeed for StreamFeed<'_> {
    fn widths(&self) -> Vec<usize> {
        self.source.widths().to_vec()
    }

    fn mean_norms(&self) -> Vec<Option<f64>> {
        vec![None; self.source.widths().len()]
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>> {
        while self.pending_rows() < self.batch_size {
            let Some(rows) = self.source.next_rows()? else {
                break;
            };
            self.pending = if self.pending.is_empty() {
                rows.acts
            } else {
                self.pending
                    .iter()
                    .zip(&rows.acts)
                    .map(|(a, b)| Tensor::f_cat(&[a, b], 0))
                    .collect::<std::result::Result<_, _>>()?
            };
        }
        let have = self.pending_rows();
        if have == 0 {
            return Ok(None);
        }
        let take = have.min(self.batch_size);
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for t in &self.pending {
            batch.push(t.f_narrow(0, 0, take)?);
            rest.push(t.f_narrow(0, take, have - take)?);
        }
        self.pending = rest;
        Ok(Some(batch))
    }

    /// Skips whole windows without running the model, then the remainder.
    fn skip_batches(&mut self, batches: u64) -> Result<()> {
        let rows = batches * self.batch_size as u64;
        let per_window = self.source.rows_per_window() as u64;
        self.source.skip_windows(rows / per_window)?;
        let remainder = (rows % per_window) as i64;
        if remainder > 0 {
            if let Some(first) = self.source.next_rows()? {
                self.pending = first
                    .acts
                    .iter()
                    .map(|t| t.f_narrow(0, remainder, t.size()[0] - remainder))
                    .collect::<std::result::Result<_, _>>()?;
            }
        }
        Ok(())
    }
}

/// Rows held in memory, reshuffled every epoch from a seed, endlessly.
pub struct MemoryFeed {
    rows: Vec<Tensor>,
    batch_size: usize,
    rng: StdRng,
    order: Vec<i64>,
    cursor: usize,
}

impl MemoryFeed {
    /// `rows`: one `[n, d]` tensor per hook, all with the same `n`.
    pub fn new(rows: Vec<Tensor>, batch_size: usize, seed: u64) -> Result<Self> {
        let n = rows.first().map_or(0, |t| t.size()[0]);
        if n == 0 || rows.iter().any(|t| t.size()[0] != n) || batch_size == 0 {
            return Err(Error::InvalidArgument(
                "a memory feed needs rows (the same number per hook) and a positive batch size"
                    .into(),
            ));
        }
        Ok(MemoryFeed {
            rows: rows.into_iter().map(|t| t.to_kind(Kind::Float)).collect(),
            batch_size,
            rng: StdRng::seed_from_u64(seed),
            order: Vec::new(),
            cursor: 0,
        })
    }
}

impl ActivationFeed for MemoryFeed {
    fn widths(&self) -> Vec<usize> {
        self.rows.iter().map(|t| t.size()[1] as usize).collect()
    }

    fn mean_norms(&self) -> Vec<Option<f64>> {
        vec![None; self.rows.len()]
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>> {
        if self.cursor >= self.order.len() {
            self.order = (0..self.rows[0].size()[0]).collect();
            self.order.shuffle(&mut self.rng);
            self.cursor = 0;
        }
        let end = (self.cursor + self.batch_size).min(self.order.len());
        let index = Tensor::f_from_slice(&self.order[self.cursor..end])?;
        self.cursor = end;
        Ok(Some(
            self.rows
                .iter()
                .map(|t| t.f_index_select(0, &index))
                .collect::<std::result::Result<_, _>>()?,
        ))
    }
}
