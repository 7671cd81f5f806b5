//! One entry point that turns a model argument into a runnable model and its
//! tokenizer, whatever the file format.

pub mod gguf;
pub mod hf;
pub mod source;

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use super::config::ModelConfig;
use super::tokenizer::ModelTokenizer;
use super::transformer::Transformer;
use crate::error::Result;
use crate::io::safetensors::read_checkpoint;
use crate::model::load::gguf::file::GgufFile;
use crate::model::load::gguf::load::{gguf_config, gguf_tokenizer, gguf_weights};
use crate::model::load::hf::{convert_hf, read_hf_config};
use crate::model::load::source::{resolve_model, ModelSource};

/// A model ready to run, with what describes it.
pub struct LoadedModel {
    pub model: Transformer,
    pub tokenizer: ModelTokenizer,
    /// The argument it was loaded from.
    pub spec: String,
    /// The file or folder it was read from.
    pub path: PathBuf,
    /// The chat template text, when the files carry one.
    pub chat_template: Option<String>,
}

/// Loads `spec` (see [`resolve_model`]) onto `device` in `kind`.
pub fn load_model(spec: &str, device: Device, kind: Kind) -> Result<LoadedModel> {
    match resolve_model(spec)? {
        ModelSource::Gguf(path) => load_gguf(spec, &path, device, kind),
        ModelSource::HfFolder(dir) => load_hf_folder(spec, &dir, device, kind),
    }
}

fn load_gguf(spec: &str, path: &Path, device: Device, kind: Kind) -> Result<LoadedModel> {
    let gguf = GgufFile::open(path)?;
    let cfg = gguf_config(&gguf)?;
    let tokenizer = gguf_tokenizer(&gguf)?;
    let weights = gguf_weights(&gguf, &cfg)?;
    let chat_template = gguf
        .meta_opt_str("tokenizer.chat_template")?
        .map(str::to_string);
    Ok(LoadedModel {
        model: Transformer::new(cfg, &weights, device, kind)?,
        tokenizer,
        spec: spec.to_string(),
        path: path.to_path_buf(),
        chat_template,
    })
}

fn load_hf_folder(spec: &str, dir: &Path, device: Device, kind: Kind) -> Result<LoadedModel> {
    let cfg: ModelConfig = read_hf_config(&dir.join("config.json"))?;
    let mut bag = read_checkpoint(dir)?;
    let weights = convert_hf(&cfg, &mut bag)?;
    let tokenizer = ModelTokenizer::from_file(
        &dir.join("tokenizer.json"),
        cfg.bos_token_id,
        cfg.eos_token_ids.clone(),
    )?;
    let chat_template = read_chat_template(&dir.join("tokenizer_config.json"));
    Ok(LoadedModel {
        model: Transformer::new(cfg, &weights, device, kind)?,
        tokenizer,
        spec: spec.to_string(),
        path: dir.to_path_buf(),
        chat_template,
    })
}

/// `chat_template` from `tokenizer_config.json`, when present and a string.
fn read_chat_template(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("chat_template")?.as_str().map(str::to_string)
}
