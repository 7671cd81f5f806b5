//! Shuffled batches from an activation store. Shards are visited in a shuffled
//! order each epoch, `buffer_shards` at a time: their rows (with the rows left
//! over from the previous buffer) are shuffled together and served in batches.
//! Memory stays bounded by the buffer, every row is served exactly once per
//! epoch (the last batch of an epoch may be short), and the order depends only
//! on the seed. Each shard's sha256 is checked as it is loaded. A reader
//! given a [`Share`] serves only the shards of that share (shard `i` belongs
//! to share `i % count`), so the ranks of a job read disjoint rows.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use crate::data::share::Share;
use crate::data::source::{ActivationBatch, ActivationSource};
use crate::data::store::Store;
use crate::error::{Error, Result};

/// How a [`StoreReader`] serves rows.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    pub batch_size: usize,
    /// Shards loaded and shuffled together.
    pub buffer_shards: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Also return each row's token id.
    pub with_tokens: bool,
    /// Kind and device of the returned activations.
    pub kind: Kind,
    pub device: Device,
    /// The shards served: those of this share.
    pub share: Share,
}

impl ReaderConfig {
    /// One epoch of f32 batches on the CPU, 4 shards per buffer, seed 0.
    pub fn new(batch_size: usize) -> Self {
        ReaderConfig {
            batch_size,
            buffer_shards: 4,
            epochs: 1,
            seed: 0,
            with_tokens: false,
            kind: Kind::Float,
            device: Device::Cpu,
            share: Share::WHOLE,
        }
    }
}

impl ReaderConfig {
    /// [`ReaderConfig::new`] with the seed the store's manifest records
    /// (`saescope harvest --seed`).
    pub fn for_store(store: &Store, batch_size: usize) -> Self {
        ReaderConfig {
            seed: store.manifest().seed,
            ..ReaderConfig::new(batch_size)
        }
    }
}

/// Shuffled batches from a [`Store`].
pub struct StoreReader {
    store: Store,
    cfg: ReaderConfig,
    rng: StdRng,
    epoch: usize,
    /// This epoch's shard order and how much of it is loaded.
    order: Vec<usize>,
    next_shard: usize,
    /// `[rows, d]` shuffled rows and `[rows]` their token ids (store dtype, CPU).
    acts: Option<Tensor>,
    tokens: Option<Tensor>,
    cursor: i64,
}

impl StoreReader {
    pub fn new(store: Store, cfg: ReaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.buffer_shards == 0 {
            return Err(Error::InvalidArgument(
                "batch size and buffer shards must be positive".into(),
            ));
        }
        let shards = store.manifest().shards.len();
        let mut order: Vec<usize> = (0..shards).filter(|&i| cfg.share.holds(i as u64)).collect();
        if order.is_empty() && shards > 0 {
            return Err(Error::store(
                store.dir(),
                format!(
                    "{shards} shard(s) cannot be divided among {} readers: harvest smaller shards (--shard-tokens) or use fewer ranks",
                    cfg.share.count
                ),
            ));
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        order.shuffle(&mut rng);
        Ok(StoreReader {
            store,
            cfg,
            rng,
            epoch: 0,
            order,
            next_shard: 0,
            acts: None,
            tokens: None,
            cursor: 0,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The epoch being served (0-based).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    fn buffered(&self) -> i64 {
        self.acts.as_ref().map_or(0, |a| a.size()[0]) - self.cursor
    }

    /// Loads the next shards of this epoch, with the rows left over, and shuffles them.
    fn refill(&mut self) -> Result<()> {
        let mut acts = Vec::new();
        let mut tokens = Vec::new();
        let left = self.buffered();
        if let (Some(a), Some(t)) = (&self.acts, &self.tokens) {
            if left > 0 {
                acts.push(a.f_narrow(0, self.cursor, left)?);
                tokens.push(t.f_narrow(0, self.cursor, left)?);
            }
        }
        let end = (self.next_shard + self.cfg.buffer_shards).min(self.order.len());
        for &index in &self.order[self.next_shard..end] {
            let shard = self.store.load_shard(index)?;
            acts.push(shard.acts);
            tokens.push(shard.tokens);
        }
        self.next_shard = end;
        let acts = Tensor::f_cat(&acts, 0)?;
        let tokens = Tensor::f_cat(&tokens, 0)?;
        let mut perm: Vec<i64> = (0..acts.size()[0]).collect();
        perm.shuffle(&mut self.rng);
        let perm = Tensor::f_from_slice(&perm)?;
        self.acts = Some(acts.f_index_select(0, &perm)?);
        self.tokens = Some(tokens.f_index_select(0, &perm)?);
        self.cursor = 0;
        Ok(())
    }

    fn take(&mut self, n: i64) -> Result<ActivationBatch> {
        let (Some(acts), Some(tokens)) = (&self.acts, &self.tokens) else {
            return Err(Error::InvalidArgument("reader buffer is empty".into()));
        };
        let batch = acts
            .f_narrow(0, self.cursor, n)?
            .f_to_kind(self.cfg.kind)?
            .f_to_device(self.cfg.device)?;
        let tokens = if self.cfg.with_tokens {
            Some(
                tokens
                    .f_narrow(0, self.cursor, n)?
                    .f_to_kind(Kind::Int64)?
                    .f_to_device(self.cfg.device)?,
            )
        } else {
            None
        };
        self.cursor += n;
        Ok(ActivationBatch {
            acts: batch,
            tokens,
        })
    }
}

impl ActivationSource for StoreReader {
    fn d(&self) -> usize {
        self.store.manifest().d
    }

    fn next_batch(&mut self) -> Result<Option<ActivationBatch>> {
        let want = self.cfg.batch_size as i64;
        loop {
            if self.epoch >= self.cfg.epochs {
                return Ok(None);
            }
            let left = self.buffered();
            if left >= want {
                return self.take(want).map(Some);
            }
            if self.next_shard < self.order.len() {
                self.refill()?;
                continue;
            }
            if left > 0 {
                return self.take(left).map(Some);
            }
            // End of the epoch: a new shard order.
            self.epoch += 1;
            self.acts = None;
            self.tokens = None;
            self.cursor = 0;
            self.next_shard = 0;
            self.order.shuffle(&mut self.rng);
        }
    }
}
