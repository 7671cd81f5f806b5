//! Steering tasks: JSONL files of `{"prompt", "target", "foil"}` where an
//! intervention should move the model's next token from `foil` to `target`
//! (see eval/tasks/README.md). Prompts are tokenized with BOS; each answer
//! must be one token.

use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::ModelTokenizer;

#[derive(Debug, Clone, Deserialize)]
struct Record {
    prompt: String,
    target: String,
    foil: String,
}

/// One tokenized prompt with its two answer tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskItem {
    pub prompt: String,
    /// BOS and the prompt's tokens.
    pub tokens: Vec<i64>,
    pub target: i64,
    pub foil: i64,
}

/// A task split: items grouped by token length so batches need no padding.
#[derive(Debug, Clone)]
pub struct Task {
    pub items: Vec<TaskItem>,
}

/// A batch of same-length prompts.
pub struct TaskBatch {
    /// `[batch, seq]` token ids.
    pub tokens: Tensor,
    /// `[batch]` target and foil token ids.
    pub target: Tensor,
    pub foil: Tensor,
}

impl Task {
    /// Reads and tokenizes a task file; every problem names the file and line.
    pub fn load(path: &Path, tokenizer: &ModelTokenizer) -> Result<Task> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| Error::malformed(path, format!("line {}: {reason}", i + 1));
            let r: Record = serde_json::from_str(line).map_err(|e| bad(format!("{e}")))?;
            if r.prompt.is_empty() {
                return Err(bad("empty prompt".into()));
            }
            let answer = |s: &str, field: &str| -> Result<i64> {
                let ids = tokenizer.encode(s, false)?;
                match ids.as_slice() {
                    [id] => Ok(*id),
                    _ => Err(bad(format!(
                        "{field} {s:?} is {} tokens; it must be exactly one",
                        ids.len()
                    ))),
                }
            };
            let target = answer(&r.target, "target")?;
            let foil = answer(&r.foil, "foil")?;
            if target == foil {
                return Err(bad("target and foil are the same token".into()));
            }
            items.push(TaskItem {
                tokens: tokenizer.encode(&r.prompt, true)?,
                prompt: r.prompt,
                target,
                foil,
            });
        }
        if items.is_empty() {
            return Err(Error::malformed(path, "the task has no prompts"));
        }
        Ok(Task { items })
    }

    /// The prompts' token length when they all share one, as per-position
    /// interventions need.
    pub fn common_length(&self) -> Option<usize> {
        let n = self.items[0].tokens.len();
        self.items.iter().all(|i| i.tokens.len() == n).then_some(n)
    }

    /// Batches of at most `size` prompts of equal length, in file order
    /// within each length.
    pub fn batches(&self, size: usize) -> Result<Vec<TaskBatch>> {
        let mut lengths: Vec<usize> = self.items.iter().map(|i| i.tokens.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut out = Vec::new();
        for len in lengths {
            let same: Vec<&TaskItem> = self
                .items
                .iter()
                .filter(|i| i.tokens.len() == len)
                .collect();
            for chunk in same.chunks(size.max(1)) {
                let ids: Vec<i64> = chunk
                    .iter()
                    .flat_map(|i| i.tokens.iter().copied())
                    .collect();
                out.push(TaskBatch {
                    tokens: Tensor::f_from_slice(&ids)?.f_view([chunk.len() as i64, len as i64])?,
                    target: Tensor::f_from_slice(
                        &chunk.iter().map(|i| i.target).collect::<Vec<_>>(),
                    )?,
                    foil: Tensor::f_from_slice(&chunk.iter().map(|i| i.foil).collect::<Vec<_>>())?,
                });
            }
        }
        Ok(out)
    }
}
