//! Resolving a model argument to files: a `.gguf` path, a Hugging Face model
//! folder, a hub id (through `io::hub`: the hub cache, then a download where
//! a network exists), or the alias `smollm2-135m` for the default model that
//! `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::hub;

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

/// Resolves `spec` (see the module doc).
pub fn resolve_model(spec: &str) -> Result<ModelSource> {
    if spec == DEFAULT_MODEL_ALIAS {
        let path = hub::cache_dir().join(DEFAULT_MODEL_FILE);
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
    if hub::is_repo_id(spec) {
        return resolve_hub(spec, &hub::hub_cache_dir());
    }
    Err(Error::ModelNotFound(format!(
        "{spec}: not a .gguf file, a model folder, a hub id (org/name) or `{DEFAULT_MODEL_ALIAS}`"
    )))
}

/// The model repository `repo_id` in the hub cache `cache` (downloading
/// what is missing): a folder with `config.json`, the tokenizer and the
/// safetensors weights.
pub fn resolve_hub(repo_id: &str, cache: &Path) -> Result<ModelSource> {
    Ok(ModelSource::HfFolder(hub::model_snapshot(repo_id, cache)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert!(hub::is_repo_id("openai-community/gpt2"));
        assert!(hub::is_repo_id("EleutherAI/pythia-70m"));
        assert!(!hub::is_repo_id("gpt2"));
        assert!(!hub::is_repo_id("a/b/c"));
        assert!(!hub::is_repo_id("./x y/z"));
    }

    #[test]
    fn unknown_spec_is_explained() {
        let err = resolve_model("definitely-not-a-model").unwrap_err();
        assert!(err.to_string().contains("not a .gguf file"), "{err}");
        let err = resolve_model("/nonexistent/model.gguf").unwrap_err();
        assert!(err.to_string().contains("no such GGUF file"), "{err}");
    }
}
