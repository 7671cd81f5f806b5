//! Patching tasks: JSONL pairs of clean and corrupted prompts of equal token
//! length with the single-token answer and wrong answer, tokenized and
//! batched by length.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::ModelTokenizer;

/// One line of a patching task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    clean: String,
    corrupted: String,
    answer: String,
    wrong: String,
}

/// A clean/corrupted pair as tokens, with its answer tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPair {
    pub clean: Vec<i64>,
    pub corrupted: Vec<i64>,
    pub answer: i64,
    pub wrong: i64,
}

/// The pairs of a task file, grouped by token length for batching.
#[derive(Debug, Clone)]
pub struct PatchTask {
    pub pairs: Vec<PatchPair>,
    /// The clean prompt's tokens of the first pair, to label positions.
    pub position_labels: Vec<String>,
}

/// The single token `text` stands for after `prompt`, or an error.
fn answer_token(tok: &ModelTokenizer, prompt: &str, text: &str, line: usize) -> Result<i64> {
    let base = tok.encode(prompt, true)?;
    let full = tok.encode(&format!("{prompt}{text}"), true)?;
    match (full.len() == base.len() + 1, full.last()) {
        (true, Some(&id)) if full[..base.len()] == base[..] => Ok(id),
        _ => Err(Error::InvalidArgument(format!(
            "line {line}: the answer {text:?} is not a single token after the prompt ({} tokens)",
            full.len().saturating_sub(base.len())
        ))),
    }
}

impl PatchTask {
    /// Reads a JSONL task (`clean`, `corrupted`, `answer`, `wrong` per line).
    /// The two prompts of a pair must have the same token length.
    pub fn load(path: &Path, tok: &ModelTokenizer) -> Result<PatchTask> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut pairs = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let n = i + 1;
            let p: PairLine = serde_json::from_str(line)
                .map_err(|e| Error::malformed(path, format!("line {n}: {e}")))?;
            let clean = tok.encode(&p.clean, true)?;
            let corrupted = tok.encode(&p.corrupted, true)?;
            if clean.len() != corrupted.len() {
                return Err(Error::malformed(
                    path,
                    format!(
                        "line {n}: the clean prompt has {} tokens and the corrupted one {}; patching by position needs equal lengths",
                        clean.len(),
                        corrupted.len()
                    ),
                ));
            }
            let answer = answer_token(tok, &p.clean, &p.answer, n)?;
            let wrong = answer_token(tok, &p.clean, &p.wrong, n)?;
            pairs.push(PatchPair {
                clean,
                corrupted,
                answer,
                wrong,
            });
        }
        let first = pairs
            .first()
            .ok_or_else(|| Error::malformed(path, "the task has no pairs"))?;
        let position_labels = first.clean.iter().map(|&id| tok.token_text(id)).collect();
        Ok(PatchTask {
            pairs,
            position_labels,
        })
    }

    /// Batches of pairs of one token length: `[batch, seq]` clean and
    /// corrupted tokens, answer and wrong ids.
    pub(super) fn batches(&self, device: tch::Device) -> Result<Vec<Batch>> {
        let mut by_len: BTreeMap<usize, Vec<&PatchPair>> = BTreeMap::new();
        for p in &self.pairs {
            by_len.entry(p.clean.len()).or_default().push(p);
        }
        by_len
            .into_values()
            .map(|pairs| {
                let stack = |f: &dyn Fn(&PatchPair) -> &Vec<i64>| -> Result<Tensor> {
                    let flat: Vec<i64> = pairs.iter().flat_map(|p| f(p).iter().copied()).collect();
                    Ok(Tensor::f_from_slice(&flat)?
                        .f_view([pairs.len() as i64, -1])?
                        .f_to_device(device)?)
                };
                let ids = |f: &dyn Fn(&PatchPair) -> i64| -> Result<Tensor> {
                    let v: Vec<i64> = pairs.iter().map(|p| f(p)).collect();
                    Ok(Tensor::f_from_slice(&v)?.f_to_device(device)?)
                };
                Ok(Batch {
                    clean: stack(&|p| &p.clean)?,
                    corrupted: stack(&|p| &p.corrupted)?,
                    answer: ids(&|p| p.answer)?,
                    wrong: ids(&|p| p.wrong)?,
                })
            })
            .collect()
    }
}

/// Pairs of one token length as tensors on the model's device.
pub(super) struct Batch {
    /// `[batch, seq]`
    pub clean: Tensor,
    /// `[batch, seq]`
    pub corrupted: Tensor,
    /// `[batch]`
    pub answer: Tensor,
    /// `[batch]`
    pub wrong: Tensor,
}
