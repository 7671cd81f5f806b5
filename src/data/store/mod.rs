//! The on-disk activation store: one folder per hook point holding
//! `manifest.json` and safetensors shards `shard-NNNNN.safetensors`, each with
//! `acts [rows, d]` (f32, bf16 or f16), `tokens [rows]` int32 token ids and
//! `positions [rows]` int32 positions inside their window.
//!
//! [`StoreWriter`] appends shards atomically (whole, or built batch by batch
//! while a harvest runs, see `shard_file`) and rewrites the manifest after
//! each one; reopened for a resume it discards partial `*.tmp` files and shard
//! files the manifest does not list. [`Store`] reads shards back, checking each
//! one's size and sha256 against the manifest. Several ranks write one store
//! as parts, each with its own manifest and shard names (`parts`).

pub mod manifest;
pub mod parts;
pub mod reader;
pub(crate) mod row_sums;
pub(crate) mod shard;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::data::share::Share;
use crate::data::store::manifest::{Manifest, ShardEntry, MANIFEST_FILE};
use crate::data::store::parts::{
    check_part_count, is_part_file, part_manifest_name, part_shard_name, part_shard_prefix,
};
use crate::data::store::shard::{BuiltShard, ShardBuilder};
use crate::error::{Error, Result};
use crate::io::atomic::{sha256_hex, TMP_SUFFIX};

/// The file name of shard `index`.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.safetensors")
}

/// The rows of one shard, before writing.
pub struct ShardData {
    /// `[rows, d]` activations in any float kind (converted to the store's).
    pub acts: Tensor,
    /// `[rows]` token ids.
    pub tokens: Vec<i32>,
    /// `[rows]` positions inside their window.
    pub positions: Vec<i32>,
    pub first_window: u64,
    pub windows: u64,
}

/// One shard read back.
pub struct LoadedShard {
    /// `[rows, d]` in the store's dtype, on the CPU.
    pub acts: Tensor,
    /// `[rows]` int32.
    pub tokens: Tensor,
    /// `[rows]` int32.
    pub positions: Tensor,
}

/// Appends shards to a store, or to one part of a store that several ranks
/// write (see `parts`).
pub struct StoreWriter {
    dir: PathBuf,
    manifest: Manifest,
    /// The part this writer writes, when it is one of several.
    part: Option<Share>,
}

impl StoreWriter {
    /// Starts a store in `dir` (created if needed) with `manifest` (no shards
    /// yet). Refuses a folder that already holds a manifest.
    pub fn create(dir: &Path, manifest: Manifest) -> Result<Self> {
        Self::create_part(dir, manifest, None)
    }

    /// [`StoreWriter::create`] for `part` of a store (the whole store when `None`).
    pub fn create_part(dir: &Path, manifest: Manifest, part: Option<Share>) -> Result<Self> {
        Self::check_new_part(dir, part)?;
        let mut writer = StoreWriter {
            dir: dir.to_path_buf(),
            manifest,
            part,
        };
        writer.discard_strays()?;
        writer.write_manifest()?;
        Ok(writer)
    }

    /// Creates `dir` if needed and refuses it if it already holds a store:
    /// what [`StoreWriter::create`] checks before writing anything.
    pub fn check_new(dir: &Path) -> Result<()> {
        Self::check_new_part(dir, None)
    }

    /// [`StoreWriter::check_new`] for `part`: a folder holding the merged
    /// store, this part, or parts of another number of ranks is refused.
    pub fn check_new_part(dir: &Path, part: Option<Share>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let own = part.map(part_manifest_name);
        if dir.join(MANIFEST_FILE).exists() || own.is_some_and(|n| dir.join(n).exists()) {
            return Err(Error::store(
                dir,
                "already holds an activation store; pass --resume to continue it or choose another folder",
            ));
        }
        if let Some(part) = part {
            check_part_count(dir, part)?;
        }
        Ok(())
    }

    /// Reopens the store in `dir` to append to it: partial `*.tmp` files and
    /// shard files that the manifest does not list are deleted.
    pub fn resume(dir: &Path) -> Result<Self> {
        Self::resume_part(dir, None)
    }

    /// [`StoreWriter::resume`] for `part`: only that part's files are touched.
    pub fn resume_part(dir: &Path, part: Option<Share>) -> Result<Self> {
        let manifest = match part {
            None => Manifest::read(dir)?,
            Some(p) => {
                check_part_count(dir, p)?;
                Manifest::read_named(dir, &part_manifest_name(p))?
            }
        };
        let mut writer = StoreWriter {
            dir: dir.to_path_buf(),
            manifest,
            part,
        };
        writer.discard_strays()?;
        Ok(writer)
    }

    /// Whether a manifest for `part` (or the whole store) exists in `dir`.
    pub fn exists(dir: &Path, part: Option<Share>) -> bool {
        dir.join(part.map_or(MANIFEST_FILE.to_string(), part_manifest_name))
            .exists()
    }

