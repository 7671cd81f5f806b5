//! Local caches and the Hugging Face hub: saescope's own data folder
//! (`$SAESCOPE_CACHE`), and model and dataset repositories found in hf-hub's
//! cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`), else
//! downloaded where a network exists (`HF_HUB_OFFLINE=1` forbids that).
//!
//! - a model repository gives a folder with `config.json`, `tokenizer.json`
//!   and its safetensors (sharded or not);
//! - a dataset (`hf:org/name`, or a bare `org/name` that is not a local path)
//!   gives its `.txt` and `.jsonl` files (gzip or not) as a corpus; parquet
//!   files are not read.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The data folder set-up fills: `$SAESCOPE_CACHE`, else `.cache` in the
/// source checkout.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SAESCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

/// hf-hub's cache folder: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether `spec` has the shape of a hub repository id: `org/name`, each
/// part of letters, digits, `-`, `_` and `.` (and not `.` or `..`).
pub fn is_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let valid = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if valid(a) && valid(b))
}

/// Whether `HF_HUB_OFFLINE` forbids downloads.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The files a safetensors model needs, fetched or found in the cache.
/// Returns the snapshot folder that holds them.
pub fn model_snapshot(repo_id: &str, cache: &Path) -> Result<PathBuf> {
    let cache = hf_hub::Cache::new(cache.to_path_buf());
    let repo = cache.model(repo_id.to_string());
    let cached = |file: &str| repo.get(file);
    let config = match cached("config.json") {
        Some(path) => path,
        None => download_model_file(repo_id, &cache, "config.json")?,
    };
    let folder = config
        .parent()
        .ok_or_else(|| Error::Hub(format!("{repo_id}: cache path has no parent")))?
        .to_path_buf();
    let mut needed = vec!["tokenizer.json".to_string()];
    match cached("model.safetensors.index.json") {
        Some(index) => needed.extend(shards_of(&index)?),
        None if cached("model.safetensors").is_some() => {}
        None => match download_model_file(repo_id, &cache, "model.safetensors.index.json") {
            Ok(index) => needed.extend(shards_of(&index)?),
            Err(_) => needed.push("model.safetensors".into()),
        },
    }
    for file in needed {
        if cached(&file).is_none() {
            download_model_file(repo_id, &cache, &file)?;
        }
    }
    Ok(folder)
}

fn shards_of(index: &Path) -> Result<Vec<String>> {
    let folder = index.parent().unwrap_or(Path::new("."));
    super::safetensors::checkpoint_files(folder)?
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| Error::malformed(index, "shard without a file name"))
        })
        .collect()
}

fn download_model_file(repo_id: &str, cache: &hf_hub::Cache, file: &str) -> Result<PathBuf> {
    if offline() {
        return Err(Error::Hub(format!(
            "{repo_id}/{file} is not in the cache and HF_HUB_OFFLINE is set"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(true)
        .build()
        .map_err(|e| Error::Hub(format!("{repo_id}: {e}")))?;
    api.model(repo_id.to_string()).get(file).map_err(|e| {
        Error::Hub(format!(
            "{repo_id}/{file} is not in the cache and cannot be downloaded: {e}"
        ))
    })
}

/// Whether `name` is a file a corpus reads: `.txt`, `.jsonl`, or their `.gz`.
pub fn is_text_file(name: &str) -> bool {
    let name = name.to_lowercase();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    stem.ends_with(".txt") || stem.ends_with(".jsonl")
}

/// The dataset id named by `spec`, if it names one: `hf:org/name`, or
/// `org/name` when no such local path exists.
pub fn dataset_id(spec: &str) -> Option<&str> {
    if let Some(id) = spec.strip_prefix("hf:") {
        return Some(id);
    }
    (is_repo_id(spec) && !Path::new(spec).exists()).then_some(spec)
}

/// The snapshot folder of dataset `id` in the hub cache `cache`, downloading
/// its text files when it is not cached.
pub fn resolve_dataset(id: &str, cache: &Path) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("datasets--{}", id.replace('/', "--")));
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let snapshot = repo_dir.join("snapshots").join(commit.trim());
        if snapshot.is_dir() {
            return Ok(snapshot);
        }
    }
    download(id, cache, &repo_dir)
}

fn download(id: &str, cache: &Path, repo_dir: &Path) -> Result<PathBuf> {
    if offline() {
        return Err(Error::Hub(format!(
            "dataset {id} is not in the hub cache {} and HF_HUB_OFFLINE is set",
            cache.display()
        )));
    }
    let fail = |e: hf_hub::api::sync::ApiError| {
        Error::Hub(format!(
            "dataset {id}: not cached and cannot be downloaded: {e}"
        ))
    };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_progress(false)
        .build()
        .map_err(fail)?;
    let repo = api.dataset(id.to_string());
    let info = repo.info().map_err(fail)?;
    let wanted: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|name| is_text_file(name))
        .collect();
    if wanted.is_empty() {
        return Err(Error::Hub(format!(
            "dataset {id} has no .txt or .jsonl files (parquet is not supported)"
        )));
    }
    for name in wanted {
        repo.get(name).map_err(fail)?;
    }
    Ok(repo_dir.join("snapshots").join(&info.sha))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_ids_and_text_files() {
        assert_eq!(
            dataset_id("hf:NeelNanda/pile-10k"),
            Some("NeelNanda/pile-10k")
        );
        assert_eq!(dataset_id("NeelNanda/pile-10k"), Some("NeelNanda/pile-10k"));
        assert_eq!(dataset_id("/abs/path.txt"), None);
        assert_eq!(dataset_id("default"), None);
        assert!(is_text_file("data/train-00000.jsonl.gz") && is_text_file("a.TXT"));
        assert!(!is_text_file("data/train.parquet") && !is_text_file("README.md"));
    }

    #[test]
    fn cached_snapshot_is_found() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("datasets--org--corpus");
        let snapshot = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(snapshot.join("data")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        assert_eq!(
            resolve_dataset("org/corpus", cache.path()).unwrap(),
            snapshot
        );
    }
}
