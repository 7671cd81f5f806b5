//! Resolving a model argument to files: a `.gguf` path, a Hugging Face model
//! folder, a hub id (through `hf-hub`'s cache, then a download where a network
//! exists), or the alias `smollm2-135m` for the default model that
//! `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The alias of the default model.
pub const DEFAULT_MODEL_ALIAS: &str = "smollm2-135m";
const DEFAULT_MODEL_FILE: &str = "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    /// A folder with `config.json`, safetensors and `tokenizer.json`.
    HfFolder(PathBuf),
}

/// The data folder set-up fills: `$SAESCOPE_CACHE`, else `.cache` in the
/// source checkout.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SAESCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

/// Resolves `spec` (see the module doc).
pub fn resolve_model(spec: &str) -> Result<ModelSource> {
    if spec == DEFAULT_MODEL_ALIAS {
        let path = cache_dir().join(DEFAULT_MODEL_FILE);
        if !path.exists() {
            return Err(Error::ModelNotFound(format!(
                "{spec}: {} is missing; run scripts/setup.sh",
                path.display()
            )));
        }
        return Ok(ModelSource::Gguf(path));
    }
    let path = Path::new(spec);
    if path.extension().is_some_and(|e| e == "gguf") {
        if !path.is_file() {
            return Err(Error::ModelNotFound(format!("{spec}: no such GGUF file")));
        }
        return Ok(ModelSource::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(Error::ModelNotFound(format!(
                "{spec}: folder has no config.json"
            )));
        }
        return Ok(ModelSource::HfFolder(path.to_path_buf()));
    }
    if looks_like_hub_id(spec) {
        return resolve_hub(spec, &hub_cache_dir());
    }
    Err(Error::ModelNotFound(format!(
        "{spec}: not a .gguf file, a model folder, a hub id (org/name) or `{DEFAULT_MODEL_ALIAS}`"
    )))
}

fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if valid(a) && valid(b))
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

/// The files a safetensors model needs, fetched or found in the cache.
/// Returns the snapshot folder that holds them.
pub fn resolve_hub(repo_id: &str, cache: &Path) -> Result<ModelSource> {
    let cache = hf_hub::Cache::new(cache.to_path_buf());
    let repo = cache.model(repo_id.to_string());
    let cached = |file: &str| repo.get(file);
    let config = match cached("config.json") {
        Some(path) => path,
        None => download(repo_id, &cache, "config.json")?,
    };
    let folder = config
        .parent()
        .ok_or_else(|| Error::Hub(format!("{repo_id}: cache path has no parent")))?
        .to_path_buf();
    let mut needed = vec!["tokenizer.json".to_string()];
    match cached("model.safetensors.index.json") {
        Some(index) => needed.extend(shards_of(&index)?),
        None if cached("model.safetensors").is_some() => {}
        None => match download(repo_id, &cache, "model.safetensors.index.json") {
            Ok(index) => needed.extend(shards_of(&index)?),
            Err(_) => needed.push("model.safetensors".into()),
        },
    }
    for file in needed {
        if cached(&file).is_none() {
            download(repo_id, &cache, &file)?;
        }
    }
    Ok(ModelSource::HfFolder(folder))
}

fn shards_of(index: &Path) -> Result<Vec<String>> {
    let folder = index.parent().unwrap_or(Path::new("."));
    crate::io::safetensors::checkpoint_files(folder)?
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| Error::malformed(index, "shard without a file name"))
        })
        .collect()
}

fn download(repo_id: &str, cache: &hf_hub::Cache, file: &str) -> Result<PathBuf> {
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert!(looks_like_hub_id("openai-community/gpt2"));
        assert!(looks_like_hub_id("EleutherAI/pythia-70m"));
        assert!(!looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("./x y/z"));
    }

    #[test]
    fn unknown_spec_is_explained() {
        let err = resolve_model("definitely-not-a-model").unwrap_err();
        assert!(err.to_string().contains("not a .gguf file"), "{err}");
        let err = resolve_model("/nonexistent/model.gguf").unwrap_err();
        assert!(err.to_string().contains("no such GGUF file"), "{err}");
    }
}
