//! A store written by several ranks at once. Rank `i` of `n` writes its
//! shards as `shard-pIII-NNNNN.safetensors` and lists them in its own
//! manifest, `manifest.part-III-of-NNN.json`, so that the ranks never touch
//! each other's files and each resumes from its own manifest. Once every
//! part is written, [`merge_parts`] assembles `manifest.json`: all parts'
//! shards in stream order (by first window), their counts and statistics
//! summed. Readers see one ordinary store.

use std::path::Path;

use crate::data::share::Share;
use crate::data::store::manifest::{Manifest, NormStats};
use crate::error::{Error, Result};

const PART_MANIFEST_PREFIX: &str = "manifest.part-";
const PART_SHARD_PREFIX: &str = "shard-p";

/// The manifest file of `part`.
pub fn part_manifest_name(part: Share) -> String {
    format!(
        "{PART_MANIFEST_PREFIX}{:03}-of-{:03}.json",
        part.index, part.count
    )
}

/// The file name of shard `index` of `part`.
pub fn part_shard_name(part: Share, index: usize) -> String {
    format!("{}{index:05}.safetensors", part_shard_prefix(part))
}

/// What every shard file of `part` starts with.
pub fn part_shard_prefix(part: Share) -> String {
    format!("{PART_SHARD_PREFIX}{:03}-", part.index)
}

/// Whether `name` is a file that some part of a multi-rank harvest owns (a
/// single writer leaves these alone).
pub fn is_part_file(name: &str) -> bool {
    name.starts_with(PART_MANIFEST_PREFIX) || name.starts_with(PART_SHARD_PREFIX)
}

/// Refuses a store folder holding parts of another number of ranks: its
/// shards were divided differently, so it cannot be resumed as `part`.
pub fn check_part_count(dir: &Path, part: Share) -> Result<()> {
    let ours = format!("-of-{:03}.json", part.count);
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let manifest = name.starts_with(PART_MANIFEST_PREFIX) && name.ends_with(".json");
        if manifest && !name.ends_with(&ours) {
            return Err(Error::store(
                dir,
                format!(
                    "holds `{name}`, a part of a harvest by another number of ranks; \
                     resume it with that many ranks"
                ),
            ));
        }
    }
    Ok(())
}

/// Assembles `dir/manifest.json` from the manifests of all `count` parts
/// (each must exist and describe the same harvest) and writes it; returns it.
pub fn merge_parts(dir: &Path, count: usize) -> Result<Manifest> {
    let mut parts = Vec::with_capacity(count);
    for index in 0..count {
        let part = Share::new(index, count)?;
        parts.push(Manifest::read_named(dir, &part_manifest_name(part))?);
    }
    let Some(first) = parts.first() else {
        return Err(Error::store(dir, "no parts to merge"));
    };
    let mut merged = first.clone();
    let mut stats = NormStats::new(first.d);
    merged.shards.clear();
    for part in &parts {
        if settings(part) != settings(first) {
            return Err(Error::store(
                dir,
                "the parts' manifests describe different harvests",
            ));
        }
        stats.add_sums(part.stats.rows, part.stats.norm_sum, &part.stats.sum)?;
        merged.shards.extend(part.shards.iter().cloned());
    }
    merged.shards.sort_by_key(|s| s.first_window);
    merged.tokens = parts.iter().map(|p| p.tokens).sum();
    merged.windows = parts.iter().map(|p| p.windows).sum();
    merged.complete = parts.iter().all(|p| p.complete);
    merged.corpus_exhausted = parts.iter().any(|p| p.corpus_exhausted);
    merged.stats = stats;
    merged.write(dir)?;
    Ok(merged)
}

/// A manifest without what differs between the parts of one harvest.
fn settings(m: &Manifest) -> Manifest {
    Manifest {
        shards: Vec::new(),
        stats: NormStats::new(m.d),
        tokens: 0,
        windows: 0,
        complete: false,
        corpus_exhausted: false,
        ..m.clone()
    }
}
