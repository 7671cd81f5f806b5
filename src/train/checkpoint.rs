//! Training checkpoints: every SAE's weights, Adam moments and dead-latent
//! counters in `{name}.step{N}.safetensors`, then `state.json` naming them.
//! Each file is written atomically and `state.json` last, so a kill at any
//! moment leaves the previous checkpoint intact; older step files are removed
//! only after the new state is durable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::names::is_plain_file_name;
use crate::io::safetensors::{read_safetensors, write_safetensors};

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const STATE_FILE: &str = "state.json";

/// One SAE's entry in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SaeCheckpoint {
    pub name: String,
    pub file: String,
    /// The input scale the SAE trains under.
    pub scale: f64,
    /// Length of its `metrics.jsonl` at this step.
    pub metrics_bytes: u64,
    pub adam_step: u64,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    /// Rows consumed per SAE.
    pub tokens: u64,
    /// The run's config as TOML, to refuse resuming a different run.
    pub config_toml: String,
    pub saes: Vec<SaeCheckpoint>,
    /// The shares the data was read in (`data.read_shares` resolved); a
    /// resume reads the same ones.
    #[serde(default = "one_share")]
    pub read_shares: usize,
}

fn one_share() -> usize {
    1
}

pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join(CHECKPOINT_DIR)
}

/// Writes a checkpoint: `tensors[i]` belongs to `state.saes[i]`.
pub fn write_checkpoint(
    dir: &Path,
    state: &CheckpointState,
    tensors: &[Vec<(String, Tensor)>],
) -> Result<()> {
    write_checkpoint_tensors(dir, &state.saes, tensors)?;
    commit_checkpoint(dir, state)
}

/// The tensor files of some of a checkpoint's SAEs (`tensors[i]` belongs to
/// `entries[i]`); a checkpoint holds them once [`commit_checkpoint`] lists them.
pub fn write_checkpoint_tensors(
    dir: &Path,
    entries: &[SaeCheckpoint],
    tensors: &[Vec<(String, Tensor)>],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (entry, named) in entries.iter().zip(tensors) {
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(&dir.join(&entry.file), &refs)?;
    }
    Ok(())
}

/// Writes `state.json` (the checkpoint now is `state`, whose tensor files
/// must be written), then removes the tensor files it does not list.
pub fn commit_checkpoint(dir: &Path, state: &CheckpointState) -> Result<()> {
    let text = serde_json::to_string_pretty(state)?;
    write_atomic(&dir.join(STATE_FILE), text.as_bytes())?;
    let keep: Vec<&str> = state.saes.iter().map(|s| s.file.as_str()).collect();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Tensor `name` of a checkpoint, which must have the shape of `like`, the
/// tensor it replaces (an error naming `source` and both shapes otherwise),
/// in `like`'s kind and on its device.
pub fn take_like(
    tensors: &HashMap<String, Tensor>,
    name: &str,
    like: &Tensor,
    source: &str,
) -> Result<Tensor> {
    let t = tensors.get(name).ok_or_else(|| Error::MissingTensor {
        name: name.into(),
        source_desc: source.into(),
    })?;
    if t.size() != like.size() {
        return Err(Error::FileTensorShape {
            name: name.into(),
            source_desc: source.into(),
            expected: like.size(),
            got: t.size(),
        });
    }
    Ok(t.f_to_kind(like.kind())?.f_to_device(like.device())?)
}

/// A checkpoint's state and, per SAE, its tensors by name.
pub type Checkpoint = (CheckpointState, Vec<HashMap<String, Tensor>>);

/// The state of the checkpoint in `dir`, or `None` when there is none.
pub fn read_checkpoint_state(dir: &Path) -> Result<Option<CheckpointState>> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| Error::malformed(&path, format!("not a checkpoint state: {e}")))?;
    if let Some(bad) = state.saes.iter().find(|s| !is_plain_file_name(&s.file)) {
        return Err(Error::malformed(
            &path,
            format!("`{}` is not a file name inside the checkpoint", bad.file),
        ));
    }
    if state.read_shares == 0 {
        return Err(Error::malformed(&path, "read_shares must be positive"));
    }
    Ok(Some(state))
}

/// The checkpoint in `dir` with each SAE's tensors, or `None` when there is none.
pub fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>> {
    let Some(state) = read_checkpoint_state(dir)? else {
        return Ok(None);
    };
    let tensors = state
        .saes
        .iter()
        .map(|s| read_safetensors(&dir.join(&s.file)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((state, tensors)))
}

/// The config a checkpoint must match to be resumed (all but the token budget).
pub fn resume_key(cfg: &TrainConfig) -> Result<String> {
    let mut c = cfg.clone();
    c.data.tokens = 0;
    c.data.read_shares = 0; // the checkpoint's own field decides
    c.run.out = Default::default(); // a run may move (off a full disk) and resume there
                                    // How the ranks divide the work, and on which devices, does not change the result.
    for spec in &mut c.saes {
        spec.device = crate::model::DeviceSpec::Cpu;
    }
    c.data.model_device = crate::model::DeviceSpec::Cpu;
    c.run.distribute_modules = false;
    c.run.module_exchange = super::config::ModuleExchange::AllToAll;
    c.to_toml()
}