    fn write_manifest(&self) -> Result<()> {
        match self.part {
            None => self.manifest.write(&self.dir),
            Some(p) => self.manifest.write_named(&self.dir, &part_manifest_name(p)),
        }
    }

    fn shard_name(&self, index: usize) -> String {
        match self.part {
            None => shard_file_name(index),
            Some(p) => part_shard_name(p, index),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn discard_strays(&mut self) -> Result<()> {
        let listed: HashSet<&str> = self
            .manifest
            .shards
            .iter()
            .map(|s| s.file.as_str())
            .collect();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Only this writer's files: another part's may be in progress.
            let ours = match self.part {
                None => !is_part_file(&name),
                Some(p) => {
                    name.starts_with(&part_shard_prefix(p))
                        || name.starts_with(&part_manifest_name(p))
                }
            };
            let stray_shard = name.starts_with("shard-")
                && name.ends_with(".safetensors")
                && !listed.contains(name.as_str());
            if ours && (name.ends_with(TMP_SUFFIX) || stray_shard) && path.is_file() {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Keeps only the first `shards` shards (used to line up the stores of
    /// several hooks harvested together), recomputing counts and statistics.
    pub fn truncate(&mut self, shards: usize) -> Result<()> {
        if shards >= self.manifest.shards.len() {
            return Ok(());
        }
        let store = Store {
            dir: self.dir.clone(),
            manifest: self.manifest.clone(),
        };
        let mut stats = crate::data::store::manifest::NormStats::new(self.manifest.d);
        for i in 0..shards {
            stats.add(&store.load_shard(i)?.acts)?;
        }
        let removed: Vec<ShardEntry> = self.manifest.shards.drain(shards..).collect();
        let m = &mut self.manifest;
        m.tokens = m.shards.iter().map(|s| s.rows).sum();
        m.windows = m.shards.iter().map(|s| s.windows).sum();
        m.stats = stats;
        m.complete = false;
        m.corpus_exhausted = false;
        self.write_manifest()?;
        for entry in removed {
            let path = self.dir.join(&entry.file);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// The path of the shard that [`StoreWriter::append`] or
    /// [`StoreWriter::commit`] adds next.
    pub fn next_shard_path(&self) -> PathBuf {
        self.dir.join(self.shard_name(self.manifest.shards.len()))
    }

    /// Writes one shard atomically, then the manifest that lists it.
    pub fn append(&mut self, shard: &ShardData) -> Result<()> {
        let m = &self.manifest;
        let rows = shard.tokens.len();
        let acts = shard
            .acts
            .f_to_kind(m.dtype.kind())?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        if acts.size() != [rows as i64, m.d as i64] || shard.positions.len() != rows {
            return Err(Error::InvalidArgument(format!(
                "shard of {rows} token ids, {} positions and activations {:?}; the store expects [rows, {}]",
                shard.positions.len(),
                acts.size(),
                m.d
            )));
        }
        let mut builder = ShardBuilder::new(m.dtype, m.d);
        builder.start(&self.next_shard_path(), rows)?;
        builder.push(&acts, &shard.tokens, &shard.positions)?;
        let built = builder.finish()?;
        self.commit(built, shard.first_window, shard.windows)
    }

    /// Lists a shard written by a [`ShardBuilder`] to
    /// [`StoreWriter::next_shard_path`]: the manifest is rewritten with it.
    pub(crate) fn commit(
        &mut self,
        built: BuiltShard,
        first_window: u64,
        windows: u64,
    ) -> Result<()> {
        let expected = self.shard_name(self.manifest.shards.len());
        if built.file != expected {
            return Err(Error::store(
                &self.dir,
                format!(
                    "shard `{}` written where `{expected}` comes next",
                    built.file
                ),
            ));
        }
        let mut next = self.manifest.clone();
        next.stats
            .add_sums(built.rows, built.norm_sum, &built.sum)?;
        next.shards.push(ShardEntry {
            file: built.file,
            rows: built.rows,
            first_window,
            windows,
            bytes: built.bytes,
            sha256: built.sha256,
        });
        next.tokens += built.rows;
        next.windows += windows;
        let previous = std::mem::replace(&mut self.manifest, next);
        if let Err(e) = self.write_manifest() {
            self.manifest = previous;
            return Err(e);
        }
        Ok(())
    }

    /// Marks the store complete.
    pub fn finish(&mut self, corpus_exhausted: bool) -> Result<()> {
        self.manifest.complete = true;
        self.manifest.corpus_exhausted = corpus_exhausted;
        self.write_manifest()
    }
}

/// A problem `verify` found with one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardProblem {
    pub file: String,
    pub reason: String,
}

/// A store opened for reading.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        Ok(Store {
            dir: dir.to_path_buf(),
            manifest: Manifest::read(dir)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn shard_path(&self, index: usize) -> Result<PathBuf> {
        let entry = self
            .manifest
            .shards
            .get(index)
            .ok_or_else(|| Error::store(&self.dir, format!("no shard {index}")))?;
        Ok(self.dir.join(&entry.file))
    }

    /// The bytes of shard `index`, checked against the manifest's size and sha256.
    fn checked_bytes(&self, index: usize) -> Result<Vec<u8>> {
        let path = self.shard_path(index)?;
        let entry = &self.manifest.shards[index];
        // The size is checked before reading, so a crafted entry cannot make
        // the reader swallow a huge or endless file.
        let on_disk = std::fs::metadata(&path)
            .map_err(|e| Error::store(&path, format!("cannot read shard: {e}")))?;
        if !on_disk.is_file() || on_disk.len() != entry.bytes {
            return Err(Error::store(
                &path,
                format!(
                    "truncated or overwritten shard: {} bytes, the manifest says {}",
                    on_disk.len(),
                    entry.bytes
                ),
            ));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::store(&path, format!("cannot read shard: {e}")))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(Error::store(
                &path,
                format!(
                    "truncated or overwritten shard: {} bytes, the manifest says {}",
                    bytes.len(),
                    entry.bytes
                ),
            ));
        }
        let sha = sha256_hex(&bytes);
        if sha != entry.sha256 {
            return Err(Error::store(
                &path,
                format!(
                    "corrupt shard: sha256 {sha}, the manifest says {}",
                    entry.sha256
                ),
            ));
        }
        Ok(bytes)
    }

    /// Reads shard `index`, refusing it if its checksum or contents are wrong.
    pub fn load_shard(&self, index: usize) -> Result<LoadedShard> {
        let path = self.shard_path(index)?;
        let bytes = self.checked_bytes(index)?;
        let m = &self.manifest;
        let rows = self.manifest.shards[index].rows as usize;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::store(&path, format!("not safetensors: {e}")))?;
        let get = |name: &str,
                   dtype: safetensors::Dtype,
                   shape: &[usize],
                   kind: Kind|
         -> Result<Tensor> {
            let view = st
                .tensor(name)
                .map_err(|e| Error::store(&path, format!("tensor `{name}`: {e}")))?;
            if view.dtype() != dtype || view.shape() != shape {
                return Err(Error::store(
                    &path,
                    format!(
                        "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            let size: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
            Ok(Tensor::f_from_data_size(view.data(), &size, kind)?)
        };
        Ok(LoadedShard {
            acts: get("acts", m.dtype.safetensors(), &[rows, m.d], m.dtype.kind())?,
            tokens: get("tokens", safetensors::Dtype::I32, &[rows], Kind::Int)?,
            positions: get("positions", safetensors::Dtype::I32, &[rows], Kind::Int)?,
        })
    }

    /// `[count, d]` f32 activation rows `first..first + count` in shard order
    /// (across shard boundaries), e.g. a held-out tail.
    pub fn read_rows(&self, first: u64, count: u64) -> Result<Tensor> {
        let total = self.manifest.tokens;
        if first.checked_add(count).is_none_or(|end| end > total) || count == 0 {
            return Err(Error::store(
                &self.dir,
                format!(
                    "rows {first}..{} asked of a store of {total} rows",
                    first.saturating_add(count)
                ),
            ));
        }
        let mut parts = Vec::new();
        let mut start = 0u64;
        for (i, entry) in self.manifest.shards.iter().enumerate() {
            let end = start + entry.rows;
            let (lo, hi) = (first.max(start), (first + count).min(end));
            if lo < hi {
                let acts = self.load_shard(i)?.acts.f_to_kind(Kind::Float)?;
                parts.push(acts.f_narrow(0, (lo - start) as i64, (hi - lo) as i64)?);
            }
            start = end;
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Checks every shard's size and sha256, and that the manifest's counts
    /// add up. Returns the problems found (empty when all is well).
    pub fn verify(&self) -> Vec<ShardProblem> {
        let mut problems = Vec::new();
        for (i, entry) in self.manifest.shards.iter().enumerate() {
            if let Err(e) = self.checked_bytes(i) {
                problems.push(ShardProblem {
                    file: entry.file.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let rows: u64 = self.manifest.shards.iter().map(|s| s.rows).sum();
        if rows != self.manifest.tokens {
            problems.push(ShardProblem {
                file: MANIFEST_FILE.into(),
                reason: format!(
                    "shards hold {rows} rows, the manifest says {}",
                    self.manifest.tokens
                ),
            });
        }
        problems
    }
}

/// The stores under `dir`: `dir` itself when it holds a manifest, else each
/// subfolder that does (a harvest of several hooks), sorted.
pub fn find_stores(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(MANIFEST_FILE).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        return Err(Error::store(dir, "no such folder"));
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.join(MANIFEST_FILE).is_file() {
            found.push(path);
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(Error::store(
            dir,
            "no manifest.json here or in its subfolders",
        ));
    }
    Ok(found)
}
