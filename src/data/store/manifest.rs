//! The manifest of an activation store (`manifest.json`): what was harvested
//! (model and its sha256, hook, dtype, width, context, corpus, seed), the
//! shards in order with their rows, windows and sha256, and normalisation
//! statistics accumulated in f64. Written atomically after every shard.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::names::is_plain_file_name;

use super::row_sums::RowSums;

/// The manifest's file name inside a store folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The version of the store layout this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// How activations are stored: `f32`, `bf16` or `f16`.
pub use crate::io::dtype::Dtype as StoreDtype;

/// The model the activations came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The `--model` argument.
    pub spec: String,
    /// sha256 of the model file (GGUF), or of a folder's files (see
    /// [`crate::data::harvest::model_sha256`]).
    pub sha256: String,
    pub architecture: String,
    pub n_layers: usize,
    pub d_model: i64,
    /// The dtype the model ran in.
    pub dtype: String,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the store folder.
    pub file: String,
    /// Activation rows (tokens) in the shard.
    pub rows: u64,
    /// Index of the shard's first window in the packed token stream.
    pub first_window: u64,
    /// Whole windows in the shard; row `r` is window
    /// `first_window + r / rows_per_window`.
    pub windows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
}

/// Normalisation statistics of the stored activations, accumulated in f64
/// shard by shard (sums are kept so a resumed harvest continues them exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    pub rows: u64,
    /// Sum over rows of the L2 norm of each row.
    pub norm_sum: f64,
    /// `[d]` sum over rows.
    pub sum: Vec<f64>,
    /// `norm_sum / rows`.
    pub mean_norm: f64,
    /// `[d]` `sum / rows`.
    pub mean: Vec<f64>,
}

impl NormStats {
    pub fn new(d: usize) -> Self {
        NormStats {
            rows: 0,
            norm_sum: 0.0,
            sum: vec![0.0; d],
            mean_norm: 0.0,
            mean: vec![0.0; d],
        }
    }

    /// Adds `acts [rows, d]`.
    pub fn add(&mut self, acts: &Tensor) -> Result<()> {
        let mut sums = RowSums::new(self.sum.len());
        sums.add(acts)?;
        self.add_sums(sums.rows, sums.norm_sum, &sums.sum)
    }

    /// Adds the sums of `rows` rows computed elsewhere: `norm_sum` of their
    /// L2 norms and `sum [d]` of the rows (see [`RowSums`]).
    pub fn add_sums(&mut self, rows: u64, norm_sum: f64, sum: &[f64]) -> Result<()> {
        if sum.len() != self.sum.len() {
            return Err(Error::InvalidArgument(format!(
                "activation width {} differs from the store's {}",
                sum.len(),
                self.sum.len()
            )));
        }
        if rows == 0 {
            return Ok(());
        }
        self.rows += rows;
        self.norm_sum += norm_sum;
        for (acc, v) in self.sum.iter_mut().zip(sum) {
            *acc += v;
        }
        let n = self.rows as f64;
        self.mean_norm = self.norm_sum / n;
        self.mean = self.sum.iter().map(|s| s / n).collect();
        Ok(())
    }
}

/// Everything `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model: ModelInfo,
    /// TransformerLens hook name.
    pub hook: String,
    pub dtype: StoreDtype,
    /// Width of one activation row.
    pub d: usize,
    /// Tokens per window, BOS included.
    pub context: usize,
    /// Whether the BOS position of each window is left out of the store.
    pub skip_bos: bool,
    pub bos_token_id: Option<i64>,
    pub separator_token_id: Option<i64>,
    /// The `--corpus` spec and the JSONL text field.
    pub corpus: String,
    pub text_field: String,
    pub seed: u64,
    /// Windows per forward pass.
    pub batch: usize,
    /// Windows per shard (the last shard may hold fewer).
    pub windows_per_shard: u64,
    /// Rows asked for; the store holds whole windows, so up to one window more.
    pub target_tokens: u64,
    /// Rows stored so far.
    pub tokens: u64,
    /// Windows stored so far.
    pub windows: u64,
    /// The harvest reached its target or the end of the corpus.
    pub complete: bool,
    /// The corpus ended before the target.
    pub corpus_exhausted: bool,
    pub shards: Vec<ShardEntry>,
    pub stats: NormStats,
}

impl Manifest {
    /// Rows each window contributes.
    pub fn rows_per_window(&self) -> u64 {
        let skipped = u64::from(self.skip_bos && self.bos_token_id.is_some());
        self.context as u64 - skipped
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        Self::read_named(dir, MANIFEST_FILE)
    }

    /// Reads `dir/name` (a part's manifest, see `store::parts`).
    pub fn read_named(dir: &Path, name: &str) -> Result<Manifest> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::store(dir, format!("no {name} (not an activation store)"))
            } else {
                Error::io(&path, e)
            }
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::store(&path, format!("invalid manifest: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(Error::store(
                &path,
                format!(
                    "format version {} (this saescope reads {FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        manifest
            .check()
            .map_err(|problem| Error::store(&path, format!("invalid manifest: {problem}")))?;
        Ok(manifest)
    }

    /// What readers rely on before touching a shard: positive sizes, whole
    /// rows per window, statistics as wide as the rows, row counts that add
    /// up without overflow, and shard files that are plain names inside the
    /// store folder (a crafted `../` or `/dev/zero` is refused).
    fn check(&self) -> std::result::Result<(), String> {
        if self.d == 0 || self.context == 0 || self.batch == 0 || self.windows_per_shard == 0 {
            return Err(format!(
                "d {}, context {}, batch {} and windows_per_shard {} must all be positive",
                self.d, self.context, self.batch, self.windows_per_shard
            ));
        }
        if self.context as u64 <= u64::from(self.skip_bos && self.bos_token_id.is_some()) {
            return Err("a window of one token leaves no row once BOS is skipped".into());
        }
        let width = self.d;
        if self.stats.sum.len() != width || self.stats.mean.len() != width {
            return Err(format!(
                "statistics of width {} and {}, rows of width {width}",
                self.stats.sum.len(),
                self.stats.mean.len()
            ));
        }
        let mut rows = 0u64;
        for shard in &self.shards {
            if !is_plain_file_name(&shard.file) {
                return Err(format!(
                    "shard file `{}` is not a file name inside the store",
                    shard.file
                ));
            }
            rows = rows
                .checked_add(shard.rows)
                .ok_or("shard row counts overflow")?;
        }
        Ok(())
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_named(dir, MANIFEST_FILE)
    }

    /// Writes `dir/name` atomically.
    pub fn write_named(&self, dir: &Path, name: &str) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        write_atomic(&dir.join(name), text.as_bytes())
    }
}
