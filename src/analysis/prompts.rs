//! Prompt sets with marked spans, the input of RSA, attention ratios and
//! probes: one JSON object per line,
//!
//! ```json
//! {"id": "rc-7-icl", "group": "rc-7", "condition": "with_examples",
//!  "text": "...", "spans": {"query": [s, e], "relevant": [s, e]},
//!  "label": "park", "value": 3.0, "target": " park"}
//! ```
//!
//! Spans are `[start, end)` offsets in characters (Unicode scalar values, as
//! Python indexes strings). A span maps to the tokens it covers; a token that
//! lies partly inside and partly outside a span is an error (a token's leading
//! and trailing whitespace does not count, so a span may start at a word or at
//! the space before it). `group` pairs the same item across conditions;
//! `label` and `value` are what probes decode; `target` is the correct
//! continuation, whose first token scores the model's answer.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::ModelTokenizer;

/// One prompt as written in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub id: String,
    #[serde(default)]
    pub group: Option<String>,
    pub condition: String,
    pub text: String,
    #[serde(default)]
    pub spans: BTreeMap<String, [usize; 2]>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub target: Option<String>,
}

/// A prompt set read from a JSONL file.
#[derive(Debug, Clone)]
pub struct PromptSet {
    pub path: PathBuf,
    pub prompts: Vec<Prompt>,
}

/// A prompt as token ids, with its spans as token positions.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    /// Token ids, BOS first where the model has one.
    pub ids: Vec<i64>,
    /// Each span's token positions (indices into `ids`).
    pub spans: BTreeMap<String, Range<usize>>,
    /// The first token of `text + target` after the prompt's own tokens.
    pub target_id: Option<i64>,
}

impl PromptSet {
    pub fn load(path: &Path) -> Result<PromptSet> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut prompts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let prompt: Prompt = serde_json::from_str(line)
                .map_err(|e| Error::malformed(path, format!("line {}: {e}", i + 1)))?;
            let chars = prompt.text.chars().count();
            for (name, [start, end]) in &prompt.spans {
                if start >= end || *end > chars {
                    return Err(Error::malformed(
                        path,
                        format!(
                            "line {}: span `{name}` [{start}, {end}) is empty or outside the {chars}-character text",
                            i + 1
                        ),
                    ));
                }
            }
            prompts.push(prompt);
        }
        if prompts.is_empty() {
            return Err(Error::malformed(path, "the prompt set has no prompts"));
        }
        Ok(PromptSet {
            path: path.to_path_buf(),
            prompts,
        })
    }

    /// The distinct conditions, in order of first appearance.
    pub fn conditions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.prompts {
            if !out.contains(&p.condition) {
                out.push(p.condition.clone());
            }
        }
        out
    }

    /// The prompts of `condition`, or all of them.
    pub fn select(&self, condition: Option<&str>) -> Result<Vec<&Prompt>> {
        match condition {
            Some(c) => self.of_condition(c),
            None => Ok(self.prompts.iter().collect()),
        }
    }

    /// The prompts of `condition`; an error when there are none.
    pub fn of_condition(&self, condition: &str) -> Result<Vec<&Prompt>> {
        let chosen: Vec<&Prompt> = self
            .prompts
            .iter()
            .filter(|p| p.condition == condition)
            .collect();
        if chosen.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no prompts of condition `{condition}` (conditions: {})",
                self.path.display(),
                self.conditions().join(", ")
            )));
        }
        Ok(chosen)
    }
}

/// Whether `name` is present in every prompt of `prompts`; an error naming
/// the first prompt without it.
pub fn require_span(prompts: &[&Prompt], name: &str) -> Result<()> {
    match prompts.iter().find(|p| !p.spans.contains_key(name)) {
        Some(p) => Err(Error::InvalidArgument(format!(
            "prompt `{}` has no span `{name}` (it has: {})",
            p.id,
            p.spans.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        None => Ok(()),
    }
}

/// Byte offset of each character boundary of `text` (one past the end too).
fn char_to_byte(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect()
}

/// `[start, end)` bytes of a token without its leading and trailing whitespace
/// (empty for a token of whitespace only).
fn core(text: &str, (start, end): (usize, usize)) -> (usize, usize) {
    let piece = text.get(start..end).unwrap_or("");
    let lead = piece.len() - piece.trim_start().len();
    let trail = piece.len() - piece.trim_end().len();
    if lead == piece.len() {
        (start, start)
    } else {
        (start + lead, end - trail)
    }
}

/// Tokenizes `prompt` (BOS first) and maps its spans to token positions.
pub fn tokenize(prompt: &Prompt, tokenizer: &ModelTokenizer) -> Result<TokenizedPrompt> {
    let (ids, offsets) = tokenizer.encode_with_offsets(&prompt.text, true)?;
    let bytes = char_to_byte(&prompt.text);
    let mut spans = BTreeMap::new();
    for (name, &[start, end]) in &prompt.spans {
        let (s, e) = match (bytes.get(start), bytes.get(end)) {
            (Some(&s), Some(&e)) if start < end => (s, e),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "prompt `{}`: span `{name}` [{start}, {end}) is outside its text",
                    prompt.id
                )))
            }
        };
        let mut inside = Vec::new();
        for (i, &(a, b)) in offsets.iter().enumerate() {
            if a == b {
                continue; // BOS and other added tokens
            }
            let (ca, cb) = core(&prompt.text, (a, b));
            let whole_in = a >= s && b <= e;
            let core_in = ca < cb && ca >= s && cb <= e;
            let core_out = ca == cb || cb <= s || ca >= e;
            if whole_in || core_in {
                inside.push(i);
            } else if !core_out {
                return Err(Error::InvalidArgument(format!(
                    "prompt `{}`: span `{name}` [{start}, {end}) cuts token {i} ({:?}); spans must start and end at token boundaries",
                    prompt.id,
                    prompt.text.get(a..b).unwrap_or("?")
                )));
            }
        }
        match (inside.first(), inside.last()) {
            (Some(&first), Some(&last)) if last - first + 1 == inside.len() => {
                spans.insert(name.clone(), first..last + 1);
            }
            (Some(_), Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "prompt `{}`: the tokens of span `{name}` are not contiguous",
                    prompt.id
                )))
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "prompt `{}`: span `{name}` [{start}, {end}) covers no token",
                    prompt.id
                )))
            }
        }
    }
    let target_id = match &prompt.target {
        Some(target) => {
            let full = tokenizer.encode(&format!("{}{target}", prompt.text), true)?;
            match full.get(ids.len()) {
                Some(&id) if full[..ids.len()] == ids[..] => Some(id),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "prompt `{}`: the target {target:?} does not start a new token after the prompt",
                        prompt.id
                    )))
                }
            }
        }
        None => None,
    };
    Ok(TokenizedPrompt {
        ids,
        spans,
        target_id,
    })
}
