//! What a harvest is asked to do ([`HarvestConfig`]), how it reports
//! progress ([`HarvestObserver`]) and what it did ([`HarvestSummary`]).

use std::path::{Path, PathBuf};

use crate::data::store::manifest::StoreDtype;
use crate::hooks::HookPoint;

/// What to harvest and where.
#[derive(Debug, Clone)]
pub struct HarvestConfig {
    /// Corpus spec (see [`Corpus::open`]).
    pub corpus: String,
    /// JSONL text field.
    pub text_field: String,
    pub hooks: Vec<HookPoint>,
    /// Activation rows to store per hook (rounded up to whole windows).
    pub tokens: u64,
    /// Tokens per window, BOS included.
    pub context: usize,
    /// Windows per forward pass.
    pub batch: usize,
    pub dtype: StoreDtype,
    /// Leave each window's BOS position out of the store.
    pub skip_bos: bool,
    /// Recorded in the manifest; the default seed of readers of the store.
    pub seed: u64,
    /// Rows per shard (rounded down to whole windows, at least one window).
    pub shard_tokens: u64,
    /// Continue the stores in `out` instead of refusing them.
    pub resume: bool,
    /// The store folder (one hook), or the folder of one store per hook.
    pub out: PathBuf,
}

/// Progress reports from [`harvest`].
pub trait HarvestObserver {
    /// Before the first forward: rows to reach, rows already stored.
    fn started(&mut self, _target_rows: u64, _done_rows: u64) {}
    /// After each forward batch, with the rows it produced (per hook).
    fn advanced(&mut self, _rows: u64) {}
    /// After shard `index` of every hook is written and listed.
    fn shard_written(&mut self, _index: usize, _rows: u64) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl HarvestObserver for Silent {}

/// What a harvest did.
#[derive(Debug, Clone)]
pub struct HarvestSummary {
    /// One store folder per hook, in the order of the config's hooks.
    pub stores: Vec<PathBuf>,
    /// Rows per hook stored in total.
    pub rows: u64,
    pub windows: u64,
    pub shards: usize,
    /// Shards and rows that were already there (resume).
    pub kept_shards: usize,
    pub kept_rows: u64,
    /// Seconds this run spent in model forwards. Tokenization and writing
    /// run on other threads meanwhile; the rest of the wall time is set-up,
    /// the wait for the first windows and the last shard's write.
    pub forward_secs: f64,
    pub corpus_exhausted: bool,
}

/// The store folder of `hook` when harvesting `hooks` into `out`: `out` itself
/// for one hook, else `out/<hook name>`.
pub fn store_dir(out: &Path, hooks: &[HookPoint], hook: HookPoint) -> PathBuf {
    if hooks.len() == 1 {
        out.to_path_buf()
    } else {
        out.join(hook.to_string())
    }
}
