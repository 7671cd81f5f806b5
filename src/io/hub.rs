//! Hugging Face hub datasets as corpora: `hf:org/name` (or a bare `org/name`
//! that is not a local path) names a dataset repository, found in hf-hub's
//! cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`), else
//! downloaded where a network exists (`HF_HUB_OFFLINE=1` forbids that). Its
//! `.txt` and `.jsonl` files (gzip or not) are the corpus; parquet files are
//! not read.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
    let mut parts = spec.split('/');
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let looks_like_id = matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if valid(a) && valid(b) && a != "." && a != "..");
    (looks_like_id && !Path::new(spec).exists()).then_some(spec)
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
    let offline =
        std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if offline {
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
